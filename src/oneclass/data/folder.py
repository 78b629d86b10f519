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
The names ``train``, ``test``, ``ground_truth`` and the normal type names (``good``, ``ok``,
``normal``) are matched case-insensitively (``Train/``, ``Test/OK``). Training images come
from the normal-named folders of ``train/`` (or, when it has no sub-folders holding images,
from ``train/`` itself); another folder of ``train/`` holding images, or images directly in
``train/`` beside ``train/good``, is an error: training images are normal, labeled anomalies
are given separately (``--anomalies``). Images directly in ``test/`` (not in a type folder),
one file (links resolved) under two type folders, and folders that cannot be listed are
errors, never skipped. A plain folder that holds MVTec-layout folders (the unpacked MVTec AD
root) is an error too: pass one category folder; so is a plain training folder whose own
folders are named like dataset splits (``train/`` with ``val/``, say, but no ``test/``).

Hidden folders and the metadata folders of NAS and operating systems (``@eaDir``,
``#recycle``, ``$RECYCLE.BIN``, ``__MACOSX``, ...) are never read.
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

#: Folders of the MVTec AD layout, matched case-insensitively.
SPLIT_DIRS = ("train", "test", "ground_truth")
#: Folder names that mark a dataset split when a plain training folder holds them.
_SPLIT_NAMES = (*SPLIT_DIRS, "val", "validation")

#: Metadata folders of NAS systems and operating systems (lower case): thumbnails, recycle
#: bins, snapshots, resource forks; skipped like hidden folders.
SYSTEM_DIRS = frozenset({
    "@eadir", "@tmp", "@sharebin", "#recycle", "#snapshot",  # Synology
    "@recycle", "@recently-snapshot", "@__thumb",  # QNAP
    "$recycle.bin", "system volume information",  # Windows
    "__macosx",  # macOS resource forks in zip files
    "lost+found",  # fsck's recovered files
})


def skipped_dir(name: str) -> bool:
    """True for a folder never read: hidden (``.git``) or NAS/OS metadata (``@eaDir``)."""
    return name.startswith(".") or name.lower() in SYSTEM_DIRS


def _unreadable(err: OSError):
    raise DataError(f"{err.filename}: cannot read folder ({err.strerror or err})")


def list_images(folder: Path) -> list[Path]:
    """Image files below ``folder``, sorted. Symbolic links to folders are followed, each real
    folder read once (a link back up the tree, or a second link to the same folder, adds
    nothing).

    A folder that cannot be listed is an error naming it: skipping it would silently drop,
    say, a whole defect type from a test set. Hidden folders and NAS/OS metadata folders
    (:data:`SYSTEM_DIRS`) are not read. Files of other image formats (``.gif``, ``.pgm``,
    ``.heic``, ``.dng``, ...) are left out with a warning giving their count and a few names
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
        dirnames[:] = sorted(d for d in dirnames if not skipped_dir(d)
                             and _new_below(os.path.realpath(os.path.join(dirpath, d)), seen,
                                            top))
        for f in sorted(filenames):
            if is_image_file(Path(f)):
                out.append(Path(dirpath) / f)
            elif _left_out_image(Path(f)):
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


#: Suffixes of image formats Pillow does not read here (HEIF, camera raw, JPEG XL, ...), or
#: reads only with optional plugins (AVIF, PSD): left out of folders with the same warning.
FOREIGN_SUFFIXES = frozenset({
    ".heic", ".heif", ".avif", ".jxl", ".psd", ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw",
    ".arw", ".srf", ".sr2", ".orf", ".rw2", ".raf", ".pef", ".srw", ".x3f", ".raw", ".exr",
})


def _left_out_image(path: Path) -> bool:
    """An image file of a format not read (``.gif``, ``.heic``, ...): left out, with a warning
    (not for hidden files and ``*_mask`` files)."""
    if path.name.startswith(".") or is_mask_name(path):
        return False
    return other_image_suffix(path) or path.suffix.lower() in FOREIGN_SUFFIXES


def _new_below(real: str, seen: set[str], top: str) -> bool:
    """A folder not read yet and not holding the folder being listed (a link up the tree,
    beyond its top, would read the top's siblings: other defect types, say)."""
    return real not in seen and os.path.commonpath([real, top]) != real


def split_dirs(root: Path, names=SPLIT_DIRS) -> dict[str, Path]:
    """The folders of ``root`` named ``names`` (lower case), matched case-insensitively, by
    lower-case name: ``{"train": root/"Train", ...}``. Two folders whose names differ in case
    only (``train/`` and ``Train/``) are an error naming both."""
    root = Path(root)
    try:
        entries = sorted(root.iterdir())
    except OSError:  # not listable: the exact names only (listing it reports the error)
        return {n: root / n for n in names if (root / n).is_dir()}
    found: dict[str, Path] = {}
    for d in entries:
        key = d.name.lower()
        if key not in names or not d.is_dir():
            continue
        if key in found:
            raise DataError(f"{d}: two folders named {key} apart from case, this one and "
                            f"{found[key]}; merge them into one")
        found[key] = d
    return found


def is_mvtec(root: Path) -> bool:
    """``train/`` and ``test/``, or a test set on its own: ``test/`` with ``ground_truth/``
    (any case: ``Train/``, ``Test/``)."""
    dirs = split_dirs(root)
    return "test" in dirs and ("train" in dirs or "ground_truth" in dirs)


def _subdirs(p: Path) -> list[Path]:
    return sorted(d for d in p.iterdir() if d.is_dir() and not skipped_dir(d.name))


def _train_paths(train: Path) -> tuple[list[Path], Path]:
    """The training images of an MVTec ``train/`` folder and the folder they were looked for
    in: its normal-named folders (any case), or ``train/`` itself when no folder of it holds
    images. Other folders holding images, and images directly in ``train/`` beside a
    normal-named folder, are errors: training images must all be normal."""
    normal, other = [], []
    for d in _subdirs(train):
        (normal if d.name.lower() in NORMAL_DIRS else other).append(d)
    for d in other:
        found = list_images(d)
        if found:
            raise DataError(
                f"{d}: {len(found)} image(s) in a folder of train/ that is not named "
                f"{'/'.join(NORMAL_DIRS)} (first: {found[0].relative_to(d)}); training images "
                f"must be normal, in {train / 'good'}: move normal images there, and give "
                "labeled anomalies separately (--anomalies SPEC)")
    if not normal:
        return list_images(train), train
    loose = sorted(p for p in train.iterdir() if p.is_file() and is_image_file(p))
    if loose:
        raise DataError(
            f"{train}: {len(loose)} image(s) directly in train/ beside {normal[0].name}/ "
            f"(first: {loose[0].name}); training images must be normal, in "
            f"{normal[0]}: move normal images there, and give labeled anomalies separately "
            "(--anomalies SPEC)")
    paths = [p for d in normal for p in list_images(d)]
    return paths, normal[0] if len(normal) == 1 else train


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
            key = (kind, rel[:-5] if rel.lower().endswith("_mask") else rel)
            if key in index:
                raise DataError(f"{m}: two masks for the same image, this one and {index[key]}; "
                                "keep one")
            index[key] = m
    return index


def mvtec(root: Path, split: str, masks: bool = True) -> FileSet:
    """The ``train`` or ``test`` split of an MVTec-layout folder; with ``masks=False`` its
    ``ground_truth/`` is not read (for a use that needs no masks)."""
    root = Path(root)
    dirs = split_dirs(root)
    if split == "train":
        if "train" not in dirs:
            raise DataError(f"{root / 'train'}: no such folder; this MVTec-layout folder holds "
                            "a test set only (test/ and ground_truth/)")
        paths, folder = _train_paths(dirs["train"])
        if paths:
            paths = _without_masks(dirs["train"], paths)
        if not paths:
            raise DataError(f"{folder}: no training images (expected PNG/JPEG files)")
        return FileSet(paths, [NORMAL] * len(paths), kinds=["good"] * len(paths),
                       names=[str(p.relative_to(root)) for p in paths],
                       description=f"{root} (train)")
    if "test" not in dirs:
        raise DataError(f"{root / 'test'}: no such folder; the test split of an MVTec-layout "
                        "folder is read from test/good and test/<type>")
    test = dirs["test"]
    gt = dirs.get("ground_truth") if masks else None
    masks = _mask_index(gt) if gt is not None else None
    loose = [p for p in test.iterdir() if p.is_file() and is_image_file(p)]
    if loose:
        raise DataError(f"{test}: {len(loose)} image(s) directly in test/ (first: {sorted(loose)[0].name}); "
                        "put normal images in test/good and anomalies in test/<type>")
    paths, labels, mpaths, kinds = [], [], [], []
    typed: dict[str, tuple[Path, str]] = {}  # real path -> (path, type folder) of each image
    beside: list[Path] = []  # *_mask files in type folders: masks, not test images
    for kind_dir in _subdirs(test):
        kind = kind_dir.name
        normal = kind.lower() in NORMAL_DIRS
        seen: dict[str, Path] = {}
        for p in list_images(kind_dir):
            if is_mask_name(p):
                beside.append(p)
                continue
            real = os.path.realpath(p)
            first, first_kind = typed.setdefault(real, (p, kind))
            if first_kind != kind:
                both_normal = first_kind.lower() in NORMAL_DIRS and normal
                raise DataError(
                    f"{p}: the same file as {first} (links resolved), under two type folders: "
                    + (f"it would be evaluated twice ({first_kind}/ and {kind}/)" if both_normal
                       else f"it would be evaluated as {_label_word(first_kind)} and as "
                            f"{_label_word(kind)}")
                    + "; keep it in one type folder")
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
    if beside:
        shown = ", ".join(str(p.relative_to(test)) for p in beside[:3])
        log.warning("%s: %d file%s named *_mask in its type folders left out (%s%s): masks are "
                    "not test images; they are read from ground_truth/<type>/ (move them there "
                    "to use them)", test, len(beside), "" if len(beside) == 1 else "s", shown,
                    ", ..." if len(beside) > 3 else "")
    if masks:
        (kind, rel), m = sorted(masks.items())[0]
        raise DataError(f"{m}: mask has no image (expected {test / kind / rel}.png or similar)")
    if not paths:
        raise DataError(f"{test}: no test images")
    return FileSet(paths, labels, mpaths if masks is not None else None, kinds,
                   names=[str(p.relative_to(root)) for p in paths],
                   description=f"{root} (test)")


def _label_word(kind: str) -> str:
    return f"{kind} (normal)" if kind.lower() in NORMAL_DIRS else f"{kind} (anomalous)"


def _mvtec_below(root: Path, paths: list[Path]) -> list[Path]:
    """The MVTec-layout folders strictly below ``root`` that hold some of ``paths`` (images
    listed below ``root``): a folder above a ``train/``, ``test/`` or ``ground_truth/`` on the
    way down to an image, checked once each."""
    found: list[Path] = []
    checked: set[Path] = set()
    for p in paths:
        parts = p.relative_to(root).parts[:-1]
        for k in range(1, len(parts)):
            if parts[k].lower() not in SPLIT_DIRS:
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
    ground-truth masks would be normal training images (or unlabeled ones to score). So is a
    training folder whose own folders are named like dataset splits (see
    :func:`_refuse_split_folders`). Files named ``*_mask`` are masks, not images: they are
    left out with a warning (a lone file given as ``root`` is read as it is).
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
    if root.is_dir():
        if split == "train":
            _refuse_split_folders(root, paths)
            _refuse_mixed_labels(root, paths)
        paths = _without_masks(root, paths)
    label = NORMAL if split == "train" else UNLABELED
    return FileSet(paths, [label] * len(paths), names=[str(p) for p in paths],
                   kinds=["good" if label == NORMAL else "unknown"] * len(paths),
                   description=str(root))


def is_mask_name(path: Path) -> bool:
    """A file named ``*_mask.*``: a ground-truth mask, not an image to train on or score."""
    return path.stem.lower().endswith("_mask")


def _without_masks(root: Path, paths: list[Path]) -> list[Path]:
    """``paths`` without ``*_mask`` files, with a warning giving their count and a few names.

    Left out rather than refused: a mask beside its image (``000.png``, ``000_mask.png``) is
    the usual way they end up in a plain folder, and the images themselves are fine to use;
    read as images, the masks would be normal training images (or scored ones)."""
    masks = [p for p in paths if is_mask_name(p)]
    if not masks:
        return paths
    shown = ", ".join(str(p.relative_to(root)) for p in masks[:3])
    log.warning("%s: %d file%s named *_mask left out (%s%s): masks are not images to train on "
                "or score; rename a file if it is an image", root, len(masks),
                "" if len(masks) == 1 else "s", shown, ", ..." if len(masks) > 3 else "")
    kept = [p for p in paths if not is_mask_name(p)]
    if not kept:
        raise DataError(f"{root}: no images found, only {len(masks)} file(s) named *_mask "
                        f"(first: {shown.split(', ')[0]}), which are masks, not images")
    return kept


def _holds_other_images(folder: Path, normal: list[Path], paths: list[Path]) -> bool:
    """Whether some of ``paths`` lie below ``folder`` but outside its ``normal`` folders."""
    inside = [p for p in paths if folder in p.parents]
    return any(not any(d in p.parents for d in normal) for p in inside)


def _image_folders(root: Path, paths: list[Path]) -> dict[str, Path]:
    """The folders directly below ``root`` that hold some of ``paths`` (images listed below
    it), by name, in the order of ``paths``."""
    tops: dict[str, Path] = {}
    for p in paths:
        parts = p.relative_to(root).parts
        if len(parts) > 1:
            tops.setdefault(parts[0], root / parts[0])
    return tops


def _refuse_mixed_labels(root: Path, paths: list[Path]) -> None:
    """Refuse a plain training folder whose own folders are a normal-named one (``good/``,
    ``ok/``, ``normal/``) beside others holding images (``bad/``, ``ng/``): read as one
    folder, the others' images, defects by the look of it, would be normal training images."""
    if root.name.lower() == "test" and is_mvtec(root.parent):
        return  # an MVTec test split given for training: the callers name that themselves
    tops = _image_folders(root, paths)
    normal = sorted(d for n, d in tops.items() if n.lower() in NORMAL_DIRS)
    others = sorted(d for n, d in tops.items() if n.lower() not in NORMAL_DIRS)
    if normal and others:
        raise DataError(
            f"{root}: holds {normal[0].name}/ beside {', '.join(d.name + '/' for d in others[:3])}"
            f"{', ...' if len(others) > 3 else ''}; read as one plain folder, all their images "
            f"would take one label (normal training images; or, as outliers, anomalies): pass "
            f"the normal ones, e.g. --data {normal[0]}, and give labeled anomalies separately "
            "(--anomalies SPEC)")


def _refuse_split_folders(root: Path, paths: list[Path]) -> None:
    """Refuse a plain training folder whose own folders holding images are dataset splits
    laid out for anomaly detection: named ``train``, ``test``, ``ground_truth``, ``val`` or
    ``validation`` (any case), with ``ground_truth/`` among them or a normal-named folder
    (``good``, ``ok``, ``normal``) in one (``train/good`` + ``val/crack``, say). Read as one
    folder, the defects of a validation or test split would be normal training images.

    Split folders without that sign are read as they are: plain training folders are also
    outlier and reference sets (``--outliers``, ``imagenet:DIR``), and ImageNet's
    ``train/<class>/`` + ``val/`` holds no defects; nor do photographs of trains."""
    tops: dict[str, Path] = {}
    for name, folder in _image_folders(root, paths).items():
        if name.lower() in _SPLIT_NAMES:
            tops.setdefault(name.lower(), folder)
    normal = {k: [d for d in _subdirs(f) if d.name.lower() in NORMAL_DIRS]
              for k, f in tops.items()}
    # a normal-named folder is a sign of a split laid out for anomaly detection when it is
    # not all there is: beside another split folder, or beside other images in its split
    # (a lone train/good/ holds normal images only)
    signs = [d for k in sorted(normal) for d in normal[k]
             if len(tops) > 1 or _holds_other_images(tops[k], normal[k], paths)]
    if "ground_truth" in tops:
        signs.insert(0, tops["ground_truth"])
    if not signs:
        return
    names = ", ".join(f"{d.name}/" for d in sorted(tops.values()))
    train = tops.get("train")
    if len(normal.get("train", [])) == 1:
        hint = f"pass the folder of normal training images, e.g. --data {normal['train'][0]}"
    elif train is not None:
        hint = f"pass the folder of normal training images, e.g. --data {train}"
    else:
        hint = "pass a folder of normal training images only"
    raise DataError(
        f"{root}: holds dataset split folders ({names} with {signs[0].relative_to(root)}/) "
        "but is no MVTec-layout folder (train/ and test/); read as one plain folder, all "
        "their images (the defects of a validation or test split too) would be normal "
        f"training images: {hint}, or lay the folder out as train/good/ + test/good/ + "
        "test/<type>/ (val/ and validation/ are not read: rename the one holding defects "
        "test/)")
