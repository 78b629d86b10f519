"""The generic training loop: epochs, seeds, progress, per-epoch log, checkpoint / resume.

It knows nothing about any one method. A method hands it a :class:`Task`: the modules and
optimizers to checkpoint and a ``step(batch)`` that does one optimisation step and returns
its losses. The loop owns everything else:

- data order: epoch ``e`` is shuffled with a generator seeded by ``(seed, e)``, and torch's
  global RNG is re-seeded the same way, so a run resumed at epoch ``e`` continues exactly as
  an uninterrupted one would (bit-for-bit on CPU);
- a NaN / Inf loss stops training with an error naming the epoch and the loss;
- after every epoch a checkpoint is written atomically (when a directory is given);
- with ``torch.distributed`` initialised (``torchrun``, see :func:`init_distributed`), every
  rank walks the same batches of the same global size ``batch_size`` and takes its
  ``1/world`` slice of each; the task's modules are wrapped in DistributedDataParallel, which
  averages the gradients, so an epoch makes the same optimisation steps as one process would
  (up to batch-norm statistics, which each rank computes on its slice, and float summation
  order). Only rank 0 writes checkpoints, logs and calls ``on_epoch``.

A task opts in to DistributedDataParallel with ``ddp = True`` and by calling its modules as
``self.modules[name](...)`` in ``step`` (the loop swaps in the wrapped modules). For a task
that does not, the loop averages gradients across ranks just before each optimizer step
instead, which is the same computation without DDP's overlap of communication and backward.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist

from .errors import ConfigError, ModelFileError, TrainingError
from .io import atomic_write

log = logging.getLogger(__name__)

#: Precisions a method may train or score in: float32, or bf16 autocast (weights, optimizer
#: state and losses stay float32; convolutions and matrix products run in bfloat16).
PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device | str, precision: str):
    """bf16 autocast on ``device`` for ``precision='bf16'``, else a context that does nothing.

    On CPUs with AMX or AVX512-BF16 it is about twice as fast for convolutional nets (FCDD's
    CNN224 training step at 352x144, batch 32: 0.94 -> 0.43 s on this 2-core machine); on
    GPUs it needs bf16 support (Ampere or newer). Results differ from float32 in the last
    bits of every product, so a bf16 run is reproducible but not identical to a float32 one.
    """
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Task(Protocol):
    """What a method gives the loop."""

    modules: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, object]

    def step(self, batch: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """One optimisation step on a batch; returns scalar losses (detached or not)."""

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Called after each epoch (scheduler steps, radius updates); extra values to log."""


@dataclass
class LoopConfig:
    """Run-time options of a training loop (not model parameters)."""

    checkpoint_dir: Path | None = None
    resume: bool = False
    progress: bool | None = None  # None: only when stderr is a terminal
    on_epoch: Callable[[dict], None] | None = None
    # on resume (rank 0): called with (phase, epochs done by its checkpoint, 0 without one)
    # before the loop goes on, so a log can drop lines of epochs the checkpoint does not hold
    on_resume: Callable[[str, int], None] | None = None
    history: list[dict] = field(default_factory=list)
    #: seconds of the epochs that resumed phases had trained before (from their checkpoints;
    #: this run's epochs are in ``history``)
    resumed_seconds: float = 0.0


def rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of this process: ``(0, 1)`` outside distributed runs."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True outside distributed runs and on rank 0 (the rank that writes files)."""
    return rank_world()[0] == 0


def rank_generator() -> torch.Generator:
    """A generator for a training step's random draws, seeded from the global one plus the
    rank: the loop reseeds the global generator alike on every rank, so without the rank all
    ranks would draw the same anomalies, augmentation or reference images."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))) + rank_world()[0])


def rank_draw(fn, *size: int, device) -> torch.Tensor:
    """``fn(*size)`` (``torch.randn``, ``torch.rand``) for a training step, on ``device``.

    In one process it draws from the global generator, as ever; across ranks from
    :func:`rank_generator`, so each rank's share of the global batch gets its own codes.
    """
    if rank_world()[1] == 1:
        return fn(*size, device=device)
    return fn(*size, generator=rank_generator()).to(device)


def show_progress(progress: bool | None) -> bool:
    """Progress bars: as asked, or (None) when stderr is a terminal."""
    return progress if progress is not None else sys.stderr.isatty()


def init_distributed() -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``...): nccl on GPUs, gloo on CPUs. A no-op
    without torchrun. Returns ``(rank, world)``."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return rank_world()
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # on GPUs, gloo too: small collectives on CPU tensors (epoch loss sums) need it
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")
    return rank_world()


def leave_distributed(ok: bool = True) -> None:
    """Leave the process group: all ranks together (a barrier) after success; at once after a
    failure, when the other ranks may never reach a barrier."""
    if dist.is_available() and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def exit_now(code: int) -> None:
    """End a process that has left a gloo process group, skipping interpreter shutdown.

    A gloo worker thread can still hold its last collective when the process exits; freeing
    its tensors then needs the GIL of an interpreter being torn down, and the process aborts
    with "terminate called without an active exception" (SIGABRT) after its work is done and
    saved: 5 of 210 two-process runs under CPU load did so here (torch 2.13, CPU). Output is
    flushed and the exit code kept; files are written and closed before this point.
    """
    import os

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


class _Share:
    """This rank's share of the current global batch, ``len(slice) / len(batch)``.

    A global batch of odd size splits into slices one image apart, and each rank's loss is
    the mean over its own slice. Summing the ranks' gradients weighted by their shares (not
    averaging them) gives the gradient of the mean over the whole batch, the step one process
    takes."""

    value = 1.0


def _weighted_allreduce(share: type[_Share], bucket):
    """DDP communication hook: ``sum over ranks of share * gradient``."""
    buf = bucket.buffer().mul_(share.value)
    return dist.all_reduce(buf, async_op=True).get_future().then(lambda f: f.value()[0])


def _wrap_ddp(task: Task) -> dict[str, torch.nn.Module] | None:
    """Swap the task's trainable modules for DDP wrappers; returns the originals."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    original = dict(task.modules)
    for k, m in original.items():
        if any(p.requires_grad for p in m.parameters()):
            dev = next(m.parameters()).device
            task.modules[k] = DDP(m, device_ids=[dev] if dev.type == "cuda" else None)
            task.modules[k].register_comm_hook(_Share, _weighted_allreduce)
    return original


def _reduce_gradients_before_steps(task: Task) -> list:
    """For tasks without DDP: before every optimizer step, all-reduce the gradients weighted
    by each rank's share of the batch (see :class:`_Share`)."""

    def hook(opt, args, kwargs):
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(_Share.value)
                    dist.all_reduce(p.grad)

    return [o.register_step_pre_hook(hook) for o in task.optimizers.values()]


def broadcast_from_first(t: torch.Tensor) -> torch.Tensor:
    """``t`` of rank 0 on every rank (in place; a no-op in a single process)."""
    if rank_world()[1] > 1:
        dist.broadcast(t, 0)
    return t


def gather_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """The 1-D tensors ``t`` of all ranks, concatenated in rank order (the values of the
    whole global batch under DDP); ``t`` itself in a single process."""
    world = rank_world()[1]
    if world == 1:
        return t
    n = torch.tensor([t.numel()], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros(longest, dtype=t.dtype, device=t.device)
    padded[:t.numel()] = t.reshape(-1)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(s)] for p, s in zip(parts, sizes)])


def batches_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    """Batches an epoch of ``n`` images makes: with ``drop_last`` a last short batch is
    dropped, unless it is the only one."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest and (not drop_last or full == 0) else 0)


def epochs_for_steps(steps: int, n: int, batch_size: int, drop_last: bool) -> int:
    """The fewest epochs (at least one) that make ``steps`` batches of ``n`` images."""
    return max(1, math.ceil(steps / max(1, batches_per_epoch(n, batch_size, drop_last))))


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63 - 1)


def _state(task: Task, epoch: int, phase: str, seconds: float) -> dict:
    state = {"phase": phase, "epoch": epoch, "seconds": seconds}
    for k, m in task.modules.items():
        m = getattr(m, "module", m)  # unwrap DDP
        state[f"module.{k}"] = m.state_dict()
    for k, o in task.optimizers.items():
        state[f"optim.{k}"] = o.state_dict()
    for k, s in task.schedulers.items():
        state[f"sched.{k}"] = s.state_dict()  # type: ignore[attr-defined]
    extra = getattr(task, "extra_state", None)
    if extra is not None:
        state["extra"] = extra()
    return state


def _load(task: Task, state: dict) -> None:
    for k, m in task.modules.items():
        getattr(m, "module", m).load_state_dict(state[f"module.{k}"])
    for k, o in task.optimizers.items():
        o.load_state_dict(state[f"optim.{k}"])
    for k, s in task.schedulers.items():
        span = getattr(s, "T_max", None)
        s.load_state_dict(state[f"sched.{k}"])  # type: ignore[attr-defined]
        if span is not None and s.T_max != span:  # type: ignore[attr-defined]
            # a cosine schedule of another length would rise again after its end
            raise ValueError(f"its learning-rate schedule spans {s.T_max} epochs, this "  # type: ignore[attr-defined]
                             f"training's {span}")
    if "extra" in state and hasattr(task, "load_extra_state"):
        task.load_extra_state(state["extra"])  # type: ignore[attr-defined]


def run(
    task: Task,
    data: Sequence[torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    phase: str = "train",
    loop: LoopConfig | None = None,
    drop_last: bool = False,
) -> list[dict]:
    """Train ``task`` for ``epochs`` over the tensors ``data`` (indexed together on dim 0).

    Returns:
        The per-epoch log: one dict per epoch with the mean of each loss and the seconds.
    """
    loop = loop or LoopConfig()
    rank, world = rank_world()
    n = len(data[0])
    if n == 0:
        raise TrainingError(f"{phase}: no training images")
    ckpt = Path(loop.checkpoint_dir) / f"{phase}.pt" if loop.checkpoint_dir else None
    start, before = 0, 0.0  # before: seconds of the checkpoint's epochs
    if ckpt is not None and loop.resume and ckpt.exists():
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelFileError(f"{ckpt}: cannot read checkpoint ({exc})") from None
        try:
            _load(task, state)
            start = int(state["epoch"])
            before = float(state.get("seconds", 0.0))  # older checkpoints have none
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            what = f"no entry {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
            raise ModelFileError(f"{ckpt}: checkpoint does not fit this model ({what}); "
                                 "remove it to train from the start") from None
        if start > epochs:
            raise ModelFileError(f"{ckpt}: checkpoint is after epoch {start}, beyond the "
                                 f"{epochs} epochs asked for; remove it or ask for more epochs")
        log.info("%s: resumed after epoch %d of %d", phase, start, epochs)
        loop.resumed_seconds += before
    if loop.resume and loop.on_resume and rank == 0:
        loop.on_resume(phase, start)
    show = show_progress(loop.progress) and rank == 0
    original, hooks = None, []
    if world > 1:
        if getattr(task, "ddp", False):
            original = _wrap_ddp(task)
        else:
            hooks = _reduce_gradients_before_steps(task)
    try:
        return _epochs(task, data, start, epochs, batch_size, seed, phase, loop, drop_last,
                       ckpt, show, rank, world, before)
    finally:
        if original is not None:
            task.modules.clear()
            task.modules.update(original)
        for h in hooks:
            h.remove()


def _check_finite(losses: dict[str, float], phase: str, epoch: int, world: int) -> None:
    """Raise on a NaN or infinite loss, on every rank when any rank has one (a rank that
    stopped alone would leave the others failing in their next collective, or hanging)."""
    bad = [(k, v) for k, v in losses.items() if not math.isfinite(v)]
    if world > 1:
        flag = torch.tensor([1.0 if bad else 0.0])
        dist.all_reduce(flag)
        if flag.item() and not bad:
            raise TrainingError(
                f"{phase}: a loss became NaN or infinite on another process in epoch "
                f"{epoch + 1}; lower the learning rate (--set lr=...) or check the input images")
    if bad:
        k, v = bad[0]
        raise TrainingError(
            f"{phase}: loss '{k}' became {v} in epoch {epoch + 1}; lower the "
            "learning rate (--set lr=...) or check the input images")


#: A mean epoch loss beyond this, or this many times the phase's first epoch's (at least
#: 1), is a training that diverged: no method here reaches it when training works (their
#: inputs are standardised; GAN losses are log-likelihoods or Lipschitz-bounded critics).
DIVERGED = 1e12
DIVERGED_GROWTH = 1e6


def _check_diverged(record: dict, first: dict | None, phase: str, epoch: int) -> None:
    """Raise when a mean epoch loss blew up without becoming NaN (a learning rate far too
    high: Deep SVDD at lr=1e6 reached 3e18 and finished with a threshold of 1.6e19, its
    earlier model replaced). The epoch means are those of all processes, so every rank
    raises alike; the diverged epoch is neither logged nor checkpointed. ``first``: the
    phase's first epoch's record in this process, None for that epoch itself."""
    for k, v in record.items():
        if k in ("phase", "epoch") or not isinstance(v, float):
            continue
        f = (first or {}).get(k)
        grew = isinstance(f, float) and abs(v) > DIVERGED_GROWTH * max(abs(f), 1.0)
        if abs(v) > DIVERGED or grew:
            since = f" (first epoch: {f:.4g})" if grew else ""
            raise TrainingError(
                f"{phase}: loss '{k}' grew to {v:.4g} in epoch {epoch + 1}{since}: the "
                "training diverged; lower the learning rate (--set lr=...)")


def _epochs(task, data, start, epochs, batch_size, seed, phase, loop, drop_last, ckpt, show,
            rank, world, seconds: float) -> list[dict]:
    n = len(data[0])
    history: list[dict] = []
    if world > 1:
        # every rank takes a slice of every global batch: a batch smaller than the world
        # would leave a rank without images, so such batches are left out; batches that are
        # all of them smaller would leave nothing to train on
        if int(batch_size) < world or n < world:
            what = (f"batch size {batch_size}" if int(batch_size) < world
                    else f"training set of {n} images")
            raise ConfigError(f"{phase}: a {what} is smaller than the {world} processes, and "
                              "every process takes a part of each batch, so nothing would "
                              f"train; use a batch size and at least {world} images (--set "
                              "batch_size=N), or fewer processes")
        last = n % int(batch_size)
        if last and last < world and not drop_last and rank == 0 and start < epochs:
            log.warning("%s: the last batch of each epoch, %d image(s), is smaller than the %d "
                        "processes and is left out", phase, last, world)
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
        torch.manual_seed(_epoch_seed(seed, epoch) + 1)
        order = torch.randperm(n, generator=g)
        for m in task.modules.values():
            m.train()
        sums: dict[str, float] = {}
        count = 0
        batches = list(torch.split(order, batch_size))[:batches_per_epoch(n, batch_size, drop_last)]
        if world > 1:  # the same global batches; each rank takes its slice of every one
            # (a batch smaller than the world would leave a rank empty-handed: it is skipped)
            batches = [(torch.tensor_split(b, world)[rank], len(b))
                       for b in batches if len(b) >= world]
        else:
            batches = [(b, len(b)) for b in batches]
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(batches), desc=f"{phase} {epoch + 1}/{epochs}", leave=False,
                       file=sys.stderr)
        for idx, whole in batches:
            _Share.value = len(idx) / whole
            losses = {k: float(v) for k, v in task.step([t[idx] for t in data]).items()}
            _check_finite(losses, phase, epoch, world)
            for k, fv in losses.items():
                sums[k] = sums.get(k, 0.0) + fv * len(idx)
            count += len(idx)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)
        if bar is not None:
            bar.close()
        if world > 1:  # log the mean losses over all ranks
            keys = sorted(sums)
            t = torch.tensor([sums[k] for k in keys] + [count], dtype=torch.float64)
            dist.all_reduce(t)
            sums, count = dict(zip(keys, t[:-1].tolist())), int(t[-1])
        record = {"phase": phase, "epoch": epoch + 1}
        record.update({k: v / max(count, 1) for k, v in sums.items()})
        _check_diverged(record, history[0] if history else None, phase, epoch)
        record.update(task.end_epoch(epoch) or {})
        took = time.perf_counter() - t0
        seconds += took  # the phase's epochs so far, those of resumed runs included
        record["seconds"] = round(took, 3)
        history.append(record)
        loop.history.append(record)
        if rank == 0:
            log.info(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in record.items()))
            # the log line first: stopped in between, the resumed run repeats this epoch
            # and on_resume drops the line; the other way round the line would be lost
            if loop.on_epoch:
                loop.on_epoch(record)
            if ckpt is not None:
                state = _state(task, epoch + 1, phase, seconds)
                atomic_write(ckpt, lambda p, s=state: torch.save(s, p))
    return history
