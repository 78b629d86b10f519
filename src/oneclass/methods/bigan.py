"""BiGAN / ALI for anomaly detection: Donahue et al., "Adversarial Feature Learning" (2016);
Dumoulin et al., "Adversarially Learned Inference" (2016); scored as in Zenati et al.,
"Efficient GAN-Based Anomaly Detection" (2018).

An encoder E (x -> z), a generator G (z -> x) and a critic D over pairs (x, z) are trained
on normal images. D learns to tell real pairs (x, E(x)) from generated pairs (G(z), z); here
with the Wasserstein loss and gradient penalty (Gulrajani et al., 2017):

    L_D  = mean D(G(z), z) - mean D(x, E(x)) + gp * mean (||grad D(pair_hat)|| - 1)^2
    L_GE = mean D(x, E(x)) - mean D(G(z), z) + fm * mean (f(x, E(x)) - f(G(E(x)), E(x)))^2

with f the last hidden layer of D: the extra l2 loss between the features of a real pair and
the pair of its reconstruction G(E(x)) pulls E and G towards inverting each other.

Score: ``alpha * mean |x - G(E(x))| + (1 - alpha) * mean |f(x, E(x)) - f(G(E(x)), E(x))|``
(means over pixels and features, so that the two terms have comparable scales whatever the
image size and critic width).
Map: |x - G(E(x))|, averaged over channels and smoothed. One forward pass per image.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..nets.dcgan import Encoder, Generator, JointCritic
from ..registry import register
from ..train import LoopConfig, rank_draw, run
from ._common import normal_only
from ._gan import (
    GANDetector,
    TanhScale,
    contiguous,
    l1_per_image,
    no_weight_grads,
    residual_map,
    training_batch,
    training_layout,
)


class BiGANNet(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], z_dim: int, width: int,
                 gcn: bool = False):
        super().__init__()
        c, h, w = input_shape
        self.prep = TanhScale(gcn)
        self.E = Encoder(z_dim, c, (h, w), width)
        self.G = Generator(z_dim, c, (h, w), width)
        self.D = JointCritic(z_dim, c, (h, w), width)

    def score_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For x in [-1, 1]: residual ``(N,)``, feature distance ``(N,)`` and G(E(x))."""
        z = self.E(x)
        rec = self.G(z)
        fx, fr = self.D.features(x, z), self.D.features(rec, z)
        per_image = x.shape[1:].numel()  # not x[0]: an empty batch has none (and no branch
        # on len(x), which would fix the batch size of an exported graph)
        return l1_per_image(x, rec) / per_image, l1_per_image(fx, fr) / fx.shape[1], rec


def gradient_penalty(D: JointCritic, real: tuple[torch.Tensor, torch.Tensor],
                     fake: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``mean (||grad_(x,z) D||_2 - 1)^2`` at random points between real and fake pairs."""
    n = len(real[0])
    a = rank_draw(torch.rand, n, 1, device=real[0].device)
    x = (a.view(n, 1, 1, 1) * real[0] + (1 - a.view(n, 1, 1, 1)) * fake[0]).requires_grad_(True)
    z = (a * real[1] + (1 - a) * fake[1]).requires_grad_(True)
    gx, gz = torch.autograd.grad(D(x, z).sum(), (x, z), create_graph=True)
    norm = torch.sqrt(gx.flatten(1).pow(2).sum(1) + gz.pow(2).sum(1) + 1e-12)
    return ((norm - 1) ** 2).mean()


class BiGANExport(nn.Module):
    """``x in [0, 1] -> (score, residual map)`` in one pass, as ``_score`` and ``_map`` (export)."""

    def __init__(self, model: BiGANNet, alpha: float, sigma: float | None):
        super().__init__()
        self.model, self.alpha, self.sigma = model, alpha, sigma

    def forward(self, x: torch.Tensor):
        xt = self.model.prep(x)
        res, feat, rec = self.model.score_parts(xt)
        return self.alpha * res + (1.0 - self.alpha) * feat, residual_map(xt, rec, self.sigma)


class _BiGANTask:
    def __init__(self, det: BiGAN):
        self.det, self.model = det, det.model_
        m = self.model
        betas = (0.5, 0.9)  # WGAN-GP (Gulrajani et al., Alg. 1 uses 0, 0.9; 0.5 is calmer)
        self.modules = {"E": m.E, "G": m.G, "D": m.D}
        ge = list(m.E.parameters()) + list(m.G.parameters())
        self.optimizers = {
            "GE": torch.optim.Adam(ge, lr=det.lr, betas=betas, weight_decay=det.weight_decay),
            "D": torch.optim.Adam(m.D.parameters(), lr=det.lr, betas=betas,
                                  weight_decay=det.weight_decay),
        }
        self.schedulers: dict[str, object] = {}
        self.fmt = training_layout(m, det.device_)

    def step(self, batch):
        det, m = self.det, self.model
        x = training_batch(m.prep, batch[0], det.device_, self.fmt)
        n = len(x)
        # The critic has no batch norm, so real and generated pairs go through it as one
        # batch (fewer, larger convolutions: faster on a CPU; per-pair results do not mix).
        for _ in range(int(det.critic_iters)):
            z = rank_draw(torch.randn, n, int(det.z_dim), device=x.device)
            with torch.no_grad():
                ez, gz = m.E(x), m.G(z)
            gp = gradient_penalty(m.D, (x, ez), (gz, z))
            d_real, d_fake = m.D(torch.cat([x, gz]), torch.cat([ez, z])).split(n)
            wdist = d_real.mean() - d_fake.mean()
            loss_d = -wdist + float(det.gp_weight) * gp
            self.optimizers["D"].zero_grad(set_to_none=True)
            loss_d.backward()
            self.optimizers["D"].step()
        z = rank_draw(torch.randn, n, int(det.z_dim), device=x.device)
        ez = m.E(x)
        # G has batch norm (training statistics): codes from E and from the prior go through
        # it as separate batches, so each is normalised with its own statistics.
        rec, gz = m.G(ez), m.G(z)
        with no_weight_grads(m.D):  # only E and G are updated here
            f_real, f_rec, f_fake = m.D.features(torch.cat([x, rec, gz]),
                                                 torch.cat([ez, ez, z])).split(n)
            adv = m.D.out(f_real).mean() - m.D.out(f_fake).mean()
            fm = (f_real - f_rec).pow(2).mean()
            loss_ge = adv + float(det.feature_weight) * fm
            self.optimizers["GE"].zero_grad(set_to_none=True)
            loss_ge.backward()
        self.optimizers["GE"].step()
        return {"loss_d": loss_d.detach(), "wasserstein": wdist.detach(), "gp": gp.detach(),
                "loss_ge": loss_ge.detach(), "feature_l2": fm.detach()}

    def end_epoch(self, epoch: int):
        return {}


@register("bigan")
class BiGAN(GANDetector):
    """BiGAN / ALI with a Wasserstein critic (see module docstring)."""

    defaults = {
        "lr": 1e-4,
        "critic_iters": 2,  # critic updates per generator/encoder update
        # with epochs None: 1000 generator/encoder updates, so 2000 critic updates, as many
        # as AnoGAN's 2000 discriminator updates
        "train_steps": 1000,
        "gp_weight": 10.0,
        "feature_weight": 1.0,  # weight of the l2 feature loss for G and E
        "alpha": 0.9,  # score: alpha * residual + (1 - alpha) * feature distance
    }

    def _check_params(self) -> None:
        super()._check_params()
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}")
        if int(self.critic_iters) < 1:
            raise ConfigError(f"critic_iters must be >= 1, got {self.critic_iters}")
        for k in ("gp_weight", "feature_weight"):
            if float(getattr(self, k)) < 0:
                raise ConfigError(f"{k} must be >= 0, got {getattr(self, k)}")

    def _build(self, input_shape):
        return BiGANNet(input_shape, int(self.z_dim), self._width(input_shape), bool(self.gcn))

    def _fit(self, x, y, masks, loop: LoopConfig) -> None:
        x = normal_only(x, y)  # unsupervised: labeled anomalies are not used
        self.model_.prep.fit(x)
        self.train_epochs_ = self._train_epochs(len(x))
        run(_BiGANTask(self), [x], epochs=self.train_epochs_, batch_size=int(self.batch_size),
            seed=int(self.seed), phase="train", loop=loop, drop_last=True)
        contiguous(self.model_)

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        res, feat, _ = self.model_.score_parts(self.model_.prep(x))
        a = float(self.alpha)
        return a * res + (1.0 - a) * feat

    def export_module(self) -> nn.Module:
        return BiGANExport(self.model_, float(self.alpha), self.heatmap_sigma)

    def _reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model_.G(self.model_.E(self.model_.prep(x)))
