"""Tests of the synthetic data generators (oneclass.data.synthetic)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from oneclass.data.base import ANOMALOUS, NORMAL, ArraySet
from oneclass.data.synthetic import make_classic, make_defects, write_mvtec
from oneclass.errors import DataError


def _same(a: ArraySet, b: ArraySet) -> bool:
    return (
        np.array_equal(a.images, b.images)
        and np.array_equal(a.masks, b.masks)
        and np.array_equal(a.labels, b.labels)
        and a.names == b.names
        and a.kinds == b.kinds
    )


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("texture", ["stripes", "grid", "blobs"])
def test_same_seed_same_data_other_seed_other_data(texture, channels):
    a = make_defects(5, 7, 32, channels, seed=3, texture=texture)
    b = make_defects(5, 7, 32, channels, seed=3, texture=texture)
    c = make_defects(5, 7, 32, channels, seed=4, texture=texture)
    assert _same(a, b)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.masks, c.masks)


@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_dtypes_labels_names(channels):
    d = make_defects(6, 9, size=(40, 56), channels=channels, seed=1)
    assert isinstance(d, ArraySet)
    assert d.description == "synthetic"
    assert d.images.shape == (15, 40, 56, channels) and d.images.dtype == np.uint8
    assert d.masks.shape == (15, 40, 56) and d.masks.dtype == bool
    assert d.has_masks
    assert d.labels.tolist() == [NORMAL] * 6 + [ANOMALOUS] * 9
    assert d.kinds[:6] == ["good"] * 6
    assert set(d.kinds[6:]) <= {"scratch", "spot", "patch"}
    assert len(set(d.names)) == 15
    for name, kind in zip(d.names, d.kinds):
        assert re.fullmatch(rf"{kind}_\d{{4}}", name)
    assert d.names[:2] == ["good_0000", "good_0001"]
    s = d.read(7)
    assert s.image.shape == (40, 56, channels) and s.mask.shape == (40, 56)
    assert s.label == ANOMALOUS and s.kind == d.kinds[7]
    # images use a good part of the range (not blank, not saturated)
    assert 40 < d.images.mean() < 200 and d.images.std() > 15


def test_masks_nonempty_exactly_for_anomalous_images_with_plausible_size():
    d = make_defects(30, 60, 64, seed=0)
    area = d.masks.reshape(len(d), -1).mean(axis=1)
    assert np.all(area[d.labels == NORMAL] == 0)
    assert np.all(area[d.labels == ANOMALOUS] > 0)
    anomalous = area[d.labels == ANOMALOUS]
    assert anomalous.min() >= 0.005 and anomalous.max() <= 0.10
    assert 0.01 <= anomalous.mean() <= 0.06


def test_defect_pixels_differ_from_the_clean_surface_and_nothing_else_does():
    for channels in (1, 3):
        d, clean = make_defects(10, 40, 64, channels, seed=2, return_clean=True)
        assert clean.shape == d.images.shape and clean.dtype == np.uint8
        diff = np.abs(d.images.astype(np.int16) - clean.astype(np.int16)).max(axis=3)
        # normal images are their clean version; outside the masks nothing changed
        assert np.array_equal(d.images[:10], clean[:10])
        assert np.all(diff[~d.masks] == 0)
        for i in range(10, 50):
            inside = diff[i][d.masks[i]]
            assert inside.mean() > 30, (d.names[i], inside.mean())
            if d.kinds[i] in ("scratch", "spot"):
                # a scratch or a spot changes (nearly) every pixel it covers
                assert np.mean(inside > 10) > 0.95, d.names[i]


def test_kinds_are_balanced_and_selectable():
    d = make_defects(0, 90, 48, seed=5)
    counts = {k: d.kinds.count(k) for k in ("scratch", "spot", "patch")}
    assert all(c >= 15 for c in counts.values()), counts
    only = make_defects(2, 20, 48, seed=5, defects=("spot",))
    assert set(only.kinds[2:]) == {"spot"}
    assert all(n.startswith("spot_") for n in only.names[2:])


def test_normal_images_come_from_one_distribution_whatever_the_seed():
    a = make_defects(50, 0, 64, seed=0).images.astype(np.float64)
    b = make_defects(50, 0, 64, seed=99).images.astype(np.float64)
    assert abs(a.mean() - b.mean()) < 3
    assert abs(a.std() - b.std()) < 3
    # but the individual images differ (phase / noise jitter)
    assert not np.array_equal(a[0], a[1])


def test_rgb_normal_images_share_a_tint_and_defects_may_change_colour():
    d = make_defects(20, 60, 48, channels=3, seed=4)
    normal = d.images[:20].reshape(20, -1, 3).astype(np.float64).mean(axis=1)
    ratio = normal / normal[:, :1]
    assert np.ptp(ratio, axis=0).max() < 0.02  # same tint on every normal image
    assert ratio[:, 2].mean() < 0.8  # and it is a colour, not gray
    assert d.channels() == 3

    def hue(px):
        px = px.astype(np.float64)
        return px / (px.sum(axis=-1, keepdims=True) + 1)

    normal_hue = hue(d.images[:20]).reshape(-1, 3).mean(axis=0)
    recoloured = 0
    for i in range(20, 80):
        h = hue(d.images[i][d.masks[i]]).mean(axis=0)
        recoloured += np.abs(h - normal_hue).max() > 0.08
    assert recoloured >= 5


def test_gray_and_rgb_share_the_same_defect_layout():
    g = make_defects(3, 10, 32, channels=1, seed=8)
    c = make_defects(3, 10, 32, channels=3, seed=8)
    assert np.array_equal(g.masks, c.masks) and g.kinds == c.kinds


@pytest.mark.parametrize("size", [8, 12, (9, 30)])
def test_tiny_images_still_get_defects(size):
    d = make_defects(2, 12, size, seed=0)
    assert np.all(d.masks[2:].reshape(12, -1).any(axis=1))
    assert not d.masks[:2].any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"channels": 2}, "channels must be 1 or 3"),
        ({"size": 4}, "size must be at least 8x8"),
        ({"size": (64,)}, "size must be an int or"),
        ({"texture": "wood"}, "unknown texture 'wood'"),
        ({"defects": ("crack",)}, "defects must be a non-empty selection"),
        ({"defects": ()}, "defects must be a non-empty selection"),
        ({"n_normal": -1}, "n_normal must be a non-negative integer"),
    ],
)
def test_bad_arguments_raise_data_error(kwargs, message):
    args = {"n_normal": 2, "n_anomalous": 2, **kwargs}
    with pytest.raises(DataError, match=message):
        make_defects(**args)


@pytest.mark.parametrize("channels", [1, 3])
def test_write_mvtec_layout_and_masks(tmp_path, channels):
    root = write_mvtec(
        tmp_path / "synth", n_train=7, n_test_good=4, n_test_defect=9, size=(40, 48),
        channels=channels, seed=3,
    )
    assert root == tmp_path / "synth"
    train = sorted((root / "train" / "good").glob("*.png"))
    assert [p.name for p in train] == [f"{i:03d}.png" for i in range(7)]
    assert len(list((root / "test" / "good").glob("*.png"))) == 4
    assert sorted(p.name for p in root.iterdir()) == ["ground_truth", "test", "train"]
    assert [p.name for p in (root / "train").iterdir()] == ["good"]

    data = make_defects(11, 9, (40, 48), channels, seed=3)
    kinds = sorted(set(data.kinds[11:]))
    assert sorted(p.name for p in (root / "test").iterdir()) == sorted(["good", *kinds])
    assert sorted(p.name for p in (root / "ground_truth").iterdir()) == kinds

    n_defect = 0
    mode = "L" if channels == 1 else "RGB"
    for kind in kinds:
        images = sorted((root / "test" / kind).glob("*.png"))
        expected = [i for i in range(11, 20) if data.kinds[i] == kind]
        assert len(images) == len(expected)
        for path, i in zip(images, expected):
            n_defect += 1
            with Image.open(path) as im:
                assert im.mode == mode and im.size == (48, 40)
                arr = np.asarray(im)
            mask_path = root / "ground_truth" / kind / f"{path.stem}_mask.png"
            with Image.open(mask_path) as m:
                assert m.mode == "L" and m.size == (48, 40)
                mask = np.asarray(m)
            assert set(np.unique(mask).tolist()) == {0, 255}
            assert np.array_equal(mask > 0, data.masks[i])
            assert np.array_equal(arr.reshape(40, 48, channels), data.images[i])
    assert n_defect == 9
    # the first training image is the first normal image of the same generator call
    with Image.open(train[0]) as im:
        assert np.array_equal(np.asarray(im).reshape(40, 48, channels), data.images[0])


def test_make_classic_shapes_and_determinism():
    x, y = make_classic(5, seed=0)
    assert x.shape == (50, 28, 28) and x.dtype == np.uint8
    assert y.dtype == np.int64 and y.tolist() == np.repeat(np.arange(10), 5).tolist()
    x2, _ = make_classic(5, seed=0)
    x3, _ = make_classic(5, seed=1)
    assert np.array_equal(x, x2) and not np.array_equal(x, x3)
    xc, yc = make_classic(3, num_classes=4, size=32, channels=3, seed=0)
    assert xc.shape == (12, 32, 32, 3) and xc.dtype == np.uint8 and len(yc) == 12
    assert make_classic(2, num_classes=12)[0].shape == (24, 28, 28)
    with pytest.raises(DataError):
        make_classic(2, num_classes=13)


def test_make_classic_classes_are_distinct_and_learnable():
    x, y = make_classic(40, seed=0)
    xf = x.reshape(len(x), -1).astype(np.float64) / 255
    means = np.stack([xf[y == k].mean(axis=0) for k in range(10)])
    gaps = np.linalg.norm(means[:, None] - means[None], axis=2)
    assert gaps[~np.eye(10, dtype=bool)].min() > 1.0
    # each image is a dark background with a clearly visible glyph
    assert np.all(x.reshape(len(x), -1).max(axis=1) > 150)
    assert np.median(x) < 30
    # nearest class mean classifies held-out images from another seed well
    xt, yt = make_classic(20, seed=1)
    xt = xt.reshape(len(xt), -1).astype(np.float64) / 255
    dist = ((xt[:, None] - means[None]) ** 2).sum(axis=2)
    assert np.mean(np.argmin(dist, axis=1) == yt) > 0.85
    # one-vs-rest: even the distance to the class mean separates each class from the rest
    for k in range(10):
        inlier, outlier = dist[yt == k, k], dist[yt != k, k]
        auc = np.mean(outlier[:, None] > inlier[None, :])
        assert auc > 0.8, (k, auc)


def test_synthetic_spec_options_may_come_without_a_texture():
    # README: synthetic[:stripes|grid|blobs][:HxW][:rgb]; 'synthetic:rgb' was an unknown texture
    from oneclass.data import canonical, load

    rgb = load("synthetic:rgb", "test")
    assert canonical("synthetic:rgb") == "synthetic:stripes:64x64:rgb"
    assert 3 in rgb.images.shape[1:] and rgb.images.shape[1:].count(64) == 2
    assert canonical("synthetic:32x32") == "synthetic:stripes:32x32:gray"
    assert canonical("synthetic:48:rgb") == "synthetic:stripes:48x48:rgb"


def test_each_texture_draws_its_own_images():
    imgs = {t: make_defects(4, 0, 32, seed=0, texture=t).images for t in ("stripes", "grid", "blobs")}
    assert not np.array_equal(imgs["stripes"], imgs["grid"])
    assert not np.array_equal(imgs["stripes"], imgs["blobs"])
    assert not np.array_equal(imgs["grid"], imgs["blobs"])
