"""Training-step speed of the GAN methods (images/s), for before/after comparisons.

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/gan_step_speed.py --method bigan --size 28

Builds the method's networks for ``size x size`` grayscale images, runs a few warm-up steps of
its training task on one random batch, then times ``--steps`` steps.
"""

from __future__ import annotations

import argparse
import time

import torch

import oneclass
from oneclass.methods.anogan import _DCGANTask
from oneclass.methods.bigan import _BiGANTask

TASKS = {"anogan": _DCGANTask, "bigan": _BiGANTask}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=sorted(TASKS), default="bigan")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(0)
    det = oneclass.create(args.method, epochs=1, batch_size=args.batch, seed=0)
    det.device_ = torch.device("cpu")
    shape = (1, args.size, args.size)
    det.model_ = det._build(shape)
    det.model_.train()
    task = TASKS[args.method](det)
    x = (torch.rand(args.batch, *shape) * 255).to(torch.uint8)
    for _ in range(3):
        task.step((x,))
    t = time.perf_counter()
    for _ in range(args.steps):
        task.step((x,))
    dt = (time.perf_counter() - t) / args.steps
    print(f"{args.method} {args.size}x{args.size} batch {args.batch}: {1000 * dt:.1f} ms/step, "
          f"{args.batch / dt:.0f} images/s ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
