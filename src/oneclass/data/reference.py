"""Reference sets: images of *other* classes that keep one-class features descriptive (DOC).

A reference spec names either a labeled multi-class source, whose class indices train a
classifier head, or unlabeled images, whose targets are the pretrained network's own
ImageNet predictions:

- ``mnist``, ``fashion-mnist``, ``cifar10``: the training split with its ten class labels;
  ``NAME:-C[,-C...]`` leaves classes out (``fashion-mnist:-7`` is every class but sneaker);
- a folder whose sub-folders are classes (``root/<class>/*.png``): labeled by sub-folder;
- a folder of images without sub-folders: unlabeled;
- ``imagenet:SPEC``: the images of any data spec (folder, ``cifar10``, ...), unlabeled.

Whether the target class leaks into a labeled reference set is checked by the method on the
images themselves (see :func:`leaked_classes`), which also catches two specs naming the
same files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import UNLABELED, FileSet, ImageSet
from .classic import ALIASES, CLASSES, all_images
from .folder import is_mvtec, list_images, skipped_dir, split_dirs
from .images import is_image_file


@dataclass
class Reference:
    """Reference images with class indices (``classes`` is None when unlabeled)."""

    images: ImageSet
    classes: np.ndarray | None
    class_names: list[str]
    spec: str

    @property
    def labeled(self) -> bool:
        return self.classes is not None

    def __len__(self) -> int:
        return len(self.images)


def _classic(name: str, arg: str, spec: str, root) -> Reference:
    name = ALIASES.get(name, name)
    images = all_images(name, "train", root)
    names = CLASSES[name]
    y = np.array([names.index(k) for k in images.kinds], np.int64)
    drop: set[int] = set()
    for part in (p.strip() for p in arg.split(",") if p.strip() and p.strip() != "all"):
        if not (part.startswith("-") and part[1:].isdecimal() and int(part[1:]) < 10):
            raise DataError(f"reference {spec}: leave classes out as {name}:-C[,-C] with C in 0..9")
        drop.add(int(part[1:]))
    keep_classes = [c for c in sorted(set(y.tolist())) if c not in drop]
    if len(keep_classes) < 2:
        raise DataError(f"reference {spec}: needs at least two classes")
    keep = np.flatnonzero(np.isin(y, keep_classes))
    remap = {c: i for i, c in enumerate(keep_classes)}
    return Reference(images.subset(keep), np.array([remap[c] for c in y[keep]], np.int64),
                     [names[c] for c in keep_classes], spec)


def _class_folders(root: Path, spec: str) -> Reference | None:
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not skipped_dir(d.name))
    if not subdirs:
        return None
    loose = sorted(f for f in root.iterdir() if f.is_file() and is_image_file(f)
                   and not f.name.startswith("."))
    if loose:  # as in an MVTec test/ folder: an image outside every class has no label
        raise DataError(f"reference {spec}: {len(loose)} image(s) beside its class folders "
                        f"(first: {loose[0]}); move them into a class folder, or give a folder "
                        "without sub-folders for an unlabeled reference")
    paths, classes = [], []
    for c, d in enumerate(subdirs):
        found = list_images(d)
        if not found:
            raise DataError(f"reference {spec}: class folder {d} holds no images")
        paths += found
        classes += [c] * len(found)
    if len(subdirs) < 2:
        raise DataError(f"reference {spec}: one class folder ({subdirs[0].name}); a labeled "
                        "reference needs at least two (or use imagenet:FOLDER for soft targets)")
    images = FileSet(paths, [UNLABELED] * len(paths), kinds=[subdirs[c].name for c in classes],
                     names=[str(p) for p in paths], description=f"{root} (reference)")
    return Reference(images, np.asarray(classes, np.int64), [d.name for d in subdirs], spec)


def load_reference(spec: str, root: str | None = None) -> Reference:
    """Read the reference set named by ``spec`` (see the module docstring)."""
    from . import load

    spec = str(spec)
    if spec.lower().startswith("imagenet:"):
        inner = spec.split(":", 1)[1]
        if not inner:
            raise DataError("reference imagenet:SPEC needs the images' spec after the colon")
        images = load(inner, "train", root=root)
        return Reference(images, None, [], spec)
    path = Path(spec)
    if path.is_dir():
        if is_mvtec(path):  # train/, test/ and ground_truth/ are not classes: its normal images
            if "train" not in split_dirs(path):
                raise DataError(f"reference {spec}: an MVTec-layout folder without train/; give "
                                "a folder of images or of class folders")
            return Reference(load(spec, "train", root=root), None, [], spec)
        ref = _class_folders(path, spec)
        if ref is not None:
            return ref
        images = load(spec, "train", root=root)
        return Reference(images, None, [], spec)
    if path.is_file():
        raise DataError(f"reference {spec}: a single file is not a reference set; give a folder")
    name, _, arg = spec.partition(":")
    if name.lower() in ("mnist", "fashion-mnist", "fashion_mnist", "fmnist", "cifar10", "cifar-10"):
        return _classic(name.lower(), arg, spec, root)
    raise DataError(f"reference {spec}: not a folder and not a known dataset (mnist, "
                    "fashion-mnist, cifar10, NAME:-C, imagenet:SPEC)")


def screen_reference(ref: Reference, on_bad: str) -> Reference:
    """``ref`` under the bad-image policy (``--on-bad-image``), its class labels kept aligned."""
    from .screen import screen

    images, skipped = screen(ref.images, on_bad, what="reference images")
    if not skipped:
        return ref
    gone = {name for name, _ in skipped}
    keep = np.array([i for i, n in enumerate(ref.images.names) if n not in gone], np.int64)
    classes = None if ref.classes is None else ref.classes[keep]
    if classes is not None:  # the rules of a labeled reference hold after the skipping too
        empty = [name for c, name in enumerate(ref.class_names) if not (classes == c).any()]
        if empty:
            raise DataError(f"reference {ref.spec}: no readable image left in class folder(s) "
                            f"{', '.join(empty)}; a labeled reference needs images in each")
    return Reference(ref.images.subset(keep), classes, ref.class_names, ref.spec)


def image_digests(x: np.ndarray) -> list[bytes]:
    """A digest per image of a uint8 array ``(N, ...)`` (equal images, equal digests)."""
    x = np.ascontiguousarray(x)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in x]


def leaked_classes(train: np.ndarray, ref: np.ndarray, classes: np.ndarray) -> dict[int, int]:
    """Reference classes that contain training images: ``{class: number of shared images}``.

    Both arrays are preprocessed the same way, so identical source images give identical rows.
    """
    seen = set(image_digests(train))
    out: dict[int, int] = {}
    for d, c in zip(image_digests(ref), classes):
        if d in seen:
            out[int(c)] = out.get(int(c), 0) + 1
    return out


def check_specs(data_spec: str, ref_spec: str) -> None:
    """Refuse, before loading anything, a classic reference that holds the target class.

    ``cifar10:3`` with reference ``cifar10`` (class 3 included) is refused; ``cifar10:-3``
    passes. The method also compares the images themselves (:func:`leaked_classes`).
    """
    from ..errors import ConfigError

    name, _, arg = str(data_spec).partition(":")
    rname, _, rarg = str(ref_spec).partition(":")
    name, rname = ALIASES.get(name.lower(), name.lower()), ALIASES.get(rname.lower(), rname.lower())
    if name != rname or name not in CLASSES:
        return
    cls = arg.partition(":")[0].strip()
    if not cls.isdecimal():
        return
    dropped = {p.strip()[1:] for p in rarg.split(",") if p.strip().startswith("-")}
    if str(int(cls)) not in {str(int(d)) for d in dropped if d.isdecimal()}:
        raise ConfigError(
            f"reference {ref_spec} contains the target class {cls} "
            f"({CLASSES[name][int(cls)]}) of {data_spec}; leave it out: {rname}:-{int(cls)}")
