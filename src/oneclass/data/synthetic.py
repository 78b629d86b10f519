"""Synthetic inspection images with defects and pixel masks, for tests and examples.

Everything here is deterministic: all randomness comes from one
``numpy.random.Generator`` seeded with ``seed``, so the same arguments always give the
same arrays (and files), and another seed gives another sample of the *same* distribution.

:func:`make_defects`
    An :class:`~oneclass.data.base.ArraySet` of surface images. Normal images are a
    textured surface drawn from one fixed distribution (it does not depend on the seed, so
    a training set made with one seed and a test set made with another match):

    * ``"stripes"``: oriented sinusoidal stripes (about 8 periods per image, 30 degrees)
      with small jitter of angle, period, phase, brightness and contrast;
    * ``"grid"``: two crossed stripe patterns (a woven / mesh look);
    * ``"blobs"``: a smooth random field (low-pass filtered noise).

    Every normal image gets mild gaussian noise. An anomalous image is a normal image with
    one or (30% of the time) two local defects, together covering roughly 1-8% of the
    image (a second defect gets a smaller size target than the first):

    * ``scratch``: a thin bright or dark line segment;
    * ``spot``: a rotated dark or bright ellipse (the texture shows faintly through it);
    * ``patch``: a rectangle of a different texture (finer perpendicular stripes, shifted
      brightness, stronger noise).

    The mask is exactly the set of pixels a defect touched. The kind of an anomalous image
    is the kind of its largest defect (first defects are balanced over the kinds). With
    ``channels=3`` all normal images share one brass-like tint, and spots and patches may
    change colour. Normal images come first, then the anomalous ones; names are
    ``good_0000``, ``good_0001``, ..., ``scratch_0000``, ``spot_0000``, ... With
    ``return_clean=True`` the defect-free version of every image is returned too.

:func:`write_mvtec`
    Writes such images as PNG files in the MVTec AD folder layout
    (``train/good``, ``test/good``, ``test/<kind>``, ``ground_truth/<kind>/<stem>_mask.png``).

:func:`make_classic`
    A tiny MNIST-like stand-in: ``num_classes`` distinct glyphs (ring, bars, crosses,
    outlines, disk, ...) drawn with random position, scale, rotation, stroke width and
    noise, for one-vs-rest experiments.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from ..io import atomic_dir
from .base import ANOMALOUS, NORMAL, ArraySet

TEXTURES = ("stripes", "grid", "blobs")
DEFECT_KINDS = ("scratch", "spot", "patch")

# Colour of normal surfaces (channels=3) and colours a spot or patch may take instead.
_TINT = np.array([1.0, 0.82, 0.55], dtype=np.float32)
_DEFECT_TINTS = np.array(
    [[0.85, 0.40, 0.18], [0.45, 0.60, 1.0], [0.55, 0.85, 0.45]], dtype=np.float32
)
_NOISE = 0.02  # std of the gaussian noise on normal images (intensity in [0, 1])


def _hw(size: int | tuple[int, int], minimum: int = 8) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        try:
            h, w = (int(s) for s in size)
        except (TypeError, ValueError):
            raise DataError(f"size must be an int or (height, width), got {size!r}") from None
    if h < minimum or w < minimum:
        raise DataError(f"size must be at least {minimum}x{minimum}, got {h}x{w}")
    return h, w


def _check_count(name: str, n: int) -> int:
    if int(n) != n or n < 0:
        raise DataError(f"{name} must be a non-negative integer, got {n!r}")
    return int(n)


def _check_channels(channels: int) -> int:
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    return int(channels)


# ----------------------------------------------------------------------------- textures


def _textures(rng: np.random.Generator, n: int, h: int, w: int, texture: str) -> np.ndarray:
    """``n`` defect-free surfaces, float32 ``(n, h, w)`` with values in about [0.2, 0.8]."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    period = min(h, w) / 8.0 * (1.0 + rng.uniform(-0.05, 0.05, n))
    mean = 0.5 + rng.uniform(-0.03, 0.03, n)
    contrast = 1.0 + rng.uniform(-0.1, 0.1, n)
    col = (slice(None), None, None)
    if texture in ("stripes", "grid"):
        base = 30.0 if texture == "stripes" else 0.0
        theta = np.deg2rad(base + rng.uniform(-3.0, 3.0, n))
        c, s = np.cos(theta)[col], np.sin(theta)[col]
        k = (2 * np.pi / period)[col]
        phase = rng.uniform(0, 2 * np.pi, (2, n))
        u = (c * x + s * y) * k + phase[0][col]
        if texture == "stripes":
            field = np.sin(u)
        else:
            v = (c * y - s * x) * k + phase[1][col]
            field = 0.5 * (np.sin(u) + np.sin(v))
        out = mean[col] + 0.28 * contrast[col] * field
    elif texture == "blobs":
        noise = rng.standard_normal((n, h, w))
        fy = np.fft.fftfreq(h)[:, None]
        fx = np.fft.rfftfreq(w)[None, :]
        sigma = 1.0 / (min(h, w) / 8.0)  # blobs about 1/8 of the image across
        lowpass = np.exp(-(fx**2 + fy**2) / (2 * sigma**2))
        field = np.fft.irfft2(np.fft.rfft2(noise) * lowpass, s=(h, w))
        field /= field.std(axis=(1, 2), keepdims=True) + 1e-8
        out = mean[col] + 0.12 * contrast[col] * np.clip(field, -2.5, 2.5)
    else:
        raise DataError(f"unknown texture {texture!r} (choose from {', '.join(TEXTURES)})")
    return out.astype(np.float32)


# ------------------------------------------------------------------------------ defects


def _box(cy: float, cx: float, r: float, h: int, w: int) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Pixel window around (cy, cx) of half-size r, with coordinates relative to the centre."""
    y0, y1 = max(int(np.floor(cy - r)), 0), min(int(np.ceil(cy + r)) + 1, h)
    x0, x1 = max(int(np.floor(cx - r)), 0), min(int(np.ceil(cx + r)) + 1, w)
    dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return slice(y0, y1), slice(x0, x1), dy - cy, dx - cx


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A uniform draw in [lo, hi], or the middle when the range is empty (tiny images)."""
    return float(rng.uniform(lo, hi)) if hi > lo else (lo + hi) / 2


def _scratch(rng, img, h, w, area):
    """Thin bright or dark segment; ``area`` is ignored (a scratch is thin by nature)."""
    m = min(h, w)
    thick = max(1.5, rng.uniform(1.5, 2.5) * m / 64.0)
    length = rng.uniform(0.35, 0.7) * m
    ang = rng.uniform(0, np.pi)
    half = np.array([np.sin(ang), np.cos(ang)]) * length / 2  # (dy, dx)
    margin = thick + 1
    cy = _uniform(rng, margin + abs(half[0]), h - 1 - margin - abs(half[0]))
    cx = _uniform(rng, margin + abs(half[1]), w - 1 - margin - abs(half[1]))
    sy, sx, dy, dx = _box(cy, cx, max(abs(half[0]), abs(half[1])) + thick, h, w)
    # distance of each pixel centre to the segment from -half to +half
    t = np.clip((dy * half[0] + dx * half[1]) / (half @ half), -1.0, 1.0)
    dist = np.hypot(dy - t * half[0], dx - t * half[1])
    local = dist <= thick / 2
    bright = rng.random() < 0.5
    value = (0.93 if bright else 0.07) + rng.normal(0, 0.015, local.shape)
    region = img[sy, sx]
    region[local] = value[local]
    return sy, sx, local


def _spot(rng, img, h, w, area):
    """Rotated ellipse, much darker or brighter than the surface."""
    ratio = rng.uniform(0.5, 1.0)
    ra = np.sqrt(area * h * w / (np.pi * ratio))
    ra = min(max(ra, 2.0), (min(h, w) - 3) / 2)
    rb = max(ra * ratio, 1.5)
    cy = _uniform(rng, ra + 1, h - 2 - ra)
    cx = _uniform(rng, ra + 1, w - 2 - ra)
    ang = rng.uniform(0, np.pi)
    sy, sx, dy, dx = _box(cy, cx, ra + 1, h, w)
    u = dx * np.cos(ang) + dy * np.sin(ang)
    v = -dx * np.sin(ang) + dy * np.cos(ang)
    local = (u / ra) ** 2 + (v / rb) ** 2 <= 1.0
    region = img[sy, sx]
    shade = 0.3 * region + (0.7 if rng.random() < 0.5 else 0.0)
    region[local] = shade[local]
    return sy, sx, local


def _patch(rng, img, h, w, area, period):
    """Axis-aligned rectangle of another texture: finer perpendicular stripes, more noise."""
    aspect = rng.uniform(0.7, 1.4)
    side = np.sqrt(area * h * w)
    ph = int(np.clip(round(side * np.sqrt(aspect)), 3, h - 4))
    pw = int(np.clip(round(side / np.sqrt(aspect)), 3, w - 4))
    y0 = int(rng.integers(1, h - ph))
    x0 = int(rng.integers(1, w - pw))
    sy, sx = slice(y0, y0 + ph), slice(x0, x0 + pw)
    yy, xx = np.mgrid[0:ph, 0:pw].astype(np.float32)
    theta = np.deg2rad(120.0 + rng.uniform(-10, 10))
    k = 2 * np.pi / (period * rng.uniform(0.35, 0.5))
    stripes = np.sin((np.cos(theta) * xx + np.sin(theta) * yy) * k + rng.uniform(0, 2 * np.pi))
    shift = rng.choice([-0.15, 0.15])
    tex = 0.5 + shift + 0.3 * stripes + rng.normal(0, 0.06, (ph, pw))
    img[sy, sx] = tex
    return sy, sx, np.ones((ph, pw), bool)


def _add_defects(rng, img, kinds, period, tints):
    """Draw ``kinds`` into ``img`` in place; return the mask and the kind of the largest."""
    h, w = img.shape
    mask = np.zeros((h, w), bool)
    main, main_area = kinds[0], -1
    if len(kinds) == 1:
        areas = [rng.uniform(0.015, 0.06)]
    else:
        first = rng.uniform(0.012, 0.04)
        areas = [first, first * rng.uniform(0.5, 0.9)]
    for kind, area in zip(kinds, areas):
        recolour = rng.random() < 0.5
        tint = _DEFECT_TINTS[rng.integers(len(_DEFECT_TINTS))]
        if kind == "scratch":
            sy, sx, local = _scratch(rng, img, h, w, area)
        elif kind == "spot":
            sy, sx, local = _spot(rng, img, h, w, area)
        else:
            sy, sx, local = _patch(rng, img, h, w, area, period)
        if not local.any():  # cannot happen with sizes >= 8, but a mask must never be empty
            local = np.zeros_like(local)
            local[local.shape[0] // 2, local.shape[1] // 2] = True
        mask[sy, sx] |= local
        if local.sum() > main_area:
            main, main_area = kind, int(local.sum())
        if tints is not None and kind != "scratch" and recolour:
            tints[sy, sx][local] = tint
    return mask, main


def _to_uint8(gray: np.ndarray, tints: np.ndarray | None) -> np.ndarray:
    img = gray[..., None] if tints is None else gray[..., None] * tints
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def make_defects(
    n_normal: int,
    n_anomalous: int,
    size: int | tuple[int, int] = 64,
    channels: int = 1,
    seed: int = 0,
    texture: str = "stripes",
    defects: Sequence[str] = DEFECT_KINDS,
    return_clean: bool = False,
) -> ArraySet | tuple[ArraySet, np.ndarray]:
    """Synthetic surface images: ``n_normal`` normal ones, then ``n_anomalous`` with defects.

    Args:
        n_normal: number of defect-free images (label 0, kind ``"good"``).
        n_anomalous: number of images with one or two defects (label 1).
        size: image size, ``N`` for NxN or ``(height, width)``; at least 8.
        channels: 1 (gray) or 3 (tinted colour).
        seed: seed of the random generator; the same arguments give the same images.
        texture: ``"stripes"``, ``"grid"`` or ``"blobs"`` (the normal surface).
        defects: defect kinds to draw from (``"scratch"``, ``"spot"``, ``"patch"``).
        return_clean: also return the defect-free version of every image.

    Returns:
        An ArraySet with uint8 images ``(N, H, W, C)``, labels, bool masks ``(N, H, W)``
        (empty for normal images), names and kinds; with ``return_clean`` a pair
        ``(set, clean)`` where ``clean`` is uint8 ``(N, H, W, C)`` (equal to the images
        for normal ones).
    """
    n_normal = _check_count("n_normal", n_normal)
    n_anomalous = _check_count("n_anomalous", n_anomalous)
    channels = _check_channels(channels)
    h, w = _hw(size)
    if texture not in TEXTURES:
        raise DataError(f"unknown texture {texture!r} (choose from {', '.join(TEXTURES)})")
    defects = tuple(defects)
    if not defects or any(d not in DEFECT_KINDS for d in defects):
        raise DataError(
            f"defects must be a non-empty selection of {', '.join(DEFECT_KINDS)}, got {defects!r}"
        )
    rng = np.random.default_rng(seed)
    n = n_normal + n_anomalous
    gray = _textures(rng, n, h, w, texture)
    gray += rng.normal(0, _NOISE, gray.shape).astype(np.float32)
    np.clip(gray, 0.0, 1.0, out=gray)
    clean = gray.copy() if return_clean else None

    masks = np.zeros((n, h, w), bool)
    main = np.resize(rng.permutation(defects), n_anomalous)
    rng.shuffle(main)
    kinds = ["good"] * n_normal
    tints = np.broadcast_to(_TINT, (n, h, w, 3)).copy() if channels == 3 else None
    period = min(h, w) / 8.0
    for j in range(n_anomalous):
        i = n_normal + j
        chosen = [str(main[j])]
        if rng.random() < 0.3:
            chosen.append(str(rng.choice(defects)))
        masks[i], kind = _add_defects(
            rng, gray[i], chosen, period, None if tints is None else tints[i]
        )
        kinds.append(kind)

    counters: dict[str, int] = {}
    names = []
    for kind in kinds:
        names.append(f"{kind}_{counters.get(kind, 0):04d}")
        counters[kind] = counters.get(kind, 0) + 1
    labels = np.array([NORMAL] * n_normal + [ANOMALOUS] * n_anomalous, dtype=np.int64)
    images = _to_uint8(gray, tints)
    out = ArraySet(images, labels, masks, names, kinds, description="synthetic")
    if return_clean:
        clean_tints = None if tints is None else np.broadcast_to(_TINT, tints.shape)
        return out, _to_uint8(clean, clean_tints)
    return out


def _save(arr: np.ndarray, path: Path) -> None:
    img = Image.fromarray(arr[..., 0]) if arr.shape[-1] == 1 else Image.fromarray(arr)
    img.save(path)


def write_mvtec(
    root: str | Path,
    n_train: int = 60,
    n_test_good: int = 20,
    n_test_defect: int = 30,
    size: int | tuple[int, int] = 64,
    channels: int = 1,
    seed: int = 0,
    texture: str = "stripes",
) -> Path:
    """Write synthetic images as PNG files in the MVTec AD folder layout.

    Creates ``root/train/good/000.png ...``, ``root/test/good/...``, ``root/test/<kind>/...``
    for every defect kind that occurs, and ``root/ground_truth/<kind>/<stem>_mask.png``
    (grayscale 0/255, same size as its image). ``root`` must not exist or be empty (files of an
    earlier call would mix with the new ones); the folder appears complete or not at all.
    Returns ``root`` as a Path.
    """
    n_train = _check_count("n_train", n_train)
    n_test_good = _check_count("n_test_good", n_test_good)
    data = make_defects(n_train + n_test_good, n_test_defect, size, channels, seed, texture)
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(f"{root}: exists and is not an empty folder; write_mvtec writes a new one")

    def fill(tmp: Path) -> None:
        counts: dict[tuple[str, str], int] = {}
        width = max(3, len(str(len(data))))
        for i in range(len(data)):
            kind = data.kinds[i]
            split = "train" if i < n_train else "test"
            k = counts.get((split, kind), 0)
            counts[(split, kind)] = k + 1
            stem = f"{k:0{width}d}"
            folder = tmp / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            _save(data.images[i], folder / f"{stem}.png")
            if data.labels[i] == ANOMALOUS:
                gt = tmp / "ground_truth" / kind
                gt.mkdir(parents=True, exist_ok=True)
                mask = data.masks[i].astype(np.uint8) * 255
                Image.fromarray(mask).save(gt / f"{stem}_mask.png")

    return atomic_dir(root, fill)


# ------------------------------------------------------------------------ classic glyphs

# Glyphs in canonical coordinates [-1, 1]^2 (x right, y down): lists of primitives
# ("seg", x0, y0, x1, y1), ("ring", r) or ("disk", r).
_GLYPHS: list[list[tuple]] = [
    [("ring", 0.75)],  # 0 ring
    [("seg", 0.0, -0.85, 0.0, 0.85)],  # 1 vertical bar
    [("seg", -0.85, 0.0, 0.85, 0.0)],  # 2 horizontal bar
    [("seg", 0.0, -0.8, 0.0, 0.8), ("seg", -0.8, 0.0, 0.8, 0.0)],  # 3 plus
    [("seg", -0.7, -0.7, 0.7, 0.7), ("seg", -0.7, 0.7, 0.7, -0.7)],  # 4 x-cross
    [  # 5 square outline
        ("seg", -0.7, -0.7, 0.7, -0.7), ("seg", 0.7, -0.7, 0.7, 0.7),
        ("seg", 0.7, 0.7, -0.7, 0.7), ("seg", -0.7, 0.7, -0.7, -0.7),
    ],
    [  # 6 triangle outline
        ("seg", 0.0, -0.8, 0.8, 0.65), ("seg", 0.8, 0.65, -0.8, 0.65),
        ("seg", -0.8, 0.65, 0.0, -0.8),
    ],
    [("disk", 0.5)],  # 7 filled disk
    [("seg", -0.75, -0.4, 0.75, -0.4), ("seg", -0.75, 0.4, 0.75, 0.4)],  # 8 "="
    [("seg", -0.5, -0.8, -0.5, 0.7), ("seg", -0.5, 0.7, 0.6, 0.7)],  # 9 "L"
    [("seg", -0.75, -0.7, 0.75, -0.7), ("seg", 0.0, -0.7, 0.0, 0.8)],  # 10 "T"
    [("seg", -0.6, 0.8, 0.0, -0.8), ("seg", 0.0, -0.8, 0.6, 0.8)],  # 11 "^"
]


def _glyph_distance(glyph: list[tuple], px: np.ndarray, py: np.ndarray) -> np.ndarray:
    d = np.full(px.shape, np.inf, dtype=np.float32)
    for prim in glyph:
        if prim[0] == "seg":
            x0, y0, x1, y1 = prim[1:]
            ex, ey = x1 - x0, y1 - y0
            t = np.clip(((px - x0) * ex + (py - y0) * ey) / (ex * ex + ey * ey), 0.0, 1.0)
            di = np.hypot(px - x0 - t * ex, py - y0 - t * ey)
        elif prim[0] == "ring":
            di = np.abs(np.hypot(px, py) - prim[1])
        else:  # disk
            di = np.maximum(np.hypot(px, py) - prim[1], 0.0)
        d = np.minimum(d, di)
    return d


def make_classic(
    n_per_class: int,
    num_classes: int = 10,
    size: int | tuple[int, int] = 28,
    channels: int = 1,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A tiny MNIST-like data set: one simple glyph per class on a dark background.

    Class ``k`` is glyph ``k`` of: ring, vertical bar, horizontal bar, plus, x-cross, square
    outline, triangle outline, filled disk, "=", "L", "T", "^" (at most 12 classes). Each
    image has random position (about +-6%), scale, rotation (+-15 degrees), stroke width
    and gaussian noise; with ``channels=3`` the glyph gets a random bright colour.

    Returns:
        ``(images, labels)``: uint8 ``(N, H, W)`` (gray) or ``(N, H, W, 3)``, and int64
        labels ``(N,)`` sorted by class (``n_per_class`` of each).
    """
    n_per_class = _check_count("n_per_class", n_per_class)
    channels = _check_channels(channels)
    if not 1 <= num_classes <= len(_GLYPHS):
        raise DataError(f"num_classes must be between 1 and {len(_GLYPHS)}, got {num_classes!r}")
    h, w = _hw(size)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    half = min(h, w) / 2.0
    col = (slice(None), None, None)
    out = []
    for k in range(num_classes):
        n = n_per_class
        scale = half * rng.uniform(0.65, 0.85, n)  # pixels per canonical unit
        ang = np.deg2rad(rng.uniform(-15, 15, n))
        cy = (h - 1) / 2 + rng.uniform(-0.06, 0.06, n) * h
        cx = (w - 1) / 2 + rng.uniform(-0.06, 0.06, n) * w
        stroke = min(h, w) / 10.0 * rng.uniform(0.8, 1.3, n)
        # pixel -> canonical coordinates (inverse rotation and scale)
        dx, dy = xx - cx[col], yy - cy[col]
        c, s = np.cos(ang)[col], np.sin(ang)[col]
        px = (c * dx + s * dy) / scale[col]
        py = (-s * dx + c * dy) / scale[col]
        dist = _glyph_distance(_GLYPHS[k], px, py) * scale[col]  # in pixels
        ink = np.clip(stroke[col] / 2 - dist + 0.5, 0.0, 1.0)
        ink = ink * rng.uniform(0.8, 1.0, n)[col] + rng.normal(0, 0.04, ink.shape)
        out.append(np.clip(ink, 0.0, 1.0).astype(np.float32))
    gray = np.concatenate(out) if out else np.zeros((0, h, w), np.float32)
    if channels == 3:
        colour = rng.uniform(0.5, 1.0, (len(gray), 1, 1, 3)).astype(np.float32)
        gray = gray[..., None] * colour
    images = np.clip(gray * 255.0 + 0.5, 0, 255).astype(np.uint8)
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), n_per_class)
    return images, labels
