"""Seconds per image of AnoGAN's batched latent search for several ``search_part`` sizes.

    PYTHONPATH=src python scripts/search_parts.py [--parts 32,64,128] [--repeats 2]

A probe of the part size (images searched together on one thread), not a benchmark: the
search of 256 images (AnoGAN's scoring batch), 100 steps, untrained default networks for
28x28x1 and 64x64x1 images, in fp32 and bf16, each timed ``--repeats`` times after a
warm-up. Parts of other sizes round differently, so scores change with the setting.
"""

from __future__ import annotations

import argparse
import time

import torch

from oneclass.speed import untrained_anogan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="32,64,128")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    print("size precision part ms/img (each repeat)")
    for shape in ((1, 28, 28), (1, 64, 64)):
        for precision in ("fp32", "bf16"):
            for part in (int(p) for p in args.parts.split(",")):
                det = untrained_anogan(shape, search_steps=100, precision=precision,
                                       search_part=part)
                x = torch.rand(256, *shape, generator=torch.Generator().manual_seed(0))
                det.search(x[:2], steps=2)  # warm-up
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    det.search(x)
                    times.append(1000 * (time.perf_counter() - t0) / len(x))
                print(shape[1], precision, part, " ".join(f"{t:.1f}" for t in times), flush=True)


if __name__ == "__main__":
    main()
