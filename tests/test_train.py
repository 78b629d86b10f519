"""The generic training loop: NaN guard, checkpoints, exact resume."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import oneclass
from oneclass.errors import ModelFileError, TrainingError
from oneclass.train import LoopConfig, batches_per_epoch, run


class _Task:
    """A one-parameter task whose loss becomes NaN at a chosen epoch."""

    def __init__(self, nan_epoch: int):
        self.w = torch.nn.Linear(1, 1)
        self.modules = {"w": self.w}
        self.optimizers = {"o": torch.optim.SGD(self.w.parameters(), lr=0.1)}
        self.schedulers = {}
        self.epoch, self.nan_epoch = 0, nan_epoch

    def step(self, batch):
        loss = self.w(batch[0]).pow(2).mean()
        if self.epoch + 1 == self.nan_epoch:
            loss = loss * float("nan")
        return {"loss": loss.detach()}

    def end_epoch(self, epoch):
        self.epoch = epoch + 1
        return {}


def test_nan_loss_names_the_epoch():
    with pytest.raises(TrainingError, match="loss 'loss' became nan in epoch 3"):
        run(_Task(3), [torch.randn(10, 1)], epochs=5, batch_size=4, seed=0)


class _Blowup(_Task):
    """A loss that grows by ``factor`` every epoch, without becoming NaN."""

    def __init__(self, factor: float, start: float = 1.0):
        super().__init__(0)
        self.factor, self.start = factor, start

    def step(self, batch):
        loss = self.w(batch[0]).pow(2).mean() * 0 + self.start * self.factor ** self.epoch
        return {"loss": loss.detach()}


def test_a_loss_that_blows_up_without_nan_stops_the_training():
    """lr=1e6 took Deep SVDD's loss to 3e18 and the run finished with exit 0, replacing the
    earlier model with one whose threshold was 1.6e19 (AUROC 0.19)."""
    with pytest.raises(TrainingError, match=r"loss 'loss' grew to 1e\+08 in epoch 5 \(first "
                       r"epoch: 1\): the training diverged"):
        run(_Blowup(100.0), [torch.randn(10, 1)], epochs=8, batch_size=4, seed=0)
    with pytest.raises(TrainingError, match=r"grew to 3e\+18 in epoch 1: the training diverged"):
        run(_Blowup(1.0, start=3e18), [torch.randn(10, 1)], epochs=2, batch_size=4, seed=0)
    # a loss that rises, even 1000-fold, or starts large and falls, trains on
    assert len(run(_Blowup(10.0), [torch.randn(10, 1)], epochs=4, batch_size=4, seed=0)) == 4
    assert len(run(_Blowup(0.01, start=1e9), [torch.randn(10, 1)], epochs=3, batch_size=4,
                   seed=0)) == 3


def test_a_checkpoint_that_does_not_fit_is_a_clear_error(tmp_path):
    from oneclass.errors import ModelFileError

    run(_Task(0), [torch.randn(10, 1)], epochs=3, batch_size=4, seed=0,
        loop=LoopConfig(checkpoint_dir=tmp_path))
    with pytest.raises(ModelFileError, match="after epoch 3, beyond the 2 epochs"):
        run(_Task(0), [torch.randn(10, 1)], epochs=2, batch_size=4, seed=0,
            loop=LoopConfig(checkpoint_dir=tmp_path, resume=True))
    other = _Task(0)
    other.modules = {"v": other.w}
    with pytest.raises(ModelFileError, match=r"train.pt: checkpoint does not fit this model "
                                             r"\(no entry 'module.v'\)"):
        run(other, [torch.randn(10, 1)], epochs=4, batch_size=4, seed=0,
            loop=LoopConfig(checkpoint_dir=tmp_path, resume=True))


def test_history_has_one_record_per_epoch():
    hist = run(_Task(0), [torch.randn(10, 1)], epochs=4, batch_size=4, seed=0)
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    assert all(np.isfinite(h["loss"]) for h in hist)


class _Counting(_Task):
    def __init__(self):
        super().__init__(0)
        self.steps = 0

    def step(self, batch):
        self.steps += 1
        return super().step(batch)


@pytest.mark.parametrize("n", [3, 4, 10, 12, 13])
@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_per_epoch_is_what_an_epoch_steps(n, drop_last):
    task = _Counting()
    run(task, [torch.randn(n, 1)], epochs=1, batch_size=4, seed=0, drop_last=drop_last)
    assert batches_per_epoch(n, 4, drop_last) == task.steps


class _Stop(Exception):
    pass


def _fit_stopped_at_train_epoch(epoch: int, params: dict, train, ckpt) -> None:
    """A Deep SVDD fit with checkpoints in ``ckpt``, stopped at the log line of training
    epoch ``epoch`` (before its checkpoint)."""
    def stop(rec):
        if rec["phase"] == "train" and rec["epoch"] == epoch:
            raise _Stop

    with pytest.raises(_Stop):
        oneclass.create("deep_svdd", **params).fit(
            train, loop=LoopConfig(checkpoint_dir=ckpt, on_epoch=stop))


@pytest.mark.parametrize("objective", ["one-class", "soft-boundary"])
def test_resume_after_interruption_matches_uninterrupted_run(defects_train, defects_test,
                                                              tmp_path, objective):
    # soft-boundary: R follows the batches after warmup_epochs (2), a count the resumed
    # run must carry on from the checkpoint
    params = dict(epochs=4, pretrain_epochs=2, batch_size=32, seed=3, objective=objective,
                  warmup_epochs=2)
    full = oneclass.create("deep_svdd", **params).fit(defects_train).score(defects_test)

    ckpt = tmp_path / "ckpt"
    _fit_stopped_at_train_epoch(3, params, defects_train, ckpt)  # after the second's checkpoint
    assert (ckpt / "pretrain.pt").exists() and (ckpt / "train.pt").exists()
    state = torch.load(ckpt / "train.pt", weights_only=True)
    assert state["epoch"] == 2
    ran = []  # the epochs the resumed run trains: the checkpoint's are not trained again
    resumed = oneclass.create("deep_svdd", **params).fit(
        defects_train, loop=LoopConfig(checkpoint_dir=ckpt, resume=True,
                                       on_epoch=lambda r: ran.append((r["phase"], r["epoch"]))))
    assert ran == [("train", 3), ("train", 4)]
    assert np.array_equal(resumed.score(defects_test), full)


@pytest.mark.parametrize("name, extra", [
    ("anogan", {"g_ema": 0.9, "search_steps": 5, "search_candidates": 4}),
    ("bigan", {}),
    ("fcdd", {}),
])
def test_other_methods_resume_to_the_uninterrupted_model(name, extra, defects_train,
                                                         defects_test, tmp_path):
    params = dict(epochs=3, batch_size=16, seed=3, **extra)
    if name in ("anogan", "bigan"):
        params.update(width=8, z_dim=8)
    full = oneclass.create(name, **params).fit(defects_train).score(defects_test)

    def stop_after_second_epoch(rec):  # at the third's log line, before its checkpoint
        if rec["epoch"] == 3:
            raise _Stop

    ckpt = tmp_path / "ckpt"
    with pytest.raises(_Stop):
        oneclass.create(name, **params).fit(
            defects_train, loop=LoopConfig(checkpoint_dir=ckpt, on_epoch=stop_after_second_epoch))
    ran = []  # the epochs the resumed run trains: the checkpoint's are not trained again
    resumed = oneclass.create(name, **params).fit(
        defects_train, loop=LoopConfig(checkpoint_dir=ckpt, resume=True,
                                       on_epoch=lambda r: ran.append(r["epoch"])))
    assert ran == [3]
    assert np.array_equal(resumed.score(defects_test), full)


def test_exit_now_flushes_output_and_keeps_the_exit_code():
    """The end of a torchrun process: buffered output (stdout is a pipe here) and log lines
    must come out although interpreter shutdown is skipped."""
    import subprocess
    import sys

    code = ("import logging, sys\n"
            "from oneclass.train import exit_now\n"
            "logging.basicConfig(stream=sys.stderr, format='%(message)s')\n"
            "print('trained', end='')\n"
            "logging.getLogger('oneclass').warning('logged')\n"
            "exit_now(3)\n"
            "print('never')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr.strip()) == (3, "trained", "logged")


def test_a_resumed_training_counts_the_seconds_of_the_epochs_it_resumed(defects_train, tmp_path,
                                                                        monkeypatch):
    # train_seconds counted only the resumed part: a run stopped after 90 % of its epochs
    # reported a tenth of its training time
    import oneclass.train as train_mod

    clock = iter(range(0, 10_000, 10))  # every clock read is 10 s after the one before
    monkeypatch.setattr(train_mod.time, "perf_counter", lambda: float(next(clock)))
    params = dict(epochs=3, pretrain_epochs=2, batch_size=64, seed=0)

    ckpt = tmp_path / "ckpt"
    _fit_stopped_at_train_epoch(2, params, defects_train, ckpt)
    # each epoch reads the clock twice: 10 s an epoch; the checkpoints hold the seconds
    assert torch.load(ckpt / "pretrain.pt", weights_only=True)["seconds"] == 20.0
    assert torch.load(ckpt / "train.pt", weights_only=True)["seconds"] == 10.0
    old = tmp_path / "old"  # the same checkpoints without their seconds, as written before
    shutil.copytree(ckpt, old)
    for f in old.glob("*.pt"):
        state = torch.load(f, weights_only=True)
        del state["seconds"]
        torch.save(state, f)
    loop = LoopConfig(checkpoint_dir=ckpt, resume=True)
    det = oneclass.create("deep_svdd", **params).fit(defects_train, loop=loop)
    assert loop.resumed_seconds == 30.0  # two pretraining epochs and one training epoch
    assert [r["epoch"] for r in det.history_ if r["phase"] == "train"] == [2, 3]
    assert torch.load(ckpt / "train.pt", weights_only=True)["seconds"] == 30.0  # 1 + 2 epochs
    without = oneclass.create("deep_svdd", **params).fit(
        defects_train, loop=LoopConfig(checkpoint_dir=old, resume=True))
    assert det.train_seconds_ - without.train_seconds_ == 30.0  # the same run but for those
    # a LoopConfig given again (a retry) counts each fit's own seconds and epochs once: as
    # a fresh one would (all five epochs are in the checkpoints now, nothing is trained)
    again = oneclass.create("deep_svdd", **params).fit(defects_train, loop=loop)
    fresh = oneclass.create("deep_svdd", **params).fit(
        defects_train, loop=LoopConfig(checkpoint_dir=ckpt, resume=True))
    assert again.train_seconds_ == fresh.train_seconds_ >= 50.0
    assert again.history_ == fresh.history_ == []


def test_a_checkpoint_of_a_schedule_of_another_length_is_refused(defects_train, tmp_path):
    # its cosine schedule, restored with the optimiser, would rise again after its end
    params = dict(batch_size=32, seed=0, net="cnn224", size=24)
    ckpt = tmp_path / "ckpt"

    def stop(rec):
        if rec["epoch"] == 2:
            raise _Stop

    with pytest.raises(_Stop):
        oneclass.create("fcdd", epochs=3, **params).fit(
            defects_train, loop=LoopConfig(checkpoint_dir=ckpt, on_epoch=stop))
    with pytest.raises(ModelFileError, match="schedule spans 3 epochs, this training's 5"):
        oneclass.create("fcdd", epochs=5, **params).fit(
            defects_train, loop=LoopConfig(checkpoint_dir=ckpt, resume=True))
