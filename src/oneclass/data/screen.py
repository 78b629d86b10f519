"""What to do with images that cannot be read: the ``--on-bad-image skip|error`` policy.

Every reader raises :class:`~oneclass.errors.DataError` naming the file and what is wrong
(truncated, not an image, too many pixels, mask of the wrong size, ...). With ``error`` (the
default) that error stops the command before any result is written. With ``skip`` the set is
read once up front and the unreadable items are left out, with one warning giving their
count and the first few reasons; their names are returned so runs can record them.
Skipping costs one extra decoding pass, which is why it is not the default.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import ConfigError, DataError
from .base import ImageSet

log = logging.getLogger(__name__)

POLICIES = ("error", "skip")


def check_policy(on_bad: str) -> str:
    if on_bad not in POLICIES:
        raise ConfigError(f"on_bad_image must be one of {', '.join(POLICIES)}, got {on_bad!r}")
    return on_bad


def screen(images: ImageSet, on_bad: str = "error", *, progress: bool = False,
           what: str = "", allow_empty: bool = False) -> tuple[ImageSet, list[tuple[str, str]]]:
    """Apply the bad-image policy to ``images``.

    Args:
        images: any image set.
        on_bad: ``"error"`` returns ``images`` unchanged (a bad item raises when it is read);
            ``"skip"`` reads every item now and returns the readable ones.
        progress: show a progress bar while checking.
        what: words for the warning ("training images", ...).
        allow_empty: with ``skip``, return an empty set instead of raising when no item can
            be read.

    Returns:
        The image set to use, and ``(name, reason)`` of each left-out item.

    Raises:
        DataError: with ``skip`` when no item at all can be read (unless ``allow_empty``).
    """
    check_policy(on_bad)
    if on_bad == "error":
        return images, []
    label = what or images.description or "images"
    if len(images) == 0 and not allow_empty:
        raise DataError(f"{label}: no images")
    from tqdm.auto import tqdm

    good, bad = [], []
    for i in tqdm(range(len(images)), desc="checking images", disable=not progress, leave=False):
        try:
            images.read(i)
        except DataError as exc:
            bad.append((images.names[i], str(exc)))
        else:
            good.append(i)
    if not good and not allow_empty:
        raise DataError(f"{label}: none of the {len(images)} images can be read; first: {bad[0][1]}")
    if not bad:
        return images, []
    shown = "; ".join(reason for _, reason in bad[:3]) + ("; ..." if len(bad) > 3 else "")
    log.warning("skipped %d of %d %s that cannot be read: %s", len(bad), len(images), label, shown)
    return images.subset(np.asarray(good, dtype=np.int64)), bad
