"""Semi-supervised training sets of the Deep SAD paper (Ruff et al., ICLR 2020, Sec. 4).

From the train split of a one-vs-rest benchmark (normal class C) the training set holds

- labeled normals:       ratio_known_normal of the whole training set (label 0),
- unlabeled normals:     the rest of class C (label -1),
- unlabeled anomalies:   ratio_pollution of the unlabeled data, from all other classes (-1),
- labeled anomalies:     ratio_known_outlier of the whole training set, drawn from the
                         train split of one known anomaly class (label 1).

The counts solve the same linear system as the reference (lukasruff/Deep-SAD-PyTorch,
``create_semisupervised_setting``): with no labeled normals and no pollution, the number of
labeled anomalies is ``ratio / (1 - ratio) * n_normal`` (e.g. 0.05 -> 315 for 6000 normals,
rounded down as in the reference).
Evaluation uses the full one-vs-rest test split.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .base import ANOMALOUS, NORMAL, UNLABELED, ArraySet
from .classic import ALIASES, CLASSES, FILES, _arrays, data_root


def semi_counts(n_normal: int, ratio_known_normal: float, ratio_known_outlier: float,
                ratio_pollution: float) -> tuple[int, int, int, int]:
    """``(known normal, unlabeled normal, unlabeled anomalies, known anomalies)`` counts."""
    for name, r in (("ratio_known_normal", ratio_known_normal),
                    ("ratio_known_outlier", ratio_known_outlier),
                    ("ratio_pollution", ratio_pollution)):
        if not 0.0 <= r < 1.0:
            raise DataError(f"{name} must be in [0, 1), got {r}")
    rn, ro, rp = ratio_known_normal, ratio_known_outlier, ratio_pollution
    # Unknowns (a, b, c, d): a + b = n_normal; a = rn * total; d = ro * total;
    # c = rp * (b + c), where total = a + b + c + d.
    a = np.array([[1, 1, 0, 0],
                  [1 - rn, -rn, -rn, -rn],
                  [-ro, -ro, -ro, 1 - ro],
                  [0, -rp, 1 - rp, 0]], dtype=np.float64)
    x = np.linalg.solve(a, np.array([n_normal, 0, 0, 0], dtype=np.float64))
    counts = tuple(int(v) for v in x)
    if min(counts) < 0:  # e.g. labeled normals and anomalies more than the whole set
        raise DataError(
            f"ratio_known_normal={rn}, ratio_known_outlier={ro}, ratio_pollution={rp} have no "
            f"solution for {n_normal} normal images (counts of labeled normals, unlabeled "
            f"normals, unlabeled anomalies, labeled anomalies: {', '.join(map(str, counts))}); "
            "ratio_known_normal + ratio_known_outlier must stay below 1, with room for the "
            "pollution")
    return counts  # type: ignore[return-value]


def semi_supervised(name: str, normal_class: int, *, known_outlier_class: int | None = None,
                    ratio_known_outlier: float = 0.0, ratio_known_normal: float = 0.0,
                    ratio_pollution: float = 0.0, seed: int = 0, root=None) -> ArraySet:
    """The training set of one Deep SAD experiment (see module docstring).

    Args:
        name: ``mnist``, ``fashion-mnist`` or ``cifar10``.
        normal_class: the normal class C.
        known_outlier_class: class of the labeled anomalies; default ``(C + 1) % 10``.
        seed: which samples are drawn.
    """
    name = ALIASES.get(name, name)
    if name not in FILES:
        raise DataError(f"unknown benchmark {name!r}; known: {', '.join(FILES)}")
    if isinstance(normal_class, bool) or not 0 <= int(normal_class) < 10:
        raise DataError(f"{name}: the normal class must be in 0..9, got {normal_class}")
    normal_class = int(normal_class)
    known = (normal_class + 1) % 10 if known_outlier_class is None else int(known_outlier_class)
    if known == normal_class or not 0 <= known < 10:
        raise DataError(f"{name}:{normal_class}: known anomaly class must be another class in "
                        f"0..9, got {known}")
    x, y = _arrays(name, str(data_root(root)), "train")
    idx_normal = np.flatnonzero(y == normal_class)
    idx_outlier = np.flatnonzero(y != normal_class)
    idx_known = np.flatnonzero(y == known)
    n_kn, n_un, n_uo, n_ko = semi_counts(len(idx_normal), ratio_known_normal,
                                         ratio_known_outlier, ratio_pollution)
    if n_ko > len(idx_known) or n_uo > len(idx_outlier) - n_ko:
        raise DataError(
            f"{name}:{normal_class}: not enough anomalies for ratio_known_normal="
            f"{ratio_known_normal}, ratio_known_outlier={ratio_known_outlier}, ratio_pollution="
            f"{ratio_pollution}: {n_ko} labeled anomalies of class {known} asked for "
            f"({len(idx_known)} exist), {n_uo} unlabeled anomalies ({len(idx_outlier) - n_ko} "
            "exist beside them)")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(idx_normal)
    polluting = rng.permutation(idx_outlier)
    labeled = rng.permutation(idx_known)[:n_ko]
    # the unlabeled anomalies are others than the labeled ones (drawn from the same classes,
    # an image could otherwise be in the set twice, once unlabeled and once labeled)
    polluting = polluting[~np.isin(polluting, labeled)][:n_uo]
    parts = [(perm[:n_kn], NORMAL), (perm[n_kn:n_kn + n_un], UNLABELED),
             (polluting, UNLABELED), (labeled, ANOMALOUS)]
    index = np.concatenate([p for p, _ in parts]).astype(np.int64)
    labels = np.concatenate([np.full(len(p), lab) for p, lab in parts]).astype(np.int64)
    desc = (f"{name}:{normal_class} ({CLASSES[name][normal_class]} normal, train; "
            f"{n_ko} labeled {CLASSES[name][known]}, {n_kn} labeled normal, "
            f"{n_uo} unlabeled anomalies)")
    return ArraySet(x[index], labels, names=[f"train_{i}" for i in index],
                    kinds=["good" if y[i] == normal_class else CLASSES[name][y[i]] for i in index],
                    description=desc)
