"""What the GAN methods (AnoGAN, BiGAN) share: sizes, scaling, residual maps, report figures."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import torch
from torch import nn

from ..detector import Detector, gcn_l1
from ..errors import ConfigError
from ..heatmaps import default_sigma, gaussian_blur
from ..train import epochs_for_steps
from ..viz import grid
from ._common import to_input

log = logging.getLogger(__name__)


def to_tanh_range(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> [-1, 1], the range of the generator's tanh output."""
    return x * 2.0 - 1.0


def l1_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum |a - b|`` over everything but the batch dimension: ``(N,)``."""
    return (a - b).abs().flatten(1).sum(1)


def residual_map(x: torch.Tensor, rec: torch.Tensor, sigma: float | None) -> torch.Tensor:
    """``|x - rec|`` averaged over channels and Gaussian-smoothed: ``(N, H, W)``.

    Both in [-1, 1]; the map is halved so it is in the [0, 1] units of the input image.
    """
    m = (x - rec).abs().mean(1) / 2.0
    s = default_sigma(*m.shape[1:]) if sigma is None else float(sigma)
    return gaussian_blur(m, s)


def training_layout(model: nn.Module, device: torch.device) -> torch.memory_format:
    """Put ``model`` in channels-last layout on a CPU (oneDNN convolutions; BiGAN training at
    28x28 on one thread went from 127 to 159 images/s) and return the layout for its inputs.
    After training, :func:`contiguous` puts it back, so that the trained model scores exactly
    as the saved and loaded one does."""
    fmt = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    model.to(memory_format=fmt)
    return fmt


def contiguous(model: nn.Module) -> None:
    model.to(memory_format=torch.contiguous_format)


class TanhScale(nn.Module):
    """Images in [0, 1] -> the generator's [-1, 1] range; part of the model.

    Plain: ``2x - 1``. With ``gcn`` (the preprocessing of Ruff et al. 2018 for every method
    of their benchmark, AnoGAN included): global contrast normalisation of each image (l1),
    then min-max scaling with the minimum and maximum over the training images, so that
    training images span [-1, 1] and a test image may fall outside. The residual then
    compares structure at equal contrast instead of measuring how much contrast an image has.
    """

    def __init__(self, gcn: bool = False):
        super().__init__()
        self.gcn = bool(gcn)
        if self.gcn:
            self.register_buffer("lo", torch.tensor(-1.0))
            self.register_buffer("hi", torch.tensor(1.0))

    @torch.no_grad()
    def fit(self, x: torch.Tensor, batch: int = 1024) -> None:
        """Fit the min-max range on uint8 images ``(N, C, H, W)`` (no-op without gcn)."""
        if not self.gcn:
            return
        lo, hi = float("inf"), float("-inf")
        for xb in torch.split(x, batch):
            g = gcn_l1(to_input(xb, self.lo.device))
            lo, hi = min(lo, float(g.min())), max(hi, float(g.max()))
        self.lo.fill_(lo)
        self.hi.fill_(max(hi, lo + 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.gcn:
            return to_tanh_range(x)
        return (gcn_l1(x) - self.lo) / (self.hi - self.lo) * 2.0 - 1.0


def training_batch(prep: nn.Module, x: torch.Tensor, device: torch.device,
                   fmt: torch.memory_format) -> torch.Tensor:
    """A uint8 training batch -> ``prep`` floats on ``device`` in the layout ``fmt``."""
    return prep(to_input(x, device)).contiguous(memory_format=fmt)


@contextlib.contextmanager
def no_weight_grads(*modules: nn.Module):
    """The modules' weights get no gradients inside (backward skips them); restored after."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


class WeightEMA:
    """Exponential moving average of a module's weights and float buffers.

    The generator of a GAN oscillates around a good solution as D and G chase each other;
    the average of its recent weights draws sharper and more stable images than the last
    iterate (Karras et al. 2018, Yazici et al. 2019). ``decay`` applies from the start with a
    warm-up, ``min(decay, (1 + t) / (10 + t))`` at update t, so that a short training run is
    not averaged with the random initialisation. :meth:`copy_to` writes the average into the
    module at the end of training, so the saved model is the averaged one.
    """

    def __init__(self, module: nn.Module, decay: float):
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()
                       if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for k, v in module.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach(), 1.0 - d)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        state = module.state_dict()
        for k, v in self.shadow.items():
            state[k].copy_(v)

    def state_dict(self) -> dict:
        return {"updates": torch.tensor(self.updates), **{f"w.{k}": v for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for k in self.shadow:
            self.shadow[k].copy_(state[f"w.{k}"])


def _uint8(x: torch.Tensor) -> list[np.ndarray]:
    """[-1, 1] images ``(N, C, H, W)`` -> list of uint8 ``(H, W, C)``."""
    a = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return list(a.permute(0, 2, 3, 1).numpy())


class GANDetector(Detector):
    """Base of the GAN methods: a generator ``model_.G`` and a reconstruction per image.

    Subclasses implement ``_reconstruct(x)`` (x in [0, 1] -> G's image in [-1, 1]) and the
    usual hooks; ``model_.prep`` (a :class:`TanhScale`) maps input images to G's range.
    This class gives the anomaly map and the report figures.
    """

    #: Larger images are resized to about 64x64 pixels (AnoGAN works on 64x64 patches), with
    #: their aspect ratio kept.
    default_size = 64
    keep_aspect = True
    fitted_json = ("train_epochs_",)  # the epochs trained (the default epochs is None)
    defaults = {
        # None: as many epochs as make `train_steps` updates (batches), at least one; a
        # number: exactly that many epochs. A GAN learns per update, not per image seen: 25
        # epochs of 180 images are 50 updates, far too few, and 25 of 60,000 are 23,000.
        "epochs": None,
        "train_steps": 2000,
        "batch_size": 64,
        "lr": 2e-4,
        "weight_decay": 0.0,
        "z_dim": 100,
        # channels at full resolution; None: 32 up to 32 px, else 16 (the latent search runs
        # G and D once per step and image, so their cost decides the scoring speed on a CPU)
        "width": None,
        "heatmap_sigma": None,  # Gaussian std of the residual map; None: side / 32
        # per-image contrast normalisation, then min-max scaling fitted on the training
        # images (the benchmark preprocessing of Ruff et al. 2018); see TanhScale
        "gcn": False,
    }

    def _check_params(self) -> None:
        super()._check_params()
        if int(self.train_steps) < 1:
            raise ConfigError(f"train_steps must be positive, got {self.train_steps}")
        if int(self.z_dim) < 1:
            raise ConfigError(f"z_dim must be positive, got {self.z_dim}")
        if self.width is not None and int(self.width) < 4:
            raise ConfigError(f"width must be at least 4, got {self.width}")

    def _train_epochs(self, n: int) -> int:
        """Epochs to train on ``n`` images: ``epochs`` if set, else enough for ``train_steps``
        batches (the GANs' training loop drops a last short batch)."""
        if self.epochs is not None:
            return int(self.epochs)
        epochs = epochs_for_steps(int(self.train_steps), n, int(self.batch_size), drop_last=True)
        log.info("%s: %d epochs for train_steps %d over %d images", self.name, epochs,
                 int(self.train_steps), n)
        return epochs

    def _width(self, input_shape: tuple[int, int, int]) -> int:
        if self.width is not None:
            return int(self.width)
        return 32 if max(input_shape[1:]) <= 32 else 16

    def _reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        rec = self._reconstruct(x)
        return residual_map(self.model_.prep(x), rec.detach(), self.heatmap_sigma)

    @torch.no_grad()
    def samples(self, n: int = 64) -> torch.Tensor:
        """``n`` generated images in [-1, 1] from a fixed set of latent codes."""
        self._check_fitted()
        self.model_.eval()
        g = torch.Generator().manual_seed(int(self.seed) + 12345)
        z = torch.randn(n, int(self.z_dim), generator=g).to(self.device_)
        return self.model_.G(z)

    def report_figures(self, x) -> dict[str, np.ndarray]:
        """A grid of generated samples and one of images next to their reconstructions."""
        self._check_fitted()
        self.model_.eval()
        figs = {"generated samples (fixed latent codes)": grid(_uint8(self.samples(64)), 8)}
        pairs: list[np.ndarray] = []
        for xb in self.batches(x):
            rec = self._reconstruct(xb).detach()
            for a, b in zip(_uint8(self.model_.prep(xb)), _uint8(rec)):
                pairs += [a, b]
        if pairs:
            figs["images (left) and their reconstructions G(z) (right)"] = grid(pairs[:32], 8)
        return figs
