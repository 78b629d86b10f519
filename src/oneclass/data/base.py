"""Image sets: what every data source produces and every detector consumes.

An :class:`ImageSet` is an indexable collection of raw images (uint8 ``(H, W, C)``), labels
(0 normal, 1 anomalous, -1 unlabeled), optional ground-truth masks and names. Sources read
lazily, so a folder of any size can be scored in bounded memory; :class:`Preprocess` turns
a raw image into the network's input tensor, and is stored with every model.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from .images import (
    TURNS,
    image_mode,
    image_size,
    mask_peak,
    read_image,
    read_image_upright,
    read_mask_upright,
    to_channels,
)

log = logging.getLogger(__name__)

NORMAL, ANOMALOUS, UNLABELED = 0, 1, -1

# Modes read_image turns into one channel: a file in one of them is gray from its header alone.
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


@dataclass
class Sample:
    """One raw item of an image set."""

    image: np.ndarray  # uint8 (H, W, C)
    label: int
    mask: np.ndarray | None  # bool (H, W), same size as image, or None
    name: str
    kind: str = "good"  # defect type ("good" for normal images)


class ImageSet:
    """Base class of image sources. Subclasses implement ``__len__`` and ``read``."""

    labels: np.ndarray
    names: list[str]
    kinds: list[str]
    has_masks: bool = False
    description: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, i: int) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def subset(self, index: Sequence[int] | np.ndarray) -> Subset:
        """A view on the items at ``index`` (in that order)."""
        return Subset(self, np.asarray(index, dtype=np.int64))

    def where(self, *, label: int | None = None) -> np.ndarray:
        """Indices whose label equals ``label``."""
        return np.flatnonzero(self.labels == label)

    def mode(self, i: int) -> str | None:
        """The PIL mode of item ``i`` known without decoding it (file header), or None."""
        return None

    def size(self, i: int) -> tuple[int, int]:
        """``(height, width)`` of item ``i``, from the file header where there is one."""
        h, w = self.read(i).image.shape[:2]
        return int(h), int(w)

    def sample_sizes(self, limit: int = 256) -> list[tuple[int, int, int]]:
        """``[(index, height, width), ...]`` of at most ``limit`` images spread evenly over the
        set (one header read each)."""
        index = range(len(self))
        if len(self) > limit:
            index = sorted({int(j) for j in np.linspace(0, len(self) - 1, limit).round()})
        return [(i, *self.size(i)) for i in index]

    def typical_size(self, limit: int = 256, sizes: list | None = None
                     ) -> tuple[tuple[int, int], int]:
        """The median height and width of the images (of at most ``limit`` spread evenly over
        the set, or of ``sizes`` from :meth:`sample_sizes`), and how many different sizes those
        have. The median, not the first image's size: one thumbnail sorted first among large
        photos would set the input size."""
        hw = np.array([s[1:] for s in (sizes if sizes is not None else self.sample_sizes(limit))])
        h, w = (int(np.floor(v + 0.5)) for v in np.median(hw, axis=0))
        return (h, w), len({tuple(s) for s in hw.tolist()})

    def far_sizes(self, ref, limit: int = 256, sizes: list | None = None
                  ) -> tuple[list[tuple[int, int, int]], int]:
        """``([(index, height, width), ...], looked at)``: the images :func:`far_in_size` of
        ``ref`` among at most ``limit`` spread evenly over the set (or among ``sizes`` from
        :meth:`sample_sizes`)."""
        sizes = sizes if sizes is not None else self.sample_sizes(limit)
        return [(i, h, w) for i, h, w in sizes if far_in_size(ref, h, w)], len(sizes)

    def channels(self, limit: int = 64) -> int:
        """3 if any image is colour, else 1.

        Every image is looked at, cheaply: a file whose header gives a gray mode is gray
        without decoding it. The others (RGB files often hold gray pixels) are decoded, at
        most ``limit`` of them spread evenly over the set, so that colour images sorted after
        many gray ones are still seen.
        """
        return 1 if self.first_colour(limit) is None else 3

    def first_colour(self, limit: int = 64) -> int | None:
        """The index of the first colour image :meth:`channels` finds, or None."""
        return self.colour_survey(limit, after=0)[0]

    def colour_survey(self, limit: int = 64, after: int = 8) -> tuple[int | None, list[int], int]:
        """``(first colour image or None, gray images seen, colour images seen)``, as
        :meth:`channels` looks, and then up to ``after`` more of its sample decoded to tell a
        mixed set (gray photos with a few colour strays, or the reverse) whatever the order of
        the files. Gray: by the file header, or decoded."""
        gray, maybe = [], []
        for i in range(len(self)):
            (gray if self.mode(i) in GRAY_MODES else maybe).append(i)
        if len(maybe) > limit:
            maybe = [maybe[int(j)] for j in np.linspace(0, len(maybe) - 1, limit).round()]
        first, colour = None, 0
        for i in maybe:
            if first is not None and after <= 0:
                break
            if is_colour(self.read(i).image):
                colour += 1
                first = i if first is None else first
            else:
                gray.append(i)
            if first is not None:
                after -= 1
        return first, sorted(gray), colour


#: An image this many times off a reference size in a side or in aspect ratio is far
#: from it (size warnings of predict, eval, serve and training).
SIZE_FACTOR = 2.0


def far_in_size(ref: list[int] | tuple[int, int], h: int, w: int) -> bool:
    """Whether an ``h`` x ``w`` image is :data:`SIZE_FACTOR` off the size ``ref`` in a side
    or in aspect ratio."""
    h0, w0 = ref
    return max(h / h0, h0 / h, w / w0, w0 / w, (h / w) / (h0 / w0), (h0 / w0) / (h / w)) \
        > SIZE_FACTOR


#: Channels that differ by at most this many levels are gray: lossy WebP and JPEG files of
#: gray pictures decode with differences of 1 between their channels.
GRAY_TOLERANCE = 2


def is_colour(img: np.ndarray) -> bool:
    """Whether a decoded ``(H, W, C)`` image holds colour: three channels that differ by more
    than :data:`GRAY_TOLERANCE` somewhere (RGB files often hold gray pixels)."""
    if img.shape[2] != 3:
        return False
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    if np.array_equal(r, g) and np.array_equal(g, b):  # the common case, without copies
        return False
    return any(int(np.abs(p.astype(np.int32) - q).max()) > GRAY_TOLERANCE for p, q in ((r, g), (g, b)))


class Subset(ImageSet):
    """Items of another image set, selected by index."""

    def __init__(self, parent: ImageSet, index: np.ndarray):
        self.parent, self.index = parent, index
        self.labels = parent.labels[index]
        self.names = [parent.names[i] for i in index]
        self.kinds = [parent.kinds[i] for i in index]
        self.has_masks = parent.has_masks
        self.description = parent.description
        if hasattr(parent, "paths"):  # a subset of files is still files (as FileSet.paths)
            self.paths = [parent.paths[i] for i in index]

    def read(self, i: int) -> Sample:
        return self.parent.read(int(self.index[i]))

    def mode(self, i: int) -> str | None:
        return self.parent.mode(int(self.index[i]))

    def size(self, i: int) -> tuple[int, int]:
        return self.parent.size(int(self.index[i]))


class Concat(ImageSet):
    """Several image sets one after the other."""

    def __init__(self, parts: list[ImageSet]):
        self.parts = parts
        self.labels = np.concatenate([p.labels for p in parts])
        self.names = [n for p in parts for n in p.names]
        self.kinds = [k for p in parts for k in p.kinds]
        self.has_masks = any(p.has_masks for p in parts)
        self.description = " + ".join(p.description for p in parts)
        self._offsets = np.cumsum([0] + [len(p) for p in parts])
        if all(hasattr(p, "paths") for p in parts):  # files still (as FileSet.paths)
            self.paths = [q for p in parts for q in p.paths]

    def read(self, i: int) -> Sample:
        k = int(np.searchsorted(self._offsets, i, side="right") - 1)
        s = self.parts[k].read(i - int(self._offsets[k]))
        if s.mask is None and self.has_masks and s.label != ANOMALOUS:
            s.mask = np.zeros(s.image.shape[:2], bool)
        return s

    def mode(self, i: int) -> str | None:
        k = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return self.parts[k].mode(i - int(self._offsets[k]))

    def size(self, i: int) -> tuple[int, int]:
        k = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return self.parts[k].size(i - int(self._offsets[k]))


def same_files(ours: Sequence, theirs: Sequence) -> dict[int, Path]:
    """The files of ``theirs`` that are files of ``ours`` too, as ``{index in theirs: file of
    ours}``: the same file (links resolved) or a byte-identical copy (a copied folder).

    Contents are read only for files whose byte size occurs in both lists, each once (a
    hash, kept while the file's size and time stay the same), so uncompressed images of one
    size cost one read each, not a comparison per pair. A file that cannot be read, a link
    to nothing and an empty file are never matched (reading them for training names them).
    """
    real: dict[str, Path] = {}
    for p in ours:
        real.setdefault(os.path.realpath(p), Path(p))
    found: dict[int, Path] = {}
    rest = []
    for i, p in enumerate(theirs):
        r = os.path.realpath(p)
        q = real.get(r)
        if q is not None and _file_size(r):
            found[i] = q
        else:
            rest.append(i)
    if not rest:
        return found
    by_size: dict[int, list[Path]] = {}
    for r, p in real.items():
        size = _file_size(r)
        if size:
            by_size.setdefault(size, []).append(p)
    sized = [(i, _file_size(theirs[i])) for i in rest]
    candidates = [(i, n) for i, n in sized if n in by_size]
    digests: dict[bytes, Path] = {}
    for n in {n for _, n in candidates}:
        for p in by_size[n]:
            d = _file_digest(p)
            if d is not None:
                digests.setdefault(d, p)
    for i, _ in candidates:
        d = _file_digest(theirs[i])
        if d is not None and d in digests:
            found[i] = digests[d]
    return found


def _file_size(path) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _file_digest(path) -> bytes | None:
    """SHA-256 of a file's bytes, None when it cannot be read."""
    try:
        st = os.stat(path)
        return _digest(os.path.realpath(path), st.st_size, st.st_mtime_ns)
    except OSError:
        return None


@functools.lru_cache(maxsize=1 << 16)
def _digest(real: str, size: int, mtime_ns: int) -> bytes:
    """The hash of ``real`` as of ``size`` and ``mtime_ns`` (the key: a changed file is
    read again); read in 1 MB pieces."""
    h = hashlib.sha256()
    with open(real, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def _whole_labels(labels, description: str) -> np.ndarray:
    """``labels`` as int64, refusing values that are not whole numbers (0.9 would become 0,
    a known normal, without a word)."""
    raw = np.asarray(labels)
    if raw.dtype.kind in "OUS":  # e.g. a pandas object column, or "0" / "1" read from a file
        try:
            raw = raw.astype(np.float64)
        except (TypeError, ValueError):
            raise DataError(f"{description}: labels must be numbers, got "
                            f"{raw.ravel()[:3].tolist()}...") from None
    if raw.dtype.kind not in "biuf":
        raise DataError(f"{description}: labels must be numbers, got dtype {raw.dtype}")
    odd = raw[~(np.isfinite(raw) & (raw == np.round(raw)))] if raw.dtype.kind == "f" else []
    if len(odd):
        raise DataError(f"{description}: labels must be whole numbers (0 normal, 1 anomalous, "
                        f"-1 unlabeled), got {odd[:5].tolist()}")
    return raw.astype(np.int64)


class ArraySet(ImageSet):
    """Images held in memory as a uint8 array ``(N, H, W)`` or ``(N, H, W, C)``."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | Sequence[int] | None = None,
        masks: np.ndarray | None = None,
        names: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        description: str = "array",
    ):
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[3] not in (1, 3):
            raise DataError(
                f"{description}: images must be (N, H, W) or (N, H, W, C) with C in (1, 3), "
                f"got shape {images.shape}"
            )
        if images.dtype != np.uint8:
            raise DataError(f"{description}: images must be uint8, got {images.dtype}")
        n = len(images)
        self.images = images
        self.labels = np.zeros(n, np.int64) if labels is None else _whole_labels(labels,
                                                                                  description)
        if len(self.labels) != n:
            raise DataError(f"{description}: {n} images but {len(self.labels)} labels")
        if masks is not None and masks.shape != images.shape[:3]:
            raise DataError(
                f"{description}: masks of shape {masks.shape} do not match images {images.shape[:3]}"
            )
        self.masks = masks
        self.has_masks = masks is not None
        self.names = list(names) if names is not None else [f"{i:06d}" for i in range(n)]
        self.kinds = list(kinds) if kinds is not None else [
            "good" if lab != ANOMALOUS else "anomaly" for lab in self.labels
        ]
        self.description = description

    def read(self, i: int) -> Sample:
        mask = None if self.masks is None else self.masks[i].astype(bool)
        return Sample(self.images[i], int(self.labels[i]), mask, self.names[i], self.kinds[i])

    def mode(self, i: int) -> str | None:
        return "L" if self.images.shape[3] == 1 else None

    def size(self, i: int) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])


class FileSet(ImageSet):
    """Images read from files on demand, with optional mask files."""

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int],
        mask_paths: Sequence[Path | None] | None = None,
        kinds: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
        description: str = "",
    ):
        self.paths = [Path(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.mask_paths = list(mask_paths) if mask_paths is not None else [None] * len(self.paths)
        self.has_masks = any(m is not None for m in self.mask_paths)
        self.kinds = list(kinds) if kinds is not None else ["good"] * len(self.paths)
        self.names = list(names) if names is not None else [str(p) for p in self.paths]
        self.description = description

    #: Whether the warning about a mask turned unlike its image was given (once per set).
    _turn_warned: bool = False

    def read(self, i: int) -> Sample:
        path, mask_path = self.paths[i], self.mask_paths[i]
        if mask_path is None:
            img = read_image(path)
            normal = self.has_masks and self.labels[i] == NORMAL  # its mask is empty
            mask = np.zeros(img.shape[:2], bool) if normal else None
            return Sample(img, int(self.labels[i]), mask, self.names[i], self.kinds[i])
        img, turn = read_image_upright(path)
        mask, mask_turn = read_mask_upright(mask_path)
        if mask.shape != img.shape[:2]:
            raise DataError(_mask_size_error(path, img.shape[:2], turn, mask_path, mask.shape,
                                             mask_turn))
        # Of a non-square image turned by 90 degrees, a mask of the same size as read was
        # drawn upright (one drawn on the stored pixels has the swapped size: an error above)
        told_by_size = max(turn, mask_turn) >= 5 and img.shape[0] != img.shape[1]
        if turn != mask_turn and not told_by_size and not self._turn_warned:
            self._turn_warned = True
            _warn_turned_mask(path, turn, mask_path, mask_turn)
        if self.labels[i] == ANOMALOUS:
            check_defect_mask(mask, mask_path)
        return Sample(img, int(self.labels[i]), mask, self.names[i], self.kinds[i])

    def mode(self, i: int) -> str | None:
        return image_mode(self.paths[i])

    def size(self, i: int) -> tuple[int, int]:
        size = image_size(self.paths[i])
        return size if size is not None else super().size(i)  # fails naming the file


def _turned(what: str, path, turn: int) -> str:
    return (f"{what} {path} has EXIF orientation {turn} (read {TURNS[turn]} to stand upright)"
            if turn != 1 else f"{what} {path} has no EXIF orientation (read as stored)")


def _mask_size_error(path, size, turn: int, mask_path, mask_size, mask_turn: int) -> str:
    """The message of a mask whose size differs from its image's as read: when an EXIF
    orientation turned one of them by 90 degrees and not the other, the files may well have
    the same size on disk, so it says so."""
    (h, w), (mh, mw) = size, mask_size
    text = f"{mask_path}: mask is {mw}x{mh} but its image {path} is {w}x{h}"
    if turn == mask_turn or (mh, mw) != (w, h) or max(turn, mask_turn) < 5:
        return text
    if turn >= 5:
        return (f"{text} as read: the image was turned upright by its EXIF orientation tag "
                f"({turn}, {TURNS[turn]}; it is {h}x{w} as stored) and the mask "
                f"{'has no such tag' if mask_turn == 1 else f'has orientation {mask_turn}'}. "
                f"Masks are taken in the upright frame of their image: draw the mask on the "
                f"upright image ({w}x{h}), or give it the image's orientation tag")
    return (f"{text} as read: the mask was turned upright by its EXIF orientation tag "
            f"({mask_turn}, {TURNS[mask_turn]}; it is {mh}x{mw} as stored) and the image "
            f"{'has no such tag' if turn == 1 else f'has orientation {turn}'}: masks are "
            f"taken in the upright frame of their image; remove the mask's tag, or give it the "
            f"image's")


def _warn_turned_mask(path, turn: int, mask_path, mask_turn: int) -> None:
    """Warn (once per set) of a mask turned unlike its image. Of the same size (a square
    image, or orientations 2-4), the two cannot be told misaligned, but an image turned by
    its EXIF orientation lines up with a mask without one only if the mask was drawn on the
    upright image."""
    if turn != 1:
        mask = f"has orientation {mask_turn}" if mask_turn != 1 else "has none"
        log.warning("%s, but its mask %s %s: masks are taken in the upright frame of their "
                    "image (as the image is read), so a mask drawn on the pixels as stored does "
                    "not line up with its defect. Draw masks on the upright images, or give "
                    "each mask its image's orientation tag. Said once, for the first such mask "
                    "of this set", _turned("image", path, turn), mask_path, mask)
    else:
        log.warning("%s, but its image %s has none: the mask is turned and the image is not, "
                    "so they line up only if the mask's tag is wrong (then remove it). Said "
                    "once, for the first such mask of this set",
                    _turned("mask", mask_path, mask_turn), path)


#: A mask of an anomalous image covering more than this fraction of it is likely inverted.
FULL_MASK = 0.9

# Mask files warned about: once each per process (an image is read every epoch and pass).
_warned_masks: set[str] = set()


def check_defect_mask(mask: np.ndarray, path) -> None:
    """Warn when the mask of an anomalous image marks no pixel, or nearly all of them (an
    inverted mask: defect black on a white background?). Only a warning: some datasets have
    such masks on purpose (a defect that is the whole image, or a missing part with nothing to
    outline), but a mask read wrong would otherwise go unnoticed into the pixel metrics."""
    frac = float(mask.mean()) if mask.size else 0.0
    if 0.0 < frac <= FULL_MASK or str(path) in _warned_masks:
        return
    _warned_masks.add(str(path))
    fmt, peak = None, 0
    if frac == 0.0:
        try:
            fmt, peak = mask_peak(path)  # decodes the file again: once, for this warning
        except DataError:  # changed since it was read: the general message then
            pass
    if fmt == "JPEG" and 0 < peak < 128:
        # 0/1 masks saved as JPEG: the pixels are non-zero, but JPEG's rule is what applies
        log.warning("%s: the mask of an anomalous image marks no pixel as anomalous: JPEG masks "
                    "count a pixel from 128 on (their compression spreads faint noise around "
                    "every drawn defect) and its largest value is %d: save it as PNG, or with "
                    "255 for anomalous pixels", path, peak)
    elif frac == 0.0:
        log.warning("%s: the mask of an anomalous image marks no pixel as anomalous (0%% of the "
                    "image); masks mark anomalous pixels non-zero (white) on black: is it "
                    "empty, or drawn in a way that reads as black?", path)
    else:
        log.warning("%s: the mask of an anomalous image marks %.1f%% of the image as anomalous: "
                    "an inverted mask (defect black on a white background)? Masks mark "
                    "anomalous pixels non-zero (white) on black", path, 100.0 * frac)


def nearest_exact_index(n: int, m: int) -> np.ndarray:
    """The source index of each of ``m`` outputs resizing ``n`` with torch's "nearest-exact"
    (the same per axis in 2-D: the masks' resize, see :meth:`Preprocess.mask`)."""
    ramp = torch.arange(n, dtype=torch.float64).view(1, 1, n, 1)
    return F.interpolate(ramp, size=(m, 1), mode="nearest-exact").view(-1).long().numpy()


def lost_components(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray | None:
    """The pixels of the 8-connected components of a bool ``(H, W)`` mask that a
    "nearest-exact" resize to ``size`` loses entirely (none of their pixels is sampled), or
    None when it loses none."""
    if not mask.any():
        return None
    rows, cols = nearest_exact_index(mask.shape[0], size[0]), nearest_exact_index(mask.shape[1], size[1])
    if len(np.unique(rows)) == mask.shape[0] and len(np.unique(cols)) == mask.shape[1]:
        return None  # every pixel is sampled (no axis shrinks)
    from ..metrics import connected_components  # AUPRO's 8-connected labelling

    labels, n = connected_components(mask)
    kept = np.zeros(n + 1, bool)
    kept[labels[np.ix_(rows, cols)]] = True  # the labels under the output pixels' centres
    kept[0] = True  # background
    if kept.all():
        return None
    return ~kept[labels]


@dataclass
class Preprocess:
    """How a raw image becomes a network input; stored with the model.

    Attributes:
        size: ``(H, W)`` the image is resized to (bilinear, antialiased), or None to keep the
            size (then all images must share it).
        channels: 1 or 3; images are converted (luminance or gray replicated).
    """

    size: tuple[int, int] | None = None
    channels: int = 1
    extra: dict = field(default_factory=dict)

    def image(self, img: np.ndarray, name: str = "image") -> torch.Tensor:
        """uint8 ``(H, W, C)`` -> float ``(channels, H', W')`` in [0, 1]."""
        if img.ndim != 3 or img.shape[2] not in (1, 3):
            raise DataError(f"{name}: expected an image (H, W, 1|3), got shape {img.shape}")
        img = to_channels(img, self.channels)
        x = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)
        if self.size is not None and tuple(x.shape[1:]) != tuple(self.size):
            x = F.interpolate(
                x[None], size=tuple(self.size), mode="bilinear", align_corners=False, antialias=True
            )[0].clamp_(0.0, 1.0)
        return x

    def mask(self, mask: np.ndarray) -> torch.Tensor:
        """bool ``(H, W)`` -> float ``(1, H', W')`` in {0, 1} (nearest neighbour).

        "nearest-exact" takes the source pixel under each output pixel's centre, aligned like
        the image resize; "nearest" takes the top-left one and shifts masks by up to a pixel.
        A defect (8-connected component) none of whose pixels lies under an output pixel's
        centre (a thin scratch, a speck, shrunk) would vanish from the mask, and its pixels
        count as normal: such a component marks instead every output pixel it overlaps (the
        output pixels' areas, aligned as above). Components nearest-exact keeps are unchanged.
        """
        m = torch.from_numpy(np.array(mask, dtype=np.float32, copy=True))[None, None]
        if self.size is not None and tuple(m.shape[2:]) != tuple(self.size):
            size = tuple(self.size)
            out = F.interpolate(m, size=size, mode="nearest-exact")
            lost = lost_components(np.asarray(mask) != 0, size)
            if lost is not None:
                lost_t = torch.from_numpy(lost.astype(np.float32))[None, None]
                out = torch.maximum(out, F.adaptive_max_pool2d(lost_t, size))
            m = out
        return m[0]

    def to_json(self) -> dict:
        return {"size": list(self.size) if self.size else None, "channels": self.channels,
                **({"extra": self.extra} if self.extra else {})}

    @classmethod
    def from_json(cls, d: dict) -> Preprocess:
        size = d.get("size")
        return cls(tuple(size) if size else None, int(d["channels"]), dict(d.get("extra", {})))


class Prepared(torch.utils.data.Dataset):
    """Torch dataset over an image set: ``(x, label, mask, has_mask, index)``, and with
    ``view`` a sixth item, ``view(image)`` of the image as read (e.g. a copy to draw on, from
    the same read as ``x``)."""

    def __init__(self, images: ImageSet, pre: Preprocess,
                 view: Callable[[np.ndarray], np.ndarray] | None = None):
        self.images, self.pre, self.view = images, pre, view

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        s = self.images.read(i)
        x = self.pre.image(s.image, s.name)
        if s.mask is not None:
            m, has = self.pre.mask(s.mask), True
        else:
            m, has = torch.zeros(1, *x.shape[1:]), False
        if self.view is not None:
            return x, s.label, m, has, i, self.view(s.image)
        return x, s.label, m, has, i


def collate(batch):
    """Stack a list of ``Prepared`` items, with a clear error when sizes differ."""
    shapes = {tuple(b[0].shape) for b in batch}
    if len(shapes) > 1:
        raise DataError(
            f"images of different sizes {sorted(shapes)} in one batch: set a common size "
            "(--set size=H,W or size=N)"
        )
    x = torch.stack([b[0] for b in batch])
    y = torch.tensor([b[1] for b in batch], dtype=torch.long)
    m = torch.stack([b[2] for b in batch])
    has = torch.tensor([b[3] for b in batch], dtype=torch.bool)
    idx = torch.tensor([b[4] for b in batch], dtype=torch.long)
    if len(batch[0]) > 5:  # Prepared's views: a list (images of any size)
        return x, y, m, has, idx, [b[5] for b in batch]
    return x, y, m, has, idx


def loader(images: ImageSet, pre: Preprocess, batch_size: int = 64, workers: int = 0,
           view: Callable[[np.ndarray], np.ndarray] | None = None):
    """Ordered batches of an image set (for scoring), read lazily; with ``view`` each batch
    has a sixth item, the list of ``view(image)`` (see :class:`Prepared`)."""
    return torch.utils.data.DataLoader(
        Prepared(images, pre, view), batch_size=batch_size, shuffle=False, num_workers=workers,
        collate_fn=collate,
    )


def materialize(
    images: ImageSet, pre: Preprocess, progress: bool = False, desc: str = "loading"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Load and preprocess every image into memory.

    Returns:
        ``(x, labels, masks)``: x uint8 ``(N, C, H, W)`` (4x smaller than float), labels long
        ``(N,)``, masks uint8 ``(N, 1, H, W)`` or None when the set has no masks.
    """
    from tqdm.auto import tqdm

    xs, ms = [], []
    it = loader(images, pre, batch_size=64)
    for x, _, m, _, _ in tqdm(it, desc=desc, disable=not progress, leave=False):
        xs.append((x * 255.0).round_().to(torch.uint8))
        if images.has_masks:  # else all zeros, a tensor as large as the images for nothing
            ms.append(m.to(torch.uint8))
    if not xs:
        raise DataError(f"{images.description or 'image set'}: no images")
    x = torch.cat(xs)
    y = torch.as_tensor(images.labels, dtype=torch.long)
    masks = torch.cat(ms) if images.has_masks else None
    return x, y, masks
