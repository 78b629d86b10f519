"""Fully convolutional networks for FCDD (Liznerski et al., ICLR 2021): image -> u x v map.

- ``cnn28``:  the paper's CNN for 28x28 (Fashion-MNIST): two conv-pool stages, 1x1 head.
- ``cnn32``:  the paper's CNN for 32x32 (CIFAR-10): three 5x5 convs, two pools, 1x1 head.
- ``cnn224``: the paper's from-scratch CNN for larger images (stride 8).
- ``effnet``: EfficientNet-Lite0 trunk with ImageNet weights cut at stride 8 (or 16), a 3x3
  conv and a 1x1 head; the early blocks are frozen (kept in eval mode, no gradients).

FCDD uses biases: outlier exposure rules out the trivial constant solution that makes
Deep SVDD bias-free.

Padding of the from-scratch nets' convolutions (``padding``): ``zeros`` as in the paper, or
``reflect``, which mirrors the image at its border instead of framing it in a constant, so
the border itself does not look like an edge. The receptive field is the same either way.
"""

from __future__ import annotations

import torch
from torch import nn

from .efficientnet_lite import MEAN, STD, EfficientNetLite0Trunk
from .lenet import BatchNorm2d


def _conv(cin, cout, k, padding="zeros"):
    return nn.Conv2d(cin, cout, k, padding=k // 2, padding_mode=padding)


def _cbr(cin, cout, k, pool=None, padding="zeros"):
    layers = [_conv(cin, cout, k, padding), BatchNorm2d(cout, eps=1e-4), nn.LeakyReLU(0.01)]
    if pool:
        layers.append(nn.MaxPool2d(*pool))
    return layers


class CNN28(nn.Module):
    def __init__(self, in_channels: int, padding: str = "zeros"):
        super().__init__()
        self.features = nn.Sequential(*_cbr(in_channels, 8, 5, (2, 2), padding),
                                      _conv(8, 16, 5, padding), nn.MaxPool2d(2, 2))
        self.head = nn.Conv2d(16, 1, 1)

    def forward(self, x):
        return self.head(self.features(x))


class CNN32(nn.Module):
    def __init__(self, in_channels: int, padding: str = "zeros"):
        super().__init__()
        self.features = nn.Sequential(*_cbr(in_channels, 32, 5, (2, 2), padding),
                                      *_cbr(32, 64, 5, (2, 2), padding), _conv(64, 128, 5, padding))
        self.head = nn.Conv2d(128, 1, 1)

    def forward(self, x):
        return self.head(self.features(x))


class CNN224(nn.Module):
    def __init__(self, in_channels: int, padding: str = "zeros"):
        super().__init__()
        self.channels_last = True
        p = padding
        self.features = nn.Sequential(
            *_cbr(in_channels, 8, 5, (3, 2, 1), p), *_cbr(8, 32, 5, (3, 2, 1), p),
            *_cbr(32, 64, 3, None, p), *_cbr(64, 128, 3, (3, 2, 1), p), _conv(128, 128, 3, p))
        self.head = nn.Conv2d(128, 1, 1)

    def forward(self, x):
        return self.head(self.features(x.contiguous(memory_format=torch.channels_last)))


class EffNetFCN(nn.Module):
    """Pretrained EfficientNet-Lite0 trunk + trainable 3x3 conv + 1x1 head."""

    def __init__(self, in_channels: int, stride: int = 8, frozen_blocks: int = 3,
                 pretrained: bool = True):
        super().__init__()
        self.in_channels = in_channels
        self.trunk = EfficientNetLite0Trunk(stride)
        if pretrained:
            self.trunk.load_imagenet()
        self.frozen_blocks = frozen_blocks
        self.register_buffer("mean", torch.tensor(MEAN))
        self.register_buffer("std", torch.tensor(STD))
        c = self.trunk.out_channels
        self.neck = nn.Sequential(*_cbr(c, 128, 3))
        self.head = nn.Conv2d(128, 1, 1)
        for p in self._frozen_parameters():
            p.requires_grad_(False)
        # Depthwise convolutions train ~50x faster on CPU in channels-last layout (measured:
        # backward of a 32 x 352 x 144 batch 31.8 s -> 0.6 s).
        self.to(memory_format=torch.channels_last)

    def _frozen_modules(self):
        if self.frozen_blocks < 0:
            return []
        return [self.trunk.stem, *self.trunk.blocks[:self.frozen_blocks]]

    def _frozen_parameters(self):
        for m in self._frozen_modules():
            yield from m.parameters()

    def train(self, mode: bool = True):
        super().train(mode)
        # The trunk keeps its ImageNet batch-norm statistics, also in the blocks that are
        # fine-tuned: small batches of one kind of image would make poor running estimates.
        for m in self.trunk.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, x):
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        t = self.trunk
        x = t.stem(x)
        for b in t.blocks:
            x = b(x)
        return self.head(self.neck(x))


def auto_name(size: tuple[int, int]) -> str:
    """cnn28 for 28x28, cnn32 (stride 4) up to 64 pixels, cnn224 (stride 8) above.

    The from-scratch cnn224 is the default for larger images: trained with synthetic
    anomalies only it localised defects better than the fine-tuned ImageNet trunk (KolektorSDD
    pixel AUROC 0.90 vs 0.81, synthetic textures 0.92 vs 0.68; see docs/benchmarks.md);
    the trunk (``net=effnet``) is strong when labeled anomalies are given.
    """
    if tuple(size) == (28, 28):
        return "cnn28"
    if max(size) <= 64:
        return "cnn32"
    return "cnn224"


def build(name: str, in_channels: int, size: tuple[int, int], stride: int = 8,
          frozen_blocks: int = 3, pretrained: bool = True, padding: str = "zeros") -> nn.Module:
    """Build an FCDD network by name (``auto`` picks by input size).

    ``padding`` (zeros or reflect, see the module docstring) applies to the from-scratch
    nets; the pretrained trunk keeps the padding it was trained with.
    """
    if name == "auto":
        name = auto_name(size)
    if name == "cnn28":
        return CNN28(in_channels, padding)
    if name == "cnn32":
        return CNN32(in_channels, padding)
    if name == "cnn224":
        return CNN224(in_channels, padding)
    if name == "effnet":
        return EffNetFCN(in_channels, stride, frozen_blocks, pretrained)
    raise ValueError(f"unknown FCDD network {name!r}; choose auto, cnn28, cnn32, cnn224, effnet")


NETS = ("auto", "cnn28", "cnn32", "cnn224", "effnet")
PADDINGS = ("zeros", "reflect")
__all__ = ["build", "NETS", "CNN28", "CNN32", "CNN224", "EffNetFCN"]
