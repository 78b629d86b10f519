"""Labeled anomalies (--anomalies) and outlier exposure (--outliers) given as folders: what
is read, what is refused, and what the model and its evaluation take from them."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oneclass import data as data_mod
from oneclass import runs
from oneclass.data.base import ArraySet, FileSet, same_files
from oneclass.data.synthetic import write_mvtec
from oneclass.errors import ConfigError, DataError
from oneclass.registry import create


@pytest.fixture(scope="module")
def mv(tmp_path_factory):
    base = tmp_path_factory.mktemp("semi")
    return write_mvtec(base / "mv", n_train=12, n_test_good=3, n_test_defect=4, size=16, seed=5)


def _png(path: Path, value: int, size=(16, 16), colour: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    shape = (*size, 3) if colour else size
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path, format="PNG")
    return path


def test_same_files_finds_links_and_copies_and_nothing_else(tmp_path):
    a = [_png(tmp_path / "a" / f"{i}.png", i) for i in range(3)]
    other = _png(tmp_path / "b" / "other.png", 7)
    copy = tmp_path / "b" / "copy.png"
    shutil.copyfile(a[1], copy)
    link = tmp_path / "b" / "link.png"
    os.symlink(a[2], link)
    assert same_files(a, [other, copy, link, tmp_path / "gone.png"]) == {1: a[1], 2: a[2]}


def test_anomalies_that_are_training_images_are_refused(mv, tmp_path):
    """As links or as byte copies: they would be trained as normal and as anomalous."""
    for how in ("link", "copy"):
        folder = tmp_path / how
        for p in sorted((mv / "train" / "good").iterdir())[:2]:
            (folder / "test" / "bad").mkdir(parents=True, exist_ok=True)
            target = folder / "test" / "bad" / p.name
            os.symlink(p, target) if how == "link" else shutil.copyfile(p, target)
        with pytest.raises(ConfigError, match=r"--anomalies .*2 of its 2 picked labeled "
                           r"anomalies are training images of --data.*"
                           + ("the same file as" if how == "link" else "a copy of")):
            runs.training_data(str(mv), None, 0, anomalies=str(folder))


def test_fit_refuses_a_labeled_anomaly_that_is_a_normal_training_image(mv, tmp_path):
    train = data_mod.load(str(mv), "train")
    copy = tmp_path / "dup.png"
    shutil.copyfile(train.paths[3], copy)
    both = data_mod.concat(train, FileSet([copy], [1], kinds=["dent"], names=["dup.png"]))
    det = create("deep_sad", epochs=1, pretrain_epochs=0)
    with pytest.raises(DataError, match=r"labeled anomalies \(label 1\) are normal training "
                       r"images too.*dup.png, the same file as or a copy of"):
        det.fit(both)
    assert not hasattr(det, "model_")


def test_outliers_that_are_copies_of_the_training_images_are_refused(mv, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(mv / "train" / "good", copy)
    with pytest.raises(ConfigError, match=r"--outliers .*12 of its 12 images are training "
                       r"images .*\(a copy of "):
        runs.training_data(str(mv), None, 0, outliers=str(copy))


@pytest.mark.parametrize("method", ["deep_svdd", "deep_sad"])
def test_model_size_and_channels_come_from_the_normal_images(method):
    """Larger colour anomalies for a model of small gray images: converted to fit it. A
    method that learns from normal images alone neither trains on nor counts them."""
    rng = np.random.default_rng(0)
    normal = rng.integers(0, 256, (24, 16, 16), dtype=np.uint8)
    anomalies = rng.integers(0, 256, (6, 40, 40, 3), dtype=np.uint8)
    train = data_mod.concat(ArraySet(normal, np.zeros(24, int)),
                            ArraySet(anomalies, np.ones(6, int)))
    det = create(method, epochs=1, pretrain_epochs=1, holdout=0.0, seed=0).fit(train)
    assert det.input_shape_ == (1, 16, 16)
    assert det.n_train_ == (30 if det.uses_anomalies else 24)


def test_mask_files_in_type_folders_are_not_test_images(mv, tmp_path, caplog):
    folder = tmp_path / "side"
    shutil.copytree(mv, folder)
    shutil.rmtree(folder / "ground_truth")
    for p in sorted((folder / "test").glob("*/*.png"))[:2]:
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(p.with_name(p.stem + "_mask.png"))
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(
        folder / "train" / "good" / "000_mask.png")
    with caplog.at_level(logging.WARNING, logger="oneclass"):
        test = data_mod.load(str(folder), "test")
        train = data_mod.load(str(folder), "train")
    assert not [n for n in test.names + train.names if "_mask" in n]
    assert len(test) == len(data_mod.load(str(mv), "test")) and len(train) == 12
    assert "2 files named *_mask in its type folders left out" in caplog.text


def test_a_plain_folder_of_defects_gives_labeled_anomalies(mv, tmp_path):
    """Every image of it is anomalous, its type the folder it is in; named below the folder,
    so its record does not depend on how the folder was spelled."""
    folder = tmp_path / "defects"
    for i in range(3):
        _png(folder / "scratch" / f"{i}.png", 100 + i)
    _png(folder / "dent" / "0.png", 200)
    picked, left = runs.pick_anomalies(str(folder), 2, seed=0)
    assert (picked.labels == 1).all() and left == 1
    assert sorted(picked.kinds) == ["dent", "scratch", "scratch"]
    assert all(n.startswith(("scratch/", "dent/")) for n in picked.names)
    loose = tmp_path / "loose"
    for i in range(2):
        _png(loose / f"{i}.png", 300 + i)
    picked, _ = runs.pick_anomalies(str(loose), 5, seed=0)
    assert list(picked.kinds) == ["loose", "loose"] and list(picked.names) == ["0.png", "1.png"]
    _png(folder / "good" / "0.png", 400)
    with pytest.raises(DataError, match="as --anomalies every image of a plain folder is a "
                       "labeled anomaly"):
        runs.pick_anomalies(str(folder), 2, seed=0)


def test_a_test_folder_without_masks_gives_labeled_anomalies_by_type(tmp_path):
    folder = tmp_path / "t"
    _png(folder / "test" / "good" / "0.png", 1)
    for i in range(2):
        _png(folder / "test" / "crack" / f"{i}.png", 10 + i)
    picked, left = runs.pick_anomalies(str(folder), 5, seed=0)
    assert list(picked.kinds) == ["crack", "crack"] and (picked.labels == 1).all() and left == 0


def test_masks_of_anomalies_are_not_read_for_a_method_without_pixel_loss(mv, tmp_path):
    folder = tmp_path / "badmask"
    shutil.copytree(mv, folder)
    mask = sorted((folder / "ground_truth").glob("*/*.png"))[0]
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mask)  # 8x8 for a 16x16 image
    sets = {}
    for masks in (False, True):
        train, _, _ = runs.training_data(str(mv), None, 0, anomalies=str(folder),
                                         anomaly_limit=4, masks=masks)
        sets[masks] = train
    for i in range(len(sets[False])):
        sets[False].read(i)  # no mask read, nothing to refuse
    with pytest.raises(DataError, match="mask"):
        for i in range(len(sets[True])):
            sets[True].read(i)
    assert not create("deep_sad").uses_masks and create("fcdd").uses_masks


def test_eval_leaves_out_copies_of_the_anomalies_trained_on(mv, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(mv, copy)
    picked, _ = runs.pick_anomalies(str(copy), 1, seed=0)
    cfg = {"anomalies": str(copy), "anomalies_source": data_mod.source(str(copy)),
           "anomalies_used": list(picked.names)}
    test = runs.test_set(str(mv), None, cfg)
    assert len(test) == len(data_mod.load(str(mv), "test")) - len(picked) > 0
    assert not set(same_files(picked.paths, test.paths))


def test_a_skipped_labeled_anomaly_is_recorded_as_one(mv, tmp_path):
    folder = tmp_path / "anom"
    _png(folder / "a.png", 1)
    (folder / "b.png").write_bytes(b"not an image")
    run = tmp_path / "run"
    runs.train("deep_sad", str(mv), run, {"epochs": 1, "pretrain_epochs": 0, "seed": 0},
               anomalies=str(folder), on_bad_image="skip", progress=False)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["anomalies_used"] == ["a.png"]
    assert cfg["skipped_images"] == [f"b.png (labeled anomaly from {folder})"]


def test_empty_files_and_links_to_nothing_are_never_copies(tmp_path):
    """All empty files hash alike and two broken links may resolve to one missing file:
    neither is an image, so neither is the same image (reading names them instead)."""
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "empty.png").write_bytes(b"")
        os.symlink(tmp_path / "gone.png", tmp_path / d / "broken.png")
    a, b = sorted((tmp_path / "a").iterdir()), sorted((tmp_path / "b").iterdir())
    assert same_files(a, b) == {}
    assert same_files(a, a) == {}


def test_a_folder_of_normal_images_by_its_name_is_refused_as_anomalies(mv):
    with pytest.raises(DataError, match=r"a folder named good, of normal images by its name"):
        runs.pick_anomalies(str(mv / "test" / "good"), 5, seed=0)
    # the test split of an MVTec folder: the advice is to give the folder itself
    with pytest.raises(DataError, match=rf"or {mv} laid out as test/good/"):
        runs.pick_anomalies(str(mv / "test"), 5, seed=0)


def test_eval_says_when_the_folder_of_the_anomalies_trained_on_is_gone(mv, tmp_path, caplog):
    folder = tmp_path / "anom"
    shutil.copytree(mv / "test" / "scratch" if (mv / "test" / "scratch").is_dir()
                    else sorted(p for p in (mv / "test").iterdir() if p.name != "good")[0],
                    folder)
    picked, _ = runs.pick_anomalies(str(folder), 2, seed=0)
    cfg = {"anomalies": str(folder), "anomalies_source": data_mod.source(str(folder)),
           "anomalies_used": list(picked.names)}
    n = len(data_mod.load(str(mv), "test"))
    assert len(runs.test_set(str(mv), None, cfg)) == n - 2
    shutil.rmtree(folder)
    assert runs.anomalies_missing(cfg)
    with caplog.at_level(logging.WARNING, logger="oneclass"):
        assert len(runs.test_set(str(mv), None, cfg)) == n
    assert "which is not found from here" in caplog.text
