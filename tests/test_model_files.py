"""Model files and the fit/save/load contract around them: failed fits, concurrent saves,
parameters JSON cannot hold, damaged descriptions, unwritable folders."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import torch

import oneclass
import oneclass.detector as D
from oneclass import io as oio
from oneclass.data.synthetic import make_defects
from oneclass.errors import ConfigError, ModelFileError
from oneclass.methods.deep_svdd import DeepSVDD
from oneclass.train import LoopConfig

from .conftest import cli

SMALL = {"epochs": 2, "pretrain_epochs": 1, "batch_size": 8}


@pytest.fixture(scope="module")
def data():
    return make_defects(16, 0, size=16, seed=1), make_defects(4, 4, size=16, seed=2)


def _interrupt_in_training(rec):
    if rec.get("phase") == "train":
        raise KeyboardInterrupt  # Ctrl-C during the training phase


def test_a_refit_that_fails_leaves_the_former_fit_whole(data, tmp_path):
    train, test = data
    det = oneclass.create("deep_svdd", **SMALL).fit(train)
    before = {k: getattr(det, k) for k in ("threshold_", "map_scale_", "n_train_", "model_")}
    scores = det.score(test)
    with pytest.raises(KeyboardInterrupt):
        det.fit(make_defects(16, 0, size=16, seed=9), loop=LoopConfig(on_epoch=_interrupt_in_training))
    for k, v in before.items():
        assert getattr(det, k) is v, k  # the very objects: no half-trained model_ beside them
    np.testing.assert_array_equal(det.score(test), scores)
    loaded = oneclass.load(det.save(tmp_path / "m"))
    np.testing.assert_array_equal(loaded.score(test), scores)
    assert loaded.threshold_ == before["threshold_"]


def test_a_first_fit_that_fails_leaves_the_detector_unfitted(data, tmp_path):
    det = oneclass.create("deep_svdd", **SMALL)
    with pytest.raises(KeyboardInterrupt):
        det.fit(data[0], loop=LoopConfig(on_epoch=_interrupt_in_training))
    assert not hasattr(det, "model_") and not hasattr(det, "input_shape_")
    with pytest.raises(ConfigError, match="call fit"):
        det.save(tmp_path / "m")  # a clear error, not an AttributeError on threshold_


def test_load_uses_the_weights_it_checked_even_if_a_save_replaces_them(data, tmp_path, monkeypatch):
    train, test = data
    a = oneclass.create("deep_svdd", **SMALL).fit(train)
    b = oneclass.create("deep_svdd", **SMALL, seed=7).fit(train)
    path = a.save(tmp_path / "m")
    real = D.resolve_device

    def save_b_meanwhile(device):  # after the checksum check, before the weights are used
        monkeypatch.setattr(D, "resolve_device", real)
        b.save(path)
        return real(device)

    monkeypatch.setattr(D, "resolve_device", save_b_meanwhile)
    loaded = oneclass.load(path)
    assert loaded.threshold_ == a.threshold_
    np.testing.assert_array_equal(loaded.score(test), a.score(test))  # A's weights, not B's


def test_an_unregistered_subclass_is_not_saved_under_its_base_name(data, tmp_path):
    class SqrtSVDD(DeepSVDD):
        def _score(self, x):
            return super()._score(x).sqrt()

    det = SqrtSVDD(**SMALL).fit(data[0])
    with pytest.raises(ConfigError, match="SqrtSVDD.*register"):
        det.save(tmp_path / "m")  # load() would rebuild a plain DeepSVDD, scoring otherwise
    assert not (tmp_path / "m").exists()


def test_numpy_values_in_parameters_are_saved_as_plain_json(data, tmp_path):
    det = oneclass.create("deep_svdd", **SMALL, lr_milestones=list(np.arange(1, 3))).fit(data[0])
    path = det.save(tmp_path / "m")
    assert json.loads((path / "model.json").read_text())["params"]["lr_milestones"] == [1, 2]
    np.testing.assert_array_equal(oneclass.load(path).score(data[1]), det.score(data[1]))


@pytest.mark.parametrize("name, params", [("doc", {"lam": float("inf")}),
                                          ("deep_svdd", {"epochs": float("inf")}),
                                          ("deep_svdd", {"lr_milestones": [object()]})])
def test_parameters_model_json_cannot_hold_are_refused_before_training(name, params):
    with pytest.raises(ConfigError, match=f"{next(iter(params))}="):
        oneclass.create(name, **params)


@pytest.mark.parametrize("edit, words", [
    (lambda m: m["params"].update(epochs="@INF@"), "epochs=inf"),
    (lambda m: m["params"].update(nu="@NAN@"), "nu must be .* got nan"),
    (lambda m: m["fitted"].update(threshold="@INF@"), "threshold inf")])
def test_infinite_or_nan_numbers_in_model_json_name_the_file_and_entry(data, tmp_path, edit,
                                                                        words):
    path = oneclass.create("deep_svdd", **SMALL).fit(data[0]).save(tmp_path / "m")
    meta = json.loads((path / "model.json").read_text())
    edit(meta)
    text = json.dumps(meta).replace('"@INF@"', "1e400").replace('"@NAN@"', "NaN")
    (path / "model.json").write_text(text)
    with pytest.raises(ModelFileError, match=f"model.json: damaged model description .*{words}"):
        oneclass.load(path)


def test_a_write_error_inside_a_model_folder_names_the_folder(tmp_path):
    target = tmp_path / "m"
    oio.atomic_dir(target, lambda tmp: (tmp / "a.txt").write_text("old"))

    def fill(tmp):
        def fail(_p):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        oio.atomic_write(tmp / "model.json", fail)

    with pytest.raises(oio.WriteError) as err:
        oio.atomic_dir(target, fill)
    assert str(err.value).startswith(f"{target}: cannot write (Disk quota exceeded); the "
                                     "previous version was kept")
    assert (target / "a.txt").read_text() == "old"


@pytest.mark.parametrize("where", ["mkdtemp", "mkstemp"])
def test_an_unwritable_folder_names_the_destination_not_a_temporary_file(tmp_path, monkeypatch,
                                                                         where):
    def refuse(*_a, **_k):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / ".x.123.tmp"))

    monkeypatch.setattr(oio.tempfile, where, refuse)
    with pytest.raises(oio.WriteError, match=rf"^{tmp_path / 'm'}: cannot write \(Permission"):
        if where == "mkdtemp":
            oio.atomic_dir(tmp_path / "m", lambda tmp: None)
        else:
            oio.write_text(tmp_path / "m", "x")


def test_load_reads_the_previous_model_when_it_cannot_be_put_back(data, tmp_path, monkeypatch):
    det = oneclass.create("deep_svdd", **SMALL).fit(data[0])
    path = det.save(tmp_path / "m")
    path.rename(tmp_path / ".m.old")  # a save killed between its two renames

    def read_only(*_a):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(oneclass.model_files, "recover_dir", read_only)  # where load reads it
    loaded = oneclass.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.score(data[1]), det.score(data[1]))


def test_train_refuses_a_model_folder_it_cannot_save_to_before_training(mvtec_dir, tmp_path,
                                                                        monkeypatch, capsys):
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "NOTES.txt").write_text("mine")
    fitted = []
    monkeypatch.setattr(DeepSVDD, "fit", lambda self, *a, **k: fitted.append(1) or self)
    code = cli("train", "--method", "deep_svdd", "--data", str(mvtec_dir), "--out",
               str(tmp_path / "run"), "--epochs", "1", "-q")
    assert code != 0 and not fitted
    assert "NOTES.txt" in capsys.readouterr().err
    assert (tmp_path / "run" / "model" / "NOTES.txt").read_text() == "mine"


def test_cuda_runs_float32_without_tf32(monkeypatch):
    from oneclass.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    flags = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = [f.allow_tf32 for f in flags]  # torch's defaults: cuDNN allows TF32

    def allow():
        for f in flags:
            f.allow_tf32 = True

    try:
        for device in ("auto", "cuda", "cuda:1"):
            allow()
            assert resolve_device(device).type == "cuda"
            assert [f.allow_tf32 for f in flags] == [False, False], device
        allow()
        resolve_device("cpu")
        assert [f.allow_tf32 for f in flags] == [True, True]  # CPU runs leave them alone
    finally:
        for f, v in zip(flags, saved):
            f.allow_tf32 = v


def test_one_gpu_index_for_every_torchrun_process_is_refused(monkeypatch):
    from oneclass.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="LOCAL_RANK"):
        resolve_device("cuda:0")
    assert resolve_device("cuda") == torch.device("cuda")


def test_a_model_with_parameters_of_another_version_says_which_version(data, tmp_path):
    path = oneclass.create("deep_svdd", **SMALL).fit(data[0]).save(tmp_path / "m")
    meta = json.loads((path / "model.json").read_text())
    meta["params"]["new_knob"] = 1
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="damaged model description.*new_knob"):
        oneclass.load(path)  # same version: an edited description
    meta["oneclass_version"] = "99.0"
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match=r"new_knob unknown to this oneclass .*written by "
                                             r"oneclass 99\.0"):
        oneclass.load(path)


def test_a_threshold_from_few_held_back_images_is_said_to_be_rough(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="oneclass"):
        oneclass.create("deep_svdd", **SMALL).fit(make_defects(40, 0, size=16, seed=1))
    said = [r.getMessage() for r in caplog.records if "held-back" in r.getMessage()]
    assert len(said) == 1 and "only 4 held-back normal images" in said[0]
    assert "contamination 0.05 (that needs 20 or more)" in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="oneclass"):
        oneclass.create("deep_svdd", **SMALL, holdout=0.5).fit(make_defects(40, 0, size=16, seed=1))
    assert not [r for r in caplog.records if "held-back" in r.getMessage()]  # 20 are enough


def test_an_interrupted_train_says_how_to_resume(monkeypatch, capsys, mvtec_dir, tmp_path):
    """--resume when an epoch checkpoint was written; else the same command again."""
    run = tmp_path / "run"

    def interrupt(self, *a, **k):
        if checkpoint:
            (run / "checkpoints").mkdir(parents=True, exist_ok=True)
            (run / "checkpoints" / "train.pt").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(DeepSVDD, "fit", interrupt)
    for checkpoint in (True, False):
        code = cli("train", "--method", "deep_svdd", "--data", str(mvtec_dir), "--out",
                   str(run), "-q")
        assert code == 130
        err = capsys.readouterr().err
        assert ("--resume continues" in err) == checkpoint, err
        assert ("again (without --resume)" in err) == (not checkpoint), err


def test_eval_refuses_a_model_folder_and_names_its_run(mvtec_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", "--method", "deep_svdd", "--data", str(mvtec_dir), "--out", str(run),
               "--epochs", "1", "--set", "pretrain_epochs=1", "-q") == 0
    capsys.readouterr()
    assert cli("eval", str(run / "model"), "--data", str(mvtec_dir), "-q") == 2
    assert f"give its run folder, {run}" in capsys.readouterr().err
    assert sorted(p.name for p in (run / "model").iterdir()) == ["model.json",
                                                                 "weights.safetensors"]
    assert cli("train", "--method", "deep_svdd", "--data", str(mvtec_dir), "--out", str(run),
               "--epochs", "1", "--set", "pretrain_epochs=1", "-q") == 0  # retrains as before


def test_a_wrong_data_path_leaves_no_run_folder_behind(tmp_path, capsys):
    out = tmp_path / "runs" / "deep" / "nested"
    assert cli("train", "--method", "fcdd", "--data", str(tmp_path / "nowhere"), "--out",
               str(out), "-q") == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_missing_run_is_named_as_missing_and_resume_of_nothing_says_so(mvtec_dir, tmp_path,
                                                                        capsys):
    assert cli("eval", str(tmp_path / "nope")) == 2
    assert f"{tmp_path / 'nope'}: no such run folder" in capsys.readouterr().err
    train = ("train", "--method", "deep_svdd", "--data", str(mvtec_dir), "--out",
             str(tmp_path / "new"), "--epochs", "1", "--set", "pretrain_epochs=1", "--resume")
    assert cli(*train) == 0
    assert "nothing to resume" in capsys.readouterr().err
    assert cli(*train) == 0  # a finished run: nothing to say
    assert "nothing to resume" not in capsys.readouterr().err


@pytest.fixture(scope="module")
def saved_json(data, tmp_path_factory):
    """The model.json of a tiny saved model (each test edits a copy)."""
    path = oneclass.create("deep_svdd", **SMALL).fit(data[0]).save(
        tmp_path_factory.mktemp("saved") / "m")
    return path


def _load_edited(saved, tmp_path, edit):
    import shutil

    path = shutil.copytree(saved, tmp_path / "m")
    meta = json.loads((path / "model.json").read_text())
    edit(meta)
    (path / "model.json").write_text(json.dumps(meta))
    return oneclass.load(path)


@pytest.mark.parametrize("edit, words", [
    # was: "model format version 1 ...; this oneclass reads version 1; retrain"
    (lambda m: m.update(format_version="1"), "'format_version' must be a whole number, got "
                                             "'1' (a string)"),
    # was: a warning of missing values, then "damaged model description (missing entry ...)"
    (lambda m: m.pop("params"), "missing entry 'params'"),
    (lambda m: m.update(params=[1]), "'params' must be a JSON object, got [1] (a list)"),
    # was: "float() argument must be a string or a real number, not 'NoneType'"
    (lambda m: m["fitted"].update(threshold=None), "'threshold' (in 'fitted') must be a number, "
                                                   "got null"),
    (lambda m: m["fitted"].pop("threshold"), "missing entry 'threshold' (in 'fitted')"),
    # was: taken as 0.5, silently
    (lambda m: m["fitted"].update(threshold="0.5"), "'threshold' (in 'fitted') must be a "
                                                    "number, got '0.5' (a string)"),
    (lambda m: m["fitted"].update(threshold=True), "'threshold' (in 'fitted') must be a number, "
                                                   "got true"),
    (lambda m: m["params"].update(threshold="0.5"), "'threshold' (in 'params') must be a number "
                                                    "or null, got '0.5' (a string)"),
    (lambda m: m["params"].update(nu="0.1"), "'nu' (in 'params') must be a number, got '0.1'"),
    (lambda m: m["preprocess"].update(channels="1"), "'channels' (in 'preprocess') must be a "
                                                     "whole number, got '1' (a string)"),
    (lambda m: m.update(input_shape=["1", 16, 16]), "'input_shape' must be a list of 3 whole "
                                                    "numbers"),
])
def test_a_damaged_description_names_the_file_the_entry_and_what_is_wrong(saved_json, tmp_path,
                                                                          caplog, edit, words):
    import logging
    import re

    with caplog.at_level(logging.WARNING, logger="oneclass"), \
            pytest.raises(ModelFileError) as err:
        _load_edited(saved_json, tmp_path, edit)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'm' / 'model.json'}: damaged model description: "), msg
    assert re.search(re.escape(words), msg), msg
    assert "retrain" not in msg and "float()" not in msg
    assert not caplog.records  # no misleading warning before the error


def test_a_description_with_plain_json_values_still_loads(saved_json, tmp_path, data):
    """An int threshold and a null params threshold are valid JSON for them."""
    det = _load_edited(saved_json, tmp_path,
                       lambda m: (m["fitted"].update(threshold=3), m["params"].update(threshold=None)))
    assert det.threshold_ == 3.0 and det.threshold is None
