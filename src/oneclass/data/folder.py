"""Image folders: the MVTec AD layout, and plain folders of images.

MVTec AD layout::

    root/train/good/*.png                      normal training images
    root/test/good/*.png                       normal test images
    root/test/<type>/*.png                     anomalous test images of a defect type
    root/ground_truth/<type>/<stem>_mask.png   their pixel masks (optional as a whole)

A mask belongs to the image at the same path below its type folder, with ``_mask`` dropped
(``ground_truth/crack/a/001_mask.png`` or ``.../a/001.png`` for ``test/crack/a/001.png``).
When ``ground_truth/`` exists every anomalous test image needs its mask and every mask its
image; a missing one, or two masks for one image, is an error naming the files. Masks of
normal images (``ground_truth/good/``, shipped by some converted datasets) are ignored: normal
images have empty masks. Without ``ground_truth/`` pixel metrics are simply not computed.
A test set on its own (``test/`` and ``ground_truth/``, no ``train/``) is read the same way.
Images directly in ``test/`` (not in a type folder) and folders that cannot be listed are
errors, never skipped. A plain folder that holds MVTec-layout folders (the unpacked MVTec AD
root) is an error too: pass one category folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import DataError
from .base import ANOMALOUS, NORMAL, UNLABELED, FileSet
from .images import IMAGE_SUFFIXES, is_image_file, other_image_suffix

log = logging.getLogger(__name__)

NORMAL_DIRS = ("good", "ok", "normal")


def _unreadable(err: OSError):
    raise DataError(f"{err.filename}: cannot read folder ({err.strerror or err})")


def list_images(folder: Path) -> list[Path]:
    """Image files below ``folder``, sorted. Symbolic links to folders are followed, each real
    folder read once (a link back up the tree, or a second link to the same folder, adds
    nothing).

    A folder that cannot be listed is an error naming it: skipping it would silently drop,
    say, a whole defect type from a test set. Files of other formats Pillow reads (``.gif``,
    ``.pgm``, ``.jfif``, ...) are left out with a warning giving their count and a few names
    (hidden files and ``*_mask`` files without one).
    """
    out, other = [], []
    seen: set[str] = set()
    top = os.path.realpath(folder)
    for dirpath, dirnames, filenames in os.walk(folder, onerror=_unreadable, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # reached again through a link
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and _new_below(os.path.realpath(os.path.join(dirpath, d)), seen,
                                            top))
        for f in sorted(filenames):
            if is_image_file(Path(f)):
                out.append(Path(dirpath) / f)
            elif other_image_suffix(Path(f)) and not Path(f).stem.lower().endswith("_mask"):
                other.append(Path(dirpath) / f)
    if other:
        shown = ", ".join(str(p.relative_to(folder)) for p in other[:3])
        suffixes = ", ".join(sorted({p.suffix.lower() for p in other}))
        log.warning("%s: %d file%s with the suffix%s %s left out (%s%s): only %s are read; "
                    "convert them to PNG to use them", folder, len(other),
                    "" if len(other) == 1 else "s", "es" if "," in suffixes else "", suffixes,
                    shown, ", ..." if len(other) > 3 else "",
                    "/".join(s.lstrip(".") for s in IMAGE_SUFFIXES))
    return out


def _new_below(real: str, seen: set[str], top: str) -> bool:
    """A folder not read yet and not holding the folder being listed (a link up the tree,
    beyond its top, would read the top's siblings: other defect types, say)."""
    return real not in seen and os.path.commonpath([real, top]) != real


def is_mvtec(root: Path) -> bool:
    """``train/`` and ``test/``, or a test set on its own: ``test/`` with ``ground_truth/``."""
    return (root / "test").is_dir() and ((root / "train").is_dir()
                                          or (root / "ground_truth").is_dir())


def _subdirs(p: Path) -> list[Path]:
    return sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))


def _image_key(kind_dir: Path, path: Path) -> tuple[str, str]:
    """(type, path below the type folder without suffix): stems alone collide when test/<type>
    has sub-folders (test/crack/a/001.png and test/crack/b/001.png)."""
    return kind_dir.name, path.relative_to(kind_dir).with_suffix("").as_posix()


def _mask_index(gt: Path) -> dict[tuple[str, str], Path]:
    """Mask files of anomalous types, keyed like :func:`_image_key` with ``_mask`` dropped."""
    index: dict[tuple[str, str], Path] = {}
    for kind_dir in _subdirs(gt):
        if kind_dir.name.lower() in NORMAL_DIRS:
            continue
        for m in list_images(kind_dir):
            kind, rel = _image_key(kind_dir, m)
            key = (kind, rel[:-5] if rel.endswith("_mask") else rel)
            if key in index:
                raise DataError(f"{m}: two masks for the same image, this one and {index[key]}; "
                                "keep one")
            index[key] = m
    return index


def mvtec(root: Path, split: str) -> FileSet:
    """The ``train`` or ``test`` split of an MVTec-layout folder."""
    root = Path(root)
    if split == "train":
        if not (root / "train").is_dir():
            raise DataError(f"{root / 'train'}: no such folder; this MVTec-layout folder holds "
                            "a test set only (test/ and ground_truth/)")
        good = root / "train" / "good"
        folder = good if good.is_dir() else root / "train"
        paths = list_images(folder)
        if not paths:
            raise DataError(f"{folder}: no training images (expected PNG/JPEG files)")
        return FileSet(paths, [NORMAL] * len(paths), kinds=["good"] * len(paths),
                       names=[str(p.relative_to(root)) for p in paths],
                       description=f"{root} (train)")
    test = root / "test"
    gt = root / "ground_truth"
    masks = _mask_index(gt) if gt.is_dir() else None
    loose = [p for p in test.iterdir() if p.is_file() and is_image_file(p)]
    if loose:
        raise DataError(f"{test}: {len(loose)} image(s) directly in test/ (first: {sorted(loose)[0].name}); "
                        "put normal images in test/good and anomalies in test/<type>")
    paths, labels, mpaths, kinds = [], [], [], []
    for kind_dir in _subdirs(test):
        kind = kind_dir.name
        normal = kind.lower() in NORMAL_DIRS
        seen: dict[str, Path] = {}
        for p in list_images(kind_dir):
            key = _image_key(kind_dir, p)
            if masks is not None and not normal and key[1] in seen:
                raise DataError(f"{p}: same name as {seen[key[1]]} apart from the suffix; masks "
                                "are matched by name, so keep one of the two")
            seen[key[1]] = p
            paths.append(p)
            labels.append(NORMAL if normal else ANOMALOUS)
            kinds.append("good" if normal else kind)
            if masks is None or normal:
                mpaths.append(None)
                continue
            m = masks.pop(key, None)
            if m is None:
                raise DataError(
                    f"{p}: anomalous test image has no mask (expected "
                    f"{gt / kind / (key[1] + '_mask.png')})")
            mpaths.append(m)
    if masks:
        (kind, rel), m = sorted(masks.items())[0]
        raise DataError(f"{m}: mask has no image (expected {test / kind / rel}.png or similar)")
    if not paths:
        raise DataError(f"{test}: no test images")
    return FileSet(paths, labels, mpaths if masks is not None else None, kinds,
                   names=[str(p.relative_to(root)) for p in paths],
                   description=f"{root} (test)")


def _mvtec_below(root: Path, paths: list[Path]) -> list[Path]:
    """The MVTec-layout folders strictly below ``root`` that hold some of ``paths`` (images
    listed below ``root``): a folder above a ``train/``, ``test/`` or ``ground_truth/`` on the
    way down to an image, checked once each."""
    found: list[Path] = []
    checked: set[Path] = set()
    for p in paths:
        parts = p.relative_to(root).parts[:-1]
        for k in range(1, len(parts)):
            if parts[k] not in ("train", "test", "ground_truth"):
                continue
            folder = root.joinpath(*parts[:k])
            if folder not in checked:
                checked.add(folder)
                if is_mvtec(folder):
                    found.append(folder)
    return found


def plain(root: Path, split: str) -> FileSet:
    """All images below ``root``: normal when training, unlabeled otherwise.

    A folder holding folders in MVTec layout (the unpacked MVTec AD root, with one folder per
    category) is an error naming them: read as a plain folder, their test defects and
    ground-truth masks would be normal training images (or unlabeled ones to score).
    """
    root = Path(root)
    paths = list_images(root) if root.is_dir() else [root]
    if not paths:
        raise DataError(f"{root}: no images found (looked for "
                        f"{', '.join(s.lstrip('.') for s in sorted(IMAGE_SUFFIXES))})")
    inner = _mvtec_below(root, paths) if root.is_dir() else []
    if inner:
        shown = ", ".join(str(f.relative_to(root)) for f in inner[:3])
        one = len(inner) == 1
        raise DataError(
            f"{root}: holds {len(inner)} folder{'' if one else 's'} in MVTec AD layout "
            f"({shown}{', ...' if len(inner) > 3 else ''}); read as one plain folder, "
            f"{'its' if one else 'their'} test defects and ground-truth masks would be "
            f"{'normal training' if split == 'train' else 'unlabeled test'} images: pass "
            f"{'it' if one else 'one of them'}, e.g. --data {inner[0]}")
    label = NORMAL if split == "train" else UNLABELED
    return FileSet(paths, [label] * len(paths), names=[str(p) for p in paths],
                   kinds=["good" if label == NORMAL else "unknown"] * len(paths),
                   description=str(root))
