"""Anomalies for training when the user has few or none.

- :func:`confetti`: FCDD's "confetti noise" malformed-normal anomalies (Liznerski et al.,
  2021, Sec. 4.2): normal images with a few rotated, smoothed squares of random colour or
  brightness pasted in. The pixels changed are returned as a mask.
- :func:`scratches`: thin curved lines, the commonest defect of inspected surfaces.
- :class:`AnomalySource`: draws replacement anomalies per batch from the enabled kinds:
  labeled real anomalies (with masks when they have them), outlier exposure images, and
  synthetic noise.
"""

from __future__ import annotations

import math

import torch

from .heatmaps import gaussian_blur


def _span(y0: float, y1: float, x0: float, x1: float, h: int, w: int):
    """The pixel window ``[y0, y1] x [x0, x1]`` clipped to an ``h x w`` image, as a pair of
    slices, or None when it lies outside."""
    ys, ye = max(0, math.floor(y0)), min(h, math.ceil(y1) + 1)
    xs, xe = max(0, math.floor(x0)), min(w, math.ceil(x1) + 1)
    if ys >= ye or xs >= xe:
        return None
    return slice(ys, ye), slice(xs, xe)


def _window(cy: float, cx: float, radius: float, h: int, w: int):
    """Slices of the pixels within ``radius`` (in each axis) of ``(cy, cx)`` (never empty:
    the centre lies in the image)."""
    return _span(cy - radius, cy + radius, cx - radius, cx + radius, h, w)


def confetti(x: torch.Tensor, gen: torch.Generator, max_blobs: int = 3,
             size_range: tuple[float, float] = (0.04, 0.25)) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste 1..``max_blobs`` smoothed, rotated squares into each image.

    Args:
        x: float images ``(N, C, H, W)`` in [0, 1].
        gen: random generator (CPU).
        size_range: side of a square as a fraction of the shorter image side.

    Returns:
        ``(x_anomalous, mask)`` with mask bool ``(N, 1, H, W)``.
    """
    n, c, h, w = x.shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                            torch.arange(w, dtype=torch.float32), indexing="ij")
    masks = torch.zeros(n, 1, h, w)
    colours = torch.zeros(n, c, h, w)
    side = min(h, w)
    for i in range(n):
        k = int(torch.randint(1, max_blobs + 1, (1,), generator=gen))
        for _ in range(k):
            r = torch.rand(6, generator=gen)
            half = 0.5 * max(2.0, side * (size_range[0] + r[0] * (size_range[1] - size_range[0])))
            cy, cx = r[1] * (h - 1), r[2] * (w - 1)
            a = (r[3] - 0.5) * math.pi / 2  # rotation in [-45, 45] degrees
            if r[4] < 0.5 or c == 1:  # gray level; else a random colour
                col = torch.full((c,), float(r[5]))
            else:
                col = torch.rand(c, generator=gen)
            # the square lies within half * sqrt(2) of its centre: work on that window only
            win = _window(float(cy), float(cx), half * math.sqrt(2) + 1, h, w)
            u = (yy[win] - cy) * math.cos(a) - (xx[win] - cx) * math.sin(a)
            v = (yy[win] - cy) * math.sin(a) + (xx[win] - cx) * math.cos(a)
            blob = ((u.abs() <= half) & (v.abs() <= half)).float()
            region = x[i][(slice(None), *win)][:, blob > 0]
            if region.numel():  # make sure the blob differs from what it covers
                mean = region.mean(1)
                close = (col - mean).abs() < 0.25
                col = torch.where(close, torch.where(mean > 0.5, mean - 0.5, mean + 0.5), col)
            cw = colours[i][(slice(None), *win)]
            cw.copy_(torch.where(blob[None] > 0, col[:, None, None], cw))
            mw = masks[i, 0][win]
            mw.copy_(torch.maximum(mw, blob))
    sigma = max(0.5, side / 112)
    soft = gaussian_blur(masks[:, 0], sigma=sigma)[:, None]
    # The colour layer is blurred with the mask and divided by it, so that a blob's soft edge
    # blends its own colour into the image (blending colours, 0 outside the blobs, drew a
    # dark halo around every blob, outside its mask). Where blobs overlap, colours holds the
    # last one.
    spread = gaussian_blur(colours.reshape(n * c, h, w), sigma=sigma).reshape(n, c, h, w)
    spread = (spread / soft.clamp_min(1e-6)).clamp(0, 1)
    soft = soft.clamp(0, 1)
    out = x * (1 - soft) + spread * soft
    # the mask: every pixel the soft edge changes by more than 1/255 (a change is at most
    # ``soft``), not only the blob's core
    return out.clamp(0, 1), (soft > 1 / 255)


def scratches(x: torch.Tensor, gen: torch.Generator, max_lines: int = 3,
              length_range: tuple[float, float] = (0.1, 0.5)) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw 1..``max_lines`` thin, slightly curved lines (scratches, cracks) into each image.

    A line is 1-3 pixels wide, ``length_range`` of the longer image side long, and darker or
    brighter than what it crosses by 0.25-0.6. Returns ``(x_anomalous, mask)`` like
    :func:`confetti`.
    """
    n, c, h, w = x.shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                            torch.arange(w, dtype=torch.float32), indexing="ij")
    out = x.clone()
    masks = torch.zeros(n, 1, h, w, dtype=torch.bool)
    if h * w == 0:
        return out, masks
    for i in range(n):
        # a line that starts on the border and heads out draws nothing: draw again until the
        # image has a line (else an unchanged image would be labeled anomalous); each try
        # misses with a probability of about 1 in 250 at 28x28, so 100 tries always do
        for _ in range(100):
            _draw_lines(out[i], masks[i, 0], gen, max_lines, length_range, yy, xx)
            if masks[i].any():
                break
    return out, masks


def _draw_lines(out: torch.Tensor, mask: torch.Tensor, gen: torch.Generator, max_lines: int,
                length_range: tuple[float, float], yy: torch.Tensor, xx: torch.Tensor) -> None:
    """1..``max_lines`` scratches into one image ``out`` (C, H, W) and its ``mask``."""
    h, w = out.shape[1:]
    side = max(h, w)
    for _ in range(int(torch.randint(1, max_lines + 1, (1,), generator=gen))):
        r = torch.rand(6, generator=gen)
        length = side * (length_range[0] + r[0] * (length_range[1] - length_range[0]))
        steps = max(8, int(length))
        angle = r[1] * 2 * math.pi + torch.cumsum(
            torch.randn(steps, generator=gen) * 0.05, 0)  # gentle random bends
        py = r[2] * (h - 1) + torch.cumsum(torch.sin(angle), 0) * (length / steps)
        px = r[3] * (w - 1) + torch.cumsum(torch.cos(angle), 0) * (length / steps)
        radius = 0.5 + r[4] * 1.0
        # pixels within `radius` of the line: distances are computed on the line's
        # bounding window, and for each run of 4 points only on that run's own window
        m = float(radius) + 1
        win = _span(float(py.min()) - m, float(py.max()) + m, float(px.min()) - m,
                    float(px.max()) + m, h, w)
        if win is None:
            continue
        d2 = torch.full((win[0].stop - win[0].start, win[1].stop - win[1].start), float("inf"))
        for k in range(0, steps, 4):
            qy, qx = py[k:k + 4], px[k:k + 4]
            sub = _span(float(qy.min()) - m, float(qy.max()) + m, float(qx.min()) - m,
                        float(qx.max()) + m, h, w)
            if sub is None:
                continue
            seg = ((yy[sub] - qy[:, None, None]) ** 2 + (xx[sub] - qx[:, None, None]) ** 2)
            ds = d2[sub[0].start - win[0].start:sub[0].stop - win[0].start,
                    sub[1].start - win[1].start:sub[1].stop - win[1].start]
            torch.minimum(ds, seg.amin(0), out=ds)
        line = d2 <= radius**2
        if not line.any():
            continue
        ow = out[(slice(None), *win)]
        base = ow[:, line].mean(1)
        delta = 0.25 + 0.35 * r[5]
        sign = -1.0 if (base.mean() > 0.5) == (torch.rand(1, generator=gen) < 0.8) else 1.0
        col = base + sign * delta
        # the other way where the drawn one leaves [0, 1]: a line the colour of the
        # background changed nothing yet was masked and labeled anomalous
        col = torch.where((col < 0) | (col > 1), base - sign * delta, col).clamp(0, 1)
        ow.copy_(torch.where(line[None], col[:, None, None], ow))
        mask[win] |= line


NOISE_MODES = ("confetti", "scratches", "mixed", "none")


def synthetic(x: torch.Tensor, gen: torch.Generator, mode: str):
    """Malformed-normal anomalies of the given mode (``mixed``: each image either kind)."""
    if mode == "confetti":
        return confetti(x, gen)
    if mode == "scratches":
        return scratches(x, gen)
    pick = torch.rand(len(x), generator=gen) < 0.5
    out, mask = x.clone(), torch.zeros(len(x), 1, *x.shape[2:], dtype=torch.bool)
    for sel, fn in ((pick, confetti), (~pick, scratches)):
        idx = torch.nonzero(sel).flatten()
        if len(idx):
            out[idx], mask[idx] = fn(x[idx], gen)
    return out, mask


class AnomalySource:
    """Replacement anomalies for a batch, from the kinds the user enabled.

    Args:
        real: ``(x uint8 (M, C, H, W), masks uint8 (M, 1, H, W) or None, has_mask bool (M,))``
            labeled anomalies, or None.
        outliers: uint8 ``(K, C, H, W)`` outlier exposure images, or None.
        noise: synthetic anomaly mode (see :data:`NOISE_MODES`); ``none`` or False disables.
    """

    def __init__(self, real=None, outliers: torch.Tensor | None = None, noise="confetti"):
        if noise is True:
            noise = "confetti"
        self.mode = noise if noise else "none"
        noise = self.mode != "none"
        self.real, self.outliers, self.noise = real, outliers, noise
        self.kinds = [k for k, on in (("real", real is not None and len(real[0]) > 0),
                                      ("outliers", outliers is not None and len(outliers) > 0),
                                      ("noise", noise)) if on]

    def __bool__(self) -> bool:
        return bool(self.kinds)

    def draw(self, x_normal: torch.Tensor, gen: torch.Generator):
        """Anomalies to replace the float images ``x_normal`` (N, C, H, W).

        Returns:
            ``(x, masks float (N, 1, H, W), has_mask bool (N,))``.
        """
        n = len(x_normal)
        out = x_normal.clone()
        masks = torch.zeros(n, 1, *x_normal.shape[2:])
        has = torch.zeros(n, dtype=torch.bool)
        kind = torch.randint(0, len(self.kinds), (n,), generator=gen)
        for ki, name in enumerate(self.kinds):
            idx = torch.nonzero(kind == ki).flatten()
            if len(idx) == 0:
                continue
            if name == "noise":
                xa, m = synthetic(x_normal[idx], gen, self.mode)
                out[idx], masks[idx] = xa, m.float()
                # Confetti masks are exact, but FCDD's default treats them image-level.
                has[idx] = False
            elif name == "outliers":
                pick = torch.randint(0, len(self.outliers), (len(idx),), generator=gen)
                out[idx] = self.outliers[pick].float() / 255.0
            else:
                xr, mr, hr = self.real
                pick = torch.randint(0, len(xr), (len(idx),), generator=gen)
                out[idx] = xr[pick].float() / 255.0
                if mr is not None:
                    masks[idx] = mr[pick].float()
                    has[idx] = hr[pick]
        return out, masks, has
