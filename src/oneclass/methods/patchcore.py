"""PatchCore: Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022.

A reference baseline without training: a memory bank of pretrained patch features of the
normal training images, thinned by greedy coreset subsampling, and nearest-neighbour
distances at test time.

- Patch features: two intermediate stages of the EfficientNet-Lite0 trunk (ImageNet
  weights; by default the 40-channel stage at stride 8 and the 112-channel stage at stride
  16, the counterparts of the paper's WideResNet layer2 and layer3), each averaged over its
  3x3 neighbourhood ("locally aware" features, Sec. 3.1), the deeper one upsampled to the
  stride-8 grid, concatenated.
- Memory bank: a greedy k-center coreset (Sec. 3.2) of all training patch features, chosen
  on a random projection (Johnson-Lindenstrauss) of the features; ``coreset_ratio`` of them,
  at most ``coreset_max`` so that a CPU run stays short.
- Map: each patch's distance to its nearest bank feature, upsampled bilinearly to the input
  from where each unit responds (with the ImageNet weights, (stride - 1) / 2 pixels above and
  left of its receptive field's centre: :meth:`PatchCoreModel.unit_centre`) and smoothed
  with a Gaussian (sigma 4 pixels, as in the paper).
- Score: the largest patch distance ``s*``; with ``reweight`` it is scaled by the paper's
  ``1 - softmax(d)_0`` weight over the distances of that patch to ``m*`` (its nearest bank
  feature) and to the ``reweight_k - 1`` bank features nearest to ``m*`` (Eq. 7), which
  lowers the score of patches whose neighbourhood in the bank is sparse.

The bank is a buffer of the model, so it is saved with the trunk in ``weights.safetensors``.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..detector import Detector
from ..errors import ConfigError
from ..heatmaps import gaussian_blur, interpolation_matrix, resample, unit_upsample
from ..nets.efficientnet_lite import MEAN, STAGES, STD, EfficientNetLite0Trunk
from ..registry import register
from ..train import LoopConfig
from ._common import normal_only, to_input

#: Trunk stages PatchCore can read features from: index -> (channels, stride). Stages 0-4 of
#: EfficientNet-Lite0 are the ones up to stride 16.
STAGE_INFO = {0: (16, 2), 1: (24, 4), 2: (40, 8), 3: (80, 16), 4: (112, 16)}
#: Where a unit's features are taken to lie (see PatchCoreModel.unit_centre): "geometric"
#: (its receptive field's centre) or "imagenet" (where the ImageNet weights respond).
UNIT_CENTRES = ("geometric", "imagenet")


def _stage_ends() -> list[int]:
    """Index of the last MBConv block of every stage."""
    ends, n = [], 0
    for reps, *_ in STAGES:
        n += reps
        ends.append(n - 1)
    return ends


def greedy_coreset(x: torch.Tensor, n: int, projection_dim: int | None = 128,
                   seed: int = 0) -> torch.Tensor:
    """Indices of ``n`` rows of ``x`` (M, D) chosen by greedy k-center selection.

    Each step adds the row farthest from those chosen so far (Sec. 3.2 of the paper), which
    covers the feature space with few points. Distances are computed on a random Gaussian
    projection to ``projection_dim`` dimensions (None: no projection), and the first row is
    drawn with ``seed``. It runs on ``x``'s device; a GPU's rounding can pick other rows
    than the CPU where two candidates are nearly equally far.
    """
    m = len(x)
    n = min(int(n), m)
    g = torch.Generator().manual_seed(int(seed))
    z = x.float()
    if projection_dim and projection_dim < z.shape[1]:
        proj = torch.randn(z.shape[1], int(projection_dim), generator=g) / math.sqrt(projection_dim)
        z = z @ proj.to(z)
    sq = (z * z).sum(1)
    chosen = torch.empty(n, dtype=torch.long)
    cur = int(torch.randint(m, (1,), generator=g))
    min_d = torch.full((m,), float("inf"), dtype=z.dtype, device=z.device)
    for i in range(n):
        chosen[i] = cur
        d = sq - 2.0 * (z @ z[cur]) + sq[cur]
        torch.minimum(min_d, d, out=min_d)
        cur = int(torch.argmax(min_d))
    return chosen


def nearest(queries: torch.Tensor, bank: torch.Tensor, k: int = 1,
            max_elements: int = 1 << 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances ``(P, k)`` and indices of the ``k`` nearest bank rows per query.

    Computed as ``|q|^2 - 2 q.b + |b|^2`` with a matmul, in chunks of queries so that a
    chunk's distance matrix holds at most ``max_elements`` numbers.
    """
    bsq = (bank * bank).sum(1)
    chunk = max(1, max_elements // max(1, len(bank)))
    dists, idxs = [], []
    for q in torch.split(queries, chunk):
        d2 = torch.addmm(bsq[None, :], q, bank.t(), beta=1.0, alpha=-2.0)
        d2.add_((q * q).sum(1, keepdim=True))
        if k == 1:
            v, i = d2.min(1, keepdim=True)
        else:
            v, i = d2.topk(k, dim=1, largest=False)
        dists.append(v.clamp_min_(0).sqrt_())
        idxs.append(i)
    return torch.cat(dists), torch.cat(idxs)


class PatchCoreModel(nn.Module):
    """Pretrained trunk + memory bank; ``features`` gives locally aware patch features."""

    def __init__(self, input_shape: tuple[int, int, int], layers: list[int], bank_size: int,
                 min_side: int, centres: str = "geometric"):
        super().__init__()
        if centres not in UNIT_CENTRES:
            raise ValueError(f"unit centres must be one of {', '.join(UNIT_CENTRES)}, got "
                             f"{centres!r}")
        self.centre_shift = 1.0 if centres == "imagenet" else 0.0
        c, h, w = input_shape
        self.in_channels = c
        self.layers = sorted(int(i) for i in layers)
        stride = 16 if max(STAGE_INFO[i][1] for i in self.layers) > 8 else 8
        self.trunk = EfficientNetLite0Trunk(stride).to(memory_format=torch.channels_last)
        ends = _stage_ends()
        self.taps = {ends[i]: i for i in self.layers}
        self.last_block = max(self.taps)
        self.dim = sum(STAGE_INFO[i][0] for i in self.layers)
        self.scale = max(1.0, float(min_side) / min(h, w))
        self.register_buffer("mean", torch.tensor(MEAN))
        self.register_buffer("std", torch.tensor(STD))
        self.register_buffer("bank", torch.zeros(int(bank_size), self.dim))
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Patch features ``(N, D, h, w)`` for images in [0, 1] ``(N, C, H, W)``."""
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.scale > 1:
            x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        x = self.trunk.stem(x)
        maps = []
        for i, block in enumerate(self.trunk.blocks[:self.last_block + 1]):
            x = block(x)
            if i in self.taps:
                maps.append(self.pool(x))
        # Deeper stages are interpolated at the centres of the first stage's units (see
        # unit_centre): where unit i of the first stage lies in a deeper stage's units.
        h, w = maps[0].shape[2:]
        s0 = STAGE_INFO[self.layers[0]][1]
        out = [maps[0]]
        for m, i in zip(maps[1:], self.layers[1:]):
            si = STAGE_INFO[i][1]
            out.append(resample(m, interpolation_matrix(self._units_at(h, s0, si), m.shape[2]),
                                interpolation_matrix(self._units_at(w, s0, si), m.shape[3])))
        return torch.cat(out, dim=1).contiguous()

    def _units_at(self, n: int, s0: int, si: int) -> torch.Tensor:
        """Where the ``n`` units of a stage of stride ``s0`` lie among those of stride ``si``."""
        return (self.unit_centre(torch.arange(n), s0) - self.unit_centre(0, si)) / si

    def unit_centre(self, i, stride: int):
        """The trunk-input pixel (in pixel-centre coordinates) that unit ``i`` of a stage of
        ``stride`` responds to. Every convolution of the trunk pads k // 2, so the unit's
        receptive field is centred on pixel ``stride * i``: so are the units of random
        weights. The ImageNet weights' units respond to content (stride - 1) / 2 pixels
        above and to the left of that (measured: input-gradient centroids at stride 8, 3.1 to
        3.6 pixels on natural, texture and noise images; a spot pasted into an image moved
        PatchCore's map 4.3 to 4.7 model pixels down and right with geometric centres), as if
        trained where each stride-2 layer's grid sat half a pixel further on."""
        return stride * i - self.centre_shift * (stride - 1) / 2.0

    def upsample(self, patch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Patch maps ``(N, h, w)`` -> ``(N, H, W)`` at the input, each unit at its centre."""
        stride = STAGE_INFO[self.layers[0]][1]
        return unit_upsample(patch, size, (self.scale, self.scale), stride,
                             self.unit_centre(0, stride))


@register("patchcore")
class PatchCore(Detector):
    """PatchCore, nearest-neighbour distances to a coreset of pretrained patch features."""

    fitted_json = ("n_patches_", "feature_grid_", "unit_centres_")

    default_size = 224
    keep_aspect = True
    defaults = {
        "epochs": 1,  # not used: PatchCore has no training loop (one pass over the images)
        "batch_size": 16,  # images per batch when extracting the bank's features
        "layers": [2, 4],  # trunk stages: 2 = 40 channels at stride 8, 4 = 112 at stride 16
        "pretrained": True,  # ImageNet weights (False: random trunk, for tests only)
        "coreset_ratio": 0.1,
        "coreset_max": 10000,  # cap on the bank size, so that CPU runs stay fast
        "projection_dim": 128,  # random projection for the coreset search (0: none)
        "sigma": 4.0,  # Gaussian smoothing of the map, in input pixels
        "reweight": False,  # the paper's image-score reweighting (Eq. 7)
        "reweight_k": 9,
        "min_side": 96,  # smaller inputs are upsampled to this shorter side for the trunk
    }

    def _check_params(self) -> None:
        super()._check_params()
        layers = self.layers
        if isinstance(layers, int):
            layers = [layers]
        if not layers or any(int(i) not in STAGE_INFO for i in layers) or len(set(layers)) != len(layers):
            raise ConfigError(f"layers must be distinct trunk stages out of {sorted(STAGE_INFO)}, "
                              f"got {self.layers!r}")
        norm = [int(i) for i in layers]
        if not (isinstance(self.layers, list) and self.layers == norm
                and all(type(i) is int for i in self.layers)):
            self.layers = norm  # a list of ints as given stays the object given (clone)
        if not 0.0 < float(self.coreset_ratio) <= 1.0:
            raise ConfigError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if int(self.coreset_max) < 1:
            raise ConfigError(f"coreset_max must be positive, got {self.coreset_max}")
        if int(self.reweight_k) < 2:  # the softmax over one distance is 1: every weight 0
            raise ConfigError(f"reweight_k must be at least 2, got {self.reweight_k}")
        if float(self.sigma) < 0:
            raise ConfigError(f"sigma must be >= 0, got {self.sigma}")
        if self.projection_dim is not None and int(self.projection_dim) < 0:
            raise ConfigError(f"projection_dim must be >= 0 (0: no projection), got "
                              f"{self.projection_dim}")

    def _build(self, input_shape):
        if not self._restoring:  # a new fit: where its trunk's weights respond
            self.unit_centres_ = "imagenet" if self.pretrained else "geometric"
        return PatchCoreModel(input_shape, self.layers, getattr(self, "bank_size_", 0),
                              int(self.min_side), self.unit_centres_)

    @torch.no_grad()
    def _fit(self, x, y, masks, loop: LoopConfig) -> None:
        t0 = time.perf_counter()
        model = self.model_
        if self.pretrained:
            model.trunk.load_imagenet()
        model.eval()
        feats = []
        for xb in torch.split(normal_only(x, y), int(self.batch_size)):
            f = model.features(to_input(xb, self.device_))
            feats.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
        feats = torch.cat(feats)
        self.feature_grid_ = list(f.shape[2:])
        n = max(1, min(int(self.coreset_max), round(len(feats) * float(self.coreset_ratio))))
        # on the features' device: a GPU takes the 10,000 sequential steps far faster
        idx = greedy_coreset(feats, n, int(self.projection_dim or 0) or None, int(self.seed))
        model.bank = feats[idx.to(feats.device)].contiguous()
        self.bank_size_ = int(n)
        self.n_patches_ = int(len(feats))
        record = {"phase": "train", "epoch": 1, "bank": n, "patches": len(feats),
                  "seconds": round(time.perf_counter() - t0, 3)}
        loop.history.append(record)
        if loop.on_epoch:
            loop.on_epoch(record)

    def _patch_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Nearest-bank distances ``(N, h, w)``, their bank indices and the features."""
        f = self.model_.features(x)
        n, d, h, w = f.shape
        q = f.permute(0, 2, 3, 1).reshape(-1, d)
        dist, idx = nearest(q, self.model_.bank)
        return dist.view(n, h, w), idx.view(n, h, w), q.view(n, h * w, d)

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        dist, idx, q = self._patch_scores(x)
        s, where = dist.flatten(1).max(1)
        if not self.reweight:
            return s
        bank = self.model_.bank
        k = min(int(self.reweight_k), len(bank))
        if k < 2:  # a bank of one patch: nothing to weigh against
            return s
        star = idx.flatten(1).gather(1, where[:, None])[:, 0]  # m*: nearest bank row
        _, neigh = nearest(bank[star], bank, k=k)  # N_b(m*), m* itself first
        patch = q[torch.arange(len(q)), where]  # m_test*
        d = (patch[:, None, :] - bank[neigh]).norm(dim=2)  # (N, k)
        weight = 1.0 - torch.softmax(d, dim=1)[:, 0]
        return weight * s

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            dist = self._patch_scores(x)[0]
            up = self.model_.upsample(dist, tuple(x.shape[2:]))
            return gaussian_blur(up, float(self.sigma))

    def _fitted_extra(self):
        return {**super()._fitted_extra(), "bank_size": self.bank_size_}

    def _load_fitted_extra(self, extra):
        super()._load_fitted_extra(extra)
        # models saved before it was recorded took every unit at its geometric centre (their
        # banks were built so)
        self.unit_centres_ = self.unit_centres_ or "geometric"
        self.bank_size_ = int(extra["bank_size"])
