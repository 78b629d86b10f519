"""Hypothesis strategies for hostile image files, shared by the test suite and
``scripts/fuzz_images.py``.

A case is ``(data, suffix)``: the bytes of a file and the image suffix it is saved under.
The bytes are a valid image of a random mode, size and format (sometimes EXIF-rotated),
then possibly damaged (truncated, bytes flipped or inserted, header overwritten); or plain
random bytes; or a PNG whose header claims a huge size (a decompression bomb).
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image

from oneclass.data.images import IMAGE_SUFFIXES, read_image
from oneclass.errors import DataError

MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr")
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A 1-bit grayscale PNG header claiming ``width`` x ``height`` pixels.

    Without ``idat`` the pixel data is a few compressed zero rows (the file is tiny and
    truncated); pass ``idat`` to give the full compressed data of a real bomb.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    data = idat if idat is not None else zlib.compress(b"\0" * 4096)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", data)
            + png_chunk(b"IEND", b""))


@st.composite
def valid_images(draw) -> bytes:
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(FORMATS))
    if draw(st.booleans()):
        h, w = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    else:  # extreme aspect ratios
        h, w = draw(st.sampled_from([(1, 700), (700, 1), (2, 333), (333, 2)]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    try:
        img = base.convert(mode) if mode not in ("I;16",) else base.convert("L").convert("I;16")
        exif = None
        if draw(st.booleans()):
            e = img.getexif()
            e[0x0112] = draw(st.integers(0, 9))  # orientation, 0 and 9 are invalid on purpose
            exif = e.tobytes()
        buf = io.BytesIO()
        img.save(buf, format=fmt, **({"exif": exif} if exif and fmt in ("PNG", "JPEG", "WEBP") else {}))
    except (OSError, ValueError, KeyError, TypeError):
        # This format cannot hold this mode: fall back to a PNG of the same pixels.
        buf = io.BytesIO()
        base.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


@st.composite
def damaged(draw, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["none", "truncate", "flip", "insert", "header", "zero-tail"]))
    b = bytearray(data)
    if kind == "truncate":
        return bytes(b[: draw(st.integers(0, max(0, len(b) - 1)))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(b) - 1))
            b[i] ^= draw(st.integers(1, 255))
        return bytes(b)
    if kind == "insert":
        i = draw(st.integers(0, len(b)))
        return bytes(b[:i]) + draw(st.binary(min_size=1, max_size=64)) + bytes(b[i:])
    if kind == "header":
        n = min(len(b), draw(st.integers(1, 32)))
        b[:n] = draw(st.binary(min_size=n, max_size=n))
        return bytes(b)
    if kind == "zero-tail":
        i = draw(st.integers(0, len(b)))
        return bytes(b[:i]) + b"\0" * (len(b) - i)
    return bytes(b)


@st.composite
def image_files(draw) -> tuple[bytes, str]:
    """``(bytes, suffix)`` of one hostile or ordinary image file."""
    source = draw(st.sampled_from(["image", "image", "image", "random", "bomb", "empty"]))
    if source == "image":
        data = draw(damaged(draw(valid_images())))
    elif source == "random":
        data = draw(st.binary(max_size=512))
    elif source == "bomb":
        side = draw(st.integers(20_000, 2**31 - 1))
        data = draw(damaged(png_bomb(side, side)))
    else:
        data = b""
    return data, draw(st.sampled_from(IMAGE_SUFFIXES))


def check_file(path: Path) -> str:
    """Read ``path``; return "ok" or the kind of error. Anything but a DataError propagates.

    A successful read must give uint8 ``(H, W, 1|3)`` with H, W > 0; an error must name the
    file.
    """
    try:
        img = read_image(path)
    except DataError as exc:
        msg = str(exc)
        assert msg.startswith(str(path)), msg
        return msg[len(str(path)) + 2:].split("(")[0].strip()
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] in (1, 3), img.shape
    assert img.shape[0] > 0 and img.shape[1] > 0
    return "ok"


def fuzz_settings(cases: int, **kwargs) -> settings:
    """Hypothesis settings for ``cases`` image files (no deadline, no example database)."""
    return settings(max_examples=cases, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck), **kwargs)


def check_case(case: tuple[bytes, str], folder: Path) -> str:
    """Write a case of :func:`image_files` to ``folder`` and :func:`check_file` it."""
    data, suffix = case
    path = folder / f"fuzz-case{suffix}"
    path.write_bytes(data)
    try:
        return check_file(path)
    finally:
        path.unlink()
