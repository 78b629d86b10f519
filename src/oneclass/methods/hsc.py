"""HSC: the hypersphere classifier of Ruff et al., "Rethinking Assumptions in Deep Anomaly
Detection", 2021 (ICML UDL workshop), reference code lukasruff/Classification-AD.

A binary classifier whose decision is the distance of phi(x) to the centre c = 0, through
the pseudo-Huber distance ``h(x) = sqrt(||phi(x)||^2 + 1) - 1`` and the "probability of
being anomalous" ``1 - exp(-h(x))``. Its binary cross-entropy gives

    normal (and unlabeled) images:                 h(x)
    anomalies (labeled, outlier exposure, noise):  -log(1 - exp(-h(x)))

Unlike Deep SVDD, c needs no initial pass: the anomalies keep phi from collapsing to c.
Each training batch of normal images is paired with as many anomalies drawn from the
enabled kinds (as the reference concatenates a normal and an outlier-exposure batch):
labeled anomalies of the training set, outlier-exposure images (``fit(outliers=...)``,
e.g. another dataset) and, with ``noise='auto'``, synthetic confetti noise when no outlier
images are given.

Score: h(x). Map: smoothed absolute input gradient of the score (phi outputs a vector).
"""

from __future__ import annotations

import torch
from torch import nn

from ..anomalies import NOISE_MODES, AnomalySource
from ..data.base import ANOMALOUS
from ..detector import Detector
from ..errors import ConfigError
from ..heatmaps import LENET_MAP_PARITY_TOL, gradient_map
from ..registry import register
from ..train import LoopConfig, rank_generator, run
from ._common import adam, normal_only
from .deep_svdd import SVDDNet, check_encoder_params, encoder_params
from .fcdd import _neg_log_one_minus_exp


def hsc_distance(z: torch.Tensor) -> torch.Tensor:
    """Pseudo-Huber distance of embeddings ``(N, D)`` to the origin: sqrt(||z||^2 + 1) - 1,
    computed as s / (sqrt(s + 1) + 1) with s = ||z||^2 (the same value), which keeps its
    precision, and so its gradient, for small s where the difference rounds to 0 in float32."""
    s = (z**2).sum(dim=1)
    return s / ((s + 1).sqrt() + 1)


def hsc_loss(h: torch.Tensor, anomalous: torch.Tensor) -> torch.Tensor:
    """Per-sample HSC loss: ``h`` for normal samples, ``-log(1 - exp(-h))`` for anomalies."""
    return torch.where(anomalous, _neg_log_one_minus_exp(h), h)


class _HSCTask:
    def __init__(self, det: HSC, source: AnomalySource):
        self.det, self.model, self.source = det, det.model_, source
        opt, sched = adam(self.model.encoder.parameters(), det.lr, det.weight_decay,
                          det.lr_milestones)
        self.modules = {"encoder": self.model.encoder}
        self.optimizers, self.schedulers = {"hsc": opt}, {"hsc": sched}

    def step(self, batch):
        det = self.det
        gen = rank_generator()
        xn = batch[0].float() / 255.0
        xa, _, _ = self.source.draw(xn, gen)
        x = torch.cat([xn, xa]).to(det.device_)
        anomalous = torch.arange(len(x), device=x.device) >= len(xn)
        h = hsc_distance(self.model.embed(x))
        loss = hsc_loss(h, anomalous).mean()
        opt = self.optimizers["hsc"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.detach(), "h_normal": h[~anomalous].mean().detach(),
                "h_anomalous": h[anomalous].mean().detach()}

    def end_epoch(self, epoch: int):
        self.schedulers["hsc"].step()
        return {}


class HSCScore(nn.Module):
    """The image score as a module (for export): pseudo-Huber distance of the embedding."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hsc_distance(self.model.embed(x))


@register("hsc")
class HSC(Detector):
    """Hypersphere classifier with outlier exposure (see module docstring)."""

    uses_anomalies = True

    fitted_json = ("anomaly_kinds_",)

    default_size = 64  # as Deep SVDD: one vector per image, LeNet-type network
    map_parity_tol = LENET_MAP_PARITY_TOL  # the gradient map's kinks
    uses_outliers = True
    defaults = {
        "epochs": 30,
        "lr": 1e-3,
        "weight_decay": 1e-6,
        "lr_milestones": [],
        "noise": "auto",  # auto: confetti only when no outlier images are given; or a mode
        "gcn": False,
        "heatmap_sigma": None,
        "widths": None,  # encoder, as for Deep SVDD
        "rep_dim": None,
        "hidden": 0,
        "slope": 0.1,
    }

    def _check_params(self) -> None:
        super()._check_params()
        check_encoder_params(self)
        if self.noise != "auto" and self.noise not in NOISE_MODES:
            raise ConfigError(f"noise must be auto or one of {', '.join(NOISE_MODES)}, "
                              f"got {self.noise!r}")

    def _build(self, input_shape):
        # The centre stays at its initial 0: HSC's c is the origin.
        return SVDDNet(input_shape, **encoder_params(self))

    def _fit(self, x, y, masks, loop: LoopConfig) -> None:
        normal = y != ANOMALOUS
        real = (x[~normal], None, torch.zeros(int((~normal).sum()), dtype=torch.bool)) \
            if (~normal).any() else None
        noise = self.noise
        if noise == "auto":
            noise = "none" if self._outliers is not None and len(self._outliers) else "confetti"
        source = AnomalySource(real, self._outliers, noise=noise)
        if not source:
            raise ConfigError("hsc needs anomalies to train: give --outliers SPEC or labeled "
                              "--anomalies SPEC, or keep noise=auto")
        self.anomaly_kinds_ = source.kinds
        run(_HSCTask(self, source), [normal_only(x, y)], epochs=int(self.epochs),
            batch_size=int(self.batch_size), seed=int(self.seed), phase="train", loop=loop)

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        return hsc_distance(self.model_.embed(x))

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        return gradient_map(self._score, x, self.heatmap_sigma)

    def export_module(self) -> nn.Module:
        from ..export import gradient_module

        return gradient_module(HSCScore(self.model_), self.input_shape_, self.heatmap_sigma)
