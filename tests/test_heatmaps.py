"""Gaussian smoothing and gradient heatmaps."""

from __future__ import annotations

import numpy as np
import pytest
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
    # the kernel cut to fit such a side still sums to one: constants stay constant
    for shape, sigma in (((1, 3, 3), 4.0), ((1, 1, 16), 2.0), ((2, 5, 40), 3.0)):
        const = torch.full(shape, 0.7)
        assert torch.allclose(gaussian_blur(const, sigma), const, atol=1e-6), (shape, sigma)
    # and a point on such a small map still spreads to its neighbours (reflected at the
    # borders, so its total is not kept)
    point = torch.zeros(1, 3, 3)
    point[0, 1, 1] = 1.0
    spread = gaussian_blur(point, 4.0)
    assert float(spread[0, 0, 0]) > 0 and float(spread[0, 1, 1]) < 1.0


def test_blur_matches_scipy_mirror_mode():
    ndimage = pytest.importorskip("scipy.ndimage")
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 24, 30, generator=g, dtype=torch.float64)
    for sigma in (1.0, 2.5, 5.0):  # radius 3, 8, 15: all shorter than the sides
        ours = gaussian_blur(maps, sigma).numpy()
        ref = np.stack([ndimage.gaussian_filter(m, sigma, mode="mirror", truncate=3.0)
                        for m in maps.numpy()])
        np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_gradient_map_is_high_where_the_score_depends_on_pixels():
    def score(x):
        return (x[:, :, 4:8, 4:8] ** 2).sum(dim=(1, 2, 3))

    x = torch.rand(3, 2, 16, 16)
    maps = gradient_map(score, x, sigma=0.0)
    assert maps.shape == (3, 16, 16)
    assert (maps[:, 4:8, 4:8] > 0).all()
    assert maps[:, 10:, 10:].abs().max() == 0


def test_gradient_map_is_the_size_of_the_gradient_whatever_its_sign():
    def score(x):  # d score / d x = -3 on the first channel, +1 on the second
        return (-3 * x[:, 0] + x[:, 1]).sum(dim=(1, 2))

    maps = gradient_map(score, torch.rand(2, 2, 8, 8), sigma=0.0)
    assert torch.allclose(maps, torch.full((2, 8, 8), 4.0))
