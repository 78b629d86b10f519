"""A run directory and a predictions folder stay consistent and lose nothing: failed
commands keep earlier results, retraining drops results of the replaced model, resumed
predictions keep their heatmaps apart, and odd input is one line, never a traceback."""

from __future__ import annotations

import csv
import errno
import json
import pathlib
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from oneclass import io as io_mod
from oneclass.cli import main
from oneclass.data.synthetic import write_mvtec
from oneclass.registry import get

from .conftest import cli as _cli
from .conftest import one_line_error as _one_line_error

TRAIN = ["--method", "deep_svdd", "--epochs", "1", "--set", "pretrain_epochs=1",
         "--set", "batch_size=16", "--seed", "1", "-q"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("integrity")
    data = write_mvtec(base / "toy", n_train=24, n_test_good=6, n_test_defect=6, size=16, seed=4)
    assert _cli("train", "--data", data, "--out", base / "run", *TRAIN) == 0
    return data, base / "run"


@pytest.fixture(scope="module")
def mv_small(tmp_path_factory):
    return write_mvtec(tmp_path_factory.mktemp("small") / "d", n_train=8, n_test_good=2,
                       n_test_defect=2, size=16, seed=4)


@pytest.fixture
def run_copy(trained, tmp_path):
    data, run = trained
    return data, Path(shutil.copytree(run, tmp_path / "run"))


def _rows(out: Path) -> list[dict]:
    with open(out / "predictions.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------- predict


def test_an_existing_predictions_file_is_never_replaced_by_accident(run_copy, tmp_path, capsys):
    data, run = run_copy
    out = tmp_path / "p"
    assert _cli("predict", run, data / "test", "--out", out, "-q") == 0
    before = (out / "predictions.csv").read_bytes()
    n_maps = len(list((out / "heatmaps").iterdir()))
    assert n_maps == len(_rows(out)) == 12
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "b.png").write_bytes(b"garbage")
    capsys.readouterr()
    # without --resume or --overwrite: refused, before anything is touched
    assert _cli("predict", run, bad, "--out", out, "-q") == 2
    _one_line_error(capsys.readouterr().err, "predictions.csv exists", "--resume", "--overwrite")
    # with --overwrite but a bad input: refused once the input is checked, earlier rows kept
    assert _cli("predict", run, bad, "--out", out, "--overwrite", "-q") == 2
    _one_line_error(capsys.readouterr().err, "b.png")
    assert (out / "predictions.csv").read_bytes() == before
    assert len(list((out / "heatmaps").iterdir())) == n_maps
    # --overwrite with good input: the new rows and only their heatmaps
    one = data / "test" / "good" / "000.png"
    assert _cli("predict", run, one, "--out", out, "--overwrite", "-q") == 0
    assert [r["path"] for r in _rows(out)] == [str(one)]
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == ["000.png"]


def test_resume_keeps_the_heatmaps_earlier_rows_point_to(run_copy, tmp_path):
    data, run = run_copy
    out = tmp_path / "p"
    good, spot = data / "test" / "good" / "000.png", sorted((data / "test").glob("[!g]*/000.png"))[0]
    assert _cli("predict", run, good, "--out", out, "-q") == 0
    first = (out / "heatmaps" / "000.png").read_bytes()
    # the same stem comes first now: it must not take the name the earlier row holds
    assert _cli("predict", run, spot, good, "--out", out, "--resume", "-q") == 0
    rows = {r["path"]: r["heatmap"] for r in _rows(out)}
    assert rows[str(good)] == "heatmaps/000.png" and rows[str(spot)] != rows[str(good)]
    assert (out / "heatmaps" / "000.png").read_bytes() == first
    assert (out / rows[str(spot)]).is_file()


def test_resume_after_a_cut_inside_a_character(run_copy, tmp_path):
    data, run = run_copy
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("café.png", "über.png"):
        shutil.copy(data / "test" / "good" / "000.png", folder / name)
    out = tmp_path / "p"
    assert _cli("predict", run, folder, "--out", out, "-q") == 0
    raw = (out / "predictions.csv").read_bytes()
    cut = raw.index("über".encode()) + 1  # inside the two bytes of "ü"
    (out / "predictions.csv").write_bytes(raw[:cut])
    assert _cli("predict", run, folder, "--out", out, "--resume", "-q") == 0
    assert sorted(Path(r["path"]).name for r in _rows(out)) == ["café.png", "über.png"]


def test_duplicate_inputs_are_scored_once(run_copy, tmp_path, capsys):
    data, run = run_copy
    one = data / "test" / "good" / "000.png"
    out = tmp_path / "p"
    assert _cli("predict", run, one, one, data / "test" / "good", "--out", out, "-q") == 0
    paths = [r["path"] for r in _rows(out)]
    assert len(paths) == len(set(paths)) == 6
    assert "2 extra copies of images given more than once" in capsys.readouterr().err


def test_predict_when_no_input_can_be_read_is_an_error(run_copy, tmp_path, capsys):
    data, run = run_copy
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("a.png", "b.png"):
        (bad / name).write_bytes(b"not an image")
    assert _cli("predict", run, bad, "--out", tmp_path / "p", "--on-bad-image", "skip", "-q") == 2
    _one_line_error(capsys.readouterr().err, "none of the 2 input images can be read")


def test_a_full_disk_while_writing_a_heatmap_says_how_to_continue(run_copy, tmp_path, capsys,
                                                                  monkeypatch):
    data, run = run_copy
    real = pathlib.Path.write_bytes

    def full(self, b):
        if self.name.startswith(".00"):  # a heatmap's temporary file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, b)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    assert _cli("predict", run, data / "test", "--out", tmp_path / "p", "-q") == 2
    line = _one_line_error(capsys.readouterr().err, "cannot write predictions",
                           "no space left on device", "rerun with --resume")
    assert "nothing was written" in line and "previous version" not in line


# ---------------------------------------------------------------- train, eval, report


def test_retraining_drops_the_results_of_the_replaced_model(run_copy, capsys):
    data, run = run_copy
    assert _cli("eval", run) == 0 and _cli("report", run) == 0
    old = json.loads((run / "metrics.json").read_text())
    digest = json.loads((run / "model" / "model.json").read_text())["weights_sha256"]
    assert old["model_id"] == digest[:12]
    assert _cli("train", "--data", data, "--out", run, *TRAIN[:-3], "--seed", "5", "-q") == 0
    assert not any((run / f).exists() for f in ("metrics.json", "scores.csv", "report.html"))


def test_report_uses_metrics_of_this_model_only(run_copy, tmp_path):
    data, run = run_copy
    assert _cli("eval", run) == 0
    m = json.loads((run / "metrics.json").read_text())
    m["image_auroc"] = 0.123456  # as if written for another model ...
    m["model_id"] = "0" * 12
    (run / "metrics.json").write_text(json.dumps(m))
    assert _cli("report", run) == 0
    assert "0.1235" not in (run / "report.html").read_text()  # ... so not shown
    m["model_id"] = json.loads((run / "model" / "model.json").read_text())["weights_sha256"][:12]
    (run / "metrics.json").write_text(json.dumps(m))
    assert _cli("report", run) == 0  # this model's evaluation: reused as it is
    assert "0.1235" in (run / "report.html").read_text()


def test_report_recomputes_metrics_when_the_test_images_changed(run_copy):
    """``eval``'s metrics.json was reused whenever data and model matched: an image added
    since showed beside the old AUROC. Here one good test image is copied in as a defect."""
    data, run = run_copy
    data = Path(shutil.copytree(data, run.parent / "data2"))
    assert _cli("eval", run, "--data", data) == 0
    before = json.loads((run / "metrics.json").read_text())
    good = sorted((data / "test" / "good").iterdir())[0]
    defect = next(d for d in (data / "test").iterdir() if d.name != "good")
    shutil.copy(good, defect / "relabelled.png")
    mask = sorted((data / "ground_truth" / defect.name).iterdir())[0]
    shutil.copy(mask, mask.parent / "relabelled_mask.png")
    assert _cli("report", run, "--data", data) == 0
    html = (run / "report.html").read_text()
    assert _cli("eval", run, "--data", data) == 0
    after = json.loads((run / "metrics.json").read_text())
    assert after["n_test"] == before["n_test"] + 1
    assert after["test_digest"] != before["test_digest"]
    shown = f'image_auroc</th><td class="num">{after["image_auroc"]:.4f}'
    assert shown in html, html[html.find("image_auroc"):][:80]
    assert after["image_auroc"] != before["image_auroc"]


def test_report_on_other_data_leaves_the_runs_evaluation(run_copy):
    data, run = run_copy
    assert _cli("eval", run) == 0
    before = (run / "metrics.json").read_bytes(), (run / "scores.csv").read_bytes()
    assert _cli("report", run, "--data", data / "test" / "good") == 0
    assert ((run / "metrics.json").read_bytes(), (run / "scores.csv").read_bytes()) == before


def test_a_failed_retraining_leaves_the_run_as_it_was(run_copy, capsys):
    data, run = run_copy
    before = {f: (run / f).read_bytes() for f in ("config.json", "train_log.jsonl")}
    assert _cli("train", "--data", data, "--out", run, *TRAIN, "--set", "lr=1e30") == 2
    _one_line_error(capsys.readouterr().err)
    assert {f: (run / f).read_bytes() for f in before} == before  # config and log of the model
    assert json.loads(before["config.json"])["params"]["lr"] == 1e-4
    # a successful retraining then replaces both, and its log is complete
    assert _cli("train", "--data", data, "--out", run, *TRAIN[:-3], "--seed", "2", "-q") == 0
    lines = (run / "train_log.jsonl").read_text().splitlines()
    assert json.loads((run / "config.json").read_text())["params"]["seed"] == 2
    assert len(lines) == 2 and not (run / "checkpoints").exists()  # pretrain 1 + train 1


def test_size_can_be_given_as_h_w(run_copy, tmp_path):
    data, _ = run_copy
    for text in ("24,32", "24x32"):
        out = tmp_path / text
        assert _cli("train", "--data", data, "--out", out, *TRAIN, "--set", f"size={text}") == 0
        assert json.loads((out / "model" / "model.json").read_text())["input_shape"][1:] == [24, 32]


def test_eval_writes_the_scores_before_the_metrics(run_copy, monkeypatch, capsys):
    data, run = run_copy
    (run / "metrics.json").write_text('{"marker": 1}')
    real = pathlib.Path.write_bytes

    def full(self, b):
        if self.name.startswith(".scores.csv"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, b)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    assert _cli("eval", run) == 2
    _one_line_error(capsys.readouterr().err, "scores.csv", "no space left on device")
    assert json.loads((run / "metrics.json").read_text()) == {"marker": 1}


def test_non_finite_scores_name_the_images(run_copy, tmp_path, monkeypatch, capsys):
    data, run = run_copy

    def nan_score(self, x):  # a function of x, so that gradient heatmaps still run
        return (x * float("nan")).flatten(1).sum(1)

    monkeypatch.setattr(get("deep_svdd"), "_score", nan_score)
    assert _cli("eval", run) == 2
    _one_line_error(capsys.readouterr().err, "no finite score for 12 of 12 images", "000.png")
    assert _cli("predict", run, data / "test" / "good", "--out", tmp_path / "p", "-q") == 2
    _one_line_error(capsys.readouterr().err, "no finite score", "000.png")


@pytest.mark.parametrize("argv, words", [
    (["predict", "{run}", "{data}", "--out", "{tmp}/p", "--batch-size", "0"], ["--batch-size"]),
    (["report", "{run}", "--top", "-1"], ["--top"]),
    (["serve", "{run}", "--max-pixels", "0"], ["--max-pixels"]),
    (["eval", "{run}", "--max-pixels", "-5"], ["--max-pixels"]),
    (["train", "--data", "{data}", "--out", "{tmp}/r", "--anomaly-limit", "0",
      "--method", "fcdd"], ["--anomaly-limit"]),
])
def test_bad_counts_are_refused_by_the_parser(run_copy, tmp_path, capsys, argv, words):
    data, run = run_copy
    argv = [a.format(run=run, data=data, tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(w in err for w in words) and ">= 1" in err


@pytest.mark.parametrize("argv, words", [
    (["serve", "{run}", "--max-upload-mb", "nan"], ["--max-upload-mb", "positive number"]),
    (["serve", "{run}", "--max-upload-mb", "inf"], ["--max-upload-mb", "positive number"]),
    (["serve", "{run}", "--max-upload-mb", "0"], ["--max-upload-mb", "positive number"]),
    (["serve", "{run}", "--max-upload-mb", "-5"], ["--max-upload-mb", "positive number"]),
    (["serve", "{run}", "--max-connections", "-1"], ["--max-connections", ">= 0"]),
    (["serve", "{run}", "--port", "70000"], ["--port", "0 to 65535"]),
    (["serve", "{run}", "--port", "-1"], ["--port", "0 to 65535"]),
])
def test_serve_limits_out_of_range_are_refused_by_the_parser(run_copy, capsys, argv, words):
    """These started a server that refused every request (503 with "-1 connections", 413
    over "-5242880 bytes") or crashed with a traceback (nan, inf, port 70000)."""
    data, run = run_copy
    with pytest.raises(SystemExit) as exc:
        main([a.format(run=run) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(w in err for w in words), err


@pytest.mark.parametrize("setting, words", [
    ("size=abc", ["size='abc'"]),
    ("batch_size=null", ["batch_size=None"]),
])
def test_set_values_of_the_wrong_type_are_one_line(run_copy, tmp_path, capsys, setting, words):
    data, _ = run_copy
    assert _cli("train", "--data", data, "--out", tmp_path / "r", "--method", "fcdd",
                "--set", setting, "-q") == 2
    _one_line_error(capsys.readouterr().err, "wrong type", *words)


def test_damaged_json_files_are_one_line(run_copy, tmp_path, capsys):
    data, run = run_copy
    cfg = tmp_path / "cfg.json"
    cfg.write_bytes(b"\xff\xfe\x00binary")
    assert _cli("train", "--config", cfg, "--out", tmp_path / "r", "-q") == 2
    _one_line_error(capsys.readouterr().err, "cfg.json", "not a text file")
    (run / "metrics.json").write_text("{cut")
    assert _cli("report", run) == 0  # a damaged metrics.json is recomputed for the report
    (run / "config.json").write_text("{cut")
    assert _cli("eval", run) == 2
    _one_line_error(capsys.readouterr().err, "config.json", "not valid JSON")


# ---------------------------------------------------------------- files


def test_saved_model_files_get_the_umask_mode_not_private(run_copy, tmp_path, monkeypatch):
    # safetensors creates its file 0600: a service running as another user could not read it
    from oneclass.runs import load_model

    det = load_model(run_copy[1], "cpu")
    monkeypatch.setattr(io_mod, "_UMASK", 0o022)
    det.save(tmp_path / "m")
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in (tmp_path / "m").iterdir()}
    assert modes and set(modes.values()) == {0o644}, modes


def test_the_sweep_of_dead_writers_lists_a_folder_once(tmp_path, monkeypatch):
    calls = []
    real = pathlib.Path.glob

    def counting(self, pattern):
        calls.append(self)
        return real(self, pattern)

    monkeypatch.setattr(pathlib.Path, "glob", counting)
    dead = tmp_path / ".a.png.999999999.abcd1234.tmp"
    dead.write_text("half")
    for i in range(20):
        io_mod.write_bytes(tmp_path / f"{i}.png", b"x")
    assert not dead.exists()
    assert calls.count(tmp_path) == 1


def test_a_resumed_retraining_logs_only_its_own_epochs(run_copy):
    data, run = run_copy
    from oneclass.runs import train

    class Stop(Exception):
        pass

    params = {"epochs": 1, "pretrain_epochs": 1, "batch_size": 16, "seed": 7}
    import oneclass.runs.training as runs_mod

    real_loop = runs_mod.LoopConfig

    def stopping_loop(**kw):  # interrupted after its pretraining epoch's checkpoint
        def on_epoch(rec):
            if rec["phase"] == "train":
                raise Stop
            kw["on_epoch"](rec)

        return real_loop(**{**kw, "on_epoch": on_epoch})

    runs_mod.LoopConfig = stopping_loop
    try:
        with pytest.raises(Stop):
            train("deep_svdd", str(data), run, params, progress=False)
    finally:
        runs_mod.LoopConfig = real_loop
    train("deep_svdd", str(data), run, params, resume=True, progress=False)
    lines = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    # the retraining's own epochs, none of the replaced model's
    assert [r["phase"] for r in lines] == ["pretrain", "train"]


def test_resume_refuses_predictions_of_another_model(run_copy, tmp_path, capsys):
    """predict --resume used to append one model's scores to another's without a word."""
    data, run = run_copy
    out = tmp_path / "p"
    one = data / "test" / "good" / "000.png"
    assert _cli("predict", run, one, "--out", out, "-q") == 0
    side = json.loads((out / "predictions.json").read_text())
    assert side["model_id"] and len(side["model_id"]) == 12
    (out / "predictions.json").write_text(json.dumps({**side, "model_id": "0123456789ab"}))
    capsys.readouterr()
    assert _cli("predict", run, data / "test" / "good", "--out", out, "--resume", "-q") == 2
    err = capsys.readouterr().err
    assert "written by model 0123456789ab" in err and "would mix their scores" in err
    assert len(_rows(out)) == 1  # nothing appended
    assert _cli("predict", run, data / "test" / "good", "--out", out, "--overwrite", "-q") == 0
    assert json.loads((out / "predictions.json").read_text())["model_id"] == side["model_id"]


def test_eval_from_another_folder_finds_a_relatively_given_training_folder(mvtec_dir, tmp_path,
                                                                          monkeypatch):
    from oneclass.runs import evaluate, train

    monkeypatch.chdir(mvtec_dir.parent)
    run = tmp_path / "rel"
    train("deep_svdd", mvtec_dir.name, run, {"epochs": 1, "pretrain_epochs": 0, "seed": 0},
          progress=False)
    monkeypatch.chdir(tmp_path)  # mvtec_dir.name does not exist here
    metrics = evaluate(run)
    assert metrics["data"] == str(mvtec_dir.resolve()) and metrics["image_auroc"] is not None


def test_a_retraining_that_fails_before_its_first_epoch_does_not_block_resume(mvtec_dir,
                                                                             tmp_path,
                                                                             monkeypatch):
    from oneclass.runs import train

    run = tmp_path / "r"
    params = {"epochs": 1, "pretrain_epochs": 0, "seed": 0}
    train("deep_svdd", str(mvtec_dir), run, params, progress=False)
    undo = _stopped(monkeypatch, at_once=True)
    with pytest.raises(_Stop):
        train("deep_svdd", str(mvtec_dir), run, {**params, "lr": 0.5}, progress=False)
    undo()
    pending = run / "checkpoints" / "config.json"
    assert json.loads(pending.read_text())["params"]["lr"] == 0.5
    # the pending configuration of the failed attempt is not what --resume checks
    train("deep_svdd", str(mvtec_dir), run, params, progress=False, resume=True)
    assert json.loads((run / "config.json").read_text())["params"]["lr"] == 1e-4


def test_a_device_this_machine_lacks_is_refused_before_the_data_is_read(tmp_path, monkeypatch):
    from oneclass import data as data_mod
    from oneclass.errors import ConfigError
    from oneclass.runs import train

    monkeypatch.setattr(data_mod, "load", lambda *a, **k: pytest.fail("data read"))
    with pytest.raises(ConfigError, match="not available here"):
        train("deep_svdd", "synthetic:16x16", tmp_path / "r", {"device": "mps"}, progress=False)
    assert not (tmp_path / "r" / "checkpoints").exists()


@pytest.mark.parametrize("cfg, words", [
    ({"method": "hsc", "data": "D", "params": [1]}, ("params must be a table",)),
    ({"method": "hsc", "data": "D", "params": "ab"}, ("params must be a table",)),
    ({"method": 5, "data": "D"}, ("method must be text",)),
    ({"method": "hsc", "data": "D", "epochs": 1, "params": {"batch_size": 8}},
     ("unknown key(s) epochs", "go in params")),
    ({"method": "fcdd", "data": "D", "anomaly_limit": 0, "anomalies": "D"},
     ("anomaly_limit must be",)),
    ({"method": "fcdd", "data": "D", "anomaly_limit": 2}, ("give --anomalies too",)),
])
def test_config_files_with_wrong_keys_or_types_are_one_line(run_copy, tmp_path, capsys, cfg,
                                                           words):
    data, _ = run_copy
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({k: (str(data) if v == "D" else v) for k, v in cfg.items()}))
    assert _cli("train", "--config", path, "--out", tmp_path / "r", "-q") == 2
    _one_line_error(capsys.readouterr().err, *words)
    assert not (tmp_path / "r").exists()


def test_a_flat_config_takes_anomaly_limit_beside_the_method_parameters(run_copy, tmp_path):
    data, _ = run_copy
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"method": "fcdd", "data": str(data), "anomalies": str(data),
                                "anomaly_limit": 1, "epochs": 1, "batch_size": 8}))
    assert _cli("train", "--config", path, "--out", tmp_path / "r", "-q") == 0
    recorded = json.loads((tmp_path / "r" / "config.json").read_text())
    assert recorded["anomaly_limit"] == 1 and recorded["params"]["epochs"] == 1


def test_train_out_naming_a_file_says_so(run_copy, tmp_path, capsys):
    data, _ = run_copy
    (tmp_path / "afile").write_text("keep me")
    assert _cli("train", "--method", "deep_svdd", "--data", data, "--out", tmp_path / "afile",
                "-q") == 2
    _one_line_error(capsys.readouterr().err, "afile", "not a folder")
    assert (tmp_path / "afile").read_text() == "keep me"


def test_resume_of_a_finished_run_keeps_it_and_its_evaluation(run_copy, tmp_path, capsys):
    # it retrained from scratch (same weights) and removed metrics.json, scores.csv, ...
    data, _ = run_copy
    run = tmp_path / "done"
    args = ["train", "--method", "deep_svdd", "--data", data, "--out", run, "--epochs", "1",
            "--set", "pretrain_epochs=0", "-q"]
    assert _cli(*args) == 0
    assert _cli("eval", run) == 0
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert _cli(*args, "--resume") == 0
    assert "finished with this configuration; nothing to resume" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()} == before
    assert _cli(*args[:-3], "--epochs", "2", "-q", "--resume") == 2  # another configuration


def test_resume_with_the_same_relative_spec_naming_other_data_is_refused(run_copy, tmp_path,
                                                                        monkeypatch, capsys):
    import shutil as sh

    data, _ = run_copy
    for side in ("a", "b"):
        sh.copytree(data, tmp_path / side / "d")
    run = tmp_path / "r"
    args = ["train", "--method", "deep_svdd", "--data", "d", "--out", run, "--epochs", "1",
            "--set", "pretrain_epochs=0", "-q"]
    monkeypatch.chdir(tmp_path / "a")
    assert _cli(*args) == 0
    monkeypatch.chdir(tmp_path / "b")
    assert _cli(*args, "--resume") == 2
    _one_line_error(capsys.readouterr().err, "other data", str(tmp_path / "a" / "d"))


def test_a_runs_own_config_json_is_a_valid_config(run_copy, tmp_path):
    data, run = run_copy
    out = tmp_path / "again"
    assert _cli("train", "--config", run / "config.json", "--out", out, "--epochs", "1",
                "-q") == 0
    again = json.loads((out / "config.json").read_text())
    first = json.loads((run / "config.json").read_text())
    assert again["method"] == first["method"] and again["data"] == first["data"]
    assert again["params"] == {**first["params"], "epochs": 1}  # its parameters too


class _Stop(Exception):
    pass


def _stopped(monkeypatch, *, at_once: bool = False, at: tuple[str, int] = ("train", 2)):
    """Make the next training stop: before its first checkpoint (``at_once``), or when it
    logs epoch ``at`` (phase, epoch): the epoch is neither logged nor checkpointed (nor, with
    the checkpoint written before the line, as before 5 Dec 2026, logged only)."""
    import oneclass.runs.training as runs_mod

    real = runs_mod.LoopConfig

    def loop(**kw):
        if at_once:
            raise _Stop

        def on_epoch(rec):
            if (rec["phase"], rec["epoch"]) == at:
                raise _Stop  # as if stopped while writing the line
            kw["on_epoch"](rec)

        return real(**{**kw, "on_epoch": on_epoch})

    monkeypatch.setattr(runs_mod, "LoopConfig", loop)
    return lambda: monkeypatch.setattr(runs_mod, "LoopConfig", real)


def _train_stopped(monkeypatch, method: str, data, run, params: dict) -> None:
    """Train ``method`` on ``data`` into ``run`` until it stops in its second epoch (as
    :func:`_stopped`; the stop is undone afterwards)."""
    from oneclass.runs import train

    undo = _stopped(monkeypatch)
    with pytest.raises(_Stop):
        train(method, str(data), run, params, progress=False)
    undo()


def test_a_new_training_discards_checkpoints_a_later_resume_would_take_for_its_own(
        mvtec_dir, tmp_path, monkeypatch, caplog):
    from oneclass.runs import train

    run = tmp_path / "r"
    params = {"epochs": 2, "pretrain_epochs": 0, "batch_size": 16}
    # training A stops in its second epoch
    _train_stopped(monkeypatch, "deep_svdd", mvtec_dir, run, {**params, "seed": 1})
    assert list((run / "checkpoints").glob("*.pt"))
    undo = _stopped(monkeypatch, at_once=True)
    with pytest.raises(_Stop):  # training B, another seed, stops before its first checkpoint
        train("deep_svdd", str(mvtec_dir), run, {**params, "seed": 2}, progress=False)
    undo()
    assert "discarding the checkpoints" in caplog.text
    assert not list((run / "checkpoints").glob("*.pt"))
    # resuming B trains B from its start, not on from A's weights
    train("deep_svdd", str(mvtec_dir), run, {**params, "seed": 2}, progress=False, resume=True)
    lines = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]


def test_resume_on_another_device_continues_and_a_changed_setting_is_named(mvtec_dir, tmp_path,
                                                                            monkeypatch):
    from oneclass.errors import ConfigError
    from oneclass.runs import train

    run = tmp_path / "r"
    params = {"epochs": 2, "pretrain_epochs": 0, "batch_size": 16, "seed": 1}
    _train_stopped(monkeypatch, "deep_svdd", mvtec_dir, run, params)
    with pytest.raises(ConfigError, match=r"\(params\.lr\)"):
        train("deep_svdd", str(mvtec_dir), run, {**params, "lr": 0.5}, progress=False,
              resume=True)
    train("deep_svdd", str(mvtec_dir), run, {**params, "device": "cpu"}, progress=False,
          resume=True)
    lines = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]  # continued after epoch 1


def test_a_device_this_torch_or_machine_lacks_is_a_config_error():
    from oneclass.device import resolve_device
    from oneclass.errors import ConfigError

    with pytest.raises(ConfigError, match="'mps' is not available here") as info:
        resolve_device("mps")
    assert "\n" not in str(info.value)  # torch's own message runs to 55 lines
    assert len(str(info.value)) < 300  # its first line alone is about 2 KB
    with pytest.raises(ConfigError, match="'hpu' is not available here"):
        resolve_device("hpu")  # torch raises ModuleNotFoundError for this one


def test_a_cuda_index_the_machine_lacks_is_named_with_the_ones_it_has(monkeypatch):
    from oneclass.device import resolve_device
    from oneclass.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(ConfigError, match=r"'cuda:7'.* 2 CUDA device\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:7")


@pytest.mark.parametrize("message, free", [
    ("[enforce fail at inline_container.cc:672] . unexpected pos 3776 vs 3672", 0),  # torch
    ("Error while serializing: No space left on device (os error 28)", 10**12),  # safetensors
])
def test_a_full_disk_in_a_writer_without_oserror_is_a_write_error(tmp_path, monkeypatch, message,
                                                                   free):
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    monkeypatch.setattr(io_mod.shutil, "disk_usage",
                        lambda p: shutil._ntuple_diskusage(10**12, 10**12 - free, free))

    def writer(p):
        p.write_bytes(b"partial")
        raise RuntimeError(message)

    with pytest.raises(io_mod.WriteError, match="no space left on device; the previous version"):
        io_mod.atomic_write(target, writer)
    with pytest.raises(io_mod.WriteError, match="no space left on device"):
        io_mod.atomic_dir(tmp_path / "model", lambda d: writer(d / "weights"))
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == \
        ["model.bin"]
    monkeypatch.setattr(io_mod.shutil, "disk_usage",
                        lambda p: shutil._ntuple_diskusage(10**12, 0, 10**12))
    with pytest.raises(RuntimeError, match="a bug"):  # other failures stay what they are
        io_mod.atomic_write(target, lambda p: (_ for _ in ()).throw(RuntimeError("a bug")))


def test_a_stop_between_an_epochs_log_line_and_its_checkpoint_loses_no_line(mvtec_dir, tmp_path,
                                                                          monkeypatch):
    from oneclass.runs import train

    run = tmp_path / "r"
    params = {"epochs": 3, "pretrain_epochs": 0, "batch_size": 16, "seed": 1}
    undo = _stopped(monkeypatch, at=("train", 2))
    with pytest.raises(_Stop):
        train("deep_svdd", str(mvtec_dir), run, params, progress=False)
    undo()
    train("deep_svdd", str(mvtec_dir), run, params, progress=False, resume=True)
    resumed = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    clean = tmp_path / "clean"
    train("deep_svdd", str(mvtec_dir), clean, params, progress=False)
    whole = [json.loads(x) for x in (clean / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole]  # exact continuation


def test_a_device_without_data_and_an_edited_map_scale_or_weight_shape_are_one_line(
        run_copy, tmp_path, capsys):
    from oneclass.device import resolve_device
    from oneclass.errors import ConfigError

    with pytest.raises(ConfigError, match="holds no data"):
        resolve_device("meta")
    _, run = run_copy
    meta_path = run / "model" / "model.json"
    meta = json.loads(meta_path.read_text())
    for bad in ([1.0], "xy", [0.0, float("nan")]):
        meta["fitted"]["map_scale"] = bad
        meta_path.write_text(json.dumps(meta))
        assert main(["eval", str(run), "-q"]) == 2
        assert "map_scale must be two finite numbers" in _one_line_error(capsys.readouterr().err)


def test_weights_of_another_shape_name_the_tensor(run_copy, capsys):
    import hashlib

    from safetensors.torch import load_file, save_file

    _, run = run_copy
    wpath, meta_path = run / "model" / "weights.safetensors", run / "model" / "model.json"
    state = load_file(str(wpath))
    state["c"] = state["c"][:-1].clone()
    save_file(state, str(wpath))
    meta = json.loads(meta_path.read_text())
    meta["weights_sha256"] = hashlib.sha256(wpath.read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(meta))
    assert main(["eval", str(run), "-q"]) == 2
    err = _one_line_error(capsys.readouterr().err)
    assert "cannot load weights" in err and "size mismatch for c" in err


@pytest.mark.parametrize("method, extra", [
    ("deep_svdd", ["--epochs", "1", "--set", "pretrain_epochs=1"]),
    ("patchcore", ["--set", "min_side=32", "--set", "pretrained=false"]),  # no checkpoints
])
def test_a_stop_between_saving_the_model_and_its_config_is_caught_then_resumed(
        mvtec_dir, tmp_path, monkeypatch, capsys, method, extra):
    """A retraining stopped after its model replaced the old one but before config.json was
    written left the new model beside the old run's configuration; eval used both. Now the
    mismatch is refused, and --resume with the same options finishes the run, also for a
    method that writes no epoch checkpoints."""
    import oneclass.runs.training as runs_mod

    out = tmp_path / "run"
    base = ["train", "--method", method, "--data", mvtec_dir, "--out", out, *extra, "-q"]
    assert _cli(*base, "--seed", "1") == 0
    real = runs_mod.write_json

    def stop(path, obj):
        if Path(path) == out / "config.json":
            raise KeyboardInterrupt
        return real(path, obj)

    monkeypatch.setattr(runs_mod, "write_json", stop)
    assert _cli(*base, "--seed", "2") == 130  # "oneclass: interrupted"
    monkeypatch.setattr(runs_mod, "write_json", real)
    assert json.loads((out / "config.json").read_text())["params"]["seed"] == 1  # the old one
    capsys.readouterr()
    assert _cli("eval", out) == 2
    _one_line_error(capsys.readouterr().err, "config.json belongs to another model", "--resume")
    assert _cli(*base, "--seed", "2", "--resume") == 0
    assert json.loads((out / "config.json").read_text())["params"]["seed"] == 2
    assert _cli("eval", out) == 0
    # the record is not configuration: the run's config.json as --config trains the same
    assert _cli("train", "--config", out / "config.json", "--out", tmp_path / "again", "-q") == 0
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    first = json.loads((out / "config.json").read_text())
    assert again["params"] == first["params"] and again["model_id"] == first["model_id"]


def test_resume_continues_with_the_recorded_parameters_and_ones_added_since(mvtec_dir, tmp_path,
                                                                           monkeypatch):
    """A run from before FCDD's min_train_steps (and its epochs=None default) was refused by
    --resume for good: its epochs (40 then) differed from the new default and no option
    could remove the parameter it lacked. Parameters not given now take the run's values."""
    from oneclass.errors import ConfigError
    from oneclass.runs import train

    run = tmp_path / "r"
    params = {"epochs": 3, "batch_size": 16, "seed": 0, "net": "cnn224", "size": 24}
    _train_stopped(monkeypatch, "fcdd", mvtec_dir, run, params)
    pending = run / "checkpoints" / "config.json"
    cfg = json.loads(pending.read_text())
    del cfg["params"]["min_train_steps"]  # as an earlier oneclass recorded it
    pending.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"\(params\.epochs\)"):  # given again: must match
        train("fcdd", str(mvtec_dir), run, {**params, "epochs": 5}, progress=False, resume=True)
    with pytest.raises(ConfigError, match=r"\(params\.min_train_steps\)"):  # not what it ran
        train("fcdd", str(mvtec_dir), run, {**params, "min_train_steps": 7}, progress=False,
              resume=True)
    given = {k: v for k, v in params.items() if k != "epochs"}  # epochs now defaults to None
    det = train("fcdd", str(mvtec_dir), run, given, progress=False, resume=True)
    lines = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]  # the recorded 3 epochs, continued
    assert det.epochs == 3
    assert json.loads((run / "config.json").read_text())["params"]["epochs"] == 3


def test_a_second_training_into_a_run_folder_being_trained_is_refused(mvtec_dir, tmp_path):
    """Two trainings into one --out mixed their checkpoints; the second is refused while the
    first holds the folder, and the lock leaves no file behind."""
    from oneclass.errors import ConfigError
    from oneclass.runs import RunLock, train

    out = tmp_path / "run"
    out.mkdir()
    params = {"epochs": 1, "pretrain_epochs": 0, "seed": 0}
    with RunLock(out):  # as a training in another process holds it
        with pytest.raises(ConfigError, match="another training is writing this run folder"):
            train("deep_svdd", str(mvtec_dir), out, params, progress=False)
        with pytest.raises(ConfigError, match="another training"):
            train("deep_svdd", str(mvtec_dir), out, params, resume=True, progress=False)
    assert list(out.iterdir()) == []
    train("deep_svdd", str(mvtec_dir), out, params, progress=False)  # free again
    assert (out / "model" / "model.json").is_file()
    assert not any(p.name.startswith(".") for p in out.iterdir())
    fresh = tmp_path / "new"  # made by the training: locked once made, released after
    train("deep_svdd", str(mvtec_dir), fresh, params, progress=False)
    with RunLock(fresh) as lock:
        assert lock.fd is not None


def test_a_file_system_without_locks_trains_with_a_warning(mvtec_dir, tmp_path, monkeypatch,
                                                             caplog):
    """flock failing for another reason than a held lock (NFS, Lustre without it) used to be
    reported as another training; it now trains, warning that the folder is not locked."""
    import fcntl
    import logging

    from oneclass.runs import train

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "run"
    out.mkdir()
    with caplog.at_level(logging.WARNING, logger="oneclass"):
        train("deep_svdd", str(mvtec_dir), out, {"epochs": 1, "pretrain_epochs": 0, "seed": 0},
              progress=False)
    assert (out / "model" / "model.json").is_file()
    assert "cannot lock the run folder (No locks available)" in caplog.text


def test_training_over_a_finished_run_says_which_model_it_replaces(mvtec_dir, tmp_path, caplog):
    import logging

    from oneclass.runs import train

    out = tmp_path / "run"
    params = {"epochs": 1, "pretrain_epochs": 0, "seed": 0}
    with caplog.at_level(logging.WARNING, logger="oneclass"):
        train("deep_svdd", str(mvtec_dir), out, params, progress=False)
        assert "replaces it" not in caplog.text
        train("hsc", str(mvtec_dir), out, {"epochs": 1, "seed": 0}, progress=False)
    assert f"holds a deep_svdd model trained on {mvtec_dir}; this training replaces it" \
        in caplog.text
    assert json.loads((out / "config.json").read_text())["method"] == "hsc"


def test_resume_on_other_training_images_is_refused(tmp_path, monkeypatch):
    """Epochs so far trained on one set, the rest would train on another (and the held-back
    images that set the threshold could be images it trained on)."""
    from oneclass.errors import ConfigError
    from oneclass.runs import train

    data = write_mvtec(tmp_path / "d", n_train=24, n_test_good=2, n_test_defect=2, size=16,
                       seed=4)
    run = tmp_path / "r"
    params = {"epochs": 2, "pretrain_epochs": 0, "batch_size": 8, "seed": 1}
    _train_stopped(monkeypatch, "deep_svdd", data, run, params)
    for p in sorted((data / "train" / "good").iterdir())[:5]:
        p.unlink()
    with pytest.raises(ConfigError, match=r"--resume with other training images than the run "
                       r"started with \(24 files then, 19 now"):
        train("deep_svdd", str(data), run, params, progress=False, resume=True)


def test_interrupted_before_any_checkpoint_the_advice_is_to_run_again(run_copy, capsys,
                                                                     monkeypatch):
    """--resume was advised, then refused ("a different configuration than config.json")."""
    import oneclass.runs.training as runs_mod

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs_mod, "LoopConfig", stop)
    data, run = run_copy
    code = main(["train", "--method", "deep_svdd", "--data", str(data), "--out", str(run),
                 "--epochs", "1", "--seed", "7", "-q"])
    assert code == 130
    err = capsys.readouterr().err
    assert "run the same command again (without --resume)" in err and "continues" not in err
    monkeypatch.undo()
    from oneclass.errors import ConfigError

    with pytest.raises(ConfigError, match="stopped before its first epoch checkpoint"):
        runs_mod.train("deep_svdd", str(data), run, {"epochs": 1, "seed": 7}, progress=False,
                       resume=True)


def test_a_resume_after_the_log_moved_keeps_it(tmp_path, monkeypatch):
    """Stopped after the model's log moved beside it but before checkpoints/ went: the
    resume finds every epoch done, and deleted the log as if no epoch had run."""
    import shutil as sh

    from oneclass.runs import train

    data = write_mvtec(tmp_path / "d", n_train=16, n_test_good=2, n_test_defect=2, size=16,
                       seed=4)
    run = tmp_path / "r"
    params = {"epochs": 2, "pretrain_epochs": 0, "batch_size": 8, "seed": 1}
    real = sh.rmtree
    monkeypatch.setattr(sh, "rmtree", lambda *a, **k: (_ for _ in ()).throw(_Stop()))
    with pytest.raises(_Stop):
        train("deep_svdd", str(data), run, params, progress=False)
    monkeypatch.setattr(sh, "rmtree", real)
    assert (run / "train_log.jsonl").exists() and list((run / "checkpoints").glob("*.pt"))
    train("deep_svdd", str(data), run, params, progress=False, resume=True)
    lines = (run / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


def test_a_finished_patchcore_run_stopped_before_its_tidying_is_tidied(tmp_path, monkeypatch):
    """Stopped after config.json, before the log moved: --resume said "finished" and left
    checkpoints/ and the run without a log for good."""
    import os as os_mod

    from oneclass.runs import train

    data = write_mvtec(tmp_path / "d", n_train=16, n_test_good=2, n_test_defect=2, size=16,
                       seed=4)
    run = tmp_path / "r"
    real = os_mod.replace

    def stop(src, dst, *a, **k):
        if str(dst).endswith("train_log.jsonl"):
            raise _Stop
        return real(src, dst, *a, **k)

    # a retraining over a Deep SVDD run: the log beside the model is the replaced model's
    train("deep_svdd", str(data), run, {"epochs": 1, "pretrain_epochs": 0, "seed": 0},
          progress=False)
    monkeypatch.setattr(os_mod, "replace", stop)
    with pytest.raises(_Stop):
        train("patchcore", str(data), run, {"seed": 0}, progress=False)
    monkeypatch.setattr(os_mod, "replace", real)
    assert (run / "checkpoints" / "train_log.jsonl").exists()
    det = train("patchcore", str(data), run, {"seed": 0}, progress=False, resume=True)
    assert getattr(det, "finished_before_", False)
    assert not (run / "checkpoints").exists()
    assert '"bank"' in (run / "train_log.jsonl").read_text()  # PatchCore's own line


def test_the_files_of_a_training_are_recorded_beside_generated_outliers(mv_small):
    from oneclass import data as data_mod
    from oneclass.data.base import ArraySet
    from oneclass.runs.training import _data_files

    files = data_mod.load(str(mv_small), "train")
    generated = ArraySet(np.zeros((3, 8, 8), np.uint8), np.full(3, -1))
    assert _data_files(files, generated) == _data_files(files) != None  # noqa: E711
    assert _data_files(files)["n"] == len(files) and _data_files(generated) is None


def test_a_model_saved_without_its_configuration_is_not_used(run_copy):
    """Stopped between saving the model and writing config.json: predict and export used
    the new model silently, eval said no data was recorded."""
    from oneclass.errors import ModelFileError
    from oneclass.runs import load_model

    _, run = run_copy
    (run / "checkpoints").mkdir(exist_ok=True)
    (run / "checkpoints" / "config.json").write_text((run / "config.json").read_text())
    (run / "config.json").unlink()
    with pytest.raises(ModelFileError, match="has no config.json yet: its training stopped while "
                       "saving its results"):
        load_model(run)
