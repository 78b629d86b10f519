"""`oneclass eval`: a run scored on its test set, metrics.json and scores.csv; the checks of
scores and images that eval, predict and report share.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import data as data_mod
from ..data.base import far_in_size, is_colour
from ..detector import Detector
from ..errors import DataError
from ..io import write_json, write_text
from ..metrics import f1_score, image_metrics, pixel_metrics
from ..train import show_progress
from .inputs import test_set
from .layout import _csv, _open_run, _text, model_dir

log = logging.getLogger(__name__)


def check_threshold(threshold: float, scores: np.ndarray, what: str, *, both: bool = True) -> bool:
    """Warn when ``threshold`` puts every score on one side; True when it does.

    With ``both=False`` only "everything anomalous" is reported (when predicting on new images,
    all of them being normal is the usual case, not a sign of a bad threshold).
    """
    if len(scores) == 0:
        return False
    lo, hi = float(np.min(scores)), float(np.max(scores))
    if threshold <= lo:
        log.warning("threshold %.6g is at or below every %s score (lowest %.6g): every image is "
                    "predicted anomalous; check the threshold parameter", threshold, what, lo)
        return True
    if both and threshold > hi:
        log.warning("threshold %.6g is above every %s score (highest %.6g): every image is "
                    "predicted normal; check the threshold parameter", threshold, what, hi)
        return True
    return False


def evaluate(run: Path, data_spec: str | None = None, data_root: str | None = None,
             device: str = "auto", on_bad_image: str = "error",
             progress: bool | None = None) -> dict[str, Any]:
    """Score the test split, write ``scores.csv`` and ``metrics.json``; return the metrics."""
    run = Path(run)
    det, cfg, spec, root = _open_run(run, data_spec, data_root, device)
    show = show_progress(progress)
    test, skipped = data_mod.screen(test_set(spec, root, cfg), on_bad_image, progress=show,
                                    what="test images")
    _warn_unlike_training(det, test)
    _warn_trained_test_images(cfg, test)
    t0 = time.perf_counter()
    scores = _finite(det.score(test, progress="scoring" if show else None), test.names)
    seconds = time.perf_counter() - t0
    metrics = _metrics(run, det, spec, test, scores, skipped, show)
    metrics["score_images_per_second"] = round(len(test) / max(seconds, 1e-9), 1)
    pred = det.flags(scores)
    rows = ["name,kind,label,score,predicted"]
    rows += [f"{_csv(_text(n))},{_csv(_text(k))},{int(lab)},{s:.9g},{int(p)}"
             for n, k, lab, s, p in zip(test.names, test.kinds, test.labels, scores, pred)]
    # scores.csv first: metrics.json is the file that says an evaluation is complete
    write_text(run / "scores.csv", "\n".join(rows) + "\n")
    write_json(run / "metrics.json", metrics)
    return metrics


def _warn_trained_test_images(cfg: dict[str, Any], test) -> None:
    """Warn when test images are among the run's training images: the same file (links
    resolved) or a byte-identical copy. A model scores the images it trained on lower than
    new ones, so the metrics come out better than the model is. Files only; the training
    split is listed again, not read (contents are compared only where byte sizes match)."""
    from ..data.base import same_files
    from ..export import quiet_logger

    paths = getattr(test, "paths", None)
    spec = cfg.get("data_path") or cfg.get("data")
    # unlabeled test images (a plain folder: its test split is its training images) give no
    # metrics to be misled by
    if not paths or not spec or not np.any(test.labels >= 0):
        return
    try:
        with quiet_logger("oneclass.data"):  # its warnings were given when training read it
            train_paths = getattr(data_mod.load(spec, "train", root=cfg.get("data_root")),
                                  "paths", None)
        if not train_paths:
            return
        shared = sorted(same_files(train_paths, paths))
    except (DataError, OSError):  # no train split (a test set alone), a file gone: no check
        return
    if shared:
        log.warning("%d of %d test images are training images of this run too (the same file "
                    "or a copy; first: %s): a model scores the images it trained on lower than "
                    "new ones, so these metrics are better than the model is; keep the test "
                    "images out of train/", len(shared), len(paths), test.names[shared[0]])


def _test_digest(test, scores: np.ndarray) -> str:
    """A fingerprint of the scored test set: its names, labels and scores (to 6 digits).

    ``report`` reuses ``metrics.json`` only when it matches, so images added, removed,
    relabelled or changed since ``eval`` give fresh metrics, not the old ones.
    """
    h = hashlib.sha256()
    for name, label, score in zip(test.names, test.labels, scores):
        h.update(f"{name}\0{int(label)}\0{float(score):.6g}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:16]


def _finite(scores: np.ndarray, names) -> np.ndarray:
    """``scores``, or a DataError naming (``names``) the images the model gave no finite score."""
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        shown = ", ".join(f"{names[i]} ({scores[i]})" for i in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(f"the model gave no finite score for {len(bad)} of {len(scores)} images: "
                        f"{shown}{more}; the model file may be damaged or these images far "
                        "outside its training data")
    return scores


def _metrics(run: Path, det: Detector, spec: str, test, scores: np.ndarray, skipped,
             show: bool) -> dict[str, Any]:
    """Image (and, with masks, pixel) metrics of ``scores`` on ``test``."""
    from ..export import loaded_model_id

    labels = test.labels
    known = labels >= 0
    metrics: dict[str, Any] = {"data": spec, "model_id": loaded_model_id(det, model_dir(run)),
                               "test_digest": _test_digest(test, scores),
                               "n_test": int(len(test)), "n_anomalous": int((labels == 1).sum())}
    if skipped:
        metrics["skipped_images"] = [name for name, _ in skipped]
    keys = ("image_auroc", "image_ap", "image_f1", "image_f1_threshold")
    if known.any():
        im = image_metrics(labels[known], scores[known])
        if im["image_auroc"] is None:
            kind = "anomalous" if (labels[known] == 1).all() else "normal"
            log.warning("%s: all %d labeled test images are %s; image AUROC, AP and F1 need "
                        "both normal and anomalous images; writing the scores and accuracy only",
                        spec, int(known.sum()), kind)
    else:  # a plain folder: the scores are still worth writing
        log.warning("%s: all %d test images are unlabeled; image metrics need labeled data "
                    "(an MVTec-layout folder or a benchmark); writing the scores only",
                    spec, len(test))
        im = dict.fromkeys(keys)
    metrics.update({k: im[k] for k in keys})
    pred = det.flags(scores)
    metrics["threshold"] = det.threshold_
    metrics["threshold_source"] = det.threshold_source_
    # all unlabeled images predicted normal is the usual case, as when predicting
    metrics["threshold_outside_scores"] = check_threshold(det.threshold_, scores, "test",
                                                          both=bool(known.any()))
    metrics["accuracy_at_threshold"] = float((pred[known] == (labels[known] == 1)).mean()) \
        if known.any() else None
    # image_f1 is the best F1 over all thresholds (a property of the scores); this is the F1 of
    # the model's own predictions, what a user of its threshold gets
    truth = labels[known] == 1
    metrics["f1_at_threshold"] = (f1_score(truth, pred[known])
                                  if truth.any() and not truth.all() else None)
    metrics["pixel_auroc"] = metrics["aupro"] = None
    if test.has_masks:
        maps, masks = maps_and_masks(test, det, progress="heatmaps" if show else None)
        pm = pixel_metrics(masks, maps)
        metrics["pixel_auroc"], metrics["aupro"] = pm["pixel_auroc"], pm["aupro"]
    return metrics


def maps_and_masks(test, det: Detector, progress: str | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps of ``test`` and its ground-truth masks at the model's input size, both
    ``(N, H, W)``, from one read of each image (the masks were read in a second pass that
    decoded every image again, a third of ``eval``'s time on large images, with no output)."""
    from tqdm.auto import tqdm

    from ..data.base import loader

    maps, masks = [], []
    with tqdm(total=len(test), desc=progress, disable=progress is None, leave=False) as bar:
        for x, _, m, _, _ in loader(test, det.preprocess_, int(det.score_batch_size)):
            maps.append(det.anomaly_map(x))  # the batches anomaly_map(test) would make
            masks.append(m[:, 0].numpy() > 0.5)
            bar.update(len(x))
    if not maps:
        shape = (0, *det.input_shape_[1:])
        return np.zeros(shape, np.float32), np.zeros(shape, bool)
    return np.concatenate(maps), np.concatenate(masks)


#: What ``eval`` prints: metrics.json key -> a note after the value.
_SHOWN = {"image_auroc": "", "image_ap": "", "image_f1": "best over all thresholds",
          "f1_at_threshold": "at the model's threshold", "accuracy_at_threshold": "",
          "pixel_auroc": "", "aupro": ""}


def format_metrics(m: dict[str, Any]) -> str:
    lines = [f"{'metric':<22}value"]
    for k, note in _SHOWN.items():
        v = m.get(k)
        if v is None and k not in ("image_auroc", "pixel_auroc", "aupro"):
            continue  # not computed for these data (no labels, or one class only)
        text = "n/a" if v is None else f"{v:.4f}"
        if k == "image_f1" and m.get("image_f1_threshold") is not None:
            note += f" (threshold {m['image_f1_threshold']:.6g})"
        elif k == "f1_at_threshold" and m.get("threshold") is not None:
            note += f" ({m['threshold']:.6g})"
        lines.append(f"{k:<22}{text}{'   ' + note if note else ''}")
    return "\n".join(lines)


def image_notes(det: Detector, image: np.ndarray) -> list[str]:
    """For one decoded uint8 ``(H, W, C)`` image (an upload), the warnings that
    :func:`_warn_unlike_training` gives a set of images: a size far from the training images', or
    colour against gray training images and the reverse."""
    notes = []
    ref = getattr(det, "train_image_size_", None)
    h, w = image.shape[:2]
    if ref and far_in_size(ref, h, w):
        notes.append(f"the image is {h}x{w}, far from the model's training images (median "
                     f"{ref[0]}x{ref[1]}): it is resized to the model's input and scored at "
                     "another scale")
    if is_colour(image) and det.preprocess_.channels == 1 and det.channels is None:
        notes.append("a colour image, but the model was trained on grayscale images: it is "
                     "scored as its luminance")
    if image.shape[2] == 1 and det.preprocess_.channels == 3:
        notes.append("a grayscale image, but the model was trained on colour images: it is "
                     "scored as its gray copied to three channels")
    return notes


def _warn_sizes(det: Detector, images, limit: int = 256) -> None:
    """Warn when images differ much in size from the model's training images (their median,
    recorded at fit; of at most ``limit`` images spread over the set, by file headers): each
    is resized to the model's input, so what it shows changes scale, a sign of another
    camera, zoom or crop than the training images had."""
    ref = getattr(det, "train_image_size_", None)
    if not ref or not len(images):
        return
    h0, w0 = ref
    far, looked = images.far_sizes(ref, limit)
    if far:
        i, h, w = far[0]
        log.warning("%d of %d images differ much in size from the model's training images "
                    "(median %dx%d; first: %s, %dx%d): each is resized to the model's input, "
                    "so what it shows changes scale; are they from the camera, zoom and crop "
                    "the model was trained on?", len(far), looked, h0, w0, images.names[i],
                    h, w)


def _warn_unlike_training(det: Detector, images) -> None:
    """Warn when a colour model is given grayscale images (by their file headers): each is
    scored as its gray copied to three channels, which a model that learned colour usually
    finds far from normal, so every one of them tends to be flagged. And when a model that
    found its training images gray (``channels`` not set) is given colour ones (up to 16
    files not gray by their headers are decoded: RGB files often hold gray pixels): each is
    scored as its luminance, so what shows only in colour is not seen. And when their sizes
    are far from the training images' (:func:`_warn_sizes`)."""
    from ..data.base import GRAY_MODES

    if det.preprocess_.channels == 1 and det.channels is None:
        first = images.first_colour(limit=16)
        if first is not None:
            log.warning("%s is a colour image, but the model was trained on grayscale "
                        "images: colour images are scored as their luminance, so a defect seen "
                        "only in colour is not seen; score images of the kind trained on, or "
                        "train on colour ones", images.names[first])
    _warn_sizes(det, images)
    if det.preprocess_.channels != 3:
        return
    gray = [images.names[i] for i in range(len(images)) if images.mode(i) in GRAY_MODES]
    if gray:
        log.warning("%d of %d images are grayscale (first: %s), but the model was trained on "
                    "colour images: they are scored as their gray copied to three channels, "
                    "which a colour model usually finds anomalous; score colour images, or "
                    "train on grayscale ones (--set channels=1)", len(gray), len(images),
                    gray[0])
