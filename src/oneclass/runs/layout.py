"""What a run folder holds and how it is opened: its configuration, its model and the
names of the files derived from it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..detector import Detector
from ..errors import ConfigError, ModelFileError, OneclassError

#: What a run's config.json records about the run beside its configuration (not compared
#: on --resume, not configuration when the file is given to --config).
RUN_RECORD = ("data_path", "anomalies_used", "anomalies_source", "skipped_images", "model_id",
              "data_files")


def read_config(run: Path) -> dict[str, Any]:
    p = Path(run) / "config.json"
    if not p.is_file():
        raise OneclassError(f"{run}: not a run directory (no config.json); train one first")
    return _read_json(p, "the run's configuration")


def _read_json(p: Path, what: str) -> Any:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise OneclassError(f"{p}: {what} is not valid JSON ({exc}); the file is damaged") from None


def _model_mismatch(run: Path, cfg: dict[str, Any]) -> tuple[str, str | None] | None:
    """``(recorded, found)`` model ids when the run configuration ``cfg`` names another model
    than ``run``'s (a training stopped between saving the two); None when they pair, for runs
    that predate the record, and without a model."""
    from ..export import model_id

    recorded = cfg.get("model_id")
    if not recorded or not model_dir(run).is_dir():
        return None
    found = model_id(model_dir(run))
    return None if found == recorded else (recorded, found)


def _unpaired(run: Path) -> bool:
    """Whether ``run``'s model is not the one its config.json names: config.json names another
    model, or there is none beside a saved model (a first training stopped between the two
    writes); an unreadable config.json: no."""
    if not (run / "config.json").exists():
        return (run / "model" / "model.json").is_file()
    try:
        cfg = json.loads((run / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and _model_mismatch(run, cfg) is not None


#: Files of a run computed from its model: removed when a new model replaces it.
DERIVED = ("metrics.json", "scores.csv", "report.html", "model.onnx")


def model_dir(run: Path) -> Path:
    """The saved model of a run directory (or ``run`` itself when it is a model directory)."""
    path = Path(run) / "model"
    if not path.exists() and (Path(run) / "model.json").exists():
        path = Path(run)
    return path


def load_model(run: Path, device: str = "auto") -> Detector:
    if not Path(run).exists():
        raise ModelFileError(f"{run}: no such run folder (or model folder)")
    path = model_dir(run)
    ckpt = Path(run) / "checkpoints"
    if not path.exists() and ckpt.is_dir():
        if not any(ckpt.glob("*.pt")):  # stopped before its first epoch's checkpoint
            raise ModelFileError(f"{run}: its training stopped before its first epoch (no "
                                 "model, no checkpoint to resume from); run the `oneclass "
                                 "train` command again, after fixing what stopped it")
        raise ModelFileError(f"{run}: its training has not finished (no model yet, only "
                             "checkpoints/); finish it with the same `oneclass train` command "
                             "and --resume")
    pending = Path(run) / "checkpoints" / "config.json"
    if path == Path(run) / "model" and pending.is_file() and _unpaired(Path(run)):
        what = ("config.json belongs to another model than " + str(path)
                if (Path(run) / "config.json").exists() else "the model has no config.json yet")
        raise ModelFileError(f"{run}: {what}: its training stopped while saving its results; "
                             "finish it with the same `oneclass train` command and --resume")
    return Detector.load(path, device=device)


def _open_run(run: Path, data_spec: str | None, data_root: str | None, device: str):
    """The run's model and config, and the data spec and root to use (given or recorded)."""
    if (Path(run) / "model.json").exists():  # a model folder: its files would be mixed in
        parent = Path(os.path.abspath(run)).parent
        which = (f"give its run folder, {parent}" if (parent / "config.json").exists()
                 else "copy it into a run folder, RUN/model, and give RUN")
        raise ConfigError(f"{run}: a saved model's folder, not a run folder; eval and report "
                          "write metrics.json, scores.csv and report.html beside the model, and "
                          f"a model folder holds only the model: {which}")
    det = load_model(run, device)
    cfg = read_config(run) if (run / "config.json").exists() else {}
    mismatch = _model_mismatch(run, cfg)
    if mismatch:
        raise OneclassError(f"{run}: config.json belongs to another model than {model_dir(run)} "
                            f"(model {mismatch[0]}, found {mismatch[1]}): a training was "
                            "stopped while it saved its results; finish it with the same "
                            "`oneclass train` command and --resume")
    spec = data_spec or cfg.get("data")
    if not spec:
        raise ConfigError(f"{run}: no data given and none recorded; pass --data SPEC")
    if not data_spec and not Path(spec).exists() and isinstance(cfg.get("data_path"), str) \
            and Path(cfg["data_path"]).exists():
        spec = cfg["data_path"]  # a relative folder, recorded from another working folder
    return det, cfg, spec, data_root or cfg.get("data_root")


def _text(s) -> str:
    """``s`` as text that can be written as UTF-8: a file name that is not UTF-8 (held by
    Python as lone surrogates, e.g. Latin-1 ``caf\\xe9.png`` on Linux) gets each undecodable
    byte as ``\\xe9``; every other name stays as it is."""
    s = str(s)
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _safe_stem(stem: str) -> str:
    """A file-name stem without lone surrogates (each becomes U+FFFD), for heatmap files whose
    names the predictions file (UTF-8) must be able to hold as they are."""
    return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in stem)


def _csv(s: str) -> str:
    s = str(s)
    return '"' + s.replace('"', '""') + '"' if any(c in s for c in ',"\n') else s
