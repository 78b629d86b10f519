"""Benchmark runner: resumable suites and generated docs."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

from oneclass.bench import run_suite, write_docs


def test_smoke_suite_records_results_and_resumes(tmp_path):
    logs: list[str] = []
    recs = run_suite("smoke", tmp_path / "b", log=logs.append)
    assert len(recs) == 1
    r = recs[0]
    assert 0.0 <= r["image_auroc"] <= 1.0 and r["train_seconds"] > 0 and r["peak_rss_mb"] > 0
    assert "commit" in r  # taken by the run's own process
    lines = (tmp_path / "b" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["data"] == "synthetic"
    # a second call finds the run done and does not train again
    run_suite("smoke", tmp_path / "b", log=logs.append)
    assert logs[-1].endswith("done")
    assert len((tmp_path / "b" / "results.jsonl").read_text().splitlines()) == 1
    doc = write_docs([tmp_path / "b"], tmp_path / "bench.md")
    text = doc.read_text()
    assert "oneclass bench smoke" in text and "| synthetic |" in text


def test_industrial_suite_runs_on_a_named_folder(tmp_path, mvtec_dir):
    recs = run_suite("industrial", tmp_path / "i", data=[str(mvtec_dir)], methods=["patchcore"],
                     overrides={"min_side": 64}, log=lambda s: None)
    assert len(recs) == 1
    r = recs[0]
    assert r["method"] == "patchcore" and r["data"] == str(mvtec_dir)
    for k in ("image_auroc", "pixel_auroc", "aupro"):
        assert 0.5 < r[k] <= 1.0, (k, r[k])  # the toy defects are easy for pretrained features
    assert r["train_seconds"] > 0 and r["score_images_per_s"] > 0
    assert r["train_images_per_s"] < 1e6  # the one pass over the images is recorded as an epoch
    assert "patchcore (set min_side=64) on toy" in (tmp_path / "i" / "results.md").read_text()


def test_flops_are_counted_and_set_against_the_peak():
    import torch

    from oneclass.speed import _efficiency, count_flops, matmul_peak

    lin = torch.nn.Linear(30, 20, bias=False)
    x = torch.randn(8, 30)
    assert count_flops(lambda: lin(x)) == 2 * 8 * 30 * 20
    # forward and the weight gradient (x needs no gradient)
    assert count_flops(lambda: lin(x).sum().backward()) == 2 * 2 * 8 * 30 * 20
    # grouped (depthwise) convolutions: backward = input grad + weight grad = 2x forward
    dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    xi = torch.randn(2, 8, 10, 10, requires_grad=True)
    fwd = 2 * 2 * 8 * 10 * 10 * 9
    assert count_flops(lambda: dw(xi)) == fwd
    assert count_flops(lambda: dw(xi).sum().backward()) == 3 * fwd
    peak = matmul_peak(n=128, seconds=0.05)
    assert peak > 1e6
    row: dict = {}
    _efficiency(row, "score", lambda: lin(x), 8, rate=1000.0, peak=peak)
    assert row["score GFLOP/img"] == round(2 * 30 * 20 / 1e9, 4)
    assert abs(row["score GFLOP/s"] - 1000 * 2 * 30 * 20 / 1e9) < 1e-12
    assert row["score % peak"] == round(100 * 1000 * 2 * 30 * 20 / peak, 1)


def test_fcdd_speed_rows_per_scoring_batch():
    import pytest

    from oneclass.cli import _batches
    from oneclass.errors import ConfigError
    from oneclass.speed import _fcdd_rows

    rows = _fcdd_rows("cnn28", (1, 28, 28), 8, "fp32", 0.01, {"fp32": 1e11, "bf16": 1e11}, (4, 16))
    assert [r["score batch"] for r in rows] == [4, 16]
    assert "train img/s" in rows[0] and "train img/s" not in rows[1]  # trained once
    assert all(r["score img/s"] > 0 for r in rows)
    # FLOPs per image do not depend on the batch size
    assert rows[0]["score GFLOP/img"] == rows[1]["score GFLOP/img"] > 0
    assert _batches("32,64") == (32, 64)
    for bad in ("", "0", "a,64"):
        with pytest.raises(ConfigError, match="--score-batch"):
            _batches(bad)


def test_compare_table_and_missing_environment(tmp_path, mvtec_dir):
    import pytest

    from oneclass.compare import compare_python, input_size, table
    from oneclass.errors import ConfigError

    with pytest.raises(ConfigError, match="make compare"):
        compare_python(str(tmp_path / "nope" / "python"))
    assert input_size(str(mvtec_dir)) == (24, 24)  # small images keep their size
    ours = [{"method": "patchcore", "data": "/x/kolektorsdd", "image_auroc": 0.9, "pixel_auroc": 0.95,
             "aupro": 0.8, "train_seconds": 12.0, "score_images_per_s": 20.0, "peak_rss_mb": 300.0,
             "n_train": 219, "n_test": 156, "machine": "x86_64, 2 cores, torch 2.13.0+cpu, 2 threads"}]
    theirs = [{**ours[0], "method": "padim", "aupro": None, "anomalib_version": "2.7.0",
               "weights": "random", "n_train": 243, "machine": None, "torch": "2.14.1+cu130"}]
    md = table(ours, theirs).splitlines()
    assert len(md) == 4
    # the image counts and torch builds of both sides are shown: they may differ
    assert md[2].startswith("| oneclass | patchcore | kolektorsdd | EfficientNet-Lite0 ImageNet | "
                            "219 / 156 | 2.13.0+cpu | 90.0 | 95.0 | 80.0")
    assert md[3].startswith("| anomalib 2.7.0 | padim | kolektorsdd | random | 243 / 156 | "
                            "2.14.1+cu130 | 90.0 | 95.0 | - |")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "compare.md").write_text("\n".join(md) + "\n")
    text = write_docs([tmp_path / "c"], tmp_path / "bench.md").read_text()
    assert "Side by side with anomalib" in text and md[3] in text


def test_percent_of_peak_is_taken_of_the_larger_limit():
    from oneclass.speed import against_best_peak

    rows = [{"variant": "fp32", "score GFLOP/s": 50.0, "score % peak": 99.0},
            {"variant": "channels_last+bf16", "train GFLOP/s": 100.0, "score GFLOP/s": 40.0}]
    best = against_best_peak(rows, [{"fp32": 100e9, "bf16": 300e9}, {"fp32": 125e9, "bf16": 200e9}])
    assert best == {"fp32": 125e9, "bf16": 300e9}
    assert rows[0]["score % peak"] == 40.0
    assert rows[1]["train % peak"] == round(100 * 100 / 300, 1) and rows[1]["score % peak"] == 13.3


def test_a_run_whose_process_dies_is_reported_not_waited_for():
    import multiprocessing as mp
    import os

    from oneclass.bench import wait_for

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=os._exit, args=(3,))  # dies without a result, like an OOM kill
    p.start()
    status, payload = wait_for(p, q, poll=0.2)
    p.join()
    assert status == "error"
    assert "exit code 3" in payload


def test_a_result_put_just_before_exit_is_not_lost():
    import multiprocessing as mp

    from oneclass.bench import wait_for

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    q.put(("ok", {"image_auroc": 0.5}))
    p = ctx.Process(target=abs, args=(0,))  # exits at once
    p.start()
    p.join()
    assert wait_for(p, q, poll=0.2) == ("ok", {"image_auroc": 0.5})


def _children(pid: int) -> list[int]:
    from pathlib import Path

    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text().split() if (task / "children").exists() else []
        kids += [int(k) for k in text]
    return kids


def test_sigterm_stops_the_running_job_too(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    if not os.path.exists(f"/proc/{os.getpid()}/task"):
        pytest.skip("needs /proc to find the job's process")
    code = "import sys; from oneclass.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "bench", "smoke", "--out", str(tmp_path),
                             "--set", "epochs=100000"],  # a job that would run for hours
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kids: list[int] = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not kids and proc.poll() is None:
            kids = [k for k in _children(proc.pid)
                    if "spawn_main" in open(f"/proc/{k}/cmdline").read()]
            time.sleep(0.1)
        assert kids, "the suite never started its run process"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) != 0
        deadline = time.time() + 10
        while time.time() < deadline and any(os.path.exists(f"/proc/{k}") for k in kids):
            time.sleep(0.1)
        alive = [k for k in kids if os.path.exists(f"/proc/{k}")
                 and open(f"/proc/{k}/stat").read().split()[2] != "Z"]
        assert not alive, f"run process {alive} outlived the suite"
    finally:
        if proc.poll() is None:
            proc.kill()
        for k in kids:
            if os.path.exists(f"/proc/{k}"):
                os.kill(k, signal.SIGKILL)


def test_markdown_means_only_over_several_data_sets():
    from oneclass.bench import markdown

    base = {"method": "fcdd", "label": "", "seed": 0, "image_ap": 0.5, "train_seconds": 1.0,
            "train_images_per_s": 1.0, "score_images_per_s": 1.0, "peak_rss_mb": 1.0}
    one = markdown([{**base, "data": "/x/kolektorsdd", "image_auroc": 0.8}])
    assert "| kolektorsdd | 1 | 1 | 80.0 |" in one and "Mean image AUROC" not in one
    two = markdown([{**base, "data": f"mnist:{c}", "image_auroc": a}
                    for c, a in ((0, 0.8), (1, 0.9))])
    assert "Mean image AUROC over 2 classes: **85.0**" in two
    assert "only 2 of the 10 classes: not comparable" in two and "published" not in two
    single = markdown([{**base, "data": "mnist:0", "image_auroc": 0.8, "method": "deep_svdd"}])
    assert "ublished" not in single  # one class of ten is no stand-in for the mean


def test_published_summary_lists_full_means_beside_their_published_figure(tmp_path):
    from oneclass.bench import published_summary, write_docs

    base = {"label": "", "image_ap": 0.5, "train_seconds": 1.0, "train_images_per_s": 1.0,
            "score_images_per_s": 1.0, "peak_rss_mb": 1.0}
    full = [{**base, "method": "deep_svdd", "data": f"mnist:{c}", "seed": s, "key": f"a{c}{s}",
             "image_auroc": 0.9025 + 0.01 * c + 0.0002 * s} for c in range(10) for s in (0, 1)]
    full.append(dict(full[0]))  # a rerun line replaces its row: still 2 runs of class 0
    full.append({**full[1], "key": "z", "suite": "defaults"})  # the defaults matrix's own
    part = [{**base, "method": "deep_svdd", "data": f"cifar10:{c}", "seed": 0, "key": f"b{c}",
             "image_auroc": 0.7} for c in range(9)]  # 9 of 10 classes: no full mean
    uneven = [{**base, "method": "anogan", "data": f"mnist:{c}", "seed": 0, "key": f"c{c}",
               "image_auroc": 0.9} for c in range(10)]
    uneven.append({**uneven[0], "key": "c0b", "seed": 1})  # class 0 with 2 runs, the rest 1
    unpublished = [{**base, "method": "hsc", "data": f"mnist:{c}", "seed": 0, "key": f"d{c}",
                    "image_auroc": 0.9} for c in range(10)]
    text = published_summary({"r1": full + part, "r2": uneven + unpublished})
    # class means 90.26 ... 99.26, mean 94.76 (shown 94.8); the published 94.8: 0.04 below
    # (from the rounded mean it would read +0.00)
    assert "| deep_svdd | mnist | `r1` | 20 | 2 | 94.8 | 94.8 | -0.04 |" in text, text
    assert "cifar10" not in text and "anogan" not in text and "hsc" not in text
    assert "JPEG" not in text  # no CIFAR-10 figure, so no word about its JPEG copy
    cifar = [{**r, "data": r["data"].replace("mnist", "cifar10"), "key": "e" + r["key"]}
             for r in full]
    with_cifar = published_summary({"r1": full, "r3": cifar})
    assert "| deep_svdd | cifar10 | `r3` | 20 | 2 |" in with_cifar
    assert "JPEG copy (`cifar10_jpeg.npz`: quality 75" in with_cifar
    assert published_summary({"r2": uneven + unpublished}) == ""
    d = tmp_path / "b"
    d.mkdir()
    (d / "results.jsonl").write_text("".join(json.dumps({"suite": "x", **r, "date": "d",
                                                         "machine": "m"}) + "\n" for r in full))
    doc = write_docs([d], tmp_path / "bench.md").read_text()
    assert doc.index("## Published image AUROC beside ours") < doc.index("## Results in")
    assert f"| deep_svdd | mnist | `{d}` | 20 | 2 | 94.8 | 94.8 | -0.04 |" in doc


def test_markdown_counts_runs_and_seeds_apart_and_uses_the_sample_std():
    from oneclass.bench import markdown

    base = {"method": "deep_svdd", "label": "", "image_ap": 0.5, "train_seconds": 1.0,
            "train_images_per_s": 1.0, "score_images_per_s": 1.0, "peak_rss_mb": 1.0}
    recs = [{**base, "data": f"mnist:{c}", "seed": 0, "image_auroc": 0.9} for c in range(10)]
    recs += [{**base, "data": "mnist:0", "seed": 0, "image_auroc": 0.8}]  # e.g. another class
    text = markdown(recs)
    # two runs of one seed; sample std of 80 and 90 is 7.07 (the population std would be 5.0)
    assert "| mnist:0 | 2 | 1 | 85.0 ± 7.1 |" in text
    assert "classes with 1 to 2 runs: not comparable" in text and "published" not in text
    # rescored lines show the same models' first scoring beside them
    resc = [{**base, "data": f"cifar10:{c}", "seed": 0, "image_auroc": 0.6,
             "scored_after_auroc": 0.62} for c in range(10)]
    text = markdown(resc)
    assert "same models, first scoring %" in text and "| cifar10:3 | 1 | 1 | 60.0 | 62.0 |" in text
    assert "**60.0**" in text and "the same trained models with their first scoring: 62.0" in text


def test_docs_commands_are_derived_from_the_recorded_lines():
    from oneclass.bench import SUITES, suite_commands
    from oneclass.bench.suites import _key

    jobs = SUITES["fcdd-kolektor-seeds"]
    recs = []
    for i, job in enumerate(jobs):  # the first row with seeds 0-4, the others with 0-2
        for seed in range(5 if i == 0 else 3):
            recs.append({"suite": "fcdd-kolektor-seeds", "seed": seed,
                         "key": _key({**job, "seed": seed})})
    recs.append({"suite": "fcdd-kolektor-seeds", "seed": 0, "key": "[\"other\"]"})
    commands, unmatched = suite_commands(recs, "runs/x")
    assert commands[0] == ("oneclass bench fcdd-kolektor-seeds --seeds 0,1,2 --data-root "
                           "../shared/data --out runs/x")
    assert commands[1] == (f"oneclass bench fcdd-kolektor-seeds --seeds 0,1,2,3,4 --label "
                           f"'{jobs[0]['label']}' --data-root ../shared/data --out runs/x")
    assert len(commands) == 2 and unmatched == 1
    # only some methods of a suite recorded: --methods says which
    industrial = [j for j in SUITES["industrial"] if j["method"] == "patchcore"]
    recs = [{"suite": "industrial", "seed": 0, "key": _key({**j, "seed": 0})} for j in industrial]
    assert suite_commands(recs, "runs/i")[0] == [
        "oneclass bench industrial --methods patchcore --data-root ../shared/data --out runs/i"]


def test_failed_runs_make_the_suite_fail_after_recording_the_others(tmp_path, monkeypatch):
    import oneclass.bench.running as bench  # where a suite runs

    monkeypatch.setattr(bench, "_run_jobs", lambda *a: ["fcdd x seed 0: boom"])
    with pytest.raises(bench.BenchError, match="1 of 1 runs of smoke failed.*boom"):
        run_suite("smoke", tmp_path / "s")


def test_result_lines_record_the_code_version():
    import re
    import shutil
    import subprocess

    import oneclass
    from oneclass.bench.running import _record

    rec = _record({"method": "fcdd", "data": "x", "seed": 0, "params": {}}, "k", "smoke", {})
    src = pathlib.Path(oneclass.__file__).resolve().parent
    top = shutil.which("git") and subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=src, capture_output=True, text=True)
    git = top and top.returncode == 0 and subprocess.run(
        ["git", "describe", "--always", "--abbrev=10"], cwd=src, capture_output=True, text=True)
    if (not git or git.returncode != 0  # not a git checkout
            or pathlib.Path(top.stdout.strip()).resolve() / "src" / "oneclass" != src):
        assert rec["commit"] is None  # or an installed copy that lies inside one
        return
    assert re.fullmatch(r"[0-9a-zA-Z._-]*[0-9a-f]{10}(-dirty)?", rec["commit"])
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--",
                              str(src)], cwd=src, capture_output=True, text=True).stdout.strip()
    assert rec["commit"] == git.stdout.strip() + ("-dirty" if changed else "")


def test_an_installed_copy_inside_another_checkout_records_no_commit(tmp_path):
    """A copy of the package in a virtual environment that lies in some other git
    checkout is not that checkout's code: no commit. As src/oneclass of a checkout, the
    checkout's commit."""
    import os
    import shutil
    import subprocess

    import oneclass

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "other"
    site = repo / ".venv" / "lib" / "site-packages"
    src = repo / "src"
    for dest in (site, src):
        shutil.copytree(pathlib.Path(oneclass.__file__).parent, dest / "oneclass",
                        ignore=shutil.ignore_patterns("__pycache__"))
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": os.environ["PATH"]}
    (repo / "notes.md").write_text("a")
    (repo / ".gitignore").write_text("__pycache__/\n")  # as the project's own
    for args in (["init", "-q"], ["add", "src", "notes.md", ".gitignore"],
                 ["commit", "-q", "-m", "x"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env=env, capture_output=True)
    head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()
    code = "import sys; sys.path.insert(0, sys.argv[1]); from oneclass.bench.running import _commit; " \
           "import oneclass; assert oneclass.__file__.startswith(sys.argv[1]); print(_commit())"

    def seen(where):
        return subprocess.run([sys.executable, "-c", code, str(where)], capture_output=True,
                              text=True, check=True).stdout.strip()

    assert seen(site) == "None"
    assert seen(src) == head
    # edits outside the package (docs, result lines) are not the code a run used; an edit
    # to the package, or a file added to it, is
    (repo / "notes.md").write_text("b")
    assert seen(src) == head
    (src / "oneclass" / "extra.py").write_text("x = 1\n")
    assert seen(src) == head + "-dirty"
    (src / "oneclass" / "extra.py").unlink()
    with open(src / "oneclass" / "bench" / "running.py", "a") as f:
        f.write("\n# edited\n")
    assert seen(src) == head + "-dirty"


def test_python_m_oneclass_is_the_command():
    import subprocess

    import oneclass

    out = subprocess.run([sys.executable, "-m", "oneclass", "--version"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(oneclass.__version__)


def test_table_dates_come_from_git_not_from_the_checkout_time(tmp_path):
    import os
    import shutil
    import subprocess

    from oneclass.bench.tables import _table_date

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    table = tmp_path / "speed.md"
    table.write_text("| a |\n")
    os.utime(table, (1_700_000_000, 1_700_000_000))  # 2023-11-14
    assert _table_date(table) == "2023-11-14"  # not in a repository: the file's time
    env = {**os.environ, "GIT_AUTHOR_DATE": "2026-11-22T12:00:00", "GIT_COMMITTER_DATE":
           "2026-11-22T12:00:00", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["init", "-q"], ["add", "speed.md"], ["commit", "-qm", "table"]):
        subprocess.run(["git", *cmd], cwd=tmp_path, env=env, check=True)
    assert _table_date(table) == "2026-11-22"  # committed and unchanged: the commit's day
    table.write_text("| b |\n")
    os.utime(table, (1_700_100_000, 1_700_100_000))  # 2023-11-16 (a stat git has not seen)
    assert _table_date(table) == "2023-11-16"  # changed since: a new run, its own time


def test_label_filter_keeps_only_the_matching_rows(tmp_path, monkeypatch):
    import oneclass.bench.running as bench  # where a suite runs
    from oneclass.errors import ConfigError

    seen = []
    monkeypatch.setattr(bench, "_run_jobs", lambda jobs, *a: seen.extend(jobs))
    run_suite("fcdd-kolektor-seeds", tmp_path / "k", data_root="/nowhere", seeds=[3, 4],
              label="528x216")
    assert [j["seed"] for j in seen] == [3, 4]
    assert all(j["params"]["size"] == [528, 216] and "528x216" in j["label"] for j in seen)
    with pytest.raises(ConfigError, match="matches the filters"):
        run_suite("fcdd-kolektor-seeds", tmp_path / "k", label="no such row")
    # a label that is also part of longer ones selects its own row only; '' the unlabeled
    seen.clear()
    run_suite("fcdd-kolektor-seeds", tmp_path / "k", data_root="/nowhere", label="unsupervised")
    assert {j["label"] for j in seen} == {"unsupervised"}
    seen.clear()
    run_suite("anogan-cifar10", tmp_path / "k", data_root="/nowhere", label="")
    assert seen and {j.get("label", "") for j in seen} == {""}


def test_deep_sad_suites_follow_the_papers_scenarios():
    """Scenario (i) of Ruff et al. 2020 leaves the unlabeled data unpolluted; the published
    figures belong to those rows, and the polluted twins keep the older jobs unchanged."""
    from oneclass.bench import PUBLISHED, SUITES
    from oneclass.bench.suites import _key

    for name, ds in (("sad-mnist", "mnist"), ("sad-fmnist", "fashion-mnist"),
                     ("sad-cifar10", "cifar10")):
        clean, polluted = SUITES[name], SUITES[name + "-polluted"]
        assert len(clean) == len(polluted) == 20
        assert {j["semi"]["ratio_pollution"] for j in clean} == {0.0}
        assert {j["semi"]["ratio_pollution"] for j in polluted} == {0.1}
        for j in clean + polluted:  # one known anomaly class, never the normal one
            c = int(j["data"].split(":")[1])
            assert j["semi"]["known_outlier_class"] == (c + 1) % 10
        assert {j["semi"]["ratio_known_outlier"] for j in clean} == {0.05, 0.0}
        assert not {_key(j) for j in clean} & {_key(j) for j in polluted}
        assert all((f"deep_sad ({j['label']})", ds) in PUBLISHED for j in clean)
        assert not any((f"deep_sad ({j['label']})", ds) in PUBLISHED for j in polluted)
    for name, ds in (("sad-mnist-long", "mnist"), ("sad-cifar10-long", "cifar10")):
        long_ = SUITES[name]  # the reference's 150 + 150 epochs, unpolluted
        assert {j["semi"]["ratio_pollution"] for j in long_} == {0.0}
        assert {(j["params"]["pretrain_epochs"], j["params"]["epochs"],
                 tuple(j["params"]["lr_milestones"])) for j in long_} == {(150, 150, (50,))}
        assert all((f"deep_sad ({j['label']})", ds) in PUBLISHED for j in long_)
        short = {_key({**j, "params": {}}) for j in SUITES[name.removesuffix("-long")]}
        assert {_key({**j, "params": {}}) for j in long_} == short  # same data, longer training
    # the second known-class row: same training as the long CIFAR-10 row, known class C+2
    known2, long_ = SUITES["sad-cifar10-long-known2"], SUITES["sad-cifar10-long"]
    assert [j["semi"]["known_outlier_class"] for j in known2] == [(c + 2) % 10 for c in range(10)]
    assert {json.dumps(j["params"], sort_keys=True) for j in known2} == \
        {json.dumps(j["params"], sort_keys=True) for j in long_}
    assert {j["semi"]["ratio_known_outlier"] for j in known2} == {0.05}
    assert not {_key(j) for j in known2} & {_key(j) for j in long_}
    assert all((f"deep_sad ({j['label']})", "cifar10") in PUBLISHED for j in known2)
    # the paper's whole protocol: every (normal, known) pair once, the two rows above included
    every = SUITES["sad-cifar10-long-all-known"]
    pairs = [(int(j["data"].split(":")[1]), j["semi"]["known_outlier_class"]) for j in every]
    assert sorted(pairs) == [(c, k) for c in range(10) for k in range(10) if k != c]
    assert pairs[:10] == [(c, (c + 1) % 10) for c in range(10)]  # one known class at a time
    ratio05 = [j for j in long_ if j["semi"]["ratio_known_outlier"] == 0.05]
    assert {_key(j) for j in known2 + ratio05} <= {_key(j) for j in every}


def test_defaults_suite_runs_every_registered_method_untouched():
    from oneclass.bench import SUITES, markdown
    from oneclass.registry import available

    jobs = SUITES["defaults"]
    data = list(dict.fromkeys(j["data"] for j in jobs))
    assert {j["method"] for j in jobs} == set(available())  # a new method must join the check
    assert all(j["params"] == {} and set(j) == {"method", "data", "params", "label"} for j in jobs)
    assert len(jobs) == len(available()) * len(data)
    assert any(":rgb" in d for d in data) and "{root}/kolektorsdd" in data
    # the matrix: a row per method, a column per data set, pixel AUROC only where measured
    recs = [{"suite": "defaults", "method": m, "data": d, "label": "defaults", "seed": s,
             "image_auroc": a, "pixel_auroc": px, "train_seconds": t}
            for m, d, s, a, px, t in (("fcdd", "synthetic:grid:120x200:rgb", 0, 0.9, 0.8, 10),
                                      ("fcdd", "synthetic:grid:120x200:rgb", 1, 0.7, 0.6, 30),
                                      ("fcdd", "elpv", 0, 0.6, None, 5),
                                      ("doc", "/x/kolektorsdd", 0, 0.55, None, 7))]
    text = markdown(recs)
    lines = text.splitlines()
    assert "| method | synthetic:grid:120x200:rgb | elpv | kolektorsdd |" in lines
    assert "| fcdd | 80.0 / 70.0, 20 s | 60.0, 5 s | - |" in lines
    assert "| doc | - | - | 55.0, 7 s |" in lines
    assert "### fcdd" not in text  # not repeated as per-method tables


def test_machine_names_the_cpu_model(monkeypatch, tmp_path):
    import oneclass.bench.running as bench  # where a suite runs

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Some  CPU 9000\nflags\t: a b\n")
    real_open = open
    monkeypatch.setattr(bench, "open", lambda path, *a, **k: real_open(
        info if path == "/proc/cpuinfo" else path, *a, **k), raising=False)
    assert bench.cpu_model() == "Some CPU 9000"
    assert bench.machine().startswith("Some CPU 9000, ") and " cores, torch " in bench.machine()
    info.write_text("processor\t: 0\n")  # no model line: the architecture instead
    assert bench.cpu_model() and bench.cpu_model() != "Some CPU 9000"


def test_score_variants_rescore_the_trained_model_as_a_run_with_those_params(tmp_path,
                                                                            monkeypatch):
    import oneclass.bench.running as bench  # where a suite runs

    base = {"method": "anogan", "data": "synthetic", "label": "tiny", "test_limit": 24,
            "params": {"epochs": 1, "width": 8, "z_dim": 4, "batch_size": 16,
                       "search_steps": 0, "search_candidates": 4}}
    variant = {"search_steps": 20, "lam": 0.9}
    monkeypatch.setitem(bench.SUITES, "x-variants", [{**base, "score_variants": [variant]}])
    monkeypatch.setitem(bench.SUITES, "x-direct", [
        {**base, "params": {**base["params"], **variant}}])
    logs: list[str] = []
    recs = {r["params"]["search_steps"]: r for r in run_suite("x-variants", tmp_path / "v",
                                                              log=logs.append)}
    assert sorted(recs) == [0, 20] and recs[20]["scored_after"] == recs[0]["key"]
    assert recs[20]["scored_after_auroc"] == recs[0]["image_auroc"]  # the same model's
    assert recs[20]["label"] == "tiny, lam=0.9, search_steps=20, 24 test images"
    assert recs[0]["image_auroc"] != recs[20]["image_auroc"]
    assert "lam=0.9, search_steps=20 " in logs[-1]
    # the rescored line is what a run trained with those params gives, under the same key
    direct = run_suite("x-direct", tmp_path / "d", log=lambda s: None)[0]
    assert direct["key"] == recs[20]["key"]
    assert direct["image_auroc"] == recs[20]["image_auroc"]
    # resumed: done; with the variant's line lost, the job runs again and repeats the first
    run_suite("x-variants", tmp_path / "v", log=logs.append)
    assert logs[-1].endswith("done")
    lines = (tmp_path / "v" / "results.jsonl").read_text().splitlines()
    (tmp_path / "v" / "results.jsonl").write_text(lines[0] + "\n")
    run_suite("x-variants", tmp_path / "v", log=logs.append)
    assert f"recorded: {100 * recs[0]['image_auroc']:.2f}" in logs[-1]
    assert "AUROC " + f"{100 * recs[0]['image_auroc']:.2f} (recorded" in logs[-1]
    assert len((tmp_path / "v" / "results.jsonl").read_text().splitlines()) == 2


def test_anogan_cifar10_width64_rows_are_rescored_with_the_papers_500_steps():
    from oneclass.bench import SUITES
    from oneclass.bench.suites import _key, _variant_jobs

    rows = [j for j in SUITES["anogan-cifar10"] if j.get("label", "").endswith("width 64")]
    assert len(rows) == 10 and all(j["params"]["search_steps"] == 100 for j in rows)
    for j in rows:
        ((v, name),) = _variant_jobs(j)
        assert name == "search_steps=500"
        assert v["params"] == {**j["params"], "search_steps": 500}
        assert v["label"] == j["label"] + ", search_steps=500" and _key(v) != _key(j)
    chosen = [j for j in SUITES["anogan-cifar10"] if "search chosen on validation" in j.get("label", "")]
    assert not any("score_variants" in j for j in SUITES["anogan-cifar10"]
                   if j not in rows and j not in chosen)


def test_anogan_cifar10_chosen_search_row_is_rescored_with_the_defaults_on_the_same_models():
    from oneclass.bench import SUITES
    from oneclass.bench.suites import _key, _variant_jobs

    w64 = {j["data"]: j for j in SUITES["anogan-cifar10"] if j.get("label", "").endswith("width 64")}
    rows = [j for j in SUITES["anogan-cifar10"] if "search chosen on validation" in j.get("label", "")]
    assert len(rows) == 10
    for j in rows:  # the width-64 row's training, the validation's choice for the search
        assert j["params"] == {**w64[j["data"]]["params"], "lam": 0.1, "search_steps": 0}
        ((v, name),) = _variant_jobs(j)
        assert name == "lam=0.1, search_steps=100"
        assert _key(v) not in (_key(j), _key(w64[j["data"]]))


class _FakeRun:
    """A run's process that records a fixed result at once (no training)."""

    def __init__(self, target, args):
        self.job, _, self.q = args

    def start(self):
        self.q.put(("ok", {"image_auroc": 0.75, "image_ap": 0.7, "train_seconds": 1.0,
                           "train_images_per_s": 1.0, "score_images_per_s": 1.0,
                           "peak_rss_mb": 1.0, "commit": None}))

    def join(self, timeout=None):
        pass

    def is_alive(self):
        return False


@pytest.fixture
def fake_runs(monkeypatch):
    import queue
    import types

    import oneclass.bench.running as bench  # where a suite runs

    started: list[dict] = []

    def process(target, args):
        started.append(args[0])
        return _FakeRun(target, args)

    ctx = types.SimpleNamespace(Queue=queue.Queue, Process=process)
    monkeypatch.setattr(bench.mp, "get_context", lambda name: ctx)
    return started


def test_a_cut_short_last_result_line_is_ignored_and_a_bad_middle_line_named(tmp_path, fake_runs,
                                                                            caplog):
    from oneclass.errors import ConfigError

    out = tmp_path / "b"
    run_suite("smoke", out, log=lambda s: None)
    path = out / "results.jsonl"
    good = path.read_text()
    path.write_text(good + '{"key": "x", "suite": "smoke", "image_au')  # killed mid-write
    run_suite("smoke", out, log=lambda s: None)
    assert len(fake_runs) == 1  # resumed: the recorded run is not run again
    assert "cut short" in caplog.text
    assert "| synthetic |" in write_docs([out], tmp_path / "bench.md").read_text()
    # the next line written starts on a line of its own: the cut-short one is dropped
    run_suite("smoke", out, overrides={"epochs": 1}, log=lambda s: None)
    from oneclass.io import read_jsonl

    assert [r["label"] for r in read_jsonl(path)] == ["", "set epochs=1"]
    assert path.read_text().endswith("\n") and "image_au\n" not in path.read_text()
    path.write_text('{"key": \n' + good)
    with pytest.raises(ConfigError, match="results.jsonl: line 1 is not a JSON record"):
        run_suite("smoke", out, log=lambda s: None)
    with pytest.raises(ConfigError, match="line 1"):
        write_docs([out], tmp_path / "bench.md")


def test_runs_with_set_overrides_are_a_row_of_their_own(tmp_path, fake_runs):
    from oneclass.bench import markdown

    out = tmp_path / "b"
    (plain,) = run_suite("smoke", out, log=lambda s: None)
    (other,) = run_suite("smoke", out, overrides={"epochs": 1, "noise": "blobs"},
                         log=lambda s: None)
    assert plain["label"] == "" and other["label"] == 'set epochs=1 noise="blobs"'
    assert other["key"] != plain["key"] and len(fake_runs) == 2
    # the suite's own value is no override: the same run, the same row
    (same,) = run_suite("smoke", out, overrides={"epochs": 3}, log=lambda s: None)
    assert same == plain and len(fake_runs) == 2
    md = markdown([plain, other])
    assert md.count("| synthetic | 1 | 1 |") == 2  # two tables of one run, not one of two
    assert 'set epochs=1 noise="blobs"' in md


def test_a_run_recorded_by_another_suite_is_reused_as_a_row_of_this_one(tmp_path, fake_runs,
                                                                       monkeypatch):
    import oneclass.bench.running as bench  # where a suite runs

    job = {"method": "fcdd", "data": "synthetic", "params": {"epochs": 1}}
    monkeypatch.setitem(bench.SUITES, "x-a", [{**job, "label": "a"}])
    monkeypatch.setitem(bench.SUITES, "x-b", [{**job, "label": "b"},
                                             {**job, "data": "synthetic:blobs", "label": "b"}])
    monkeypatch.setitem(bench.SUITES, "x-c", [{**job, "label": "a"}])
    monkeypatch.setitem(bench.SUITES, "x-d", [{**job, "label": "d"}])
    out = tmp_path / "b"
    run_suite("x-a", out, log=lambda s: None)
    recs = run_suite("x-b", out, log=lambda s: None)
    assert len(fake_runs) == 2  # the shared run is not trained again
    assert [(r["suite"], r["label"], r["data"]) for r in recs] == [
        ("x-b", "b", "synthetic"), ("x-b", "b", "synthetic:blobs")]
    assert recs[0]["recorded_as"] == {"suite": "x-a", "label": "a"}
    assert "### fcdd (b) on synthetic" in (out / "results.md").read_text()
    # the same row (same label) under a third suite: reused, not copied, shown once
    (rec,) = run_suite("x-c", out, log=lambda s: None)
    assert rec["suite"] == "x-a" and len(fake_runs) == 2
    assert len((out / "results.jsonl").read_text().splitlines()) == 3
    text = write_docs([out], tmp_path / "bench.md").read_text()
    assert text.count("### fcdd (a) on synthetic") == 1
    assert "| synthetic | 1 | 1 |" in text.split("### fcdd (a) on synthetic")[1]
    # every run of the call reused: results.md still shows the copied row
    run_suite("x-d", out, log=lambda s: None)
    assert "### fcdd (d) on synthetic" in (out / "results.md").read_text()


def test_compare_shows_only_this_sizes_anomalib_lines(tmp_path, monkeypatch):
    import oneclass.compare as compare

    monkeypatch.setattr(compare, "input_size", lambda folder: (16, 16))
    line = {"data": "/d/x", "image_auroc": 0.5, "train_seconds": 1.0,
            "score_images_per_s": 1.0, "peak_rss_mb": 1.0}
    lines = [{**line, "method": "patchcore"},  # an older line: no size
             {**line, "method": "patchcore", "size": [32, 32]},
             {**line, "method": "patchcore", "size": [16, 16], "image_auroc": 0.6},
             {**line, "method": "padim", "size": [16, 16]},
             {**line, "method": "patchcore", "size": [16, 16], "data": "/d/y"}]
    (tmp_path / "anomalib.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    got = compare.run_anomalib("/d/x", tmp_path, "patchcore")  # all done: nothing runs
    assert [(r["method"], r["size"], r["image_auroc"]) for r in got] == [
        ("patchcore", [16, 16], 0.6)]


def _fake_runner(tmp_path, body: str) -> str:
    """A stand-in for the compare environment's Python: a shell script running ``body``
    with the runner's arguments in ``$@`` (it is called as ``python -W ignore -m ...``)."""
    script = tmp_path / "fakepy"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


def test_compare_runs_each_anomalib_model_in_its_own_process(tmp_path, monkeypatch):
    import oneclass.compare as compare

    monkeypatch.setattr(compare, "input_size", lambda folder: (16, 16))
    # the fake runner appends one line for the model it was given, after a cut-short line
    # that a runner killed mid-write would leave
    script = tmp_path / "fakepy"
    script.write_text(f"#!{sys.executable}\n" + """import sys
from oneclass.io import append_jsonl
args = sys.argv
model, out = args[args.index("--models") + 1], args[args.index("--out") + 1]
with open(sys.argv[0] + ".calls", "a") as fh:
    fh.write(model + "\\n")
with open(out, "a") as fh:
    fh.write('{"cut')
append_jsonl(out, {"library": "anomalib", "method": model, "data": "/d/x", "size": [16, 16]})
""")
    script.chmod(0o755)
    python = str(script)
    got = compare.run_anomalib("/d/x", tmp_path, "PatchCore, padim", python=python)
    assert (tmp_path / "fakepy.calls").read_text().split() == ["patchcore", "padim"]
    assert [r["method"] for r in got] == ["patchcore", "padim"]
    # each cut-short line was dropped before the next record, none glued to it
    lines = (tmp_path / "anomalib.jsonl").read_text().splitlines()
    assert [json.loads(x)["method"] for x in lines] == ["patchcore", "padim"]


def test_a_killed_anomalib_runner_names_the_signal_and_what_was_recorded(tmp_path, monkeypatch):
    import oneclass.compare as compare
    from oneclass.errors import ConfigError

    monkeypatch.setattr(compare, "input_size", lambda folder: (16, 16))
    line = {"library": "anomalib", "method": "patchcore", "data": "/d/x", "size": [16, 16]}
    (tmp_path / "anomalib.jsonl").write_text(json.dumps(line) + "\n")
    python = _fake_runner(tmp_path, "kill -9 $$")
    with pytest.raises(ConfigError, match=r"failed on padim \(killed by SIGKILL, perhaps out of "
                                          r"memory\); recorded so far: patchcore"):
        compare.run_anomalib("/d/x", tmp_path, "patchcore,padim", python=python)
    quiet = _fake_runner(tmp_path, "exit 0")  # ran, wrote nothing: not silently left out
    with pytest.raises(ConfigError, match="finished padim but .* has no line of it"):
        compare.run_anomalib("/d/x", tmp_path, "patchcore,padim", python=quiet)


def test_bench_methods_are_registry_names_and_must_be_in_the_suite(tmp_path):
    from oneclass.bench import run_suite
    from oneclass.cli import _method_names
    from oneclass.errors import ConfigError

    assert _method_names("PatchCore, Deep-SVDD") == ["patchcore", "deep_svdd"]
    assert _method_names(None) is None
    with pytest.raises(ConfigError, match="did you mean 'patchcore'"):
        _method_names("patchcroe")
    with pytest.raises(ConfigError, match="suite 'industrial' has no runs of hsc; its "
                                          "methods: .*patchcore"):
        run_suite("industrial", tmp_path / "o", methods=["patchcore", "hsc"])


@pytest.mark.parametrize("argv,message", [
    (["smoke", "--seeds", "a"], "--seeds"), (["smoke", "--seeds", "0,,1"], "--seeds"),
    (["smoke", "--seeds", "-1"], "--seeds"), (["smoke", "--seeds", "1,1"], "--seeds"),
    (["compare", "--seeds", "5"], "bench compare does not take --seeds"),
    (["compare", "--set", "size=[32,32]", "--only", "x"], "does not take --only, --set"),
    (["speed", "--score-batch", "0"], "--score-batch wants positive integers"),
    (["speed-anogan", "--score-batch", "8"], "does not take --score-batch"),
    (["docs", "--label", "x"], "does not take --label"),
    (["smoke", "--results", "x"], "bench smoke does not take --results"),
    (["soak", "--set", "every=0"], "every must be a whole number >= 1"),
    (["serve", "--set", "clients=[1,0]"], "clients must be a whole number >= 1 or a list"),
    (["predict", "--set", "counts=1.5"], "counts must be"),
])
def test_bench_options_are_checked_before_any_run(argv, message, capsys, tmp_path):
    from oneclass.cli import main

    try:
        code = main(["bench", *argv, "--out", str(tmp_path / "o")])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_deployment_bench_sequences_take_one_or_several_numbers(tmp_path, monkeypatch):
    import oneclass.deploybench as deploybench

    seen = {}

    def fake(out, requests: int = 5, counts=(1, 2)):
        seen.update(requests=requests, counts=counts)
        return [{"n": 1}]

    monkeypatch.setitem(deploybench.SUITES, "predict", fake)
    deploybench.run("predict", tmp_path, requests=3, counts=7)
    assert seen == {"requests": 3, "counts": (7,)}
    deploybench.run("predict", tmp_path, counts=[4, 9])
    assert seen == {"requests": 5, "counts": (4, 9)}
    with pytest.raises(ValueError, match="every must be >= 1"):
        deploybench.soak(tmp_path, every=0)


def test_a_zero_auroc_is_shown_in_the_defaults_matrix_not_taken_as_missing():
    from oneclass.bench import defaults_matrix

    rec = {"key": "k", "suite": "defaults", "method": "fcdd", "data": "d", "train_seconds": 2.0}
    assert "| fcdd | 0.0, 2 s |" in defaults_matrix([{**rec, "image_auroc": 0.0}])
    assert "| fcdd | nan, 2 s |" in defaults_matrix([{**rec, "image_auroc": None}])


def test_docs_command_of_a_row_run_on_some_datasets_names_them():
    from oneclass.bench import SUITES, suite_commands
    from oneclass.bench.suites import _key

    jobs = [j for j in SUITES["svdd-mnist"]][:2]
    recs = [{"suite": "svdd-mnist", "seed": 0, "key": _key({**j, "seed": 0})} for j in jobs]
    (command,), unmatched = suite_commands(recs, "runs/x")
    assert unmatched == 0
    assert f"--only '{jobs[0]['data']},{jobs[1]['data']}'" in command


WARM_UP = 2.0  # seconds each client's first request takes in the test below


def test_serve_load_times_neither_the_warm_up_requests_nor_client_set_up():
    import json as json_mod
    import threading
    import time as time_mod
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    pytest.importorskip("httpx2")
    from oneclass.deploybench import _load

    seen_ports: set = set()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            with lock:
                first = self.client_address[1] not in seen_ports
                seen_ports.add(self.client_address[1])
            if first:
                time_mod.sleep(WARM_UP)  # a slow warm-up: it must not count in the rate
            body = json_mod.dumps({"score": 1.0}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        r = _load(f"http://127.0.0.1:{srv.server_address[1]}",
                  [("/predict", {"content": b"x"}, 200)], 2, 6)
    finally:
        srv.shutdown()
    assert r["requests"] == 6 and r["errors"] == 0
    # Not a speed bound: a timed window that held a warm-up would last at least WARM_UP;
    # six requests to a local server on open connections take a small part of that
    assert r["seconds"] < WARM_UP, r


def test_anogan_speed_rows_time_as_many_single_searches_as_there_are_images(monkeypatch):
    from oneclass import speed
    from oneclass.methods.anogan import AnoGAN

    sizes = []
    real = AnoGAN.search
    monkeypatch.setattr(AnoGAN, "search", lambda self, x, *a, **k: sizes.append(len(x)) or
                        real(self, x, *a, **k))
    speed.anogan_search_rows(steps=1, batch=2, single=5, shapes=((1, 16, 16),),
                             precisions=("fp32",))
    assert 0 not in sizes  # no empty search timed as one image


def test_docs_carry_the_notes_and_every_throughput_table(tmp_path):
    """The notes file and the speed, export, serve and predict tables of a results folder
    land in docs/benchmarks.md with their headings and commands."""
    from oneclass.bench.tables import _TABLES

    d = tmp_path / "d"
    d.mkdir()
    for i, fname in enumerate(_TABLES):
        (d / fname).write_text(f"| table | {i} |\n|---|---|\n")
    notes = tmp_path / "notes.md"
    notes.write_text("## Notes\n\nsentinel-note-7c1\n")
    text = write_docs([d], tmp_path / "bench.md", notes=notes).read_text()
    assert "sentinel-note-7c1" in text
    for i, (title, suite) in enumerate(_TABLES.values()):
        assert f"## {title} (`{d}`)" in text
        assert f"Command: `oneclass bench {suite} --out {d}` (run on " in text
        assert f"| table | {i} |" in text
