"""`oneclass train`: one training into a run folder, locked, resumable and replaced atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .. import data as data_mod
from ..data.screen import check_policy
from ..detector import Detector
from ..device import resolve_device
from ..errors import ConfigError, DataError
from ..io import write_json, write_text
from ..model_files import check_save_target
from ..registry import create
from ..train import LoopConfig, is_main_process, show_progress
from .inputs import training_data
from .layout import DERIVED, RUN_RECORD, _read_json, _text, _unpaired, load_model

log = logging.getLogger(__name__)


class RunLock:
    """An exclusive lock on a run folder while a training writes it (``flock`` on the folder
    itself, so no file is left behind; released when the process ends, however it ends): a
    second training into the same folder is refused instead of mixing the two trainings'
    checkpoints. Taken when the folder exists, else by :meth:`take` once it is made; only
    by the main process under torchrun (the others write nothing). No lock where ``fcntl``
    is missing (Windows)."""

    def __init__(self, folder: Path):
        self.folder, self.fd = Path(folder), None

    def __enter__(self) -> RunLock:
        if self.folder.is_dir():
            self.take()
        return self

    def take(self) -> None:
        if self.fd is not None or not is_main_process():
            return
        try:
            import fcntl
        except ImportError:
            return
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by another process
            os.close(fd)
            raise ConfigError(f"{self.folder}: another training is writing this run folder; "
                              "wait for it to finish (or stop it), or use another --out") from None
        except OSError as exc:  # a file system without flock (some NFS, Lustre): no lock
            os.close(fd)
            log.warning("%s: cannot lock the run folder (%s); a second training into it "
                        "would not be refused", self.folder, exc.strerror or exc)
            return
        self.fd = fd

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor releases the lock
            self.fd = None


def train(method: str, data_spec: str, out: Path, params: dict[str, Any], *,
          data_root: str | None = None, resume: bool = False, progress: bool | None = None,
          outliers: str | None = None, anomalies: str | None = None,
          anomaly_limit: int = 5, on_bad_image: str = "error",
          reference: str | None = None) -> Detector:
    """Train ``method`` on ``data_spec`` and write the run directory ``out``.

    Args:
        outliers: data spec of outlier-exposure images (methods that use them).
        anomalies: data spec whose test split gives labeled anomalies: ``anomaly_limit`` per
            defect type are added to training and left out of this run's evaluation.
        on_bad_image: ``"error"`` stops at the first unreadable image; ``"skip"`` leaves
            unreadable images out with a warning and records them in ``config.json``.
        reference: reference set spec for methods that use one (DOC; see
            :mod:`oneclass.data.reference`).

    One training at a time writes a run folder: another one into it is refused (:class:`RunLock`).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; give --out a folder for the run")
    with RunLock(out) as lock:
        return _train(method, data_spec, out, params, lock, data_root=data_root, resume=resume,
                      progress=progress, outliers=outliers, anomalies=anomalies,
                      anomaly_limit=anomaly_limit, on_bad_image=on_bad_image,
                      reference=reference)


def _train(method: str, data_spec: str, out: Path, params: dict[str, Any], lock: RunLock, *,
           data_root: str | None, resume: bool, progress: bool | None, outliers: str | None,
           anomalies: str | None, anomaly_limit: int, on_bad_image: str,
           reference: str | None) -> Detector:
    det = create(method, **params)
    resolve_device(det.device)  # a device this machine lacks is refused before data is read
    config = {"method": det.name, "data": data_spec, "data_root": data_root,
              "params": det.get_params(), "outliers": outliers, "anomalies": anomalies,
              "anomaly_limit": anomaly_limit if anomalies else None,
              "on_bad_image": check_policy(on_bad_image)}
    if reference:  # only when given, so configs of earlier runs still match on --resume
        config["reference"] = reference
    ckpt = out / "checkpoints"
    # The configuration of a training in progress waits in checkpoints/ and replaces
    # config.json only with the model: a failed retraining leaves the earlier run consistent.
    pending = ckpt / "config.json"
    # a pending configuration without checkpoint weights is of a training that failed (or was
    # stopped) before its first epoch: nothing to resume, and not what --resume checks
    # A training stopped after its model was saved but before config.json was rewritten
    # (the two are paired by model_id) is finished by --resume from the pending
    # configuration too, checkpoints or not (PatchCore writes none).
    unpaired = pending.is_file() and _unpaired(out)
    had_checkpoints = any(ckpt.glob("*.pt"))
    recorded = pending if pending.is_file() and had_checkpoints or unpaired \
        else out / "config.json"
    # a run interrupted before configuration and log waited in checkpoints/ (older versions):
    # its log so far is RUN/train_log.jsonl, which the resumed run continues
    legacy = resume and not pending.is_file() and had_checkpoints
    # stopped (or failed) before its first epoch checkpoint: nothing of it to resume
    saved_nothing = pending.is_file() and not had_checkpoints and not unpaired
    # the data's resolved path (eval and report from another folder find it there)
    data_path = os.path.realpath(data_spec) if Path(data_spec).exists() else None
    before = None
    if resume and not recorded.exists() and not legacy:
        log.warning("%s: nothing to resume (no checkpoints or finished training there); "
                    "training from the start", out)
        resume = False  # and no log lines of an earlier attempt are kept
    if resume and recorded.exists():
        before = _read_json(recorded, "the run's configuration")
        old = {k: v for k, v in before.items()
               if k not in RUN_RECORD}
        old.setdefault("on_bad_image", "error")  # runs written before the policy existed
        # A resume continues the run as recorded: parameters not given now take the
        # recorded values (a default that changed since, as FCDD's epochs, keeps the run's),
        # parameters the record lacks (added since) their defaults; given ones must match.
        recorded_params = old.get("params") or {}
        kept = {k: v for k, v in recorded_params.items()
                if k not in params and k != "device" and k in det.all_defaults()}
        if kept:
            det = create(method, **{**params, **kept})
            config["params"] = det.get_params()
        added = json.loads(json.dumps({k: v for k, v in det.all_defaults().items()
                                       if k not in recorded_params and k != "device"}))
        old["params"] = {**added, **recorded_params}
        differ = _config_differences(old, json.loads(json.dumps(config)))
        if differ:
            why = (" (the training started since stopped before its first epoch checkpoint: "
                   "nothing of it to resume; run it again without --resume)" if saved_nothing
                   else "")
            raise ConfigError(f"{out}: --resume with a different configuration than "
                              f"{recorded.relative_to(out)} ({', '.join(differ)}){why}; use a "
                              "new --out or the same options")
        if before.get("data_path") and data_path != before["data_path"]:
            # the same spec, other data (relative, run from another folder)
            raise ConfigError(f"{out}: --resume with other data: {data_spec} is "
                              f"{data_path or 'not a folder here'}, the run's was "
                              f"{before['data_path']}; use a new --out")
        if recorded == out / "config.json" and not had_checkpoints \
                and (out / "model").is_dir():  # retraining it would only repeat it
            if is_main_process():
                _tidy_finished(out, ckpt)
            done = load_model(out, params.get("device", "auto"))
            done.finished_before_ = True  # the CLI says so instead of "trained ..."
            return done
    train_set, outlier_set, used = training_data(data_spec, data_root, int(det.seed), outliers=outliers,
                                                 anomalies=anomalies, anomaly_limit=anomaly_limit,
                                                 masks=det.uses_masks)
    if data_path:
        config["data_path"] = data_path
    if used is not None:
        config["anomalies_used"] = used
        # the images' collection, resolved now: an evaluation from another folder, or with the
        # data spelled otherwise, still leaves them out
        config["anomalies_source"] = data_mod.source(anomalies)
    show = show_progress(progress) and is_main_process()
    n_all, n_normal = len(train_set), len(train_set) - len(used or [])  # anomalies come last
    train_set, skipped = data_mod.screen(train_set, on_bad_image, progress=show,
                                         what="training images")
    if skipped:
        # a skipped labeled anomaly is named as one (its name is below --anomalies, not
        # --data) and is no longer among those used
        kept = set(np.asarray(train_set.index).tolist())
        bad = [i for i in range(n_all) if i not in kept]
        config["skipped_images"] = [name if i < n_normal else f"{name} (labeled anomaly "
                                    f"from {anomalies})" for i, (name, _) in zip(bad, skipped)]
        if used is not None:
            used = [n for j, n in enumerate(used) if n_normal + j not in bad]
            config["anomalies_used"] = used
    if outlier_set is not None:
        outlier_set = data_mod.screen(outlier_set, on_bad_image, progress=show,
                                      what="outlier images")[0]
    if used is not None and not det.uses_anomalies:
        log.warning("%s learns from normal images only; the labeled anomalies of --anomalies "
                    "are left out of training (and, from the same folder, out of its test "
                    "set)", det.name)
    elif used is not None and is_main_process():
        kinds: dict[str, int] = {}
        for k, lab in zip(train_set.kinds, train_set.labels):
            if lab == 1:
                kinds[k] = kinds.get(k, 0) + 1
        log.info("labeled anomalies: %d from %s (%s); an evaluation leaves them out of the "
                 "test images",
                 len(used), anomalies, ", ".join(f"{n} {_text(k)}" for k, n in kinds.items()))
    files = _data_files(train_set, outlier_set)
    if files:
        config["data_files"] = files
        then = (before or {}).get("data_files")
        if resume and isinstance(then, dict) and then.get("sha256") != files["sha256"]:
            raise ConfigError(
                f"{out}: --resume with other training images than the run started with "
                f"({then.get('n')} files then, {files['n']} now, or some renamed or changed in "
                "size): its epochs so far trained on those; restore them, or train into a new "
                "--out")
    if outlier_set is not None and not det.uses_outliers:
        log.warning("%s does not use outlier exposure; --outliers is ignored", det.name)
    elif outlier_set is not None and is_main_process():
        log.info("outlier exposure: %d images from %s", len(outlier_set), outliers)
    fit_extra = {}
    if reference:
        from ..data.reference import check_specs, load_reference, screen_reference

        if getattr(det, "uses_reference", False):
            check_specs(data_spec, reference)
            fit_extra["reference"] = screen_reference(load_reference(reference, data_root),
                                                      on_bad_image)
        else:
            log.warning("%s does not use a reference set; --reference is ignored", det.name)
    main = is_main_process()  # under torchrun only rank 0 writes files
    if main:  # the run folder once the data are read: a wrong --data leaves no folder behind
        out.mkdir(parents=True, exist_ok=True)
        lock.take()
        if not resume and (out / "model").is_dir():
            _note_replaced(out)
        write_json(pending, config)
    # The per-epoch log, too, waits in checkpoints/ and replaces RUN/train_log.jsonl with the
    # model: a failed retraining keeps the log of the model that stays.
    log_path = ckpt / "train_log.jsonl"
    if main:
        if not resume:
            log_path.unlink(missing_ok=True)
            old_ckpt = sorted(ckpt.glob("*.pt"))
            if old_ckpt:  # else a later --resume would continue them under this configuration
                log.warning("%s: discarding the checkpoints of an unfinished earlier training "
                            "(%s); pass --resume to continue such a training instead", out,
                            ", ".join(p.name for p in old_ckpt))
                for p in old_ckpt:
                    p.unlink()
        elif legacy and not log_path.exists() and (out / "train_log.jsonl").exists():
            shutil.copyfile(out / "train_log.jsonl", log_path)

    def on_epoch(rec: dict) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")

    def on_resume(phase: str, done: int) -> None:
        """Keep the log lines the checkpoints hold: of other phases, and of this one up to
        ``done`` (a run stopped after logging an epoch but before its checkpoint repeats it)."""
        if not log_path.exists():
            return
        keep = [line for line in log_path.read_text(encoding="utf-8").splitlines()
                if _logged_epoch(line, phase) <= done]
        write_text(log_path, "".join(line + "\n" for line in keep))

    loop = LoopConfig(checkpoint_dir=ckpt, resume=resume, progress=progress, on_epoch=on_epoch,
                      on_resume=on_resume)
    if main:  # a model folder save() would refuse: said now, not after the training
        check_save_target(out / "model")
    det.fit(train_set, outliers=outlier_set, loop=loop, **fit_extra)
    if main:
        det.save(out / "model")
        # the model's id pairs the two: a stop between these writes leaves a config.json of
        # the earlier model, which _open_run then refuses instead of mixing the two
        from ..export import loaded_model_id

        write_json(out / "config.json", {**config, "model_id": loaded_model_id(det)})
        if log_path.exists():
            os.replace(log_path, out / "train_log.jsonl")
        elif not (resume and had_checkpoints):  # no epoch ran (epochs=0): no log of an
            # earlier model may stay beside this one; a resume that found every epoch done
            # was stopped after this model's log had moved there
            (out / "train_log.jsonl").unlink(missing_ok=True)
        stale = [f for f in DERIVED if (out / f).exists()]
        for f in stale:  # they describe the model this one replaced
            (out / f).unlink()
        if stale:
            log.info("%s: removed %s of the previous model", out, ", ".join(stale))
        shutil.rmtree(ckpt, ignore_errors=True)
    return det


def _data_files(*sets) -> dict[str, Any] | None:
    """What identifies the image files a training reads: their count and a hash of their
    names, labels and byte sizes (a resume on other files is refused); sets that are not
    files (benchmarks, generated outliers) are left out, None when no set is files."""
    h, n = hashlib.sha256(), 0
    for images in sets:
        paths = getattr(images, "paths", None)
        if not paths:  # a benchmark or generated set (its own spec is compared)
            continue
        for name, label, path in zip(images.names, images.labels, paths):
            try:
                size = os.path.getsize(path)
            except OSError:
                size = -1
            h.update(f"{name}\0{int(label)}\0{size}\n".encode("utf-8", "surrogatepass"))
            n += 1
    return {"n": n, "sha256": h.hexdigest()[:16]} if n else None


def _tidy_finished(out: Path, ckpt: Path) -> None:
    """Finish what a finished run's saving left in ``checkpoints/`` (no epoch checkpoints):
    stopped after config.json was written, its log still waits there (it replaces the log
    beside the model, which is then the replaced model's); a configuration of an attempt
    that saved nothing goes."""
    if not ckpt.is_dir() or any(ckpt.glob("*.pt")):
        return
    waiting = ckpt / "train_log.jsonl"
    model = out / "model" / "model.json"
    # the log of the model saved after it (a log of a failed later attempt is newer)
    if waiting.exists() and model.exists() and \
            waiting.stat().st_mtime_ns <= model.stat().st_mtime_ns:
        os.replace(waiting, out / "train_log.jsonl")
    shutil.rmtree(ckpt, ignore_errors=True)


def _note_replaced(out: Path) -> None:
    """Say which model a training into an existing run replaces when it finishes (until
    then the run stays as it was)."""
    try:
        before = json.loads((out / "config.json").read_text(encoding="utf-8"))
        what = f"a {before['method']} model trained on {before['data']}"
    except (OSError, ValueError, KeyError, TypeError):
        what = "a model"
    log.warning("%s holds %s; this training replaces it when it finishes (use another --out "
                "to keep it)", out, _text(what))


def _logged_epoch(line: str, phase: str) -> int:
    """The epoch of a log line of ``phase``; 0 for lines of other phases (always kept), and
    past any epoch for a line cut short (dropped)."""
    try:
        rec = json.loads(line)
    except ValueError:
        return 2**62 if line.strip() else 0
    return int(rec.get("epoch", 0)) if isinstance(rec, dict) and rec.get("phase") == phase else 0


def _config_differences(old: dict, new: dict) -> list[str]:
    """Keys (``params.lr`` for parameters) whose values differ; the device is not one: a run
    may be resumed on another device."""
    keys = [k for k in sorted(set(old) | set(new)) if k != "params" and old.get(k) != new.get(k)]
    po, pn = old.get("params") or {}, new.get("params") or {}
    keys += [f"params.{k}" for k in sorted(set(po) | set(pn))
             if k != "device" and po.get(k) != pn.get(k)]
    return keys
