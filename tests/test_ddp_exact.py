"""Two gloo ranks take exactly the optimisation steps of one process (no batch norm here).

Kept apart from test_ddp.py so that the spawned processes import little.
"""

from __future__ import annotations

import torch

from oneclass.train import gather_across_ranks, run

BATCH_SIZES = (16, 15)


class _Linear:
    """A least-squares task without batch norm: exact agreement is expected."""

    def __init__(self, ddp: bool):
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 1)
        self.modules = {"lin": self.lin}
        self.optimizers = {"sgd": torch.optim.SGD(self.lin.parameters(), lr=0.1)}
        self.schedulers = {}
        self.ddp = ddp

    def step(self, batch):
        x, y = batch
        loss = ((self.modules["lin"](x)[:, 0] - y) ** 2).mean()
        opt = self.optimizers["sgd"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.detach()}

    def end_epoch(self, epoch):
        return {}


def _linear_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    return [x, x @ torch.tensor([1.0, -2.0, 3.0, 0.5]) + 0.1]


def _linear_worker(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    weights = {}
    for ddp in (True, False):
        for bs in BATCH_SIZES:
            task = _Linear(ddp)
            run(task, _linear_data(), epochs=3, batch_size=bs, seed=0)
            weights[f"{ddp} {bs}"] = task.lin.weight.detach().clone()
    # rank 0 holds 2 values, rank 1 three: gathered in rank order
    weights["gathered"] = gather_across_ranks(torch.arange(2.0 + rank) + 10 * rank)
    # the Deep SVDD centre: each rank's encoder differs a little (its own batch-norm
    # statistics, here + rank); every rank must take rank 0's centre
    from oneclass.methods._common import mean_embedding

    x = torch.full((8, 4), 255, dtype=torch.uint8)  # 1.0 after to_input
    c = mean_embedding(lambda z: z[:, :3] + rank, x, torch.device("cpu"))
    weights["centres"] = gather_across_ranks(c)
    if rank == 0:
        torch.save(weights, out)
    _leave()


def _leave() -> None:
    """Leave as `oneclass train` does: together, then without interpreter shutdown, where a
    gloo thread still freeing its last collective aborts the process (train.exit_now)."""
    from oneclass.train import exit_now, leave_distributed

    leave_distributed(ok=True)
    exit_now(0)


def test_two_ranks_take_the_single_process_steps_exactly(tmp_path):
    """With DDP (tasks with ``ddp = True``) and with the gradient-averaging fallback, for
    batches that split evenly (16) and batches whose two slices differ by one image (15: 8
    and 7, and a last batch of 4)."""
    import torch.multiprocessing as mp

    out = tmp_path / "w.pt"
    mp.spawn(_linear_worker, args=(f"file://{tmp_path / 'init'}", str(out)), nprocs=2)
    weights = torch.load(out, weights_only=True)
    for bs in BATCH_SIZES:
        single = _Linear(False)
        run(single, _linear_data(), epochs=3, batch_size=bs, seed=0)
        for ddp in (True, False):
            torch.testing.assert_close(weights[f"{ddp} {bs}"], single.lin.weight.detach(),
                                       rtol=0, atol=1e-6, msg=f"ddp={ddp}, batch {bs}")
        assert not torch.equal(single.lin.weight, _Linear(False).lin.weight)  # it did train
    assert weights["gathered"].tolist() == [0.0, 1.0, 10.0, 11.0, 12.0]
    assert weights["centres"].tolist() == [1.0] * 6  # rank 1 holds rank 0's centre, not 2.0


class _NanOnRankOne(_Linear):
    """Rank 1's second step reports a NaN loss; rank 0's losses stay finite."""

    def __init__(self, rank: int):
        super().__init__(ddp=True)
        self.rank, self.steps = rank, 0

    def step(self, batch):
        loss = super().step(batch)
        self.steps += 1
        if self.rank == 1 and self.steps == 2:
            return {"loss": torch.tensor(float("nan"))}
        return loss


def _nan_worker(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from oneclass.errors import TrainingError

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        run(_NanOnRankOne(rank), _linear_data(), epochs=2, batch_size=16, seed=0)
        message = "no error"
    except TrainingError as exc:
        message = f"TrainingError: {exc}"
    with open(f"{out}.{rank}", "w") as f:
        f.write(message)
    _leave()


def test_a_nan_loss_on_one_rank_stops_every_rank_with_the_same_error(tmp_path):
    """Only the rank that saw the NaN used to stop; the other failed in its next collective
    with a raw gloo error (or hung until the timeout)."""
    import torch.multiprocessing as mp

    out = tmp_path / "msg"
    mp.spawn(_nan_worker, args=(f"file://{tmp_path / 'init'}", str(out)), nprocs=2)
    first, second = ((tmp_path / f"msg.{r}").read_text() for r in (0, 1))
    assert first.startswith("TrainingError:") and "another process in epoch 1" in first
    assert second.startswith("TrainingError: train: loss 'loss' became nan in epoch 1")


def test_batches_smaller_than_the_world_are_refused_not_skipped(caplog):
    """Under torchrun a batch smaller than the number of processes is left out (a process
    would get no image); with a batch size below it every batch was, and a training that
    never stepped reported success. It is refused now; a short last batch is warned about."""
    import logging

    import pytest

    from oneclass.errors import ConfigError
    from oneclass.train import LoopConfig, _epochs

    task = _Linear(ddp=False)
    before = task.lin.weight.detach().clone()
    for bs, data in ((1, _linear_data()), (16, [t[:1] for t in _linear_data()])):
        with pytest.raises(ConfigError, match="smaller than the 2 processes"):
            _epochs(task, data, 0, 1, bs, 0, "train", LoopConfig(), False, None, False, 0, 2, 0.0)
    assert torch.equal(task.lin.weight, before)  # nothing ran
    with caplog.at_level(logging.WARNING, logger="oneclass"):
        with pytest.raises(ValueError, match="process group"):  # none here: the all-reduce fails
            _epochs(task, [t[:17] for t in _linear_data()], 0, 1, 16, 0, "train", LoopConfig(),
                    False, None, False, 0, 2, 0.0)
    assert "the last batch of each epoch, 1 image(s), is smaller than the 2 processes" \
        in caplog.text
