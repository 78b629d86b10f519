"""Training-time augmentation shared by methods: random shifts and horizontal flips.

Images and their pixel masks move together, so labeled anomalies keep masks that line up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Names accepted by a method's ``augment`` parameter.
AUGMENTS = ("none", "shift", "shift-flip")


def shift_flip(x: torch.Tensor, masks: torch.Tensor | None, gen: torch.Generator, *,
               pad: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shift each image by up to ``pad`` pixels (reflect padding) and flip half of them.

    Args:
        x: float images ``(N, C, H, W)``.
        masks: optional ``(N, 1, H, W)`` masks transformed the same way.
        gen: CPU random generator (seeded by the training loop).
    """
    n, _, h, w = x.shape
    pad = int(min(pad, h - 1, w - 1))
    if pad > 0:
        off = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen).tolist()
        xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        x = torch.stack([xp[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(off)])
        if masks is not None:
            # reflected like the image: a defect near the edge is mirrored with its mask
            mp = F.pad(masks, (pad, pad, pad, pad), mode="reflect")
            masks = torch.stack([mp[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(off)])
    if flip:
        f = (torch.rand(n, generator=gen) < 0.5)[:, None, None, None]
        x = torch.where(f, x.flip(-1), x)
        if masks is not None:
            masks = torch.where(f, masks.flip(-1), masks)
    return x, masks


def apply(name: str, x: torch.Tensor, masks: torch.Tensor | None, gen: torch.Generator):
    """Apply the named augmentation; shifts are 1/14 of the shorter side (2 px at 28 px)."""
    if name == "none":
        return x, masks
    pad = max(1, round(min(x.shape[2:]) / 14))
    return shift_flip(x, masks, gen, pad=pad, flip=name == "shift-flip")
