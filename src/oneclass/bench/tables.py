"""docs/benchmarks.md from the result lines: per-suite tables, the published figures beside
our means, the defaults matrix, the commands that reproduce each table.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from ..io import read_jsonl, write_text
from .suites import CLASSES, PUBLISHED, SUITES, _key, _pct_value, _row_id, _variant_jobs


def markdown(records: list[dict[str, Any]]) -> str:
    """A table per (method and label, dataset): one row per class, the mean and sample
    standard deviation over its runs. ``runs`` counts result lines, ``seeds`` their distinct
    seeds (fewer seeds than runs: the runs differ in something else, e.g. the known anomaly
    class). Rescored runs (``scored_after_auroc``) also show what the same trained models gave
    with their first scoring. A mean over fewer classes than the dataset has, or over
    classes with different numbers of runs, says so and is not set beside a published mean.
    Runs of the ``defaults`` suite come first, as one method-by-dataset matrix."""
    records = _latest(records)
    matrix = [r for r in records if r.get("suite") == "defaults"]
    groups = _tables(records)
    parts = []
    for (method, ds), rs in sorted(groups.items()):
        rescored = any(x.get("scored_after_auroc") is not None for x in rs)
        parts.append(f"### {method} on {ds}\n")
        extra_h, extra_l = (" same models, first scoring % |", "---|") if rescored else ("", "")
        parts.append("| data | runs | seeds | image AUROC % |" + extra_h + " image AP % | "
                     "pixel AUROC % | AUPRO % | train s | train img/s | score img/s | peak MB |")
        parts.append("|---|---|---|---|" + extra_l + "---|---|---|---|---|---|---|")
        by_data = _by_data(rs)
        means, firsts, counts = [], [], []
        for d in sorted(by_data, key=lambda s: (len(s), s)):
            g = by_data[d]
            a = np.array([_pct_value(x.get("image_auroc")) for x in g])
            ap = np.array([_pct_value(x.get("image_ap")) for x in g])
            means.append(a.mean())
            counts.append(len(g))
            std = f" ± {a.std(ddof=1):.1f}" if len(a) > 1 else ""
            cell = ""
            if rescored:  # lines from before the field existed have no first scoring
                b = np.array([_pct_value(x.get("scored_after_auroc")) for x in g])
                have = b[np.isfinite(b)]
                firsts.append(b.mean())  # NaN unless every run of the class has it
                part = f" ({len(have)} of {len(b)} runs)" if 0 < len(have) < len(b) else ""
                cell = f" {have.mean():.1f}{part} |" if len(have) else " - |"
            px = [100 * x["pixel_auroc"] for x in g if x.get("pixel_auroc") is not None]
            pro = [100 * x["aupro"] for x in g if x.get("aupro") is not None]
            px_s = f"{np.mean(px):.1f}" if px else "-"
            pro_s = f"{np.mean(pro):.1f}" if pro else "-"
            seeds = len({x.get("seed", 0) for x in g})
            parts.append(
                f"| {Path(d).name} | {len(g)} | {seeds} | {a.mean():.1f}{std} |{cell} "
                f"{ap.mean():.1f} | {px_s} | {pro_s} | "
                f"{np.mean([x['train_seconds'] for x in g]):.0f} | "
                f"{np.mean([x['train_images_per_s'] for x in g]):.0f} | "
                f"{np.mean([x['score_images_per_s'] for x in g]):.0f} | "
                f"{max(x['peak_rss_mb'] for x in g):.0f} |")
        pub = _published(method, ds)
        expected = CLASSES.get(ds)
        caveats = _caveats(ds, counts)
        pub_s = f" (published: {pub})" if pub is not None and not caveats else ""
        caveat_s = f" ({'; '.join(caveats)}: not comparable with a full mean)" if caveats else ""
        known = [(m, f) for m, f in zip(means, firsts) if np.isfinite(f)]
        first_s = ""
        if rescored and known:
            first_s = (f"; the same trained models with their first scoring: "
                       f"{np.mean([f for _, f in known]):.1f}")
            if len(known) < len(means):
                first_s += (f" over the {len(known)} classes that recorded it (these classes "
                            f"rescored: {np.mean([m for m, _ in known]):.1f})")
        if len(means) > 1:
            parts.append(f"\nMean image AUROC over {len(means)} classes: "
                         f"**{np.mean(means):.1f}**{pub_s}{first_s}{caveat_s}\n")
        elif pub is not None and not (expected and expected > 1):  # one data set: its row
            parts.append(f"\nPublished image AUROC: {pub}\n")
    text = "\n".join(parts) + "\n" if parts else ""
    return (defaults_matrix(matrix) + ("\n" if text else "") if matrix else "") + text


def _latest(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lines of ``records`` that make rows: a rerun line replaces its row's earlier one."""
    return list({_row_id(r): r for r in records}.values())


def _by_data(records: list[dict[str, Any]]) -> dict[str, list[dict]]:
    """The lines of one table by their data (a class of a dataset, or a folder)."""
    by_data: dict[str, list[dict]] = {}
    for r in records:
        by_data.setdefault(r["data"], []).append(r)
    return by_data


def _tables(records: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict]]:
    """The lines of each table, outside the ``defaults`` suite's matrix: (method with its
    label in brackets, dataset) -> lines."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        if r.get("suite") == "defaults":
            continue
        ds = Path(r["data"]).name.split(":")[0]
        label = f" ({r['label']})" if r.get("label") else ""
        groups.setdefault((r["method"] + label, ds), []).append(r)
    return groups


def _published(method: str, ds: str) -> float | None:
    """The published mean AUROC set beside a table: its row's own, else its method's."""
    return PUBLISHED.get((method, ds), PUBLISHED.get((method.split(" (")[0], ds)))


def _caveats(ds: str, counts: list[int]) -> list[str]:
    """Why a mean over classes with ``counts`` runs each is not a dataset's full mean."""
    expected = CLASSES.get(ds)
    caveats = []
    if expected and len(counts) < expected:
        caveats.append(f"only {len(counts)} of the {expected} classes")
    if len(set(counts)) > 1:
        caveats.append(f"classes with {min(counts)} to {max(counts)} runs")
    return caveats


#: Said wherever CIFAR-10 figures stand beside published ones: the benchmark reads CIFAR-10 from
#: JPEG files (``cifar10_jpeg.npz``), the papers measured on the original pixels.
CIFAR10_COPY = ("CIFAR-10 here is the data folder's JPEG copy (`cifar10_jpeg.npz`: quality 75, "
                "4:2:0 chroma), not the original pixels the published figures were measured on; "
                "the notes of issue 4 measure what such a loss costs.")


def published_summary(records_by_dir: dict[str, list[dict[str, Any]]]) -> str:
    """One table of every mean set beside a published figure in the tables below (all
    classes of the dataset, equal runs per class): ours, the published figure and the
    difference, in the order of the tables. Empty when there is none."""
    lines, datasets = [], set()
    for d, records in records_by_dir.items():
        for (method, ds), rs in sorted(_tables(_latest(records)).items()):
            pub = _published(method, ds)
            by_data = _by_data(rs)
            counts = [len(v) for v in by_data.values()]
            if pub is None or len(by_data) < 2 or _caveats(ds, counts):
                continue
            datasets.add(ds)
            mean = float(np.mean([np.mean([_pct_value(r.get("image_auroc")) for r in g])
                                  for g in by_data.values()]))
            seeds = len({r.get("seed", 0) for r in rs})
            lines.append(f"| {method} | {ds} | `{d}` | {len(rs)} | {seeds} | {mean:.1f} | "
                         f"{pub} | {mean - pub:+.2f} |")
    if not lines:
        return ""
    return ("## Published image AUROC beside ours\n\n"
            "Generated from the result lines: every table below whose mean covers all the "
            "dataset's classes with as many runs each and has a published figure. Mean "
            "image AUROC %; difference in points (ours minus published, from the unrounded "
            "mean). Several rows of one method are settings or protocols tried in turn; the "
            "notes say which row is an issue's figure and how it was chosen."
            + (" " + CIFAR10_COPY if "cifar10" in datasets else "") + "\n\n"
            "| table | data | results | runs | seeds | mean % | published % | difference |\n"
            "|---|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n")


def defaults_matrix(records: list[dict[str, Any]]) -> str:
    """Methods (rows) by datasets (columns): image AUROC, pixel AUROC where the data has
    masks, and seconds of training; the mean over seeds where several ran."""
    datasets = list(dict.fromkeys(r["data"] for r in records))
    methods = list(dict.fromkeys(r["method"] for r in records))
    head = [Path(d).name if "/" in d else d for d in datasets]
    lines = ["### Every method with its defaults\n",
             "Cells: image AUROC % / pixel AUROC % (where the data has masks), training "
             "seconds; the mean over seeds where several ran.\n",
             "| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(datasets)]
    for m in methods:
        cells = []
        for d in datasets:
            rs = [r for r in records if r["method"] == m and r["data"] == d]
            if not rs:
                cells.append("-")
                continue
            img = np.mean([_pct_value(r.get("image_auroc")) for r in rs])
            px = [100 * r["pixel_auroc"] for r in rs if r.get("pixel_auroc") is not None]
            cell = f"{img:.1f}" + (f" / {np.mean(px):.1f}" if px else "")
            cells.append(f"{cell}, {np.mean([r['train_seconds'] for r in rs]):.0f} s")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def suite_commands(recs: list[dict[str, Any]], out: str) -> tuple[list[str], int]:
    """The ``oneclass bench`` commands that make the lines ``recs`` (into ``out``), and how
    many lines match no row of their suite as it is now.

    A line belongs to a suite row when its key is that row's with one of the seeds (or one
    of its rescoring variants). Rows recorded with the same seeds share a command; others
    get ``--label`` with the row's label; ``--methods`` when only some methods are recorded.
    """
    keys = {r["key"] for r in recs}
    commands: list[str] = []
    matched: set[str] = set()
    for su in sorted({r["suite"] for r in recs}):
        jobs = SUITES.get(su, [])
        seeds_of: list[tuple[dict, tuple[int, ...]]] = []
        for job in jobs:
            found = []
            for seed in sorted({r.get("seed", 0) for r in recs if r["suite"] == su}):
                j = {**job, "seed": seed}
                ks = [_key(j)] + [_key({**v, "seed": seed}) for v, _ in _variant_jobs(job)]
                hit = [k for k in ks if k in keys]
                if hit:
                    found.append(seed)
                    matched.update(hit)
            if found:
                seeds_of.append((job, tuple(found)))
        if not seeds_of:
            continue
        methods = sorted({j["method"] for j, _ in seeds_of})
        m_opt = f" --methods {','.join(methods)}" if set(methods) < {j["method"] for j in jobs} \
            else ""
        root = "" if su == "smoke" else " --data-root ../shared/data"
        by_seeds: dict[tuple[int, ...], list[dict]] = {}
        for job, seeds in seeds_of:
            by_seeds.setdefault(seeds, []).append(job)
        fewest = min(by_seeds, key=len)  # seeds every row has, when there are such
        base = fewest if all(set(fewest) <= set(k) for k in by_seeds) else \
            max(by_seeds, key=lambda k: len(by_seeds[k]))
        opts = (su, m_opt, root, out)

        rows_not_run = len(jobs) - len(seeds_of) - sum(
            1 for j in jobs if m_opt and j["method"] not in methods)

        def labels(group: list[dict]) -> list[str]:  # '' selects the unlabeled rows
            return list(dict.fromkeys(j.get("label", "") for j in group))

        def by_label(seeds: tuple[int, ...], group: list[dict], jobs=jobs,
                     methods=methods if m_opt else None, opts=opts) -> list[str]:
            """A command per label; --only when the row ran on some of its datasets."""
            out = []
            for lab in labels(group):
                ran = list(dict.fromkeys(j["data"] for j in group if j.get("label", "") == lab))
                row = {j["data"] for j in jobs if j.get("label", "") == lab
                       and (methods is None or j["method"] in methods)}
                out.append(_command(*opts, seeds, lab, ran if set(ran) < row else None))
            return out

        # the seeds most rows have: the whole suite (or, when some rows are not recorded, the
        # recorded rows by label); rows with other seeds: by label, as one adds seeds to a row
        if rows_not_run == 0:
            commands.append(_command(*opts, base))
        else:
            commands += by_label(base, by_seeds[base])
        for seeds, group in sorted(by_seeds.items()):
            if seeds != base:
                commands += by_label(seeds, group)
    return commands, sum(1 for r in recs if r["key"] not in matched)


def _command(su: str, m_opt: str, root: str, out: str, seeds: tuple[int, ...],
             label: str | None = None, only: list[str] | None = None) -> str:
    s_opt = f" --seeds {','.join(map(str, seeds))}" if seeds != (0,) else ""
    l_opt = f" --label '{label}'" if label is not None else ""
    o_opt = f" --only '{','.join(only)}'" if only else ""
    return f"oneclass bench {su}{s_opt}{m_opt}{l_opt}{o_opt}{root} --out {out}"


#: Tables written by the throughput commands: file -> (heading, suite that writes it).
_TABLES = {
    "speed.md": ("Network throughput", "speed --score-batch 32,64"),
    "speed-anogan.md": ("AnoGAN latent search: batched against one image at a time", "speed-anogan"),
    "export.md": ("ONNX export: onnxruntime against torch", "export"),
    "serve.md": ("HTTP service under load", "serve"),
    "predict.md": ("Batch scoring of image folders", "predict"),
}


def _table_date(path: Path) -> str:
    """The day a throughput table was made: its last commit when git tracks it unchanged (a
    fresh checkout stamps every file with the checkout time), else its modification time."""
    try:
        opts = {"cwd": path.parent, "capture_output": True, "text": True, "timeout": 20}
        log_ = subprocess.run(["git", "log", "-1", "--format=%cs", "--", path.name], **opts)
        status = subprocess.run(["git", "status", "--porcelain", "--", path.name], **opts)
        if log_.returncode == 0 and log_.stdout.strip() and status.returncode == 0 \
                and not status.stdout.strip():
            return log_.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return date.fromtimestamp(path.stat().st_mtime).isoformat()


def write_docs(result_dirs: list[Path], out: Path, notes: Path | None = None) -> Path:
    """Build ``docs/benchmarks.md`` from results (JSON lines and speed tables), never by hand."""
    parts = ["# Benchmarks", "",
             "Generated by `oneclass bench docs` from the results of the commands below; "
             "the notes section is kept in `docs/benchmark-notes.md`.", ""]
    lines = {str(d): read_jsonl(Path(d) / "results.jsonl")
             for d in result_dirs if (Path(d) / "results.jsonl").exists()}
    summary = published_summary(lines)
    if summary:
        parts += [summary]
    if notes is not None and Path(notes).exists():
        parts += [Path(notes).read_text().strip(), ""]
    for d in result_dirs:
        d = Path(d)
        if str(d) in lines:
            recs = lines[str(d)]
            suites = sorted({r["suite"] for r in recs})
            dates = sorted({r["date"] for r in recs})
            machines = sorted({r["machine"] for r in recs})
            parts.append(f"## Results in `{d}` ({', '.join(suites)})\n")
            if (d / "compare.md").exists():
                parts.append("These lines were written by `oneclass bench compare` (command "
                             "below), which runs oneclass's side of the comparison.\n")
            else:
                commands, unmatched = suite_commands(recs, f"runs/{d.name}")
                parts.append("Commands (derived from the recorded lines: their suites, seeds, "
                             "rows and methods):\n")
                parts += [f"    {c}" for c in commands]
                if unmatched:
                    parts.append(f"\n{unmatched} lines match no row of their suite as it is "
                                 "now (other datasets, `--set` overrides or renamed rows): "
                                 "their commands are in the notes.")
            parts.append(f"\nDates: {', '.join(dates)}. Machine: {'; '.join(machines)}.\n")
            parts.append(markdown(recs))
        elif not d.is_dir():
            print(f"warning: {d}: no such results folder; left out of {out}", file=sys.stderr)
        cmp = d / "compare.md"
        if cmp.exists():
            parts.append(f"## Side by side with anomalib (`{d}`)\n")
            parts.append("Command: `oneclass bench compare --data-root ../shared/data --out "
                         f"{d}` (after `make compare`). The anomalib lines record neither date "
                         "nor machine; the oneclass lines above do.\n")
            parts.append(cmp.read_text())
        for fname, (title, suite) in _TABLES.items():
            sp = d / fname
            if sp.exists():
                parts.append(f"## {title} (`{d}`)\n")
                parts.append(f"Command: `oneclass bench {suite} --out {d}` "
                             f"(run on {_table_date(sp)}).\n")
                parts.append(sp.read_text())
    text = "\n".join(parts).rstrip() + "\n"
    write_text(out, text)
    return Path(out)
