"""`oneclass report`: the HTML report of a run on its test set.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .. import data as data_mod
from ..errors import ConfigError
from ..train import show_progress
from .evaluation import _finite, _metrics, _test_digest, _warn_trained_test_images, _warn_unlike_training
from .inputs import anomalies_missing, test_set
from .layout import _open_run, _text, model_dir

log = logging.getLogger(__name__)


def report(run: Path, data_spec: str | None = None, data_root: str | None = None,
           top: int = 8, device: str = "auto", on_bad_image: str = "error",
           progress: bool | None = None) -> Path:
    """Write ``RUN/report.html`` for the test split of the run's data (or ``data_spec``).

    The metrics come from ``metrics.json`` when it was written by ``eval`` for this model on
    these test images, with these labels and scores; otherwise they are computed for the
    report alone (``metrics.json`` is left as it is: it stays the run's own evaluation).
    """
    from ..export import loaded_model_id
    from ..report import Example, build_report

    run = Path(run)
    det, cfg, spec, root = _open_run(run, data_spec, data_root, device)
    if top < 1:
        raise ConfigError(f"--top must be at least 1, got {top}")
    show = show_progress(progress)
    test, skipped = data_mod.screen(test_set(spec, root, cfg), on_bad_image, progress=show,
                                    what="test images")
    _warn_unlike_training(det, test)
    _warn_trained_test_images(cfg, test)
    scores = _finite(det.score(test, progress="scoring" if show else None), test.names)
    mpath = run / "metrics.json"
    metrics = {}
    if mpath.exists():
        try:
            metrics = json.loads(mpath.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            log.warning("%s: not valid JSON; computing the report's metrics afresh", mpath)
    if not isinstance(metrics, dict) or metrics.get("data") != spec \
            or metrics.get("model_id") != loaded_model_id(det, model_dir(run)) \
            or metrics.get("test_digest") != _test_digest(test, scores):
        metrics = _metrics(run, det, spec, test, scores, skipped, show)
    order = np.argsort(-scores, kind="stable")
    # the two galleries never show an image twice (--top 100 of 150 images showed 50 in both)
    k = min(int(top), len(order) // 2)
    k_most = k if len(order) != 1 else 1  # a single test image: among the highest only
    if k < int(top) and len(order) > 1:
        log.info("--top %d: the test set has %d images, so each gallery shows %d",
                    int(top), len(order), k)
    if k > 50:
        log.warning("--top %d: each example adds about 0.5-1 MB of pictures to report.html", k)

    def examples(idx, what: str) -> list[Example]:
        # each shown as given (its colours, its size up to the report's thumbnails, its mask),
        # the map laid over it as predict does; only the thumbnails are kept
        from tqdm.auto import tqdm

        from .. import viz
        from ..report import MAX_SIDE

        sub = test.subset(idx)
        maps = det.anomaly_map(sub, progress=f"{what} (maps)" if show else None)
        out = []
        for j in tqdm(range(len(sub)), desc=what, disable=not show, leave=False):
            s = sub.read(j)
            thumb = viz.fit_side(s.image, MAX_SIDE)
            mask = None if s.mask is None else viz.resize_mask(np.asarray(s.mask, bool),
                                                               thumb.shape[:2])
            out.append(Example(name=_text(sub.names[j]), image=thumb, amap=maps[j], mask=mask,
                               score=float(scores[idx[j]]), label=int(s.label)))
        return out

    spec = _text(spec)  # a folder name that is not UTF-8 is shown with escapes, as elsewhere
    info = {"method": det.name, "data": spec, "test images": len(test),
            "threshold": det.threshold_, "threshold source": det.threshold_source_,
            "training images": det.n_train_, "training seconds": det.train_seconds_,
            **({"training epochs": det.train_epochs_}
               if getattr(det, "train_epochs_", None) is not None else {}),
            "input (C, H, W)": list(det.input_shape_), "params": det.get_params()}
    if cfg.get("anomalies_used"):
        info["labeled anomalies"] = (
            f"{len(cfg['anomalies_used'])} from {_text(str(cfg.get('anomalies')))}"
            + ("" if det.uses_anomalies else ", not trained on (the method learns from "
               "normal images only)")
            + ("; their folder is not found from here, so any of them among these test images "
               "were evaluated too" if anomalies_missing(cfg) and data_mod.source(
                   str(cfg.get("anomalies_source"))) != data_mod.source(spec)
               else "; left out of these test images"))
    if cfg.get("outliers"):
        info["outlier exposure"] = _text(str(cfg["outliers"])) + (
            "" if det.uses_outliers else " (not used by the method)")
    pick = {"image_auroc": metrics.get("image_auroc"), "image_ap": metrics.get("image_ap"),
            "image_f1 (best over all thresholds)": metrics.get("image_f1"),
            "F1 at the model's threshold": metrics.get("f1_at_threshold"),
            "pixel_auroc": metrics.get("pixel_auroc"), "aupro": metrics.get("aupro")}
    figures = det.report_figures(test.subset(np.r_[order[:k_most], order[::-1][:k]]))
    return build_report(run / "report.html", title=f"oneclass {det.name}: {spec}",
                        scores=scores, labels=test.labels, threshold=det.threshold_,
                        metrics=pick, most=examples(order[:k_most], "highest scores"),
                        least=examples(order[::-1][:k], "lowest scores"), info=info, samples=figures or None)
