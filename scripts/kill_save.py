"""kill -9 a process while it saves models over and over; check what is left always loads.

    PYTHONPATH=src python scripts/kill_save.py --trials 200

A small Deep SVDD model is trained once. Each trial forks a child that keeps saving the
model to the same directory, each time with its weights shifted by k and its threshold set
to k; the parent SIGKILLs the child after a random delay, then loads the directory. The
model must load, and its weights and description must come from the same save (the weight
shift equals the threshold). Prints how many trials ended in which phase of the save.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

import oneclass
from oneclass.data.synthetic import make_defects
from oneclass.errors import ModelFileError


def saver(det, path: Path, first: int) -> None:
    bias = next(p for p in det.model_.parameters())
    base = bias.detach().clone()
    k = first
    while True:
        with torch.no_grad():
            bias.copy_(base + k)
        det.threshold_ = float(k)
        det.save(path)
        k += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    torch.set_num_threads(1)
    det = oneclass.create("deep_svdd", epochs=1, pretrain_epochs=0, batch_size=16)
    det.fit(make_defects(24, 0, size=16, seed=0))
    ref = next(p for p in det.model_.parameters()).detach().clone()
    bad, recovered, kinds = 0, 0, {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        det.threshold_ = 0.0
        det.save(path)
        for t in range(args.trials):
            pid = os.fork()
            if pid == 0:
                try:
                    saver(det, path, 1 + 1000 * t)
                finally:
                    os._exit(3)
            time.sleep(rng.uniform(0.0, 0.3))
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            missing = not path.exists()
            try:
                got = oneclass.load(path)
            except ModelFileError as exc:
                bad += 1
                print(f"trial {t}: does not load: {exc}")
                continue
            recovered += missing
            shift = (next(p for p in got.model_.parameters()).detach() - ref).mean().item()
            if abs(shift - got.threshold_) > 1e-3:
                bad += 1
                print(f"trial {t}: weights of save {shift:.0f} with the description of {got.threshold_}")
            for p in Path(tmp).iterdir():  # hidden, never loaded; the next save sweeps them
                if p.name != "model":
                    kind = p.name.split(".")[-1]
                    kinds[kind] = kinds.get(kind, 0) + 1
        got.save(path)
        left = [p.name for p in Path(tmp).iterdir() if p.name != "model"]
    seconds = time.perf_counter() - t0
    print(f"{args.trials} kills in {seconds:.0f} s: {args.trials - bad} left a model that loads with "
          f"matching weights and description, {bad} did not; {recovered} were killed between "
          f"the two renames and put back by load; hidden partial copies seen after a kill: {kinds}, "
          f"left after one more save: {len(left)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
