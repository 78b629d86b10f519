"""AnoGAN and BiGAN: networks, latent search, training stability, report figures, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import oneclass
from oneclass.cli import main
from oneclass.data.synthetic import make_defects
from oneclass.detector import holdout_threshold
from oneclass.errors import ConfigError
from oneclass.methods.anogan import anogan_loss
from oneclass.methods.bigan import gradient_penalty
from oneclass.nets.dcgan import Discriminator, Encoder, Generator, JointCritic, plan

from .conftest import fast_params


@pytest.fixture(scope="module")
def small_train():
    return make_defects(40, 0, size=16, seed=4)


@pytest.fixture(scope="module")
def anogan_fitted(small_train):
    return oneclass.create("anogan", **fast_params("anogan")).fit(small_train)


def _untrained_anogan(shape=(1, 16, 16), **params):
    det = oneclass.create("anogan", width=16, seed=0, **params)
    torch.manual_seed(0)  # the same initial weights every run
    det.device_ = torch.device("cpu")
    det.input_shape_ = shape
    det.model_ = det._build(shape).eval()
    return det


@pytest.mark.parametrize("size", [(28, 28), (32, 32), (64, 64), (24, 40), (96, 48), (8, 8)])
def test_networks_fit_any_size(size):
    n, (h0, w0) = plan(size)
    assert min(h0, w0) <= 7 and h0 * 2**n >= size[0] and w0 * 2**n >= size[1]
    G = Generator(10, 3, size, width=8)
    x = G(torch.randn(2, 10))
    assert x.shape == (2, 3, *size) and x.abs().max() <= 1
    assert Discriminator(3, size, width=8)(x).shape == (2,)
    assert Encoder(10, 3, size, width=8)(x).shape == (2, 10)
    assert JointCritic(10, 3, size, width=8)(x, torch.randn(2, 10)).shape == (2,)


def test_anogan_loss_is_the_paper_formula():
    x, g = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    fx, fg = torch.zeros(2, 3), torch.full((2, 3), 2.0)
    loss, residual = anogan_loss(x, g, fx, fg, 0.1)
    assert torch.allclose(residual, torch.tensor([4.0, 4.0]))
    assert torch.allclose(loss, 0.9 * 4.0 + 0.1 * 6.0 * torch.ones(2))


def test_latent_search_lowers_the_residual_on_an_image_g_can_make():
    det = _untrained_anogan(search_steps=100, search_lr=0.05)
    with torch.no_grad():
        z0 = torch.randn(4, det.z_dim, generator=torch.Generator().manual_seed(3))
        x = (det.model_.G(z0) + 1) / 2  # images in [0, 1] that G makes exactly
    start = det.search(x, steps=0)
    found = det.search(x)
    assert (found.loss < start.loss).all()
    assert found.residual.mean() < 0.5 * start.residual.mean()
    # the search moved z towards a code that makes x, and G(z) is close to x pixel by pixel
    assert (found.residual / x[0].numel()).max() < 0.05


def test_latent_search_changes_neither_g_nor_d():
    det = _untrained_anogan(search_steps=20)
    before = {k: v.clone() for k, v in det.model_.state_dict().items()}  # weights and BN buffers
    det.score(torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(1)))
    after = det.model_.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), \
        [k for k in before if not torch.equal(before[k], after[k])]


@pytest.mark.parametrize("threads", [1, 2])
def test_an_image_gets_the_same_score_alone_or_in_any_batch(threads):
    # a trained generator and the default 100 steps: convolutions round differently by batch
    # size and thread count, and the search amplified that to scores up to 0.7 % apart
    train = make_defects(48, 0, size=20, seed=4)
    x = torch.from_numpy(np.stack([make_defects(7, 7, size=20, seed=7).read(i).image
                                   for i in range(14)])).permute(0, 3, 1, 2).float() / 255
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        det = oneclass.create("anogan", epochs=6, batch_size=16, seed=0, width=16).fit(train)
        together = det.score(x)
        alone = np.concatenate([det.score(x[i:i + 1]) for i in range(len(x))])
        in_fives = np.concatenate([det.score(x[i:i + 5]) for i in range(0, len(x), 5)])
        reordered = det.score(x.flip(0))[::-1]
    finally:
        torch.set_num_threads(saved)
    np.testing.assert_array_equal(alone, together)
    np.testing.assert_array_equal(in_fives, together)
    np.testing.assert_array_equal(reordered, together)


def test_training_and_test_images_are_scored_by_the_same_search(anogan_fitted, small_train):
    det = anogan_fitted
    # the threshold comes from the held-back normal images, scored by the same search ...
    _, held = det._split_holdout(small_train, None)
    hold_scores = det.score(held)
    assert det.threshold_ == holdout_threshold(hold_scores, det.contamination)
    # ... as any image: score() is the final loss of search(), for training or test images
    x = torch.stack([torch.from_numpy(small_train.read(i).image.copy()).permute(2, 0, 1)
                     for i in range(8)]).float() / 255
    test = make_defects(4, 4, size=16, seed=7)
    xt = torch.stack([torch.from_numpy(test.read(i).image.copy()).permute(2, 0, 1)
                      for i in range(8)]).float() / 255
    for batch in (x, xt):
        np.testing.assert_allclose(det.score(batch), det.search(batch).loss.numpy(), rtol=1e-5)
    maps = det.anomaly_map(xt)
    assert maps.shape == (8, 16, 16) and np.isfinite(maps).all()


def _images(data, n):
    """The first ``n`` images of an ImageSet as floats in [0, 1], ``(N, C, H, W)``."""
    return torch.stack([torch.from_numpy(data.read(i).image.copy()).permute(2, 0, 1)
                        for i in range(n)]).float() / 255


def test_anogan_map_is_the_blurred_residual_of_its_search(anogan_fitted):
    from oneclass.heatmaps import gaussian_blur

    det = anogan_fitted
    x = _images(make_defects(4, 4, size=16, seed=7), 8)
    maps = det.anomaly_map(x)
    found = det.search(x)  # the search the map comes from (it repeats bit for bit)
    # |x - G(z)| in G's [-1, 1] range, averaged over channels, halved to [0, 1] units
    raw = (det.model_.prep(x) - found.rec).abs().mean(1) / 2
    # the channel mean of the residual map adds up to the residual of the search's loss
    np.testing.assert_allclose((raw.flatten(1).sum(1) * 2 * x.shape[1]).numpy(),
                               found.residual.numpy(), rtol=1e-5)
    sigma = max(1.0, 16 / 32)  # default heatmap_sigma: side / 32, at least one pixel
    expect = gaussian_blur(raw, sigma).numpy()
    assert maps.shape == (8, 16, 16) and expect.std() > 0.01
    np.testing.assert_allclose(maps, expect, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def bigan_tiny(small_train):
    return oneclass.create("bigan", epochs=1, batch_size=16, width=8, z_dim=8, seed=0,
                           alpha=0.6).fit(small_train)


def test_bigan_score_and_map_are_the_documented_formulas(bigan_tiny):
    from oneclass.heatmaps import gaussian_blur

    det = bigan_tiny
    m = det.model_.eval()
    x = _images(make_defects(4, 4, size=16, seed=7), 8)
    with torch.no_grad():
        xt = m.prep(x)
        z = m.E(xt)
        rec = m.G(z)
        fx, fr = m.D.features(xt, z), m.D.features(rec, z)  # the critic's last hidden layer
    residual = (xt - rec).abs().mean((1, 2, 3))  # mean |x - G(E(x))| over pixels
    feature = (fx - fr).abs().mean(1)  # mean |f(x, E(x)) - f(G(E(x)), E(x))| over features
    expect = 0.6 * residual + 0.4 * feature
    # each term is far above the tolerance below (the feature term is the smaller, ~1 %)
    assert (0.4 * feature > 1e-3 * expect).all() and (feature > 0).all()
    np.testing.assert_allclose(det.score(x), expect.numpy(), rtol=1e-5, atol=1e-7)
    # map: |x - G(E(x))| averaged over channels, halved to [0, 1] units, blurred (sigma 1)
    expect_map = gaussian_blur((xt - rec).abs().mean(1) / 2, 1.0).numpy()
    np.testing.assert_allclose(det.anomaly_map(x), expect_map, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["anogan", "bigan"])
def test_training_is_finite_logged_and_repeatable(name, small_train):
    params = {**fast_params(name), "epochs": 2, "batch_size": 16, "width": 8}
    a = oneclass.create(name, **params).fit(small_train)
    b = oneclass.create(name, **params).fit(small_train)
    hist = [h for h in a.history_ if h["phase"] == "train"]
    assert [h["epoch"] for h in hist] == [1, 2]
    keys = {"anogan": {"loss_d", "loss_g"},
            "bigan": {"loss_d", "loss_ge", "wasserstein", "gp", "feature_l2"}}[name]
    for h in hist:
        assert keys <= set(h)
        assert all(math.isfinite(h[k]) for k in keys)
    assert [{k: h[k] for k in keys} for h in hist] == \
        [{k: h[k] for k in keys} for h in b.history_ if h["phase"] == "train"]


def test_gradient_penalty_is_zero_for_a_unit_gradient_critic():
    class Linear(torch.nn.Module):
        def forward(self, x, z):  # gradient (0.6, 0.8) over (x, z): norm 1
            return 0.6 * x.flatten(1)[:, 0] + 0.8 * z[:, 0]

    real = (torch.randn(4, 1, 3, 3), torch.randn(4, 2))
    fake = (torch.randn(4, 1, 3, 3), torch.randn(4, 2))
    assert gradient_penalty(Linear(), real, fake).item() == pytest.approx(0.0, abs=1e-6)


def test_gradient_penalty_reaches_the_critics_weights():
    # the penalty is a function of D's input gradient: without create_graph it would give
    # D's weights no gradient at all
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(2.0))

        def forward(self, x, z):  # gradient norm |w| over (x, z): penalty (|w| - 1)^2 = 1
            return self.w * (0.6 * x.flatten(1)[:, 0] + 0.8 * z[:, 0])

    D = Scaled()
    real = (torch.randn(4, 1, 3, 3), torch.randn(4, 2))
    fake = (torch.randn(4, 1, 3, 3), torch.randn(4, 2))
    gp = gradient_penalty(D, real, fake)
    assert gp.item() == pytest.approx(1.0, abs=1e-5)
    gp.backward()
    assert D.w.grad.item() == pytest.approx(2.0, abs=1e-4)  # d/dw (w - 1)^2 at w = 2


def test_report_shows_samples_and_reconstructions(mvtec_dir, tmp_path):
    run = tmp_path / "run"
    code = main(["train", "--method", "bigan", "--data", str(mvtec_dir), "--out", str(run),
                 "--epochs", "1", "--set", "width=8", "--set", "batch_size=16", "-q"])
    assert code == 0
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert log and math.isfinite(log[-1]["loss_ge"])
    det = oneclass.load(run / "model")
    figs = det.report_figures(make_defects(4, 4, size=24, seed=5))
    assert len(figs) == 2
    for img in figs.values():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.std() > 0
    assert main(["report", str(run), "--top", "2"]) == 0
    html = (run / "report.html").read_text()
    assert 'id="samples"' in html and "generated samples" in html and "reconstructions" in html


def test_bf16_search_tracks_fp32():
    det = _untrained_anogan(search_steps=10)
    x = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    x = x * torch.linspace(0.2, 1.0, 6).view(6, 1, 1, 1)  # losses far apart
    full = det.search(x).loss
    det.precision = "bf16"
    half = det.search(x)
    assert half.loss.dtype == torch.float32 and half.rec.dtype == torch.float32
    assert not torch.equal(half.loss, full)  # bf16 did run: its rounding shows
    # the bf16 search moves G(z) as fp32 does (a cached bf16 copy of z once froze it at the
    # start while z itself moved)
    start = det.search(x, steps=0).loss
    assert (half.loss < start - 0.5 * (start - full)).all()
    # bf16 rounding of G(z) moves the loss by well under a per cent here; the ranking stays
    np.testing.assert_allclose(half.loss.numpy(), full.numpy(), rtol=0.02)
    assert np.array_equal(np.argsort(half.loss.numpy()), np.argsort(full.numpy()))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_search_in_threads_gives_each_image_its_own_result(precision):
    det = _untrained_anogan(search_steps=5, precision=precision, search_threads=1,
                            search_part=0)
    x = torch.rand(7, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each part runs below (bf16 kernels round by thread count)
    try:
        alone = [det.search(x[i]) for i in (slice(0, 3), slice(3, 5), slice(5, 7))]
    finally:
        torch.set_num_threads(threads)
    whole = det.search(x)
    det.search_threads = 3  # parts of 3, 2 and 2 images, searched side by side
    threads_before = torch.get_num_threads()
    parts = det.search(x)
    assert torch.get_num_threads() == threads_before  # the process setting is restored
    assert all(p.requires_grad for p in det.model_.parameters())  # weight flags restored
    assert parts.loss.dtype == torch.float32 and parts.loss.shape == (7,)
    assert parts.z.shape == (7, det.z_dim) and parts.rec.shape == x.shape
    # each part gets what it gets searched on its own
    for field in ("loss", "z", "rec"):
        expect = torch.cat([getattr(a, field) for a in alone])
        np.testing.assert_allclose(getattr(parts, field).numpy(), expect.numpy(), rtol=1e-5,
                                   atol=1e-6)
    # and about what the whole batch gets: batch-size-dependent kernels round differently
    # (bf16 by a few per cent)
    np.testing.assert_allclose(parts.loss.numpy(), whole.loss.numpy(),
                               rtol=5e-2 if precision == "bf16" else 1e-4)


def test_search_threads_default_to_one_part_per_cpu_thread():
    from oneclass.methods.anogan import search_threads

    n = torch.get_num_threads()
    assert search_threads(1, torch.device("cpu")) == 1
    assert search_threads(32 * n + 5, torch.device("cpu")) == n
    assert search_threads(64, torch.device("cpu"), min_part=64) == 1
    assert search_threads(10_000, torch.device("cuda")) == 1
    with pytest.raises(ConfigError, match="search_threads"):
        oneclass.create("anogan", search_threads=-1)._check_params()


def test_search_speed_rows_compare_batched_with_one_at_a_time():
    from oneclass.methods.anogan import AnoGAN
    from oneclass.speed import anogan_search_rows

    assert AnoGAN().score_batch_size == 256  # scoring searches this many images together
    (row,) = anogan_search_rows(steps=2, batch=4, single=1, shapes=((1, 16, 16),),
                                precisions=("fp32",), flops=True)
    assert row["net"] == "anogan search 16x16x1" and row["batch"] == 4 and row["steps"] == 2
    assert float(row["batched ms/img"]) > 0 and float(row["one-at-a-time ms/img"]) > 0
    assert row["speed-up"].endswith("x") and row["one-at-a-time layout"] in ("channels-last", "contiguous")
    assert row["parts"] == 1  # 4 images: too few to split
    assert row["speed-up vs fastest one-at-a-time"] == row["speed-up"]  # one precision only


def test_search_flops_count_forward_and_input_gradients_of_g_and_d():
    from torch.utils.flop_counter import FlopCounterMode

    from oneclass.speed import anogan_search_flops, search_limits

    det = _untrained_anogan(shape=(1, 28, 28))
    m = det.model_
    with FlopCounterMode(display=False) as fc:
        m.D.features(m.G(torch.zeros(1, det.z_dim)))
    forward = fc.get_total_flops()
    # per step: the forward of G and D, and the input gradients, which cost as much again
    # (weights get none)
    assert anogan_search_flops(det, steps=10) == pytest.approx(10 * 2 * forward, rel=0.02)
    rows = [{"precision": "fp32", "GFLOP/img": 1.0, "batched ms/img": "20.0",
             "one-at-a-time ms/img": "300.0"}]
    # 10 ms per image at the limit, the larger of the rates seen
    assert search_limits(rows, [{"fp32": 80e9, "bf16": 1.0}, {"fp32": 100e9, "bf16": 1.0}]) == {
        "fp32": 100e9, "bf16": 1.0}
    assert rows[0]["batched % peak"] == 50.0 and rows[0]["speed-up at peak"] == "30.0x"


def test_weight_ema_averages_recent_weights_and_warms_up():
    from oneclass.methods._gan import WeightEMA

    m = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(0.0)
    ema = WeightEMA(m, decay=0.5)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m)  # warm-up: d = min(0.5, 2 / 11) -> 0 + (1 - 2/11) * 1
    assert ema.shadow["weight"].item() == pytest.approx(9 / 11)
    for _ in range(40):
        ema.update(m)
    assert ema.shadow["weight"].item() == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        m.weight.fill_(3.0)
    ema.update(m)  # decay 0.5 now: halfway
    assert ema.shadow["weight"].item() == pytest.approx(2.0, abs=1e-6)
    other = torch.nn.Linear(1, 1, bias=False)
    ema.copy_to(other)
    assert other.weight.item() == pytest.approx(2.0, abs=1e-6)
    state = ema.state_dict()
    fresh = WeightEMA(other, decay=0.5)
    fresh.load_state_dict(state)
    assert fresh.updates == ema.updates and torch.equal(fresh.shadow["weight"], ema.shadow["weight"])


def test_anogan_g_ema_makes_the_generator_the_average(small_train):
    params = {**fast_params("anogan"), "epochs": 2, "batch_size": 16, "width": 8}
    plain = oneclass.create("anogan", **params).fit(small_train)
    avg = oneclass.create("anogan", g_ema=0.9, **params).fit(small_train)
    # same training (the average does not feed back), different final generator
    assert [h["loss_g"] for h in plain.history_] == [h["loss_g"] for h in avg.history_]
    gp, ga = plain.model_.G.state_dict(), avg.model_.G.state_dict()
    assert any(not torch.equal(gp[k], ga[k]) for k in gp if gp[k].is_floating_point())
    dp, da = plain.model_.D.state_dict(), avg.model_.D.state_dict()
    assert all(torch.equal(dp[k], da[k]) for k in dp)
    assert np.isfinite(avg.score(small_train)).all()
    with pytest.raises(ConfigError, match="g_ema"):
        oneclass.create("anogan", g_ema=1.0)._check_params()


def test_tanh_scale_with_gcn_maps_training_images_onto_the_full_range():
    from oneclass.methods._gan import TanhScale

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8))
    plain = TanhScale(False)
    xf = x.float() / 255
    assert torch.allclose(plain(xf), xf * 2 - 1)
    scale = TanhScale(True)
    scale.fit(x)
    y = scale(xf)
    assert y.min().item() == pytest.approx(-1.0, abs=1e-5)
    assert y.max().item() == pytest.approx(1.0, abs=1e-5)
    # contrast is normalised away: a dimmed copy of an image maps to the same values
    dim = (xf * 0.5 + 0.25)
    assert torch.allclose(scale(dim), y, atol=1e-5)


@pytest.mark.parametrize("name", ["anogan", "bigan"])
def test_gan_gcn_trains_saves_and_loads(name, small_train, tmp_path):
    params = {**fast_params(name), "epochs": 1, "batch_size": 16, "width": 8, "gcn": True}
    det = oneclass.create(name, **params).fit(small_train)
    assert float(det.model_.prep.hi) > float(det.model_.prep.lo)
    s = det.score(small_train)
    assert np.isfinite(s).all()
    det.save(tmp_path / "m")
    back = oneclass.load(tmp_path / "m")
    assert back.model_.prep.gcn
    np.testing.assert_allclose(back.score(small_train), s, rtol=1e-5, atol=1e-5)


def test_scoring_params_change_after_fit_and_only_they(anogan_fitted, small_train, caplog):
    import copy

    det = copy.deepcopy(anogan_fitted)
    x = make_defects(4, 4, size=16, seed=7)
    before = det.score(x)  # fills the search cache
    det.set_scoring_params(search_steps=int(det.search_steps) + 7)
    after = det.score(x)
    assert not np.allclose(before, after)  # the cached search of the old settings is dropped
    np.testing.assert_allclose(after, det.search(det.batches(x).__next__()).loss.numpy(),
                               rtol=1e-5)
    assert "former scoring settings" in caplog.text  # the fitted threshold may be stale
    with pytest.raises(ConfigError, match="epochs cannot change after training"):
        det.set_scoring_params(epochs=3)
    steps = det.search_steps
    with pytest.raises(ConfigError, match="search_steps"):
        det.set_scoring_params(search_steps=-1)
    assert det.search_steps == steps  # a refused value leaves the old one
    det.set_scoring_params(search_steps=str(steps + 1))  # --set strings are read by type
    assert det.search_steps == steps + 1


def test_gan_epochs_default_to_a_number_of_updates():
    # 25 epochs were 50 updates on 180 images and 23,000 on 60,000: a GAN needs updates
    det = oneclass.create("anogan")
    assert det.epochs is None and det.batch_size == 64 and det.train_steps == 2000
    assert det._train_epochs(180) == 1000  # 2 full batches an epoch (the short one is dropped)
    assert det._train_epochs(60_000) == 3  # 937 batches an epoch
    assert det._train_epochs(10) == 2000  # one short batch an epoch
    assert oneclass.create("bigan", epochs=7)._train_epochs(180) == 7  # a set number is kept
    # BiGAN's default: 1000 updates of G and E, each after critic_iters (2) critic updates
    bigan = oneclass.create("bigan")
    assert bigan.train_steps * bigan.critic_iters == 2000
    with pytest.raises(ConfigError, match="train_steps"):
        oneclass.create("bigan", train_steps=0)
    with pytest.raises(ConfigError, match="epochs must be a number"):
        oneclass.create("deep_svdd", epochs=None)


@pytest.mark.parametrize("name", ["anogan", "bigan"])
def test_gan_fit_without_epochs_makes_train_steps_updates(name, small_train):
    det = oneclass.create(name, width=8, batch_size=16, holdout=0.0, train_steps=5)
    det.fit(small_train)  # 40 images: 2 batches an epoch, so 3 epochs for 5 updates
    assert [h["epoch"] for h in det.history_ if h["phase"] == "train"] == [1, 2, 3]
    assert det.train_epochs_ == 3 and det._fitted_extra()["train_epochs"] == 3  # in model.json


def test_the_generator_trains_on_a_batch_of_one():
    """A last batch (or DDP slice) of one image failed in the generator's BatchNorm1d."""
    g = Generator(16, 1, (28, 28), 8).train()
    out = g(torch.randn(1, 16))
    assert out.shape == (1, 1, 28, 28) and torch.isfinite(out).all()


def test_training_draws_differ_between_ranks_and_are_unchanged_in_one_process(monkeypatch):
    import oneclass.train as train_mod

    def draws(rank, world):
        monkeypatch.setattr(train_mod, "rank_world", lambda: (rank, world))
        torch.manual_seed(3)  # the loop seeds every rank alike
        return train_mod.rank_draw(torch.randn, 4, 5, device=torch.device("cpu"))

    torch.manual_seed(3)
    expect = torch.randn(4, 5)
    assert torch.equal(draws(0, 1), expect)  # one process: the global generator, as before
    a, b = draws(0, 2), draws(1, 2)
    assert not torch.equal(a, b)  # each rank its own codes
    assert torch.equal(a, draws(0, 2))  # and repeatable


def test_search_parts_and_threads_come_from_the_settings_not_the_batch(monkeypatch):
    import oneclass.methods.anogan as anogan_mod

    det = _untrained_anogan(search_steps=1)
    assert det.search_part_size(torch.device("cpu")) == 32
    assert det.search_part_size(torch.device("cuda")) == 256  # one part a batch on GPUs
    seen = []
    real = anogan_mod.latent_search
    monkeypatch.setattr(anogan_mod, "latent_search",
                        lambda *a, **k: seen.append((k["part"], k["threads"])) or real(*a, **k))
    saved = torch.get_num_threads()
    try:
        for threads in (2, 16):
            torch.set_num_threads(threads)
            for n in (1, 40):
                det.search(torch.rand(n, 1, 16, 16))
    finally:
        torch.set_num_threads(saved)
    # 2 threads: two parts at once; 16: the 8 parts of a full batch of 256, 2 threads each
    assert seen == [(32, 2), (32, 2), (32, 8), (32, 8)]
    with pytest.raises(ConfigError, match="search_part"):
        oneclass.create("anogan", search_part=-1)
