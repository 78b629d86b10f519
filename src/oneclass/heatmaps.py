"""Heatmaps: Gaussian smoothing, gradient maps for vector-output methods, normalisation.

Methods whose network ends in a vector (Deep SVDD, Deep SAD, HSC, DOC) explain a score by
its gradient with respect to the input pixels (as fcdd does for such baselines): pixels
whose change moves the score most are where the network looks. The raw gradient is noisy,
so its absolute value, summed over channels, is smoothed with a Gaussian.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, truncate: float = 3.0) -> torch.Tensor:
    """A normalised 1-D Gaussian of standard deviation ``sigma`` pixels."""
    radius = max(1, int(math.ceil(truncate * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur maps ``(N, H, W)`` with a separable Gaussian (reflect padding)."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma).to(maps)
    r = (len(k) - 1) // 2
    x = maps[:, None]
    pad_h = min(r, x.shape[2] - 1)
    pad_w = min(r, x.shape[3] - 1)
    x = F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect" if pad_w > 0 else "replicate")
    # a side no longer than the kernel's radius cannot be reflect-padded by the radius: the
    # kernel is cut to what fits and normalised again, so a constant map stays constant
    # (the full kernel is used as it is: dividing it by its sum again would move results in
    # the last bits)
    kw = _cut(k, pad_w)
    x = F.conv2d(x, kw.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, pad_h, pad_h), mode="reflect" if pad_h > 0 else "replicate")
    kh = _cut(k, pad_h)
    x = F.conv2d(x, kh.view(1, 1, -1, 1))
    return x[:, 0]


def _cut(k: torch.Tensor, pad: int) -> torch.Tensor:
    """The middle ``2 pad + 1`` taps of the kernel ``k``, normalised again if cut."""
    r = (len(k) - 1) // 2
    if pad >= r:
        return k
    k = k[r - pad:r + pad + 1]
    return k / k.sum()


def default_sigma(h: int, w: int) -> float:
    """Smoothing for gradient maps: about 1/32 of the shorter side, at least 1 pixel."""
    return max(1.0, min(h, w) / 32.0)


#: ``export --check``'s tolerance for the gradient maps of the LeNet methods (Deep SVDD, Deep
#: SAD, HSC): the map jumps where float rounding flips a leaky ReLU or a max pool (measured:
#: an input change of 1e-7 moved one or two of 16 maps by 0.3-3.3 % of their largest value,
#: torch alone); onnxruntime rounds otherwise, so maps are held to 5 % (scores to the default
#: 1e-4): it catches a broken graph, not rounding.
LENET_MAP_PARITY_TOL = 5e-2


def gradient_map(score_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 sigma: float | None = None) -> torch.Tensor:
    """``|d score / d x|`` summed over channels and Gaussian-smoothed: ``(N, H, W)``.

    Each image's map depends only on that image (the score of one image does not depend on
    the others in eval mode), so one backward pass of the summed scores gives all maps.
    """
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        scores = score_fn(xg)
        (grad,) = torch.autograd.grad(scores.sum(), xg)
    g = grad.abs().sum(dim=1)
    s = default_sigma(*g.shape[1:]) if sigma is None else sigma
    return gaussian_blur(g, s)


def receptive_upsample_matrix(n_out: int, n_in: int, r: int, j: int, s: float,
                              sigma: float) -> torch.Tensor:
    """``(n_out, n_in)`` weights: a Gaussian (std ``sigma``) over each output unit's field.

    Row ``i`` holds ``exp(-(y - c_i)^2 / (2 sigma^2))`` for input coordinates ``y`` within the
    receptive field (extent ``r``) centred at ``c_i = s + i * j``, and 0 outside it.
    """
    y = torch.arange(n_in, dtype=torch.float32)
    c = s + j * torch.arange(n_out, dtype=torch.float32)
    d = y[None, :] - c[:, None]
    w = torch.exp(-0.5 * (d / sigma) ** 2)
    return w * (d.abs() <= r / 2)


def receptive_upsample(maps: torch.Tensor, rf, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """FCDD's heatmap upsampling: ``(N, u, v)`` -> ``(N, H, W)``.

    Each low-resolution value is spread over its receptive field with a fixed Gaussian
    kernel, as the strided transposed convolution of Liznerski et al. (2021, Sec. 3): the
    transposed convolution with a separable kernel is the product ``Gy^T A Gx`` computed
    here, which also handles fields centred between pixels and exports as two matmuls.
    """
    u, v = maps.shape[-2:]
    gy = receptive_upsample_matrix(u, size[0], rf.r[0], rf.j[0], rf.s[0], sigma).to(maps)
    gx = receptive_upsample_matrix(v, size[1], rf.r[1], rf.j[1], rf.s[1], sigma).to(maps)
    return gy.t() @ maps @ gx


def bilinear_upsample_matrix(n_out: int, n_in: int, j: int, s: float) -> torch.Tensor:
    """``(n_out, n_in)`` weights of linear interpolation between the output units' centres
    ``s + i * j`` (input pixels beyond the first or last centre take that unit's value)."""
    y = torch.arange(n_in, dtype=torch.float32)
    u = ((y - s) / j).clamp(0, n_out - 1)  # each input pixel's position in units
    i = torch.arange(n_out, dtype=torch.float32)
    return (1 - (u[None, :] - i[:, None]).abs()).clamp_min(0)


def bilinear_upsample(maps: torch.Tensor, rf, size: tuple[int, int]) -> torch.Tensor:
    """``(N, u, v)`` -> ``(N, H, W)`` by bilinear interpolation with each value placed at its
    unit's receptive-field centre (``F.interpolate`` would place unit ``i`` at
    ``(i + 0.5) H / u - 0.5``: 3.5 pixels off for a stride-8 net with centres at ``8 i``)."""
    u, v = maps.shape[-2:]
    wy = bilinear_upsample_matrix(u, size[0], rf.j[0], rf.s[0]).to(maps)
    wx = bilinear_upsample_matrix(v, size[1], rf.j[1], rf.s[1]).to(maps)
    return wy.t() @ maps @ wx


def interpolation_matrix(coords: torch.Tensor, n_in: int) -> torch.Tensor:
    """``(len(coords), n_in)`` weights of linear interpolation at (clamped) grid ``coords``."""
    t = coords.float().clamp(0, n_in - 1)
    i0 = t.floor().long()
    i1 = (i0 + 1).clamp_max(n_in - 1)
    w1 = t - i0
    m = torch.zeros(len(t), n_in)
    rows = torch.arange(len(t))
    m.index_put_((rows, i0), 1 - w1, accumulate=True)
    m.index_put_((rows, i1), w1, accumulate=True)
    return m


def resample(maps: torch.Tensor, my: torch.Tensor, mx: torch.Tensor) -> torch.Tensor:
    """Separable resampling of ``(..., h, w)`` with row / column matrices ``(H, h)``, ``(W, w)``."""
    return my.to(maps) @ maps @ mx.to(maps).t()


def unit_upsample(maps: torch.Tensor, size: tuple[int, int], scale: tuple[float, float],
                  stride: int, first: float = 0.0) -> torch.Tensor:
    """Maps of a network's units ``(N, h, w)`` -> ``(N, H, W)`` on the image, each unit at
    its centre: the network's input is the image resized by ``scale`` (input pixels per
    image pixel, rows and columns), and unit i lies on input pixel ``stride * i + first``
    (pixel-centre coordinates); bilinear between units, clamped beyond the outer ones."""
    def units(n_out: int, f: float) -> torch.Tensor:  # image pixel -> input pixel -> unit
        return ((torch.arange(n_out) + 0.5) * f - 0.5 - first) / stride

    return resample(maps, interpolation_matrix(units(size[0], scale[0]), maps.shape[-2]),
                    interpolation_matrix(units(size[1], scale[1]), maps.shape[-1]))
