"""The images a run trains and is tested on: the data spec's training set with its labeled
anomalies and outliers, and the test set without the images training used.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import data as data_mod
from ..errors import ConfigError, DataError, OneclassError

log = logging.getLogger(__name__)


def anomaly_images(spec: str, root: str | None = None, masks: bool = True):
    """The images ``--anomalies SPEC`` offers: the test split of an MVTec-layout folder or a
    benchmark (its anomalous images are used); a folder holding ``test/<type>/`` alone (no
    ``train/`` or ``ground_truth/``), read as that test set; or a plain folder of defect
    images, every one anomalous, its type the folder below ``SPEC`` it is in (else SPEC's
    own name). ``masks=False`` leaves ground-truth masks unread."""
    from ..data.folder import NORMAL_DIRS, is_mvtec, mvtec, split_dirs

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
    from ..data.base import ANOMALOUS, FileSet

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
    from ..data.base import same_files

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
    from ..export import quiet_logger

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
    from ..data.base import same_files

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
