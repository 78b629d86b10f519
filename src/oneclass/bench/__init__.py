"""Benchmark suites: methods x datasets x classes x seeds, resumable, one process per run.

Each run trains with the suite's parameters on the train split, scores the test split and
records image AUROC / AP (and pixel metrics where masks exist), training seconds, training
and scoring images/s and the peak resident memory of the process that ran it. Results are
appended to ``OUT/results.jsonl`` as each run finishes; runs already there are skipped, so an
interrupted benchmark resumes where it stopped. ``OUT/results.md`` is rebuilt from the JSON
lines after every run.

The package: `suites` (what runs), `running` (how a suite runs and is recorded) and `tables`
(docs/benchmarks.md from the records).
"""

from .running import BenchError, cpu_model, limit_test, machine, run_suite, wait_for
from .suites import CLASSES, PUBLISHED, SUITES
from .tables import defaults_matrix, markdown, published_summary, suite_commands, write_docs

__all__ = ["BenchError", "CLASSES", "PUBLISHED", "SUITES", "cpu_model", "defaults_matrix",
           "limit_test", "machine", "markdown", "published_summary", "run_suite",
           "suite_commands", "wait_for", "write_docs"]
