"""Reading image and mask files with errors that name the file."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Decompression-bomb guard: refuse images with more pixels than this (about 16k x 11k).
MAX_PIXELS = 178_956_970
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def is_image_file(path: Path) -> bool:
    """True when ``path`` has an image suffix and is not hidden."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _open(path, label=None) -> Image.Image:
    path_label = path if label is None else label
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            try:
                img.load()
            except BaseException:
                img.close()  # do not leak the file handle of a corrupt or truncated image
                raise
    except FileNotFoundError:
        raise DataError(f"{path_label}: file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{path_label}: image has too many pixels (limit {MAX_PIXELS})") from None
    except UnidentifiedImageError:
        raise DataError(f"{path_label}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path_label}: corrupt or truncated image ({exc})") from None
    return img


def read_image(path, label: str | None = None) -> np.ndarray:
    """Read an image as uint8 ``(H, W, C)`` with C = 1 (grayscale) or 3 (RGB).

    ``path`` is a file path or a binary file object (an upload); ``label`` names it in errors.

    EXIF orientation is applied; alpha is dropped (composited on black); 16-bit images are
    scaled to 8 bit; palette and CMYK images are converted to RGB.
    """
    path = Path(path) if isinstance(path, (str, os.PathLike)) else path
    img = _open(path, label)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block should not make a good image unreadable
        pass
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return arr[..., None]
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return arr.astype(np.uint8)[..., None]
    if img.mode in ("1", "L"):
        return np.asarray(img.convert("L"), dtype=np.uint8)[..., None]
    if img.mode == "LA":
        arr = np.asarray(img, dtype=np.float32)
        return (arr[..., :1] * arr[..., 1:] / 255.0 + 0.5).astype(np.uint8)
    if img.mode in ("RGBA", "PA", "P"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        return (rgba[..., :3] * rgba[..., 3:] / 255.0 + 0.5).astype(np.uint8)
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{label or path}: image has no pixels")
    return arr


def read_mask(path: str | Path) -> np.ndarray:
    """Read a ground-truth mask as bool ``(H, W)``: any non-zero pixel is anomalous."""
    arr = read_image(path)
    return arr.max(axis=2) > 0


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """Convert uint8 ``(H, W, C)`` to ``channels`` (1: luminance, 3: replicate gray)."""
    c = img.shape[2]
    if c == channels:
        return img
    if channels == 1:
        w = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return (img.astype(np.float32) @ w + 0.5).astype(np.uint8)[..., None]
    if channels == 3 and c == 1:
        return np.repeat(img, 3, axis=2)
    raise DataError(f"cannot convert an image with {c} channels to {channels}")
