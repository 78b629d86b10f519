"""The classic one-vs-rest benchmarks: MNIST, Fashion-MNIST and CIFAR-10.

Paper protocol (Ruff et al. 2018 and later work): train on class C of the training split;
test on the whole test split, where C is normal (0) and the nine other classes anomalous (1).
Read from the npz files of the data root (``--data-root``, ``ONECLASS_DATA`` or
``../shared/data``); nothing is downloaded.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import ANOMALOUS, NORMAL, ArraySet

FILES = {"mnist": "mnist.npz", "fashion-mnist": "fashion_mnist.npz", "cifar10": "cifar10_jpeg.npz"}
CLASSES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                      "sneaker", "bag", "boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"],
}
ALIASES = {"fmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "cifar-10": "cifar10"}


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Resolve the benchmark data folder."""
    candidates = [root, os.environ.get("ONECLASS_DATA"), "../shared/data"]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    named = root or os.environ.get("ONECLASS_DATA")
    where = f"{named}" if named else "../shared/data"
    raise DataError(f"{where}: benchmark data folder not found; pass --data-root DIR or set "
                    "ONECLASS_DATA")


@lru_cache(maxsize=4)
def _arrays(name: str, root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    path = Path(root) / FILES[name]
    if not path.is_file():
        raise DataError(f"{path}: file not found (the {name} benchmark needs it)")
    try:
        with np.load(path) as d:
            x, y = _split_arrays(d, name, split)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: cannot read {split} split ({type(exc).__name__}: {exc}); "
                        "the file may be damaged") from None
    return x, y


def _split_arrays(d, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "cifar10":
        from PIL import Image

        buf, off = d[f"{split}_jpeg"], d[f"{split}_offsets"]
        x = np.stack([
            np.asarray(Image.open(io.BytesIO(buf[off[i]:off[i + 1]].tobytes())).convert("RGB"))
            for i in range(len(off) - 1)])
    else:
        x = d[f"x_{split}"]
    return x, d[f"y_{split}"].astype(np.int64)


def one_vs_rest(name: str, cls: int, split: str, root=None,
                anomalies: list[int] | None = None) -> ArraySet:
    """Class ``cls`` of ``name`` as the normal class, paper protocol.

    With ``anomalies`` the test split keeps only class ``cls`` and those classes.
    """
    name = ALIASES.get(name, name)
    if name not in FILES:
        raise DataError(f"unknown benchmark {name!r}; known: {', '.join(FILES)}")
    if not 0 <= cls < 10:
        raise DataError(f"{name}: class must be 0..9, got {cls}")
    x, y = _arrays(name, str(data_root(root)), "train" if split == "train" else "test")
    desc = f"{name}:{cls} ({CLASSES[name][cls]} normal, {split})"
    if split == "train":
        keep = np.flatnonzero(y == cls)
        return ArraySet(x[keep], np.full(len(keep), NORMAL), names=[f"train_{i}" for i in keep],
                        kinds=["good"] * len(keep), description=desc)
    keep = np.arange(len(y))
    if anomalies is not None:
        bad = [a for a in anomalies if not 0 <= a < 10 or a == cls]
        if bad:
            raise DataError(f"{name}: anomaly classes must be 0..9 and not the normal class {cls}, "
                            f"got {bad}")
        keep = np.flatnonzero(np.isin(y, [cls, *anomalies]))
        desc += " vs " + ", ".join(CLASSES[name][a] for a in anomalies)
    x, y = x[keep], y[keep]
    labels = np.where(y == cls, NORMAL, ANOMALOUS)
    kinds = ["good" if v == cls else CLASSES[name][v] for v in y]
    return ArraySet(x, labels, names=[f"test_{i}" for i in keep], kinds=kinds,
                    description=desc)


def all_images(name: str, split: str, root=None) -> ArraySet:
    """Every image of a split, unlabeled (for outlier exposure and reference sets)."""
    name = ALIASES.get(name, name)
    if name not in FILES:
        raise DataError(f"unknown benchmark {name!r}; known: {', '.join(FILES)}")
    x, y = _arrays(name, str(data_root(root)), "train" if split == "train" else "test")
    return ArraySet(x, np.full(len(x), -1), names=[f"{split}_{i}" for i in range(len(x))],
                    kinds=[CLASSES[name][v] for v in y], description=f"{name} (all, {split})")
