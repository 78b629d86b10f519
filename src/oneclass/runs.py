"""A run directory: what `oneclass train` writes and `eval` / `predict` / `report` read.

    RUN/config.json        method, data spec, data root and the effective parameters
    RUN/train_log.jsonl    one JSON line per epoch (losses, seconds)
    RUN/checkpoints/       per-phase checkpoints while training (removed when it finishes)
    RUN/model/             the saved model (model.json + weights.safetensors)
    RUN/metrics.json       written by `oneclass eval`
    RUN/scores.csv         per-image test scores written by `oneclass eval`
    RUN/report.html        written by `oneclass report`
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import data as data_mod
from .detector import Detector
from .errors import ConfigError, OneclassError
from .io import write_json, write_text
from .metrics import image_metrics, pixel_metrics
from .registry import create
from .train import LoopConfig

log = logging.getLogger(__name__)


def read_config(run: Path) -> dict[str, Any]:
    p = Path(run) / "config.json"
    if not p.is_file():
        raise OneclassError(f"{run}: not a run directory (no config.json); train one first")
    return json.loads(p.read_text())


def pick_anomalies(spec: str, limit: int, seed: int, root: str | None = None):
    """Up to ``limit`` anomalous images per defect type from the test split of ``spec``."""
    from .errors import DataError

    test = data_mod.load(spec, "test", root=root)
    rng = np.random.default_rng(seed)
    chosen = []
    kinds = sorted({k for k, lab in zip(test.kinds, test.labels) if lab == 1})
    for kind in kinds:
        idx = np.array([i for i, (k, lab) in enumerate(zip(test.kinds, test.labels))
                        if lab == 1 and k == kind])
        chosen += sorted(rng.permutation(idx)[:limit].tolist())
    if not chosen:
        raise DataError(f"{spec}: no anomalous test images to use as labeled anomalies")
    return test.subset(chosen)


def training_data(data_spec: str, root: str | None, seed: int, *, outliers: str | None = None,
                  anomalies: str | None = None, anomaly_limit: int = 5):
    """The training set of a run, its outlier-exposure set and the labeled anomalies used.

    Returns:
        ``(train_set, outlier_set or None, names of the labeled anomalies or None)``; the
        labeled anomalies (``anomaly_limit`` per defect type from the test split of
        ``anomalies``) are part of ``train_set``.
    """
    train_set = data_mod.load(data_spec, "train", root=root)
    used = None
    if anomalies:
        picked = pick_anomalies(anomalies, int(anomaly_limit), seed, root)
        used = list(picked.names)
        train_set = data_mod.concat(train_set, picked)
    outlier_set = data_mod.load(outliers, "train", root=root) if outliers else None
    return train_set, outlier_set, used


def test_set(spec: str, root: str | None, cfg: dict[str, Any]):
    """The test split of ``spec`` without the images the run trained on as labeled anomalies."""
    test = data_mod.load(spec, "test", root=root)
    used = set(cfg.get("anomalies_used") or [])
    if used and cfg.get("anomalies") == spec:
        test = test.subset([i for i, n in enumerate(test.names) if n not in used])
    return test


def train(method: str, data_spec: str, out: Path, params: dict[str, Any], *,
          data_root: str | None = None, resume: bool = False, progress: bool | None = None,
          outliers: str | None = None, anomalies: str | None = None,
          anomaly_limit: int = 5) -> Detector:
    """Train ``method`` on ``data_spec`` and write the run directory ``out``.

    Args:
        outliers: data spec of outlier-exposure images (methods that use them).
        anomalies: data spec whose test split gives labeled anomalies: ``anomaly_limit`` per
            defect type are added to training and left out of this run's evaluation.
    """
    out = Path(out)
    det = create(method, **params)
    config = {"method": det.name, "data": data_spec, "data_root": data_root,
              "params": det.get_params(), "outliers": outliers, "anomalies": anomalies,
              "anomaly_limit": anomaly_limit if anomalies else None}
    if resume and (out / "config.json").exists():
        old = {k: v for k, v in read_config(out).items() if k != "anomalies_used"}
        if old != json.loads(json.dumps(config)):
            raise ConfigError(f"{out}: --resume with a different configuration than the run's "
                              "config.json; use a new --out or the same options")
    out.mkdir(parents=True, exist_ok=True)
    train_set, outlier_set, used = training_data(data_spec, data_root, int(det.seed), outliers=outliers,
                                                 anomalies=anomalies, anomaly_limit=anomaly_limit)
    if used is not None:
        config["anomalies_used"] = used
    if outlier_set is not None and not det.uses_outliers:
        log.warning("%s does not use outlier exposure; --outliers is ignored", det.name)
    write_json(out / "config.json", config)
    log_path = out / "train_log.jsonl"
    if not resume:
        log_path.unlink(missing_ok=True)

    def on_epoch(rec: dict) -> None:
        with open(log_path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")

    ckpt = out / "checkpoints"
    loop = LoopConfig(checkpoint_dir=ckpt, resume=resume, progress=progress, on_epoch=on_epoch)
    det.fit(train_set, outliers=outlier_set, loop=loop)
    det.save(out / "model")
    shutil.rmtree(ckpt, ignore_errors=True)
    return det


def load_model(run: Path, device: str = "auto") -> Detector:
    model_dir = Path(run) / "model"
    if not model_dir.exists() and (Path(run) / "model.json").exists():
        model_dir = Path(run)
    return Detector.load(model_dir, device=device)


def _open_run(run: Path, data_spec: str | None, data_root: str | None, device: str):
    """The run's model and config, and the data spec and root to use (given or recorded)."""
    det = load_model(run, device)
    cfg = read_config(run) if (run / "config.json").exists() else {}
    spec = data_spec or cfg.get("data")
    if not spec:
        raise ConfigError(f"{run}: no data given and none recorded; pass --data SPEC")
    return det, cfg, spec, data_root or cfg.get("data_root")


def evaluate(run: Path, data_spec: str | None = None, data_root: str | None = None,
             device: str = "auto") -> dict[str, Any]:
    """Score the test split, write ``metrics.json`` and ``scores.csv``; return the metrics."""
    run = Path(run)
    det, cfg, spec, root = _open_run(run, data_spec, data_root, device)
    test = test_set(spec, root, cfg)
    t0 = time.perf_counter()
    scores = det.score(test)
    seconds = time.perf_counter() - t0
    labels = test.labels
    known = labels >= 0
    metrics: dict[str, Any] = {"data": spec, "n_test": int(len(test)),
                               "n_anomalous": int((labels == 1).sum())}
    im = image_metrics(labels[known], scores[known])
    metrics.update({k: im[k] for k in ("image_auroc", "image_ap", "image_f1")})
    metrics["image_f1_threshold"] = im.get("image_f1_threshold")
    pred = scores >= det.threshold_
    metrics["threshold"] = det.threshold_
    metrics["threshold_source"] = det.threshold_source_
    metrics["accuracy_at_threshold"] = float((pred[known] == (labels[known] == 1)).mean()) \
        if known.any() else None
    metrics["pixel_auroc"] = metrics["aupro"] = None
    if test.has_masks:
        maps = det.anomaly_map(test)
        masks = _masks(test, det)
        pm = pixel_metrics(masks, maps)
        metrics["pixel_auroc"], metrics["aupro"] = pm["pixel_auroc"], pm["aupro"]
    metrics["score_images_per_second"] = round(len(test) / max(seconds, 1e-9), 1)
    write_json(run / "metrics.json", metrics)
    rows = ["name,kind,label,score,predicted"]
    rows += [f"{_csv(n)},{_csv(k)},{int(lab)},{s:.8g},{int(p)}"
             for n, k, lab, s, p in zip(test.names, test.kinds, labels, scores, pred)]
    write_text(run / "scores.csv", "\n".join(rows) + "\n")
    return metrics


def _masks(test, det: Detector) -> np.ndarray:
    from .data.base import loader

    out = [m[:, 0].numpy() > 0.5 for _, _, m, _, _ in loader(test, det.preprocess_, 64)]
    return np.concatenate(out)


def _csv(s: str) -> str:
    s = str(s)
    return '"' + s.replace('"', '""') + '"' if any(c in s for c in ',"\n') else s


def format_metrics(m: dict[str, Any]) -> str:
    keys = ["image_auroc", "image_ap", "image_f1", "pixel_auroc", "aupro"]
    lines = [f"{'metric':<14}value"]
    for k in keys:
        v = m.get(k)
        lines.append(f"{k:<14}{'n/a' if v is None else f'{v:.4f}'}")
    return "\n".join(lines)


def _to_uint8_image(x) -> np.ndarray:
    """Float tensor ``(C, H, W)`` in [0, 1] -> uint8 ``(H, W, C)``."""
    return (x.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())


def _unique_stems(paths: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = p.stem
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        out.append(stem if n == 0 else f"{stem}_{n}")
    return out


def predict(run: Path, inputs: list[str], out: Path, *, resume: bool = False,
            heatmaps: bool = True, device: str = "auto", progress: bool | None = None,
            batch_size: int = 32) -> dict[str, Any]:
    """Score images and folders, streaming: ``OUT/predictions.csv`` and ``OUT/heatmaps/``.

    Rows are appended batch by batch, so memory stays bounded whatever the number of images;
    with ``resume`` images already in ``predictions.csv`` are skipped.
    """
    import csv
    import sys

    from tqdm.auto import tqdm

    from .data.base import FileSet, loader
    from .data.folder import list_images
    from .errors import DataError
    from .viz import overlay, save_png

    det = load_model(run, device)
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise DataError(f"{p}: no images found")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "predictions.csv"
    stems = dict(zip(map(str, paths), _unique_stems(paths)))
    done: set[str] = set()
    if resume and csv_path.exists():
        with open(csv_path, newline="") as fh:
            done = {row["path"] for row in csv.DictReader(fh)}
    todo = [p for p in paths if str(p) not in done]
    mode = "a" if resume and csv_path.exists() else "w"
    if heatmaps:
        (out / "heatmaps").mkdir(exist_ok=True)
    lo, hi = (det.map_scale_ or [None, None])
    n_anom = 0
    show = progress if progress is not None else sys.stderr.isatty()
    with open(csv_path, mode, newline="") as fh:
        writer = csv.writer(fh)
        if mode == "w":
            writer.writerow(["path", "score", "label"])
        if todo:
            fs = FileSet(todo, [-1] * len(todo), names=[str(p) for p in todo])
            bar = tqdm(total=len(todo), desc="scoring", disable=not show, leave=False)
            for xb, _, _, _, idx in loader(fs, det.preprocess_, batch_size):
                xb = xb.to(det.device_)
                with torch.no_grad():
                    scores = det._score(xb).float().cpu().numpy()
                maps = det._map(xb).detach().float().cpu().numpy() if heatmaps else None
                for j, i in enumerate(idx.tolist()):
                    label = int(scores[j] >= det.threshold_)
                    n_anom += label
                    if maps is not None:
                        img = _to_uint8_image(xb[j])
                        save_png(out / "heatmaps" / f"{stems[str(todo[i])]}.png",
                                 overlay(img, maps[j], lo, hi))
                    writer.writerow([str(todo[i]), f"{scores[j]:.8g}", label])
                fh.flush()
                bar.update(len(idx))
            bar.close()
    return {"scored": len(todo), "skipped": len(paths) - len(todo), "anomalous": n_anom,
            "csv": str(csv_path)}


def report(run: Path, data_spec: str | None = None, data_root: str | None = None,
           top: int = 8, device: str = "auto") -> Path:
    """Write ``RUN/report.html`` for the test split of the run's data (or ``data_spec``)."""
    from .report import Example, build_report

    run = Path(run)
    det, cfg, spec, root = _open_run(run, data_spec, data_root, device)
    mpath = run / "metrics.json"
    metrics = json.loads(mpath.read_text()) if mpath.exists() else {}
    if metrics.get("data") != spec:
        metrics = evaluate(run, spec, root, device)
    test = test_set(spec, root, cfg)
    scores = det.score(test)
    order = np.argsort(-scores, kind="stable")
    k = min(top, len(order))

    def examples(idx) -> list[Example]:
        from .data.base import loader

        sub = test.subset(idx)
        maps = det.anomaly_map(sub)
        out, j = [], 0
        for xb, yb, mb, has, _ in loader(sub, det.preprocess_, 64):
            for b in range(len(xb)):
                out.append(Example(
                    name=sub.names[j], image=_to_uint8_image(xb[b]), amap=maps[j],
                    mask=(mb[b, 0].numpy() > 0.5) if bool(has[b]) else None,
                    score=float(scores[idx[j]]), label=int(yb[b])))
                j += 1
        return out

    info = {"method": det.name, "data": spec, "test images": len(test),
            "threshold": det.threshold_, "threshold source": det.threshold_source_,
            "training images": det.n_train_, "training seconds": det.train_seconds_,
            "input (C, H, W)": list(det.input_shape_), "params": det.get_params()}
    pick = {k_: metrics.get(k_) for k_ in ("image_auroc", "image_ap", "image_f1", "pixel_auroc",
                                           "aupro")}
    return build_report(run / "report.html", title=f"oneclass {det.name}: {spec}",
                        scores=scores, labels=test.labels, threshold=det.threshold_,
                        metrics=pick, most=examples(order[:k]),
                        least=examples(order[::-1][:k]), info=info)
