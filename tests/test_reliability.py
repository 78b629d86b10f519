"""Reliability (issue 9): bad images, bad configurations, interruptions, model files as data,
determinism. Figures and the long fuzz run are in docs/reliability.md."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from PIL import Image

import oneclass
from oneclass import detector as detector_mod
from oneclass import io as io_mod
from oneclass.data import ArraySet, screen
from oneclass.data import images as images_mod
from oneclass.data.synthetic import make_defects, write_mvtec
from oneclass.errors import ConfigError, DataError, ModelFileError
from oneclass.train import LoopConfig

from .conftest import cli as _cli
from .conftest import fast_params
from .conftest import one_line_error as _one_line_error
from .image_fuzz import check_case, fuzz_settings, image_files, png_bomb

SRC = Path(oneclass.__file__).resolve().parents[1]
TRAIN = ["--method", "deep_svdd", "--epochs", "1", "--set", "pretrain_epochs=1",
         "--set", "batch_size=16", "--seed", "1", "-q"]


def _toy(root: Path) -> Path:
    return write_mvtec(root, n_train=24, n_test_good=6, n_test_defect=6, size=16, seed=4)


@pytest.fixture
def small_mvtec(tmp_path):
    return _toy(tmp_path / "toy")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained once on a toy folder: ``(data, run)``; tests work on copies."""
    base = tmp_path_factory.mktemp("trained")
    data = _toy(base / "toy")
    assert _cli("train", "--data", data, "--out", base / "run", *TRAIN) == 0
    return data, base / "run"


@pytest.fixture
def run_copy(trained, tmp_path):
    """A private copy of the trained run and its data: ``(data, run)``."""
    data, run = trained
    return _copy(data, tmp_path / "toy"), _copy(run, tmp_path / "run")


def _add_bad_files(folder: Path) -> list[str]:
    """Every kind of bad file the issue lists, next to good images; returns their names."""
    good = Image.fromarray(np.full((16, 16), 90, np.uint8))
    good.save(folder / "zz_ok.png")
    data = (folder / "zz_ok.png").read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    (folder / "zero.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a JPEG\n")
    (folder / "bomb.png").write_bytes(png_bomb(100_000, 100_000))
    os.symlink(folder / "loop2.png", folder / "loop1.png")
    os.symlink(folder / "loop1.png", folder / "loop2.png")
    os.mkfifo(folder / "pipe.png")  # would block a reader for ever
    os.symlink(folder, folder / "up")  # a symlink loop of folders: not followed
    return ["bomb.png", "cut.png", "loop1.png", "loop2.png", "notes.jpg", "pipe.png", "zero.png"]


# ------------------------------------------------------------------ 1. bad images

def test_fuzzed_files_decode_or_raise_a_data_error_naming_the_file(tmp_path):
    """300 hostile files (scripts/fuzz_images.py runs thousands): each decodes to a valid
    array or raises a DataError naming it; anything else fails and Hypothesis shrinks it."""
    outcomes = []

    @fuzz_settings(300, derandomize=True)
    @given(image_files())
    def one(case):
        outcomes.append(check_case(case, tmp_path))

    one()
    assert len(outcomes) >= 300
    assert "ok" in outcomes and len(set(outcomes)) >= 3, set(outcomes)  # not a degenerate sample


def test_training_stops_on_a_bad_image_with_error_policy(small_mvtec, tmp_path, capsys):
    bad = _add_bad_files(small_mvtec / "train" / "good")
    code = _cli("train", "--data", small_mvtec, "--out", tmp_path / "r", *TRAIN)
    assert code == 2
    err = capsys.readouterr().err
    _one_line_error(err, bad[0])  # the first bad file in order, named
    assert not (tmp_path / "r" / "model").exists()


def test_training_skips_bad_images_with_a_count(small_mvtec, tmp_path, capsys):
    bad = _add_bad_files(small_mvtec / "train" / "good")
    code = _cli("train", "--data", small_mvtec, "--out", tmp_path / "r", *TRAIN,
                "--on-bad-image", "skip")
    assert code == 0
    err = capsys.readouterr().err
    assert f"skipped {len(bad)} of {24 + 1 + len(bad)} training images" in err
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert sorted(Path(n).name for n in cfg["skipped_images"]) == bad
    assert cfg["on_bad_image"] == "skip"
    meta = json.loads((tmp_path / "r" / "model" / "model.json").read_text())
    assert meta["fitted"]["n_train"] == 25 - round(25 * 0.1)  # the good ones less the holdout


def test_eval_and_predict_apply_the_policy(run_copy, tmp_path, capsys):
    data, run = run_copy
    _add_bad_files(data / "test" / "good")
    capsys.readouterr()
    assert _cli("eval", run, "--data", data) == 2
    _one_line_error(capsys.readouterr().err, "bomb.png", "over the limit")
    assert _cli("eval", run, "--data", data, "--on-bad-image", "skip") == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["skipped_images"]) == 7 and metrics["n_test"] == 6 + 1 + 6
    capsys.readouterr()
    assert _cli("predict", run, data / "test" / "good", "--out", tmp_path / "p",
                "--on-bad-image", "skip", "--no-heatmaps") == 0
    assert "7 unreadable skipped" in capsys.readouterr().out
    rows = (tmp_path / "p" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 7  # header + the 6 good test images and zz_ok.png


def test_all_images_unreadable_is_one_clear_error(tmp_path, capsys):
    d = tmp_path / "junk"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.png").write_bytes(b"\0" * i)
    code = _cli("train", "--data", d, "--out", tmp_path / "r", *TRAIN, "--on-bad-image", "skip")
    assert code == 2
    _one_line_error(capsys.readouterr().err, "none of the 3 images can be read")


def test_pixel_limit_is_configurable(tmp_path, monkeypatch, capsys):
    p = tmp_path / "big.png"
    Image.new("L", (40, 30)).save(p)
    monkeypatch.setattr(images_mod, "MAX_PIXELS", images_mod.MAX_PIXELS)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    images_mod.set_max_pixels(1000)
    with pytest.raises(DataError, match=r"big.png: image of 40x30 = 1200 pixels is over the limit of 1000"):
        images_mod.read_image(p)
    images_mod.set_max_pixels(1200)
    assert images_mod.read_image(p).shape == (30, 40, 1)
    # A bad variable is reported when an image is read, not at import (where it broke every
    # command, even --version), and --max-pixels replaces it.
    monkeypatch.setattr(images_mod, "_ENV_ERROR", None)
    monkeypatch.setenv("ONECLASS_MAX_PIXELS", "lots")
    assert images_mod.max_pixels_from_env()
    with pytest.raises(ConfigError, match="ONECLASS_MAX_PIXELS='lots': expected a positive whole"):
        images_mod.read_image(p)  # a ConfigError: --on-bad-image skip must not skip every image
    images_mod.set_max_pixels(1200)
    assert images_mod.read_image(p).shape == (30, 40, 1)
    monkeypatch.setenv("ONECLASS_MAX_PIXELS", "500")
    images_mod.max_pixels_from_env()
    assert images_mod.MAX_PIXELS == 500
    images_mod.set_max_pixels(10**8)
    with pytest.raises(DataError, match="pixel limit must be positive"):
        images_mod.set_max_pixels(0)  # the CLI's parser refuses --max-pixels 0 before


def test_a_bad_pixel_limit_variable_does_not_break_commands_that_read_no_image():
    env = {**os.environ, "ONECLASS_MAX_PIXELS": "lots"}
    r = subprocess.run([sys.executable, "-c", "import sys; from oneclass.cli import main; "
                        "sys.exit(main(['--version']))"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("oneclass "), r.stderr


def test_a_bomb_is_refused_from_its_header_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(png_bomb(60_000, 60_000))  # 3.6 G pixels claimed by a 200-byte file
    assert p.stat().st_size < 1000
    with pytest.raises(DataError, match="decompression bomb"):
        images_mod.read_image(p)


def test_eps_is_not_decoded_so_ghostscript_never_runs(tmp_path, monkeypatch):
    """Pillow decodes EPS by running Ghostscript, an outside program, on the file's content:
    an upload or a file in a folder could start it. EPS is now an unreadable format."""
    from PIL import EpsImagePlugin

    from oneclass.errors import NotAnImageError

    ran = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", "gs", raising=False)
    eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
           b"0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n")
    p = tmp_path / "a.png"  # the name does not decide
    p.write_bytes(eps)
    with pytest.raises(NotAnImageError, match="a.png: not a readable image"):
        images_mod.read_image(p)
    assert ran == []


def test_extreme_aspect_ratio_gives_a_bounded_input():
    strips = ArraySet(np.zeros((4, 3, 3000), np.uint8))
    det = oneclass.create("fcdd")  # keeps the aspect ratio of large images
    h, w = det._resolve_preprocess(strips).size
    assert max(h, w) / min(h, w) <= 4.5 and h * w <= 2 * det.default_size ** 2


def test_screen_rejects_an_unknown_policy():
    with pytest.raises(ConfigError, match="error, skip"):
        screen(ArraySet(np.zeros((2, 8, 8), np.uint8)), "ignore")


# ------------------------------------------------------------ 2. bad configurations


@pytest.mark.parametrize("argv, words", [
    (["--method", "deep_svd"], ["unknown method 'deep_svd'", "did you mean 'deep_svdd'",
                                "available: ", "deep_svdd"]),
    (["--method", "deep_svdd", "--set", "eta=1"], ["unknown parameter(s) eta", "valid:",
                                                   "batch_size"]),
    (["--method", "deep_svdd", "--set", "threshold=nan"], ["threshold must be a finite number"]),
])
def test_bad_configuration_is_named_with_the_valid_choices(argv, words, small_mvtec, tmp_path,
                                                           capsys):
    assert _cli("train", "--data", small_mvtec, "--out", tmp_path / "r", *argv) == 2
    _one_line_error(capsys.readouterr().err, *words)


def test_mask_of_another_size_is_named_at_eval(run_copy, capsys):
    data, run = run_copy
    mask = sorted((data / "ground_truth").rglob("*_mask.png"))[0]
    Image.new("L", (20, 16)).save(mask)
    capsys.readouterr()
    assert _cli("eval", run, "--data", data) == 2
    _one_line_error(capsys.readouterr().err, str(mask), "mask is 20x16", "is 16x16")
    assert _cli("eval", run, "--data", data, "--on-bad-image", "skip") == 0
    assert len(json.loads((run / "metrics.json").read_text())["skipped_images"]) == 1


def test_eval_on_unlabeled_images_writes_scores_without_image_metrics(run_copy, capsys):
    """A plain folder has no labels: eval scores it and says image metrics need labels."""
    data, run = run_copy
    capsys.readouterr()
    assert _cli("eval", run, "--data", data / "test" / "good") == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "need labeled" in err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_test"] == 6 and metrics["n_anomalous"] == 0
    assert metrics["image_auroc"] is None and metrics["accuracy_at_threshold"] is None
    assert re.search(r"^image_auroc +n/a$", out, re.M)
    rows = (run / "scores.csv").read_text().splitlines()
    assert len(rows) == 1 + 6 and all(r.split(",")[2] == "-1" for r in rows[1:])


def test_no_normal_training_images(tmp_path, capsys):
    root = write_mvtec(tmp_path / "t", n_train=2, n_test_good=2, n_test_defect=2, size=16)
    for p in (root / "train" / "good").iterdir():
        p.unlink()
    assert _cli("train", "--data", root, "--out", tmp_path / "r", *TRAIN) == 2
    _one_line_error(capsys.readouterr().err, "no training images")
    only_anomalies = ArraySet(np.zeros((4, 8, 8), np.uint8), labels=[1, 1, 1, 1])
    with pytest.raises(DataError, match="no normal training images"):
        oneclass.create("deep_svdd").fit(only_anomalies)


def _set_threshold(run: Path, value: float) -> None:
    det = oneclass.load(run / "model")
    det.threshold_ = value
    det.save(run / "model")


def test_threshold_outside_the_scores_is_reported(run_copy, tmp_path, capsys):
    data, run = run_copy
    assert _cli("eval", run, "--data", data) == 0
    assert json.loads((run / "metrics.json").read_text())["threshold_outside_scores"] is False
    _set_threshold(run, 1e9)
    capsys.readouterr()
    assert _cli("eval", run, "--data", data) == 0
    assert "threshold 1e+09 is above every test score" in capsys.readouterr().err
    assert json.loads((run / "metrics.json").read_text())["threshold_outside_scores"] is True
    _set_threshold(run, -1.0)
    assert _cli("predict", run, data / "test", "--out", tmp_path / "p", "--no-heatmaps") == 0
    assert "every image is predicted anomalous" in capsys.readouterr().err
    # an explicit threshold below every normal score, at fit
    oneclass.create("deep_svdd", epochs=1, pretrain_epochs=0, threshold=-1.0).fit(
        make_defects(20, 0, size=16, seed=0))
    assert "every image will be predicted anomalous" in capsys.readouterr().err


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("saved")
    det = oneclass.create("deep_svdd", **fast_params("deep_svdd"))
    det.fit(make_defects(40, 0, size=16, seed=1))
    det.save(d / "m")
    return det, d / "m"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("edit, words", [
    (lambda m: m.update(format_version=2), ["format version 2", "retrain"]),
    (lambda m: m.pop("fitted"), ["damaged model description", "missing entry 'fitted'"]),
    (lambda m: m.update(input_shape=[1, 10**6, 10**6]), ["damaged", "not a (C, H, W) image shape"]),
    (lambda m: m["params"].update(eta=2), ["damaged", "unknown parameter(s) eta"]),
    (lambda m: m.update(method="no_such"), ["unknown method 'no_such'"]),
    (lambda m: m["fitted"].update(threshold=float("nan")), ["damaged", "threshold nan"]),
    (lambda m: m["preprocess"].update(size=[24, 24]), ["damaged", "does not match input_shape"]),
    (lambda m: m["preprocess"].update(channels=3), ["damaged", "does not match input_shape"]),
])
def test_damaged_or_foreign_model_description(saved, tmp_path, edit, words):
    d = _copy(saved[1], tmp_path / "m")
    meta = json.loads((d / "model.json").read_text())
    edit(meta)
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError) as e:
        oneclass.load(d)
    for w in words:
        assert w in str(e.value)


def test_a_missing_parameter_is_named_when_loading(saved, tmp_path, caplog):
    d = _copy(saved[1], tmp_path / "m")
    meta = json.loads((d / "model.json").read_text())
    del meta["params"]["rep_dim"]
    (d / "model.json").write_text(json.dumps(meta))
    with caplog.at_level("WARNING"):
        oneclass.load(d)
    assert "no saved value for rep_dim=" in caplog.text


@pytest.mark.parametrize("params, words", [
    ({"heatmap_sigma": ".5"}, "heatmap_sigma must be a number >= 0"),
    ({"heatmap_sigma": -1}, "heatmap_sigma must be a number >= 0"),
    ({"seed": -1}, "seed must be an integer"),
    ({"seed": 1.5}, "seed must be an integer"),
])
def test_bad_values_are_refused_before_training(params, words):
    with pytest.raises(ConfigError, match=words):
        oneclass.create("deep_svdd", **params)


def test_numpy_scalars_are_plain_values_that_save(tmp_path):
    det = oneclass.create("deep_svdd", **{**fast_params("deep_svdd"), "epochs": np.int64(1),
                                          "lr": np.float32(1e-3)})
    assert type(det.epochs) is int and type(det.lr) is float
    det.fit(make_defects(20, 0, size=16, seed=1)).save(tmp_path / "m")
    assert oneclass.load(tmp_path / "m").epochs == 1


def test_patchcore_refuses_a_negative_projection():
    with pytest.raises(ConfigError, match="projection_dim must be >= 0"):
        oneclass.create("patchcore", projection_dim=-1)


# ---------------------------------------------------------------- 3. interruptions

DRIVER = r"""
import os, signal, sys
import torch
torch.set_num_threads(2)
import oneclass.train
from oneclass import detector as detector_mod
from oneclass import io as io_mod
from oneclass.cli import main

kill_after = int(os.environ["KILL_AFTER"])  # the checkpoint of this train epoch is on disk
real, seen = oneclass.train.atomic_write, []
def hooked(path, write):
    out = real(path, write)
    if path.name == "train.pt":
        seen.append(path)
        if len(seen) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    return out
oneclass.train.atomic_write = hooked
sys.exit(main(sys.argv[1:]))
"""


def _driver(tmp_path: Path, kill_after: int, *argv) -> subprocess.CompletedProcess:
    """Run the CLI in a child process that SIGKILLs itself after a checkpoint."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "KILL_AFTER": str(kill_after)}
    return subprocess.run([sys.executable, "-c", DRIVER, *map(str, argv)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_kill_9_during_training_then_resume_gives_the_uninterrupted_result(small_mvtec, tmp_path):
    args = ["train", "--data", small_mvtec, "--method", "deep_svdd", "--epochs", "4", "--seed", "2",
            "--set", "pretrain_epochs=2", "--set", "batch_size=8", "-q"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert _cli(*args, "--out", full) == 0  # in this process
    killed = _driver(tmp_path, 2, *args, "--out", cut)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (cut / "model").exists()
    state = torch.load(cut / "checkpoints" / "train.pt", weights_only=True)
    assert state["epoch"] == 2
    assert _cli(*args, "--out", cut, "--resume") == 0
    # bit-identical weights, across two processes and an interruption
    assert _sha(cut / "model" / "weights.safetensors") == _sha(full / "model" / "weights.safetensors")
    a, b = oneclass.load(full / "model"), oneclass.load(cut / "model")
    assert a.threshold_ == b.threshold_
    assert not (cut / "checkpoints").exists()


def _killed_while_saving(model_dir: Path, where: str) -> int:
    """Save a changed copy of the model over ``model_dir`` in a forked child that SIGKILLs
    itself at ``where``; returns the child's wait status."""
    det = oneclass.load(model_dir)
    det.threshold_ = 12345.0
    pid = os.fork()
    if pid == 0:  # child: no cleanup handler may run, as with a real kill -9
        try:
            def die(*args, **kwargs):
                os.kill(os.getpid(), signal.SIGKILL)

            if where == "fill":  # weights written, description not yet
                detector_mod.write_json = die
            else:  # "swap": the old model renamed away, the new one not yet in place
                real = os.replace
                io_mod.os.replace = lambda a, b: die() if Path(b) == model_dir else real(a, b)
            det.save(model_dir)
        finally:
            os._exit(3)
    return os.waitpid(pid, 0)[1]


@pytest.mark.parametrize("where", ["fill", "swap"])
def test_kill_9_during_save_keeps_the_previous_model(saved, tmp_path, where):
    det, src = saved
    d = _copy(src, tmp_path / "m")
    status = _killed_while_saving(d, where)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    if where == "swap":
        assert not d.exists()  # killed between the two renames ...
    again = oneclass.load(d)  # ... and loading puts the previous model back
    assert again.threshold_ == det.threshold_
    x = make_defects(4, 4, size=16, seed=9)
    assert np.array_equal(again.score(x), det.score(x))
    again.save(d)  # the next save sweeps the hidden half-written copy of the killed writer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_full_disk_during_report_keeps_the_previous_report(run_copy, monkeypatch, capsys):
    data, run = run_copy
    assert _cli("report", run, "--data", data) == 0
    before = (run / "report.html").read_bytes()
    real = pathlib.Path.write_bytes

    def full_disk(self, data):
        if self.name.startswith(".report.html"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full_disk)
    (run / "metrics.json").unlink(missing_ok=True)  # the report computes its own metrics
    capsys.readouterr()
    assert _cli("report", run, "--data", data, "--top", "2") == 2
    _one_line_error(capsys.readouterr().err, "report.html", "no space left on device")
    assert (run / "report.html").read_bytes() == before
    assert not list(run.glob(".report.html*"))


def test_cli_turns_a_raw_full_disk_error_into_one_line(monkeypatch, capsys, tmp_path):
    from oneclass import runs

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "scores.csv"))

    monkeypatch.setattr(runs, "evaluate", full)
    assert _cli("eval", tmp_path) == 2
    _one_line_error(capsys.readouterr().err, "scores.csv", "no space left on device")
    monkeypatch.setattr(runs, "predict", full)
    assert _cli("predict", tmp_path, tmp_path, "--out", tmp_path / "p") == 2
    _one_line_error(capsys.readouterr().err, "cannot write predictions", "rerun with --resume")


# ------------------------------------------------------- 5. model files are data


class _Payload:
    """Unpickling this runs code: it creates the file named ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_a_pickle_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save({"epoch": 1, "x": _Payload(marker)}, ckpt / "train.pt")
    with pytest.raises(ModelFileError, match="cannot read checkpoint"):
        oneclass.create("deep_svdd", epochs=2, pretrain_epochs=0, batch_size=16).fit(
            make_defects(20, 0, size=16, seed=0), loop=LoopConfig(checkpoint_dir=ckpt, resume=True))
    assert not marker.exists()


def test_a_description_without_its_checksum_is_refused(saved, tmp_path):
    d = _copy(saved[1], tmp_path / "m")
    meta = json.loads((d / "model.json").read_text())
    del meta["weights_sha256"]
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="no weights_sha256 entry"):
        oneclass.load(d)


def test_a_pickle_in_place_of_the_weights_is_refused_without_running_it(saved, tmp_path):
    d = _copy(saved[1], tmp_path / "m")
    marker = tmp_path / "pwned"
    torch.save({"w": _Payload(marker)}, d / "weights.safetensors")
    meta = json.loads((d / "model.json").read_text())
    meta["weights_sha256"] = _sha(d / "weights.safetensors")  # an attacker updates the checksum
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="cannot load weights"):
        oneclass.load(d)
    assert not marker.exists()


@pytest.mark.parametrize("where", [0, 8, -1])
def test_tampered_or_truncated_weights_are_refused(saved, tmp_path, where):
    d = _copy(saved[1], tmp_path / "m")
    w = d / "weights.safetensors"
    raw = bytearray(w.read_bytes())
    if where == -1:
        raw = raw[: len(raw) // 2]
    else:
        raw[where] ^= 0x55
    w.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="checksum"):
        oneclass.load(d)


def test_no_code_path_unpickles():
    for f in SRC.joinpath("oneclass").rglob("*.py"):
        text = f.read_text()
        assert not re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b", text, re.M), f
        for call in text.split("torch.load(")[1:]:
            assert "weights_only=True" in call[:300].split("\n\n")[0], (f, call[:300])


# ---------------------------------------------------------------- 6. determinism


#: The smallest settings of every method's own parameters, where it has them (a method added
#: later is covered with its defaults plus these).
_TINY = {"pretrain_epochs": 1, "width": 16, "z_dim": 8, "search_steps": 2, "search_candidates": 4,
         "critic_iters": 1, "net_size": 64, "trainable_blocks": 1, "coreset_max": 64}


@pytest.mark.parametrize("name", oneclass.available())
def test_same_seed_gives_bit_identical_weights_and_scores(name):
    # 18 images to train on, 6 held back for the threshold, 12 to score; batches of 6.
    train = make_defects(24, 0, size=16, seed=5)
    test = make_defects(6, 6, size=16, seed=6)
    defaults = oneclass.registry.get(name).all_defaults()
    params = {"epochs": 2, "batch_size": 6, "score_batch_size": 6, "holdout": 0.25, "seed": 0,
              **{k: v for k, v in _TINY.items() if k in defaults}}
    a = oneclass.create(name, **params).fit(train)
    b = oneclass.create(name, **params).fit(train)
    sa, sb = a.model_.state_dict(), b.model_.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert np.array_equal(a.score(test), b.score(test))
    assert np.array_equal(a.anomaly_map(test), b.anomaly_map(test))
    assert a.threshold_ == b.threshold_ and "6 held-back" in a.threshold_source_
    da, db = a.describe(), b.describe()  # what model.json records: map scale, radius, bank, ...
    for d in (da, db):
        d["fitted"].pop("train_seconds")
    assert da == db


def test_a_dead_writers_temporary_files_are_swept_and_a_live_ones_kept(tmp_path):
    dead = tmp_path / ".x.json.999999999.abcd1234.tmp"  # above pid_max: that writer is gone
    live = tmp_path / f".x.json.{os.getppid()}.abcd1234.tmp"
    users = tmp_path / ".notes.2024.v2.tmp"  # a user's file that only looks like ours
    users.write_text("keep me")
    dead.write_text("half")
    live.write_text("in progress")
    io_mod.write_json(tmp_path / "x.json", {"v": 1})
    assert not dead.exists() and live.exists() and users.exists()
    assert json.loads((tmp_path / "x.json").read_text()) == {"v": 1}


@pytest.mark.parametrize("value", ["0", "false", "No", " off ", ""])
def test_deterministic_mode_stays_off_for_the_values_that_say_off(monkeypatch, value):
    from oneclass.device import seed_everything

    monkeypatch.setenv("ONECLASS_DETERMINISTIC", value)
    torch.use_deterministic_algorithms(False)
    seed_everything(0)
    assert not torch.are_deterministic_algorithms_enabled()


def test_deterministic_mode_is_opt_in(monkeypatch):
    from oneclass.device import seed_everything

    monkeypatch.setenv("ONECLASS_DETERMINISTIC", "1")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        seed_everything(0)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


def test_an_fcdd_model_from_before_min_train_steps_loads_without_a_warning(tmp_path, caplog):
    # the parameter only sets how long training runs: nothing of a trained model is missing
    det = oneclass.create("fcdd", epochs=1, batch_size=16, net="cnn224", size=24, seed=0)
    det.fit(make_defects(40, 0, size=24, seed=0)).save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    del meta["params"]["min_train_steps"]
    del meta["params"]["lr"]
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with caplog.at_level("WARNING"):
        oneclass.load(tmp_path / "m")
    assert "no saved value for lr=" in caplog.text and "min_train_steps" not in caplog.text


def test_a_description_asking_for_huge_tensors_allocates_nothing(saved, tmp_path, monkeypatch):
    # model.json edited to build a 400 MB layer (1024 x 100,000 floats), the weights left as
    # they are (so their checksum still holds): the network is sized on the meta device
    # first, and the mismatch is refused before any real tensor of that size is made.
    d = _copy(saved[1], tmp_path / "m")
    meta = json.loads((d / "model.json").read_text())
    meta["params"]["rep_dim"] = 100_000
    (d / "model.json").write_text(json.dumps(meta))
    built = []
    real_build = type(saved[0])._build

    def build(self, shape):
        net = real_build(self, shape)
        built.append(next(net.parameters()).device.type)
        return net

    monkeypatch.setattr(type(saved[0]), "_build", build)
    with pytest.raises(ModelFileError, match="do not fit the network model.json describes"):
        oneclass.load(d)
    assert built == ["meta"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_weights_that_are_not_a_regular_file_are_refused_without_reading(saved, tmp_path):
    # /dev/zero linked in would be read until memory runs out, a FIFO would block for ever
    d = _copy(saved[1], tmp_path / "m")
    (d / "weights.safetensors").unlink()
    os.mkfifo(d / "weights.safetensors")
    with pytest.raises(ModelFileError, match="cannot read weights .not a regular file"):
        oneclass.load(d)
    (d / "weights.safetensors").unlink()
    (d / "weights.safetensors").symlink_to("/dev/zero")
    with pytest.raises(ModelFileError, match="not a regular file"):
        oneclass.load(d)


def test_a_save_swapping_the_folder_between_the_two_reads_is_not_damage(saved, tmp_path,
                                                                       monkeypatch):
    # A service loading a run while it is retrained: the model folder is swapped for a new
    # one (rename, then the old one removed) between the reads of model.json and of the
    # weights. Both files come from one folder, so the load gives one model or the other,
    # never "weights do not match their checksum".
    import oneclass.model_files as model_files

    d = _copy(saved[1], tmp_path / "m")
    other = oneclass.create("deep_svdd", **fast_params("deep_svdd"))
    other.fit(make_defects(40, 0, size=16, seed=2))
    real_read = model_files._read_regular
    swapped = []

    def read(name, dir_fd, where):
        if name == "weights.safetensors" and not swapped:
            swapped.append(name)
            other.save(d)  # the swap, between the two reads
        return real_read(name, dir_fd, where)

    monkeypatch.setattr(model_files, "_read_regular", read)
    det = oneclass.load(d)
    assert swapped
    assert det.weights_sha256_ == json.loads((d / "model.json").read_text())["weights_sha256"]
    x = make_defects(4, 0, size=16, seed=3)
    np.testing.assert_array_equal(det.score(x), other.score(x))


def test_the_model_id_of_a_loaded_model_is_its_own_after_a_retrain(saved, tmp_path):
    from oneclass.export import loaded_model_id, model_id

    d = _copy(saved[1], tmp_path / "m")
    first = oneclass.load(d)
    before = model_id(d)
    other = oneclass.create("deep_svdd", **fast_params("deep_svdd"))
    other.fit(make_defects(40, 0, size=16, seed=2))
    other.save(d)  # the run is retrained while `first` is being served
    assert loaded_model_id(first, d) == before != model_id(d)
    assert loaded_model_id(other) == model_id(d)
    first.fit(make_defects(40, 0, size=16, seed=4))  # refitted: not the loaded weights any more
    assert loaded_model_id(first) is None
