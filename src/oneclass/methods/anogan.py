"""AnoGAN: Schlegl et al., "Unsupervised Anomaly Detection with Generative Adversarial
Networks to Guide Marker Discovery", IPMI 2017.

A DCGAN (generator G, discriminator D) is trained on normal images only. To score an image x,
a latent code z is searched so that G(z) matches x, minimising (Sec. 2.2 of the paper)

    L(z) = (1 - lambda) * sum |x - G(z)| + lambda * sum |f(x) - f(G(z))|

with f the last hidden layer of D (the "discrimination loss" with feature matching) and
lambda = 0.1. Score: L at the final z. Map: |x - G(z)|, averaged over channels and smoothed.

The search is the same for every image, training or test (the threshold on held-back normal
images uses it too). It runs batched: the loss of the batch is the sum of the per-image
losses, so each image's gradient depends only on its own z, and Adam updates every
coordinate on its own. Convolutions round in an order that depends on the batch size and
the number of threads, and 100 Adam steps amplify that rounding (scores 0.4 % apart, test
images reordered); so the search runs in parts of exactly ``search_part`` images (the last
padded) on a fixed number of threads, and an image gets bit for bit the same score alone or
in any batch, on a given machine and thread count. The start is the
best (lowest residual) of ``search_candidates`` fixed random codes, which gives the gradient
search a far better start than one random code.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..device import shared_threads
from ..errors import ConfigError
from ..nets.dcgan import Discriminator, Generator
from ..registry import register
from ..train import LoopConfig, rank_draw, run
from ._common import check_precision, normal_only
from ._gan import (
    GANDetector,
    TanhScale,
    WeightEMA,
    contiguous,
    l1_per_image,
    no_weight_grads,
    training_batch,
    training_layout,
)


class Search(NamedTuple):
    """Result of a latent search for a batch: codes, losses ``(N,)``, images ``G(z)``."""

    z: torch.Tensor
    loss: torch.Tensor
    residual: torch.Tensor
    rec: torch.Tensor


def anogan_loss(x: torch.Tensor, g: torch.Tensor, fx: torch.Tensor, fg: torch.Tensor,
                lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image AnoGAN loss ``(1 - lam) * R + lam * D_feat`` and the residual R, both ``(N,)``."""
    residual = l1_per_image(x, g)
    return (1.0 - lam) * residual + lam * l1_per_image(fx, fg), residual


def initial_codes(G: nn.Module, x: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """For each image of ``x`` (in [-1, 1]), the code of ``bank`` whose G(z) is closest (L1)."""
    with torch.no_grad():
        gb = G(bank).flatten(1)
        d = torch.cdist(x.flatten(1), gb, p=1.0)
    return bank[d.argmin(1)].clone()


def latent_search(G: nn.Module, D: Discriminator, x: torch.Tensor, z0: torch.Tensor, *,
                  steps: int, lr: float, lam: float, bf16: bool = False,
                  threads: int = 1, part: int | None = None) -> Search:
    """Adam on z for ``steps`` steps, all images of ``x`` (in [-1, 1]) in parallel.

    G and D must be in eval mode (batch norm with running statistics), so that images do not
    interact. Only z receives gradients; the networks' weights are left alone. ``bf16``: the
    networks run under bf16 autocast.

    ``part``: images searched as one batch. The images are cut into parts of exactly that
    size, the last one padded with copies of its last image, so every image is searched in
    a batch of the same size whatever batch it came in: convolutions round differently by
    batch size, and 100 Adam steps amplify that rounding into scores 0.4 % apart. None: the
    batch is cut into ``threads`` parts of any size (a single image then costs one image,
    not a part's worth; its result differs by that rounding).

    ``threads > 1`` searches that many parts at once, in as many threads that share the
    intra-op threads (see :func:`shared_threads`). With ``part`` the threads are started
    even for a single part, so every part runs on the same number of intra-op threads (the
    rounding of a convolution depends on that number too).
    """
    n = len(x)
    if part:
        pad = -n % int(part)
        if pad:
            fmt = (torch.channels_last if x.dim() == 4 and not x.is_contiguous()
                   and x.is_contiguous(memory_format=torch.channels_last)
                   else torch.contiguous_format)
            x = torch.cat([x, x[-1:].expand(pad, *x.shape[1:])]).contiguous(memory_format=fmt)
            z0 = torch.cat([z0, z0[-1:].expand(pad, -1)])
        xs, zs = x.split(int(part)), z0.split(int(part))
    else:
        k = max(1, min(int(threads), n))  # no empty part
        xs, zs = x.tensor_split(k), z0.tensor_split(k)
    k = max(1, int(threads) if part else min(int(threads), len(xs)))
    with no_weight_grads(G, D):  # once for all threads: each would restore the flags early
        if k == 1:
            found = [_search_part(G, D, xp, zp, steps, lr, lam, bf16) for xp, zp in zip(xs, zs)]
        else:
            with shared_threads(k) as pool:
                found = list(pool.map(lambda xz: _search_part(G, D, *xz, steps, lr, lam, bf16),
                                      zip(xs, zs)))
    return Search(*(torch.cat(field)[:n] for field in zip(*found)))


def _search_part(G, D, x, z0, steps, lr, lam, bf16) -> Search:
    # Autocast and grad mode are per thread, so each part sets both itself. No autocast
    # cache: it keeps the bf16 copy of a leaf tensor for the whole context, and z is a leaf
    # that Adam changes in place, so G would see the starting z at every step.
    amp = (torch.autocast(x.device.type, dtype=torch.bfloat16, cache_enabled=False) if bf16
           else contextlib.nullcontext())
    with amp:
        with torch.no_grad():
            fx = D.features(x).float()
        z = z0.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        with torch.enable_grad():
            for _ in range(int(steps)):
                g = G(z)
                loss, _ = anogan_loss(x, g.float(), fx, D.features(g).float(), lam)
                (z.grad,) = torch.autograd.grad(loss.sum(), z)
                opt.step()
        with torch.no_grad():
            g = G(z)
            loss, residual = anogan_loss(x, g.float(), fx, D.features(g).float(), lam)
    return Search(z.detach(), loss, residual, g.float())


def search_threads(n: int, device: torch.device, min_part: int = 32) -> int:
    """Threads for a CPU search of ``n`` images: one per intra-op thread, parts of at least
    ``min_part`` images; 1 on GPUs."""
    if device.type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), n // int(min_part)))


class AnoGANNet(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], z_dim: int, width: int,
                 gcn: bool = False):
        super().__init__()
        c, h, w = input_shape
        self.prep = TanhScale(gcn)
        self.G = Generator(z_dim, c, (h, w), width)
        self.D = Discriminator(c, (h, w), width, norm=True)


class _DCGANTask:
    """DCGAN training with the non-saturating loss: one D step, then one G step per batch."""

    def __init__(self, det: AnoGAN):
        self.det, self.model = det, det.model_
        betas = (float(det.beta1), 0.999)
        m = self.model
        self.modules = {"G": m.G, "D": m.D}
        self.optimizers = {
            "G": torch.optim.Adam(m.G.parameters(), lr=det.lr, betas=betas,
                                  weight_decay=det.weight_decay),
            "D": torch.optim.Adam(m.D.parameters(), lr=det.lr, betas=betas,
                                  weight_decay=det.weight_decay),
        }
        self.schedulers: dict[str, object] = {}
        self.fmt = training_layout(m, det.device_)
        self.ema = WeightEMA(m.G, float(det.g_ema)) if float(det.g_ema) > 0 else None

    def extra_state(self) -> dict:
        return {"g_ema": self.ema.state_dict()} if self.ema is not None else {}

    def load_extra_state(self, state: dict) -> None:
        if self.ema is not None:
            self.ema.load_state_dict(state["g_ema"])

    def finish(self) -> None:
        """Put the averaged generator weights into G (when ``g_ema`` is on)."""
        if self.ema is not None:
            self.ema.copy_to(self.model.G)

    def step(self, batch):
        det, G, D = self.det, self.model.G, self.model.D
        x = training_batch(self.model.prep, batch[0], det.device_, self.fmt)
        n = len(x)
        z = rank_draw(torch.randn, n, int(det.z_dim), device=x.device)
        fake = G(z)
        real_label = torch.full((n,), 1.0 - float(det.label_smoothing), device=x.device)
        zeros, ones = torch.zeros(n, device=x.device), torch.ones(n, device=x.device)
        bce = F.binary_cross_entropy_with_logits
        loss_d = bce(D(x), real_label) + bce(D(fake.detach()), zeros)
        self.optimizers["D"].zero_grad(set_to_none=True)
        loss_d.backward()
        self.optimizers["D"].step()
        with no_weight_grads(D):  # only G is updated here
            loss_g = bce(D(fake), ones)
            self.optimizers["G"].zero_grad(set_to_none=True)
            loss_g.backward()
        self.optimizers["G"].step()
        if self.ema is not None:
            self.ema.update(G)
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}

    def end_epoch(self, epoch: int):
        return {}


@register("anogan")
class AnoGAN(GANDetector):
    """AnoGAN: DCGAN plus a batched latent search per image (see module docstring)."""

    defaults = {
        "beta1": 0.5,
        "label_smoothing": 0.0,  # real label 1 - this for D (one-sided smoothing)
        # decay of the moving average of G's weights that becomes the final generator; 0: off
        # (the last iterate, as in the paper)
        "g_ema": 0.0,
        "lam": 0.1,  # lambda: weight of the discrimination loss in the search
        "search_steps": 100,
        "search_lr": 0.05,
        "search_candidates": 64,  # fixed random codes; the search starts at the best one
        # search precision: fp32, or bf16 autocast (about 1.9x faster batched on CPUs with
        # AVX512-BF16 or AMX; emulated, hence slow, on others; scores move by under 1 %)
        "precision": "fp32",
        # images searched together (the search of a batch runs as one): larger batches spread
        # the per-step overhead over more images
        "score_batch_size": 256,
        # images searched as one batch: every image is searched in a part of exactly this
        # many (the last part padded), so its score does not depend on the batch it came in
        # (different batch sizes round differently, which the search amplifies to ~0.4 %);
        # None: 32 on CPUs, score_batch_size on GPUs (one part a batch); 0: parts of any
        # size, cheaper for a single image, scores batch-dependent
        "search_part": None,
        # parts searched side by side, sharing the CPU threads; 0: auto, on CPUs as many as
        # a full batch has parts, at most one per intra-op thread (with search_part 0: parts
        # of >= 32 images), 1 on GPUs. Scores repeat for the same settings and thread count;
        # other settings round differently
        "search_threads": 0,
    }

    scoring_params = ("score_batch_size", "lam", "search_steps", "search_lr",
                      "search_candidates", "precision", "search_threads", "search_part")

    def _check_params(self) -> None:
        super()._check_params()
        if not 0.0 <= float(self.lam) <= 1.0:
            raise ConfigError(f"lam must be in [0, 1], got {self.lam}")
        if int(self.search_steps) < 0:
            raise ConfigError(f"search_steps must be >= 0, got {self.search_steps}")
        if int(self.search_candidates) < 1:
            raise ConfigError(f"search_candidates must be >= 1, got {self.search_candidates}")
        if self.search_part is not None and int(self.search_part) < 0:
            raise ConfigError(f"search_part must be >= 0 (0: parts of any size) or unset, got "
                              f"{self.search_part}")
        if int(self.search_threads) < 0:
            raise ConfigError(f"search_threads must be >= 0 (0: auto), got {self.search_threads}")
        check_precision(self, "precision")
        if not 0.0 <= float(self.g_ema) < 1.0:
            raise ConfigError(f"g_ema must be in [0, 1), got {self.g_ema}")
        if not 0.0 <= float(self.label_smoothing) < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")

    def _build(self, input_shape):
        self._cache: OrderedDict[str, Search] = OrderedDict()
        return AnoGANNet(input_shape, int(self.z_dim), self._width(input_shape), bool(self.gcn))

    def _fit(self, x, y, masks, loop: LoopConfig) -> None:
        x = normal_only(x, y)  # unsupervised: labeled anomalies are not used
        self.model_.prep.fit(x)
        task = _DCGANTask(self)
        self.train_epochs_ = self._train_epochs(len(x))
        run(task, [x], epochs=self.train_epochs_, batch_size=int(self.batch_size),
            seed=int(self.seed), phase="train", loop=loop, drop_last=True)
        task.finish()
        contiguous(self.model_)
        self._cache.clear()

    def _scoring_changed(self) -> None:
        if hasattr(self, "_cache"):
            self._cache.clear()

    def code_bank(self) -> torch.Tensor:
        """The fixed candidate codes the search starts from (seeded, so scores repeat)."""
        g = torch.Generator().manual_seed(int(self.seed) + 54321)
        return torch.randn(int(self.search_candidates), int(self.z_dim), generator=g)

    def search(self, x: torch.Tensor, steps: int | None = None,
               channels_last: bool = True, fixed_parts: bool = True) -> Search:
        """The latent search for images ``x`` in [0, 1] on the model's device (uncached).

        ``channels_last``: channels-last convolutions (oneDNN on CPUs), about 2x faster
        batched at 28x28 on the development machine; saving writes contiguous copies, so the
        model files do not depend on it. ``fixed_parts=False`` ignores ``search_part`` (the
        one-image-at-a-time baseline of the speed benchmark searches one image, not a part).
        """
        m = self.model_
        m.eval()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        m.to(memory_format=fmt)
        xt = m.prep(x).contiguous(memory_format=fmt)
        z0 = initial_codes(m.G, xt, self.code_bank().to(x.device))
        part = self.search_part_size(x.device) if fixed_parts else 0
        if int(self.search_threads) > 0:
            threads = int(self.search_threads)
        elif part:  # from the settings, not from len(x): every part rounds alike
            full = -(-int(self.score_batch_size) // part)  # parts of a full batch
            threads = min(torch.get_num_threads(), full) if x.device.type == "cpu" else 1
        else:
            threads = search_threads(len(x), x.device)
        return latent_search(m.G, m.D, xt, z0,
                             steps=int(self.search_steps if steps is None else steps),
                             lr=float(self.search_lr), lam=float(self.lam),
                             bf16=self.precision == "bf16", threads=threads, part=part or None)

    def search_part_size(self, device: torch.device) -> int:
        """Images per search part (``search_part``; None: 32 on CPUs, a whole scoring batch
        on GPUs, whose parts would otherwise run one after another)."""
        if self.search_part is not None:
            return int(self.search_part)
        return 32 if device.type == "cpu" else int(self.score_batch_size)

    def _cached_search(self, x: torch.Tensor) -> Search:
        """:meth:`search`, remembered for the last batches: score and map share one search."""
        key = hashlib.sha1(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self.search(x)
            while len(self._cache) > 16:
                self._cache.popitem(last=False)
        return hit

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        return self._cached_search(x).loss

    def _reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self._cached_search(x).rec
