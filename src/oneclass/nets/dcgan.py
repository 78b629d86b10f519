"""DCGAN-type networks (Radford et al., ICLR 2016) for AnoGAN and BiGAN, for any image size.

The generator starts from a small map and doubles its side with stride-2 transposed
convolutions (kernel 4); the discriminator and encoder halve it with stride-2 convolutions.
:func:`plan` picks the number of stages so that the start map is at most 7 pixels on its
shorter side: 28x28 -> 7x7 and two stages (the usual MNIST DCGAN), 32x32 -> 4x4 and three,
64x64 -> 4x4 and four. Sides that are not a multiple of 2^stages are generated slightly larger
and cropped at the centre.

Channel widths double towards the small end (``width`` at full resolution, at most
``8 * width``). Batch norm follows every hidden layer of G (DCGAN); the discriminator uses it
only when asked (``norm=True``): a Wasserstein critic with gradient penalty must not mix the
samples of a batch (Gulrajani et al., 2017, Sec. 4).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .lenet import BatchNorm1d, BatchNorm2d


def plan(size: tuple[int, int], max_start: int = 7) -> tuple[int, tuple[int, int]]:
    """Number of stride-2 stages and the start map ``(h0, w0)`` for images of ``size``."""
    h, w = size
    n = 0
    while math.ceil(min(h, w) / 2**n) > max_start:
        n += 1
    n = max(n, 1)
    return n, (math.ceil(h / 2**n), math.ceil(w / 2**n))


def _widths(width: int, n: int) -> list[int]:
    """Channels from full resolution to the small end: width, 2 width, ... (at most 8 width)."""
    return [width * min(2**i, 8) for i in range(n)]


class Generator(nn.Module):
    """``z (N, z_dim)`` -> image ``(N, C, H, W)`` in [-1, 1] (tanh)."""

    def __init__(self, z_dim: int, channels: int, size: tuple[int, int], width: int = 64):
        super().__init__()
        self.z_dim, self.size = int(z_dim), (int(size[0]), int(size[1]))
        n, (h0, w0) = plan(self.size)
        chs = _widths(width, n)[::-1]  # small end first
        self.start = (chs[0], h0, w0)
        self.fc = nn.Sequential(nn.Linear(self.z_dim, chs[0] * h0 * w0, bias=False),
                                BatchNorm1d(chs[0] * h0 * w0), nn.ReLU(True))
        layers: list[nn.Module] = []
        for a, b in zip(chs[:-1], chs[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), BatchNorm2d(b),
                       nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(chs[-1], channels, 4, 2, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.body(self.fc(z).unflatten(1, self.start))
        h, w = self.size
        top, left = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
        return x[:, :, top:top + h, left:left + w]


class ConvTrunk(nn.Module):
    """Stride-2 convolutions with leaky ReLU (0.2): image -> flat features ``(N, feat_dim)``."""

    def __init__(self, channels: int, size: tuple[int, int], width: int = 64, norm: bool = True):
        super().__init__()
        n, _ = plan(size)
        layers: list[nn.Module] = []
        c, (h, w) = channels, size
        for i, b in enumerate(_widths(width, n)):
            layers.append(nn.Conv2d(c, b, 4, 2, 1, bias=not (norm and i > 0)))
            if norm and i > 0:  # DCGAN: no batch norm on the first layer
                layers.append(BatchNorm2d(b))
            layers.append(nn.LeakyReLU(0.2, True))
            c, h, w = b, h // 2, w // 2
        self.body = nn.Sequential(*layers)
        self.feat_dim = c * h * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)


class Discriminator(nn.Module):
    """DCGAN discriminator; ``features(x)`` is the last hidden layer (AnoGAN's f(.))."""

    def __init__(self, channels: int, size: tuple[int, int], width: int = 64, norm: bool = True):
        super().__init__()
        self.trunk = ConvTrunk(channels, size, width, norm)
        self.out = nn.Linear(self.trunk.feat_dim, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.trunk(x))[:, 0]


class Encoder(nn.Module):
    """BiGAN encoder: image -> ``z (N, z_dim)``, the generator's inverse."""

    def __init__(self, z_dim: int, channels: int, size: tuple[int, int], width: int = 64):
        super().__init__()
        self.trunk = ConvTrunk(channels, size, width, norm=True)
        self.out = nn.Linear(self.trunk.feat_dim, z_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.trunk(x))


class JointCritic(nn.Module):
    """BiGAN / ALI discriminator over pairs ``(x, z)`` (Donahue et al. 2016, Dumoulin et al.
    2016), a Wasserstein critic here: no batch norm. ``features(x, z)`` is its last hidden
    layer, used for the feature-matching loss and the anomaly score."""

    def __init__(self, z_dim: int, channels: int, size: tuple[int, int], width: int = 64,
                 hidden: int = 256):
        super().__init__()
        self.trunk = ConvTrunk(channels, size, width, norm=False)
        self.x_branch = nn.Sequential(nn.Linear(self.trunk.feat_dim, hidden), nn.LeakyReLU(0.2, True))
        self.z_branch = nn.Sequential(nn.Linear(z_dim, hidden), nn.LeakyReLU(0.2, True))
        self.joint = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.LeakyReLU(0.2, True))
        self.out = nn.Linear(2 * hidden, 1)

    def features(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.joint(torch.cat([self.x_branch(self.trunk(x)), self.z_branch(z)], dim=1))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x, z))[:, 0]
