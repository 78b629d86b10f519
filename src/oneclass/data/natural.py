"""Natural-image outlier exposure without a download: random crops of the public-domain
photographs that ship with scikit-image.

Outlier exposure needs images that are *not* the normal class; for natural-image tasks the
papers use a large natural image set (80 Million Tiny Images, CIFAR-100, ImageNet-22k), which
a machine without internet lacks. Ruff et al. (2021, "Rethinking assumptions in deep anomaly
detection") found that even a handful of natural images helps much. This source crops
(seeded, at random positions, scales from 1/16 of a photo's shorter side to all of it,
aspect ratios 3:4 to 4:3, mirrored half of the time) fourteen scikit-image sample photographs
and resizes the crops to ``size`` x ``size`` RGB (grayscale photos are replicated). Each of
them is public domain or CC0 by its scikit-image description.

Left out: ``chelsea`` (a cat) and ``horse``, which show CIFAR-10 classes; the synthetic
images (charts, logos, the phantom); and the photos whose description states no licence
(the motorcycle stereo pair, moon, page).

Spec: ``natural`` (10000 crops of 64x64), ``natural:N`` or ``natural:N:SIZE``. The train and
test splits draw different crops.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import ArraySet

PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "ihc.png",
          "retina.jpg", "camera.png", "brick.png", "grass.png", "gravel.png", "coins.png",
          "cell.png", "text.png", "clock_motion.png")
DEFAULT_N, DEFAULT_SIZE = 10000, 64


def photo_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("natural: needs scikit-image, whose sample photographs it crops "
                        "(pip install scikit-image, or pip install '.[natural]' in a checkout "
                        "of oneclass)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


@lru_cache(maxsize=1)
def photos() -> tuple[np.ndarray, ...]:
    """The photographs as uint8 RGB arrays ``(H, W, 3)``."""
    from PIL import Image

    out, folder = [], photo_dir()
    for name in PHOTOS:
        path = folder / name
        try:
            with Image.open(path) as im:
                out.append(np.asarray(im.convert("RGB")))
        except OSError as exc:
            raise DataError(f"{path}: cannot read this scikit-image sample photo ({exc})") from None
    return tuple(out)


def natural_crops(n: int = DEFAULT_N, size: int = DEFAULT_SIZE, seed: int = 0) -> np.ndarray:
    """``n`` random crops ``(n, size, size, 3)`` uint8 of the photographs (see module doc)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pics = photos()
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        pic = pics[rng.integers(len(pics))]
        h, w = pic.shape[:2]
        side = min(h, w) * np.exp(rng.uniform(np.log(1 / 16), 0.0))
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = int(min(h, max(8, round(side * np.sqrt(aspect)))))
        cw = int(min(w, max(8, round(side / np.sqrt(aspect)))))
        top, left = rng.integers(h - ch + 1), rng.integers(w - cw + 1)
        crop = Image.fromarray(pic[top:top + ch, left:left + cw])
        crop = crop.resize((size, size), Image.BILINEAR, reducing_gap=2.0)
        arr = np.asarray(crop)
        out[i] = arr[:, ::-1] if rng.random() < 0.5 else arr
    return out


def natural(split: str, arg: str = "") -> ArraySet:
    """The ``natural[:N[:SIZE]]`` data spec (all images normal: label 0)."""
    parts = [p.strip() for p in arg.split(":")] if arg else []
    if len(parts) > 2 or not all(p.isdecimal() and int(p) > 0 for p in parts):
        raise DataError(f"natural:{arg}: give natural, natural:N or natural:N:SIZE with positive "
                        "whole numbers (N crops of SIZE x SIZE pixels)")
    n = int(parts[0]) if parts else DEFAULT_N
    size = int(parts[1]) if len(parts) > 1 else DEFAULT_SIZE
    if size < 8:
        raise DataError(f"natural:{arg}: SIZE must be at least 8 pixels")
    images = natural_crops(n, size, seed=0 if split == "train" else 1)
    return ArraySet(images, names=[f"natural_{split}_{i:05d}" for i in range(n)],
                    description=f"natural:{arg}" if arg else "natural")
