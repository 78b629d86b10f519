"""Running a suite: one process per run, results appended to results.jsonl as each run
finishes and skipped when already there; the machine and code version each line records.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import queue as queue_mod
import resource
import signal
import subprocess
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, OneclassError
from ..io import end_jsonl, read_jsonl, write_text
from .suites import SUITES, _key, _row_id, _variant_jobs
from .tables import markdown


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else the architecture. Timings of one
    benchmark differ between CPU models, e.g. bf16 with and without Intel AMX."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name") and ":" in line:
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    import os

    import torch

    return (f"{cpu_model()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def limit_test(test, limit: int | None):
    """A job's test set cut to ``test_limit`` images: a fixed random subset, the same images
    for every method and seed; the whole set without a limit or when it is smaller."""
    if not limit or len(test) <= int(limit):
        return test
    rng = np.random.default_rng(1234)
    return test.subset(np.sort(rng.choice(len(test), int(limit), replace=False)))


def _run_one(job: dict[str, Any], data_root: str | None, queue) -> None:
    """Child process: train, score, report metrics and the peak memory."""
    try:
        commit = _commit()  # the code this process imports now, not the checkout at the end
        from ..metrics import image_metrics, pixel_metrics
        from ..registry import create
        from ..runs import test_set, training_data

        det = create(job["method"], **job["params"], seed=job.get("seed", 0))
        spec = _resolve(job["data"], data_root)
        anomalies = spec if job.get("anomalies") else None
        outlier_spec = _resolve(job["outliers"], data_root) if job.get("outliers") else None
        train = None
        if job.get("semi"):  # the Deep SAD paper's semi-supervised training set
            from ..data.semi import semi_supervised

            name, _, cls = spec.partition(":")
            train = semi_supervised(name, int(cls), **job["semi"], seed=det.seed, root=data_root)
        train, outliers, used = training_data(
            spec, data_root, int(det.seed), outliers=outlier_spec, anomalies=anomalies,
            anomaly_limit=int(job.get("anomaly_limit") or 0), train_set=train,
            masks=det.uses_masks)
        test = test_set(spec, data_root, {"anomalies": anomalies, "anomalies_used": used})
        test = limit_test(test, job.get("test_limit"))
        t0 = time.perf_counter()
        extra = {}
        if job.get("reference"):
            from ..data.reference import check_specs, load_reference

            check_specs(spec, job["reference"])
            extra["reference"] = load_reference(_resolve(job["reference"], data_root), data_root)
        det.fit(train, outliers=outliers, **extra)
        train_s = time.perf_counter() - t0
        from ..runs import maps_and_masks

        def scored() -> dict[str, Any]:  # metrics and speed of scoring the test set
            t0 = time.perf_counter()
            scores = det.score(test)
            score_s = time.perf_counter() - t0
            rec = dict(image_metrics(test.labels, scores))
            if test.has_masks:
                maps, masks = maps_and_masks(test, det)
                rec.update(pixel_metrics(masks, maps))
            return {**rec, "score_seconds": round(score_s, 3),
                    "score_images_per_s": round(len(test) / score_s, 1)}

        rec = scored()
        variants = []
        for params in job.get("score_variants") or []:  # the same trained model, rescored
            det.set_scoring_params(**params)
            variants.append(scored())
        epochs = sum(1 for h in det.history_ if h["phase"] == "train")
        rec.update({
            "train_seconds": round(train_s, 2),
            "train_images_per_s": round(det.n_train_ * max(epochs, 1) / max(
                sum(h["seconds"] for h in det.history_ if h["phase"] == "train"), 1e-9), 1),
            "n_train": det.n_train_, "n_test": len(test),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "commit": commit,
        })
        if variants:
            rec["variants"] = variants
        queue.put(("ok", rec))
    except Exception as exc:  # reported back, not swallowed
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def _resolve(spec: str, data_root: str | None) -> str:
    """``{root}/x`` in a suite means the folder x of the data root."""
    if "{root}" in spec:
        from ..data.classic import data_root as find_root

        return spec.replace("{root}", str(find_root(data_root)))
    return spec


def run_suite(suite: str, out: Path, data_root: str | None = None, seeds=(0,),
              only: list[str] | None = None, overrides: dict[str, Any] | None = None,
              log=print, data: list[str] | None = None,
              methods: list[str] | None = None,
              label: str | None = None) -> list[dict[str, Any]]:
    """Run (or resume) a suite; ``data`` replaces the suite's datasets by these specs (folders),
    ``methods`` keeps only the runs of these methods, ``label`` only the rows whose label
    contains this text (e.g. one setting of a suite, for more seeds of it alone)."""
    if suite not in SUITES:
        raise ConfigError(f"unknown suite {suite!r}; available: {', '.join(sorted(SUITES))}")
    if overrides and "seed" in overrides:
        raise ConfigError("--set seed=N: a run's seed is set by --seeds N[,N...]")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.jsonl"
    rows = _Rows(path)
    jobs = []
    suite_jobs = SUITES[suite]
    if data:  # the suite's settings (each once) on the given datasets instead of its own
        settings = {json.dumps({**j, "data": None}, sort_keys=True): j for j in suite_jobs}
        suite_jobs = [{**j, "data": d} for d in data for j in settings.values()]
    # --label: the rows with exactly this label if there are any (so a label that is part
    # of longer ones, or '' for unlabeled rows, names one row), else those containing it
    exact = label is not None and any(j.get("label", "") == label for j in suite_jobs)
    absent = sorted(set(methods or ()) - {j["method"] for j in suite_jobs})
    if absent:
        raise ConfigError(f"suite {suite!r} has no runs of {', '.join(absent)}; its methods: "
                          f"{', '.join(sorted({j['method'] for j in suite_jobs}))}")
    for job in suite_jobs:
        if only and job["data"] not in only:
            continue
        if methods and job["method"] not in methods:
            continue
        if label is not None and (job.get("label", "") != label if exact
                                  else label not in job.get("label", "")):
            continue
        # the label names the overrides that change this row's settings (its own value is none)
        changed = {k: v for k, v in (overrides or {}).items()
                   if k not in job["params"] or job["params"][k] != v}
        for seed in seeds:
            jobs.append({**job, "params": {**job["params"], **(overrides or {})}, "seed": seed,
                         **({"overrides": changed} if changed else {})})
    if not jobs:
        raise ConfigError(f"no run of suite {suite!r} matches the filters (--only, --methods, "
                          "--label)")
    ctx = mp.get_context("spawn")
    with _sigterm_exits():
        failed = _run_jobs(jobs, rows, ctx, out, suite, data_root, log)
    if failed:
        raise BenchError(f"{len(failed)} of {len(jobs)} runs of {suite} failed (the others are "
                         f"recorded in {path}; rerun to retry): " + "; ".join(failed))
    recorded = [rows.get(j, suite) for job in jobs for j in [job] + [v for v, _ in _variant_jobs(job)]]
    return [r for r in recorded if r is not None]


class _Rows:
    """The lines of a ``results.jsonl``: the run of a key (reused by any suite, whatever
    suite and label it was recorded under) and the rows they make."""

    def __init__(self, path: Path):
        self.path = path
        self.ended = False  # whether the file's last line is known to end in a newline
        self.by_key: dict[str, dict[str, Any]] = {}
        self.rows: dict[tuple, dict[str, Any]] = {}
        for r in read_jsonl(path):
            self.by_key[r["key"]] = r
            self.rows[_row_id(r)] = r

    def get(self, job: dict[str, Any], suite: str) -> dict[str, Any] | None:
        """The row ``job`` makes in ``suite``; None if it has not run."""
        return self.rows.get(_row_id({"key": _key(job), "label": _row_label(job),
                                      "suite": suite}))

    def add(self, rec: dict[str, Any]) -> None:
        self._end_last_line()
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        self.by_key[rec["key"]] = rec
        self.rows[_row_id(rec)] = rec

    def _end_last_line(self) -> None:
        """Before appending, once: see :func:`oneclass.io.end_jsonl`."""
        if not self.ended:
            end_jsonl(self.path)
            self.ended = True

    def reuse(self, job: dict[str, Any], suite: str) -> dict[str, Any]:
        """The recorded run of ``job``, as a row of ``suite``: a run recorded under another
        suite's row (another label) is copied under this one, marked with where it is from."""
        rec = self.by_key[_key(job)]
        mine = {**rec, "suite": suite, "label": _row_label(job)}
        if _row_id(mine) not in self.rows:
            self.add({**mine, "recorded_as": {"suite": rec.get("suite"),
                                              "label": rec.get("label", "")}})
        return self.get(job, suite)

    def markdown(self) -> str:
        return markdown(list(self.rows.values()))


class BenchError(OneclassError):
    """Runs of a suite failed; the finished ones are recorded."""


def wait_for(p, q, poll: float = 5.0) -> tuple[str, Any]:
    """The ``(status, payload)`` a run's process puts on ``q``, or an error if it dies first
    (killed by the kernel for memory, a crash in native code) instead of waiting forever."""
    while True:
        try:
            return q.get(timeout=poll)
        except queue_mod.Empty:
            if not p.is_alive():
                try:  # it may have put its result just before exiting
                    return q.get(timeout=1.0)
                except queue_mod.Empty:
                    return ("error", f"the run's process died (exit code {p.exitcode})")


class _sigterm_exits:
    """SIGTERM raises SystemExit in the main thread while the suite runs, so the run's
    process is stopped with it (a plain SIGTERM would leave it training on)."""

    def __enter__(self):
        self.old = None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGTERM, self._exit)
        return self

    @staticmethod
    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)
        return False


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _row_label(job: dict[str, Any]) -> str:
    """The label of a job's result line: the suite row's, with a test limit and the
    ``--set`` overrides it ran with (so runs with other settings are never averaged with
    the row's own)."""
    parts = [job.get("label", "")]
    if job.get("test_limit"):
        parts.append(f"{job['test_limit']} test images")
    if job.get("overrides"):
        parts.append("set " + " ".join(f"{k}={json.dumps(v)}"
                                       for k, v in sorted(job["overrides"].items())))
    return ", ".join(filter(None, parts))


def _record(job: dict[str, Any], key: str, suite: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The result line of a run."""
    return {"key": key, "suite": suite, "method": job["method"], "data": job["data"],
            "label": _row_label(job), "seed": job["seed"], "params": job["params"], **payload,
            "date": date.today().isoformat(), "machine": machine(),
            "commit": payload.get("commit", _commit())}


def _commit() -> str | None:
    """The code a run used: ``git describe`` of the checkout, ``-dirty`` when the package's
    own files (``src/oneclass``) differ from it (edits to docs or result files, as a
    benchmark's own lines, are not the code), taken by the run's process when it starts;
    None outside a git checkout. Result lines are
    reused on resume whatever the code version: after a change that moves figures, run into a
    new ``--out``. An installed copy (site-packages) inside some other git checkout is not
    that checkout's code: the checkout must hold this package as ``src/oneclass``."""
    pkg = Path(__file__).resolve().parents[1]  # src/oneclass (this file is in its bench/)

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=pkg, capture_output=True, text=True,
                               timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() or None if r.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() / "src" / "oneclass" != pkg:
        return None
    described = git("describe", "--always", "--abbrev=10")
    if described is None:
        return None
    changed = git("status", "--porcelain", "--untracked-files=all", "--", str(pkg))
    return described + "-dirty" if changed else described


def _run_jobs(jobs, rows: _Rows, ctx, out, suite, data_root, log) -> list[str]:
    """Run the jobs not recorded in ``rows``; returns the failed ones (the others are
    recorded)."""
    failed: list[str] = []
    done = rows.by_key
    for i, job in enumerate(jobs):
        key = _key(job)
        variant_jobs = _variant_jobs(job)
        if key in done and all(_key(v) in done for v, _ in variant_jobs):
            for j in [job] + [v for v, _ in variant_jobs]:
                rows.reuse(j, suite)
            log(f"[{i + 1}/{len(jobs)}] {job['method']} {job['data']} seed {job['seed']}: done")
            continue
        q = ctx.Queue()
        p = ctx.Process(target=_run_one, args=(job, data_root, q))
        p.start()
        try:
            status, payload = wait_for(p, q)
        except BaseException:  # interrupted (Ctrl-C, SIGTERM): the run must not live on
            p.terminate()
            p.join()
            raise
        p.join(timeout=60)
        if p.is_alive():  # its result is in; whatever keeps it alive is not ours to wait for
            p.terminate()
            p.join()
        if status != "ok":
            log(f"[{i + 1}/{len(jobs)}] {job['method']} {job['data']}: FAILED {payload}")
            failed.append(f"{job['method']} {job['data']} seed {job['seed']}: {payload}")
            continue
        variants = payload.pop("variants", [])
        # a rescored line keeps the AUROC its model gave with the job's own scoring: a model
        # trained again may not repeat the recorded one (GAN training on another CPU)
        after = {"scored_after": key, "scored_after_auroc": payload.get("image_auroc")}
        shown = []
        for (j, name), extra in zip([(job, "AUROC")] + variant_jobs,
                                    [{}] + [{**m, **after} for m in variants]):
            k = _key(j)
            rec = _record(j, k, suite, {**payload, **extra})
            shown.append(f"{name} {_pct(rec.get('image_auroc'))}")
            if k in done:  # rerun for its variants: does it repeat what was recorded?
                shown[-1] += f" (recorded: {_pct(done[k].get('image_auroc'))})"
                rows.reuse(j, suite)
                continue
            rows.add(rec)
        log(f"[{i + 1}/{len(jobs)}] {job['method']} {job['data']} seed {job['seed']}: "
            f"{'; '.join(shown)} train {payload['train_seconds']} s, "
            f"peak {payload['peak_rss_mb']} MB")
        write_text(out / "results.md", rows.markdown())
    write_text(out / "results.md", rows.markdown())  # rows reused from other suites too
    return failed
