"""Behaviour tests of the atomic writes (oneclass.io)."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from oneclass import io as oio
from oneclass.errors import OneclassError


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------- files


def test_write_json_and_text_content(tmp_path):
    obj = {"auroc": 0.75, "names": ["a", "ü"], "nested": {"k": [1, 2]}, "none": None}
    out = oio.write_json(tmp_path / "sub" / "dir" / "m.json", obj)  # parents are created
    assert out == tmp_path / "sub" / "dir" / "m.json"
    text = out.read_text(encoding="utf-8")
    assert json.loads(text) == obj and text.endswith("\n")
    oio.write_text(tmp_path / "t.txt", "héllo\nwörld")
    assert (tmp_path / "t.txt").read_bytes() == "héllo\nwörld".encode()
    oio.write_bytes(tmp_path / "b.bin", b"\x00\xff")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert _entries(tmp_path) == ["b.bin", "sub", "t.txt"]  # no temporary files left


def test_overwrite_replaces_content(tmp_path):
    p = tmp_path / "r.txt"
    oio.write_text(p, "a much longer first version of the file\n")
    oio.write_text(p, "short\n")
    assert p.read_text() == "short\n"
    assert _entries(tmp_path) == ["r.txt"]


def test_written_files_follow_the_umask(tmp_path):
    p = oio.write_text(tmp_path / "r.txt", "x")
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~_current_umask()


def test_failure_midway_keeps_the_previous_file(tmp_path):
    p = oio.write_json(tmp_path / "m.json", {"v": 1})

    def half_then_crash(tmp: Path) -> None:
        tmp.write_text('{"v": 2, "trunc')
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError, match="crash while writing"):
        oio.atomic_write(p, half_then_crash)
    assert json.loads(p.read_text()) == {"v": 1}
    assert _entries(tmp_path) == ["m.json"]


def test_interrupt_keeps_the_previous_file(tmp_path):
    p = oio.write_text(tmp_path / "r.txt", "old")

    def interrupted(tmp: Path) -> None:
        tmp.write_text("ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        oio.atomic_write(p, interrupted)
    assert p.read_text() == "old"
    assert _entries(tmp_path) == ["r.txt"]


def test_unserialisable_json_keeps_the_previous_file(tmp_path):
    p = oio.write_json(tmp_path / "m.json", {"v": 1})
    with pytest.raises(ValueError):
        oio.write_json(p, {"v": float("nan")})  # NaN is not valid JSON
    with pytest.raises(TypeError):
        oio.write_json(p, {"v": object()})
    assert json.loads(p.read_text()) == {"v": 1}
    assert _entries(tmp_path) == ["m.json"]


def test_disk_full_while_writing_is_explained(tmp_path, monkeypatch):
    p = oio.write_json(tmp_path / "m.json", {"v": 1})
    real_write_bytes = Path.write_bytes

    def partial_then_full(self: Path, data: bytes) -> int:
        real_write_bytes(self, data[: len(data) // 2])
        _enospc()

    monkeypatch.setattr(Path, "write_bytes", partial_then_full)
    with pytest.raises(OneclassError) as e:
        oio.write_json(p, {"v": 2, "more": list(range(100))})
    monkeypatch.undo()
    msg = str(e.value)
    assert "no space" in msg.lower() and str(p) in msg
    assert isinstance(e.value.__cause__, OSError) and e.value.__cause__.errno == errno.ENOSPC
    assert json.loads(p.read_text()) == {"v": 1}
    assert _entries(tmp_path) == ["m.json"]


def test_disk_full_on_fsync_is_explained(tmp_path, monkeypatch):
    p = oio.write_text(tmp_path / "r.txt", "old")
    monkeypatch.setattr(oio.os, "fsync", _enospc)
    with pytest.raises(OneclassError, match="no space"):
        oio.write_text(p, "new")
    monkeypatch.undo()
    assert p.read_text() == "old"
    assert _entries(tmp_path) == ["r.txt"]


def test_other_os_errors_are_explained(tmp_path):
    def denied(_tmp: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(OneclassError, match="cannot write") as e:
        oio.atomic_write(tmp_path / "x.bin", denied)
    assert "Permission denied" in str(e.value) and "x.bin" in str(e.value)
    assert _entries(tmp_path) == []


# ------------------------------------------------------------------------ directories


def _fill_with(files: dict[str, str]):
    def fill(tmp: Path) -> None:
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)

    return fill


def test_atomic_dir_creates_and_replaces(tmp_path):
    model = tmp_path / "model"
    assert oio.atomic_dir(model, _fill_with({"a.txt": "1", "b.txt": "2"})) == model
    assert _entries(model) == ["a.txt", "b.txt"]
    oio.atomic_dir(model, _fill_with({"b.txt": "new", "c.txt": "3"}))
    assert _entries(model) == ["b.txt", "c.txt"]  # a.txt of the old version is gone
    assert (model / "b.txt").read_text() == "new"
    assert _entries(tmp_path) == ["model"]  # no temporary or .old folder left
    assert stat.S_IMODE(model.stat().st_mode) == 0o777 & ~_current_umask()


def test_atomic_dir_with_subfolders(tmp_path):
    model = tmp_path / "model"
    oio.atomic_dir(model, _fill_with({"model.json": "{}", "extra/w.bin": "w"}))
    assert (model / "extra" / "w.bin").read_text() == "w"
    assert _entries(tmp_path) == ["model"]


def test_atomic_dir_failure_in_fill_keeps_the_old_directory(tmp_path):
    model = tmp_path / "model"
    oio.atomic_dir(model, _fill_with({"a.txt": "old"}))

    def crash(tmp: Path) -> None:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        oio.atomic_dir(model, crash)
    assert _entries(model) == ["a.txt"] and (model / "a.txt").read_text() == "old"
    assert _entries(tmp_path) == ["model"]


def test_atomic_dir_disk_full_keeps_the_old_directory(tmp_path):
    model = tmp_path / "model"
    oio.atomic_dir(model, _fill_with({"a.txt": "old"}))

    def full(tmp: Path) -> None:
        (tmp / "a.txt").write_text("half")
        _enospc()

    with pytest.raises(OneclassError, match="no space"):
        oio.atomic_dir(model, full)
    assert (model / "a.txt").read_text() == "old"
    assert _entries(tmp_path) == ["model"]


def test_atomic_dir_failure_without_old_directory_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        oio.atomic_dir(tmp_path / "model", lambda tmp: (_ for _ in ()).throw(RuntimeError()))
    assert _entries(tmp_path) == []


def test_atomic_dir_failed_swap_restores_the_old_directory(tmp_path, monkeypatch):
    model = tmp_path / "model"
    oio.atomic_dir(model, _fill_with({"a.txt": "old"}))
    real_replace = os.replace

    def replace(src, dst):
        if str(src).endswith(".tmp"):  # moving the new folder into place fails
            _enospc()
        return real_replace(src, dst)

    monkeypatch.setattr(oio.os, "replace", replace)
    with pytest.raises(OneclassError, match="no space"):
        oio.atomic_dir(model, _fill_with({"a.txt": "new"}))
    monkeypatch.undo()
    assert (model / "a.txt").read_text() == "old"
    assert _entries(tmp_path) == ["model"]


def test_a_directory_is_flushed_file_by_file_before_it_is_swapped_in(tmp_path, monkeypatch):
    """Every file ``fill`` writes, in subfolders too, reaches the disk before the rename; a
    full disk at that point keeps the old directory and leaves nothing behind."""
    target = tmp_path / "model"
    oio.atomic_dir(target, lambda d: (d / "old.txt").write_text("old"))
    synced = []
    real = os.fsync

    def record(fd):
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        return real(fd)

    def fill(d: Path) -> None:
        (d / "a.json").write_text("{}")
        (d / "sub").mkdir()
        (d / "sub" / "b.bin").write_bytes(b"\0" * 10)

    monkeypatch.setattr(oio.os, "fsync", record)
    oio.atomic_dir(target, fill)
    assert {"a.json", "b.bin"} <= set(synced)
    monkeypatch.setattr(oio.os, "fsync", _enospc)
    with pytest.raises(OneclassError, match="no space"):
        oio.atomic_dir(target, lambda d: (d / "new.txt").write_text("new"))
    monkeypatch.undo()
    assert sorted(p.name for p in target.iterdir()) == ["a.json", "sub"]
    assert _entries(tmp_path) == ["model"]
