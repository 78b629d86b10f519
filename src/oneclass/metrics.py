"""Anomaly-detection metrics in pure numpy.

Conventions used throughout this module:

* scores (image level) and anomaly maps (pixel level) are "higher = more anomalous";
* labels and masks are binary with 1 / ``True`` = anomalous and 0 / ``False`` = normal;
* a sample is predicted anomalous at threshold ``t`` when ``score >= t``.

Image-level metrics: :func:`roc_curve`, :func:`auroc`, :func:`average_precision`,
:func:`f1_max`, bundled by :func:`image_metrics`. Pixel-level metrics: :func:`pixel_auroc` and
:func:`aupro` (per-region overlap, Bergmann et al., "The MVTec Anomaly Detection Dataset",
IJCV 2021), bundled by :func:`pixel_metrics`. :func:`connected_components` is the
8-connectivity labelling used by :func:`aupro`.

Ties are handled exactly: tied scores form one step of a curve (a diagonal segment in ROC
space), so AUROC counts an anomalous/normal tie as half a correctly ordered pair. The results
agree with ``sklearn.metrics`` (``roc_curve(..., drop_intermediate=False)``,
``roc_auc_score``, ``average_precision_score``) up to floating-point rounding.

Pixel-level metrics sort values instead of comparing all pairs: time is O(n log n). Extra
memory, in copies of float32 anomaly maps (measured with tracemalloc at 400 maps of 256 x 256):
:func:`pixel_auroc` about 1.2 (2 when most pixels are anomalous); :func:`aupro` about 1.5 when
a few percent of the pixels are anomalous, up to 9 when most are (sorting and weighting the
anomalous pixels), plus fixed working arrays of about 60 MB. 500 such maps are fine.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "aupro",
    "auroc",
    "average_precision",
    "connected_components",
    "f1_max",
    "image_metrics",
    "pixel_auroc",
    "pixel_metrics",
    "roc_curve",
]

# Number of distinct positive scores handled per searchsorted call in the AUROC kernel (bounds
# temporary memory for huge pixel sets).
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- input checks


def _as_binary(values: np.ndarray | list, name: str) -> np.ndarray:
    """Convert labels or masks to a bool array, rejecting anything but 0/1 values."""
    arr = np.asarray(values)
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be boolean or 0/1 numbers, got dtype {arr.dtype}")
    bad = (arr != 0) & (arr != 1)  # NaN is bad too
    if np.any(bad):
        example = arr[bad].flat[0]
        raise ValueError(f"{name} must contain only 0 and 1 (or bool), found {example!r}")
    return arr != 0


def _as_scores(values: np.ndarray | list, name: str) -> np.ndarray:
    """Convert scores or maps to a real-valued array, rejecting NaN and infinities."""
    arr = np.asarray(values)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.float64)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (found NaN or infinity)")
    return arr


def _check_1d(
    labels: np.ndarray | list, scores: np.ndarray | list
) -> tuple[np.ndarray, np.ndarray]:
    """Validate image-level inputs: two 1-D arrays of the same non-zero length."""
    y = _as_binary(labels, "labels")
    s = _as_scores(scores, "scores")
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.shape != s.shape:
        raise ValueError(f"labels and scores must have the same length, got {y.size} and {s.size}")
    if y.size == 0:
        raise ValueError("labels and scores are empty")
    return y, s


def _check_maps(masks: np.ndarray | list, maps: np.ndarray | list) -> tuple[np.ndarray, np.ndarray]:
    """Validate pixel-level inputs: bool masks and real maps of identical, non-empty shape."""
    m = _as_binary(masks, "masks")
    a = _as_scores(maps, "maps")
    if m.shape != a.shape:
        raise ValueError(f"masks and maps must have the same shape, got {m.shape} and {a.shape}")
    if m.size == 0:
        raise ValueError("masks and maps are empty")
    return m, a


def _require_both_classes(n_pos: int, n_neg: int, what: str) -> None:
    if n_pos == 0 or n_neg == 0:
        present = "anomalous (1)" if n_pos else "normal (0)"
        raise ValueError(
            f"{what} is undefined when only one class is present: all {n_pos + n_neg} "
            f"samples are {present}; need at least one normal and one anomalous sample"
        )


# --------------------------------------------------------------------------- image level


def _binary_clf_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of true and false positives at every distinct threshold, highest first.

    Returns:
        ``(fps, tps, thresholds)``: for each distinct score ``t`` (descending), the number of
        normal and anomalous samples with ``score >= t``.
    """
    order = np.argsort(s, kind="stable")[::-1]
    s_sorted = s[order]
    y_sorted = y[order]
    # last index of every run of equal scores
    ends = np.flatnonzero(s_sorted[1:] != s_sorted[:-1])
    ends = np.append(ends, s_sorted.size - 1)
    tps = np.cumsum(y_sorted, dtype=np.int64)[ends]
    fps = ends + 1 - tps
    return fps, tps, s_sorted[ends]


def roc_curve(
    labels: np.ndarray | list, scores: np.ndarray | list
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Receiver operating characteristic curve with one point per distinct score.

    Equivalent to ``sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False)``:
    the curve starts at ``(0, 0)`` with threshold ``+inf``, then has one point per distinct
    score in decreasing order; tied scores are a single point, so ties become one diagonal
    segment.

    Args:
        labels: 1-D binary labels, 1 = anomalous.
        scores: 1-D finite scores, higher = more anomalous.

    Returns:
        ``(fpr, tpr, thresholds)``, float arrays of equal length; ``fpr[i]`` and ``tpr[i]``
        are the rates for predicting anomalous when ``score >= thresholds[i]``.

    Raises:
        ValueError: on malformed input or when only one class is present.
    """
    y, s = _check_1d(labels, scores)
    n_pos = int(np.count_nonzero(y))
    _require_both_classes(n_pos, y.size - n_pos, "the ROC curve")
    fps, tps, thr = _binary_clf_curve(y, s)
    fpr = np.concatenate([[0.0], fps / (y.size - n_pos)])
    tpr = np.concatenate([[0.0], tps / n_pos])
    thresholds = np.concatenate([[np.inf], thr.astype(np.float64)])
    return fpr, tpr, thresholds


def _auc_from_split(neg: np.ndarray, pos: np.ndarray) -> float:
    """AUROC of positive vs negative scores (Mann-Whitney U, ties count one half).

    Both arrays are sorted in place (pass copies). Memory beyond the inputs is bounded by
    ``_CHUNK``; the pair count is accumulated exactly in int64.
    """
    n_neg, n_pos = neg.size, pos.size
    neg.sort()
    pos.sort()  # sorted queries make searchsorted walk ``neg`` in order
    twice_u = 0  # 2 * (#pairs pos > neg) + (#pairs pos == neg)
    for i in range(0, n_pos, _CHUNK):
        v = pos[i : i + _CHUNK]
        below = np.searchsorted(neg, v, side="left")
        below_or_tied = np.searchsorted(neg, v, side="right")
        twice_u += int(np.sum(below, dtype=np.int64)) + int(np.sum(below_or_tied, dtype=np.int64))
    return twice_u / (2.0 * n_pos * n_neg)


def auroc(labels: np.ndarray | list, scores: np.ndarray | list) -> float:
    """Area under the ROC curve.

    Computed from ranks (Mann-Whitney U statistic): the fraction of (anomalous, normal) pairs
    in which the anomalous sample scores higher, a tie counting one half. This equals the
    trapezoidal area under :func:`roc_curve`.

    Args:
        labels: 1-D binary labels, 1 = anomalous.
        scores: 1-D finite scores, higher = more anomalous.

    Returns:
        AUROC in ``[0, 1]``; 0.5 for uninformative scores.

    Raises:
        ValueError: on malformed input or when only one class is present.
    """
    y, s = _check_1d(labels, scores)
    n_pos = int(np.count_nonzero(y))
    _require_both_classes(n_pos, y.size - n_pos, "AUROC")
    return _auc_from_split(s[~y], s[y])


def average_precision(labels: np.ndarray | list, scores: np.ndarray | list) -> float:
    """Average precision, the step-wise area under the precision-recall curve.

    ``AP = sum_k (R_k - R_{k-1}) * P_k`` over distinct thresholds in decreasing order, without
    interpolation; equal to ``sklearn.metrics.average_precision_score``. Tied scores form a
    single step.

    Args:
        labels: 1-D binary labels, 1 = anomalous.
        scores: 1-D finite scores, higher = more anomalous.

    Returns:
        Average precision in ``(0, 1]``; 1.0 if no sample is normal.

    Raises:
        ValueError: on malformed input or when no sample is anomalous.
    """
    y, s = _check_1d(labels, scores)
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0:
        raise ValueError("average precision is undefined without anomalous samples (labels == 1)")
    fps, tps, _ = _binary_clf_curve(y, s)
    precision = tps / (tps + fps)
    recall_gain = np.diff(tps, prepend=0) / n_pos
    return float(np.sum(recall_gain * precision))


def f1_max(labels: np.ndarray | list, scores: np.ndarray | list) -> tuple[float, float]:
    """Best F1 score over all thresholds.

    Every distinct score is tried as threshold ``t`` (anomalous when ``score >= t``), which
    covers every distinct prediction the scores allow.

    Args:
        labels: 1-D binary labels, 1 = anomalous.
        scores: 1-D finite scores, higher = more anomalous.

    Returns:
        ``(f1, threshold)``: the maximal F1 and the threshold achieving it. When several
        thresholds reach the maximum, the highest one is returned.

    Raises:
        ValueError: on malformed input or when no sample is anomalous.
    """
    y, s = _check_1d(labels, scores)
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0:
        raise ValueError("F1 is undefined without anomalous samples (labels == 1)")
    fps, tps, thr = _binary_clf_curve(y, s)
    # F1 = 2 TP / (2 TP + FP + FN) with FN = n_pos - TP
    f1 = 2.0 * tps / (tps + fps + n_pos)
    best = int(np.argmax(f1))  # first maximum = highest threshold
    return float(f1[best]), float(thr[best])


def f1_score(labels: np.ndarray | list, predicted: np.ndarray | list) -> float:
    """F1 of binary predictions (1 = anomalous): one point of the curve :func:`f1_max` takes
    the best of, ``2 TP / (2 TP + FP + FN)``.

    Raises:
        ValueError: on malformed input or when no sample is anomalous.
    """
    y, p = _as_binary(labels, "labels").ravel(), _as_binary(predicted, "predicted").ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and predicted differ in length: {y.size} vs {p.size}")
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0:
        raise ValueError("F1 is undefined without anomalous samples (labels == 1)")
    return 2.0 * int(np.count_nonzero(y & p)) / (n_pos + int(np.count_nonzero(p)))


def image_metrics(labels: np.ndarray | list, scores: np.ndarray | list) -> dict[str, float | None]:
    """Image-level AUROC, average precision and best F1 in one dictionary.

    Args:
        labels: 1-D binary labels, 1 = anomalous.
        scores: 1-D finite scores, higher = more anomalous.

    Returns:
        ``{"image_auroc", "image_ap", "image_f1", "image_f1_threshold"}`` as floats, or all
        ``None`` when only one class is present (the metrics are then undefined or trivial).

    Raises:
        ValueError: on malformed input (shape, NaN, non-binary labels).
    """
    y, s = _check_1d(labels, scores)
    n_pos = int(np.count_nonzero(y))
    keys = ("image_auroc", "image_ap", "image_f1", "image_f1_threshold")
    if n_pos == 0 or n_pos == y.size:
        return dict.fromkeys(keys)
    f1, threshold = f1_max(y, s)
    return {
        "image_auroc": auroc(y, s),
        "image_ap": average_precision(y, s),
        "image_f1": f1,
        "image_f1_threshold": threshold,
    }


# --------------------------------------------------------------------------- pixel level


def pixel_auroc(masks: np.ndarray | list, maps: np.ndarray | list) -> float:
    """AUROC over all pixels of all images, pooled.

    Args:
        masks: binary ground truth, e.g. bool ``(N, H, W)``; True = anomalous pixel.
        maps: finite anomaly maps of the same shape.

    Returns:
        The AUROC of ``maps.ravel()`` against ``masks.ravel()``, computed by sorting
        (O(n log n) time, about one extra copy of ``maps`` in memory).

    Raises:
        ValueError: on malformed input, or if the masks are all normal or all anomalous.
    """
    m, a = _check_maps(masks, maps)
    n_pos = int(np.count_nonzero(m))
    _require_both_classes(n_pos, m.size - n_pos, "pixel AUROC")
    return _auc_from_split(a[~m], a[m])


def connected_components(masks: np.ndarray | list) -> tuple[np.ndarray, int]:
    """Label the 8-connected components of a binary mask, or of each mask in a stack.

    Works on horizontal runs of foreground pixels: runs in adjacent rows of the same image
    that touch (diagonals included) are merged with a vectorised union-find, so the cost is
    linear in the number of pixels plus O(r log r) in the number of runs.

    Args:
        masks: bool ``(H, W)`` mask, or ``(N, H, W)`` stack of independent masks.

    Returns:
        ``(labels, n)``: int32 array of the input's shape with 0 for background and
        ``1..n`` for the components, numbered in raster order of their first pixel (as
        ``scipy.ndimage.label``). In a stack, images never share a component and labels are
        unique across the whole stack.

    Raises:
        ValueError: if the mask is not 2-D or 3-D or not binary.
    """
    m = _as_binary(masks, "masks")
    if m.ndim not in (2, 3):
        raise ValueError(f"masks must be (H, W) or (N, H, W), got shape {m.shape}")
    stack = m.reshape((-1,) + m.shape[-2:])
    pixel_labels, n = _component_labels(stack)
    out = np.zeros(m.shape, dtype=np.int32)
    out.reshape(-1)[np.flatnonzero(stack)] = pixel_labels
    return out, n


def _component_labels(stack: np.ndarray) -> tuple[np.ndarray, int]:
    """Component label (1-based) of every foreground pixel of a bool ``(N, H, W)`` stack.

    Returns:
        ``(labels, n)``: labels of the foreground pixels in C order, i.e. aligned with
        ``array[stack]`` for any array of the stack's shape, and the number of components.
    """
    n_img, h, w = stack.shape
    rows = stack.reshape(n_img * h, w)
    padded = np.zeros((n_img * h, w + 2), dtype=np.bool_)
    padded[:, 1:-1] = rows
    # changes along each row alternate start, end, start, end, ... (padding is background)
    r, c = np.nonzero(padded[:, 1:] != padded[:, :-1])
    del padded
    run_row = r[0::2].astype(np.int64)
    run_start = c[0::2].astype(np.int64)  # first column of the run
    run_end = c[1::2].astype(np.int64)  # one past the last column
    n_runs = run_row.size
    if n_runs == 0:
        return np.zeros(0, dtype=np.int32), 0

    # Runs a (row y) and b (row y + 1, same image) touch with 8-connectivity iff
    # start_b <= end_a and end_b >= start_a. Runs are sorted by (row, start) and, within a row,
    # by end too, so the partners of a form a contiguous index range [lo, hi).
    stride = w + 2
    key_start = run_row * stride + run_start
    key_end = run_row * stride + run_end
    next_row = (run_row + 1) * stride
    lo = np.searchsorted(key_end, next_row + run_start, side="left")
    hi = np.searchsorted(key_start, next_row + run_end, side="right")
    count = np.maximum(hi - lo, 0)
    count[run_row % h == h - 1] = 0  # the next row belongs to the next image
    total = int(count.sum())
    edge_a = np.repeat(np.arange(n_runs), count)
    offset = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
    edge_b = np.repeat(lo, count) + offset

    # Vectorised union-find: hook the larger root onto the smaller one, then compress all
    # paths. The number of roots with an edge to another root at least halves per round.
    parent = np.arange(n_runs)
    while edge_a.size:
        root_a = parent[edge_a]
        root_b = parent[edge_b]
        keep = root_a != root_b
        if not keep.any():
            break
        edge_a, edge_b, root_a, root_b = edge_a[keep], edge_b[keep], root_a[keep], root_b[keep]
        np.minimum.at(parent, np.maximum(root_a, root_b), np.minimum(root_a, root_b))
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand

    # Every root is the first run (raster order) of its component: number roots in order.
    is_root = parent == np.arange(n_runs)
    root_number = np.cumsum(is_root, dtype=np.int32)
    run_label = root_number[parent]
    return np.repeat(run_label, run_end - run_start), int(root_number[-1])


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoidal area under the polyline ``(x, y)`` for ``0 <= x <= limit``.

    ``x`` must be non-decreasing and start at or below ``limit`` (a piece of a longer curve
    gives its share of the area); repeated ``x`` values are vertical segments. The curve is
    interpolated linearly at exactly ``x = limit``.
    """
    idx = int(np.searchsorted(x, limit, side="right"))  # first point beyond the limit
    xs, ys = x[:idx], y[:idx]
    area = float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]))) / 2.0
    if idx < x.size and xs[-1] < limit:
        x0, y0, x1, y1 = xs[-1], ys[-1], x[idx], y[idx]
        y_limit = y0 + (limit - x0) / (x1 - x0) * (y1 - y0)
        area += (limit - x0) * (y0 + y_limit) / 2.0
    return area


def _exact_aupro(neg: np.ndarray, pos: np.ndarray, pro_at: np.ndarray,
                 fpr_limit: float) -> float:
    """:func:`aupro` with a vertex at every distinct map value (``neg``, ``pos`` sorted).

    The curve is built and integrated in chunks of ``_CHUNK`` normal values, from the highest
    down, so the extra memory does not grow with the number of distinct values.
    """
    n_neg = neg.size
    # Only normal values whose group starts below the limit matter: the group of the need-th
    # largest normal value ends beyond the limit (the + 1 guards against rounding in
    # fpr_limit * n_neg), so no later vertex is used.
    need = min(n_neg, math.ceil(fpr_limit * n_neg) + 1)
    cut = int(np.searchsorted(neg, neg[n_neg - need], side="left"))
    area, last = 0.0, (0.0, 0.0)  # the curve starts at (0, 0)
    for end in range(n_neg, cut, -_CHUNK):
        block = neg[max(cut, end - _CHUNK) : end][::-1]  # descending
        first = np.empty(block.size, dtype=bool)  # the first (highest) of each tied group
        first[0] = end == n_neg or block[0] != neg[end]
        first[1:] = block[1:] != block[:-1]
        values = block[first]
        # vertices per group of tied normal values: (FPR before, PRO above) and (FPR after,
        # PRO from): a vertical step for anomalous-only values, then the segment
        x = np.empty(2 * values.size + 1)
        y = np.empty_like(x)
        x[0], y[0] = last
        x[1::2] = (n_neg - np.searchsorted(neg, values, side="right")) / n_neg  # FPR(> value)
        x[2::2] = (n_neg - np.searchsorted(neg, values, side="left")) / n_neg  # FPR(>= value)
        y[1::2] = pro_at[np.searchsorted(pos, values, side="right")]  # PRO(> value)
        y[2::2] = pro_at[np.searchsorted(pos, values, side="left")]  # PRO(>= value)
        area += _area_up_to(x, y, fpr_limit)
        if x[-1] >= fpr_limit:
            break
        last = (x[-1], y[-1])
    return float(min(1.0, max(0.0, area / fpr_limit)))


def aupro(
    masks: np.ndarray | list,
    maps: np.ndarray | list,
    fpr_limit: float = 0.3,
    num_thresholds: int | None = None,
) -> float:
    """Normalised area under the per-region-overlap (PRO) curve, as in MVTec AD.

    Each 8-connected component of each ground-truth mask is one region. At threshold ``t``
    (anomalous when ``map >= t``), PRO is the mean over all regions (of all images) of the
    fraction of the region's pixels detected, so small and large defects weigh the same; FPR is
    the fraction of normal pixels (over all images) detected. The PRO-over-FPR curve, linear
    between thresholds and starting at ``(0, 0)``, is integrated with the trapezoid rule from
    FPR 0 to ``fpr_limit`` (interpolated at exactly ``fpr_limit``) and divided by
    ``fpr_limit``: a perfect map gives 1.0, a constant map ``fpr_limit / 2``.

    Thresholds: by default (``num_thresholds=None``) the curve is exact, with a vertex at
    every distinct map value, like the MVTec AD evaluation code; this costs one sort of the
    normal pixels' values. With ``num_thresholds=k`` only the vertices at the normal-pixel
    quantiles giving FPR ``fpr_limit * i / k`` (``i = 1..k``) are kept (plus FPR 0), which
    approximates the exact value from the chords of the curve; it exists only to match
    binned implementations.

    Args:
        masks: bool ``(N, H, W)`` (or a single ``(H, W)``) ground truth, True = anomalous.
        maps: finite anomaly maps of the same shape, higher = more anomalous.
        fpr_limit: upper integration limit on the FPR axis, in ``(0, 1]``.
        num_thresholds: None for the exact curve, or a positive number of quantile thresholds.

    Returns:
        AUPRO in ``[0, 1]``, or NaN (no error) when the masks contain no anomalous region or
        no normal pixel.

    Raises:
        ValueError: on malformed input or parameters.
    """
    m, a = _check_maps(masks, maps)
    if m.ndim not in (2, 3):
        raise ValueError(f"masks must be (H, W) or (N, H, W), got shape {m.shape}")
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if num_thresholds is not None and (
        isinstance(num_thresholds, bool)
        or not isinstance(num_thresholds, (int, np.integer))
        or num_thresholds < 1
    ):
        raise ValueError(
            f"num_thresholds must be None or a positive integer, got {num_thresholds!r}"
        )
    stack = m.reshape((-1,) + m.shape[-2:])
    n_pos = int(np.count_nonzero(stack))
    n_neg = stack.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")

    # Each anomalous pixel carries 1 / (n_regions * region_size): the PRO at threshold t is the
    # sum of the weights of the anomalous pixels with map >= t.
    region, n_regions = _component_labels(stack)
    sizes = np.bincount(region)
    weight = 1.0 / (n_regions * sizes[region].astype(np.float64))
    flat_maps = a.reshape(stack.shape)
    pos = flat_maps[stack]
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    # pro_at[i] = sum of the weights of pos[i:], so PRO(>= t) = pro_at[searchsorted(pos, t)]
    pro_at = np.append(np.cumsum(weight[order][::-1])[::-1], 0.0)
    pro_at /= pro_at[0]  # the weights sum to 1 up to rounding; make PRO(all) exactly 1
    del weight, order, region

    neg = flat_maps[~stack]
    neg.sort()

    if num_thresholds is None:
        return _exact_aupro(neg, pos, pro_at, fpr_limit)
    # each rank r is the vertex at the r-th largest normal value (FPR >= r / n_neg); marked in
    # chunks, so memory does not grow with num_thresholds beyond the number of normal pixels
    marked = np.zeros(n_neg + 1, dtype=bool)
    for i in range(1, num_thresholds + 1, _CHUNK):
        levels = fpr_limit * np.arange(i, min(i + _CHUNK, num_thresholds + 1)) / num_thresholds
        marked[np.clip(np.ceil(levels * n_neg).astype(np.int64), 1, n_neg)] = True
    ranks = np.flatnonzero(marked)
    # one more vertex at or beyond the limit, whatever the rounding of levels * n_neg
    ranks = np.clip(np.append(ranks, ranks[-1] + 1), 1, n_neg)
    thresholds = np.unique(neg[n_neg - ranks])[::-1]
    fpr = (n_neg - np.searchsorted(neg, thresholds, side="left")) / n_neg
    pro = pro_at[np.searchsorted(pos, thresholds, side="left")]
    start = pro_at[np.searchsorted(pos, neg[-1], side="right")]  # PRO at FPR 0
    x = np.concatenate([[0.0, 0.0], fpr])
    y = np.concatenate([[0.0, start], pro])
    return float(min(1.0, max(0.0, _area_up_to(x, y, fpr_limit) / fpr_limit)))


def pixel_metrics(
    masks: np.ndarray | list, maps: np.ndarray | list, fpr_limit: float = 0.3
) -> dict[str, float | None]:
    """Pixel-level AUROC and AUPRO in one dictionary.

    Args:
        masks: bool ``(N, H, W)`` ground truth, True = anomalous pixel.
        maps: finite anomaly maps of the same shape, higher = more anomalous.
        fpr_limit: FPR integration limit of :func:`aupro`.

    Returns:
        ``{"pixel_auroc", "aupro"}`` as floats, both ``None`` when the masks contain no
        anomalous pixel (or no normal pixel).

    Raises:
        ValueError: on malformed input.
    """
    m, a = _check_maps(masks, maps)
    n_pos = int(np.count_nonzero(m))
    if n_pos == 0 or n_pos == m.size:
        return {"pixel_auroc": None, "aupro": None}
    return {"pixel_auroc": pixel_auroc(m, a), "aupro": aupro(m, a, fpr_limit=fpr_limit)}
