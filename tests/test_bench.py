"""Benchmark runner: resumable suites and generated docs."""

from __future__ import annotations

import json

from oneclass.bench import run_suite, write_docs


def test_smoke_suite_records_results_and_resumes(tmp_path):
    logs: list[str] = []
    recs = run_suite("smoke", tmp_path / "b", log=logs.append)
    assert len(recs) == 1
    r = recs[0]
    assert 0.0 <= r["image_auroc"] <= 1.0 and r["train_seconds"] > 0 and r["peak_rss_mb"] > 0
    lines = (tmp_path / "b" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["data"] == "synthetic"
    # a second call finds the run done and does not train again
    run_suite("smoke", tmp_path / "b", log=logs.append)
    assert logs[-1].endswith("done")
    assert len((tmp_path / "b" / "results.jsonl").read_text().splitlines()) == 1
    doc = write_docs([tmp_path / "b"], tmp_path / "bench.md")
    text = doc.read_text()
    assert "oneclass bench smoke" in text and "| synthetic |" in text
