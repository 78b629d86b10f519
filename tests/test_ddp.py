"""Multi-process training: `oneclass train` under torchrun (2 gloo processes on the CPU).

"Matches" means: the two ranks walk the same global batches as one process (each takes half
of every batch) and DDP averages their gradients, so the optimisation steps are those of the
single-process run, except that batch norm computes its batch statistics on each rank's half.
That leaves the scores within a few percent of their range of the single-process run (while
a run with another seed differs by tens of percent) and the per-epoch losses within 2%.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import oneclass
from oneclass.cli import main

ARGS = ["train", "--method", "deep_svdd", "--epochs", "3", "--seed", "0",
        "--set", "pretrain_epochs=1", "--set", "batch_size=16", "-q"]


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return [r.get("loss", r.get("rec_loss")) for r in rows]


def test_torchrun_two_gloo_processes_match_one_process(mvtec_dir, tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main(ARGS + ["--data", str(mvtec_dir), "--out", str(single)]) == 0
    src = str(Path(oneclass.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "oneclass.cli", *ARGS, "--data", str(mvtec_dir), "--out", str(ddp)],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "on 2 processes" in proc.stdout and proc.stdout.count("trained deep_svdd") == 1
    # rank 0 alone wrote the log: one line per epoch, not two
    assert len(_losses(ddp)) == len(_losses(single)) == 4
    assert np.allclose(_losses(ddp), _losses(single), rtol=0.02)
    test = oneclass.data.load(str(mvtec_dir), "test")
    a = oneclass.load(single / "model").score(test)
    b = oneclass.load(ddp / "model").score(test)
    assert np.abs(a - b).max() <= 0.05 * np.ptp(a)
    assert np.corrcoef(a, b)[0, 1] > 0.99

