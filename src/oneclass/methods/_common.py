"""Pieces shared by methods: tensors to device, autoencoder pretraining, optimizers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..train import PRECISIONS, LoopConfig, autocast, broadcast_from_first, run


def to_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` on CPU -> float in [0, 1] on ``device``."""
    # non_blocking from pageable memory is safe on CUDA (staged at once), not on MPS
    return x.to(device, non_blocking=torch.device(device).type == "cuda").float().div_(255.0)


def check_precision(det, *keys: str) -> None:
    """Clear errors for precision parameters (``precision``, ``train_precision``)."""
    for key in keys:
        if getattr(det, key) not in PRECISIONS:
            raise ConfigError(f"{key} must be one of {', '.join(PRECISIONS)}, "
                              f"got {getattr(det, key)!r}")


def adam(params, lr: float, weight_decay: float, milestones: Sequence[int] = ()):
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=0.1)
    return opt, sched


class AutoencoderTask:
    """Pretraining of ``norm -> encoder -> decoder`` with the mean squared error to the
    normalised input (to the image in [0, 1] for a decoder with ``raw_target``).

    Deep SVDD and Deep SAD initialise their encoder this way (Ruff et al. 2018, Sec. 4).
    """

    ddp = True  # step calls self.modules[...]: the loop may wrap them in DDP

    def __init__(self, norm: nn.Module, encoder: nn.Module, decoder: nn.Module,
                 device: torch.device, lr: float, weight_decay: float, precision: str = "fp32"):
        self.norm, self.device, self.precision = norm, device, precision
        self.modules = {"encoder": encoder, "decoder": decoder}
        self.raw_target = bool(getattr(decoder, "raw_target", False))
        params = list(encoder.parameters()) + list(decoder.parameters())
        opt, sched = adam(params, lr, weight_decay)
        self.optimizers, self.schedulers = {"ae": opt}, {"ae": sched}

    def step(self, batch):
        raw = to_input(batch[0], self.device)
        x = self.norm(raw)
        with autocast(self.device, self.precision):
            rec = self.modules["decoder"](self.modules["encoder"](x))
        # a decoder with ``raw_target`` (ReferenceDecoder) reconstructs the image in [0, 1]
        loss = F.mse_loss(rec.float(), raw if self.raw_target else x)
        opt = self.optimizers["ae"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"rec_loss": loss.detach()}

    def end_epoch(self, epoch: int):
        self.schedulers["ae"].step()
        return {}


def pretrain_autoencoder(model: nn.Module, decoder: nn.Module, x: torch.Tensor, *, epochs: int,
                         batch_size: int, lr: float, weight_decay: float, seed: int,
                         device: torch.device, loop: LoopConfig,
                         precision: str = "fp32") -> list[dict]:
    """Train ``model.encoder`` with ``decoder`` as an autoencoder on uint8 images ``x``
    (``precision='bf16'``: under bf16 autocast, the loss in float32)."""
    if epochs <= 0:
        return []
    decoder.to(device)
    task = AutoencoderTask(model.norm, model.encoder, decoder, device, lr, weight_decay, precision)
    return run(task, [x], epochs=epochs, batch_size=batch_size, seed=seed + 7,
               phase="pretrain", loop=loop)


def normal_only(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x`` without its labeled anomalies (label 1): ``x`` itself, not a copy, when it has
    none (the copy held a large training set in memory twice for the whole training)."""
    keep = y != 1
    return x if bool(keep.all()) else x[keep]


@torch.no_grad()
def mean_embedding(encode, x: torch.Tensor, device: torch.device, batch: int = 512,
                   eps: float = 0.1, progress: bool = False) -> torch.Tensor:
    """Centre c = mean embedding of ``x``; coordinates too close to 0 are pushed to +-eps.

    A coordinate of c near zero can be hit trivially by zero weights (Ruff et al. 2018).
    """
    from tqdm.auto import tqdm

    total, n = None, 0
    for xb in tqdm(torch.split(x, batch), desc="centre", disable=not progress, leave=False):
        z = encode(to_input(xb, device)).cpu().double()  # float64 on the CPU: MPS has none
        total = z.sum(0) if total is None else total + z.sum(0)
        n += len(z)
    c = (total / n).float()
    c[(c.abs() < eps) & (c < 0)] = -eps
    c[(c.abs() < eps) & (c >= 0)] = eps
    # Under DDP each rank's batch-norm running statistics differ a little after pretraining
    # (each updates them on its own slices), and with them c: every rank takes rank 0's.
    return broadcast_from_first(c.to(device).contiguous())
