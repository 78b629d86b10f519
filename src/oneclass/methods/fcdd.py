"""FCDD: Liznerski et al., "Explainable Deep One-Class Classification", ICLR 2021.

A fully convolutional network phi maps an image to a u x v map; its pseudo-Huber transform
``A(X) = sqrt(phi(X)^2 + 1) - 1`` is the low-resolution anomaly heatmap.

- normal images minimise ``mean(A(X))``;
- anomalies (labeled, outlier exposure or synthetic confetti noise) minimise
  ``-log(1 - exp(-mean(A(X))))``;
- anomalies with pixel masks Y use the semi-supervised pixel-wise objective on the
  upsampled map A'(X): ``mean((1 - Y) * A') - log(1 - exp(-mean(Y * A')))``.

Score: mean (or max) of A(X). Map: A(X) upsampled to the input by the network's receptive
field with a fixed Gaussian kernel (or bilinear); with ``map_norm='position'`` each pixel of
the map is divided by the mean map of the normal training images there (plus a tenth of
its overall mean), so a response counts by how unusual it is at that position.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import nn

from .. import augment
from ..anomalies import NOISE_MODES, AnomalySource
from ..detector import Detector, InputNorm, as_float
from ..errors import ConfigError
from ..heatmaps import bilinear_upsample, receptive_upsample
from ..nets import fcdd_nets
from ..nets.receptive import ReceptiveField, receptive_field
from ..registry import register
from ..train import LoopConfig, autocast, epochs_for_steps, rank_generator, run
from ._common import check_precision, normal_only

log = logging.getLogger(__name__)

#: epochs of the default schedule (``epochs=None``) on sets of 160 or more images
_DEFAULT_EPOCHS = 40


def pseudo_huber(out: torch.Tensor) -> torch.Tensor:
    """``A = sqrt(phi^2 + 1) - 1`` (Eq. 1 of the paper), in float32 also under bf16 autocast:
    in bf16 every A below about 0.004 rounds to 0, and an anomaly whose mean A does gets no
    gradient from ``-log(1 - exp(-A))``."""
    s = out.float() ** 2
    # s / (sqrt(s + 1) + 1), the same value without the cancellation of sqrt(s + 1) - 1: in
    # float32 that rounded every |phi| below about 2.4e-4 to A = 0 (no gradient, tied scores)
    return s / ((s + 1).sqrt() + 1)


def _neg_log_one_minus_exp(a: torch.Tensor) -> torch.Tensor:
    """``-log(1 - exp(-a))``, computed stably (expm1), floored as in the reference at 1e-31."""
    return -torch.log((-torch.expm1(-a)).clamp_min(1e-31))


def fcdd_loss(A: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample FCDD loss (Eq. 2): ``A`` (N, u, v), labels 0 normal / 1 anomalous."""
    m = A.flatten(1).mean(1)
    return torch.where(labels == 1, _neg_log_one_minus_exp(m), m)


def fcdd_pixel_loss(A_up: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-sample semi-supervised pixel-wise loss (Eq. 5) on upsampled maps ``(N, H, W)``."""
    normal = (A_up * (1 - gt)).flatten(1).mean(1)
    anomalous = (A_up * gt).flatten(1).mean(1)
    has = gt.flatten(1).amax(1) > 0
    return normal + torch.where(has, _neg_log_one_minus_exp(anomalous), torch.zeros_like(normal))


#: Heatmap calibrations (``map_norm``).
MAP_NORMS = ("none", "position")


class FCDDModel(nn.Module):
    """The FCDD network(s): ``x -> A(X)``, the low-resolution heatmap.

    With ``members > 1`` it is a deep ensemble of that many nets of the same architecture
    (so the same receptive field), each initialised and trained on its own; ``A(X)`` is the
    mean of their maps. A single net is stored as ``net`` (as before ensembles existed), an
    ensemble as ``nets``.
    """

    def __init__(self, input_shape, net: str, stride: int, frozen_blocks: int, pretrained: bool,
                 gcn: bool = False, map_reference: bool = False, padding: str = "zeros",
                 members: int = 1):
        super().__init__()
        c, h, w = input_shape
        if map_reference:  # per-pixel divisor of the upsampled map, set after training
            self.register_buffer("map_ref", torch.ones(h, w))
        nets = [fcdd_nets.build(net, c, (h, w), stride, frozen_blocks, pretrained, padding)
                for _ in range(members)]
        for n in nets:
            if getattr(n, "channels_last", False):  # faster convolutions on CPU
                n.to(memory_format=torch.channels_last)
        if members == 1:
            self.net = nets[0]
        else:
            self.nets = nn.ModuleList(nets)
        if not isinstance(nets[0], fcdd_nets.EffNetFCN):
            self.norm = InputNorm(c, gcn=gcn)
        self.rf: ReceptiveField = receptive_field(nets[0], input_shape)

    @property
    def members(self) -> list[nn.Module]:
        """The nets of the ensemble (one for a single model)."""
        return list(self.nets) if hasattr(self, "nets") else [self.net]

    def forward(self, x: torch.Tensor, split: bool = False) -> torch.Tensor:
        """Low-resolution heatmap A(X): ``(N, u, v)``, the mean over the members.

        With ``split=True`` (training) ``x`` holds one batch per member, stacked: ``(K * N,
        C, H, W)``; member ``k`` sees the ``k``-th and the result is ``(K, N, u, v)``.
        """
        if hasattr(self, "norm"):
            x = self.norm(x)
        nets = self.members
        if split:
            xs = torch.chunk(x, len(nets))
            return torch.stack([pseudo_huber(n(xk)[:, 0]) for n, xk in zip(nets, xs)])
        if len(nets) == 1:
            return pseudo_huber(nets[0](x)[:, 0])
        return torch.stack([pseudo_huber(n(x)[:, 0]) for n in nets]).mean(0)


class FCDDExport(nn.Module):
    """``x -> (score, map)`` in float32 as ``FCDD._score`` / ``_map`` compute them (export)."""

    def __init__(self, model: FCDDModel, image_score: str, upsample: str, sigma: float):
        super().__init__()
        self.model, self.image_score, self.upsample, self.sigma = model, image_score, upsample, sigma

    def forward(self, x: torch.Tensor):
        A = self.model(x)
        score = A.flatten(1).mean(1) if self.image_score == "mean" else A.flatten(1).amax(1)
        return score, _upsample(A, self.model, tuple(x.shape[2:]), self.upsample, self.sigma)


#: Inference on a CPU runs in chunks of at most this many pixels (32 images of 224x224):
#: beyond it the activations leave the caches and throughput drops (CNN224 heatmaps at
#: 224x224, fp32, 2 cores: 136 img/s at batch 32, 74 img/s at batch 64).
CPU_CHUNK_PIXELS = 32 * 224 * 224


def chunked(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``model(x).float()``, on a CPU in chunks of at most :data:`CPU_CHUNK_PIXELS` pixels."""
    if x.device.type != "cpu":
        return model(x).float()
    n = max(1, CPU_CHUNK_PIXELS // (x.shape[-2] * x.shape[-1]))
    return torch.cat([model(c).float() for c in torch.split(x, n)])


def _upsample(A: torch.Tensor, model: FCDDModel, size: tuple[int, int], mode: str,
              sigma: float) -> torch.Tensor:
    """The heatmap at the input ``size``: A upsampled, divided by ``map_ref`` if the model
    has one (``map_norm='position'``)."""
    if mode == "bilinear":
        up = bilinear_upsample(A, model.rf, size)
    else:
        up = receptive_upsample(A, model.rf, size, sigma)
    ref = getattr(model, "map_ref", None)
    return up if ref is None else up / ref


class _FCDDTask:
    ddp = True  # step calls self.modules["model"]: the loop may wrap it in DDP

    def __init__(self, det: FCDD, source: AnomalySource, epochs: int):
        self.det, self.model, self.source = det, det.model_, source
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        trunk = [p for n in self.model.members if isinstance(n, fcdd_nets.EffNetFCN)
                 for p in n.trunk.parameters() if p.requires_grad]
        if trunk:
            ids = {id(p) for p in trunk}
            rest = [p for p in trainable if id(p) not in ids]
            groups = [{"params": rest}, {"params": trunk, "lr": det.lr * det.trunk_lr_factor}]
        else:
            groups = [{"params": trainable}]
        opt = torch.optim.Adam(groups, lr=det.lr, weight_decay=det.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, int(epochs)))
        self.modules = {"model": self.model}
        self.optimizers, self.schedulers = {"fcdd": opt}, {"fcdd": sched}
        # With labeled anomalies that have pixel masks, every image takes its loss on the
        # upsampled map, as the reference does in this setting (Liznerski et al., Eq. 5 for
        # all samples): the upsampled map is several times the scale of the low-resolution
        # one, so mixing the two per batch weighed the masked anomalies against the rest.
        real = source.real
        self.pixel_mode = bool(real is not None and real[1] is not None and bool(real[2].any()))

    def _member_batch(self, x: torch.Tensor, gen: torch.Generator):
        """One member's training batch from the normal images ``x`` (float in [0, 1], changed
        in place): a share of them replaced by anomalies, then augmented. Returns images,
        labels, masks and which anomalies have masks."""
        det = self.det
        n = len(x)
        labels = torch.zeros(n, dtype=torch.long)
        masks = torch.zeros(n, 1, *x.shape[2:])
        has = torch.zeros(n, dtype=torch.bool)
        swap = torch.nonzero(torch.rand(n, generator=gen) < det.anomaly_fraction).flatten()
        if len(swap):
            xa, ma, ha = self.source.draw(x[swap], gen)
            x[swap], masks[swap], has[swap], labels[swap] = xa, ma, ha, 1
        marked = masks.flatten(1).amax(1) > 0
        x, masks = augment.apply(det.augment, x, masks, gen)
        # a shift can crop an anomaly near the border out of the image, mask and all: the
        # image left is a normal one and trains as one (0.4-0.8 % of synthetic anomalies)
        gone = marked & (masks.flatten(1).amax(1) == 0)
        labels[gone], has[gone] = 0, False
        return x, labels, masks, has

    def step(self, batch):
        det = self.det
        gen = rank_generator()
        # each member gets its own anomalies and augmentation of the same normal images (and
        # its own float copy of them, which _member_batch changes)
        parts = [self._member_batch(batch[0].float() / 255.0, gen) for _ in self.model.members]
        dev = det.device_
        x = torch.cat([p[0] for p in parts]).to(dev)
        with autocast(dev, det.train_precision):
            A = self.modules["model"](x, split=True).float()  # (members, N, u, v)
        loss = 0.0
        for Ak, (xk, labels, masks, has) in zip(A, parts):
            if self.pixel_mode:  # image-level terms on the upsampled map too: one scale
                Ak = receptive_upsample(Ak, self.model.rf, xk.shape[2:], det._sigma())
            lk = fcdd_loss(Ak, labels.to(dev))
            if has.any():
                idx = torch.nonzero(has).flatten().to(dev)
                up = Ak[idx] if self.pixel_mode else \
                    receptive_upsample(Ak[idx], self.model.rf, xk.shape[2:], det._sigma())
                lk = lk.clone()
                lk[idx] = fcdd_pixel_loss(up, masks[has][:, 0].to(dev))
            loss = loss + lk.mean()  # a sum: each member is trained as it would be alone
        opt = self.optimizers["fcdd"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.detach() / len(parts)}

    def end_epoch(self, epoch: int):
        self.schedulers["fcdd"].step()
        return {}


@register("fcdd")
class FCDD(Detector):
    """FCDD, fully convolutional with receptive-field heatmaps (see module docstring)."""

    uses_anomalies = True
    uses_masks = True

    fitted_json = ("anomaly_kinds_", "train_epochs_")  # epochs trained: the default is None

    default_size = 224
    keep_aspect = True
    uses_outliers = True
    defaults = {
        # None: 40 epochs, and more on small sets so that training makes at least
        # `min_train_steps` updates (40 epochs of 5 batches: sets of 160 or more images train
        # exactly 40 epochs); a number: exactly that many epochs
        "epochs": None,
        "min_train_steps": 200,
        "batch_size": 32,
        "lr": 1e-3,
        "weight_decay": 1e-6,
        "net": "auto",  # auto: cnn28 for 28x28, cnn32 up to 64 px, else cnn224
        # convolution padding of the from-scratch nets: zeros (the paper) or reflect
        "padding": "zeros",
        "stride": 8,  # effnet output stride (8 or 16)
        "frozen_blocks": 3,  # effnet: stem and this many MBConv blocks stay frozen
        "pretrained": True,
        "trunk_lr_factor": 0.1,
        "noise": "mixed",  # synthetic anomalies: confetti, scratches, mixed or none
        "anomaly_fraction": 0.5,  # share of each batch replaced by anomalies
        "image_score": "mean",  # mean or max of A(X)
        "upsample": "gaussian",  # gaussian (receptive field) or bilinear
        "sigma": None,  # Gaussian std in pixels; default 1.5 x the network's stride
        "precision": "fp32",  # inference precision: fp32 or bf16 (autocast)
        # training precision: fp32, or bf16 autocast (about 2x faster on CPUs with AMX)
        "train_precision": "fp32",
        "gcn": False,  # per-image contrast normalisation (l1) before the network
        "augment": "none",  # training augmentation: none, shift or shift-flip
        # Heatmap calibration: none, or position (each pixel divided by the mean map of the
        # normal training images there; suits aligned inspection images)
        "map_norm": "none",
        # deep ensemble: this many nets, each with its own initialisation, anomalies and
        # augmentation; maps and scores are their mean (training and scoring cost x members)
        "members": 1,
    }

    scoring_params = ("score_batch_size", "precision")
    schedule_params = ("min_train_steps",)

    def _check_params(self) -> None:
        super()._check_params()
        if self.net not in fcdd_nets.NETS:
            raise ConfigError(f"net must be one of {', '.join(fcdd_nets.NETS)}, got {self.net!r}")
        if self.noise not in NOISE_MODES:
            raise ConfigError(f"noise must be one of {', '.join(NOISE_MODES)}, got {self.noise!r}")
        if self.image_score not in ("mean", "max"):
            raise ConfigError(f"image_score must be 'mean' or 'max', got {self.image_score!r}")
        if self.upsample not in ("gaussian", "bilinear"):
            raise ConfigError(f"upsample must be 'gaussian' or 'bilinear', got {self.upsample!r}")
        if not 0.0 < float(self.anomaly_fraction) < 1.0:
            raise ConfigError(f"anomaly_fraction must be in (0, 1), got {self.anomaly_fraction}")
        check_precision(self, "precision", "train_precision")
        if self.augment not in augment.AUGMENTS:
            raise ConfigError(f"augment must be one of {', '.join(augment.AUGMENTS)}, got {self.augment!r}")
        if self.padding not in fcdd_nets.PADDINGS:
            raise ConfigError(f"padding must be one of {', '.join(fcdd_nets.PADDINGS)}, "
                              f"got {self.padding!r}")
        if self.map_norm not in MAP_NORMS:
            raise ConfigError(f"map_norm must be one of {', '.join(MAP_NORMS)}, got {self.map_norm!r}")
        if int(self.min_train_steps) < 0:
            raise ConfigError(f"min_train_steps must be >= 0, got {self.min_train_steps}")
        if int(self.members) < 1 or int(self.members) != float(self.members):
            raise ConfigError(f"members must be a whole number >= 1, got {self.members!r}")
        if self.sigma is not None and not 0 < as_float(self.sigma) < math.inf:
            raise ConfigError(f"sigma must be a positive number of pixels (or unset, null: 1.5 "
                              f"x the network's stride), got {self.sigma!r}")
        if not 0 <= as_float(self.trunk_lr_factor) < math.inf:
            raise ConfigError(f"trunk_lr_factor must be a number >= 0, got {self.trunk_lr_factor!r}")
        if int(self.frozen_blocks) < 0:
            raise ConfigError(f"frozen_blocks must be >= 0, got {self.frozen_blocks}")
        if int(self.stride) not in (8, 16):
            raise ConfigError(f"stride must be 8 or 16, got {self.stride}")
        if self.gcn and self.net == "effnet":
            raise ConfigError("gcn applies to the from-scratch nets only: the pretrained trunk "
                              "(net=effnet) normalises its input with the ImageNet statistics "
                              "it was trained on; leave gcn off or pick another net")

    def _build(self, input_shape):
        return FCDDModel(input_shape, self.net, int(self.stride), int(self.frozen_blocks),
                         bool(self.pretrained) and not self._restoring, gcn=bool(self.gcn),
                         map_reference=self.map_norm == "position",
                         padding=self.padding, members=int(self.members))

    def _sigma(self) -> float:
        if self.sigma is not None:
            return float(self.sigma)
        return 1.5 * float(max(self.model_.rf.j))

    def _fit(self, x, y, masks, loop: LoopConfig) -> None:
        normal = y != 1
        real = None
        if (~normal).any():
            xa = x[~normal]
            ma = masks[~normal] if masks is not None else None
            ha = (ma.flatten(1).amax(1) > 0) if ma is not None else torch.zeros(len(xa), dtype=torch.bool)
            real = (xa, ma, ha)
        source = AnomalySource(real, self._outliers, noise=self.noise)
        if not source:
            raise ConfigError("fcdd needs anomalies to train: keep noise=mixed (default), or give "
                              "--outliers SPEC or labeled --anomalies SPEC")
        self.anomaly_kinds_ = source.kinds
        epochs = self.train_epochs_ = self._train_epochs(int(normal.sum()))
        x = normal_only(x, y)
        run(_FCDDTask(self, source, epochs), [x], epochs=epochs,
            batch_size=int(self.batch_size), seed=int(self.seed), phase="train", loop=loop,
            drop_last=True)
        if self.map_norm == "position":
            self._fit_map_reference(x)

    def _train_epochs(self, n: int) -> int:
        """Epochs to train on ``n`` normal images: ``epochs`` if set, else 40, or as many as
        make ``min_train_steps`` batches if 40 epochs of ``n`` images make fewer (the loop
        drops a last short batch). The 40-epoch default was chosen on sets of 160 or more
        images; a set of 36 makes one batch per epoch, 40 updates in all, and stopped far
        short of what the same net learns in 200 (docs/benchmark-notes.md)."""
        if self.epochs is not None:
            return int(self.epochs)
        epochs = max(_DEFAULT_EPOCHS, epochs_for_steps(int(self.min_train_steps), n,
                                                       int(self.batch_size), drop_last=True))
        if epochs > _DEFAULT_EPOCHS:
            log.info("fcdd: %d epochs over %d images, to make min_train_steps %d updates",
                     epochs, n, int(self.min_train_steps))
        return epochs

    def _fit_map_reference(self, x: torch.Tensor) -> None:
        """``map_ref``: the mean heatmap of the normal training images ``x`` (uint8) plus a
        tenth of its overall mean, which keeps positions where normal maps are near zero
        from turning every small response into a large ratio."""
        model = self.model_
        model.eval()
        total = torch.zeros(self.input_shape_[1:], dtype=torch.float64)
        for xb in self.batches(x):
            total += self._map(xb).cpu().double().sum(0)  # map_ref is still all ones here
        mean = (total / max(1, len(x))).float()
        model.map_ref.copy_((mean + 0.1 * mean.mean()).clamp_min(1e-12).to(model.map_ref))

    def _autocast(self, x: torch.Tensor):
        """bf16 autocast for inference when ``precision='bf16'`` (about 1.1-1.5x on CPUs with
        AVX512-BF16 or AMX); maps and scores are returned in float32."""
        return autocast(x.device, self.precision)

    def _A(self, x: torch.Tensor) -> torch.Tensor:
        with self._autocast(x):
            return chunked(self.model_, x)

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        A = self._A(x)
        return A.flatten(1).mean(1) if self.image_score == "mean" else A.flatten(1).amax(1)

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return _upsample(self._A(x), self.model_, tuple(x.shape[2:]), self.upsample,
                             self._sigma())

    def _score_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            A = self._A(x)
            score = A.flatten(1).mean(1) if self.image_score == "mean" else A.flatten(1).amax(1)
            return score, _upsample(A, self.model_, tuple(x.shape[2:]), self.upsample,
                                    self._sigma())

    def export_module(self) -> nn.Module:
        # Exported in float32 whatever ``precision``: bf16 autocast is a CPU/GPU run-time choice.
        return FCDDExport(self.model_, self.image_score, self.upsample, self._sigma())

    def _fitted_extra(self):
        return {**super()._fitted_extra(), "receptive_field": self.model_.rf.to_json()}
