"""How far a model's heatmap sits from a defect: paste a disc at random positions into one
image and measure where the map rises (the centroid of its increase over the clean image's
map, above half its peak), against the disc's centre.

    python scripts/map_offset.py RUN IMAGE [--spots 16] [--radius 9] [--seed 3]

Prints the mean and spread of (row, column) offsets in model pixels; positive is down and
to the right. The heatmap-centring figures of docs/benchmark-notes.md (29th session) were
measured this way.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from oneclass.runs import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("image", help="a normal image to paste the discs into")
    ap.add_argument("--spots", type=int, default=16)
    ap.add_argument("--radius", type=int, default=9)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    det = load_model(args.run)
    c, h, w = det.input_shape_
    base = np.asarray(Image.open(args.image).convert("RGB").resize((w, h), Image.BILINEAR))
    rng = np.random.default_rng(args.seed)
    yy, xx = np.mgrid[0:h, 0:w]
    margin = min(40, h // 4, w // 4)
    spots = [(int(rng.integers(margin, h - margin)), int(rng.integers(margin, w - margin)))
             for _ in range(args.spots)]
    imgs = np.stack([base] * len(spots))
    for k, (cy, cx) in enumerate(spots):
        imgs[k][(yy - cy) ** 2 + (xx - cx) ** 2 <= args.radius ** 2] = (20, 200, 240)
    if c == 1:
        base, imgs = base[..., :1], imgs[..., :1]
    clean = det.anomaly_map(base.transpose(2, 0, 1)[None])[0]
    maps = det.anomaly_map(imgs.transpose(0, 3, 1, 2))
    offsets = []
    for m, (cy, cx) in zip(maps, spots):
        d = np.clip(m - clean, 0, None)
        d = np.where(d > 0.5 * d.max(), d, 0)
        offsets.append(((d * yy).sum() / d.sum() - cy, (d * xx).sum() / d.sum() - cx))
    o = np.array(offsets)
    print(f"{args.run}: offset of the map from the disc (rows, columns; model pixels): mean "
          f"{o.mean(0).round(2).tolist()}, std {o.std(0).round(2).tolist()} over {len(o)} "
          f"positions")


if __name__ == "__main__":
    main()
