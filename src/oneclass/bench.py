"""Benchmark suites: methods x datasets x classes x seeds, resumable, one process per run.

Each run trains with the suite's parameters on the train split, scores the test split and
records image AUROC / AP (and pixel metrics where masks exist), training seconds, training
and scoring images/s and the peak resident memory of the process that ran it. Results are
appended to ``OUT/results.jsonl`` as each run finishes; runs already there are skipped, so an
interrupted benchmark resumes where it stopped. ``OUT/results.md`` is rebuilt from the JSON
lines after every run.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import resource
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError
from .io import write_text

#: Published mean AUROC (in %) to print beside ours: (method, dataset) -> value.
PUBLISHED = {
    ("deep_svdd", "mnist"): 94.8,  # Ruff et al. 2018, one-class Deep SVDD, Table 1
    ("deep_svdd", "cifar10"): 64.8,
}

# Paper protocol of Ruff et al. (2018): GCN (l1) preprocessing, autoencoder pretraining,
# Adam with a learning-rate drop. Epochs are cut to fit a 2-core CPU (see docs/benchmarks.md).
_SVDD_MNIST = {"gcn": True, "holdout": 0.0, "batch_size": 200, "lr": 1e-4,
               "weight_decay": 5e-7, "pretrain_epochs": 50, "epochs": 50,
               "lr_milestones": [30]}
_SVDD_CIFAR = {**_SVDD_MNIST, "pretrain_epochs": 10, "epochs": 25, "lr_milestones": [20]}

SUITES: dict[str, list[dict[str, Any]]] = {
    "svdd-mnist": [{"method": "deep_svdd", "data": f"mnist:{c}", "params": _SVDD_MNIST}
                   for c in range(10)],
    "svdd-cifar10": [{"method": "deep_svdd", "data": f"cifar10:{c}", "params": _SVDD_CIFAR}
                     for c in range(10)],
    "smoke": [{"method": "deep_svdd", "data": "synthetic",
               "params": {"epochs": 3, "pretrain_epochs": 1}}],
}
SUITES["classic"] = SUITES["svdd-mnist"] + SUITES["svdd-cifar10"]


def machine() -> str:
    import os

    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def _run_one(job: dict[str, Any], data_root: str | None, queue) -> None:
    """Child process: train, score, report metrics and the peak memory."""
    try:
        from . import data as data_mod
        from .metrics import image_metrics, pixel_metrics
        from .registry import create

        det = create(job["method"], **job["params"], seed=job.get("seed", 0))
        train = data_mod.load(job["data"], "train", root=data_root)
        test = data_mod.load(job["data"], "test", root=data_root)
        t0 = time.perf_counter()
        det.fit(train)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = det.score(test)
        score_s = time.perf_counter() - t0
        rec = {k: v for k, v in image_metrics(test.labels, scores).items()}
        if test.has_masks:
            from .runs import _masks

            rec.update(pixel_metrics(_masks(test, det), det.anomaly_map(test)))
        epochs = sum(1 for h in det.history_ if h["phase"] == "train")
        rec.update({
            "train_seconds": round(train_s, 2), "score_seconds": round(score_s, 3),
            "train_images_per_s": round(det.n_train_ * max(epochs, 1) / max(
                sum(h["seconds"] for h in det.history_ if h["phase"] == "train"), 1e-9), 1),
            "score_images_per_s": round(len(test) / score_s, 1),
            "n_train": det.n_train_, "n_test": len(test),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        })
        queue.put(("ok", rec))
    except Exception as exc:  # reported back, not swallowed
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def _key(job: dict[str, Any]) -> str:
    return json.dumps([job["method"], job["data"], job.get("seed", 0), job["params"]],
                      sort_keys=True)


def run_suite(suite: str, out: Path, data_root: str | None = None, seeds=(0,),
              only: list[str] | None = None, overrides: dict[str, Any] | None = None,
              log=print) -> list[dict[str, Any]]:
    if suite not in SUITES:
        raise ConfigError(f"unknown suite {suite!r}; available: {', '.join(sorted(SUITES))}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.jsonl"
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[r["key"]] = r
    jobs = []
    for job in SUITES[suite]:
        if only and job["data"] not in only:
            continue
        for seed in seeds:
            jobs.append({**job, "params": {**job["params"], **(overrides or {})}, "seed": seed})
    ctx = mp.get_context("spawn")
    for i, job in enumerate(jobs):
        key = _key(job)
        if key in done:
            log(f"[{i + 1}/{len(jobs)}] {job['method']} {job['data']} seed {job['seed']}: done")
            continue
        q = ctx.Queue()
        p = ctx.Process(target=_run_one, args=(job, data_root, q))
        p.start()
        status, payload = q.get()
        p.join()
        if status != "ok":
            log(f"[{i + 1}/{len(jobs)}] {job['method']} {job['data']}: FAILED {payload}")
            continue
        rec = {"key": key, "suite": suite, "method": job["method"], "data": job["data"],
               "seed": job["seed"], "params": job["params"], **payload,
               "date": date.today().isoformat(), "machine": machine()}
        with open(path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        done[key] = rec
        auroc = rec.get("image_auroc")
        log(f"[{i + 1}/{len(jobs)}] {job['method']} {job['data']} seed {job['seed']}: "
            f"AUROC {auroc if auroc is None else round(100 * auroc, 2)} "
            f"train {rec['train_seconds']} s, peak {rec['peak_rss_mb']} MB")
        write_text(out / "results.md", markdown(list(done.values())))
    return list(done.values())


def markdown(records: list[dict[str, Any]]) -> str:
    """A table per (method, dataset): one row per class, mean and std over seeds."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["data"].split(":")[0]), []).append(r)
    parts = []
    for (method, ds), rs in sorted(groups.items()):
        parts.append(f"### {method} on {ds}\n")
        parts.append("| data | seeds | image AUROC % | image AP % | train s | train img/s | "
                     "score img/s | peak MB |")
        parts.append("|---|---|---|---|---|---|---|---|")
        by_data: dict[str, list[dict]] = {}
        for r in rs:
            by_data.setdefault(r["data"], []).append(r)
        means = []
        for d in sorted(by_data, key=lambda s: (len(s), s)):
            g = by_data[d]
            a = np.array([100 * (x.get("image_auroc") or np.nan) for x in g])
            ap = np.array([100 * (x.get("image_ap") or np.nan) for x in g])
            means.append(a.mean())
            std = f" ± {a.std():.1f}" if len(a) > 1 else ""
            parts.append(
                f"| {d} | {len(g)} | {a.mean():.1f}{std} | {ap.mean():.1f} | "
                f"{np.mean([x['train_seconds'] for x in g]):.0f} | "
                f"{np.mean([x['train_images_per_s'] for x in g]):.0f} | "
                f"{np.mean([x['score_images_per_s'] for x in g]):.0f} | "
                f"{max(x['peak_rss_mb'] for x in g):.0f} |")
        pub = PUBLISHED.get((method, ds))
        pub_s = f" (published: {pub})" if pub is not None else ""
        parts.append(f"\nMean image AUROC over {len(means)} classes: "
                     f"**{np.mean(means):.1f}**{pub_s}\n")
    return "\n".join(parts) + "\n"
