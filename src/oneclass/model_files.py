"""A saved model on disk: ``model.json``, the JSON description that rebuilds it, and
``weights.safetensors``, its tensors; never a pickle.

Both files are read through one handle on the folder, so a save swapping a new folder in
cannot pair one model's description with the other's weights. The description is checked
entry by entry and the weights against their checksum before anything is built from them;
what is wrong is a one-line :class:`~oneclass.errors.ModelFileError` naming the file and the
entry. :meth:`oneclass.detector.Detector.save` writes the files, ``load`` reads them here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .errors import ModelFileError
from .io import WriteError, previous_dir, recover_dir

log = logging.getLogger(__name__)

FORMAT = "oneclass-model"
FORMAT_VERSION = 1
MODEL_FILES = ("model.json", "weights.safetensors")


def is_number(v: Any) -> bool:
    """A JSON number: int or float, not bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_whole(v: Any) -> bool:
    """A JSON whole number: int, not bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def shown(v: Any) -> str:
    """A value read from JSON as an error shows it: null, true, '0.5' (a string), 3."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f"{v[:60]!r} (a string)"
    if isinstance(v, (list, dict)):
        return f"{json.dumps(v)[:60]} ({'a list' if isinstance(v, list) else 'an object'})"
    return repr(v)


def check_description(meta: dict[str, Any], meta_path: Path, defaults: dict[str, Any]) -> None:
    """The entries of model.json that :meth:`Detector.load` reads, each of the JSON type it
    must have (a number is not taken from a string): a ModelFileError naming the file, the
    entry and what is wrong, before anything else is said about the description."""
    def bad(entry: str, what: str) -> ModelFileError:
        return ModelFileError(f"{meta_path}: damaged model description: {entry} {what}")

    def need(d: dict, k: str, where: str, kind: type, what: str) -> Any:
        entry = f"'{k}'" + (f" (in '{where}')" if where else "")
        if k not in d:
            raise ModelFileError(f"{meta_path}: damaged model description: missing entry {entry}")
        if not isinstance(d[k], kind) or isinstance(d[k], bool):  # JSON true is no number
            raise bad(entry, f"must be {what}, got {shown(d[k])}")
        return d[k]

    for k in ("params", "preprocess", "fitted"):
        need(meta, k, "", dict, "a JSON object")
    shape = need(meta, "input_shape", "", list, "a list of 3 whole numbers (C, H, W)")
    if len(shape) != 3 or not all(is_whole(v) for v in shape):
        raise bad("'input_shape'", f"must be a list of 3 whole numbers (C, H, W), got "
                                   f"{shown(shape)}")
    pre = meta["preprocess"]
    need(pre, "channels", "preprocess", int, "a whole number")
    size = pre.get("size")
    if size is not None and not (isinstance(size, list) and all(is_whole(v) for v in size)):
        raise bad("'size' (in 'preprocess')", f"must be a list of whole numbers or null, got "
                                              f"{shown(size)}")
    fitted = meta["fitted"]
    need(fitted, "threshold", "fitted", (int, float), "a number")
    need(fitted, "threshold_source", "fitted", str, "a string")
    for k, v in meta["params"].items():
        d = defaults.get(k)
        entry = f"'{k}' (in 'params')"
        if k == "threshold":
            if v is not None and not is_number(v):
                raise bad(entry, f"must be a number or null, got {shown(v)}")
        elif is_number(d) and isinstance(v, (str, bool)):
            raise bad(entry, f"must be a number, got {shown(v)}")
        elif isinstance(d, bool) and isinstance(v, str):
            raise bad(entry, f"must be true or false, got {shown(v)}")


def check_save_target(path: Path) -> None:
    """A WriteError unless ``path`` is free or a saved model's directory (which save replaces
    as a whole: other files in it would be deleted)."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise WriteError(f"{path}: exists and is not a directory; a model is saved to a "
                         "directory of its own")
    try:
        other = sorted(f.name for f in path.iterdir() if f.name not in MODEL_FILES)
    except OSError as exc:
        raise WriteError(f"{path}: cannot list ({exc.strerror})") from None
    if other:
        listed = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
        raise WriteError(f"{path}: holds {listed}, not only a saved model; saving replaces the "
                         "whole directory, so save to a new directory (or move these away)")


def _read_regular(name: str, dir_fd: int | None, where: Path) -> bytes:
    """The bytes of the regular file ``name`` in the folder ``dir_fd`` (or ``where``). A FIFO,
    device or folder under that name is refused before reading: ``/dev/zero`` linked in as
    weights would be read until memory runs out, a FIFO would block for ever."""
    import stat

    # O_BINARY: Windows opens in text mode otherwise (CRLF and 0x1A would change the bytes)
    fd = os.open(name if dir_fd is not None else where / name,
                 os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0),
                 dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(0, "not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def read_model_files(path: Path) -> tuple[bytes | OSError, bytes | OSError]:
    """``model.json`` and ``weights.safetensors`` of the saved model ``path``, each as its bytes
    or the error that reading it raised (reported by the caller, in its order).

    Both are read through one handle on the folder, so a save that swaps a new folder in
    meanwhile (:func:`oneclass.io.atomic_dir`) cannot pair one model's description with the
    other's weights. A file found missing is looked for twice more, 50 ms apart: the swap
    renames the folder away and back and then deletes the old one, which may be the folder
    being read.
    """
    use_fd = os.open in os.supports_dir_fd and hasattr(os, "O_DIRECTORY")
    # O_PATH (Linux): a folder that may be entered but not listed (mode 711) opens too
    dir_flags = os.O_DIRECTORY | getattr(os, "O_PATH", os.O_RDONLY) if use_fd else 0
    for attempt in range(3):
        dir_fd = None
        try:
            if use_fd:
                try:
                    dir_fd = os.open(path, dir_flags)
                except PermissionError:  # no O_PATH and no read permission: by path
                    dir_fd = None
            out: list[bytes | OSError] = []
            for name in MODEL_FILES:
                try:
                    out.append(_read_regular(name, dir_fd, path))
                except OSError as exc:
                    out.append(exc)
        except OSError as exc:  # the folder itself: no such folder, no permission
            out = [exc, exc]
        finally:
            if dir_fd is not None:
                os.close(dir_fd)
        if not any(isinstance(v, FileNotFoundError) for v in out) or attempt == 2:
            return out[0], out[1]
        time.sleep(0.05)  # perhaps a save swapping the folder: read the new one
    raise AssertionError("unreachable")


#: What rebuilding a model from a damaged or hand-edited description raises (a KeyError for
#: a missing entry, ConfigError for a bad setting, ...): reported by :func:`damaged`.
DESCRIPTION_ERRORS = (KeyError, TypeError, ValueError, AttributeError, RuntimeError,
                       OverflowError)


def damaged(meta_path: Path, exc: BaseException) -> ModelFileError:
    """The one-line error of a description that cannot be rebuilt (see DESCRIPTION_ERRORS)."""
    what = f"missing entry {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
    return ModelFileError(f"{meta_path}: damaged model description ({what})")


def fit_weights(net: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """What keeps the tensors ``state`` from loading into ``net`` (built on the meta device,
    so a description asking for huge tensors allocates nothing), or None when they fit."""
    want = net.state_dict()
    problems = [f"missing {k}" for k in want if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in want]
    problems += [f"size mismatch for {k}: the weights hold {list(state[k].shape)}, model.json "
                 f"builds {list(v.shape)}" for k, v in want.items()
                 if k in state and tuple(state[k].shape) != tuple(v.shape)]
    return "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5
                                       else "") if problems else None


def read_saved(path: Path) -> tuple[Path, Path, dict[str, Any], bytes | OSError]:
    """The saved model at ``path``: the folder read (the previous model's when an
    interrupted save left it in the way and it cannot be put back), its model.json's path,
    the description, checked as a oneclass model of this format version, and the weights'
    bytes (or the error reading them raised, reported by :func:`check_weights` after the
    description's own checks)."""
    path = Path(path)
    if not path.exists() and previous_dir(path).is_dir():
        # a save between its two renames (microseconds apart) looks like a killed one:
        # give it a moment before putting the previous model back in its way
        time.sleep(0.2)
    try:
        if recover_dir(path):
            log.warning("%s: a save was interrupted; the previous model was put back", path)
    except OSError as exc:  # a read-only folder: read the complete previous model in place
        log.warning("%s: a save was interrupted and the previous model cannot be put back "
                    "(%s); reading it from %s", path, exc.strerror or exc, previous_dir(path))
        path = previous_dir(path)
    meta_path = path / "model.json"
    text, raw = read_model_files(path)
    if isinstance(text, (FileNotFoundError, NotADirectoryError)):
        raise ModelFileError(f"{path}: not a saved model (no model.json)")
    if isinstance(text, OSError):
        raise ModelFileError(f"{meta_path}: cannot read ({text.strerror})")
    try:  # NaN and Infinity are read: the checks below name the entry that holds them
        meta = json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ModelFileError(f"{meta_path}: not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{meta_path}: not a oneclass model description")
    version = meta.get("format_version")
    if not is_whole(version):
        raise ModelFileError(f"{meta_path}: damaged model description: 'format_version' "
                             f"must be a whole number, got {shown(version)}")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{meta_path}: model format version {meta.get('format_version')} (written by "
            f"oneclass {meta.get('oneclass_version')}); this oneclass "
            f"({__version__}) reads version {FORMAT_VERSION}; retrain the model with this "
            "version, or load it with the oneclass version that wrote it"
        )
    return path, meta_path, meta, raw


def check_weights(meta: dict[str, Any], meta_path: Path, raw: bytes | OSError,
                  wpath: Path) -> None:
    """A ModelFileError unless ``raw`` are the weights whose checksum model.json records."""
    if isinstance(raw, OSError):
        raise ModelFileError(f"{wpath}: cannot read weights ({raw.strerror})")
    if not meta.get("weights_sha256"):  # every saved model has one: removed by hand
        raise ModelFileError(f"{meta_path}: no weights_sha256 entry, so the weights "
                             "cannot be checked (damaged or edited description)")
    if hashlib.sha256(raw).hexdigest() != meta["weights_sha256"]:
        raise ModelFileError(f"{wpath}: weights do not match their checksum in model.json "
                             "(file changed or damaged)")
