"""DOC: Perera & Patel, "Learning Deep Features for One-Class Classification", IEEE TIP 2019
(arXiv 1801.05365).

A pretrained network g (here EfficientNet-Lite0 with ImageNet weights; all but the last
``trainable_blocks`` MBConv blocks and the 1x1 head convolution frozen, as the paper freezes
all but the last layers) is trained with two losses on two streams of images sharing g:

- compactness on target (normal) batches: ``l_C = 1/(n k) sum_i z_i^T z_i`` with
  ``z_i = x_i - m_i``, ``m_i`` the mean of the *other* n - 1 features of the batch and k the
  feature dimension (Eq. 1); since ``z_i = n/(n-1) (x_i - mean)`` this is
  ``n / ((n-1)^2 k) * sum_i ||x_i - mean||^2``;
- descriptiveness on reference batches: cross-entropy of a classifier head over the
  reference classes (a labeled multi-class set that does not contain the target class);
  without labels, the targets are the frozen pretrained network's own ImageNet class
  probabilities (soft targets), so the features stay ImageNet-descriptive;

``loss = l_D + lam * l_C`` (the paper's combination, lam = 0.1), one target and one reference
batch per step. Without a ``reference``, the training images themselves serve as the
unlabeled reference (soft ImageNet targets): no other data needed, no label leaks.

Score: mean Euclidean distance from the image's feature (globally averaged 1280-d output of
the head convolution) to its ``k`` nearest features in the bank of all training features
(the paper's template matching; the bank is stored with the weights), or the local outlier
factor of the feature among the bank (``scoring='lof'``). Features are scaled to unit length
(``normalize``, our addition): the raw pooled features' length varies with image contrast,
and on CIFAR-10 the kNN AUROC of the pretrained features rose from 0.60 to 0.84 (airplane)
and from 0.47 to 0.70 (cat) with it (300 training and 400 test images, 96 pixels).
Map: Grad-CAM of the score on the head convolution (``heatmap='gradcam'``), or the smoothed
absolute input gradient (``heatmap='gradient'``, default).

Images go through the network at ``net_size`` x ``net_size`` (resized inside the model, so
small images are stored and mapped at their own size; grayscale is replicated to RGB).
Since the frozen blocks see no augmentation their outputs are computed once and cached, so a
training step costs only the trainable tail.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.reference import Reference, leaked_classes
from ..detector import Detector
from ..errors import ConfigError, DataError
from ..heatmaps import gradient_map, unit_upsample
from ..nets.efficientnet_lite import MEAN, STD, EfficientNetLite0Trunk, Lite0Head
from ..registry import register
from ..train import LoopConfig, rank_generator, rank_world, run
from ._common import normal_only, to_input

log = logging.getLogger(__name__)

N_BLOCKS = 16  # MBConv blocks of EfficientNet-Lite0
FEATURES = 1280


def compactness_loss(z: torch.Tensor) -> torch.Tensor:
    """Compactness loss of Perera & Patel (Eq. 1) for a batch of features ``(n, k)``."""
    n, k = z.shape
    if n < 2:
        return z.sum() * 0.0
    centred = z - z.mean(dim=0, keepdim=True)
    return (n / ((n - 1) ** 2 * k)) * (centred**2).sum()


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-sum p log q`` averaged over the batch (targets are probabilities)."""
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


def knn_distance(q: torch.Tensor, bank: torch.Tensor, k: int, chunk: int = 2048):
    """Distances ``(N, k)`` (ascending) and indices of the k nearest bank rows of each query."""
    ds, idx = [], []
    for qb in torch.split(q, chunk):
        d = torch.cdist(qb, bank)
        v, i = d.topk(min(k, bank.shape[0]), dim=1, largest=False)
        ds.append(v)
        idx.append(i)
    return torch.cat(ds), torch.cat(idx)


class DOCScore(nn.Module):
    """The kNN image score as a module (for export): mean distance to the k nearest features
    of the stored bank (one chunk, so the graph has a single top-k)."""

    def __init__(self, model: nn.Module, k: int):
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the matrix-product form of the distances always: torch.cdist takes it by itself only
        # for banks of more than 25 features, and its other path has no ONNX conversion
        d = torch.cdist(self.model(x), self.model.bank, compute_mode="use_mm_for_euclid_dist")
        return d.topk(min(self.k, self.model.bank.shape[0]), dim=1, largest=False)[0].mean(1)


class DOCNet(nn.Module):
    """Input resize and normalisation -> Lite0 trunk -> head conv -> global average pool.

    ``bank`` holds the training features; ``bank_kdist`` / ``bank_lrd`` the k-distance and
    local reachability density of each bank feature (for LOF scoring).
    """

    def __init__(self, in_channels: int, net_size: int, trainable_blocks: int, bank_size: int,
                 pretrained: bool = True, normalize: bool = True):
        super().__init__()
        self.in_channels, self.net_size, self.normalize = in_channels, net_size, normalize
        self.trunk = EfficientNetLite0Trunk(32)
        self.head = Lite0Head().conv
        if pretrained:
            self.trunk.load_imagenet()
            full = Lite0Head()
            full.load_imagenet()
            self.head.load_state_dict(full.conv.state_dict())
        self.cut = N_BLOCKS - trainable_blocks
        for m in self.frozen_modules():
            for p in m.parameters():
                p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(MEAN))
        self.register_buffer("std", torch.tensor(STD))
        self.register_buffer("bank", torch.zeros(bank_size, FEATURES))
        self.register_buffer("bank_kdist", torch.zeros(bank_size))
        self.register_buffer("bank_lrd", torch.zeros(bank_size))
        # Depthwise convolutions are much faster on CPU in channels-last layout.
        self.to(memory_format=torch.channels_last)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.trunk.stem, *self.trunk.blocks[:self.cut]]

    def train(self, mode: bool = True):
        super().train(mode)
        # Batch norm keeps its ImageNet statistics: target batches hold one class only.
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] at any size -> normalised RGB at ``net_size``."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[2:]) != (self.net_size, self.net_size):
            x = F.interpolate(x, size=(self.net_size, self.net_size), mode="bilinear",
                              align_corners=False, antialias=max(x.shape[2:]) > self.net_size)
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def lower(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen part: images -> activations at the cut."""
        h = self.trunk.stem(self.prepare(x))
        for b in self.trunk.blocks[:self.cut]:
            h = b(h)
        return h

    def upper(self, h: torch.Tensor) -> torch.Tensor:
        """The trainable part: activations at the cut -> head feature map ``(N, 1280, u, v)``."""
        for b in self.trunk.blocks[self.cut:]:
            h = b(h)
        return self.head(h)

    def pool(self, a: torch.Tensor) -> torch.Tensor:
        """Head feature map -> feature vector (unit length with ``normalize``)."""
        f = a.mean(dim=(2, 3))
        return F.normalize(f, dim=1) if self.normalize else f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feature vectors ``(N, 1280)``."""
        return self.pool(self.upper(self.lower(x)))


class _DOCTask:
    """One step: a target batch (compactness) and a reference batch (descriptiveness)."""

    def __init__(self, det: DOC, ref_h: torch.Tensor, ref_y: torch.Tensor, classifier: nn.Module):
        self.det, self.model = det, det.model_
        self.ref_h, self.ref_y, self.classifier = ref_h, ref_y, classifier
        self.soft = ref_y.dtype.is_floating_point
        params = [p for p in self.model.parameters() if p.requires_grad]
        # The classifier starts from scratch (labeled reference), so it learns faster than the
        # pretrained layers it sits on.
        groups = [{"params": params},
                  {"params": list(classifier.parameters()), "lr": float(det.head_lr)}]
        opt = torch.optim.Adam(groups, lr=float(det.lr), weight_decay=float(det.weight_decay))
        self.modules = {"model": self.model, "classifier": classifier}
        self.optimizers = {"doc": opt}
        self.schedulers: dict[str, Any] = {}

    def step(self, batch):
        dev = self.det.device_
        h_t = batch[0].to(dev)
        # Under DDP each rank picks its own reference images (the compactness loss is still each
        # rank's slice mean: DOC is not step-for-step equal to one process). One process draws
        # from the global generator as it always did (recorded runs repeat).
        gen = rank_generator() if rank_world()[1] > 1 else None
        pick = torch.randint(0, len(self.ref_h), (len(h_t),), generator=gen)
        h_r, y_r = self.ref_h[pick].to(dev), self.ref_y[pick].to(dev)
        # One forward pass through the shared layers for both streams.
        a = self.model.upper(torch.cat([h_t, h_r]))
        # Compactness in the geometry that is scored; the classifier (the ImageNet one for
        # soft targets) reads the raw pooled features.
        l_c = compactness_loss(self.model.pool(a[:len(h_t)]))
        logits = self.classifier(a[len(h_t):].mean(dim=(2, 3)))
        l_d = soft_cross_entropy(logits, y_r) if self.soft else F.cross_entropy(logits, y_r)
        loss = l_d + float(self.det.lam) * l_c
        opt = self.optimizers["doc"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.detach(), "compactness": l_c.detach(), "descriptiveness": l_d.detach()}

    def end_epoch(self, epoch: int):
        return {}


def gradcam_upsample(cam: torch.Tensor, size: tuple[int, int], net_size: int,
                     stride: int) -> torch.Tensor:
    """Grad-CAM maps ``(N, h, w)`` of the trunk's last stage -> ``(N, H, W)`` on the image.

    Unit i lies on the trunk input's pixel ``stride * i``, its receptive field's centre (the
    trunk pads k // 2; the ImageNet weights' units at stride 32 respond within a few pixels
    of it, by input-gradient centroids), and the trunk input is the image resized to
    ``net_size``. Plain bilinear resizing took unit i at ``stride * i + 15.5``, and a pasted
    spot's map sat 14-29 pixels down and right of it.
    """
    return unit_upsample(cam, size, (net_size / size[0], net_size / size[1]), stride)


@register("doc")
class DOC(Detector):
    """DOC, compactness + descriptiveness features with kNN scoring (see module docstring)."""

    # The gradient map is not continuous in the last bits: ReLU6 masks of the 16-layer trunk
    # and the k-nearest-neighbour set flip with float rounding. Measured on toy sets: torch's
    # own float32 and float64 maps differ by 3.8e-3 of the map's largest value; onnxruntime
    # and torch by 1.7e-3 to 3.8e-2 (random-noise images, runs under CPU load). Scores are
    # held to the default 1e-4; the maps' check catches a broken graph, not rounding.
    map_parity_tol = 1e-1

    fitted_json = ("reference_",)

    #: Larger images are resized to ``net_size`` (default 96) unless ``size`` is set.
    default_size = 96
    defaults = {
        "epochs": 5,
        "batch_size": 64,
        "lr": 1e-5,
        "weight_decay": 5e-5,
        "head_lr": 1e-3,  # learning rate of the reference classifier head
        "lam": 0.1,  # weight of the compactness loss: l_D + lam * l_C
        # side of the network input (images are resized inside the model); 96 is ~5x cheaper
        # than the network's own 224, which natural images need: CIFAR-10 mean AUROC 92.1 at
        # 224 (docs/benchmarks.md), pretrained airplane / cat 0.84 / 0.70 at 96 vs 0.91 / 0.87
        "net_size": 96,
        "trainable_blocks": 2,  # last MBConv blocks trained (with the head conv); the rest frozen
        "pretrained": True,
        "reference_size": 10000,  # at most this many reference images (random subset)
        "k": 5,  # neighbours of the kNN / LOF score
        "normalize": True,  # features of unit length (cosine geometry; see module docstring)
        "scoring": "knn",  # knn (mean distance to the k nearest training features) or lof
        "bank_size": None,  # None: every training feature; else a random subset of this size
        "heatmap": "gradient",  # gradient (input gradients) or gradcam (head convolution)
        "heatmap_sigma": None,
    }
    uses_reference = True

    def _check_params(self) -> None:
        super()._check_params()
        if not 0 <= int(self.trainable_blocks) <= N_BLOCKS:
            raise ConfigError(f"trainable_blocks must be in 0..{N_BLOCKS}, got {self.trainable_blocks}")
        if int(self.net_size) < 64:  # at 32 pixels the stride-32 map is one cell, all zero
            raise ConfigError(f"net_size must be at least 64, got {self.net_size}")
        if int(self.k) < 1:
            raise ConfigError(f"k must be at least 1, got {self.k}")
        if self.scoring not in ("knn", "lof"):
            raise ConfigError(f"scoring must be 'knn' or 'lof', got {self.scoring!r}")
        if self.heatmap not in ("gradient", "gradcam"):
            raise ConfigError(f"heatmap must be 'gradient' or 'gradcam', got {self.heatmap!r}")
        if self.bank_size is not None and int(self.bank_size) < 2:  # a point's neighbour
            raise ConfigError(f"bank_size must be at least 2 (or None), got {self.bank_size}")
        if float(self.lam) < 0:
            raise ConfigError(f"lam must be >= 0, got {self.lam}")

    # ------------------------------------------------------------------ fit
    def fit(self, train, val=None, *, outliers=None, loop: LoopConfig | None = None,
            reference: Reference | None = None):
        """As :meth:`Detector.fit`, plus ``reference``: a :class:`Reference` set of other
        classes (see :mod:`oneclass.data.reference`); None uses the training images with
        the pretrained network's ImageNet predictions as soft targets."""
        self._reference = reference
        try:
            return super().fit(train, val, outliers=outliers, loop=loop)
        finally:
            self._reference = None

    def _resolve_preprocess(self, train):
        pre = super()._resolve_preprocess(train)
        if self.size is None and max(pre.size) > 64:
            pre.size = (int(self.net_size), int(self.net_size))
        return pre

    def _build(self, input_shape):
        n = getattr(self, "_bank_n", 0)
        return DOCNet(input_shape[0], int(self.net_size), int(self.trainable_blocks), n,
                      pretrained=bool(self.pretrained) and not self._restoring,
                      normalize=bool(self.normalize))

    @torch.no_grad()
    def _lower_all(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen-part activations of uint8 images, kept on the CPU."""
        self.model_.eval()
        bs = int(self.score_batch_size)
        return torch.cat([self.model_.lower(to_input(xb, self.device_)).cpu()
                          for xb in torch.split(x, bs)])

    def _reference_data(self, x: torch.Tensor, h_t: torch.Tensor):
        """Reference activations and targets (class indices or ImageNet probabilities)."""
        from ..data.base import materialize

        ref = self._reference
        gen = np.random.default_rng(int(self.seed) + 11)
        if ref is None:  # the training images themselves, with soft targets
            xr, y, names = x, None, None
        else:
            images = ref.images
            keep = np.arange(len(images))
            if len(keep) > int(self.reference_size):
                keep = np.sort(gen.choice(len(keep), int(self.reference_size), replace=False))
            xr = materialize(images.subset(keep), self.preprocess_, desc="loading reference")[0]
            y = None if ref.classes is None else torch.from_numpy(ref.classes[keep])
            names = ref.class_names
            if y is not None:
                self._check_leak(x, xr, y.numpy(), names, ref.spec)
        h = h_t if ref is None else self._lower_all(xr)
        if y is not None:
            self.reference_ = {"spec": ref.spec, "classes": names, "n": len(xr)}
            return h, y, nn.Linear(FEATURES, len(names))
        head = Lite0Head()
        if self.pretrained:
            head.load_imagenet()
        head = head.to(self.device_)
        with torch.no_grad():  # soft targets from the network before any fine-tuning
            probs = torch.cat([F.softmax(head.fc(self.model_.upper(hb.to(self.device_))
                                                 .mean(dim=(2, 3))), 1).cpu()
                               for hb in torch.split(h, int(self.score_batch_size))])
        self.reference_ = {"spec": ref.spec if ref else "training images", "classes": "imagenet",
                           "n": len(xr)}
        return h, probs, head.fc

    def _check_leak(self, x, xr, classes, names, spec) -> None:
        leaks = leaked_classes(x.numpy(), xr.numpy(), classes)
        limit = max(2, int(0.01 * len(x)))
        bad = {c: n for c, n in leaks.items() if n >= limit}
        if bad:
            which = ", ".join(f"{names[c]!r} ({n} images)" for c, n in sorted(bad.items()))
            raise ConfigError(
                f"reference {spec}: class {which} contains training images; the target class "
                "must not be in the reference set (leave it out, e.g. NAME:-C)")

    def _fit(self, x, y, masks, loop: LoopConfig) -> None:
        x = normal_only(x, y)  # one-class: labeled anomalies are not used
        model: DOCNet = self.model_
        h_t = self._lower_all(x)
        if int(self.epochs) > 0 and int(self.trainable_blocks) > 0:
            ref_h, ref_y, classifier = self._reference_data(x, h_t)
            task = _DOCTask(self, ref_h, ref_y, classifier.to(self.device_))
            run(task, [h_t], epochs=int(self.epochs), batch_size=int(self.batch_size),
                seed=int(self.seed), phase="train", loop=loop, drop_last=True)
        elif self._reference is not None:
            log.warning("%s: epochs=%s and trainable_blocks=%s train nothing: the reference "
                        "set %s is not used (nor checked for the target class)", self.name,
                        self.epochs, self.trainable_blocks, self._reference.spec)
        model.eval()
        with torch.no_grad():
            feats = torch.cat([model.pool(model.upper(hb.to(self.device_))).cpu()
                               for hb in torch.split(h_t, int(self.score_batch_size))])
        if self.bank_size is not None and len(feats) > int(self.bank_size):
            g = torch.Generator().manual_seed(int(self.seed) + 5)
            feats = feats[torch.randperm(len(feats), generator=g)[:int(self.bank_size)]]
        self._set_bank(feats)

    def _set_bank(self, feats: torch.Tensor) -> None:
        """Store the bank, and the k-distance and reachability density of each feature."""
        m: DOCNet = self.model_
        if len(feats) < 2:
            raise DataError(f"{self.name}: the feature bank needs at least 2 training images")
        k = min(int(self.k), len(feats) - 1)
        d, idx = knn_distance(feats, feats, k + 1)  # the first neighbour is the point itself
        d, idx = d[:, 1:], idx[:, 1:]
        kdist = d[:, -1]
        reach = torch.maximum(d, kdist[idx])
        lrd = 1.0 / reach.mean(1).clamp_min(1e-12)
        m.bank = feats.to(self.device_)
        m.bank_kdist = kdist.to(self.device_)
        m.bank_lrd = lrd.to(self.device_)
        self._bank_n = len(feats)

    # ------------------------------------------------------------------ scoring
    def _score_features(self, f: torch.Tensor) -> torch.Tensor:
        m: DOCNet = self.model_
        d, idx = knn_distance(f, m.bank, int(self.k))
        if self.scoring == "knn":
            return d.mean(1)
        reach = torch.maximum(d, m.bank_kdist[idx])
        lrd = 1.0 / reach.mean(1).clamp_min(1e-12)
        return m.bank_lrd[idx].mean(1) / lrd

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        return self._score_features(self.model_(x))

    def export_module(self) -> nn.Module:
        if self.heatmap != "gradient" or self.scoring != "knn":
            raise ConfigError(f"{self.name}: ONNX export supports heatmap=gradient with "
                              f"scoring=knn, not heatmap={self.heatmap} scoring={self.scoring}")
        from ..export import gradient_module

        return gradient_module(DOCScore(self.model_, int(self.k)), self.input_shape_,
                               self.heatmap_sigma)

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        if self.heatmap == "gradient":
            return gradient_map(self._score, x, self.heatmap_sigma)
        m: DOCNet = self.model_
        with torch.enable_grad():
            a = m.upper(m.lower(x)).detach().requires_grad_(True)
            s = self._score_features(m.pool(a))
            (g,) = torch.autograd.grad(s.sum(), a)
        cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True))[:, 0]
        return gradcam_upsample(cam, tuple(x.shape[2:]), m.net_size, m.trunk.stride)

    def _fitted_extra(self):
        return {**super()._fitted_extra(), "bank_n": int(self.model_.bank.shape[0])}

    def _load_fitted_extra(self, extra):
        super()._load_fitted_extra(extra)
        self._bank_n = int(extra["bank_n"])
