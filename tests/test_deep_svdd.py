"""Deep SVDD: objectives, bias-free networks, centre guard, soft boundary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import oneclass
from oneclass.data.base import ArraySet
from oneclass.errors import ConfigError
from oneclass.methods._common import mean_embedding
from oneclass.methods.deep_svdd import one_class_loss, soft_boundary_loss
from oneclass.metrics import auroc
from oneclass.nets import Decoder, Encoder


def test_one_class_loss_is_mean_squared_distance():
    z = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 0.5]])
    c = torch.tensor([0.5, 0.5])
    dist = ((z - c) ** 2).sum(1)
    expected = ((0.5**2 + 1.5**2) + (0.5**2 + 1.5**2) + (2.5**2 + 0.0)) / 3
    assert torch.isclose(one_class_loss(dist), torch.tensor(expected))


def test_soft_boundary_loss_matches_paper_formula():
    dist = torch.tensor([0.5, 1.0, 4.0, 9.0])
    R, nu = torch.tensor(1.5), 0.25
    # R^2 + 1/nu * mean(max(0, d - R^2)): only 4 and 9 exceed 2.25
    expected = 2.25 + (1 / 0.25) * ((4 - 2.25) + (9 - 2.25)) / 4
    assert torch.isclose(soft_boundary_loss(dist, R, nu), torch.tensor(expected))


def test_networks_are_bias_free_and_match_the_paper_sizes():
    for shape, rep in [((1, 28, 28), 32), ((3, 32, 32), 128), ((1, 64, 96), 128)]:
        enc = Encoder(shape[0], shape[1:])
        assert enc.rep_dim == rep
        for m in enc.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                assert m.bias is None
            if isinstance(m, torch.nn.BatchNorm2d):
                assert not m.affine
        x = torch.randn(2, *shape)
        assert enc(x).shape == (2, rep)
        assert Decoder(enc, shape[0])(enc(x)).shape == x.shape
    assert Encoder(1, (28, 28)).widths == (8, 4)
    assert Encoder(3, (32, 32)).widths == (32, 64, 128)


def test_centre_coordinates_near_zero_are_pushed_to_eps():
    x = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    fixed = torch.tensor([0.05, -0.05, 0.5, -0.01])
    c = mean_embedding(lambda xb: fixed.expand(len(xb), 4), x, torch.device("cpu"))
    assert torch.allclose(c, torch.tensor([0.1, -0.1, 0.5, -0.1]))


def test_learns_to_rank_defects(defects_train, defects_test):
    det = oneclass.create("deep_svdd", epochs=10, pretrain_epochs=5, batch_size=32)
    det.fit(defects_train)
    assert auroc(defects_test.labels, det.score(defects_test)) > 0.75


def test_soft_boundary_sets_radius_and_scores_relative_to_it(defects_train, defects_test):
    det = oneclass.create("deep_svdd", objective="soft-boundary", nu=0.1, warmup_epochs=1,
                          epochs=4, pretrain_epochs=2, batch_size=32)
    det.fit(defects_train)
    R = float(det.model_.R)
    assert R > 0
    sub = defects_test.subset(range(5))
    with torch.no_grad():
        x = next(det.batches(sub))
        d = det.model_.dist(x).numpy()
    np.testing.assert_allclose(det.score(sub), d - R**2, rtol=1e-5, atol=1e-6)


def test_labeled_anomalies_are_not_used_for_training(defects_train, defects_test):
    from oneclass.data.base import ArraySet

    mixed = ArraySet(np.concatenate([defects_train.images, defects_test.images[30:]]),
                     np.concatenate([defects_train.labels, defects_test.labels[30:]]))
    a = oneclass.create("deep_svdd", epochs=2, pretrain_epochs=1, batch_size=32, holdout=0.0)
    b = oneclass.create("deep_svdd", epochs=2, pretrain_epochs=1, batch_size=32, holdout=0.0)
    np.testing.assert_array_equal(a.fit(mixed).score(defects_test),
                                  b.fit(defects_train).score(defects_test))


def test_gradient_map_points_at_the_defect(defects_train, defects_test):
    det = oneclass.create("deep_svdd", epochs=10, pretrain_epochs=5, batch_size=32)
    det.fit(defects_train)
    anomalous = defects_test.subset(np.flatnonzero(defects_test.labels == 1))
    maps = det.anomaly_map(anomalous)
    masks = np.stack([anomalous.read(i).mask for i in range(len(anomalous))])
    inside = np.array([m[k].mean() for m, k in zip(maps, masks)])
    outside = np.array([m[~k].mean() for m, k in zip(maps, masks)])
    assert (inside > outside).mean() > 0.6


def test_encoder_parameters_build_a_wider_net_with_a_hidden_layer(tmp_path):
    enc = Encoder(1, (28, 28), widths=(16, 32), rep_dim=64, hidden=128)
    assert [m.out_channels for m in enc.modules() if isinstance(m, torch.nn.Conv2d)] == [16, 32]
    assert enc.hidden_layer[0].in_features == 32 * 7 * 7 and enc(torch.randn(3, 1, 28, 28)).shape == (3, 64)
    for m in enc.modules():  # still bias-free
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            assert m.bias is None
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            assert not m.affine
    assert Decoder(enc, 1)(torch.randn(3, 64)).shape == (3, 1, 28, 28)
    # through the detector: trained, saved and rebuilt from its JSON description
    rng = np.random.default_rng(0)
    x = ArraySet(rng.integers(0, 256, (24, 28, 28), dtype=np.uint8))
    det = oneclass.create("deep_svdd", widths=[8, 8], rep_dim=16, hidden=24, epochs=1,
                          pretrain_epochs=1, batch_size=8, seed=0).fit(x)
    det.save(tmp_path / "m")
    again = oneclass.load(tmp_path / "m")
    assert again.model_.encoder.hidden == 24 and again.model_.encoder.rep_dim == 16
    np.testing.assert_allclose(again.score(x), det.score(x), rtol=1e-5)


def test_slope_sets_every_leaky_relu_and_survives_save_and_load(tmp_path):
    enc = Encoder(1, (28, 28), hidden=16, slope=0.01)
    slopes = {m.negative_slope for m in enc.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.01}
    assert Decoder(enc, 1).slope == 0.01
    z = torch.full((1, 4), -1.0)  # the slope is what a negative input is multiplied by
    assert torch.equal(enc.hidden_layer[2](z), torch.full((1, 4), -0.01))
    rng = np.random.default_rng(0)
    x = ArraySet(rng.integers(0, 256, (24, 28, 28), dtype=np.uint8))
    a = oneclass.create("deep_sad", slope=0.01, epochs=1, pretrain_epochs=1, batch_size=8,
                        seed=0).fit(x)
    b = oneclass.create("deep_sad", epochs=1, pretrain_epochs=1, batch_size=8, seed=0).fit(x)
    assert not np.allclose(a.score(x), b.score(x))  # the slope changes the model
    a.save(tmp_path / "m")
    again = oneclass.load(tmp_path / "m")
    assert again.model_.encoder.slope == 0.01
    np.testing.assert_allclose(again.score(x), a.score(x), rtol=1e-5)


@pytest.mark.parametrize("bad", [{"widths": []}, {"widths": [8, -1]}, {"widths": 8},
                                 {"rep_dim": 0}, {"hidden": -3}, {"slope": 1.5}])
def test_bad_encoder_parameters_are_named(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        oneclass.create("deep_sad", **bad).fit(ArraySet(np.zeros((4, 28, 28), np.uint8)))


@pytest.mark.parametrize("method", ["deep_svdd", "deep_sad"])
def test_a_last_batch_of_one_image_trains_with_a_hidden_layer(method):
    # 17 images at batch 8 leave a last batch of one: batch norm (hidden layer) used to refuse
    x = np.random.default_rng(0).integers(0, 256, (19, 16, 16, 1), dtype=np.uint8)
    data = ArraySet(x, np.zeros(19, np.int64))
    det = oneclass.create(method, epochs=1, pretrain_epochs=1, batch_size=8, hidden=8,
                          holdout=0.1, seed=0).fit(data)
    assert det.n_train_ == 17 and np.isfinite(det.score(data)).all()


def test_soft_boundary_radius_follows_the_batches_only_after_warmup(defects_train, monkeypatch):
    # Ruff et al.'s reference: from epoch warmup_epochs on, after each step R becomes the
    # (1 - nu) quantile of the square roots of the distances of that batch; before, R stays 0
    from oneclass.methods import deep_svdd as svdd_mod

    steps, gathered = [], []
    step, gather = svdd_mod._SVDDTask.step, svdd_mod.gather_across_ranks

    def spy_step(self, batch):
        steps.append(self.epoch)
        return step(self, batch)

    def spy_gather(t):
        gathered.append((steps[-1], t.clone()))
        return gather(t)

    monkeypatch.setattr(svdd_mod._SVDDTask, "step", spy_step)
    monkeypatch.setattr(svdd_mod, "gather_across_ranks", spy_gather)
    det = oneclass.create("deep_svdd", objective="soft-boundary", nu=0.1, warmup_epochs=2,
                          epochs=4, pretrain_epochs=1, batch_size=32, holdout=0.0, seed=0)
    det.fit(defects_train)
    assert steps == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4  # 120 images at 32
    assert [e for e, _ in gathered] == [2] * 4 + [3] * 4  # one update per step after warmup
    radii = [r["R"] for r in det.history_ if r["phase"] == "train"]
    assert radii[:2] == [0.0, 0.0] and all(r > 0 for r in radii[2:])
    last = gathered[-1][1]
    assert len(last) == 120 - 3 * 32
    expected = torch.quantile(last.sqrt(), 0.9)
    assert float(det.model_.R) == pytest.approx(float(expected), rel=1e-6)
    assert float(torch.quantile(last.sqrt(), 0.1)) < 0.99 * float(expected)  # nu != 1 - nu


def test_reference_decoder_has_the_reference_cifar10_layers_and_outputs_images_in_0_1():
    from oneclass.nets import ReferenceDecoder

    enc = Encoder(3, (32, 32), slope=0.01)
    dec = ReferenceDecoder(enc, 3)
    convs = [m for m in dec.modules() if isinstance(m, torch.nn.Conv2d)]
    # the reference: code (128) -> 8 maps of 4x4 -> 128 -> 64 -> 32 -> 3 channels, 5x5, no bias
    assert [(m.in_channels, m.out_channels) for m in convs] == [(8, 128), (128, 64), (64, 32),
                                                                (32, 3)]
    assert all(m.kernel_size == (5, 5) and m.bias is None for m in convs)
    assert dec.seed == (8, 4, 4) and not dec.bn.affine
    out = dec(torch.randn(5, 128) * 10)
    assert out.shape == (5, 3, 32, 32) and bool(((out > 0) & (out < 1)).all())
    # other sizes and codes that 16 does not divide (1x1 seed maps) reach the input's size
    for shape, rep in [((1, 28, 28), None), ((3, 20, 36), 24)]:
        e = Encoder(shape[0], shape[1:], rep_dim=rep)
        assert ReferenceDecoder(e, shape[0])(torch.randn(2, e.rep_dim)).shape == (2, *shape)


def test_reference_autoencoder_initialises_convolutions_with_xavier_uniform():
    from oneclass.nets import ReferenceDecoder, xavier_init_encoder_

    torch.manual_seed(0)
    enc = Encoder(3, (32, 32), slope=0.01)
    xavier_init_encoder_(enc)
    gain = (2.0 / (1 + 0.01**2)) ** 0.5  # torch's leaky_relu gain for slope 0.01
    convs = [m for m in enc.features if isinstance(m, torch.nn.Conv2d)]
    convs += [m for m in ReferenceDecoder(enc, 3).modules() if isinstance(m, torch.nn.Conv2d)]
    for m in convs:
        fan_in = m.in_channels * 25
        fan_out = m.out_channels * 25
        bound = gain * (6.0 / (fan_in + fan_out)) ** 0.5
        w = m.weight.abs().max().item()
        assert 0.9 * bound < w <= bound + 1e-6  # uniform on [-bound, bound]


def test_autoencoder_loss_targets_the_image_for_a_raw_target_decoder():
    from oneclass.detector import InputNorm
    from oneclass.methods._common import AutoencoderTask

    class Half(torch.nn.Module):  # "reconstructs" every pixel as 0.5
        def __init__(self, raw):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            if raw:
                self.raw_target = True

        def forward(self, z):
            return torch.full((z.shape[0], 1, 2, 2), 0.5) + 0 * self.w

    norm = InputNorm(1)
    norm.mean.fill_(0.25)
    norm.std.fill_(0.5)
    img = torch.tensor([[[[0, 255], [51, 102]]]], dtype=torch.uint8)  # 0, 1, 0.2, 0.4
    raw = torch.tensor([0.0, 1.0, 0.2, 0.4])
    for flag, target in ((True, raw), (False, (raw - 0.25) / 0.5)):
        task = AutoencoderTask(norm, torch.nn.Identity(), Half(flag), torch.device("cpu"),
                               1e-3, 0.0)
        expected = ((0.5 - target) ** 2).mean()
        assert torch.isclose(task.step([img])["rec_loss"], expected)


def test_reference_autoencoder_pretrains_and_its_model_saves_and_loads(tmp_path):
    from oneclass.methods._common import pretrain_autoencoder
    from oneclass.methods.deep_svdd import SVDDNet
    from oneclass.nets import ReferenceDecoder
    from oneclass.train import LoopConfig

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (64, 3, 16, 16), dtype=np.uint8)
    x = torch.from_numpy(imgs)
    torch.manual_seed(0)
    model = SVDDNet((3, 16, 16), slope=0.01)
    model.norm.fit(x)
    hist = pretrain_autoencoder(model, ReferenceDecoder(model.encoder, 3), x, epochs=8,
                                batch_size=16, lr=1e-3, weight_decay=0.0, seed=0,
                                device=torch.device("cpu"), loop=LoopConfig(progress=False))
    losses = [h["rec_loss"] for h in hist]
    assert losses[-1] < 0.8 * losses[0]  # it learns to reconstruct
    # through the detector: a parameter that changes the model and survives save and load
    data = ArraySet(np.moveaxis(imgs[:24], 1, -1))
    kw = dict(slope=0.01, epochs=1, pretrain_epochs=1, batch_size=8, seed=0)
    a = oneclass.create("deep_sad", autoencoder="reference", **kw).fit(data)
    b = oneclass.create("deep_sad", **kw).fit(data)
    assert not np.allclose(a.score(data), b.score(data))
    a.save(tmp_path / "m")
    again = oneclass.load(tmp_path / "m")
    assert again.autoencoder == "reference"
    np.testing.assert_allclose(again.score(data), a.score(data), rtol=1e-5)


@pytest.mark.parametrize("bad,match", [({"autoencoder": "vae"}, "autoencoder"),
                                       ({"autoencoder": "reference", "gcn": True}, "gcn")])
def test_bad_autoencoder_settings_are_named(bad, match):
    with pytest.raises(ConfigError, match=match):
        oneclass.create("deep_svdd", **bad).fit(ArraySet(np.zeros((4, 28, 28), np.uint8)))
