"""AnoGAN's scoring settings chosen on a validation split of CIFAR-10's training images.

    PYTHONPATH=src python scripts/anogan_select.py --data-root ../shared/data \
        --out docs/results/probes/anogan-cifar10-select.jsonl

The test images are never read. For each normal class c (0..9):

- the class's 5000 training images are split once (a fixed draw, the same for every run):
  300 are kept back as validation normals, AnoGAN trains on the other 4700 with the
  suite row "GCN-l1 + min-max scaling, 40 epochs, width 64" (seed 0);
- 300 validation anomalies are drawn (fixed) from the training images of the nine other
  classes;
- the trained model scores those 600 images once per setting of the grid below, with
  ``set_scoring_params`` (the same weights for every setting), and one JSON line per
  setting records the validation AUROC.

The setting with the highest validation AUROC averaged over the ten classes is the
choice (on a tie, the one with fewer search steps); ``--summary`` prints the table. The
choice is then run on the test set by the benchmark suite, with the two seeds of the
width-64 row. The run resumes: classes whose lines are all in ``--out`` are skipped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from oneclass.bench import SUITES
from oneclass.data.base import ArraySet
from oneclass.data.classic import all_images, one_vs_rest
from oneclass.metrics import image_metrics
from oneclass.registry import create

ROW = "GCN-l1 + min-max scaling, 40 epochs, width 64"
LAMS = (0.1, 0.3, 0.6, 0.9)  # weight of the discrimination loss; the default is 0.1
STEPS = (0, 25, 50, 100)  # Adam steps of the search; the suites' default is 100
N_VAL = 300  # validation normals, and as many validation anomalies


def row_params() -> dict:
    """The training parameters of the suite row the selection starts from."""
    jobs = [j for j in SUITES["anogan-cifar10"] if j.get("label", "").startswith(ROW)]
    if not jobs:
        raise SystemExit(f"no row {ROW!r} in the anogan-cifar10 suite")
    return dict(jobs[0]["params"])


def validation_split(cls: int, root: str) -> tuple[ArraySet, ArraySet]:
    """Training images of class ``cls`` minus the validation normals, and the validation set
    (``N_VAL`` normals of the class, ``N_VAL`` images of the other classes; training split)."""
    normal = one_vs_rest("cifar10", cls, "train", root)
    rng = np.random.default_rng(7000 + cls)
    order = rng.permutation(len(normal))
    val_idx, train_idx = np.sort(order[:N_VAL]), np.sort(order[N_VAL:])
    every = all_images("cifar10", "train", root)
    others = np.flatnonzero(_classes(every) != cls)
    anom_idx = np.sort(rng.choice(others, N_VAL, replace=False))
    x = np.concatenate([normal.images[val_idx], every.images[anom_idx]])
    labels = np.r_[np.zeros(N_VAL, np.int64), np.ones(N_VAL, np.int64)]
    val = ArraySet(x, labels, names=[f"val_{i}" for i in range(len(x))],
                   description=f"cifar10:{cls} validation (training split)")
    return normal.subset(train_idx), val


def _classes(every: ArraySet) -> np.ndarray:
    from oneclass.data.classic import CLASSES

    index = {name: i for i, name in enumerate(CLASSES["cifar10"])}
    return np.array([index[k] for k in every.kinds])


def run_class(cls: int, root: str, params: dict, out: Path) -> None:
    train, val = validation_split(cls, root)
    det = create("anogan", **params, seed=0)
    t0 = time.perf_counter()
    det.fit(train)
    train_s = round(time.perf_counter() - t0, 1)
    lines = []
    for lam in LAMS:
        for steps in STEPS:
            det.set_scoring_params(lam=lam, search_steps=steps)
            t0 = time.perf_counter()
            scores = det.score(val)
            rec = {"data": f"cifar10:{cls}", "params": params, "lam": lam, "search_steps": steps,
                   "val_auroc": round(100 * image_metrics(val.labels, scores)["image_auroc"], 2),
                   "n_train": len(train), "n_val": len(val), "train_seconds": train_s,
                   "score_seconds": round(time.perf_counter() - t0, 1)}
            print(json.dumps(rec), flush=True)
            lines.append(json.dumps(rec))
    with open(out, "a") as f:  # a class's lines land together, so a resume never halves one
        f.write("\n".join(lines) + "\n")


def summary(out: Path) -> None:
    if not out.is_file():
        raise SystemExit(f"{out}: no finished class yet")
    recs = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    table: dict[tuple, dict[str, float]] = {}
    for r in recs:
        table.setdefault((r["lam"], r["search_steps"]), {})[r["data"]] = r["val_auroc"]
    classes = sorted({r["data"] for r in recs})
    print(f"{len(classes)} classes: {', '.join(classes)}")
    rows = sorted(((float(np.mean(list(v.values()))), -k[1], k) for k, v in table.items()),
                  reverse=True)
    for mean, _, (lam, steps) in rows:
        print(f"lam {lam:<4} steps {steps:<4} mean validation AUROC {mean:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--out", type=Path, required=True, help="append the JSON lines here")
    ap.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
    ap.add_argument("--summary", action="store_true", help="only print the table of --out")
    args = ap.parse_args()
    if args.summary:
        summary(args.out)
        return
    params = row_params()
    done: dict[str, int] = {}
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            if line.strip():
                d = json.loads(line)["data"]
                done[d] = done.get(d, 0) + 1
    for cls in (int(c) for c in args.classes.split(",")):
        if done.get(f"cifar10:{cls}", 0) >= len(LAMS) * len(STEPS):
            print(f"cifar10:{cls}: done")
            continue
        run_class(cls, args.data_root, params, args.out)
    summary(args.out)


if __name__ == "__main__":
    main()
