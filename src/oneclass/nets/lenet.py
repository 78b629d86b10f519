"""LeNet-type encoders and decoders of Deep SVDD (Ruff et al., ICML 2018, Sec. 4).

Bias-free: every convolution and linear layer has no bias term and batch norm has no affine
parameters. With a bias, the network could map every input to the centre c with zero weights
and a constant output (hypersphere collapse, Prop. 2 of the paper).

One generic encoder covers the paper's networks:

- 28x28 (MNIST):     widths (8, 4),       rep_dim 32  -> the paper's MNIST LeNet;
- 32x32 (CIFAR-10):  widths (32, 64, 128), rep_dim 128 -> the paper's CIFAR-10 LeNet;
- other sizes:       a deeper, thinner net of the same kind with 3x3 kernels and widths
  (16, 32, 64, 128, 128, ...) until the map is at most 8 pixels high, rep_dim 128. 3x3
  kernels keep a 128x128 net at about 70 M multiply-adds per image, so it trains on a CPU.

Each block is conv k x k -> BN (eps 1e-4, no affine) -> leaky ReLU (0.1) -> max pool 2, with
k = 5 for the paper's nets. ``widths``, ``rep_dim``, ``hidden`` (a bias-free hidden
layer with batch norm before the representation) and ``slope`` (of the leaky ReLUs; the Deep
SAD reference code uses 0.01) replace the defaults; widths (16, 32),
hidden 128 and rep_dim 64 give the Fashion-MNIST net of the Deep SAD code (as read in a
fork of it; it did worse than the default here, see docs/benchmark-notes.md).

Two decoders pretrain the encoder as an autoencoder: :class:`Decoder` (the default) mirrors
the encoder from a linear layer and reconstructs the standardised input;
:class:`ReferenceDecoder` follows the Deep SAD reference code instead (batch-normed code
reshaped to small maps, no linear layer, a sigmoid that reconstructs the image in [0, 1]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def encoder_widths(h: int, w: int) -> tuple[tuple[int, ...], int, int]:
    """Block widths, representation size and kernel size for ``h x w`` inputs."""
    if (h, w) == (28, 28):
        return (8, 4), 32, 5
    if (h, w) == (32, 32):
        return (32, 64, 128), 128, 5
    widths = [16]
    side = min(h, w) // 2
    while side > 8 and len(widths) < 7:
        widths.append(min(128, widths[-1] * 2))
        side //= 2
    return tuple(widths), 128, 3


class Encoder(nn.Module):
    """Bias-free LeNet-type encoder: image ``(N, C, H, W)`` -> ``(N, rep_dim)``."""

    def __init__(self, in_channels: int, size: tuple[int, int], widths=None, rep_dim=None,
                 hidden: int = 0, slope: float = 0.1):
        super().__init__()
        dw, dr, k = encoder_widths(*size)
        self.slope = float(slope)
        self.widths = tuple(widths or dw)
        self.rep_dim = int(rep_dim or dr)
        self.kernel = k
        self.hidden = int(hidden)
        blocks, c = [], in_channels
        h, w = size
        self.sizes = [(h, w)]
        for width in self.widths:
            blocks += [nn.Conv2d(c, width, k, padding=k // 2, bias=False),
                       BatchNorm2d(width, eps=1e-4, affine=False),
                       nn.LeakyReLU(self.slope),
                       nn.MaxPool2d(2)]
            c, h, w = width, h // 2, w // 2
            self.sizes.append((h, w))
        if h < 1 or w < 1:
            from ..errors import ConfigError  # a setting of the method, not a broken net

            raise ConfigError(f"input {size} is too small for {len(self.widths)} pooling blocks "
                              f"(widths={list(self.widths)}); enlarge the images with --set "
                              f"size=HxW (e.g. size={max(size[0], 2 ** len(self.widths))}x"
                              f"{max(size[1], 2 ** len(self.widths))}) or give fewer widths")
        self.features = nn.Sequential(*blocks)
        flat = c * h * w
        self.hidden_layer = _hidden(flat, self.hidden, self.slope)  # before the representation
        self.fc = nn.Linear(self.hidden or flat, self.rep_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden_layer(self.features(x).flatten(1)))


class _OneValueBatchNorm:
    """Batch norm that normalises a training batch with one value per channel (one image, or
    one image whose map is 1x1) with its running statistics: PyTorch refuses to, as one value
    has no variance. A last batch of one, or a DDP slice of one, then trains instead of
    stopping; the state dict is that of the torch class it is mixed into."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() == x.shape[1]:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        return super().forward(x)


class BatchNorm1d(_OneValueBatchNorm, nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` that trains on a batch of one (see _OneValueBatchNorm)."""


class BatchNorm2d(_OneValueBatchNorm, nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` that trains on one image with a 1x1 map (see
    _OneValueBatchNorm)."""


def _hidden(n_in: int, n_out: int, slope: float) -> nn.Module:
    """Bias-free linear layer, batch norm without affine parameters, leaky ReLU; for
    ``n_out == 0`` none (identity, no weights: the default nets' state is unchanged)."""
    if not n_out:
        return nn.Identity()
    return nn.Sequential(nn.Linear(n_in, n_out, bias=False),
                         BatchNorm1d(n_out, eps=1e-4, affine=False), nn.LeakyReLU(slope))


def _conv_bn_blocks(widths: list[int], k: int) -> nn.ModuleList:
    """The decoders' stages: a bias-free k x k convolution from each width to the next, and
    batch norm without affine parameters (``{"conv", "bn"}`` per stage)."""
    return nn.ModuleList(nn.ModuleDict({
        "conv": nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),
        "bn": BatchNorm2d(c_out, eps=1e-4, affine=False),
    }) for c_in, c_out in zip(widths[:-1], widths[1:]))


class Decoder(nn.Module):
    """Mirror of :class:`Encoder` for autoencoder pretraining (also bias-free)."""

    def __init__(self, encoder: Encoder, out_channels: int):
        super().__init__()
        sizes = encoder.sizes
        self.start = sizes[-1]
        self.c0 = encoder.widths[-1]
        self.slope = encoder.slope
        self.hidden_layer = _hidden(encoder.rep_dim, encoder.hidden, self.slope)
        self.fc = nn.Linear(encoder.hidden or encoder.rep_dim,
                            self.c0 * self.start[0] * self.start[1], bias=False)
        k = encoder.kernel
        widths = list(encoder.widths[::-1])
        self.ups = _conv_bn_blocks(widths, k)
        self.out_sizes = sizes[-2::-1]
        # The last stage maps straight to the image: no full-resolution hidden layer, which
        # would cost more than the whole encoder.
        self.out = nn.Conv2d(widths[-1], out_channels, k, padding=k // 2, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(self.hidden_layer(z)).view(z.shape[0], self.c0, *self.start)
        for up, size in zip(self.ups, self.out_sizes):
            x = F.interpolate(x, size=size, mode="nearest")
            x = F.leaky_relu(up["bn"](up["conv"](x)), self.slope)
        x = F.interpolate(x, size=self.out_sizes[-1], mode="nearest")
        return self.out(x)


class ReferenceDecoder(nn.Module):
    """The autoencoder's decoder of the Deep SAD reference code, for any encoder.

    The code goes through batch norm (no affine parameters) and is reshaped to
    ``rep_dim / 16`` maps of 4x4 (``rep_dim`` maps of 1x1 when 16 does not divide it), then a
    leaky ReLU; each of the encoder's widths, in reverse, gives a bias-free 5x5 (the encoder's
    kernel) convolution, batch norm, leaky ReLU and nearest upsampling to the next encoder
    size; a last convolution maps to the image, and a sigmoid to [0, 1].
    ``raw_target``: the autoencoder reconstructs the image in [0, 1], not its normalised form.
    For 32x32 inputs this is the reference's CIFAR-10 decoder (its transposed convolutions of
    stride 1 with padding 2 are convolutions of the same shape).
    """

    raw_target = True

    def __init__(self, encoder: Encoder, out_channels: int):
        super().__init__()
        self.slope = encoder.slope
        r = encoder.rep_dim
        self.seed = (r // 16, 4, 4) if r % 16 == 0 else (r, 1, 1)
        self.bn = BatchNorm1d(r, eps=1e-4, affine=False)
        k = encoder.kernel
        widths = [self.seed[0], *encoder.widths[::-1]]
        self.blocks = _conv_bn_blocks(widths, k)
        self.out_sizes = encoder.sizes[-2::-1]  # the encoder's sizes in reverse, to the input
        self.out = nn.Conv2d(widths[-1], out_channels, k, padding=k // 2, bias=False)
        for m in [*(b["conv"] for b in self.blocks), self.out]:
            xavier_init_(m, self.slope)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.bn(z).view(z.shape[0], *self.seed), self.slope)
        for block, size in zip(self.blocks, self.out_sizes):
            x = F.leaky_relu(block["bn"](block["conv"](x)), self.slope)
            x = F.interpolate(x, size=size, mode="nearest")
        return torch.sigmoid(self.out(x))


def xavier_init_(conv: nn.Module, slope: float) -> None:
    """Xavier-uniform weights with the gain of a leaky ReLU of ``slope`` (as the reference
    code initialises its autoencoders' convolutions)."""
    nn.init.xavier_uniform_(conv.weight, gain=nn.init.calculate_gain("leaky_relu", slope))


def xavier_init_encoder_(encoder: Encoder) -> None:
    """:func:`xavier_init_` on every convolution of ``encoder`` (its linear layers keep
    PyTorch's initialisation, as in the reference)."""
    for m in encoder.features:
        if isinstance(m, nn.Conv2d):
            xavier_init_(m, encoder.slope)
