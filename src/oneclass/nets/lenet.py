"""LeNet-type encoders and decoders of Deep SVDD (Ruff et al., ICML 2018, Sec. 4).

Bias-free: every convolution and linear layer has no bias term and batch norm has no affine
parameters. With a bias, the network could map every input to the centre c with zero weights
and a constant output (hypersphere collapse, Prop. 2 of the paper).

One generic encoder covers the paper's networks:

- 28x28 (MNIST):     widths (8, 4),       rep_dim 32  -> the paper's MNIST LeNet;
- 32x32 (CIFAR-10):  widths (32, 64, 128), rep_dim 128 -> the paper's CIFAR-10 LeNet;
- larger images:     widths (32, 64, 128, 128, ...) until the map is at most 8 pixels high,
  rep_dim 128 (a deeper net of the same kind).

Each block is conv 5x5 (padding 2) -> BN (eps 1e-4, no affine) -> leaky ReLU (0.1) -> max pool 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def encoder_widths(h: int, w: int) -> tuple[tuple[int, ...], int]:
    """The block widths and representation size for an input of ``h x w`` pixels."""
    if (h, w) == (28, 28):
        return (8, 4), 32
    if (h, w) == (32, 32):
        return (32, 64, 128), 128
    widths = [32, 64, 128]
    side = min(h, w) // 8
    while side > 8 and len(widths) < 7:
        widths.append(128)
        side //= 2
    return tuple(widths), 128


class Encoder(nn.Module):
    """Bias-free LeNet-type encoder: image ``(N, C, H, W)`` -> ``(N, rep_dim)``."""

    def __init__(self, in_channels: int, size: tuple[int, int], widths=None, rep_dim=None):
        super().__init__()
        dw, dr = encoder_widths(*size)
        self.widths = tuple(widths or dw)
        self.rep_dim = int(rep_dim or dr)
        blocks, c = [], in_channels
        h, w = size
        self.sizes = [(h, w)]
        for width in self.widths:
            blocks += [nn.Conv2d(c, width, 5, padding=2, bias=False),
                       nn.BatchNorm2d(width, eps=1e-4, affine=False),
                       nn.LeakyReLU(0.1),
                       nn.MaxPool2d(2)]
            c, h, w = width, h // 2, w // 2
            self.sizes.append((h, w))
        if h < 1 or w < 1:
            raise ValueError(f"input {size} is too small for {len(self.widths)} pooling blocks")
        self.features = nn.Sequential(*blocks)
        self.fc = nn.Linear(c * h * w, self.rep_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


class Decoder(nn.Module):
    """Mirror of :class:`Encoder` for autoencoder pretraining (also bias-free)."""

    def __init__(self, encoder: Encoder, out_channels: int):
        super().__init__()
        sizes = encoder.sizes
        self.start = sizes[-1]
        self.c0 = encoder.widths[-1]
        self.fc = nn.Linear(encoder.rep_dim, self.c0 * self.start[0] * self.start[1], bias=False)
        ups = []
        widths = list(encoder.widths[::-1]) + [encoder.widths[0]]
        for i in range(len(encoder.widths)):
            ups.append(nn.ModuleDict({
                "conv": nn.Conv2d(widths[i], widths[i + 1], 5, padding=2, bias=False),
                "bn": nn.BatchNorm2d(widths[i + 1], eps=1e-4, affine=False),
            }))
        self.ups = nn.ModuleList(ups)
        self.out_sizes = sizes[-2::-1]
        self.out = nn.Conv2d(widths[-1], out_channels, 5, padding=2, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], self.c0, *self.start)
        for up, size in zip(self.ups, self.out_sizes):
            x = F.interpolate(x, size=size, mode="nearest")
            x = F.leaky_relu(up["bn"](up["conv"](x)), 0.1)
        return self.out(x)
