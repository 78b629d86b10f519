"""Review fixes: labeled anomalies and outliers that are the training data, the identity of
data specs, semi-supervised ratios without a solution, file names that are not UTF-8, and
predict's inputs, --resume and --overwrite."""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oneclass import runs
from oneclass.data.folder import list_images
from oneclass.data.semi import semi_counts
from oneclass.data.synthetic import write_mvtec
from oneclass.errors import ConfigError, DataError, OneclassError
from oneclass.runs import evaluate, predict, train, training_data
from oneclass.runs.prediction import _input_paths

from .conftest import write_fake_mnist


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small MVTec-layout folder (16x16) and a run trained on it for one epoch."""
    base = tmp_path_factory.mktemp("review")
    data = write_mvtec(base / "mv", n_train=20, n_test_good=4, n_test_defect=6, size=16, seed=4)
    run = base / "run"
    train("deep_svdd", str(data), run, {"epochs": 1, "pretrain_epochs": 0, "seed": 0},
          progress=False)
    return data, run


def _images(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        Image.fromarray(np.full((16, 16), 20 * k + 10, np.uint8)).save(
            folder / name, format="PNG")
    return folder


def _rows(out: Path) -> list[dict]:
    with open(out / "predictions.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------ labeled anomalies, outliers


def test_labeled_anomalies_of_a_benchmark_never_include_the_normal_class(classic_root):
    root = str(classic_root)
    # mnist:5's anomalies are every class but 5: class 3, the normal class, among them
    with pytest.raises(ConfigError, match=r"--anomalies mnist:5.*normal class of --data "
                                          r"mnist:3.*mnist:3:5"):
        training_data("mnist:3", root, 0, anomalies="mnist:5", anomaly_limit=2)
    # class 5 only, from the test images that mnist:3 is evaluated on
    train_set, _, used = training_data("mnist:3", root, 0, anomalies="mnist:3:5",
                                       anomaly_limit=2)
    picked = train_set.subset(np.arange(len(train_set) - len(used), len(train_set)))
    assert len(used) == 2 and set(picked.kinds) == {"5"} and set(picked.labels) == {1}
    for cfg in ({"anomalies": "mnist:3:5", "anomalies_used": used},  # as the benchmarks pass it
                {"anomalies": "mnist:3:5", "anomalies_used": used, "anomalies_source": "mnist"}):
        test = runs.test_set("mnist:3", root, cfg)
        assert len(test) == 30 - 2 and not set(used) & set(test.names)
    # every other class: never the normal one
    train_set, _, used = training_data("mnist:3", root, 0, anomalies="mnist:3", anomaly_limit=1)
    kinds = train_set.subset(np.arange(len(train_set) - len(used), len(train_set))).kinds
    assert sorted(kinds) == [str(c) for c in range(10) if c != 3]


def test_outliers_that_are_the_training_data_are_refused(small, classic_root, monkeypatch):
    data, _ = small
    monkeypatch.chdir(data.parent)
    for spec in (str(data), data.name, f"./{data.name}/"):
        with pytest.raises(ConfigError, match="training data.*itself"):
            training_data(data.name, None, 0, outliers=spec)
    with pytest.raises(ConfigError, match="20 of its 20 images are training images"):
        training_data(str(data), None, 0, outliers=str(data / "train" / "good"))
    root = str(classic_root)
    for spec in ("mnist:3", "MNIST:03", "mnist:3:5", "mnist", "mnist:all"):
        with pytest.raises(ConfigError, match="normal|itself"):
            training_data("mnist:3", root, 0, outliers=spec)
    _, outliers, _ = training_data("mnist:3", root, 0, outliers="mnist:5")
    assert set(outliers.kinds) == {"good"} and len(outliers) == 5  # class 5's training images


def test_anomaly_limit_is_checked_and_a_shortage_is_named(small, caplog):
    data, _ = small
    for bad in (0, -1):
        with pytest.raises(ConfigError, match=f"anomaly.limit.*at least 1, got {bad}"):
            training_data(str(data), None, 0, anomalies=str(data), anomaly_limit=bad)
    test = runs.test_set(str(data), None, {})
    n_anomalous = int((test.labels == 1).sum())
    kinds = sorted({k for k, lab in zip(test.kinds, test.labels) if lab == 1})
    with caplog.at_level(logging.WARNING):
        _, _, used = training_data(str(data), None, 0, anomalies=str(data), anomaly_limit=100)
    assert len(used) == n_anomalous
    text = caplog.text
    assert "fewer anomalous test images than --anomaly-limit 100" in text
    assert all(k in text for k in kinds) and "none is left to evaluate" in text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        left = runs.test_set(str(data), None, {"anomalies": str(data), "anomalies_used": used})
    assert not (left.labels == 1).any() and "n/a" in caplog.text


def test_training_anomalies_stay_out_of_eval_however_the_spec_is_spelled(classic_root, tmp_path):
    root = classic_root
    os.replace(write_fake_mnist(tmp_path, 50, 30) / "mnist.npz", root / "fashion_mnist.npz")
    train_set, _, used = training_data("fashion-mnist:3", str(root), 0,
                                       anomalies="fashion-mnist:3", anomaly_limit=1)
    cfg = {"anomalies": "fashion-mnist:3", "anomalies_used": used}
    for spec in ("fmnist:3", "FASHION-MNIST:3", "fashion-mnist:03", "fashion_mnist:3"):
        test = runs.test_set(spec, str(root), cfg)
        assert len(test) == 30 - 9 and not set(used) & set(test.names), spec


def test_training_anomalies_stay_out_of_eval_from_another_folder(small, tmp_path, monkeypatch):
    """A run trained with a relative --anomalies records the folder's resolved path."""
    data, _ = small
    run = tmp_path / "run"
    monkeypatch.chdir(data.parent)
    train("deep_svdd", data.name, run, {"epochs": 1, "pretrain_epochs": 0, "seed": 0},
          anomalies=data.name, anomaly_limit=1, progress=False)
    cfg = json.loads((run / "config.json").read_text())
    monkeypatch.chdir(tmp_path)
    test = runs.test_set(str(data), None, cfg)
    assert cfg["anomalies_used"] and not set(cfg["anomalies_used"]) & set(test.names)


def test_semi_supervised_ratios_without_a_solution_are_an_error():
    assert semi_counts(6000, 0.0, 0.05, 0.0) == (0, 6000, 0, 315)  # valid settings unchanged
    assert semi_counts(6000, 0.1, 0.05, 0.1) == (693, 5306, 589, 346)
    with pytest.raises(DataError, match=r"ratio_known_normal=0.7, ratio_known_outlier=0.35.*"
                                        r"6461, -461, 0, 3230"):
        semi_counts(6000, 0.7, 0.35, 0.0)
    with pytest.raises(DataError, match="ratio_pollution=0.1.*-46"):
        semi_counts(6131, 0.7, 0.35, 0.1)


# ------------------------------------------------------------ predict and eval


@pytest.mark.skipif(sys.platform != "linux", reason="file names of any bytes: Linux")
def test_file_names_that_are_not_utf8_are_written_escaped(small, tmp_path, monkeypatch):
    data, run = small
    folder = _images(tmp_path / "imgs", ["ok0.png", "ok1.png"])
    latin = os.fsdecode(b"caf\xe9.png")  # Latin-1 name: a lone surrogate in Python
    try:
        Image.fromarray(np.full((16, 16), 200, np.uint8)).save(folder / latin, format="PNG")
    except (OSError, UnicodeError):
        pytest.skip("the file system refuses names that are not UTF-8")
    out = tmp_path / "pred"
    monkeypatch.chdir(tmp_path)
    assert predict(run, ["imgs"], out, batch_size=2)["scored"] == 3
    rows = {r["path"]: r["heatmap"] for r in _rows(out)}
    assert set(rows) == {"imgs/caf\\xe9.png", "imgs/ok0.png", "imgs/ok1.png"}
    assert all((out / h).is_file() for h in rows.values())
    for spelling in ("imgs", str(folder)):  # --resume recognises the row, however spelled
        assert predict(run, [spelling], out, resume=True)["scored"] == 0
    assert len(_rows(out)) == 3
    test = tmp_path / "mvbad"
    _images(test / "test" / "good", ["ok0.png"])
    os.link(folder / latin, test / "test" / "good" / latin)
    _images(test / "test" / "crack", ["000.png"])
    (test / "train").mkdir()
    evaluate(run, str(test), progress=False)
    assert "test/good/caf\\xe9.png,good,0," in (run / "scores.csv").read_text(encoding="utf-8")


def test_resume_matches_images_by_resolved_path(small, tmp_path, monkeypatch):
    _, run = small
    folder = _images(tmp_path / "imgs", ["a.png", "b.png", "c.png"])
    out = tmp_path / "pred"
    monkeypatch.chdir(tmp_path)
    assert predict(run, ["imgs"], out)["scored"] == 3
    for spelling in (str(folder), "./imgs/../imgs", str(folder / "a.png")):
        r = predict(run, [spelling], out, resume=True)
        assert r["scored"] == 0 and r["skipped"] >= 1, spelling
    monkeypatch.chdir(folder)  # the rows' relative paths still resolve against the first folder
    assert predict(run, ["."], out, resume=True)["scored"] == 0
    rows = _rows(out)
    assert [r["path"] for r in rows] == ["imgs/a.png", "imgs/b.png", "imgs/c.png"]
    assert len(list((out / "heatmaps").iterdir())) == 3
    # another folder with the same relative names, resumed from there: other images, scored,
    # and written with absolute paths (a relative one would name the first folder's image)
    other = tmp_path / "elsewhere"
    _images(other / "imgs", ["a.png", "d.png"])
    monkeypatch.chdir(other)
    assert predict(run, ["imgs"], out, resume=True)["scored"] == 2
    assert [r["path"] for r in _rows(out)][3:] == [str(other / "imgs" / "a.png"),
                                                   str(other / "imgs" / "d.png")]
    assert predict(run, ["imgs", str(folder)], out, resume=True)["scored"] == 0
    # the folder the rows were written from has moved (recorded cwd gone): relative rows are
    # read against the current folder
    side = json.loads((out / "predictions.json").read_text())
    (out / "predictions.json").write_text(json.dumps({**side, "cwd": str(tmp_path / "gone")}))
    monkeypatch.chdir(tmp_path)
    assert predict(run, ["imgs"], out, resume=True)["scored"] == 0


def test_out_inside_an_input_folder_is_not_read_as_input(small, tmp_path, caplog):
    _, run = small
    folder = _images(tmp_path / "imgs", ["a.png", "b.png", "c.png"])
    out = folder / "pred"
    assert predict(run, [str(folder)], out)["scored"] == 3
    with caplog.at_level(logging.WARNING):
        r = predict(run, [str(folder)], out, resume=True)
    assert r["scored"] == 0 and r["skipped"] == 3 and "own heatmaps" in caplog.text
    assert predict(run, [str(folder)], out, overwrite=True)["scored"] == 3
    assert len(_rows(out)) == 3 and len(list((out / "heatmaps").iterdir())) == 3
    # --out the input folder itself, or a folder above it: its images are still scored
    for k, up in enumerate((0, 1)):
        fresh = _images(tmp_path / f"fresh{k}" / "imgs", ["a.png", "b.png"])
        o = fresh.parents[up]
        assert predict(run, [str(fresh)], o)["scored"] == 2, o


def test_overwrite_that_stops_keeps_the_previous_results(small, tmp_path, monkeypatch):
    _, run = small
    first = _images(tmp_path / "first", ["a.png", "b.png", "c.png"])
    out = tmp_path / "pred"
    predict(run, [str(first)], out)
    before = (out / "predictions.csv").read_bytes()
    maps = sorted(p.name for p in (out / "heatmaps").iterdir())
    side = (out / "predictions.json").read_bytes()
    second = _images(tmp_path / "second", [f"n{i}.png" for i in range(6)])
    (second / "z.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # in the last batch
    with pytest.raises(DataError, match="z.png"):
        predict(run, [str(second)], out, overwrite=True, batch_size=2)
    assert (out / "predictions.csv").read_bytes() == before
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == maps
    assert (out / "predictions.json").read_bytes() == side
    assert sorted(p.name for p in out.iterdir()) == ["heatmaps", "predictions.csv",
                                                     "predictions.json"]
    (second / "z.png").unlink()
    real = Path.write_bytes

    def full(self, b):  # a full disk at the third heatmap
        if self.name.startswith(".n2.png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, b)

    with monkeypatch.context() as m:
        m.setattr(Path, "write_bytes", full)
        with pytest.raises(OneclassError, match="previous predictions.csv and heatmaps are kept"):
            predict(run, [str(second)], out, overwrite=True, batch_size=2)
    assert (out / "predictions.csv").read_bytes() == before
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == maps
    assert predict(run, [str(second)], out, overwrite=True, batch_size=2)["scored"] == 6
    assert [Path(r["path"]).name for r in _rows(out)] == [f"n{i}.png" for i in range(6)]
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == [f"n{i}.png" for i in range(6)]
    assert sorted(p.name for p in out.iterdir()) == ["heatmaps", "predictions.csv",
                                                     "predictions.json"]


def test_other_image_suffixes_are_named_in_a_warning(tmp_path, caplog):
    folder = _images(tmp_path / "imgs", ["x.png"])
    a = np.zeros((8, 8), np.uint8)
    for name, fmt in (("y.gif", "GIF"), ("z.pgm", "PPM"), ("w.jfif", "JPEG"),
                      (".hidden.gif", "GIF"), ("m_mask.gif", "GIF")):
        Image.fromarray(a).save(folder / name, format=fmt)
    (folder / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        assert list_images(folder) == [folder / "x.png"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "3 files" in warned[0]
    assert all(n in warned[0] for n in ("y.gif", "z.pgm", "w.jfif"))
    assert not any(n in warned[0] for n in (".hidden", "m_mask", "notes"))


def test_written_scores_are_the_models_float32_scores(small, tmp_path, monkeypatch):
    """scores.csv holds 9 significant digits: every float32 score reads back as itself (with
    8, neighbours such as 1000.00006 and 1000.00012 were both written 1000.0001), so the
    label column equals score >= threshold from the file's own numbers."""
    data, shared = small
    run = tmp_path / "run"  # its metrics are of made-up scores: not the shared run's
    shutil.copytree(shared, run)
    det = runs.load_model(run)
    n = len(runs.test_set(str(data), None, runs.read_config(run)))
    given = np.nextafter(np.float32(1000.0), np.float32(2000.0), dtype=np.float32)
    given = np.array([given, np.nextafter(given, np.float32(2000.0))] * n, np.float32)[:n]
    monkeypatch.setattr(type(det), "score", lambda self, x, progress=None: given[:len(x)])
    evaluate(run)
    with open(run / "scores.csv", newline="", encoding="utf-8") as fh:
        written = [np.float32(float(r["score"])) for r in csv.DictReader(fh)]
    assert written == list(given)


def test_predict_on_an_mvtec_folder_leaves_its_masks_out(small, tmp_path):
    data, _ = small
    paths = _input_paths([str(data)])
    assert paths and not any("ground_truth" in p.parts for p in paths)
    assert len(paths) == len(list_images(data / "train")) + len(list_images(data / "test"))
    # a folder of several categories: each category's masks are left out; a folder merely
    # named ground_truth elsewhere is scored
    paths = _input_paths([str(data.parent)])
    assert not any(p.parts[-4:-2] == (data.name, "ground_truth") for p in paths)
    assert len([p for p in paths if data.name in p.parts]) == len(
        list_images(data / "train")) + len(list_images(data / "test"))
    plain = _images(tmp_path / "x" / "ground_truth", ["a.png"])
    assert _input_paths([str(tmp_path / "x")]) == [plain / "a.png"]


def test_typos_in_benchmark_specs_get_the_loaders_error_not_a_traceback(classic_root):
    root = str(classic_root)
    for data, kw in (("mnist:x", {"outliers": "mnist"}), ("mnist:12", {"outliers": "mnist"}),
                     ("mnist:3", {"anomalies": "mnist:5:12"}), ("mnist:3", {"outliers": "mnist:x"})):
        with pytest.raises(DataError, match="0..9"):
            training_data(data, root, 0, **kw)


def test_synthetic_and_elpv_specs_are_compared_as_the_data_they_load():
    from oneclass.data import canonical

    assert canonical("synthetic:grid:gray:32x32") == canonical("synthetic:GRID:32x32") \
        == "synthetic:grid:32x32:gray"
    assert canonical("synthetic") == "synthetic:stripes:64x64:gray"
    with pytest.raises(ConfigError, match="itself"):
        training_data("elpv", None, 0, outliers="elpv:mono")


@pytest.mark.parametrize("data, outliers", [
    ("natural:30", "natural:30:64"),  # the same crops at another size
    ("natural:20", "natural:40"),  # the first 20 of them
    ("synthetic", "synthetic:stripes:rgb"),  # the same textures, tinted
    ("synthetic:grid", "synthetic:grid:32x32"),  # the same textures, smaller
])
def test_generated_outliers_of_the_training_generator_are_refused(data, outliers):
    from oneclass.errors import ConfigError
    from oneclass.runs import training_data

    with pytest.raises(ConfigError, match="is the training data"):
        training_data(data, None, 0, outliers=outliers)


def test_outliers_that_are_test_images_of_the_data_folder_are_refused(mvtec_dir):
    from oneclass.errors import ConfigError
    from oneclass.runs import training_data

    for sub in ("test", "test/good"):
        with pytest.raises(ConfigError, match="are test images of --data .*--anomalies"):
            training_data(str(mvtec_dir), None, 0, outliers=str(mvtec_dir / sub))


def test_labeled_anomalies_of_the_same_generator_leave_the_test_set_in_either_colour():
    """A synthetic set in colour holds the images of the gray one, tinted: labeled anomalies
    from one leave the other's test set. Another size draws other images under the same names,
    which stay."""
    from oneclass import data as data_mod
    from oneclass.runs import test_set, training_data

    assert data_mod.source("synthetic:stripes:64x64:rgb") == "synthetic:stripes:64x64"
    assert data_mod.source("synthetic") == "synthetic:stripes:64x64"
    assert data_mod.source("synthetic:32x32") != data_mod.source("synthetic")
    assert data_mod.source("synthetic:grid") != data_mod.source("synthetic")
    assert data_mod.source("natural:30:64") == data_mod.source("natural") == "natural"
    assert data_mod.generator("synthetic:stripes:32x32:rgb") == data_mod.generator("synthetic")
    assert data_mod.generator("mnist:3") is None
    full = data_mod.load("synthetic", "test")
    _, _, used = training_data("synthetic", None, 0, anomalies="synthetic:rgb", anomaly_limit=5)
    cfg = {"anomalies": "synthetic:rgb", "anomalies_used": used,
           "anomalies_source": data_mod.source("synthetic:rgb")}
    kept = test_set("synthetic", None, cfg)
    assert len(kept) == len(full) - len(used) and not set(used) & set(kept.names)
    # from another size: nothing of this test set was trained on
    _, _, other = training_data("synthetic:32x32", None, 0, anomalies="synthetic:32x32",
                                anomaly_limit=5)
    cfg = {"anomalies": "synthetic:32x32", "anomalies_used": other,
           "anomalies_source": data_mod.source("synthetic:32x32")}
    assert len(test_set("synthetic", None, cfg)) == len(full)
    # a run recorded before sources dropped the colour
    old = {"anomalies": "synthetic", "anomalies_used": used,
           "anomalies_source": "synthetic:stripes:64x64:gray"}
    assert len(test_set("synthetic", None, old)) == len(full) - len(used)
