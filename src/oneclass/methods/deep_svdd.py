"""Deep SVDD: Ruff et al., "Deep One-Class Classification", ICML 2018.

A bias-free network phi maps normal images close to a centre c fixed after an initial
forward pass.

- one-class objective:      mean ||phi(x) - c||^2 (+ weight decay)
- soft-boundary objective:  R^2 + 1/nu * mean(max(0, ||phi(x) - c||^2 - R^2)); R is set to
  the (1 - nu) quantile of the distances after ``warmup_epochs``.

Score: ||phi(x) - c||^2 (one-class) or ||phi(x) - c||^2 - R^2 (soft-boundary).
Map: smoothed absolute input gradient of the score (the network outputs a vector).
Optional autoencoder pretraining initialises phi (as in the paper).
"""

from __future__ import annotations

import torch
from torch import nn

from ..detector import Detector, InputNorm
from ..errors import ConfigError
from ..heatmaps import LENET_MAP_PARITY_TOL, gradient_map
from ..nets import Decoder, Encoder, ReferenceDecoder, xavier_init_encoder_
from ..registry import register
from ..train import LoopConfig, autocast, gather_across_ranks, is_main_process, run, show_progress
from ._common import adam, check_precision, mean_embedding, normal_only, pretrain_autoencoder, to_input


def one_class_loss(dist: torch.Tensor) -> torch.Tensor:
    """One-class Deep SVDD objective (Eq. 4 without weight decay): mean squared distance."""
    return dist.mean()


def soft_boundary_loss(dist: torch.Tensor, radius: torch.Tensor, nu: float) -> torch.Tensor:
    """Soft-boundary Deep SVDD objective (Eq. 3): R^2 + 1/nu * mean(max(0, d - R^2))."""
    r2 = radius**2
    return r2 + torch.relu(dist - r2).mean() / nu


class SVDDNet(nn.Module):
    """``norm -> encoder`` with the centre ``c`` and radius ``R`` as buffers."""

    def __init__(self, input_shape: tuple[int, int, int], gcn: bool = False, widths=None,
                 rep_dim=None, hidden: int = 0, slope: float = 0.1):
        super().__init__()
        c, h, w = input_shape
        self.norm = InputNorm(c, gcn=gcn)
        self.encoder = Encoder(c, (h, w), widths=widths, rep_dim=rep_dim, hidden=hidden,
                               slope=slope)
        self.register_buffer("c", torch.zeros(self.encoder.rep_dim))
        self.register_buffer("R", torch.zeros(()))

    def embed(self, x: torch.Tensor, encoder: nn.Module | None = None) -> torch.Tensor:
        return (encoder or self.encoder)(self.norm(x))

    def dist(self, x: torch.Tensor, encoder: nn.Module | None = None) -> torch.Tensor:
        """Squared distance to c, in float32 also under autocast; ``encoder`` replaces
        ``self.encoder`` (its DDP wrapper)."""
        return ((self.embed(x, encoder).float() - self.c) ** 2).sum(dim=1)


def check_encoder_params(det) -> None:
    """Clear errors for the encoder parameters ``widths``, ``rep_dim``, ``hidden``, ``slope``."""
    w = det.widths
    if w is not None and (not isinstance(w, (list, tuple)) or not w
                          or not all(isinstance(v, int) and v > 0 for v in w)):
        raise ConfigError(f"widths must be a non-empty list of positive integers, got {w!r}")
    if det.rep_dim is not None and int(det.rep_dim) < 1:
        raise ConfigError(f"rep_dim must be a positive integer, got {det.rep_dim}")
    if int(det.hidden) < 0:
        raise ConfigError(f"hidden must be >= 0 (0: none), got {det.hidden}")
    if not 0.0 <= float(det.slope) < 1.0:
        raise ConfigError(f"slope (of the leaky ReLUs) must be in [0, 1), got {det.slope}")


def encoder_params(det) -> dict:
    """The :class:`SVDDNet` arguments from a detector's parameters."""
    return {"gcn": bool(det.gcn), "widths": det.widths, "rep_dim": det.rep_dim,
            "hidden": int(det.hidden), "slope": float(det.slope)}


class SVDDScore(nn.Module):
    """The image score as a module (for export): distance, minus R^2 for soft-boundary."""

    def __init__(self, model: SVDDNet, soft: bool):
        super().__init__()
        self.model, self.soft = model, soft

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.model.dist(x)
        return d - self.model.R ** 2 if self.soft else d


class _SVDDTask:
    ddp = True  # step calls self.modules["encoder"]: the loop may wrap it in DDP

    def __init__(self, det: DeepSVDD, model: SVDDNet):
        self.det, self.model = det, model
        self.soft = det.objective == "soft-boundary"
        opt, sched = adam(model.encoder.parameters(), det.lr, det.weight_decay, det.lr_milestones)
        self.modules = {"encoder": model.encoder}
        self.optimizers, self.schedulers = {"svdd": opt}, {"svdd": sched}
        self.epoch = 0

    def extra_state(self):
        # the epoch too: R follows the batches only after warmup_epochs, also after --resume
        return {"c": self.model.c, "R": self.model.R, "epoch": self.epoch}

    def load_extra_state(self, s):
        self.model.c.copy_(s["c"])
        self.model.R.copy_(s["R"])
        self.epoch = int(s.get("epoch", 0))  # checkpoints of earlier versions lack it

    def dist(self, x: torch.Tensor) -> torch.Tensor:
        """Training distances of uint8 images ``x`` to c: through the (DDP-wrapped) encoder,
        under the training precision's autocast; float32 in any case."""
        with autocast(self.det.device_, self.det.train_precision):
            return self.model.dist(to_input(x, self.det.device_), self.modules["encoder"])

    def loss(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances of the batch and the objective to minimise."""
        dist = self.dist(batch[0])
        if self.soft:
            return dist, soft_boundary_loss(dist, self.model.R, float(self.det.nu))
        return dist, one_class_loss(dist)

    def step(self, batch):
        dist, loss = self.loss(batch)
        opt = self.optimizers["svdd"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if self.soft and self.epoch >= self.det.warmup_epochs:
            # Ruff et al.: R solves the soft-boundary problem for fixed phi: the (1 - nu)
            # quantile of the distances of the current batch.
            with torch.no_grad():
                # over the global batch under DDP, so that every rank keeps the same R
                d = gather_across_ranks(dist.detach())
                self.model.R.fill_(torch.quantile(d.sqrt(), 1 - self.det.nu))
        return {"loss": loss.detach()}

    def end_epoch(self, epoch: int):
        self.epoch = epoch + 1
        self.schedulers["svdd"].step()
        return {"R": float(self.model.R)} if self.soft else {}


@register("deep_svdd")
class DeepSVDD(Detector):
    """Deep SVDD, one-class or soft-boundary (see module docstring)."""

    #: Larger images are resized to 64x64 unless ``size`` is set: the score is one vector
    #: per image, and 64 pixels keep training at ~800 images/s on two CPU cores.
    map_parity_tol = LENET_MAP_PARITY_TOL  # the gradient map's kinks
    default_size = 64
    defaults = {
        "objective": "one-class",  # or "soft-boundary"
        "nu": 0.1,
        "warmup_epochs": 10,
        "lr_milestones": [],
        "pretrain_epochs": 20,
        "pretrain_lr": 1e-4,
        "pretrain_weight_decay": 5e-4,
        "gcn": False,
        "heatmap_sigma": None,
        # encoder: block widths, representation size and a hidden layer before it; None / 0:
        # the paper's net for the image size (see nets.lenet)
        "widths": None,
        "rep_dim": None,
        "hidden": 0,
        "slope": 0.1,  # negative slope of the encoder's and decoder's leaky ReLUs
        # autoencoder of the pretraining: "mirror" (a linear layer, then the encoder mirrored;
        # reconstructs the normalised input) or "reference" (the Deep SAD reference code's:
        # Xavier-initialised convolutions, batch-normed code reshaped to 4x4 maps, a sigmoid
        # reconstructing the image in [0, 1]; needs gcn off)
        "autoencoder": "mirror",
        # training precision (autoencoder and objective): fp32, or bf16 autocast (CIFAR-10
        # LeNet: about 2x the images/s on CPUs with AMX); distances stay float32
        "train_precision": "fp32",
    }

    def _check_params(self) -> None:
        super()._check_params()
        check_encoder_params(self)
        if self.objective not in ("one-class", "soft-boundary"):
            raise ConfigError(
                f"objective must be 'one-class' or 'soft-boundary', got {self.objective!r}")
        if not (0.0 < float(self.nu) <= 1.0):
            raise ConfigError(f"nu must be in (0, 1], got {self.nu}")
        check_precision(self, "train_precision")
        if self.autoencoder not in ("mirror", "reference"):
            raise ConfigError(
                f"autoencoder must be 'mirror' or 'reference', got {self.autoencoder!r}")
        if self.autoencoder == "reference" and self.gcn:
            raise ConfigError("autoencoder='reference' reconstructs images in [0, 1] with a "
                              "sigmoid; it needs gcn=false (GCN maps images outside [0, 1])")

    def _build(self, input_shape):
        return SVDDNet(input_shape, **encoder_params(self))

    def _pretrain_and_centre(self, x: torch.Tensor, loop: LoopConfig) -> None:
        """Autoencoder pretraining of phi on ``x``, then c = mean embedding of ``x``."""
        model: SVDDNet = self.model_
        if self.autoencoder == "reference":
            if int(self.pretrain_epochs) > 0:
                xavier_init_encoder_(model.encoder)
            decoder = ReferenceDecoder(model.encoder, x.shape[1])
        else:
            decoder = Decoder(model.encoder, x.shape[1])
        pretrain_autoencoder(model, decoder, x, epochs=int(self.pretrain_epochs),
                             batch_size=int(self.batch_size), lr=float(self.pretrain_lr),
                             weight_decay=float(self.pretrain_weight_decay),
                             seed=int(self.seed), device=self.device_, loop=loop,
                             precision=self.train_precision)
        model.eval()
        show = show_progress(loop.progress) and is_main_process()
        model.c.copy_(mean_embedding(model.embed, x, self.device_, progress=show))

    def _fit(self, x, y, masks, loop: LoopConfig) -> None:
        x = normal_only(x, y)  # Deep SVDD is unsupervised: labeled anomalies are not used
        self._pretrain_and_centre(x, loop)
        task = _SVDDTask(self, self.model_)
        run(task, [x], epochs=int(self.epochs), batch_size=int(self.batch_size),
            seed=int(self.seed), phase="train", loop=loop)

    def _scorer(self) -> SVDDScore:
        return SVDDScore(self.model_, self.objective == "soft-boundary")

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        return self._scorer()(x)

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        return gradient_map(self._score, x, self.heatmap_sigma)

    def export_module(self) -> nn.Module:
        from ..export import gradient_module

        return gradient_module(self._scorer(), self.input_shape_, self.heatmap_sigma)

    def _fitted_extra(self):
        return {**super()._fitted_extra(), "radius": float(self.model_.R)}
