"""Reading image and mask files with errors that name the file."""

from __future__ import annotations

import logging
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ConfigError, DataError, NotAnImageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Decompression-bomb guard: refuse images with more pixels than this (about 16k x 11k), read
# from the header before any pixel is decoded. Set ONECLASS_MAX_PIXELS or call set_max_pixels.
MAX_PIXELS = 178_956_970


#: A bad ONECLASS_MAX_PIXELS, reported when the first image is read (not at import, where it
#: would break every command, even ``--version``); ``set_max_pixels`` clears it.
_ENV_ERROR: str | None = None


def set_max_pixels(limit: int) -> None:
    """Refuse images with more than ``limit`` pixels (decompression-bomb guard)."""
    global MAX_PIXELS, _ENV_ERROR
    if int(limit) < 1:
        raise DataError(f"the pixel limit must be positive, got {limit}")
    MAX_PIXELS = int(limit)
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # PIL's own check then agrees with ours
    _ENV_ERROR = None


def max_pixels_from_env() -> bool:
    """Apply ONECLASS_MAX_PIXELS when it is set; True if it was."""
    global _ENV_ERROR
    value = os.environ.get("ONECLASS_MAX_PIXELS", "").strip()
    if not value:
        return False
    try:
        set_max_pixels(int(value))
    except (ValueError, DataError):
        _ENV_ERROR = f"ONECLASS_MAX_PIXELS={value!r}: expected a positive whole number"
    return True


def check_max_pixels_env() -> None:
    """Raise the ConfigError of a malformed ONECLASS_MAX_PIXELS (unless a limit was set since)."""
    if _ENV_ERROR:
        raise ConfigError(_ENV_ERROR)


max_pixels_from_env()


def is_image_file(path: Path) -> bool:
    """True when ``path`` has an image suffix and is not hidden."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


# Formats Pillow registers suffixes for that are no images to look for in a data folder:
# Ghostscript (EPS), stubs without a decoder, video and metadata.
_NOT_LISTED = ("EPS", "BUFR", "GRIB", "HDF5", "MPEG", "WMF", "IPTC", "FLI")


def other_image_suffix(path: Path) -> bool:
    """True when ``path`` is not hidden and has a suffix of a format Pillow reads that is not
    in :data:`IMAGE_SUFFIXES` (``.gif``, ``.pgm``, ``.jfif``, ...): folders leave such files
    out, and say so."""
    if path.name.startswith(".") or path.suffix.lower() in IMAGE_SUFFIXES:
        return False
    Image.init()
    fmt = Image.registered_extensions().get(path.suffix.lower())
    return fmt is not None and fmt in Image.OPEN and fmt not in _NOT_LISTED


_BOMB = "(a decompression bomb?); raise the limit with ONECLASS_MAX_PIXELS or --max-pixels"


def _formats() -> tuple[str, ...]:
    """The formats Pillow may decode: all it knows but EPS, which it decodes by running
    Ghostscript, an external program that has no business reading uploads."""
    global _FORMATS
    if _FORMATS is None:
        Image.init()
        _FORMATS = tuple(f for f in Image.ID if f != "EPS")
    return _FORMATS


_FORMATS: tuple[str, ...] | None = None


def _too_many_pixels(path: Path, w: int, h: int) -> DataError:
    return DataError(f"{path}: image of {w}x{h} = {w * h} pixels is over the limit of {MAX_PIXELS} "
                     f"pixels {_BOMB}")


def _open(source, path) -> Image.Image:
    """Open and decode ``source`` (a file path or a binary file object) named ``path`` in errors."""
    check_max_pixels_env()  # a ConfigError: not a bad image, so --on-bad-image skip stops too
    fp = None
    try:
        if isinstance(source, Path):
            # A FIFO or device named like an image would block or never end: read regular
            # files only.
            if not stat.S_ISREG(os.stat(source).st_mode):
                raise DataError(f"{path}: not a regular file")
            # Decode from a file object, not the path: given a path, Pillow memory-maps
            # uncompressed files, and Pillow 13 lays out the pixels of a memory-mapped TIFF
            # with Orientation 5-8 (turned by 90 degrees) with the swapped size, scrambling
            # them.
            source = fp = open(source, "rb")
        try:
            with warnings.catch_warnings():
                # PIL warns from 1x its limit (ours) and refuses from 2x; the check below
                # gives the size in the message for the range in between.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(source, formats=_formats())
                try:
                    if img.width * img.height > MAX_PIXELS:  # header only: nothing decoded yet
                        raise _too_many_pixels(path, img.width, img.height)
                    # before load: counting may seek the file. An MPO is a JPEG with a
                    # preview or gain map beside the photo (phones, cameras): one picture.
                    frames = 1 if img.format == "MPO" else getattr(img, "n_frames", 1)
                    img.load()
                    if frames > 1:
                        _warn_frames(path, frames)
                except BaseException:
                    img.close()  # do not leak the file handle of a corrupt or truncated image
                    raise
        finally:
            # Pillow closes only the files it opened itself, and lets go of the file once
            # the image is loaded (its pixels, EXIF and tags are then in memory): close ours
            if fp is not None:
                fp.close()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses from twice the limit before the header is ours to read; its message
        # holds the pixel count
        n = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"of {n.group(1)} pixels " if n else ""
        raise DataError(f"{path}: image {size}is over the limit of {MAX_PIXELS} pixels "
                        f"{_BOMB}") from None
    except UnidentifiedImageError:
        if _empty_file(source):
            raise NotAnImageError(f"{path}: empty file (0 bytes), not an image") from None
        raise NotAnImageError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except OSError as exc:
        if exc.errno is not None:  # the file system's error (symlink loop, permissions), not PIL's
            raise DataError(f"{path}: cannot read ({exc.strerror})") from None
        raise NotAnImageError(f"{path}: corrupt or truncated image ({exc})") from None
    except MemoryError:
        raise DataError(f"{path}: not enough memory to decode this image") from None
    except Exception as exc:  # decoders raise struct.error, IndexError, ... on hostile input
        raise NotAnImageError(f"{path}: corrupt image ({type(exc).__name__}: {exc})") from None
    return img


def _empty_file(source) -> bool:
    """Whether ``source`` (a path or a binary file object) holds no bytes."""
    try:
        if isinstance(source, (str, Path)):
            return os.path.getsize(source) == 0
        if getattr(source, "closed", False):  # a file we opened and closed: its path
            return os.path.getsize(source.name) == 0
        return source.seek(0, os.SEEK_END) == 0
    except (OSError, ValueError, AttributeError, TypeError):
        return False


_warned_frames: set[str] = set()


def _warn_frames(path, n: int) -> None:
    """A multi-page TIFF or an animated PNG/GIF/WebP: only its first frame is read (once per
    file)."""
    if str(path) not in _warned_frames and len(_warned_frames) < 10_000:  # a service's uploads
        _warned_frames.add(str(path))
        log.warning("%s: holds %d frames (pages); only the first is read: save each frame as "
                    "an image of its own to use the others", path, n)


def read_image(path, label: str | None = None) -> np.ndarray:
    """Read an image as uint8 ``(H, W, C)`` with C = 1 (grayscale) or 3 (RGB).

    ``path`` is a file path or a binary file object (an upload); ``label`` names it in errors.

    EXIF orientation is applied; alpha, and the transparent colour of a PNG without alpha, is
    composited on black; 16- and 32-bit integer images are scaled to 8 bit with one scale for
    the mode, 16 bit (values outside [0, 65535] are an error; values all below 4096, 12-bit
    data, get a warning), and 16-bit MinIsWhite TIFFs are inverted as Pillow inverts 8-bit
    ones; float images are read on the scale [0, 1] when all their values lie in it, else
    [0, 255] (other values are an error); palette and CMYK images are converted to RGB.
    """
    return _decode(path, label, _to_array)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a ground-truth mask as bool ``(H, W)``: any non-zero pixel is anomalous.

    JPEG masks are the exception: their compression spreads faint noise around every drawn
    defect, so a pixel of a JPEG mask is anomalous from half-scale (128) on.

    The decoded values are tested as they are, not after scaling to 8 bit: a 16-bit label
    mask holding 1, 2, ... would otherwise read as empty. Transparent pixels are not anomalous;
    a mask of one colour everywhere with an alpha channel that varies (an opaque black defect
    on a transparent background) is its alpha channel: non-transparent pixels are anomalous.
    """
    return _decode(path, None, _mask_array)


def read_image_upright(path) -> tuple[np.ndarray, int]:
    """:func:`read_image`, and the EXIF orientation (2-8) that turned it upright as it was
    read, or 1 when it was kept as stored (no tag, tag 1, or an unreadable EXIF block)."""
    seen: dict = {}
    arr = _decode(path, None, lambda img, name: _to_array(img, name, seen))
    return arr, seen.get("orientation", 1)


def read_mask_upright(path) -> tuple[np.ndarray, int]:
    """:func:`read_mask`, and the EXIF orientation that turned the mask (as
    :func:`read_image_upright`)."""
    seen: dict = {}
    arr = _decode(path, None, lambda img, name: _mask_array(img, name, seen))
    return arr, seen.get("orientation", 1)


#: What each EXIF orientation does to turn the stored pixels upright, for messages.
TURNS = {2: "mirrored", 3: "turned by 180 degrees", 4: "flipped upside down",
         5: "mirrored and turned", 6: "turned by 90 degrees clockwise", 7: "mirrored and turned",
         8: "turned by 90 degrees counter-clockwise"}


def mask_peak(path) -> tuple[str | None, int]:
    """The format of a mask file and the largest value of its colour channels (alpha left out,
    on the 8-bit scale for 8-bit files), for the message about a mask that reads as empty.
    Decodes the file again: only for that message, once per file."""
    source = Path(path) if isinstance(path, (str, os.PathLike)) else path
    img = _open(source, path)
    try:
        fmt = img.format
        if img.mode not in _RAW_MASK_MODES:
            img = img.convert("RGBA" if img.mode in ("P", "PA") else "RGB")
        arr = np.asarray(img)
        arr = arr[..., None] if arr.ndim == 2 else arr
        bands = img.getbands()
        if "A" in bands:
            arr = np.delete(arr, bands.index("A"), axis=2)
        arr = np.nan_to_num(arr, nan=0.0) if arr.dtype.kind == "f" else arr
        return fmt, int(arr.max()) if arr.size else 0
    finally:
        img.close()


def _decode(path, label, convert) -> np.ndarray:
    """Open ``path`` and turn it into an array with ``convert``; every failure names the file."""
    source = Path(path) if isinstance(path, (str, os.PathLike)) else path
    path = label if label is not None else source
    img = _open(source, path)
    try:
        arr = convert(img, path)  # the name is for warnings: errors are prefixed with it here
    except DataError as exc:  # the converters do not name the file in their errors
        raise DataError(f"{path}: {exc}") from None
    except MemoryError:
        raise DataError(f"{path}: not enough memory to convert this image") from None
    except Exception as exc:  # an exotic mode PIL cannot convert
        raise DataError(f"{path}: cannot convert an image of mode {img.mode} ({exc})") from None
    finally:
        img.close()
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{path}: image has no pixels")
    return arr


def _upright(img: Image.Image, seen: dict | None = None) -> Image.Image:
    """The image turned upright by its EXIF orientation; the orientation applied (2-8, or 1
    when none was) goes to ``seen["orientation"]`` when ``seen`` is given."""
    try:
        orientation = img.getexif().get(0x0112, 1)
        valid = isinstance(orientation, int) and orientation in TURNS
        # only a turn is done: exif_transpose copies an upright image too (576 MB of a
        # 12000x12000 RGB photo for nothing)
        turned = ImageOps.exif_transpose(img) if valid and orientation != 1 else img
    except Exception:  # a broken EXIF block should not make a good image unreadable
        return img
    if seen is not None:
        seen["orientation"] = orientation if valid else 1
    return turned


_KEYED = ("1", "L", "I", "I;16", "I;16B", "I;16L", "RGB")  # modes a tRNS colour key applies to


def _transparent(img: Image.Image) -> np.ndarray | None:
    """Pixels hidden by a PNG tRNS colour key (``info["transparency"]`` without an alpha
    channel), or None. Palette images are left to ``convert("RGBA")``, which applies it."""
    key = img.info.get("transparency")
    if key is None or img.mode not in _KEYED or isinstance(key, bytes):
        return None
    if img.mode == "1":
        arr, key = np.asarray(img.convert("L")), 255 if key else 0
    else:
        arr = np.asarray(img)
    key = np.asarray(key)
    if arr.ndim == 2 and key.ndim == 0:
        return arr == key
    if arr.ndim == 3 and key.shape == arr.shape[2:]:
        return np.all(arr == key, axis=2)
    return None  # a malformed key: ignore it rather than refuse the image


_WORDS = ("I;16", "I;16B", "I;16L")  # 16-bit modes


def _min_is_white(img: Image.Image) -> bool:
    """A 16-bit TIFF whose PhotometricInterpretation (tag 262) is 0, MinIsWhite: 0 is white.

    Pillow inverts 1- to 8-bit MinIsWhite TIFFs as it reads them but not 16-bit ones, which
    would come out as negatives of the 8-bit ones; the converters invert those. Asked before
    ``_upright``: a turned copy has no TIFF tags."""
    tags = getattr(img, "tag_v2", None)
    return img.mode in _WORDS and tags is not None and tags.get(262) == 0


def _to_array(img: Image.Image, path=None, seen: dict | None = None) -> np.ndarray:
    white = _min_is_white(img)
    img = _upright(img, seen)
    arr = _colours(img, path, white)
    hidden = _transparent(img)
    if hidden is not None:  # as an alpha of 0 or 255, composited on black like RGBA below
        arr = np.where(hidden[..., None], np.uint8(0), arr)
    return arr


#: 16-bit data whose values all stay below this is 12-bit (or fewer) camera data, say.
FEW_BITS = 4096

# Whether the warning about such data was given: once per process (it names the first file).
_few_bits_warned = False


def _colours(img: Image.Image, path=None, min_is_white: bool = False) -> np.ndarray:
    if img.mode in (*_WORDS, "I"):
        # One scale for the mode, 16 bit (what 32-bit "I" images hold in practice: TIFF, and
        # 16-bit PNG in older Pillow). A scale chosen from each image's own maximum made
        # brightness non-monotonic across images (200 -> 200 but 300 -> 1).
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo < 0 or hi > 65535:
            # Clipped, a signed image lost its negative half and a 32-bit one saturated.
            raise DataError(f"integer image with values in [{lo:.0f}, {hi:.0f}]; 16- and 32-bit "
                            "integer images are read on the 16-bit scale [0, 65535]: rescale "
                            "it into that range (a signed image: shift it) or save it as "
                            "8 or 16 bit unsigned")
        if 0 < hi < FEW_BITS:
            _warn_few_bits(path, hi, 16 if img.mode in _WORDS else 32)
        if not arr.flags.writeable:
            arr = arr.copy()
        # in place, the same operations as clip(arr / 65535 * 255 + 0.5): no temporaries of
        # 8 bytes a pixel (a 10000x10000 16-bit image took 3 GB)
        if min_is_white:
            np.subtract(65535.0, arr, out=arr)
        np.divide(arr, 65535.0, out=arr)
        np.multiply(arr, 255.0, out=arr)
        np.add(arr, 0.5, out=arr)
        np.clip(arr, 0, 255, out=arr)
        return arr.astype(np.uint8)[..., None]
    if img.mode == "F":
        # One scale for all images, never each image's own range (that made two images that
        # differ only in brightness equal): [0, 1] when every value lies in it, else [0, 255].
        arr = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(arr)  # NaN and infinities become black
        lo, hi = (float(arr[finite].min()), float(arr[finite].max())) if finite.any() else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise DataError(f"float image with values in [{lo:g}, {hi:g}]; float images are read "
                            "on the scale [0, 1] or [0, 255]: rescale it or save it as 8 or 16 bit")
        scale = 255.0 if hi <= 1.0 else 1.0
        arr = np.where(finite, arr * scale, 0.0)
        return np.clip(arr + 0.5, 0, 255).astype(np.uint8)[..., None]
    if img.mode in ("1", "L"):  # convert copies even an image already in the mode
        return np.asarray(img if img.mode == "L" else img.convert("L"), dtype=np.uint8)[..., None]
    if img.mode == "LA":
        arr = np.asarray(img, dtype=np.float32)
        return (arr[..., :1] * arr[..., 1:] / 255.0 + 0.5).astype(np.uint8)
    if img.mode in ("RGBA", "PA", "P"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        return (rgba[..., :3] * rgba[..., 3:] / 255.0 + 0.5).astype(np.uint8)
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)


def _warn_few_bits(path, hi: float, bits: int) -> None:
    """Warn, once per process, of an image whose values all stay below :data:`FEW_BITS`:
    rescaling each image to its own range would make brightness differ from image to image
    (see ``_colours``), so it is read on the 16-bit scale and only a few grey levels remain."""
    global _few_bits_warned
    if _few_bits_warned:
        return
    _few_bits_warned = True
    levels = int(hi / 65535.0 * 255.0 + 0.5) + 1
    log.warning("%s: %d-bit image whose values all lie below %d (at most %d): 12-bit camera "
                "data, or fewer bits, in a %d-bit file? Integer images are read on the 16-bit "
                "scale, so only %d grey level%s survive the conversion to 8 bit. Rescale the "
                "files to the 16-bit range [0, 65535] (12-bit data: multiply by 16). Said "
                "once, for the first such file", path if path is not None else "image", bits,
                FEW_BITS, int(hi), bits, levels, "" if levels == 1 else "s")


# Modes whose decoded values are tested as they are; others are converted first (palette
# indices to their colours, and CMYK, YCbCr, ... to RGB, where black is zero).
_RAW_MASK_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "RGB", "RGBA")


def _mask_array(img: Image.Image, path=None, seen: dict | None = None) -> np.ndarray:
    lossy = img.format == "JPEG"  # compression noise around a drawn defect is not anomalous
    white = _min_is_white(img)
    img = _upright(img, seen)
    hidden = _transparent(img)
    if img.mode not in _RAW_MASK_MODES:
        img = img.convert("RGBA" if img.mode in ("P", "PA") else "RGB")
    arr = np.asarray(img)
    arr = arr[..., None] if arr.ndim == 2 else arr
    if white:  # as read_image, and as Pillow reads 8-bit MinIsWhite masks: 0 is white
        arr = np.uint16(65535) - arr.astype(np.uint16)
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr, nan=0.0)  # as read_image: NaN is black
    bands = img.getbands()
    alpha = bands.index("A") if "A" in bands else None
    colour = np.delete(arr, alpha, axis=2) if alpha is not None else arr
    on = np.any(colour >= 128 if lossy else colour != 0, axis=2)
    if alpha is not None:
        opaque = arr[..., alpha] != 0
        flat = colour.reshape(-1, colour.shape[2])
        if flat.size and (flat == flat[0]).all() and opaque.any() and not opaque.all():
            # One colour everywhere (an opaque black defect on a transparent background, say):
            # the colour tells nothing apart, the alpha channel alone is the mask
            on = opaque
        else:
            on &= opaque
    if hidden is not None:
        on &= ~hidden
    return on


def _header(path: Path) -> tuple[str, tuple[int, int]] | None:
    """The PIL mode and the ``(height, width)`` :func:`read_image` returns (EXIF orientation
    5-8 swaps the sides) of an image file, from its header (nothing decoded); None when the
    file cannot be opened (it then fails with a clear error when it is read)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                try:  # a PNG's EXIF may follow its pixels: Pillow would decode them to find it
                    exif = img.getexif() if img.format != "PNG" or "exif" in img.info else {}
                    turned = exif.get(0x0112) in (5, 6, 7, 8)
                except Exception:  # a broken EXIF block: read_image keeps the image as stored
                    turned = False
                return img.mode, ((w, h) if turned else (h, w))
    except Exception:
        return None


def image_mode(path: Path) -> str | None:
    """The PIL mode of an image file from its header, or None (see :func:`_header`)."""
    head = _header(path)
    return head[0] if head else None


def image_size(path: Path) -> tuple[int, int] | None:
    """``(height, width)`` of an image file as read, from its header, or None."""
    head = _header(path)
    return head[1] if head else None


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """Convert uint8 ``(H, W, C)`` to ``channels`` (1: luminance, 3: replicate gray)."""
    c = img.shape[2]
    if c == channels:
        return img
    if channels == 1:
        w = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        out = np.empty((*img.shape[:2], 1), np.uint8)
        step = max(1, (1 << 22) // max(1, img.shape[1]))  # rows of ~4 Mpx: bounded float copies
        for r in range(0, img.shape[0], step):
            out[r:r + step, :, 0] = img[r:r + step].astype(np.float32) @ w + 0.5
        return out
    if channels == 3 and c == 1:
        return np.repeat(img, 3, axis=2)
    raise DataError(f"cannot convert an image with {c} channels to {channels}")
