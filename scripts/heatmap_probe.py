"""Where an FCDD run's pixel AUROC is lost, and what positional calibrations of its maps do.

    PYTHONPATH=src python scripts/heatmap_probe.py runs/kol [runs/kol-s1 ...]

For each trained run (a folder written by ``oneclass train`` on data with masks, e.g.
``oneclass train --method fcdd --data ../shared/data/kolektorsdd --out runs/kol``) it prints
the pixel AUROC and AUPRO of the raw maps and of three calibrations against the mean
upsampled map ``mu`` (and per-pixel std ``sd``) of all the run's normal training images:
minus ``mu``; the z-score ``(m - mu) / (sd + 0.1 mean(sd))``; and the ratio
``m / (mu + 0.1 mean(mu))``, which is what ``map_norm=position`` computes (there from the
images fit used, here from all training images, so the figures can differ slightly). Then
the defective test images whose defect pixels rank lowest among all normal pixels (mean
rank, in %), and the pixel AUROC without the normal test image whose map has most pixels
above the median defect pixel.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from oneclass import data as data_mod
from oneclass import runs
from oneclass.data.base import loader
from oneclass.heatmaps import receptive_upsample
from oneclass.metrics import pixel_metrics


def raw_maps(det, images) -> np.ndarray:
    """Upsampled maps without any calibration (as ``map_norm=none``)."""
    det.model_.eval()
    out = []
    with torch.no_grad():
        for xb in det.batches(images):
            A = det._A(xb)
            out.append(receptive_upsample(A, det.model_.rf, tuple(xb.shape[2:]), det._sigma()).cpu())
    return torch.cat(out).numpy()


def probe(run: Path, worst: int = 5) -> None:
    det, cfg, spec, root = runs.layout._open_run(run, None, None, "cpu")
    test = runs.test_set(spec, root, cfg)
    masks = np.concatenate([m[:, 0].numpy() > 0.5 for _, _, m, _, _ in
                            loader(test, det.preprocess_, 64)])
    m = raw_maps(det, test)
    ref = raw_maps(det, data_mod.load(spec, "train", root=root))
    mu, sd = ref.mean(0), ref.std(0)
    print(f"== {run}")
    for name, mm in (("raw", m), ("minus mean", m - mu), ("z-score", (m - mu) / (sd + 0.1 * sd.mean())),
                     ("ratio (map_norm=position)", m / (mu + 0.1 * mu.mean()))):
        pm = pixel_metrics(masks, mm)
        print(f"{name:28s} pixel AUROC {100 * pm['pixel_auroc']:.1f}  AUPRO {100 * pm['aupro']:.1f}")
    neg = np.sort(m[~masks])
    labels = np.asarray(test.labels)
    ranks = {test.names[i]: np.searchsorted(neg, m[i][masks[i]]).mean() / len(neg)
             for i in np.flatnonzero(labels == 1)}
    print("defective images ranked lowest (mean rank of their defect pixels among normal pixels):")
    for name in sorted(ranks, key=ranks.get)[:worst]:
        print(f"  {name}: {100 * ranks[name]:.1f} %")
    above = (m > np.median(m[masks])).mean((1, 2))
    normal = np.flatnonzero(labels == 0)
    top = normal[np.argmax(above[normal])]
    keep = np.arange(len(test)) != top
    print(f"without {test.names[top]} (normal, {100 * above[top]:.1f} % of its pixels above the "
          f"median defect pixel): pixel AUROC {100 * pixel_metrics(masks[keep], m[keep])['pixel_auroc']:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--worst", type=int, default=5, help="defective images to list")
    args = ap.parse_args()
    for run in args.runs:
        probe(run, args.worst)


if __name__ == "__main__":
    main()
