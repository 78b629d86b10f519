"""A self-contained single-file HTML report of an anomaly-detection run.

The page is built only from arrays (scores, labels, images, anomaly maps, masks) and embeds
every picture as a base64 PNG data URI: no external files, scripts, fonts or CDNs, so it can be
mailed or archived as one file. Every string is HTML-escaped (example names come from user file
names). matplotlib is imported only when a report is built, to keep ``import oneclass`` fast.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np

from . import io as _io
from . import viz

#: Longest side, in pixels, of the example images embedded in the report; larger images are
#: downscaled (their maps and masks follow) to keep the file small.
MAX_SIDE = 384
#: Display width, in CSS pixels, of each picture in the galleries.
THUMB_WIDTH = 200

_LABEL_NAMES = {0: "normal", 1: "anomalous", -1: "unknown"}


@dataclass
class Example:
    """One image shown in a gallery.

    Attributes:
        name: display name (usually the file name); escaped in the page.
        image: uint8 (H, W), (H, W, 1) or (H, W, 3).
        amap: float (h, w) anomaly map, or None.
        mask: bool (h, w) ground-truth defect mask, or None.
        score: image anomaly score.
        label: 0 normal, 1 anomalous, -1 unknown.
    """

    name: str
    image: np.ndarray
    amap: np.ndarray | None
    mask: np.ndarray | None
    score: float
    label: int


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates of the rule ``score >= t`` for every distinct score t.

    Tied scores move the curve in one (diagonal) step, as in scikit-learn. Examples whose label
    is not 0 or 1, or whose score is not finite, are ignored.

    Args:
        scores: float (N,), higher means more anomalous.
        labels: int (N,), 1 for anomalous (positive), 0 for normal.

    Returns:
        ``(fpr, tpr)``, both starting at 0 and ending at 1.

    Raises:
        ValueError: if there is not at least one normal and one anomalous example.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    keep = np.isfinite(s) & ((y == 0) | (y == 1))
    s, y = s[keep], y[keep] == 1
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("a ROC curve needs both normal (0) and anomalous (1) labels")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # index of the last element of each group of equal scores
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    return fpr, tpr


def _auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


# ---------------------------------------------------------------------------------------------
# formatting


def _esc(value: object) -> str:
    """Text for the page: HTML-escaped, bidirectional controls shown as escapes (a file name
    cannot reorder what the report shows)."""
    return html.escape(_io.printable(str(value), controls=False), quote=True)


def _fmt_num(v: float) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    if not math.isfinite(v):
        return str(v)
    if v == 0 or 1e-3 <= abs(v) < 1e6:
        return f"{v:.4f}"
    return f"{v:.4g}"


def _apart(score: float, threshold: float) -> tuple[str, str]:
    """``score`` and ``threshold`` as text, with as many digits as tell them apart (a score
    just below the threshold shown equal to it read as a wrong prediction)."""
    a, b = _fmt_num(score), _fmt_num(threshold)
    digits = 5
    while a == b and score != threshold and digits <= 17:
        a, b = f"{score:.{digits}g}", f"{threshold:.{digits}g}"
        digits += 1
    return a, b


def _plain(value: Any) -> Any:
    """Make ``value`` JSON-friendly (numpy scalars/arrays, paths, tuples)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _info_cell(value: Any) -> str:
    value = _plain(value)
    if value is None:
        return "—"
    if isinstance(value, (dict, list)):
        text = json.dumps(value, indent=2, ensure_ascii=False, allow_nan=False)
        return f"<pre>{_esc(text)}</pre>"
    return _esc(value)


def _metric_cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, (int, float, np.integer, np.floating, np.bool_)):
        return _esc(_fmt_num(value))
    return _esc(value)


def _png_uri(arr: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(viz.to_png(arr)).decode("ascii")


def _img(uri: str, alt: str, *, width: int | None = None, natural: int | None = None) -> str:
    """An ``<img>`` tag; ``pixelated`` when a small image is shown larger than its size."""
    attrs = [f'src="{uri}"', f'alt="{_esc(alt)}"']
    if width is not None:
        attrs.append(f'width="{width}"')
        if natural is not None and natural < width:
            attrs.append('class="px"')
    return "<img " + " ".join(attrs) + ">"


# ---------------------------------------------------------------------------------------------
# charts (matplotlib, Agg canvas)


def _figure_png(fig: Any) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    buf = BytesIO()
    canvas.print_png(buf)
    buf.seek(0)
    from PIL import Image

    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _roc_png(fpr: np.ndarray, tpr: np.ndarray) -> np.ndarray:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 4.0), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--", label="chance")
    ax.plot(fpr, tpr, color="tab:red", lw=2, label=f"ROC (area = {_auc(fpr, tpr):.4f})")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.grid(True, color="0.9")
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    return _figure_png(fig)


def _hist_png(scores: np.ndarray, labels: np.ndarray, threshold: float | None) -> np.ndarray:
    from matplotlib.figure import Figure

    lo, hi = float(scores.min()), float(scores.max())
    if threshold is not None and math.isfinite(threshold):
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    nbins = int(np.clip(2 * math.sqrt(len(scores)), 10, 60))
    edges = np.linspace(lo, hi, nbins + 1)

    fig = Figure(figsize=(6.4, 3.4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    groups = [
        (labels == 0, "normal", "tab:blue"),
        (labels == 1, "anomalous", "tab:red"),
        ((labels != 0) & (labels != 1), "unlabeled", "0.5"),
    ]
    for sel, name, color in groups:
        n = int(sel.sum())
        if n:
            ax.hist(scores[sel], bins=edges, color=color, alpha=0.55, label=f"{name} ({n})")
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(
            threshold, color="black", ls="--", lw=1.5, label=f"threshold = {_fmt_num(threshold)}"
        )
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("count")
    ax.grid(True, axis="y", color="0.9")
    ax.legend(fontsize=9)
    fig.tight_layout()
    return _figure_png(fig)


def _colorbar_png(width: int = 256, height: int = 14) -> np.ndarray:
    ramp = np.tile(np.linspace(0.0, 1.0, width), (height, 1))
    return viz.colormap(ramp)


# ---------------------------------------------------------------------------------------------
# galleries


def _map_range(examples: Sequence[Example]) -> tuple[float, float] | None:
    lo, hi = math.inf, -math.inf
    for ex in examples:
        if ex.amap is None:
            continue
        a = np.asarray(ex.amap, dtype=np.float64)
        a = a[np.isfinite(a)]
        if a.size:
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    if lo > hi:
        return None
    return lo, hi


def _figure(img_tag: str, caption: str) -> str:
    return f"<figure>{img_tag}<figcaption>{_esc(caption)}</figcaption></figure>"


def _card(ex: Example, vrange: tuple[float, float] | None, threshold: float | None = None) -> str:
    img = viz.fit_side(ex.image, MAX_SIDE)
    natural = img.shape[1]
    parts = [
        _figure(
            _img(_png_uri(img), f"{ex.name}: image", width=THUMB_WIDTH, natural=natural), "image"
        )
    ]
    if ex.amap is not None:
        vmin, vmax = vrange if vrange is not None else (None, None)
        ov = viz.overlay(img, ex.amap, vmin=vmin, vmax=vmax, alpha=0.5)
        parts.append(
            _figure(
                _img(
                    _png_uri(ov), f"{ex.name}: anomaly heatmap", width=THUMB_WIDTH, natural=natural
                ),
                "heatmap",
            )
        )
    if ex.mask is not None:
        outlined = viz.mask_outline(img, ex.mask, color=(0, 255, 0))
        parts.append(
            _figure(
                _img(
                    _png_uri(outlined),
                    f"{ex.name}: ground-truth mask",
                    width=THUMB_WIDTH,
                    natural=natural,
                ),
                "mask outline",
            )
        )
    label = int(ex.label)
    label_name = _LABEL_NAMES.get(label, str(label))
    score = _fmt_num(ex.score) if ex.score is not None else "—"
    # the prediction at the threshold, then the true label: a badge alone read as the former
    said = ""
    if threshold is not None and ex.score is not None:
        flagged = float(ex.score) >= float(threshold)
        score, shown = _apart(float(ex.score), float(threshold))
        said = (f'<span title="score at or above the threshold {_esc(shown)}">'
                f'predicted <b>{"anomalous" if flagged else "normal"}</b></span>')
    caption = (
        f'<div class="cap"><span class="name">{_esc(ex.name)}</span>'
        f"<span>score <b>{_esc(score)}</b></span>{said}"
        f'<span class="lab lab-{_esc(label_name)}" title="the true label">true: '
        f"{_esc(label_name)}</span></div>"
    )
    return f'<div class="card"><div class="imgs">{"".join(parts)}</div>{caption}</div>'


def _gallery(
    section_id: str, heading: str, examples: Sequence[Example], vrange: tuple[float, float] | None,
    threshold: float | None = None,
) -> str:
    if not examples:
        body = '<p class="note">No examples.</p>'
    else:
        body = ('<div class="gallery">' + "".join(_card(ex, vrange, threshold) for ex in examples)
                + "</div>")
    return f'<section id="{section_id}"><h2>{_esc(heading)}</h2>{body}</section>'


# ---------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 margin:0 auto;padding:1.5rem 2rem 3rem;max-width:1200px;color:#222;background:#fff;
 line-height:1.4}
h1{font-size:1.6rem;margin:0 0 .3rem}
h2{font-size:1.2rem;margin:2rem 0 .6rem;padding-bottom:.2rem;border-bottom:1px solid #ddd}
.sub{color:#666;margin:0 0 1rem}
table{border-collapse:collapse;font-size:.92rem}
th,td{text-align:left;vertical-align:top;padding:.25rem .8rem .25rem 0;
 border-bottom:1px solid #eee}
th{font-weight:600;color:#444;white-space:nowrap}
td.num{font-variant-numeric:tabular-nums}
pre{margin:0;font-size:.85rem;white-space:pre-wrap}
.note{color:#555;font-size:.9rem}
.charts{display:flex;flex-wrap:wrap;gap:1.5rem;align-items:flex-start}
.charts img{max-width:100%;height:auto}
.gallery{display:flex;flex-wrap:wrap;gap:1rem}
.card{border:1px solid #ddd;border-radius:6px;padding:.5rem;background:#fafafa}
.imgs{display:flex;gap:.4rem}
figure{margin:0;text-align:center}
figure img{display:block;height:auto;background:#000}
figcaption{font-size:.75rem;color:#666}
img.px{image-rendering:pixelated}
.cap{display:flex;flex-wrap:wrap;gap:.2rem .8rem;font-size:.85rem;margin-top:.35rem;
 max-width:620px}
.cap .name{font-weight:600;word-break:break-all}
.lab{padding:0 .4rem;border-radius:3px;color:#fff;font-size:.8rem}
.lab-normal{background:#2e7d32}.lab-anomalous{background:#c62828}
.lab-unknown{background:#777}
.scale{display:flex;align-items:center;gap:.5rem;font-size:.85rem}
.scale img{height:14px;width:256px}
.samples figure{margin:0 0 1rem;text-align:left}
.samples img{max-width:100%;background:none}
"""


def _check_examples(examples: Sequence[Example], which: str) -> None:
    for ex in examples:
        if not isinstance(ex, Example):
            raise TypeError(f"{which}: expected Example objects, got {type(ex).__name__}")


def build_report(
    path: str | os.PathLike,
    *,
    title: str,
    scores: np.ndarray,
    labels: np.ndarray,
    threshold: float | None,
    metrics: Mapping[str, float | None],
    most: Sequence[Example],
    least: Sequence[Example],
    info: Mapping[str, object],
    samples: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write a self-contained HTML report and return its path.

    Args:
        path: destination ``.html`` file; written atomically (a failed write keeps the old one).
        title: page title.
        scores: float (N,) image anomaly scores of the whole evaluated set.
        labels: int (N,) labels, 0 normal, 1 anomalous, -1 unknown.
        threshold: decision threshold drawn on the histogram, or None.
        metrics: name -> value; None is shown as "—".
        most, least: examples for the "Most anomalous" / "Least anomalous" galleries.
        info: run description (method, parameters, data, ...); nested values shown as JSON.
        samples: optional name -> uint8 image (e.g. a grid of generated samples).

    Returns:
        The path written.

    Raises:
        ValueError: if scores and labels differ in length or a label is not -1, 0 or 1.
        OneclassError: if the file cannot be written.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels_raw = np.asarray(labels).ravel()
    if scores.shape != labels_raw.shape:
        raise ValueError(f"scores ({scores.size}) and labels ({labels_raw.size}) differ in length")
    labels = labels_raw.astype(np.int64)
    if not np.array_equal(labels, labels_raw) or not np.isin(labels, (-1, 0, 1)).all():
        raise ValueError("labels must be -1 (unknown), 0 (normal) or 1 (anomalous)")
    _check_examples(most, "most")
    _check_examples(least, "least")

    finite = np.isfinite(scores)
    n_norm, n_anom = int((labels == 0).sum()), int((labels == 1).sum())
    n_unk = int(labels.size - n_norm - n_anom)

    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f'<p class="sub">{scores.size} scored images: {n_norm} normal, {n_anom} anomalous, '
        f"{n_unk} unlabeled"
        + (f" · threshold {_esc(_fmt_num(threshold))}" if threshold is not None else "")
        + "</p>",
    ]

    # run information
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_info_cell(v)}</td></tr>" for k, v in info.items())
    out.append(
        '<section id="info"><h2>Run</h2>'
        + (f"<table>{rows}</table>" if rows else '<p class="note">No information.</p>')
        + "</section>"
    )

    # metrics
    rows = "".join(
        f'<tr><th>{_esc(k)}</th><td class="num">{_metric_cell(v)}</td></tr>'
        for k, v in metrics.items()
    )
    out.append(
        '<section id="metrics"><h2>Metrics</h2>'
        + (f"<table>{rows}</table>" if rows else '<p class="note">No metrics.</p>')
        + "</section>"
    )

    # charts
    charts: list[str] = []
    s_ok, y_ok = scores[finite], labels[finite]
    if (y_ok == 0).any() and (y_ok == 1).any():
        fpr, tpr = roc_curve(s_ok, y_ok)
        charts.append(
            '<section id="roc"><h2>ROC curve</h2>'
            + _img(_png_uri(_roc_png(fpr, tpr)), "ROC curve")
            + '<p class="note">Image-level: anomalous is the positive class.</p>'
            "</section>"
        )
    if s_ok.size:
        charts.append(
            '<section id="scores"><h2>Score distribution</h2>'
            + _img(_png_uri(_hist_png(s_ok, y_ok, threshold)), "score histogram")
            + "</section>"
        )
    if charts:
        out.append('<div class="charts">' + "".join(charts) + "</div>")
    notes = []
    if not ((y_ok == 0).any() and (y_ok == 1).any()):
        notes.append("No ROC curve: it needs both normal and anomalous labels.")
    if (~finite).any():
        notes.append(f"{int((~finite).sum())} non-finite score(s) left out of the charts.")
    if notes:
        out.append('<p class="note">' + " ".join(_esc(n) for n in notes) + "</p>")

    # galleries, sharing one heatmap colour scale
    vrange = _map_range(list(most) + list(least))
    if vrange is not None:
        lo, hi = vrange
        out.append(
            '<section id="heatmap-scale"><h2>Heatmaps</h2>'
            '<p class="note">All heatmaps in this report share one colour scale (the minimum '
            "and maximum over every map shown), so their colours can be compared across "
            "images. Green lines outline the ground-truth defect masks.</p>"
            f'<div class="scale"><span>{_esc(_fmt_num(lo))}</span>'
            + _img(_png_uri(_colorbar_png()), "heatmap colour scale")
            + f"<span>{_esc(_fmt_num(hi))}</span></div></section>"
        )
    out.append(_gallery("most", "Most anomalous", most, vrange, threshold))
    out.append(_gallery("least", "Least anomalous", least, vrange, threshold))

    if samples:
        figs = []
        for name, arr in samples.items():
            arr = viz.as_rgb(arr)
            natural = arr.shape[1]
            # small grids (e.g. 28x28 digits) are shown enlarged, with sharp pixels
            width = natural * int(np.clip(512 // max(natural, 1), 1, 4))
            figs.append(
                _figure(_img(_png_uri(arr), str(name), width=width, natural=natural), str(name))
            )
        out.append(
            '<section id="samples" class="samples"><h2>Samples</h2>' + "".join(figs) + "</section>"
        )

    out.append("</body></html>\n")
    return _io.write_text(path, "\n".join(out))
