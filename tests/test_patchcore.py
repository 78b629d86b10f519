"""PatchCore: coreset selection, nearest-neighbour distances, maps that find a defect."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import oneclass
from oneclass.data.base import ArraySet
from oneclass.data.synthetic import make_defects
from oneclass.errors import ConfigError
from oneclass.methods.patchcore import greedy_coreset, nearest
from oneclass.metrics import auroc


@pytest.mark.parametrize("projection_dim", [None, 4])
def test_coreset_picks_the_far_points(projection_dim):
    g = torch.Generator().manual_seed(0)
    cluster = 0.05 * torch.randn(300, 8, generator=g)
    far = torch.zeros(3, 8)
    far[0, 0], far[1, 3], far[2, 5] = 10.0, -10.0, 10.0
    x = torch.cat([cluster[:100], far[:1], cluster[100:200], far[1:], cluster[200:]])
    far_idx = {100, 201, 202}
    idx = greedy_coreset(x, 4, projection_dim=projection_dim, seed=3)
    assert len(set(idx.tolist())) == 4
    assert far_idx <= set(idx.tolist())
    # Random choice would pick a far point with probability 1%: the coreset covers the space.
    same = greedy_coreset(x, 4, projection_dim=projection_dim, seed=3)
    assert torch.equal(idx, same)


def test_coreset_is_greedy_k_center_on_the_raw_or_projected_features():
    """Without projection each pick is the row farthest from those picked (brute force in
    float64 here); with one, distances are measured in fewer dimensions and other rows win."""
    x = torch.randn(200, 64, generator=torch.Generator().manual_seed(5))
    raw = greedy_coreset(x, 12, projection_dim=None, seed=1).tolist()
    xs = x.double()
    picked = [raw[0]]  # the first row is the seed's draw
    for _ in range(11):
        d = torch.cdist(xs, xs[picked]).min(1).values
        picked.append(int(d.argmax()))
    assert raw == picked
    projected = greedy_coreset(x, 12, projection_dim=4, seed=1).tolist()
    assert projected != raw  # the projection changes the picks
    assert greedy_coreset(x, 12, projection_dim=64, seed=1).tolist() != projected


def test_nearest_matches_brute_force_in_chunks():
    g = torch.Generator().manual_seed(1)
    q, bank = torch.randn(50, 6, generator=g), torch.randn(70, 6, generator=g)
    full = torch.cdist(q, bank)
    d, i = nearest(q, bank, max_elements=100)  # one query per chunk
    assert torch.equal(i[:, 0], full.argmin(1))
    torch.testing.assert_close(d[:, 0], full.min(1).values, atol=1e-4, rtol=1e-4)
    d3, i3 = nearest(q, bank, k=3)
    torch.testing.assert_close(d3, full.topk(3, dim=1, largest=False).values, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def fitted_pc():
    train = make_defects(40, 0, size=64, seed=4)
    # Stages 1 and 2 (strides 4 and 8): on 64-pixel images the deeper stage 4 sees the whole
    # image, which spreads a defect over the map; the default layers are for larger images.
    det = oneclass.create("patchcore", layers=[1, 2], coreset_ratio=0.25, min_side=64, seed=0)
    return det.fit(train)


def test_bank_size_follows_ratio_and_cap(fitted_pc):
    assert fitted_pc.bank_size_ == round(0.25 * fitted_pc.n_patches_)
    assert tuple(fitted_pc.model_.bank.shape) == (fitted_pc.bank_size_, 24 + 40)
    capped = oneclass.create("patchcore", coreset_max=50, min_side=64, holdout=0.0)
    capped.fit(make_defects(8, 0, size=64, seed=4))
    assert capped.bank_size_ == 50


def test_map_peaks_at_an_injected_defect(fitted_pc):
    clean = make_defects(4, 0, size=64, seed=11)
    imgs = np.stack([clean.read(i).image for i in range(4)])  # (N, H, W, C) uint8
    # Away from the borders: there the trunk's zero padding already makes features unusual.
    rows = [(16, 22), (40, 46), (28, 34), (18, 24)]
    cols = [(40, 46), (18, 24), (28, 34), (18, 24)]
    masks = np.zeros(imgs.shape[:3], bool)
    for k, ((r0, r1), (c0, c1)) in enumerate(zip(rows, cols)):
        imgs[k, r0:r1, c0:c1] = 255 - imgs[k, r0:r1, c0:c1] // 4  # a bright square
        masks[k, r0:r1, c0:c1] = True
    maps = fitted_pc.anomaly_map(ArraySet(imgs, np.ones(4, int)))
    for k, ((r0, r1), (c0, c1)) in enumerate(zip(rows, cols)):
        r, c = np.unravel_index(maps[k].argmax(), maps[k].shape)
        # Within half a feature unit (stride 8) of the square.
        assert r0 - 4 <= r < r1 + 4 and c0 - 4 <= c < c1 + 4, (k, r, c)
        far = np.ones(masks[k].shape, bool)
        far[max(0, r0 - 8):r1 + 8, max(0, c0 - 8):c1 + 8] = False
        assert maps[k][masks[k]].mean() > 2 * maps[k][far].mean()
    normal_scores = fitted_pc.score(clean)
    assert fitted_pc.score(ArraySet(imgs, np.ones(4, int))).min() > normal_scores.max()


def test_reweighting_scales_scores_down_and_keeps_the_ranking(fitted_pc):
    test = make_defects(10, 10, size=64, seed=5)
    plain = fitted_pc.score(test)
    fitted_pc.reweight = True
    try:
        weighted = fitted_pc.score(test)
    finally:
        fitted_pc.reweight = False
    # Eq. 7: s * (1 - softmax(d)[m*]) over the distances d to m* and its k - 1 neighbours;
    # m* is the nearest, so its share is at most 1/k: every score shrinks, by a factor of its
    # own between 1 - 1/k and 1
    ratio = weighted / plain
    k = min(fitted_pc.reweight_k, fitted_pc.bank_size_)
    assert np.all(ratio >= 1 - 1 / k - 1e-6) and np.all(ratio < 1)
    assert np.ptp(ratio) > 1e-4
    assert auroc(test.labels, weighted) > 0.9


@pytest.mark.parametrize("bad", [{"layers": [7]}, {"layers": [2, 2]}, {"coreset_ratio": 0.0},
                                 {"coreset_max": 0}, {"reweight_k": 1}])
def test_bad_parameters_are_refused(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        oneclass.create("patchcore", **bad)


def test_no_projection_when_projection_dim_is_unset():
    from oneclass.data.base import ArraySet

    x = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 1), dtype=np.uint8)
    det = oneclass.create("patchcore", projection_dim=None, min_side=32, holdout=0.0)
    det.fit(ArraySet(x, np.zeros(6, np.int64)))
    assert np.isfinite(det.score(ArraySet(x, np.zeros(6, np.int64)))).all()


@pytest.mark.parametrize("unit", [(5, 9), (0, 15), (15, 0)])
def test_a_patch_score_lands_on_its_units_receptive_field_centre(unit):
    """Unit (i, j) of the first tapped stage is centred on input pixel s + i * jump, as the
    receptive field read off the trunk itself says; the upsampled map peaks there and falls
    off evenly on both sides."""
    from torch import nn

    from oneclass.methods.patchcore import PatchCoreModel, _stage_ends
    from oneclass.nets.receptive import receptive_field

    model = PatchCoreModel((3, 64, 64), [1, 2], 1, 64)  # scale 1: input pixels are trunk pixels
    trunk = nn.Sequential(model.trunk.stem, *model.trunk.blocks[:_stage_ends()[1] + 1])
    rf = receptive_field(trunk, (3, 64, 64))
    patch = torch.zeros(1, 16, 16)
    patch[0, unit[0], unit[1]] = 1.0
    up = model.upsample(patch, (64, 64))[0]
    y, x = (int(rf.s[a] + unit[a] * rf.j[a]) for a in (0, 1))
    assert divmod(int(up.argmax()), 64) == (y, x) and float(up[y, x]) == 1.0
    if 0 < y < 63 and 0 < x < 63:  # even fall-off on both sides, both axes
        assert float(up[y + 1, x]) == pytest.approx(float(up[y - 1, x]))
        assert float(up[y, x + 1]) == pytest.approx(float(up[y, x - 1]))
        assert float(up[y + 1, x]) < 1.0 and float(up[y, x + 1]) < 1.0


def test_the_imagenet_units_centres_are_where_their_weights_respond():
    """With ImageNet weights a unit responds to content about (stride - 1) / 2 pixels above
    and to the left of its receptive field's centre, so PatchCore's map of a pasted spot sat
    several pixels down and to the right of it; taking the units there moves the map most of
    the way back onto the spot."""
    from oneclass.methods.patchcore import PatchCoreModel

    train = make_defects(30, 0, size=128, channels=3, seed=2)
    det = oneclass.create("patchcore", size=128, seed=0, holdout=0.0).fit(train)  # default layers
    assert det.unit_centres_ == "imagenet" and det.model_.centre_shift == 1.0
    base = make_defects(1, 0, size=128, channels=3, seed=9).read(0).image
    yy, xx = np.mgrid[0:128, 0:128]
    spots = [(40, 40), (40, 88), (88, 40), (88, 88), (64, 64), (52, 76), (76, 52), (60, 92)]
    imgs = np.stack([base] * len(spots))
    for k, (cy, cx) in enumerate(spots):
        imgs[k][(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = (20, 200, 240)

    def mean_offset():
        clean = det.anomaly_map(ArraySet(base[None], np.zeros(1, int)))[0]
        maps = det.anomaly_map(ArraySet(imgs, np.ones(len(spots), int)))
        offs = []
        for m, (cy, cx) in zip(maps, spots):
            d = np.clip(m - clean, 0, None)
            d = np.where(d > 0.5 * d.max(), d, 0)
            offs.append(((d * yy).sum() / d.sum() - cy, (d * xx).sum() / d.sum() - cx))
        return np.mean(offs, axis=0)

    now = mean_offset()
    geometric = PatchCoreModel(det.input_shape_, det.layers, det.bank_size_, det.min_side)
    geometric.load_state_dict(det.model_.state_dict())
    det.model_ = geometric.eval()
    old = mean_offset()
    # measured: (7.8, 8.0) pixels with geometric centres, (2.5, 3.1) now; on two other sets
    # (a walk-through's colour set, KolektorSDD) 4-7 pixels before and 0-4 after
    assert (old > 6.0).all() and (np.abs(now) < 3.5).all() and (old - now > 4.0).all(), (old, now)


def test_models_saved_before_the_centres_were_recorded_keep_geometric_ones(tmp_path):
    import json

    det = oneclass.create("patchcore", layers=[1, 2], min_side=64, seed=0, holdout=0.0)
    det.fit(make_defects(6, 0, size=64, seed=4))
    det.save(tmp_path / "m")
    assert oneclass.load(tmp_path / "m").model_.centre_shift == 1.0
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["fitted"].pop("unit_centres") == "imagenet"
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    old = oneclass.load(tmp_path / "m")
    assert old.unit_centres_ == "geometric" and old.model_.centre_shift == 0.0
    random = oneclass.create("patchcore", layers=[1, 2], min_side=64, pretrained=False,
                             holdout=0.0).fit(make_defects(6, 0, size=64, seed=4))
    assert random.unit_centres_ == "geometric"  # random weights respond at the centre
