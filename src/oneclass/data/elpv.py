"""ELPV solar-cell electroluminescence images (Buerhop-Lutz et al.; Deitsch et al.).

The ``elpv-dataset`` package ships 2624 grayscale 300x300 cell images, each with the
probability (0, 1/3, 2/3, 1) that experts judged it defective and the module type.
One-class protocol used here: cells with probability 0 are normal; a seeded 80/20 split of
them gives training and held-back test normals; every cell with probability > 0 is an
anomalous test image. ``elpv:mono`` and ``elpv:poly`` keep the cells of one type from that
same split (so about, not exactly, 80 % of their normal cells train). No pixel masks exist.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..errors import DataError
from .base import ANOMALOUS, NORMAL, ArraySet


@lru_cache(maxsize=1)
def _load():
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError:
        raise DataError("the 'elpv' data needs the elpv-dataset package "
                        "(pip install elpv-dataset)") from None
    images, probs, types = load_dataset()
    return np.asarray(images, dtype=np.uint8), np.asarray(probs), np.asarray(types).astype(str)


def elpv(split: str, module_type: str | None = None, train_fraction: float = 0.8) -> ArraySet:
    """The ``train`` or ``test`` split; ``module_type`` 'mono' or 'poly' selects one type."""
    images, probs, types = _load()
    if module_type and module_type not in ("mono", "poly"):
        raise DataError(f"elpv:{module_type}: type must be 'mono' or 'poly'")
    # One split of all normal cells, then the type: a cell is a training cell or a test cell
    # whatever the spec, so a model trained on `elpv` evaluated on `elpv:mono` (or the other
    # way round) never meets its own training cells as test normals.
    normal = np.flatnonzero(probs == 0)
    rng = np.random.default_rng(20241)  # fixed split, independent of the model seed
    normal = rng.permutation(normal)
    n_train = int(round(len(normal) * train_fraction))
    is_train = np.zeros(len(images), dtype=bool)
    is_train[normal[:n_train]] = True
    idx = np.arange(len(images))
    if module_type:
        idx = idx[types == module_type]
    if split == "train":
        keep = idx[is_train[idx]]
        labels = np.full(len(keep), NORMAL)
    else:
        keep = idx[~is_train[idx]]
        labels = np.where(probs[keep] > 0, ANOMALOUS, NORMAL)
    kinds = ["good" if p == 0 else f"defect_p{p:.2f}" for p in probs[keep]]
    names = [f"cell_{i:04d}_{types[i]}" for i in keep]
    return ArraySet(images[keep], labels, names=names, kinds=kinds,
                    description=f"elpv{':' + module_type if module_type else ''} ({split})")
