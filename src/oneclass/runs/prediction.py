"""`oneclass predict`: images and folders scored into predictions.csv and heatmaps, resumable.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import data as data_mod
from ..data.screen import check_policy
from ..detector import Detector
from ..errors import ConfigError, DataError, OneclassError
from ..io import write_json, write_text
from ..train import show_progress
from .evaluation import _finite, _warn_unlike_training
from .layout import _safe_stem, _text, load_model, model_dir

log = logging.getLogger(__name__)


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
    from ..data.folder import is_mask_name, is_mvtec, list_images

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

    from .. import viz
    from ..data.base import FileSet, loader
    from ..io import WriteError, _prefix, atomic_write

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
    from ..export import loaded_model_id

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
    from ..io import json_default

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
