"""Small image helpers for anomaly maps: colouring, overlays, mask outlines, PNG encoding, grids.

Only numpy and pillow are used, so importing this module is cheap. All images are ``uint8``
arrays, (H, W) for grayscale or (H, W, 3) for RGB; anomaly maps are float arrays (h, w).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from . import io as _io

# The 'inferno' colormap sampled at 9 evenly spaced points (0, 1/8, ..., 1); dark purple-black
# for low values, through red and orange, to pale yellow for high values. Perceptually uniform
# and readable in grayscale print.
_ANCHORS = np.array(
    [
        (0, 0, 4),
        (33, 12, 74),
        (87, 16, 110),
        (138, 34, 106),
        (188, 55, 84),
        (228, 90, 49),
        (249, 142, 9),
        (249, 203, 53),
        (252, 255, 164),
    ],
    dtype=np.float64,
)


def _build_lut(anchors: np.ndarray, n: int = 256) -> np.ndarray:
    x = np.linspace(0.0, 1.0, len(anchors))
    t = np.linspace(0.0, 1.0, n)
    lut = np.stack([np.interp(t, x, anchors[:, c]) for c in range(3)], axis=1)
    return np.clip(np.rint(lut), 0, 255).astype(np.uint8)


_LUT = _build_lut(_ANCHORS)


def colormap(values: np.ndarray) -> np.ndarray:
    """Colour a map of values in [0, 1] with an 'inferno'-like colormap.

    Args:
        values: float array (H, W); values outside [0, 1] are clipped, NaN counts as 0.

    Returns:
        uint8 array (H, W, 3).
    """
    v = np.asarray(values, dtype=np.float64)
    v = np.nan_to_num(v, nan=0.0, posinf=1.0, neginf=0.0)
    idx = np.rint(np.clip(v, 0.0, 1.0) * (len(_LUT) - 1)).astype(np.intp)
    return _LUT[idx]


def normalize_map(
    amap: np.ndarray, vmin: float | None = None, vmax: float | None = None
) -> np.ndarray:
    """Scale an anomaly map linearly so that ``vmin`` -> 0 and ``vmax`` -> 1, clipped to [0, 1].

    Args:
        amap: float array (H, W).
        vmin, vmax: scale limits; default to the minimum / maximum finite value of the map.

    Returns:
        float32 array (H, W) in [0, 1]. A constant map gives zeros; with ``vmax <= vmin``
        the scale is a step: values above ``vmin`` give 1, the rest 0. Non-finite values
        become 0 (NaN, -inf) or 1 (+inf).
    """
    a = np.asarray(amap, dtype=np.float64)
    finite = a[np.isfinite(a)]
    if vmin is None:
        vmin = float(finite.min()) if finite.size else 0.0
    if vmax is None:
        vmax = float(finite.max()) if finite.size else 0.0
    if not (np.isfinite(vmin) and np.isfinite(vmax)):
        out = np.zeros(a.shape, dtype=np.float32)
        out[np.isposinf(a)] = 1.0
        return out
    if vmax <= vmin:  # a step at vmin: above it hot, at or below it cold
        return (np.nan_to_num(a, nan=-np.inf) > vmin).astype(np.float32)
    out = (a / 2 - vmin / 2) / (vmax / 2 - vmin / 2)  # halves: no overflow on huge ranges
    out = np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _check_uint8(arr: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise ValueError(f"{what} must be a uint8 array, got dtype {arr.dtype}")
    return arr


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Return a uint8 (H, W, 3) version of a (H, W), (H, W, 1) or (H, W, 3) image."""
    img = _check_uint8(image, "image")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    raise ValueError(f"image must have shape (H, W), (H, W, 1) or (H, W, 3), got {img.shape}")


def resize_map(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize a float map (h, w) to ``size`` = (H, W); float32 result."""
    a = np.asarray(amap, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"map must have shape (h, w), got {a.shape}")
    h, w = size
    if a.shape == (h, w):
        return a
    resized = Image.fromarray(np.ascontiguousarray(a)).resize(
        (w, h), resample=Image.Resampling.BILINEAR
    )
    return np.asarray(resized, dtype=np.float32)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 image to ``size`` = (H, W) with a high-quality (Lanczos) filter."""
    img = as_rgb(image)
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    out = Image.fromarray(img).resize((w, h), resample=Image.Resampling.LANCZOS)
    return np.asarray(out, dtype=np.uint8)


#: Heatmap overlays of ``predict`` and ``serve`` are drawn at the image's own size, scaled
#: down (aspect kept) when its longer side is over this many pixels: enough to see where an
#: image is anomalous, and a bound on the time and memory an overlay takes (writing the PNG
#: of a 4096x3072 overlay takes about 1.6 s here, of a 1024x768 one about 0.1 s).
OVERLAY_MAX_SIDE = 1024
#: zlib level of those overlays' PNG files (see :func:`to_png`).
FAST_PNG = 1


def fit_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """A uint8 image (H, W), (H, W, 1) or (H, W, 3) scaled down (Lanczos, aspect kept) so
    that its longer side is at most ``max_side``, in the same layout; an image already within
    it is returned as it is."""
    img = _check_uint8(image, "image")
    h, w = img.shape[:2]
    if max(h, w) <= int(max_side):
        return img
    f = int(max_side) / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    one = img.ndim == 3 and img.shape[2] == 1
    small = Image.fromarray(np.ascontiguousarray(img[:, :, 0] if one else img)).resize(
        size, resample=Image.Resampling.LANCZOS)
    out = np.asarray(small, dtype=np.uint8)
    return out[:, :, None] if one else out


def image_overlay(image: np.ndarray, amap: np.ndarray, vmin: float | None = None,
                  vmax: float | None = None, max_side: int | None = None) -> np.ndarray:
    """The overlay of a model's map on the image as it was given (before the model's resize),
    at the image's size, scaled down to ``max_side`` (default :data:`OVERLAY_MAX_SIDE`). The
    model resizes the whole image without cropping, so the map, resized back, lies on the
    same pixels."""
    return overlay(fit_side(image, OVERLAY_MAX_SIDE if max_side is None else max_side), amap,
                   vmin, vmax)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    m = np.asarray(mask).astype(bool)
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[:, :, 0]
    if m.ndim != 2:
        raise ValueError(f"mask must have shape (h, w), got {m.shape}")
    h, w = size
    if m.shape == (h, w):
        return m
    # nearest neighbour, sampling at pixel centres (same as PIL's NEAREST)
    rows = np.minimum(((np.arange(h) + 0.5) * m.shape[0] / h).astype(np.intp), m.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * m.shape[1] / w).astype(np.intp), m.shape[1] - 1)
    return m[rows[:, None], cols[None, :]]


def overlay(
    image: np.ndarray,
    amap: np.ndarray,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend a coloured anomaly map over an image.

    Args:
        image: uint8 (H, W), (H, W, 1) or (H, W, 3).
        amap: float (h, w); bilinearly resized to (H, W) if the sizes differ.
        vmin, vmax: colour scale limits (see :func:`normalize_map`); pass the same values for
            several images to make their colours comparable.
        alpha: weight of the heatmap, 0 (image only) to 1 (heatmap only).

    Returns:
        uint8 (H, W, 3).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = as_rgb(image)
    norm = normalize_map(amap, vmin, vmax)
    norm = np.clip(resize_map(norm, rgb.shape[:2]), 0.0, 1.0)
    heat = colormap(norm).astype(np.float32)
    out = (1.0 - alpha) * rgb.astype(np.float32) + alpha * heat
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def mask_outline(
    image_rgb: np.ndarray, mask: np.ndarray, color: Sequence[int] = (0, 255, 0)
) -> np.ndarray:
    """Draw the 1-pixel inner boundary of a mask on a copy of an image.

    Args:
        image_rgb: uint8 (H, W, 3) (grayscale is converted to RGB).
        mask: bool (h, w); nearest-neighbour resized to (H, W) if the sizes differ. A region
            touching the image border is outlined along the border too.
        color: RGB colour of the outline.

    Returns:
        uint8 (H, W, 3); the input is not modified.
    """
    out = as_rgb(image_rgb).copy()
    m = resize_mask(mask, out.shape[:2])
    padded = np.pad(m, 1, mode="constant", constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    edge = m & ~interior
    out[edge] = np.asarray(color, dtype=np.uint8)
    return out


def to_png(arr: np.ndarray, compress_level: int = 6) -> bytes:
    """Encode a uint8 (H, W), (H, W, 1) or (H, W, 3) array as PNG bytes.

    An RGB array whose three channels are equal is stored as a grayscale PNG.
    ``compress_level``: zlib's, 0-9; :data:`FAST_PNG` for the heatmaps of many images (about
    6x faster to write than 6, files about 15 % larger).
    """
    a = _check_uint8(arr, "PNG image")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ValueError(f"PNG image must have shape (H, W) or (H, W, 3), got {a.shape}")
    if a.ndim == 3 and (a[:, :, 0] == a[:, :, 1]).all() and (a[:, :, 1] == a[:, :, 2]).all():
        a = a[:, :, 0]  # gray stored as RGB: a 1-channel PNG looks the same and is 3x smaller
    buf = BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG", optimize=False,
                                                  compress_level=int(compress_level))
    return buf.getvalue()


def save_png(path: str | os.PathLike, arr: np.ndarray) -> Path:
    """Atomically write ``arr`` as a PNG file (see :func:`oneclass.io.write_bytes`)."""
    return _io.write_bytes(path, to_png(arr))


def grid(images: Sequence[np.ndarray], ncol: int, gap: int = 2, fill: int = 255) -> np.ndarray:
    """Tile images into a grid, row by row.

    Args:
        images: uint8 images (H, W), (H, W, 1) or (H, W, 3), possibly of different sizes; each
            is placed at the top-left of a cell as large as the largest image.
        ncol: number of columns (at most ``len(images)`` are used).
        gap: pixels between cells and around the grid.
        fill: gray level of the gaps and of the padding.

    Returns:
        uint8 (rows * (Hmax + gap) + gap, cols * (Wmax + gap) + gap, 3).
    """
    if len(images) == 0:
        raise ValueError("grid needs at least one image")
    if ncol < 1:
        raise ValueError(f"ncol must be >= 1, got {ncol}")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    rgbs = [as_rgb(im) for im in images]
    ch = max(im.shape[0] for im in rgbs)
    cw = max(im.shape[1] for im in rgbs)
    ncol = min(ncol, len(rgbs))
    nrow = -(-len(rgbs) // ncol)
    out = np.full((nrow * (ch + gap) + gap, ncol * (cw + gap) + gap, 3), fill, dtype=np.uint8)
    for i, im in enumerate(rgbs):
        r, c = divmod(i, ncol)
        y = gap + r * (ch + gap)
        x = gap + c * (cw + gap)
        out[y : y + im.shape[0], x : x + im.shape[1]] = im
    return out
