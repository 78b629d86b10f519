#!/usr/bin/env bash
# kill -9 a real training run from outside once it has written a checkpoint of the main
# phase, resume it, and compare the weights with two uninterrupted runs of the same seed
# (each its own process).  Usage:  PYTHONPATH=src scripts/kill_resume.sh [SPEC] [OUT]
set -euo pipefail
SPEC=${1:-mnist:0}
OUT=${2:-runs/kill-resume}
PY=${PY:-python}
ARGS=(train --method deep_svdd --data "$SPEC" --data-root "${DATA_ROOT:-/work/shared/data}"
      --epochs "${EPOCHS:-6}" --set pretrain_epochs="${PRETRAIN:-3}" --seed 7 -q)
rm -rf "$OUT"; mkdir -p "$OUT"
for run in a b; do
  start=$(date +%s.%N)
  $PY -m oneclass.cli "${ARGS[@]}" --out "$OUT/$run" >/dev/null
  echo "uninterrupted run $run: $(echo "$(date +%s.%N) - $start" | bc) s"
done
$PY -m oneclass.cli "${ARGS[@]}" --out "$OUT/cut" >/dev/null 2>&1 &
pid=$!
until [ -f "$OUT/cut/checkpoints/train.pt" ]; do sleep 0.2; done
sleep "0.$((RANDOM % 10))$((RANDOM % 10))"
kill -9 "$pid"
wait "$pid" || echo "killed: exit status $? (137 = SIGKILL)"
$PY - "$OUT/cut/checkpoints" <<'PY'
import sys, torch
from pathlib import Path
for f in sorted(Path(sys.argv[1]).glob("*.pt")):
    print(f"checkpoint {f.name}: after epoch {torch.load(f, weights_only=True)['epoch']}")
PY
test ! -e "$OUT/cut/model" && echo "no model directory after the kill"
$PY -m oneclass.cli "${ARGS[@]}" --out "$OUT/cut" --resume >/dev/null
sha256sum "$OUT"/{a,b,cut}/model/weights.safetensors
for run in a b cut; do
  $PY -m oneclass.cli eval "$OUT/$run" -q >/dev/null
done
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {r: (out / r / "scores.csv").read_text() for r in ("a", "b", "cut")}
m = json.loads((out / "a" / "metrics.json").read_text())
print(f"test scores identical a==b: {rows['a'] == rows['b']}, a==resumed: {rows['a'] == rows['cut']};"
      f" {m['n_test']} test images, image AUROC {m['image_auroc']:.4f}")
PY
