"""Atomic file and directory writes.

A model, checkpoint or report is written to a temporary sibling and renamed into place, so a
crash or a full disk never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import OneclassError

# mkstemp/mkdtemp create private (0600/0700) entries; give results the usual umask-based mode.
_UMASK = os.umask(0)
os.umask(_UMASK)


def _prefix(path: Path) -> str:
    """Temporary siblings are named ``.NAME.PID.*.tmp``, so a dead writer's can be found."""
    return f".{path.name}.{os.getpid()}."


#: The random part tempfile gives its names (8 characters).
_MKSTEMP = re.compile(r"[a-z0-9_]{8}")
#: Folders this process has swept: once each, since listing a folder of 100k heatmaps on
#: every write took about 20 ms a file.
_swept: set[str] = set()


def _sweep(path: Path) -> None:
    """Remove temporary files and folders in ``path``'s folder left by writers that were
    killed (kill -9); once per folder and process."""
    folder = os.path.abspath(path.parent)
    if folder in _swept:
        return
    _swept.add(folder)
    for tmp in path.parent.glob(".*.tmp"):
        parts = tmp.name[:-len(".tmp")].split(".")  # "", NAME..., PID, random
        pid = parts[-2] if len(parts) >= 4 else ""
        if not pid.isdigit() or int(pid) == os.getpid() or not _MKSTEMP.fullmatch(parts[-1]):
            continue  # not one of ours (a user's hidden file that happens to end in .tmp)
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # the writer is gone: its file can never be completed
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        except OSError:
            pass  # alive (or not ours to signal): leave it


class WriteError(OneclassError):
    """A file or directory could not be written (full disk, permissions)."""


def _explain(exc: OSError, path: Path) -> WriteError:
    kept = "the previous version was kept" if path.exists() else "nothing was written"
    if exc.errno == errno.ENOSPC:
        return WriteError(f"{path}: no space left on device; {kept}")
    return WriteError(f"{path}: cannot write ({exc.strerror or exc}); {kept}")


def _full_disk(exc: BaseException, where: Path) -> bool:
    """Whether a writer's own exception (torch.save: RuntimeError, safetensors:
    SafetensorError, neither an OSError) came from a full disk: its message, or less than
    1 MiB left where it wrote (checked before its partial file is removed)."""
    text = str(exc).lower()
    if "no space left" in text or "os error 28" in text:
        return True
    try:
        return shutil.disk_usage(where).free < (1 << 20)
    except OSError:
        return False


def _no_space(path: Path) -> WriteError:
    return _explain(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)), path)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], fsync: bool = True) -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path``.

    Args:
        path: destination file.
        write: function that writes the complete file at the path it is given.
        fsync: flush the file to disk before the rename. Without it the file is still never
            seen half-written, but may be lost on a power failure: for many derived files
            (batch heatmaps), where one fsync each would cost more than computing them.

    Returns:
        The destination path.
    """
    path = Path(path)
    try:  # an unwritable folder: named as the destination, not as a temporary sibling
        path.parent.mkdir(parents=True, exist_ok=True)
        _sweep(path)
        fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _explain(exc, path) from exc
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        if fsync:
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise _explain(exc, path) from exc
    except Exception as exc:
        full = _full_disk(exc, path.parent)
        tmp_path.unlink(missing_ok=True)
        if full:
            raise _no_space(path) from exc
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return atomic_write(path, lambda p: p.write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def json_default(obj: Any) -> Any:
    """NumPy scalars and arrays as plain JSON values (``json.dumps(default=...)``)."""
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:
        return obj.item()
    if hasattr(obj, "tolist") and hasattr(obj, "ndim"):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (NumPy values as plain ones)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False,
                                       default=json_default) + "\n")


def _remove(path: Path) -> None:
    """Delete ``path``, a directory tree or a file, if it is there (errors ignored)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def previous_dir(path: Path) -> Path:
    """Where :func:`atomic_dir` keeps the previous version of ``path`` during its swap."""
    return path.with_name(f".{path.name}.old")


def recover_dir(path: str | os.PathLike) -> bool:
    """Put back the previous version of ``path`` if a swap was killed half-way.

    The swap in :func:`atomic_dir` is two renames (``path`` -> ``.path.old``, new -> ``path``);
    a kill between them leaves no ``path`` but a complete ``.path.old``. Returns True when it
    was restored.
    """
    path = Path(path)
    old = previous_dir(path)
    if path.exists() or not old.is_dir():
        return False
    os.replace(old, path)
    return True


def atomic_dir(path: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Build a directory with ``fill(tmp_dir)`` and swap it in for ``path``.

    The old directory, if any, is kept until the new one is complete and renamed into place.
    """
    path = Path(path)
    try:  # an unwritable folder: named as the destination, not as a temporary sibling
        path.parent.mkdir(parents=True, exist_ok=True)
        recover_dir(path)
        _sweep(path)
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise _explain(exc, path) from exc
    old = previous_dir(path)
    try:
        fill(tmp)
        os.chmod(tmp, 0o777 & ~_UMASK)
        for f in tmp.rglob("*"):
            if f.is_file():  # fill may create subfolders; opening those would fail
                os.chmod(f, 0o666 & ~_UMASK)  # savers (safetensors) may create them private
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            elif f.is_dir():
                os.chmod(f, 0o777 & ~_UMASK)
        if path.exists():
            _remove(old)
            os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)
        raise _explain(exc, path) from exc
    except BaseException as exc:
        full = isinstance(exc, Exception) and _full_disk(exc, path.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)
        if full:
            raise _no_space(path) from exc
        if isinstance(exc, WriteError) and isinstance(exc.__cause__, OSError):
            # a file written inside the temporary folder failed: say what happened to path
            raise _explain(exc.__cause__, path) from exc
        raise
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines file appended to one line at a time ([] if it is missing).
    A cut-short last line (a run killed or a disk full mid-write) is left out with a warning;
    a bad line before it is an error naming the file and the line."""
    import logging

    from .errors import ConfigError

    path = Path(path)
    if not path.exists():
        return []
    lines = [x for x in path.read_text().splitlines() if x.strip()]
    out = []
    for i, x in enumerate(lines):
        try:
            rec = json.loads(x)
        except json.JSONDecodeError:
            rec = None
        if not isinstance(rec, dict):
            if i < len(lines) - 1:
                raise ConfigError(f"{path}: line {i + 1} is not a JSON record; remove it")
            logging.getLogger(__name__).warning(
                "%s: last line cut short (an interrupted run); ignored", path)
            continue
        out.append(rec)
    return out


def end_jsonl(path: str | os.PathLike) -> None:
    """Before appending to a JSON-lines file: a last line without its newline is ended (a
    complete record) or cut off (one cut short by an interrupted writer, which
    :func:`read_jsonl` leaves out), so the next line is not glued to it."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if not data or data.endswith(b"\n"):
            return
        start = data.rfind(b"\n") + 1
        try:
            complete = isinstance(json.loads(data[start:]), dict)
        except ValueError:
            complete = False
        if complete:
            fh.write(b"\n")
        else:
            fh.truncate(start)


def append_jsonl(path: str | os.PathLike, rec: dict[str, Any]) -> None:
    """Append one record as a line (after :func:`end_jsonl`), flushed to disk."""
    end_jsonl(path)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(rec) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


#: Unicode's bidirectional controls: shown as escapes, they cannot reorder a name's text
#: (``photo\u202egnp.exe`` would show as ``photoexe.png``).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                  "\u2066\u2067\u2068\u2069")


def _is_control(ch: str) -> bool:
    """C0 and C1 control characters (U+0085 ends a line for ``str.splitlines``)."""
    return ord(ch) < 32 or 127 <= ord(ch) < 160


def printable(name: str, limit: int | None = None, controls: bool = True) -> str:
    """A name from outside (a file name, an upload's name) as logs, answers and reports show
    it: control characters (``controls``: a newline would start a forged log line) and
    bidirectional controls escaped; longer than ``limit`` characters, cut with "...". Other
    characters, accents and scripts included, are kept."""
    text = "".join(f"\\x{ord(ch):02x}" if controls and _is_control(ch) else
                   f"\\u{ord(ch):04x}" if controls and ch in "\u2028\u2029" else
                   f"\\u{ord(ch):04x}" if ch in _BIDI else ch for ch in name[:limit])
    return text + ("..." if limit is not None and len(name) > limit else "")
