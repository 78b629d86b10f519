"""The command line, end to end on a tiny MVTec-layout folder."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from oneclass.cli import main
from oneclass.runs import load_model


@pytest.fixture(scope="module")
def run_dir(mvtec_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "r"
    code = main(["train", "--method", "deep_svdd", "--data", str(mvtec_dir), "--out", str(run),
                 "--epochs", "3", "--set", "pretrain_epochs=1", "--set", "batch_size=16",
                 "--seed", "1", "-q"])
    assert code == 0
    return run


def test_train_writes_model_config_and_log(run_dir):
    assert (run_dir / "model" / "model.json").is_file()
    assert (run_dir / "model" / "weights.safetensors").is_file()
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["method"] == "deep_svdd" and cfg["params"]["epochs"] == 3
    assert cfg["params"]["seed"] == 1 and cfg["params"]["pretrain_epochs"] == 1
    lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["phase"] for x in lines] == ["pretrain"] + ["train"] * 3
    assert not (run_dir / "checkpoints").exists()


def test_eval_writes_metrics_with_pixel_scores(run_dir, capsys):
    assert main(["eval", str(run_dir), "-q"]) == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    for k in ("image_auroc", "image_ap", "image_f1", "pixel_auroc", "aupro"):
        assert isinstance(m[k], float) and 0.0 <= m[k] <= 1.0, k
    assert m["n_test"] == 22 and m["n_anomalous"] == 12
    printed = capsys.readouterr().out
    assert "image_auroc" in printed
    # the F1 of the model's own predictions, beside the best F1 over all thresholds
    rows = list(csv.DictReader(open(run_dir / "scores.csv")))
    truth = [r["label"] == "1" for r in rows]
    said = [r["predicted"] == "1" for r in rows]
    hits = sum(t and p for t, p in zip(truth, said))
    assert m["f1_at_threshold"] == pytest.approx(2 * hits / (sum(truth) + sum(said)))
    assert m["f1_at_threshold"] <= m["image_f1"] + 1e-12  # never above the best threshold's
    assert "best over all thresholds" in printed and "at the model's threshold" in printed


def test_predict_writes_csv_and_heatmaps_and_resumes(run_dir, mvtec_dir, tmp_path):
    out = tmp_path / "pred"
    assert main(["predict", str(run_dir), str(mvtec_dir / "test"), "--out", str(out), "-q"]) == 0
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 22
    # label: 1 at or above the model's threshold (the scores are not near it: no rounding)
    threshold = load_model(run_dir).threshold_
    assert all(abs(float(r["score"]) - threshold) > 1e-6 * abs(threshold) for r in rows)
    assert [r["label"] for r in rows] == [str(int(float(r["score"]) >= threshold)) for r in rows]
    assert {r["label"] for r in rows} == {"0", "1"}  # both sides of the threshold occur
    assert len(list((out / "heatmaps").glob("*.png"))) == 22
    # An interrupted run leaves a partial CSV; --resume scores only the rest.
    with open(out / "predictions.csv", "w") as fh:
        fh.write("path,score,label\n" + "".join(
            f"{r['path']},{r['score']},{r['label']}\n" for r in rows[:5]))
    assert main(["predict", str(run_dir), str(mvtec_dir / "test"), "--out", str(out), "-q",
                 "--resume", "--no-heatmaps"]) == 0
    again = list(csv.DictReader(open(out / "predictions.csv")))
    assert sorted(r["path"] for r in again) == sorted(r["path"] for r in rows)


def test_report_is_written(run_dir):
    assert main(["report", str(run_dir), "--top", "3"]) == 0
    html = (run_dir / "report.html").read_text()
    assert "Most anomalous" in html and html.count("data:image/png;base64,") >= 6


def test_methods_lists_deep_svdd(capsys):
    assert main(["methods"]) == 0
    assert "deep_svdd" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["train", "--method", "nope", "--data", "synthetic", "--out", "{tmp}/x"], "unknown method"),
    (["train", "--method", "deep_svdd", "--data", "{tmp}/missing", "--out", "{tmp}/x"],
     "no such file"),
    (["train", "--method", "deep_svdd", "--data", "synthetic", "--out", "{tmp}/x",
      "--set", "lr"], "expected key=value"),
    (["train", "--method", "deep_svdd", "--data", "synthetic", "--out", "{tmp}/x",
      "--set", "lrr=1"], "unknown parameter"),
    (["train", "--method", "deep_svdd", "--data", "{tmp}", "--out", "{tmp}/x"], "no images"),
    (["eval", "{tmp}"], "not a saved model"),
    (["train", "--method", "deep_svdd", "--data", "mnist:x", "--out", "{tmp}/x"], "mnist:C"),
    (["train", "--method", "fcdd", "--data", "synthetic", "--out", "{tmp}/x",
      "--anomaly-limit", "3"], "give --anomalies too"),
    (["bench", "smoke", "--set", "seed=3", "--out", "{tmp}/b"], "set by --seeds"),
])
def test_bad_input_is_one_line_without_traceback(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_fcdd_semi_supervised_run_leaves_its_labeled_anomalies_out_of_eval(mvtec_dir, tmp_path,
                                                                           capsys):
    run = tmp_path / "fcdd"
    assert main(["train", "--method", "fcdd", "--data", str(mvtec_dir), "--out", str(run),
                 "--epochs", "2", "--set", "net=cnn224", "--set", "batch_size=16",
                 "--anomalies", str(mvtec_dir), "--anomaly-limit", "1", "-q"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    used = cfg["anomalies_used"]
    kinds = {p.split("/")[1] for p in used}
    assert len(used) == len(kinds) >= 2  # one per defect type
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["n_test"] == 22 - len(used)
    assert (f"{len(used)} of its 22 test images were labeled anomalies in this run's training "
            f"and are left out; {22 - len(used)} are evaluated") in capsys.readouterr().err
    assert m["pixel_auroc"] is not None and m["aupro"] is not None


def test_a_method_that_ignores_labeled_anomalies_says_so(mvtec_dir, tmp_path, capsys):
    """--anomalies was silently dropped by the unsupervised methods (while the picked images
    still left the test set); --outliers and --reference already warned."""
    assert main(["train", "--method", "deep_svdd", "--data", str(mvtec_dir), "--out",
                 str(tmp_path / "r"), "--epochs", "1", "--set", "pretrain_epochs=0",
                 "--anomalies", str(mvtec_dir), "--anomaly-limit", "1", "-q"]) == 0
    assert "deep_svdd learns from normal images only" in capsys.readouterr().err


def test_export_check_refuses_a_negative_count(capsys):
    with pytest.raises(SystemExit) as e:
        main(["export", "run", "--check", "-1"])
    assert e.value.code == 2 and "-1" in capsys.readouterr().err


def test_labeled_anomalies_stay_out_of_eval_however_the_folder_is_written(mvtec_dir, tmp_path,
                                                                          monkeypatch):
    from oneclass import runs

    names = runs.test_set(str(mvtec_dir), None, {}).names
    used = [n for n in names if "good" not in n][:2]
    monkeypatch.chdir(mvtec_dir.parent)
    written = [str(mvtec_dir), f"{mvtec_dir}/", mvtec_dir.name, f"./{mvtec_dir.name}/"]
    for recorded in written:
        for given in written:
            cfg = {"anomalies": recorded, "anomalies_used": used}
            test = runs.test_set(given, None, cfg)
            assert len(test) == 22 - 2 and not set(used) & set(test.names), (recorded, given)
    # another folder with the same names: left out are the copies of the images trained on
    # (byte-identical files), not the names
    other = tmp_path / "copy"
    shutil.copytree(mvtec_dir, other)
    Image.fromarray(np.full((24, 24), 7, np.uint8)).save(other / used[1])  # no copy now
    left = runs.test_set(str(other), None, {"anomalies": mvtec_dir.name, "anomalies_used": used})
    assert len(left) == 22 - 1 and used[0] not in left.names and used[1] in left.names


def test_outliers_spec_is_loaded_for_fcdd(mvtec_dir, tmp_path):
    from oneclass.data.synthetic import write_mvtec

    other = write_mvtec(tmp_path / "other", n_train=20, n_test_good=2, n_test_defect=2,
                        size=24, seed=5, texture="blobs")
    run = tmp_path / "oe"
    assert main(["train", "--method", "fcdd", "--data", str(mvtec_dir), "--out", str(run),
                 "--epochs", "1", "--set", "net=cnn224", "--set", "noise=none",
                 "--outliers", str(other / "train"), "-q"]) == 0
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["fitted"]["anomaly_kinds"] == ["outliers"]


def test_set_values_are_typed_like_suite_parameters():
    from oneclass.cli import _parse_sets

    sets = _parse_sets(["epochs=60", "lr=1e-3", "gcn=true", "lr_milestones=[10, 20]",
                        "net=effnet", "size=64,64", "threshold=null"])
    assert sets == {"epochs": 60, "lr": 1e-3, "gcn": True, "lr_milestones": [10, 20],
                    "net": "effnet", "size": "64,64", "threshold": None}


def test_demo_runs_train_eval_and_report_on_other_data(mvtec_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--data", str(mvtec_dir), "--out", str(out), "--epochs", "1",
                 "--set", "batch_size=16", "-q"]) == 0
    text = capsys.readouterr().out
    assert f"oneclass demo: fcdd on {mvtec_dir}, 1 epochs" in text and "ELPV" not in text
    auroc = float(text.split("image AUROC: ")[1].split()[0])
    assert auroc == pytest.approx(json.loads((out / "metrics.json").read_text())["image_auroc"],
                                  abs=1e-4)
    assert (out / "report.html").is_file() and (out / "model" / "model.json").is_file()


def test_eval_on_a_test_set_of_one_class_says_why_the_metrics_are_missing(run_dir, mvtec_dir,
                                                                            tmp_path, capsys):
    data = tmp_path / "only_good"
    shutil.copytree(mvtec_dir, data)
    for kind in (data / "test").iterdir():
        if kind.name != "good":
            shutil.rmtree(kind)
    shutil.rmtree(data / "ground_truth", ignore_errors=True)
    assert main(["eval", str(run_dir), "--data", str(data), "-q"]) == 0
    assert "all 10 labeled test images are normal" in capsys.readouterr().err
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["image_auroc"] is None and m["accuracy_at_threshold"] is not None


def test_demo_and_report_on_an_unlabeled_folder_with_a_name_that_is_not_utf8(tmp_path, capsys):
    import os

    from oneclass.viz import save_png

    data = tmp_path / os.fsdecode(b"caf\xe9")  # a Latin-1 folder name on a UTF-8 system
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        save_png(data / f"{i}.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
    out = tmp_path / "demo"
    assert main(["demo", "--data", str(data), "--out", str(out), "--epochs", "1",
                 "--set", "batch_size=16", "-q"]) == 0
    assert "image AUROC: n/a" in capsys.readouterr().out  # no labels, no AUROC
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "caf\\xe9" in html


def test_methods_lists_them_and_shows_one_methods_parameters(capsys):
    from oneclass.cli import main
    from oneclass.registry import available, get

    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in available())
    assert "module docstring" not in listing and "oneclass methods NAME" in listing
    for name in available():
        assert main(["methods", name]) == 0
        shown = capsys.readouterr().out
        lines = [line for line in shown.splitlines() if line[:2] == "  " and line[2] != " "]
        assert [line.split(" = ")[0].strip() for line in lines] == list(get(name).all_defaults())
    assert main(["methods", "FCDD"]) == 0
    fcdd = capsys.readouterr().out
    assert "min_train_steps = 200" in fcdd and 'noise = "mixed"' in fcdd
    # the comments beside the defaults, of the method and of the base class
    assert "epochs = null\n      None: 40 epochs, and more on small sets" in fcdd
    assert "size = null\n      int, [H, W] or None" in fcdd
    assert main(["methods", "fcd"]) == 2
    assert "did you mean 'fcdd'" in capsys.readouterr().err


def test_a_broken_pipe_other_than_stdout_is_an_error(capsys):
    """Only a closed stdout (`| head`) ends a command quietly; another broken pipe is an
    error like any other."""
    import argparse

    from oneclass.cli import _run

    def boom(args):
        raise BrokenPipeError(32, "Broken pipe")

    assert _run(argparse.Namespace(func=boom, max_pixels=None)) == 2
    assert "oneclass: error: Broken pipe" in capsys.readouterr().err


def test_a_closed_stdout_ends_a_command_quietly():
    """`oneclass methods fcdd | head -1` printed "error: Broken pipe"; a reader that has gone
    ends the command with 141 (128 + SIGPIPE) and nothing on stderr."""
    import os
    import subprocess
    import sys

    r, w = os.pipe()
    os.close(r)  # the reader is gone before the command writes
    try:
        proc = subprocess.run([sys.executable, "-m", "oneclass.cli", "methods", "fcdd"],
                              stdout=w, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(w)
    assert proc.returncode == 141 and proc.stderr == b""


def test_an_option_and_a_set_of_the_same_parameter_must_agree(mvtec_dir, tmp_path, capsys):
    """--epochs 1 --set epochs=5 trained 1 epoch and --set epochs=abc went unchecked."""
    for bad in ("5", "abc"):
        assert main(["train", "--method", "deep_svdd", "--data", str(mvtec_dir), "--out",
                     str(tmp_path / "r"), "--epochs", "1", "--set", f"epochs={bad}"]) == 2
        assert f"--epochs 1 and --set epochs={bad} disagree: give one" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
