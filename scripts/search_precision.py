"""AnoGAN's latent search in fp32 and in bf16 on the same trained generator: do the results hold?

    PYTHONPATH=src python scripts/search_precision.py --data-root ../shared/data \
        --suite anogan-kolektor --suite anogan-mnist --only mnist:0,mnist:1 --out runs/x-prec.jsonl

For each job of the named benchmark suites (first row of each data spec: the suite's own
parameters, seed 0, its test subset), AnoGAN is trained once and the test set is scored twice,
with ``precision=fp32`` and ``precision=bf16``; only the search changes, so any difference in
image AUROC, pixel AUROC or AUPRO comes from the search's arithmetic. Also printed: the rank
correlation of the two score vectors, their median relative difference, and the scoring time
per image of each (the whole test set, ``score_batch_size`` images per search). The fp32
figures reproduce the suite's own row (same seed, same data), a check on the comparison.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from oneclass.bench import SUITES, limit_test
from oneclass.bench.running import _resolve
from oneclass.metrics import image_metrics, pixel_metrics
from oneclass.registry import create
from oneclass.runs import maps_and_masks, test_set, training_data


def _ranks(a: np.ndarray) -> np.ndarray:
    r = np.empty(len(a))
    r[np.argsort(a, kind="stable")] = np.arange(len(a))
    return r


def run_job(job: dict, data_root: str) -> dict:
    det = create(job["method"], **job["params"], seed=0)
    spec = _resolve(job["data"], data_root)
    train, outliers, _ = training_data(spec, data_root, 0)
    test = limit_test(test_set(spec, data_root, {}), job.get("test_limit"))  # the suite's subset
    t0 = time.perf_counter()
    det.fit(train, outliers=outliers)
    rec = {"data": job["data"], "params": job["params"], "n_test": len(test),
           "train_seconds": round(time.perf_counter() - t0, 1)}
    scores = {}
    for prec in ("fp32", "bf16"):
        det.precision = prec
        det._cache.clear()  # searches are cached by input; a new precision searches anew
        t0 = time.perf_counter()
        s = det.score(test)
        rec[f"{prec}_ms_per_image"] = round(1000 * (time.perf_counter() - t0) / len(test), 2)
        scores[prec] = s
        m = image_metrics(test.labels, s)
        rec[f"{prec}_image_auroc"] = round(100 * m["image_auroc"], 2)
        if test.has_masks:
            maps, masks = maps_and_masks(test, det)
            pm = pixel_metrics(masks, maps)
            rec[f"{prec}_pixel_auroc"] = round(100 * pm["pixel_auroc"], 2)
            rec[f"{prec}_aupro"] = round(100 * pm["aupro"], 2)
    a, b = scores["fp32"], scores["bf16"]
    rec["spearman"] = round(float(np.corrcoef(_ranks(a), _ranks(b))[0, 1]), 4)
    rec["median_rel_diff"] = float(np.median(np.abs(b - a) / np.maximum(np.abs(a), 1e-12)))
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", action="append", required=True, help="an AnoGAN suite (repeatable)")
    ap.add_argument("--only", help="comma-separated data specs (mnist:0), or the part of a "
                    "suite's name after its last '-' (kolektor) for all of that suite's specs")
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--out", help="append one JSON line per job here")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    torch.manual_seed(0)
    for suite in args.suite:
        seen = set()
        for job in SUITES[suite]:
            if job["method"] != "anogan" or job["data"] in seen:
                continue
            seen.add(job["data"])
            if only and job["data"] not in only and suite.split("-")[-1] not in only:
                continue
            rec = run_job(job, args.data_root)
            print(json.dumps(rec), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
