"""Reading MVTec-AD-layout folders and plain folders: which files are read, with which label,
and which layouts are refused (defects of a user walk-through)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oneclass.data import ANOMALOUS, NORMAL, load
from oneclass.data.folder import list_images
from oneclass.errors import DataError


def _png(path: Path, value: int = 100, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def _pngs(folder: Path, n: int, value: int = 100, prefix: str = "") -> list[Path]:
    return [_png(folder / f"{prefix}{i:03d}.png", value) for i in range(n)]


def _test_split(root: Path, test: str = "test") -> None:
    _pngs(root / test / "good", 2)
    _pngs(root / test / "crack", 2, value=200)


# ------------------------------------------------------------------ 1. train/ of MVTec layout


@pytest.mark.parametrize("normal", ["ok", "normal", "OK", "Good"])
def test_defect_folder_beside_a_normal_folder_of_train_is_refused(tmp_path, normal):
    root = tmp_path / "ds"
    _pngs(root / "train" / normal, 3)
    _pngs(root / "train" / "ng", 2, value=250)
    _test_split(root)
    with pytest.raises(DataError) as e:
        load(str(root), "train")
    msg = str(e.value)
    assert msg.startswith(str(root / "train" / "ng"))
    assert "000.png" in msg and "must be normal" in msg and "--anomalies" in msg


def test_train_folder_beside_good_that_holds_images_is_refused(tmp_path):
    root = tmp_path / "ds"
    _pngs(root / "train" / "good", 3)
    _png(root / "train" / "bad" / "sub" / "x.png", 250)
    _test_split(root)
    with pytest.raises(DataError, match="must be normal") as e:
        load(str(root), "train")
    assert str(e.value).startswith(str(root / "train" / "bad"))
    assert os.path.join("sub", "x.png") in str(e.value)


def test_images_directly_in_train_beside_good_are_refused(tmp_path):
    root = tmp_path / "ds"
    _pngs(root / "train" / "good", 3)
    _png(root / "train" / "loose.png", 250)
    _test_split(root)
    with pytest.raises(DataError, match="directly in train/") as e:
        load(str(root), "train")
    assert str(e.value).startswith(str(root / "train"))
    assert "loose.png" in str(e.value) and "--anomalies" in str(e.value)


def test_train_split_still_reads_loose_images_and_nested_good_folders(tmp_path):
    flat = tmp_path / "flat"
    _pngs(flat / "train", 3)
    (flat / "train" / "empty").mkdir()  # a folder without images is no defect folder
    _test_split(flat)
    train = load(str(flat), "train")
    assert len(train) == 3 and set(train.labels) == {NORMAL}

    nested = tmp_path / "nested"
    _pngs(nested / "train" / "good" / "a", 2)
    _pngs(nested / "train" / "good" / "b", 2)
    _test_split(nested)
    train = load(str(nested), "train")
    assert len(train) == 4 and set(train.kinds) == {"good"}


# ------------------------------------------------------------------ 2. layout detection


def test_layout_folder_names_are_matched_case_insensitively(tmp_path):
    root = tmp_path / "ds"
    _pngs(root / "Train" / "Good", 3)
    _test_split(root, "Test")
    for i in range(2):
        _png(root / "Ground_Truth" / "crack" / f"{i:03d}_mask.png", 255)
    train = load(str(root), "train")
    assert len(train) == 3 and set(train.labels) == {NORMAL}
    test = load(str(root), "test")
    assert sorted(test.labels.tolist()) == [NORMAL, NORMAL, ANOMALOUS, ANOMALOUS]
    assert test.has_masks
    assert all(Path(m).parent.parent.name == "Ground_Truth"
               for m, lab in zip(test.mask_paths, test.labels) if lab == ANOMALOUS)
    assert test.names[0].startswith("Test")  # the real folder name


def test_folders_named_apart_from_case_only_are_an_error(tmp_path):
    root = tmp_path / "ds"
    _pngs(root / "train" / "good", 2)
    _pngs(root / "Train" / "good", 2)
    if len(os.listdir(root)) < 2:
        pytest.skip("case-insensitive file system")
    _test_split(root)
    with pytest.raises(DataError, match="apart from case"):
        load(str(root), "train")


@pytest.mark.parametrize("val", ["val", "validation", "VAL"])
def test_train_and_val_without_test_is_refused(tmp_path, val):
    root = tmp_path / "ds"
    _pngs(root / "train" / "good", 3)
    _pngs(root / val / "good", 2)
    _pngs(root / val / "crack", 2, value=250)
    with pytest.raises(DataError) as e:
        load(str(root), "train")
    msg = str(e.value)
    assert msg.startswith(str(root)) and "dataset split folders" in msg
    assert f"{val}/" in msg and "test/" in msg
    assert f"--data {root / 'train' / 'good'}" in msg


def test_flat_train_beside_a_val_split_with_good_is_refused(tmp_path):
    root = tmp_path / "ds"
    _pngs(root / "Train", 3)
    _pngs(root / "Val" / "OK", 2)
    _pngs(root / "Val" / "crack", 2, value=250)
    with pytest.raises(DataError, match="dataset split folders") as e:
        load(str(root), "train")
    assert f"--data {root / 'Train'}" in str(e.value)
    assert len(load(str(root), "test")) == 7  # scoring everything, unlabeled, is fine


def test_lone_train_folder_laid_out_as_mvtec_is_refused(tmp_path):
    root = tmp_path / "ds"
    _pngs(root / "train" / "ok", 2)
    _pngs(root / "train" / "ng", 2, value=250)
    with pytest.raises(DataError, match="dataset split folders") as e:
        load(str(root), "train")
    assert f"--data {root / 'train' / 'ok'}" in str(e.value)


def test_split_folders_without_normal_folders_are_still_read(tmp_path):
    # photographs of trains beside other folders; a lone train/ of images; an ImageNet-like
    # outlier set (train/<class>/ + val/): no defects to take for normal images
    root = tmp_path / "vehicles"
    _pngs(root / "train", 2)
    _pngs(root / "cars", 2)
    assert len(load(str(root), "train")) == 4
    lone = tmp_path / "lone"
    _pngs(lone / "train" / "batch1", 2)
    assert len(load(str(lone), "train")) == 2
    imagenet = tmp_path / "imagenet"
    _pngs(imagenet / "train" / "n01440764", 2)
    _pngs(imagenet / "train" / "n01443537", 2)
    _pngs(imagenet / "val", 2)
    assert len(load(str(imagenet), "train")) == 6


def test_train_beside_ground_truth_without_test_is_refused(tmp_path):
    root = tmp_path / "ds"
    _pngs(root / "train", 3)
    _png(root / "ground_truth" / "crack" / "000_mask.png", 255)
    with pytest.raises(DataError, match=r"dataset split folders \(ground_truth/, train/ with "
                                         r"ground_truth/\)"):
        load(str(root), "train")


# ------------------------------------------------------------------ 3. plain folders


@pytest.mark.parametrize("meta", ["@eaDir", "#recycle", "__MACOSX", "$RECYCLE.BIN"])
def test_nas_and_os_metadata_folders_are_skipped(tmp_path, meta):
    root = tmp_path / "plain"
    _pngs(root, 2)
    _png(root / meta / "000.png" / "SYNOPHOTO_THUMB_M.png")  # Synology's thumbnails
    _png(root / "sub" / meta / "thumb.png")
    train = load(str(root), "train")
    assert [p.name for p in train.paths] == ["000.png", "001.png"]
    # nor is one a defect type of an MVTec test split
    ds = tmp_path / "ds"
    _pngs(ds / "train" / "good", 2)
    _test_split(ds)
    _png(ds / "test" / meta / "thumb.png")
    _png(ds / "train" / meta / "thumb.png")
    test = load(str(ds), "test")
    assert len(test) == 4 and meta not in test.kinds
    assert len(load(str(ds), "train")) == 2


def test_mask_files_in_a_plain_folder_are_left_out_with_a_warning(tmp_path, caplog):
    root = tmp_path / "plain"
    _pngs(root, 3)
    for i in range(5):
        _png(root / f"{i:03d}_mask.png", 255)
    _png(root / "sub" / "x_MASK.png", 255)
    with caplog.at_level(logging.WARNING):
        for split in ("train", "test"):
            data = load(str(root), split)
            assert sorted(p.name for p in data.paths) == ["000.png", "001.png", "002.png"]
    assert "6 files named *_mask left out" in caplog.text
    assert "000_mask.png" in caplog.text
    only = tmp_path / "only"
    _png(only / "a_mask.png", 255)
    with pytest.raises(DataError, match="only 1 file.*_mask"):
        load(str(only), "train")
    assert len(load(str(only / "a_mask.png"), "train")) == 1  # a file given as it is


@pytest.mark.parametrize("suffix", [".heic", ".HEIF", ".dng", ".cr2", ".nef", ".arw", ".jxl",
                                    ".avif", ".psd"])
def test_image_files_of_unreadable_formats_are_warned_about(tmp_path, caplog, suffix):
    root = tmp_path / "plain"
    _pngs(root, 2)
    (root / f"photo{suffix}").write_bytes(b"\0" * 16)
    with caplog.at_level(logging.WARNING):
        found = list_images(root)
    assert len(found) == 2
    assert f"1 file with the suffix {suffix.lower()} left out (photo{suffix})" in caplog.text


# ------------------------------------------------------------------ 4. one file, two labels


def test_one_file_under_two_test_type_folders_is_refused(tmp_path):
    root = tmp_path / "ds"
    _pngs(root / "train" / "good", 2)
    _test_split(root)
    link = root / "test" / "good" / "x_link.png"
    link.symlink_to(Path("..") / "crack" / "000.png")
    with pytest.raises(DataError) as e:
        load(str(root), "test")
    msg = str(e.value)
    assert str(link) in msg and str(root / "test" / "crack" / "000.png") in msg
    assert "crack (anomalous)" in msg and "good (normal)" in msg


def test_one_file_under_two_defect_types_is_refused(tmp_path):
    root = tmp_path / "ds"
    _pngs(root / "train" / "good", 2)
    _test_split(root)
    (root / "test" / "scratch").mkdir()
    (root / "test" / "scratch" / "dup.png").symlink_to(root / "test" / "crack" / "001.png")
    with pytest.raises(DataError, match="under two type folders"):
        load(str(root), "test")



def test_predict_leaves_out_the_masks_of_a_ground_truth_folder_in_any_case(tmp_path):
    from oneclass.runs.prediction import _input_paths

    root = tmp_path / "cap"
    for sub in ("Train/good", "Test/good", "Test/crack", "Ground_Truth/crack"):
        (root / sub).mkdir(parents=True)
    img = np.zeros((8, 8), np.uint8)
    for p in ("Train/good/0.png", "Test/good/0.png", "Test/crack/0.png",
              "Ground_Truth/crack/0_mask.png"):
        Image.fromarray(img).save(root / p)
    found = _input_paths([str(root)])
    assert not any("Ground_Truth" in str(p) for p in found) and len(found) == 3


def test_an_empty_file_is_named_as_empty(tmp_path):
    from oneclass.data.images import read_image
    from oneclass.errors import NotAnImageError

    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(NotAnImageError, match=r"empty.png: empty file \(0 bytes\)"):
        read_image(tmp_path / "empty.png")


def test_a_multi_frame_file_is_warned_about(tmp_path, caplog):
    from oneclass.data.images import read_image

    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (0, 100, 200)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    with caplog.at_level(logging.WARNING, logger="oneclass"):
        a = read_image(tmp_path / "stack.tif")
    assert int(a.max()) == 0  # the first frame
    assert "stack.tif: holds 3 frames (pages); only the first is read" in caplog.text


def test_mask_names_match_the_mask_suffix_in_any_case(tmp_path):
    root = tmp_path / "m"
    for sub in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
        (root / sub).mkdir(parents=True)
    img = np.zeros((8, 8), np.uint8)
    for p in ("train/good/0.png", "test/good/0.png", "test/crack/0.png"):
        Image.fromarray(img).save(root / p)
    m = img.copy()
    m[2:4, 2:4] = 255
    Image.fromarray(m).save(root / "ground_truth/crack/0_MASK.png")
    test = load(str(root), "test")
    assert test.mask_paths[list(test.labels).index(ANOMALOUS)].name == "0_MASK.png"


def test_a_phone_jpeg_with_a_preview_image_is_one_picture(tmp_path, caplog):
    """Pillow opens JPEGs carrying a second (preview, gain-map) image as MPO with two frames:
    every phone photo was warned about as a multi-frame file."""
    from oneclass.data.images import read_image

    a = Image.fromarray(np.full((16, 16, 3), 90, np.uint8))
    a.save(tmp_path / "phone.jpg", format="MPO", save_all=True, append_images=[a.resize((8, 8))])
    with Image.open(tmp_path / "phone.jpg") as im:
        assert im.format == "MPO" and im.n_frames == 2
    with caplog.at_level(logging.WARNING, logger="oneclass"):
        read_image(tmp_path / "phone.jpg")
    assert "frames" not in caplog.text


def test_a_lone_train_good_folder_is_read_and_good_beside_bad_is_refused(tmp_path):
    """A plain folder holding train/good/ only was refused as a split layout, while good/ +
    bad/ was read whole, its defects as normal training images."""
    lone = tmp_path / "lone"
    _pngs(lone / "train" / "good", 3)
    assert len(load(str(lone), "train")) == 3
    mixed = tmp_path / "mixed"
    _pngs(mixed / "good", 3)
    _pngs(mixed / "bad", 2, value=250)
    with pytest.raises(DataError, match=r"holds good/ beside bad/.*--data .*good"):
        load(str(mixed), "train")
    assert len(load(str(mixed), "test")) == 5  # scoring all of it, unlabeled, is fine


def test_predict_leaves_out_mask_files_of_a_plain_folder_as_load_does(tmp_path, caplog):
    from oneclass.runs.prediction import _input_paths

    _pngs(tmp_path / "p", 3)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "p" / "0_mask.png")
    with caplog.at_level(logging.WARNING, logger="oneclass"):
        found = _input_paths([str(tmp_path / "p")])
    assert len(found) == 3 and "1 file named *_mask left out" in caplog.text
    assert _input_paths([str(tmp_path / "p" / "0_mask.png")])  # given itself: scored


def test_one_file_under_two_normal_folders_is_said_to_be_evaluated_twice(tmp_path):
    root = tmp_path / "ds"
    _pngs(root / "train" / "good", 2)
    _test_split(root)
    (root / "test" / "ok").mkdir()
    (root / "test" / "ok" / "x.png").symlink_to(Path("..") / "good" / "000.png")
    with pytest.raises(DataError, match=r"evaluated twice \(good/ and ok/\)"):
        load(str(root), "test")


def test_eval_warns_of_test_images_that_are_training_images_too(tmp_path, capsys):
    import shutil

    from oneclass.data.synthetic import write_mvtec

    from .conftest import cli

    root = write_mvtec(tmp_path / "toy", n_train=12, n_test_good=3, n_test_defect=3, size=16,
                       seed=0)
    run = tmp_path / "run"
    assert cli("train", "--method", "deep_svdd", "--data", str(root), "--out", str(run),
               "--epochs", "1", "-q") == 0
    assert cli("eval", str(run)) == 0
    assert "training images of this run too" not in capsys.readouterr().err
    first = sorted((root / "train" / "good").iterdir())[0]
    shutil.copy(first, root / "test" / "good" / "copy.png")
    assert cli("eval", str(run)) == 0
    err = capsys.readouterr().err
    assert "1 of 7 test images are training images of this run too" in err
    assert "copy.png" in err


def test_eval_of_a_plain_folder_does_not_call_its_images_training_images(tmp_path, capsys):
    """A plain folder's test split is its training images, scored unlabeled without
    metrics: nothing to warn of (and the training folder's own warnings are not repeated)."""
    from .conftest import cli

    _pngs(tmp_path / "p", 8)
    (tmp_path / "p" / "x.gif").write_bytes(b"GIF89a")
    run = tmp_path / "run"
    assert cli("train", "--method", "deep_svdd", "--data", str(tmp_path / "p"), "--out",
               str(run), "--epochs", "1", "-q") == 0
    capsys.readouterr()
    assert cli("eval", str(run)) == 0
    err = capsys.readouterr().err
    assert "training images of this run too" not in err
    assert err.count("x.gif") == 1  # the test split's listing only, not the training one again
