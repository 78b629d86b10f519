"""Gaussian smoothing and gradient heatmaps."""

from __future__ import annotations

import torch

from oneclass.heatmaps import gaussian_blur, gaussian_kernel1d, gradient_map


def test_kernel_is_normalised_and_symmetric():
    k = gaussian_kernel1d(2.0)
    assert torch.isclose(k.sum(), torch.tensor(1.0))
    assert torch.allclose(k, k.flip(0))


def test_blur_keeps_constants_and_spreads_a_point():
    const = torch.full((1, 16, 16), 3.0)
    assert torch.allclose(gaussian_blur(const, 2.0), const, atol=1e-5)
    point = torch.zeros(1, 21, 21)
    point[0, 10, 10] = 1.0
    out = gaussian_blur(point, 1.5)
    assert out.shape == point.shape
    assert torch.isclose(out.sum(), torch.tensor(1.0), atol=1e-4)
    assert out[0, 10, 10] == out.max() and out[0, 10, 13] > 0
    assert torch.allclose(out[0], out[0].T, atol=1e-6)


def test_blur_handles_maps_smaller_than_the_kernel():
    out = gaussian_blur(torch.rand(2, 3, 3), 4.0)
    assert out.shape == (2, 3, 3) and torch.isfinite(out).all()


def test_gradient_map_is_high_where_the_score_depends_on_pixels():
    def score(x):
        return (x[:, :, 4:8, 4:8] ** 2).sum(dim=(1, 2, 3))

    x = torch.rand(3, 2, 16, 16)
    maps = gradient_map(score, x, sigma=0.0)
    assert maps.shape == (3, 16, 16)
    assert (maps[:, 4:8, 4:8] > 0).all()
    assert maps[:, 10:, 10:].abs().max() == 0
