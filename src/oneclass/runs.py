"""A run directory: what `oneclass train` writes and `eval` / `predict` / `report` read.

    RUN/config.json        method, data spec, data root and the effective parameters
    RUN/train_log.jsonl    one JSON line per epoch (losses, seconds) of the saved model
    RUN/checkpoints/       while training: per-phase checkpoints, the configuration and the
                           log so far (moved beside the model, or removed, when it finishes)
    RUN/model/             the saved model (model.json + weights.safetensors)
    RUN/metrics.json       written by `oneclass eval`
    RUN/scores.csv         per-image test scores written by `oneclass eval`
    RUN/report.html        written by `oneclass report`
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import data as data_mod
from .data.base import far_in_size, is_colour
from .data.screen import check_policy
from .detector import Detector, check_save_target
from .device import resolve_device
from .errors import ConfigError, DataError, ModelFileError, OneclassError
from .io import write_json, write_text
from .metrics import f1_score, image_metrics, pixel_metrics
from .registry import create
from .train import LoopConfig, is_main_process, show_progress

log = logging.getLogger(__name__)


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


def anomaly_images(spec: str, root: str | None = None, masks: bool = True):
    """The images ``--anomalies SPEC`` offers: the test split of an MVTec-layout folder or a
    benchmark (its anomalous images are used); a folder holding ``test/<type>/`` alone (no
    ``train/`` or ``ground_truth/``), read as that test set; or a plain folder of defect
    images, every one anomalous, its type the folder below ``SPEC`` it is in (else SPEC's
    own name). ``masks=False`` leaves ground-truth masks unread."""
    from .data.folder import NORMAL_DIRS, is_mvtec, mvtec, split_dirs

    path = Path(spec)
    if not path.exists() or path.is_dir() and is_mvtec(path):
        return data_mod.load(spec, "test", root=root, masks=masks)
    if path.is_dir() and "test" in split_dirs(path):
        return mvtec(path, "test", masks=False)  # no ground_truth/ to read
    layout = path.parent if path.name.lower() == "test" else path
    hint = (f"give a folder of defect images only, or {layout} laid out as test/good/ + "
            "test/<type>/")
    if path.is_dir() and path.name.lower() in NORMAL_DIRS:
        raise DataError(f"{spec}: a folder named {path.name}, of normal images by its name; as "
                        f"--anomalies every image of a plain folder is a labeled anomaly: {hint}")
    images = data_mod.load(spec, "test", root=root)  # a plain folder (or file): unlabeled
    rel = [Path(p).relative_to(path) if path.is_dir() else Path(Path(p).name)
           for p in images.paths]
    tops = {r.parts[0] for r in rel if len(r.parts) > 1}
    normal = sorted(t for t in tops if t.lower() in NORMAL_DIRS)
    if normal:
        raise DataError(f"{spec}: a plain folder holding {normal[0]}/; as --anomalies every "
                        f"image of a plain folder is a labeled anomaly: {hint}")
    own = path.resolve().name if path.is_dir() else path.resolve().parent.name
    kinds = [(r.parts[:-1] or (own,))[0] for r in rel]
    from .data.base import ANOMALOUS, FileSet

    # named below the folder, so a run's record of them does not depend on its spelling
    return FileSet(images.paths, [ANOMALOUS] * len(images), kinds=kinds,
                   names=[r.as_posix() for r in rel], description=f"{spec} (labeled anomalies)")


def pick_anomalies(spec: str, limit: int, seed: int, root: str | None = None,
                   masks: bool = True):
    """Up to ``limit`` anomalous images per defect type of :func:`anomaly_images`, and the
    number of its anomalous images not picked."""
    if int(limit) < 1:
        raise ConfigError(f"anomaly_limit (--anomaly-limit) must be at least 1, got {limit}")
    limit = int(limit)
    test = anomaly_images(spec, root, masks)
    rng = np.random.default_rng(seed)
    chosen, short = [], []
    kinds = sorted({k for k, lab in zip(test.kinds, test.labels) if lab == 1})
    for kind in kinds:
        idx = np.array([i for i, (k, lab) in enumerate(zip(test.kinds, test.labels))
                        if lab == 1 and k == kind])
        if len(idx) < limit:
            short.append(f"{kind} ({len(idx)})")
        chosen += sorted(rng.permutation(idx)[:limit].tolist())
    if not chosen:
        raise DataError(f"{spec}: no anomalous test images to use as labeled anomalies (its "
                        "test/good/ holds normal images only; defects go in test/<type>/, or "
                        "give a plain folder of defect images)")
    if short:
        log.warning("%s: fewer anomalous test images than --anomaly-limit %d of type %s: all of "
                    "them are used", spec, limit, ", ".join(short))
    return test.subset(chosen), int((test.labels == 1).sum()) - len(chosen)


def _benchmark(spec: str) -> tuple[str, int | None, list[int] | None] | None:
    """:func:`oneclass.data.benchmark_classes`, None also for classes outside 0..9 (loading
    the spec names the problem)."""
    b = data_mod.benchmark_classes(spec)
    if b is None or any(c > 9 for c in [b[1] or 0, *(b[2] or [])]):
        return None
    return b


def _class_name(name: str, cls: int) -> str:
    """``3`` for MNIST, ``3 (dress)`` for Fashion-MNIST."""
    label = data_mod.CLASSES[name][cls]
    return str(cls) if label == str(cls) else f"{cls} ({label})"


def _check_anomalies(data_spec: str, anomalies: str) -> None:
    """Refuse labeled anomalies that would include the normal class of a benchmark: the
    anomalies of ``NAME:C`` are every class but C, those of ``NAME:C:A[,A]`` the classes A."""
    d, a = _benchmark(data_spec), _benchmark(anomalies)
    if d is None or a is None or d[0] != a[0] or d[1] is None or a[1] is None:
        return
    name, normal = d[:2]
    _, acls, arest = a
    anomalous = arest or [c for c in range(10) if c != acls]
    if normal in anomalous:
        which = f"the classes {','.join(map(str, arest))}" if arest else f"every class but {acls}"
        raise ConfigError(
            f"--anomalies {anomalies}: its anomalies are {which}, which includes "
            f"{_class_name(name, normal)}, the normal class of --data {data_spec}; "
            f"give --anomalies {name}:{normal} for labeled anomalies of every other class, or "
            f"{name}:{normal}:A[,A] for those of the classes A only (e.g. {name}:{normal}:"
            f"{acls if acls != normal else (normal + 1) % 10})")


def _check_outliers(data_spec: str, outliers: str) -> None:
    """Refuse outlier exposure with the normal training images themselves (as DOC's reference
    set is refused when it holds the target class): the same data however spelled, or a
    benchmark whose outlier images (``NAME``: every class, ``NAME:C``: class C) include the
    normal class. Folders are compared file by file once loaded (:func:`_check_overlap`)."""
    d, o = data_mod.canonical(data_spec), data_mod.canonical(outliers)
    gen = data_mod.generator(d)
    generated = gen is not None and gen == data_mod.generator(o)
    if d == o or generated or "elpv" in (d, o) and data_mod.source(d) == data_mod.source(o) == "elpv":
        raise ConfigError(f"--outliers {outliers} is the training data (--data {data_spec}) "
                          "itself: its normal images would be trained as anomalies; give "
                          "images of something else")
    db, ob = _benchmark(data_spec), _benchmark(outliers)
    if db is None or ob is None or db[0] != ob[0]:
        return
    name, normal, ocls = db[0], db[1], ob[1]
    if normal is None or ocls is None or normal == ocls:
        what = f"class {_class_name(name, normal)}" if normal is not None else "every class"
        raise ConfigError(f"--outliers {outliers} holds the normal training images of --data "
                          f"{data_spec} ({what}): they would be trained as anomalies; give "
                          f"another dataset, a folder, or another class ({name}:C)")


def _check_overlap(train_set, given, data_spec: str, option: str, spec: str,
                   root: str | None = None) -> None:
    """Refuse ``given`` images (``--outliers``, or the picked ``--anomalies``) that are
    training images of ``data_spec``, and outliers that are its test images: the same file
    (links resolved) or a byte-identical copy (a copied folder). Normal images would be
    trained as anomalies, and test images evaluated on after training on them (labeled
    anomalies come from a test set on purpose: the run's evaluation leaves them out)."""
    from .data.base import same_files

    theirs = getattr(given, "paths", None)
    if not theirs:
        return
    test = None
    if option == "--outliers" and Path(data_spec).is_dir():
        try:
            test = data_mod.load(data_spec, "test", root=root)
        except OneclassError:  # a folder without a test split: nothing to leak into
            pass
    what = "images" if option == "--outliers" else "picked labeled anomalies"
    for split, images, why in (
            ("training", train_set, "they would be trained as anomalies; give images of "
             "something else" if option == "--outliers" else "they would be trained as "
             "normal and as anomalous; give defect images that are not training images"),
            ("test", test, "training on them makes the evaluation on that test set "
             "meaningless; give images of something else (labeled anomalies of the test "
             "set: --anomalies, which leaves them out of it)")):
        if images is None or not getattr(images, "paths", None):
            continue
        shared = same_files(images.paths, theirs)
        if shared:
            i = min(shared)
            copy = f" (the same file as {shared[i]})" if os.path.realpath(theirs[i]) == \
                os.path.realpath(shared[i]) else f" (a copy of {shared[i]})"
            if os.path.abspath(theirs[i]) == os.path.abspath(shared[i]):
                copy = ""
            raise ConfigError(f"{option} {spec}: {len(shared)} of its {len(theirs)} {what} "
                              f"are {split} images of --data {data_spec} (first: "
                              f"{theirs[i]}{copy}): {why}")


def training_data(data_spec: str, root: str | None, seed: int, *, outliers: str | None = None,
                  anomalies: str | None = None, anomaly_limit: int = 5, train_set=None,
                  masks: bool = True):
    """The training set of a run, its outlier-exposure set and the labeled anomalies used.

    ``train_set`` replaces the train split of ``data_spec`` (e.g. a Deep SAD semi-supervised
    set built from it). ``masks=False``: the masks of the labeled anomalies are not read (a
    method that does not use them; a mask that does not fit its image then stops nothing).

    Returns:
        ``(train_set, outlier_set or None, names of the labeled anomalies or None)``; the
        labeled anomalies (``anomaly_limit`` per defect type from the test split of
        ``anomalies``) are part of ``train_set``.
    """
    if anomalies:
        _check_anomalies(data_spec, anomalies)
    if outliers:
        _check_outliers(data_spec, outliers)
    if train_set is None:
        train_set = data_mod.load(data_spec, "train", root=root)
    normal_set = train_set
    used = None
    if anomalies:
        picked, left = pick_anomalies(anomalies, anomaly_limit, seed, root, masks)
        _check_overlap(train_set, picked, data_spec, "--anomalies", anomalies, root)
        used = list(picked.names)
        if left == 0 and data_mod.canonical(anomalies) == data_mod.canonical(data_spec):
            log.warning("%s: all %d anomalous test images are used as labeled anomalies, none is "
                        "left to evaluate the run on (its image metrics will be n/a); lower "
                        "--anomaly-limit", anomalies, len(used))
        train_set = data_mod.concat(train_set, picked)
    outlier_set = data_mod.load(outliers, "train", root=root) if outliers else None
    if outlier_set is not None:
        _check_overlap(normal_set, outlier_set, data_spec, "--outliers", outliers, root)
    return train_set, outlier_set, used


def test_set(spec: str, root: str | None, cfg: dict[str, Any]):
    """The test split of ``spec`` without the images the run trained on as labeled anomalies.

    Those are the images of the recorded names in the same collection
    (:func:`oneclass.data.source`), however either spec is spelled: ``R``, ``./R`` and the
    absolute path, ``fmnist:3`` and ``fashion-mnist:03``, and ``mnist:3:5`` and ``mnist:3``
    (one test set of MNIST). Runs record the collection (``anomalies_source``) when they are
    trained; for earlier runs it is worked out from the recorded spec.
    """
    test = data_mod.load(spec, "test", root=root)
    used = set(cfg.get("anomalies_used") or [])
    given = cfg.get("anomalies")
    recorded = cfg.get("anomalies_source") or (data_mod.source(given) if given else None)
    if not used or recorded is None:
        return test
    if data_mod.source(recorded) != data_mod.source(spec):  # runs before sources of
        # generated sets dropped size and colour recorded e.g. synthetic:stripes:64x64:gray
        if not cfg.get("anomalies_source") and not Path(given).exists() and Path(spec).is_dir() \
                and used <= set(test.names):
            log.warning("the run's labeled anomalies came from %s, which is not found from here; "
                        "if it is %s, its %d images the run trained on are in this test set",
                        given, spec, len(used))
        if anomalies_missing(cfg):
            log.warning("the run's labeled anomalies came from %s, which is not found from here: "
                        "those of its %d images the run trained on that are in %s are evaluated "
                        "too (the metrics then come out better than the model is)", given,
                        len(used), spec)
            return test
        return _without_copies(test, spec, _trained_anomaly_files(cfg, root), given)
    anomalous = int((test.labels == 1).sum())
    n_all = len(test)
    test = test.subset([i for i, n in enumerate(test.names) if n not in used])
    if len(test) < n_all:
        log.info("%s: %d of its %d test images were labeled anomalies in this run's training "
                 "and are left out; %d are evaluated", spec, n_all - len(test), n_all, len(test))
    if anomalous and not (test.labels == 1).any():
        log.warning("%s: all %d anomalous test images were labeled anomalies in training: none is "
                    "left to evaluate on, so the image metrics are n/a; evaluate on other data "
                    "or train with a lower --anomaly-limit", spec, anomalous)
    return test


def anomalies_missing(cfg: dict[str, Any]) -> bool:
    """Whether the folder of a run's labeled anomalies is gone (moved, removed): its images
    can then be left out of a test set of another folder by neither name nor content."""
    recorded, given = cfg.get("anomalies_source"), cfg.get("anomalies")
    return bool(cfg.get("anomalies_used")) and bool(recorded) and os.path.isabs(recorded) \
        and not Path(recorded).exists() and not (given and Path(given).exists())


def _trained_anomaly_files(cfg: dict[str, Any], root: str | None) -> list[Path]:
    """The files of the labeled anomalies a run trained on, when they are files and still
    found (from the recorded resolved folder, else the spec as given); else none."""
    from .export import quiet_logger

    used = set(cfg.get("anomalies_used") or [])
    for spec in (cfg.get("anomalies_source"), cfg.get("anomalies")):
        if not spec or not Path(spec).exists():
            continue
        try:
            with quiet_logger("oneclass"):  # its warnings were given when training read it
                images = anomaly_images(spec, root, masks=False)
        except OneclassError:
            return []
        return [p for p, n in zip(getattr(images, "paths", []), images.names) if n in used]
    return []


def _without_copies(test, spec: str, trained: list[Path], given: str | None):
    """``test`` without the images that are ``trained`` files (labeled anomalies of the run
    from another folder: the same files under other names, or copies)."""
    from .data.base import same_files

    paths = getattr(test, "paths", None)
    if not trained or not paths:
        return test
    shared = same_files(trained, paths)
    if not shared:
        return test
    log.info("%s: %d of its %d test images are labeled anomalies this run trained on (from "
             "%s: the same files or copies) and are left out; %d are evaluated", spec,
             len(shared), len(test), given, len(test) - len(shared))
    return test.subset([i for i in range(len(test)) if i not in shared])


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
        from .data.reference import check_specs, load_reference, screen_reference

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
        from .export import loaded_model_id

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


def _model_mismatch(run: Path, cfg: dict[str, Any]) -> tuple[str, str | None] | None:
    """``(recorded, found)`` model ids when the run configuration ``cfg`` names another model
    than ``run``'s (a training stopped between saving the two); None when they pair, for runs
    that predate the record, and without a model."""
    from .export import model_id

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


#: Files of a run computed from its model: removed when a new model replaces it.
DERIVED = ("metrics.json", "scores.csv", "report.html", "model.onnx")


def check_threshold(threshold: float, scores: np.ndarray, what: str, *, both: bool = True) -> bool:
    """Warn when ``threshold`` puts every score on one side; True when it does.

    With ``both=False`` only "everything anomalous" is reported (when predicting on new images,
    all of them being normal is the usual case, not a sign of a bad threshold).
    """
    if len(scores) == 0:
        return False
    lo, hi = float(np.min(scores)), float(np.max(scores))
    if threshold <= lo:
        log.warning("threshold %.6g is at or below every %s score (lowest %.6g): every image is "
                    "predicted anomalous; check the threshold parameter", threshold, what, lo)
        return True
    if both and threshold > hi:
        log.warning("threshold %.6g is above every %s score (highest %.6g): every image is "
                    "predicted normal; check the threshold parameter", threshold, what, hi)
        return True
    return False


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


def evaluate(run: Path, data_spec: str | None = None, data_root: str | None = None,
             device: str = "auto", on_bad_image: str = "error",
             progress: bool | None = None) -> dict[str, Any]:
    """Score the test split, write ``scores.csv`` and ``metrics.json``; return the metrics."""
    run = Path(run)
    det, cfg, spec, root = _open_run(run, data_spec, data_root, device)
    show = show_progress(progress)
    test, skipped = data_mod.screen(test_set(spec, root, cfg), on_bad_image, progress=show,
                                    what="test images")
    _warn_unlike_training(det, test)
    _warn_trained_test_images(cfg, test)
    t0 = time.perf_counter()
    scores = _finite(det.score(test, progress="scoring" if show else None), test.names)
    seconds = time.perf_counter() - t0
    metrics = _metrics(run, det, spec, test, scores, skipped, show)
    metrics["score_images_per_second"] = round(len(test) / max(seconds, 1e-9), 1)
    pred = det.flags(scores)
    rows = ["name,kind,label,score,predicted"]
    rows += [f"{_csv(_text(n))},{_csv(_text(k))},{int(lab)},{s:.9g},{int(p)}"
             for n, k, lab, s, p in zip(test.names, test.kinds, test.labels, scores, pred)]
    # scores.csv first: metrics.json is the file that says an evaluation is complete
    write_text(run / "scores.csv", "\n".join(rows) + "\n")
    write_json(run / "metrics.json", metrics)
    return metrics


def _warn_trained_test_images(cfg: dict[str, Any], test) -> None:
    """Warn when test images are among the run's training images: the same file (links
    resolved) or a byte-identical copy. A model scores the images it trained on lower than
    new ones, so the metrics come out better than the model is. Files only; the training
    split is listed again, not read (contents are compared only where byte sizes match)."""
    from .data.base import same_files
    from .export import quiet_logger

    paths = getattr(test, "paths", None)
    spec = cfg.get("data_path") or cfg.get("data")
    # unlabeled test images (a plain folder: its test split is its training images) give no
    # metrics to be misled by
    if not paths or not spec or not np.any(test.labels >= 0):
        return
    try:
        with quiet_logger("oneclass.data"):  # its warnings were given when training read it
            train_paths = getattr(data_mod.load(spec, "train", root=cfg.get("data_root")),
                                  "paths", None)
        if not train_paths:
            return
        shared = sorted(same_files(train_paths, paths))
    except (DataError, OSError):  # no train split (a test set alone), a file gone: no check
        return
    if shared:
        log.warning("%d of %d test images are training images of this run too (the same file "
                    "or a copy; first: %s): a model scores the images it trained on lower than "
                    "new ones, so these metrics are better than the model is; keep the test "
                    "images out of train/", len(shared), len(paths), test.names[shared[0]])


def _test_digest(test, scores: np.ndarray) -> str:
    """A fingerprint of the scored test set: its names, labels and scores (to 6 digits).

    ``report`` reuses ``metrics.json`` only when it matches, so images added, removed,
    relabelled or changed since ``eval`` give fresh metrics, not the old ones.
    """
    h = hashlib.sha256()
    for name, label, score in zip(test.names, test.labels, scores):
        h.update(f"{name}\0{int(label)}\0{float(score):.6g}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:16]


def _finite(scores: np.ndarray, names) -> np.ndarray:
    """``scores``, or a DataError naming (``names``) the images the model gave no finite score."""
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        shown = ", ".join(f"{names[i]} ({scores[i]})" for i in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(f"the model gave no finite score for {len(bad)} of {len(scores)} images: "
                        f"{shown}{more}; the model file may be damaged or these images far "
                        "outside its training data")
    return scores


def _metrics(run: Path, det: Detector, spec: str, test, scores: np.ndarray, skipped,
             show: bool) -> dict[str, Any]:
    """Image (and, with masks, pixel) metrics of ``scores`` on ``test``."""
    from .export import loaded_model_id

    labels = test.labels
    known = labels >= 0
    metrics: dict[str, Any] = {"data": spec, "model_id": loaded_model_id(det, model_dir(run)),
                               "test_digest": _test_digest(test, scores),
                               "n_test": int(len(test)), "n_anomalous": int((labels == 1).sum())}
    if skipped:
        metrics["skipped_images"] = [name for name, _ in skipped]
    keys = ("image_auroc", "image_ap", "image_f1", "image_f1_threshold")
    if known.any():
        im = image_metrics(labels[known], scores[known])
        if im["image_auroc"] is None:
            kind = "anomalous" if (labels[known] == 1).all() else "normal"
            log.warning("%s: all %d labeled test images are %s; image AUROC, AP and F1 need "
                        "both normal and anomalous images; writing the scores and accuracy only",
                        spec, int(known.sum()), kind)
    else:  # a plain folder: the scores are still worth writing
        log.warning("%s: all %d test images are unlabeled; image metrics need labeled data "
                    "(an MVTec-layout folder or a benchmark); writing the scores only",
                    spec, len(test))
        im = dict.fromkeys(keys)
    metrics.update({k: im[k] for k in keys})
    pred = det.flags(scores)
    metrics["threshold"] = det.threshold_
    metrics["threshold_source"] = det.threshold_source_
    # all unlabeled images predicted normal is the usual case, as when predicting
    metrics["threshold_outside_scores"] = check_threshold(det.threshold_, scores, "test",
                                                          both=bool(known.any()))
    metrics["accuracy_at_threshold"] = float((pred[known] == (labels[known] == 1)).mean()) \
        if known.any() else None
    # image_f1 is the best F1 over all thresholds (a property of the scores); this is the F1 of
    # the model's own predictions, what a user of its threshold gets
    truth = labels[known] == 1
    metrics["f1_at_threshold"] = (f1_score(truth, pred[known])
                                  if truth.any() and not truth.all() else None)
    metrics["pixel_auroc"] = metrics["aupro"] = None
    if test.has_masks:
        maps, masks = maps_and_masks(test, det, progress="heatmaps" if show else None)
        pm = pixel_metrics(masks, maps)
        metrics["pixel_auroc"], metrics["aupro"] = pm["pixel_auroc"], pm["aupro"]
    return metrics


def maps_and_masks(test, det: Detector, progress: str | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps of ``test`` and its ground-truth masks at the model's input size, both
    ``(N, H, W)``, from one read of each image (the masks were read in a second pass that
    decoded every image again, a third of ``eval``'s time on large images, with no output)."""
    from tqdm.auto import tqdm

    from .data.base import loader

    maps, masks = [], []
    with tqdm(total=len(test), desc=progress, disable=progress is None, leave=False) as bar:
        for x, _, m, _, _ in loader(test, det.preprocess_, int(det.score_batch_size)):
            maps.append(det.anomaly_map(x))  # the batches anomaly_map(test) would make
            masks.append(m[:, 0].numpy() > 0.5)
            bar.update(len(x))
    if not maps:
        shape = (0, *det.input_shape_[1:])
        return np.zeros(shape, np.float32), np.zeros(shape, bool)
    return np.concatenate(maps), np.concatenate(masks)


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


#: What ``eval`` prints: metrics.json key -> a note after the value.
_SHOWN = {"image_auroc": "", "image_ap": "", "image_f1": "best over all thresholds",
          "f1_at_threshold": "at the model's threshold", "accuracy_at_threshold": "",
          "pixel_auroc": "", "aupro": ""}


def format_metrics(m: dict[str, Any]) -> str:
    lines = [f"{'metric':<22}value"]
    for k, note in _SHOWN.items():
        v = m.get(k)
        if v is None and k not in ("image_auroc", "pixel_auroc", "aupro"):
            continue  # not computed for these data (no labels, or one class only)
        text = "n/a" if v is None else f"{v:.4f}"
        if k == "image_f1" and m.get("image_f1_threshold") is not None:
            note += f" (threshold {m['image_f1_threshold']:.6g})"
        elif k == "f1_at_threshold" and m.get("threshold") is not None:
            note += f" ({m['threshold']:.6g})"
        lines.append(f"{k:<22}{text}{'   ' + note if note else ''}")
    return "\n".join(lines)


def _to_uint8_image(x) -> np.ndarray:
    """Float tensor ``(C, H, W)`` in [0, 1] -> uint8 ``(H, W, C)``."""
    return (x.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())


def _unique_stems(paths: list[Path], reserved: set[str] = frozenset(),
                  among: list[Path] | None = None) -> list[str]:
    """A heatmap name per path: its file name's stem, prefixed with as many of its folders'
    names as tell it apart when that stem occurs in several folders of ``among`` (default
    ``paths``; a resume passes every input, so names do not depend on what is left to do):
    test/good/000.png and test/crack/000.png -> good_000, crack_000; x/good/000.png and
    y/good/000.png -> x_good_000, y_good_000. Then unique against every name already given
    and against ``reserved`` (names that rows of an earlier run already point to) by a
    number (a/img.png, a/IMG.png -> img, IMG_1), case-insensitively, so that no heatmap
    overwrites another, on case-insensitive file systems too; the same in every run over
    the same inputs."""
    def folders(q: Path) -> tuple[str, ...]:
        return Path(os.path.abspath(q)).parent.parts[1:]  # without the root

    groups: dict[str, set[tuple[str, ...]]] = {}
    for q in (paths if among is None else among):
        groups.setdefault(_safe_stem(q.stem).casefold(), set()).add(folders(q))
    depth: dict[str, int] = {}  # folders in front of a stem found in several folders
    for stem, parents in groups.items():
        if len(parents) > 1:
            most = max(len(f) for f in parents)
            depth[stem] = next((k for k in range(1, most + 1)
                                if len({tuple(x.casefold() for x in f[-k:]) for f in parents})
                                == len(parents)), most)
    used = {r.casefold() for r in reserved}
    out = []
    for p in paths:
        stem = _safe_stem(p.stem)
        k = depth.get(stem.casefold(), 0)
        front = folders(p)[-k:] if k else ()
        if front:
            stem = "_".join([*map(_safe_stem, front), stem])
        name, n = stem, 0
        while name.casefold() in used:
            n += 1
            name = f"{stem}_{n}"
        used.add(name.casefold())
        out.append(name)
    return out


PREDICTION_COLUMNS = ["path", "score", "label", "heatmap"]
#: Sizes ``predict`` draws heatmaps at: the image's own, or the model's input size.
HEATMAP_SIZES = ("image", "model")


def _input_paths(inputs: list[str], out: Path | None = None) -> list[Path]:
    """The image files of ``inputs`` (files and folders), each once.

    Files found in a folder are left out, with a warning, when they are in ``out/heatmaps``
    (the heatmaps of an earlier run: an --out inside an input folder) or below the
    ``ground_truth/`` of an MVTec-layout folder (masks, not images to score).
    """
    from .data.folder import is_mask_name, is_mvtec, list_images

    listed: list[tuple[Path, bool]] = []  # (path, found in a folder)
    masks: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise DataError(f"{p}: no images found")
            listed += [(f, True) for f in found]
            # the ground_truth/ of this MVTec-layout folder, or of those below it (a folder of
            # several categories)
            gts = {p.joinpath(*rel[:k + 1]) for rel in (f.relative_to(p).parts for f in found)
                   for k, part in enumerate(rel[:-1]) if part.lower() == "ground_truth"}
            masks += [os.path.realpath(g) for g in gts if is_mvtec(g.parent)]
        elif p.is_file():
            listed.append((p, False))
        else:
            raise DataError(f"{p}: no such file or folder")
    # this command's own output: the heatmaps (staging folders are hidden: never listed)
    own = os.path.realpath(Path(out) / "heatmaps") if out is not None else None
    seen: set[Path] = set()
    unique = []
    n_own = n_masks = n_named = 0
    for p, in_folder in listed:
        key = os.path.realpath(p)  # no error on a symlink loop: reading it reports that
        if in_folder and own is not None and _inside(key, own):
            n_own += 1
            continue
        if in_folder and any(_inside(key, m) for m in masks):
            n_masks += 1
            continue
        if in_folder and is_mask_name(p):  # as data.load leaves them out of plain folders
            n_named += 1
            continue
        if key not in seen:
            seen.add(key)
            unique.append(p)
    if n_own:
        log.warning("%d image%s in %s (this command's own heatmaps) left out", n_own,
                    "" if n_own == 1 else "s", Path(out) / "heatmaps")
    if n_masks:
        log.warning("%d mask%s in ground_truth/ of an MVTec-layout folder left out (masks are not "
                    "scored)", n_masks, "" if n_masks == 1 else "s")
    if n_named:
        log.warning("%d file%s named *_mask left out (masks are not scored; give a file itself "
                    "to score it)", n_named, "" if n_named == 1 else "s")
    if not unique:
        raise DataError(f"no images to score in {', '.join(map(str, inputs))} outside "
                        "--out's heatmaps/ and ground_truth/ (and *_mask files)")
    n_dup = len(listed) - n_own - n_masks - n_named - len(unique)
    if n_dup:
        log.warning("%d extra cop%s of images given more than once; each image is scored once",
                    n_dup, "y" if n_dup == 1 else "ies")
    return unique


def _inside(path: str, folder: str) -> bool:
    """Whether the resolved ``path`` is ``folder`` or below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def predict(run: Path, inputs: list[str], out: Path, *, resume: bool = False,
            overwrite: bool = False, heatmaps: bool = True, device: str = "auto",
            progress: bool | None = None, batch_size: int = 32,
            on_bad_image: str = "error", heatmap_size: str | None = None) -> dict[str, Any]:
    """Score images and folders, streaming: ``OUT/predictions.csv`` and ``OUT/heatmaps/``.

    ``predictions.csv`` (UTF-8) has the columns path, score, label (1 at or above the
    threshold) and heatmap (its file, ``heatmaps/NAME.png``, empty without heatmaps); a path
    that is not UTF-8 is written with ``\\xNN`` for each undecodable byte. Rows are appended
    batch by batch, so memory stays bounded whatever the number of images; with ``resume``
    images already in ``predictions.csv`` (however their path is spelled: they are matched
    by resolved path) are skipped and its columns and heatmap names kept (a file written before
    the heatmap column existed goes on without it). An existing ``predictions.csv`` is never
    replaced without ``overwrite``, which writes the new results beside the old ones and
    swaps them in (the old heatmaps go) only when the run is complete: a run that stops
    leaves the previous results as they were. With ``on_bad_image="skip"`` unreadable images
    get no row (a later ``resume`` tries them again). An image the model gives no finite
    score stops the run (its earlier rows kept). The heatmaps in ``out`` are not read as inputs.

    ``heatmap_size``: ``"image"`` draws each heatmap over the image as it was given, at its
    size (scaled down to :data:`viz.OVERLAY_MAX_SIDE` on the longer side when larger), from
    the same read of the file as its score; ``"model"`` over the image as the model saw it
    (resized, in the model's channels). None: ``"image"``, or with ``resume`` the size the
    rows' heatmaps were drawn at (recorded in ``predictions.json``; ``"model"`` for files
    written before it was recorded); a size given with ``resume`` must be that one.
    """
    import csv
    import tempfile

    from tqdm.auto import tqdm

    from . import viz
    from .data.base import FileSet, loader
    from .io import WriteError, _prefix, atomic_write

    check_policy(on_bad_image)
    if heatmap_size is not None and heatmap_size not in HEATMAP_SIZES:
        raise ConfigError(f"heatmap size must be one of {', '.join(HEATMAP_SIZES)}, got "
                          f"{heatmap_size!r}")
    if int(batch_size) < 1:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    if resume and overwrite:
        raise ConfigError("--resume continues predictions.csv and --overwrite replaces it: "
                          "give one of them")
    det = load_model(run, device)
    out = Path(out)
    paths = _input_paths(inputs, out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; give --out a folder")
    csv_path = out / "predictions.csv"
    if csv_path.exists() and not (resume or overwrite):
        raise DataError(f"{csv_path} exists: pass --resume to continue it or --overwrite to "
                        "replace it and its heatmaps")
    done: dict[str, str] = {}
    n_anom_before = 0  # earlier rows labelled anomalous (resumed)
    columns = PREDICTION_COLUMNS
    from .export import loaded_model_id

    mid = loaded_model_id(det, model_dir(run))
    sidecar = out / "predictions.json"  # which model wrote predictions.csv
    # rows are matched by resolved path; a run resumed from another folder writes its rows'
    # paths absolute, as relative ones would be read against the folder of the first run
    base = os.getcwd()
    if resume and csv_path.exists():
        before = _check_same_model(sidecar, csv_path, mid, det)
        done, columns, n_anom_before = _complete_rows(csv_path)
        heatmap_size = _same_heatmap_size(before, csv_path, heatmap_size)
        base = _rows_base(before)
    heatmap_size = heatmap_size or "image"
    done_keys = _done_keys(done, base)
    here = os.path.realpath(base) == os.path.realpath(os.getcwd())
    todo = [p for p in paths if _text(os.path.realpath(p)) not in done_keys
            and not (here and _text(p) in done)]
    n_bad = 0
    fs = None
    if todo:  # checked before anything is written: a bad input loses no earlier result
        fs, bad = data_mod.screen(FileSet(todo, [-1] * len(todo), names=[str(p) for p in todo]),
                                  on_bad_image, progress=show_progress(progress),
                                  what="input images", allow_empty=True)
        n_bad = len(bad)
        if len(fs) == 0 and not done:
            raise DataError(f"none of the {len(todo)} input images can be read")
        todo = [Path(n) for n in fs.names]
        _warn_unlike_training(det, fs)
    reserved = {Path(h).stem for h in done.values() if h}
    stems = dict(zip(map(str, todo), _unique_stems(todo, reserved, among=paths)))
    out.mkdir(parents=True, exist_ok=True)
    mode = "a" if resume and csv_path.exists() else "w"
    # --overwrite of earlier results: the new ones are written to a folder beside them and
    # swapped in when complete, so that a run that stops (a corrupt image in a later batch,
    # a full disk, Ctrl-C) leaves the previous predictions.csv and heatmaps as they were
    staged = overwrite and (csv_path.exists() or (out / "heatmaps").exists())
    lo, hi = (det.map_scale_ or [None, None])
    n_anom = 0
    state: dict[str, Any] = {}
    # the threshold decides the labels and the scoring parameters the scores: the model id
    # (its weights' hash) stays when they change, so --resume compares them too
    side = {"model_id": mid, "run": str(run), "method": det.name, "threshold": det.threshold_,
            "scoring_params": _scoring_params(det),
            "cwd": os.getcwd(),  # relative paths of the rows are relative to it
            "heatmap_size": heatmap_size}
    # "image": each heatmap drawn on a copy of the image from the read that scored it (a
    # file changed or removed since cannot stop the run or give another image's overlay)
    view = (lambda img: viz.fit_side(img, viz.OVERLAY_MAX_SIDE)) \
        if heatmaps and heatmap_size == "image" else None

    def start():
        """Open predictions.csv when the first batch is scored: a bad first image (read only
        now under on_bad_image=error) or any earlier failure leaves an old file as it was."""
        if staged:
            state["stage"] = Path(tempfile.mkdtemp(prefix=_prefix(out / "predictions"),
                                                   suffix=".tmp", dir=out))
        target = state.get("stage", out)
        state["maps"] = target / "heatmaps"
        if heatmaps:
            state["maps"].mkdir(exist_ok=True)
        if mode == "w" and not staged:
            write_json(sidecar, side)
        fh = state["fh"] = open(target / "predictions.csv", mode, newline="", encoding="utf-8")
        state["writer"] = csv.writer(fh, lineterminator="\n")
        if mode == "w":
            state["writer"].writerow(columns)
            fh.flush()

    try:
        if todo:
            bar = tqdm(total=len(todo), desc="scoring", disable=not show_progress(progress), leave=False)
            for xb, _, _, _, idx, *views in loader(fs, det.preprocess_, batch_size, view=view):
                xb = xb.to(det.device_)
                if heatmaps:
                    s, m = det._score_map(xb)
                    scores, maps = s.float().cpu().numpy(), m.detach().float().cpu().numpy()
                else:
                    with torch.no_grad():
                        scores, maps = det._score(xb).float().cpu().numpy(), None
                _finite(scores, [str(todo[i]) for i in idx.tolist()])
                if not state:
                    start()
                for j, i in enumerate(idx.tolist()):
                    label = int(det.flags(scores[j]))
                    n_anom += label
                    heatmap = ""
                    if maps is not None:
                        stem = stems[str(todo[i])]
                        heatmap = f"heatmaps/{stem}.png"
                        shown_img = views[0][j] if views else _to_uint8_image(xb[j])
                        png = viz.to_png(viz.overlay(shown_img, maps[j], lo, hi), viz.FAST_PNG)
                        atomic_write(state["maps"] / f"{stem}.png",
                                     lambda p, b=png: p.write_bytes(b), fsync=False)
                    shown = todo[i] if here else os.path.abspath(todo[i])
                    row = {"path": _text(shown), "score": f"{scores[j]:.9g}", "label": label,
                           "heatmap": heatmap}
                    state["writer"].writerow([row.get(c, "") for c in columns])
                state["fh"].flush()
                bar.update(len(idx))
            bar.close()
        if not state:  # nothing new to score: the file still exists, with its header
            start()
        state["fh"].close()
        if staged:
            _swap_in(state["stage"], out, sidecar, side)
    except (OSError, WriteError) as exc:
        if not staged:
            raise
        why = (exc.strerror or exc) if isinstance(exc, OSError) else exc
        raise OneclassError(f"{out}: cannot write predictions ({why}); the previous "
                            "predictions.csv and heatmaps are kept as they were; rerun with "
                            "--overwrite") from None
    finally:
        if "fh" in state:
            state["fh"].close()
        if "stage" in state:  # after a swap only the emptied folder is left
            shutil.rmtree(state["stage"], ignore_errors=True)
    n_rows = len(todo) + len(done)  # this run's rows and, resumed, the earlier ones
    if len(todo) and n_rows >= 10 and n_anom + n_anom_before == n_rows:
        log.warning("all %d images are at or above the threshold %.6g: every image is predicted "
                    "anomalous; if they are not all defective, are they of the kind the model "
                    "was trained on (material, lighting, colour, size)? If they are, the "
                    "threshold may be too low (train with --set threshold=VALUE, or more normal "
                    "images to hold back)", n_rows, det.threshold_)
    return {"scored": len(todo), "skipped": len(paths) - len(todo) - n_bad, "unreadable": n_bad,
            "anomalous": n_anom, "anomalous_total": n_anom + n_anom_before, "csv": str(csv_path)}


def image_notes(det: Detector, image: np.ndarray) -> list[str]:
    """For one decoded uint8 ``(H, W, C)`` image (an upload), the warnings that
    :func:`_warn_unlike_training` gives a set of images: a size far from the training images', or
    colour against gray training images and the reverse."""
    notes = []
    ref = getattr(det, "train_image_size_", None)
    h, w = image.shape[:2]
    if ref and far_in_size(ref, h, w):
        notes.append(f"the image is {h}x{w}, far from the model's training images (median "
                     f"{ref[0]}x{ref[1]}): it is resized to the model's input and scored at "
                     "another scale")
    if is_colour(image) and det.preprocess_.channels == 1 and det.channels is None:
        notes.append("a colour image, but the model was trained on grayscale images: it is "
                     "scored as its luminance")
    if image.shape[2] == 1 and det.preprocess_.channels == 3:
        notes.append("a grayscale image, but the model was trained on colour images: it is "
                     "scored as its gray copied to three channels")
    return notes


def _warn_sizes(det: Detector, images, limit: int = 256) -> None:
    """Warn when images differ much in size from the model's training images (their median,
    recorded at fit; of at most ``limit`` images spread over the set, by file headers): each
    is resized to the model's input, so what it shows changes scale, a sign of another
    camera, zoom or crop than the training images had."""
    ref = getattr(det, "train_image_size_", None)
    if not ref or not len(images):
        return
    h0, w0 = ref
    far, looked = images.far_sizes(ref, limit)
    if far:
        i, h, w = far[0]
        log.warning("%d of %d images differ much in size from the model's training images "
                    "(median %dx%d; first: %s, %dx%d): each is resized to the model's input, "
                    "so what it shows changes scale; are they from the camera, zoom and crop "
                    "the model was trained on?", len(far), looked, h0, w0, images.names[i],
                    h, w)


def _warn_unlike_training(det: Detector, images) -> None:
    """Warn when a colour model is given grayscale images (by their file headers): each is
    scored as its gray copied to three channels, which a model that learned colour usually
    finds far from normal, so every one of them tends to be flagged. And when a model that
    found its training images gray (``channels`` not set) is given colour ones (up to 16
    files not gray by their headers are decoded: RGB files often hold gray pixels): each is
    scored as its luminance, so what shows only in colour is not seen. And when their sizes
    are far from the training images' (:func:`_warn_sizes`)."""
    from .data.base import GRAY_MODES

    if det.preprocess_.channels == 1 and det.channels is None:
        first = images.first_colour(limit=16)
        if first is not None:
            log.warning("%s is a colour image, but the model was trained on grayscale "
                        "images: colour images are scored as their luminance, so a defect seen "
                        "only in colour is not seen; score images of the kind trained on, or "
                        "train on colour ones", images.names[first])
    _warn_sizes(det, images)
    if det.preprocess_.channels != 3:
        return
    gray = [images.names[i] for i in range(len(images)) if images.mode(i) in GRAY_MODES]
    if gray:
        log.warning("%d of %d images are grayscale (first: %s), but the model was trained on "
                    "colour images: they are scored as their gray copied to three channels, "
                    "which a colour model usually finds anomalous; score colour images, or "
                    "train on grayscale ones (--set channels=1)", len(gray), len(images),
                    gray[0])


def _swap_in(stage: Path, out: Path, sidecar: Path, side: dict[str, Any]) -> None:
    """Replace ``out``'s predictions.csv and heatmaps/ by the complete ones in ``stage``: the
    old heatmaps move into ``stage`` (removed with it), the new ones into place, then the
    predictions file, and last the record of the model that wrote it (a predictions file
    beside the record of another model is refused by --resume, not continued)."""
    old, new, kept = out / "heatmaps", stage / "heatmaps", stage / "heatmaps.old"
    if old.exists():
        os.replace(old, kept)
    try:
        if new.exists():
            os.replace(new, old)
        os.replace(stage / "predictions.csv", out / "predictions.csv")
    except BaseException:  # the old predictions.csv stays: so do its heatmaps
        if kept.exists():
            if old.exists():
                os.replace(old, new)
            os.replace(kept, old)
        raise
    write_json(sidecar, side)


def _rows_base(side: dict[str, Any]) -> str:
    """The folder relative paths in ``predictions.csv`` are relative to: the one it was
    written from (recorded in ``side``, its predictions.json), else (files from before that
    was recorded) this one."""
    cwd = side.get("cwd")
    # a folder since moved or removed: the rows can only be read against this one
    return cwd if isinstance(cwd, str) and os.path.isdir(cwd) else os.getcwd()


def _done_keys(done: dict[str, str], base: str) -> set[str]:
    """The resolved paths of the rows of ``done`` (relative ones against ``base``), as
    :func:`_text` gives them."""
    return {_text(os.path.realpath(os.path.join(base, p))) for p in done}


def _same_heatmap_size(side: dict[str, Any], csv_path: Path, given: str | None) -> str:
    """The heatmap size the rows of ``csv_path`` were drawn at (recorded in ``side``, its
    predictions.json; files from before it was recorded: ``"model"``); a ``given`` other size
    is refused, as it would mix sizes."""
    recorded = side.get("heatmap_size")
    recorded = recorded if recorded in HEATMAP_SIZES else "model"
    if given is not None and given != recorded:
        raise ConfigError(f"{csv_path}: its heatmaps were drawn at the {recorded} size, and "
                          f"--heatmap-size {given} would mix the two; resume with --heatmap-size "
                          f"{recorded} (or without it), or use --overwrite or another --out")
    return recorded


def _scoring_params(det: Detector) -> dict[str, Any]:
    """``det``'s scoring parameters (:attr:`Detector.scoring_params`) as JSON values (as
    predictions.json holds them, so that a recorded and a current value compare equal)."""
    from .io import json_default

    return json.loads(json.dumps({k: getattr(det, k, None) for k in det.scoring_params},
                                 default=json_default))


def _check_same_model(sidecar: Path, csv_path: Path, mid: str | None,
                      det: Detector) -> dict[str, Any]:
    """Refuse to continue a ``predictions.csv`` that another model wrote, or the same weights
    with another threshold or other scoring parameters (``det``'s; a record from before the
    scoring parameters were kept is compared on what it holds); return the record beside it
    (``sidecar``, empty when an older version wrote none)."""
    try:
        side = json.loads(sidecar.read_text(encoding="utf-8"))
        recorded = side.get("model_id")
    except FileNotFoundError:
        log.warning("%s: no %s beside it (an older version wrote it), so it cannot be checked "
                    "that the same model scored its rows", csv_path, sidecar.name)
        return {}
    except (OSError, ValueError, AttributeError) as exc:
        raise DataError(f"{sidecar}: cannot read ({exc}); use --overwrite or another --out") from None
    if recorded != mid:
        raise ConfigError(f"{csv_path} was written by model {recorded}, and this run's model is "
                          f"{mid}: --resume would mix their scores; use --overwrite or another "
                          "--out")
    differ = []
    recorded_t = side.get("threshold")
    if recorded_t is not None and recorded_t != det.threshold_:
        differ.append(f"threshold {recorded_t!r} -> {float(det.threshold_)!r}")
    recorded_p = side.get("scoring_params")
    if isinstance(recorded_p, dict):
        now = _scoring_params(det)
        for k in sorted(set(recorded_p) | set(now)):
            if recorded_p.get(k) != now.get(k):
                differ.append(f"scoring parameter {k}: {recorded_p.get(k)!r} -> {now.get(k)!r}")
    if differ:
        raise ConfigError(f"{csv_path} was written by this model with other settings "
                          f"({'; '.join(differ)}): --resume would mix rows scored or labelled "
                          "with the two; use --overwrite or another --out (or set the model "
                          "back to the earlier settings)")
    return side


def _complete_rows(csv_path: Path) -> tuple[dict[str, str], list[str], int]:
    """The complete rows of an interrupted ``predictions.csv`` (path -> heatmap file), its
    columns (new rows follow them) and how many of the rows are labelled anomalous; a row cut
    short by the interruption, even inside a character, is dropped from the file, so that
    appending continues on a new line."""
    import csv
    import io

    raw = csv_path.read_bytes()
    whole = raw[:raw.rfind(b"\n") + 1]  # up to the last line end: the cut tail goes
    try:
        text = whole.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{csv_path}: not a UTF-8 predictions file ({exc}); use a new --out "
                        "or --overwrite") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = list(reader.fieldnames or PREDICTION_COLUMNS)
    if "path" not in columns or "score" not in columns:
        raise DataError(f"{csv_path}: not a predictions file (columns {columns}); use a new "
                        "--out or --overwrite")
    good, done = [], {}
    for row in reader:
        try:
            ok = row.get("label") in ("0", "1") and np.isfinite(float(row.get("score") or ""))
        except ValueError:
            ok = False
        if ok and row.get("path") and all(row.get(c) is not None for c in columns):
            good.append(row)
            done[row["path"]] = row.get("heatmap") or ""
    if len(whole) != len(raw) or len(good) != text.count("\n") - 1:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(good)
        write_text(csv_path, buf.getvalue())
    return done, columns, sum(row["label"] == "1" for row in good)


def report(run: Path, data_spec: str | None = None, data_root: str | None = None,
           top: int = 8, device: str = "auto", on_bad_image: str = "error",
           progress: bool | None = None) -> Path:
    """Write ``RUN/report.html`` for the test split of the run's data (or ``data_spec``).

    The metrics come from ``metrics.json`` when it was written by ``eval`` for this model on
    these test images, with these labels and scores; otherwise they are computed for the
    report alone (``metrics.json`` is left as it is: it stays the run's own evaluation).
    """
    from .export import loaded_model_id
    from .report import Example, build_report

    run = Path(run)
    det, cfg, spec, root = _open_run(run, data_spec, data_root, device)
    if top < 1:
        raise ConfigError(f"--top must be at least 1, got {top}")
    show = show_progress(progress)
    test, skipped = data_mod.screen(test_set(spec, root, cfg), on_bad_image, progress=show,
                                    what="test images")
    _warn_unlike_training(det, test)
    _warn_trained_test_images(cfg, test)
    scores = _finite(det.score(test, progress="scoring" if show else None), test.names)
    mpath = run / "metrics.json"
    metrics = {}
    if mpath.exists():
        try:
            metrics = json.loads(mpath.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            log.warning("%s: not valid JSON; computing the report's metrics afresh", mpath)
    if not isinstance(metrics, dict) or metrics.get("data") != spec \
            or metrics.get("model_id") != loaded_model_id(det, model_dir(run)) \
            or metrics.get("test_digest") != _test_digest(test, scores):
        metrics = _metrics(run, det, spec, test, scores, skipped, show)
    order = np.argsort(-scores, kind="stable")
    # the two galleries never show an image twice (--top 100 of 150 images showed 50 in both)
    k = min(int(top), len(order) // 2)
    k_most = k if len(order) != 1 else 1  # a single test image: among the highest only
    if k < int(top) and len(order) > 1:
        log.info("--top %d: the test set has %d images, so each gallery shows %d",
                    int(top), len(order), k)
    if k > 50:
        log.warning("--top %d: each example adds about 0.5-1 MB of pictures to report.html", k)

    def examples(idx, what: str) -> list[Example]:
        # each shown as given (its colours, its size up to the report's thumbnails, its mask),
        # the map laid over it as predict does; only the thumbnails are kept
        from tqdm.auto import tqdm

        from . import viz
        from .report import MAX_SIDE

        sub = test.subset(idx)
        maps = det.anomaly_map(sub, progress=f"{what} (maps)" if show else None)
        out = []
        for j in tqdm(range(len(sub)), desc=what, disable=not show, leave=False):
            s = sub.read(j)
            thumb = viz.fit_side(s.image, MAX_SIDE)
            mask = None if s.mask is None else viz.resize_mask(np.asarray(s.mask, bool),
                                                               thumb.shape[:2])
            out.append(Example(name=_text(sub.names[j]), image=thumb, amap=maps[j], mask=mask,
                               score=float(scores[idx[j]]), label=int(s.label)))
        return out

    spec = _text(spec)  # a folder name that is not UTF-8 is shown with escapes, as elsewhere
    info = {"method": det.name, "data": spec, "test images": len(test),
            "threshold": det.threshold_, "threshold source": det.threshold_source_,
            "training images": det.n_train_, "training seconds": det.train_seconds_,
            **({"training epochs": det.train_epochs_}
               if getattr(det, "train_epochs_", None) is not None else {}),
            "input (C, H, W)": list(det.input_shape_), "params": det.get_params()}
    if cfg.get("anomalies_used"):
        info["labeled anomalies"] = (
            f"{len(cfg['anomalies_used'])} from {_text(str(cfg.get('anomalies')))}"
            + ("" if det.uses_anomalies else ", not trained on (the method learns from "
               "normal images only)")
            + ("; their folder is not found from here, so any of them among these test images "
               "were evaluated too" if anomalies_missing(cfg) and data_mod.source(
                   str(cfg.get("anomalies_source"))) != data_mod.source(spec)
               else "; left out of these test images"))
    if cfg.get("outliers"):
        info["outlier exposure"] = _text(str(cfg["outliers"])) + (
            "" if det.uses_outliers else " (not used by the method)")
    pick = {"image_auroc": metrics.get("image_auroc"), "image_ap": metrics.get("image_ap"),
            "image_f1 (best over all thresholds)": metrics.get("image_f1"),
            "F1 at the model's threshold": metrics.get("f1_at_threshold"),
            "pixel_auroc": metrics.get("pixel_auroc"), "aupro": metrics.get("aupro")}
    figures = det.report_figures(test.subset(np.r_[order[:k_most], order[::-1][:k]]))
    return build_report(run / "report.html", title=f"oneclass {det.name}: {spec}",
                        scores=scores, labels=test.labels, threshold=det.threshold_,
                        metrics=pick, most=examples(order[:k_most], "highest scores"),
                        least=examples(order[::-1][:k], "lowest scores"), info=info, samples=figures or None)
