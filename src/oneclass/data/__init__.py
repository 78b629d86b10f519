"""Data sources, chosen by a specification string.

- a folder in MVTec AD layout (``train/good``, ``test/<type>``, ``ground_truth/<type>``);
- a plain folder (or a single image file): normal when training, unlabeled otherwise (a
  folder holding MVTec-layout folders, such as the MVTec AD root, is an error);
- ``mnist:C``, ``fashion-mnist:C``, ``cifar10:C``: one-vs-rest with class C normal;
  ``NAME:C:A[,A]`` tests class C against the classes A only (``fashion-mnist:7:9``);
  ``mnist``, ``cifar10``, ... (or ``:all``): every image, unlabeled (outlier exposure);
- ``elpv`` / ``elpv:mono`` / ``elpv:poly``: solar cells from the elpv-dataset package;
- ``synthetic`` / ``synthetic:TEXTURE[:HxW][:rgb]``: generated defect images with masks
  (tests, demos, checks of the defaults on sizes and colours no benchmark has), 64x64 gray
  unless told: ``synthetic:grid:120x200:rgb``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError
from .base import (
    ANOMALOUS,
    NORMAL,
    UNLABELED,
    ArraySet,
    Concat,
    FileSet,
    ImageSet,
    Preprocess,
    Sample,
)
from .classic import CLASSES, one_vs_rest
from .folder import is_mvtec, mvtec, plain
from .screen import screen

SPLITS = ("train", "test")
BENCHMARKS = ("mnist", "fashion-mnist", "fashion_mnist", "fmnist", "cifar10", "cifar-10")


def load(spec: str, split: str = "train", root: str | None = None, *,
         masks: bool = True) -> ImageSet:
    """Load the ``split`` ("train" or "test") of the data named by ``spec``; ``masks=False``
    leaves the ground-truth masks of an MVTec-layout folder unread."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    spec = str(spec)
    path = Path(spec)
    if path.exists():
        if path.is_dir() and is_mvtec(path):
            return mvtec(path, split, masks)
        return plain(path, split)
    name, _, arg = spec.partition(":")
    key = name.lower()
    if key in BENCHMARKS:
        if arg.strip() in ("", "all"):
            from .classic import all_images

            return all_images(key, split, root)
        classes = _classes(arg)
        if classes is None:
            raise DataError(f"{spec}: give the normal class as {name}:C with C in 0..9 "
                            f"(or {name}:C:A[,A] to test against the classes A only)")
        return one_vs_rest(key, classes[0], split, root, anomalies=classes[1])
    if key == "elpv":
        from .elpv import elpv

        return elpv(split, arg or None)
    if key == "natural":
        from .natural import natural

        return natural(split, arg)
    if key == "synthetic":
        from .synthetic import make_defects

        texture, size, channels = _synthetic_options(spec, arg)
        counts, seed = ((200, 0), 1) if split == "train" else ((40, 40), 2)
        try:
            return make_defects(*counts, size=size, channels=channels, seed=seed, texture=texture)
        except DataError as exc:
            raise DataError(f"{spec}: {exc}") from None
    if ":" in spec or not any(sep in spec for sep in "/\\."):
        raise DataError(
            f"{spec}: not a folder and not a known dataset (mnist:C, fashion-mnist:C, "
            "cifar10:C, elpv, synthetic, natural)")
    raise DataError(f"{spec}: no such file or folder")


def canonical(spec: str) -> str:
    """One spelling of a data spec, to tell whether two specs name the same data.

    A folder or file that exists is its resolved absolute path (``R``, ``R/``, ``./R``, a
    symbolic link to it); a benchmark is lower case with its alias resolved and its classes as
    integers (``FMNIST:03`` and ``fashion_mnist:3`` are ``fashion-mnist:3``, ``mnist:all`` is
    ``mnist``); ``elpv`` specs are lower case; anything else is kept as written.
    """
    from .classic import ALIASES

    spec = str(spec)
    if Path(spec).exists():
        return os.path.realpath(spec)
    name, _, arg = spec.partition(":")
    key = name.strip().lower()
    if key in BENCHMARKS:
        key = ALIASES.get(key, key)
        if arg.strip() in ("", "all"):
            return key
        classes = _classes(arg)
        if classes is None:
            return spec  # not a valid spec: loading it names the problem
        cls, anomalies = classes
        return f"{key}:{cls}" + (":" + ",".join(map(str, sorted(set(anomalies))))
                                 if anomalies else "")
    if key == "elpv":
        return spec.strip().lower()
    if key == "synthetic":  # options in any order, defaults written out
        try:
            texture, (h, w), c = _synthetic_options(spec, arg)
        except DataError:
            return spec
        return f"synthetic:{texture.lower()}:{h}x{w}:{'rgb' if c == 3 else 'gray'}"
    return spec


def _classes(arg: str) -> tuple[int, list[int] | None] | None:
    """The normal class and the anomaly classes (None: every other) of a benchmark spec's
    ``C[:A[,A]]``; None when they are not whole numbers (isdigit() accepts '²', int() does
    not). The range 0..9 is checked where the data is read."""
    cls, _, rest = arg.partition(":")
    parts = [a.strip() for a in rest.split(",")] if rest else []
    if not cls.strip().isdecimal() or not all(a.isdecimal() for a in parts):
        return None
    return int(cls), [int(a) for a in parts] or None


def benchmark_classes(spec: str) -> tuple[str, int | None, list[int] | None] | None:
    """``(benchmark, normal class, anomaly classes)`` of a one-vs-rest spec (``mnist:3:5`` is
    ``("mnist", 3, [5])``, ``mnist`` is ``("mnist", None, None)``: every class); None for any
    other spec, and for one whose classes are not whole numbers."""
    c = canonical(spec)
    name, _, arg = c.partition(":")
    if name not in CLASSES:
        return None
    if not arg:
        return name, None, None
    classes = _classes(arg)
    return None if classes is None else (name, *classes)


def source(spec: str) -> str:
    """The collection whose image names identify the images of ``spec``: every class of a
    benchmark shares the test images ``test_<index>`` of that benchmark (``mnist:3``,
    ``mnist:5`` and ``mnist:3:5`` are ``mnist``), every ELPV spec the cells ``cell_<index>``
    of ``elpv``; a folder is its resolved path (names are relative to it). A ``synthetic``
    set is ``synthetic:TEXTURE:HxW`` in either colour (the same draws, tinted; another size
    draws other images under the same names), ``natural`` every count and size of it.
    Anything else is its :func:`canonical` spelling. A source is its own source."""
    c = canonical(spec)
    name = c.partition(":")[0]
    if name in CLASSES or name == "elpv":
        return name
    if name.strip().lower() == "natural":
        return "natural"
    if c.startswith("synthetic:"):
        return ":".join(c.split(":")[:3])
    return c


def generator(spec: str) -> str | None:
    """The generator of a generated set: ``synthetic:TEXTURE`` (any size or colour: the same
    textures) or ``natural`` (any count or size: crops of the same photographs); None for
    other data."""
    c = source(spec)
    if c == "natural" or c.startswith("synthetic:"):
        return ":".join(c.split(":")[:2])
    return None


def _synthetic_options(spec: str, arg: str) -> tuple[str, tuple[int, int], int]:
    """``TEXTURE[:HxW][:rgb|gray]`` of a ``synthetic`` spec (texture first, the rest in any
    order) as (texture, (height, width), channels)."""
    texture, *opts = arg.split(":") if arg else ["stripes"]
    t = texture.strip().lower()
    if t in ("rgb", "gray") or t.replace("x", "").isdecimal():  # no texture: an option first
        texture, opts = "", [texture, *opts]
    size, channels = (64, 64), 1
    for opt in opts:
        o = opt.strip().lower()
        parts = o.split("x")
        if o in ("rgb", "gray"):
            channels = 3 if o == "rgb" else 1
        elif 1 <= len(parts) <= 2 and all(p.isdecimal() for p in parts):
            size = (int(parts[0]), int(parts[-1]))
        else:
            raise DataError(f"{spec}: {opt!r} is neither a size (HxW or N) nor rgb/gray; "
                            "write synthetic:TEXTURE[:HxW][:rgb]")
    return texture.strip() or "stripes", size, channels


def concat(*sets: ImageSet) -> ImageSet:
    """One image set made of several (labels, masks and names kept)."""
    return Concat(list(sets))


__all__ = ["benchmark_classes", "canonical", "concat", "load", "source", "screen", "ImageSet",
           "ArraySet", "FileSet", "Preprocess", "Sample", "NORMAL", "ANOMALOUS", "UNLABELED",
           "CLASSES"]
