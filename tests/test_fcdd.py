"""FCDD: the paper's objective, receptive fields, heatmap upsampling, confetti noise."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import oneclass
from oneclass.anomalies import AnomalySource, confetti
from oneclass.data.synthetic import make_defects
from oneclass.heatmaps import receptive_upsample
from oneclass.methods.fcdd import fcdd_loss, fcdd_pixel_loss, pseudo_huber
from oneclass.metrics import auroc
from oneclass.nets import fcdd_nets
from oneclass.nets.receptive import ReceptiveField, probe_receptive_field, receptive_field


def test_pseudo_huber_matches_the_formula():
    phi = torch.tensor([0.0, 1.0, -2.0, 3.0])
    expected = torch.tensor([0.0, math.sqrt(2) - 1, math.sqrt(5) - 1, math.sqrt(10) - 1])
    assert torch.allclose(pseudo_huber(phi), expected)


def test_fcdd_loss_normal_and_anomalous():
    A = torch.tensor([[[0.5, 1.5], [1.0, 1.0]], [[0.2, 0.2], [0.2, 0.6]]])
    labels = torch.tensor([0, 1])
    loss = fcdd_loss(A, labels)
    m1 = (0.2 * 3 + 0.6) / 4
    assert torch.isclose(loss[0], torch.tensor(1.0))  # mean of A for a normal image
    assert torch.isclose(loss[1], torch.tensor(-math.log(1 - math.exp(-m1))))


def test_fcdd_pixel_loss_matches_eq5():
    A = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    gt = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    normal = (1.0 + 3.0) / 4
    anom = (2.0 + 4.0) / 4
    expected = normal - math.log(1 - math.exp(-anom))
    assert torch.isclose(fcdd_pixel_loss(A, gt)[0], torch.tensor(expected))
    # an image without anomalous pixels only pays the normal term
    assert torch.isclose(fcdd_pixel_loss(A, torch.zeros_like(gt))[0], A.mean())


NETS = [("cnn28", (1, 60, 60), "zeros"), ("cnn32", (3, 64, 64), "zeros"),
        ("cnn224", (3, 160, 160), "zeros"), ("cnn28", (1, 60, 60), "reflect"),
        ("cnn32", (3, 64, 64), "reflect"), ("cnn224", (3, 160, 160), "reflect"),
        ("effnet", (3, 200, 200), "zeros")]


@pytest.mark.parametrize("name, shape, padding", NETS)
def test_receptive_field_matches_a_gradient_probe(name, shape, padding):
    torch.manual_seed(0)
    net = fcdd_nets.build(name, shape[0], shape[1:], pretrained=False, padding=padding)
    rf = receptive_field(net, shape)
    (top, bottom), (left, right) = probe_receptive_field(net, shape)
    with torch.no_grad():
        out = net.eval()(torch.zeros(1, *shape))
    u, v = out.shape[-2] // 2, out.shape[-1] // 2
    # extent and centre of the central unit's field agree with the composed recurrences
    assert bottom - top + 1 == rf.r[0] and right - left + 1 == rf.r[1]
    assert (top + bottom) / 2 == rf.s[0] + u * rf.j[0]
    assert (left + right) / 2 == rf.s[1] + v * rf.j[1]


def test_upsampled_map_has_input_size_and_peaks_at_the_field_centre():
    rf = ReceptiveField(r=(15, 15), j=(4, 4), s=(1.5, 1.5))
    A = torch.zeros(1, 7, 7)
    A[0, 2, 5] = 1.0
    up = receptive_upsample(A, rf, (28, 28), sigma=3.0)
    assert up.shape == (1, 28, 28)
    # the field centre is (1.5 + 2 * 4, 1.5 + 5 * 4) = (9.5, 21.5): between pixels 9/10, 21/22
    peak = np.unravel_index(int(up[0].argmax()), (28, 28))
    assert peak[0] in (9, 10) and peak[1] in (21, 22)
    assert torch.isclose(up[0, 9, 21], up[0, 10, 22])  # symmetric about the centre
    assert up[0, 0, 0] == 0  # outside the field


def test_upsampling_equals_a_strided_transposed_convolution():
    # With an integer centre the product form is exactly conv_transpose2d with the kernel.
    r, j, s, sigma = 9, 4, 4.0, 2.0
    rf = ReceptiveField(r=(r, r), j=(j, j), s=(s, s))
    A = torch.rand(2, 5, 5)
    up = receptive_upsample(A, rf, (20, 20), sigma)
    t = torch.arange(r, dtype=torch.float32) - (r - 1) / 2
    k1 = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = (k1[:, None] * k1[None, :])[None, None]
    full = F.conv_transpose2d(A[:, None], kernel, stride=j)[:, 0]
    off = int((r - 1) / 2 - s)  # shift so that tap (r-1)/2 of unit 0 lands on pixel s
    ref = full[:, off:off + 20, off:off + 20] if off >= 0 else F.pad(full, (-off, 0, -off, 0))[:, :20, :20]
    assert torch.allclose(up, ref, atol=1e-6)


def test_confetti_changes_pixels_inside_its_mask():
    g = torch.Generator().manual_seed(0)
    x = torch.full((6, 3, 48, 48), 0.5)
    xa, mask = confetti(x, g)
    assert mask.shape == (6, 1, 48, 48) and mask.dtype == torch.bool
    assert (mask.flatten(1).sum(1) > 0).all()
    diff = (xa - x).abs().amax(1, keepdim=True)
    assert (diff[mask] > 0).all()  # the mask holds the soft edges too
    assert (diff[mask] > 0.1).float().mean() > 0.5
    far = ~F.max_pool2d(mask.float(), 9, 1, 4).bool()  # well away from any blob
    assert diff[far].max() < 1e-3
    g2 = torch.Generator().manual_seed(0)
    assert torch.equal(confetti(x, g2)[0], xa)


def test_confetti_blends_each_blob_into_the_image_without_a_halo():
    # outside the blobs' masks every pixel lies between the background and a blob colour (the
    # soft edge once blended towards black: pixels darker than both, outside the mask)
    x = torch.full((50, 1, 40, 40), 0.5)
    xa, mask = confetti(x, torch.Generator().manual_seed(0), max_blobs=1)
    for i in range(len(x)):
        inside = xa[i][mask[i]]
        colour = float(inside.median())
        lo, hi = min(0.5, colour) - 1e-4, max(0.5, colour) + 1e-4
        outside = xa[i][~mask[i]]
        assert ((outside >= lo) & (outside <= hi)).all(), (i, colour, float(outside.min()))


def test_anomaly_source_uses_real_anomalies_with_masks():
    xr = torch.full((2, 1, 8, 8), 200, dtype=torch.uint8)
    mr = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    mr[:, :, 2:4, 2:4] = 1
    src = AnomalySource((xr, mr, torch.tensor([True, True])), None, noise=False)
    out, masks, has = src.draw(torch.zeros(3, 1, 8, 8), torch.Generator().manual_seed(0))
    assert src.kinds == ["real"] and has.all()
    assert torch.allclose(out, torch.full_like(out, 200 / 255))
    assert masks.sum() == 3 * 4


def _fcdd(**kw):
    return oneclass.create("fcdd", **{"epochs": 6, "batch_size": 16, "net": "cnn224", **kw})


def _spy_on_tasks(monkeypatch) -> list:
    """The training tasks that fits create from now on, in a list."""
    from oneclass.methods import fcdd as fcdd_mod

    tasks = []
    init = fcdd_mod._FCDDTask.__init__

    def spy(self, det, source, epochs):
        init(self, det, source, epochs)
        tasks.append(self)

    monkeypatch.setattr(fcdd_mod._FCDDTask, "__init__", spy)
    return tasks


def test_fcdd_default_epochs_make_at_least_min_train_steps_updates():
    # 40 epochs of a 36-image set were 40 updates (one batch of 32 an epoch): far short of
    # what the net learns in 200 (docs/benchmark-notes.md); sets of 160+ images keep 40
    det = oneclass.create("fcdd")
    assert det.epochs is None and det.batch_size == 32 and det.min_train_steps == 200
    assert det._train_epochs(36) == 200  # one full batch an epoch (the short one is dropped)
    assert det._train_epochs(100) == 67  # 3 batches an epoch
    assert det._train_epochs(160) == 40 and det._train_epochs(60_000) == 40
    assert det._train_epochs(20) == 200  # no full batch: one short one an epoch
    assert oneclass.create("fcdd", epochs=7)._train_epochs(36) == 7  # a set number is kept
    assert oneclass.create("fcdd", min_train_steps=0)._train_epochs(36) == 40
    with pytest.raises(oneclass.errors.ConfigError, match="min_train_steps"):
        oneclass.create("fcdd", min_train_steps=-1)


def test_fcdd_fit_without_epochs_runs_them_and_anneals_over_them(defects_train, monkeypatch,
                                                                 tmp_path):
    from oneclass.methods import fcdd as fcdd_mod

    monkeypatch.setattr(fcdd_mod, "_DEFAULT_EPOCHS", 2)
    tasks = _spy_on_tasks(monkeypatch)
    n = len(defects_train)  # 16 images a batch, holdout none: 3 updates need this many epochs
    det = _fcdd(epochs=None, min_train_steps=3 * (n // 16) + 1, holdout=0.0).fit(defects_train)
    assert [h["epoch"] for h in det.history_ if h["phase"] == "train"] == [1, 2, 3, 4]
    (task,) = tasks
    assert task.schedulers["fcdd"].T_max == 4  # the cosine schedule ends with the training
    # model.json says how many epochs ran (its params keep epochs: null)
    det.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["params"]["epochs"] is None and meta["fitted"]["train_epochs"] == 4
    assert oneclass.load(tmp_path / "m").train_epochs_ == 4


def test_fcdd_localises_defects(defects_train, defects_test):
    det = _fcdd().fit(defects_train)
    scores = det.score(defects_test)
    assert auroc(defects_test.labels, scores) > 0.7
    maps = det.anomaly_map(defects_test)
    assert maps.shape == (len(defects_test), 24, 24)
    masks = np.stack([defects_test.read(i).mask for i in range(len(defects_test))])
    assert auroc(masks.ravel().astype(int), maps.ravel()) > 0.6


def test_fcdd_refuses_to_train_without_any_anomaly_source(defects_train):
    with pytest.raises(oneclass.errors.ConfigError, match="needs anomalies"):
        _fcdd(noise="none").fit(defects_train)


def test_gcn_with_the_pretrained_trunk_is_refused_not_ignored(defects_train):
    with pytest.raises(oneclass.errors.ConfigError, match="gcn applies to the from-scratch"):
        _fcdd(net="effnet", gcn=True).fit(defects_train)


def test_labeled_anomalies_with_masks_are_used(defects_train, defects_test, monkeypatch):
    from oneclass.data import concat

    tasks = _spy_on_tasks(monkeypatch)
    labeled = defects_test.subset(np.flatnonzero(defects_test.labels == 1)[:5])
    det = _fcdd(noise="none").fit(concat(defects_train, labeled))
    assert det.anomaly_kinds_ == ["real"]
    # their masks reach the training: the pixel-wise objective, every image marked as masked
    (task,) = tasks
    assert task.pixel_mode
    xa, ma, ha = task.source.real
    assert len(xa) == 5 and bool(ha.all()) and all(m.any() for m in ma)
    rest = defects_test.subset(np.r_[np.flatnonzero(defects_test.labels == 0),
                                     np.flatnonzero(defects_test.labels == 1)[5:]])
    assert auroc(rest.labels, det.score(rest)) > 0.6


def test_with_masked_anomalies_every_image_takes_its_loss_on_the_upsampled_map(monkeypatch):
    """As the reference in this setting: normal images' mean A over the upsampled map, the
    masked anomalies' pixel loss on the same scale."""
    from oneclass.methods import fcdd as fcdd_mod

    det = _fcdd(epochs=1, size=24)
    det.model_ = det._build((1, 24, 24))
    det.device_ = torch.device("cpu")
    xr = torch.full((2, 1, 24, 24), 200, dtype=torch.uint8)
    mr = torch.zeros(2, 1, 24, 24, dtype=torch.uint8)
    mr[:, :, 4:9, 4:9] = 1
    masked = AnomalySource((xr, mr, torch.tensor([True, True])), None, noise=False)
    plain = AnomalySource((xr, None, torch.tensor([False, False])), None, noise=False)
    assert fcdd_mod._FCDDTask(det, masked, 1).pixel_mode
    assert not fcdd_mod._FCDDTask(det, plain, 1).pixel_mode
    seen = []
    real_loss = fcdd_mod.fcdd_loss
    monkeypatch.setattr(fcdd_mod, "fcdd_loss", lambda A, y: seen.append(A.shape) or real_loss(A, y))
    x = torch.randint(0, 256, (8, 1, 24, 24), dtype=torch.uint8)
    fcdd_mod._FCDDTask(det, masked, 1).step([x])
    fcdd_mod._FCDDTask(det, plain, 1).step([x])
    assert seen[0] == (8, 24, 24)  # upsampled: the image size
    assert seen[1][1:] != (24, 24)  # the low-resolution map


def test_outlier_exposure_images_are_used(defects_train):
    from oneclass.data.base import ArraySet

    rng = np.random.default_rng(0)
    oe = ArraySet((rng.random((40, 24, 24)) * 255).astype(np.uint8))
    det = _fcdd(noise="none").fit(defects_train, outliers=oe)
    assert det.anomaly_kinds_ == ["outliers"]
    assert det.score(oe).mean() > det.score(defects_train).mean()


def test_scratches_are_thin_lines_that_change_their_pixels():
    from oneclass.anomalies import scratches, synthetic

    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 1, 64, 64) * 0.2 + 0.4
    xa, mask = scratches(x, g)
    assert (mask.flatten(1).sum(1) > 0).all()
    assert mask.float().mean() < 0.1  # thin
    diff = (xa - x).abs()
    assert (diff[mask] >= 0.2).float().mean() > 0.9
    assert torch.equal(xa[~mask.expand_as(xa)], x[~mask.expand_as(x)])
    xm, mm = synthetic(x, torch.Generator().manual_seed(2), "mixed")
    assert xm.shape == x.shape and (mm.flatten(1).sum(1) > 0).all()


@pytest.mark.parametrize("background", [0.0, 1.0])
def test_scratches_show_on_black_and_white_backgrounds(background):
    # a line drawn towards the near limit was clamped to the background colour: masked and
    # labeled anomalous, yet not one pixel changed
    from oneclass.anomalies import scratches

    x = torch.full((200, 1, 28, 28), background)
    xa, mask = scratches(x, torch.Generator().manual_seed(0))
    diff = (xa - x).abs()
    assert (diff[mask] >= 0.25 - 1e-6).all()


def test_bf16_inference_stays_close_to_fp32(defects_train, defects_test):
    det = _fcdd(epochs=2).fit(defects_train)
    s32 = det.score(defects_test)
    det.precision = "bf16"
    s16 = det.score(defects_test)
    assert np.isfinite(s16).all()
    assert not np.array_equal(s16, s32)  # bf16 did run: its rounding shows
    assert np.corrcoef(s32, s16)[0, 1] > 0.98


def test_bf16_training_runs_the_net_in_bf16_and_still_learns(defects_train, defects_test,
                                                             monkeypatch):
    from oneclass.nets import fcdd_nets

    dtypes = []
    forward = fcdd_nets.CNN224.forward

    def spy(self, x):
        out = forward(self, x)
        if torch.is_grad_enabled():  # training steps only
            dtypes.append(out.dtype)
        return out

    monkeypatch.setattr(fcdd_nets.CNN224, "forward", spy)
    det = _fcdd(train_precision="bf16").fit(defects_train)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in det.model_.parameters())  # weights stay fp32
    assert auroc(defects_test.labels, det.score(defects_test)) > 0.7
    with pytest.raises(oneclass.errors.ConfigError, match="train_precision must be one of"):
        _fcdd(train_precision="fp16")


def test_cpu_inference_in_chunks_equals_one_pass(monkeypatch):
    from oneclass.methods import fcdd

    calls: list[int] = []
    net = torch.nn.Conv2d(1, 1, 3)

    def model(x):
        calls.append(len(x))
        return net(x)

    x = torch.rand(10, 1, 8, 8)
    monkeypatch.setattr(fcdd, "CPU_CHUNK_PIXELS", 3 * 8 * 8)  # 3 images per chunk
    with torch.no_grad():
        out = fcdd.chunked(model, x)
        assert calls == [3, 3, 3, 1]
        assert torch.allclose(out, net(x), atol=1e-6)
        monkeypatch.setattr(fcdd, "CPU_CHUNK_PIXELS", 1)  # never below one image
        calls.clear()
        fcdd.chunked(model, x[:2])
        assert calls == [1, 1]


def test_position_map_norm_divides_by_the_mean_normal_map(defects_train, defects_test, tmp_path):
    det = _fcdd(epochs=2, map_norm="position", holdout=0.0).fit(defects_train)
    ref = det.model_.map_ref
    assert ref.shape == (24, 24) and not torch.allclose(ref, torch.ones_like(ref))
    x = torch.stack([torch.from_numpy(np.atleast_3d(defects_train.read(i).image).transpose(2, 0, 1))
                     for i in range(len(defects_train))]).float() / 255.0
    with torch.no_grad():
        A = det.model_(x)
        raw = receptive_upsample(A, det.model_.rf, (24, 24), det._sigma())
        # map_ref: the mean map of the normal training images plus a tenth of its mean
        mean = raw.mean(0)
        assert torch.allclose(ref, mean + 0.1 * mean.mean(), rtol=1e-4)
        # the heatmap is the raw upsampled map over the reference; scores are unchanged
        assert np.allclose(det.anomaly_map(x[:4]), (raw[:4] / ref).numpy(), rtol=1e-5)
        assert np.allclose(det.score(x[:4]), A[:4].flatten(1).mean(1).numpy(), rtol=1e-5)
    # saved with the weights; an explicit map_norm=none model has no reference
    det.save(tmp_path / "m")
    back = oneclass.load(tmp_path / "m")
    assert back.map_norm == "position"
    assert np.array_equal(back.anomaly_map(defects_test), det.anomaly_map(defects_test))
    plain = _fcdd(epochs=1).fit(defects_train)
    assert not hasattr(plain.model_, "map_ref")
    plain.save(tmp_path / "p")
    assert oneclass.load(tmp_path / "p").map_norm == "none"


def test_map_norm_is_checked():
    with pytest.raises(oneclass.errors.ConfigError, match="map_norm must be one of"):
        _fcdd(map_norm="global")


def test_reflect_padding_is_used_and_saved_and_old_models_keep_zeros(defects_train, tmp_path):
    import json

    convs = lambda m: [c for c in m.modules()  # noqa: E731 (the padded ones: not the 1x1 head)
                       if isinstance(c, torch.nn.Conv2d) and max(c.padding) > 0]
    det = _fcdd(epochs=1, padding="reflect").fit(defects_train)
    assert {c.padding_mode for c in convs(det.model_)} == {"reflect"}
    det.save(tmp_path / "r")
    back = oneclass.load(tmp_path / "r")
    assert {c.padding_mode for c in convs(back.model_)} == {"reflect"}
    x = torch.rand(3, 1, 24, 24)
    assert np.array_equal(back.score(x), det.score(x))
    with pytest.raises(oneclass.errors.ConfigError, match="padding must be one of"):
        _fcdd(padding="circle")
    # a model saved before the parameters existed (neither in model.json) used zero padding
    # and no map reference, which are today's defaults
    zero = _fcdd(epochs=1).fit(defects_train)
    assert {c.padding_mode for c in convs(zero.model_)} == {"zeros"}
    zero.save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "model.json").read_text())
    del meta["params"]["padding"], meta["params"]["map_norm"]
    (tmp_path / "old" / "model.json").write_text(json.dumps(meta))
    old = oneclass.load(tmp_path / "old")
    assert old.padding == "zeros" and old.map_norm == "none"
    assert np.array_equal(old.score(x), zero.score(x))


def test_an_ensemble_averages_its_members_and_trains_each_on_its_own_batch(
        defects_train, defects_test, tmp_path):
    from oneclass.methods.fcdd import pseudo_huber as ph

    det = _fcdd(members=3, map_norm="position").fit(defects_train)
    model = det.model_
    nets = model.members
    assert len(nets) == 3 and not hasattr(model, "net")
    assert model.rf == _fcdd(epochs=1).fit(defects_train).model_.rf  # same architecture
    w = [next(n.parameters()) for n in nets]
    assert not torch.allclose(w[0], w[1]) and not torch.allclose(w[1], w[2])
    x = torch.rand(4, 1, 24, 24)
    with torch.no_grad():
        each = [ph(n(model.norm(x))[:, 0]) for n in nets]
        assert torch.allclose(model(x), torch.stack(each).mean(0), atol=1e-6)
        # training: member k sees the k-th of the stacked batches
        xs = torch.rand(12, 1, 24, 24)
        split = model(xs, split=True)
        assert split.shape == (3, 4, 3, 3)
        for k, n in enumerate(nets):
            assert torch.allclose(split[k], ph(n(model.norm(xs[4 * k:4 * k + 4]))[:, 0]), atol=1e-6)
    assert auroc(defects_test.labels, det.score(defects_test)) > 0.7
    det.save(tmp_path / "e")
    back = oneclass.load(tmp_path / "e")
    assert back.members == 3
    assert np.array_equal(back.score(defects_test), det.score(defects_test))
    assert np.array_equal(back.anomaly_map(defects_test), det.anomaly_map(defects_test))


def test_a_single_model_keeps_its_weight_names_and_members_is_checked(defects_train):
    det = _fcdd(epochs=1).fit(defects_train)
    assert all(k.startswith(("net.", "norm.")) for k in det.model_.state_dict())
    for bad in (0, 1.5):
        with pytest.raises(oneclass.errors.ConfigError, match="members must be"):
            _fcdd(members=bad)


def test_pseudo_huber_is_float32_under_bf16_autocast():
    # in bf16, A = sqrt(phi^2 + 1) - 1 rounds to 0 below about 0.004, and an anomaly whose mean
    # A is 0 gets no gradient from -log(1 - exp(-A))
    phi = torch.full((2, 3, 3), 0.01, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        A = pseudo_huber(phi)
    assert A.dtype == torch.float32
    want = math.sqrt(float(phi[0, 0, 0]) ** 2 + 1) - 1  # about 5e-5
    assert A[0, 0, 0].item() == pytest.approx(want, rel=1e-3) and want > 0
    fcdd_loss(A, torch.tensor([0, 1])).sum().backward()
    assert phi.grad[1].abs().min() > 0  # the anomaly pushes its outputs away


def test_receptive_field_names_string_padding():
    from torch import nn

    from oneclass.nets.receptive import receptive_field

    with pytest.raises(ValueError, match="string padding is not supported"):
        receptive_field(nn.Sequential(nn.Conv2d(1, 1, 3, padding="same")), (1, 8, 8))


def test_pseudo_huber_keeps_small_outputs_in_float32():
    """sqrt(phi^2 + 1) - 1 cancelled to 0 for |phi| below about 2.4e-4: an anomaly whose map
    was that small got a constant loss and no gradient."""
    phi = torch.full((2, 7, 7), 1e-4, requires_grad=True)
    A = pseudo_huber(phi)
    assert A[0, 0, 0].item() == pytest.approx(5e-9, rel=1e-5)
    loss = fcdd_loss(A, torch.tensor([0, 1]))
    assert loss[1].item() == pytest.approx(-math.log(5e-9), rel=1e-4)
    loss.sum().backward()
    assert phi.grad[1].abs().min() > 0


def test_loading_an_effnet_model_does_not_read_the_imagenet_weights(tmp_path, monkeypatch):
    from oneclass.nets.efficientnet_lite import EfficientNetLite0Trunk

    det = _fcdd(net="effnet", epochs=0).fit(make_defects(8, 0, size=32, channels=3, seed=0))
    det.save(tmp_path / "m")

    def refuse(self):
        raise AssertionError("ImageNet weights read while loading a saved model")

    monkeypatch.setattr(EfficientNetLite0Trunk, "load_imagenet", refuse)
    loaded = oneclass.load(tmp_path / "m")
    x = make_defects(2, 0, size=32, channels=3, seed=1)
    assert np.array_equal(loaded.score(x), det.score(x))
    with pytest.raises(AssertionError, match="ImageNet weights read"):
        _fcdd(net="effnet", epochs=0).fit(make_defects(8, 0, size=32, channels=3, seed=0))


def test_bilinear_upsampling_puts_each_value_at_its_fields_centre():
    # stride 8, unit i centred on pixel 8 i (cnn224's field): F.interpolate would put a unit
    # at (i + 0.5) * 8 - 0.5, 3.5 pixels down and right of its field
    from types import SimpleNamespace

    from oneclass.methods.fcdd import _upsample

    model = SimpleNamespace(rf=ReceptiveField(r=(60, 60), j=(8, 8), s=(0.0, 0.0)))
    A = torch.zeros(1, 12, 16)
    A[0, 6, 8] = 1.0
    up = _upsample(A, model, (96, 128), "bilinear", sigma=1.0)
    assert up.shape == (1, 96, 128)
    assert up[0, 48, 64] == 1.0 and up[0].argmax() == 48 * 128 + 64
    assert up[0, 44, 64] == 0.5 and up[0, 48, 60] == 0.5  # half way to the next centre
    const = _upsample(torch.full((1, 12, 16), 3.0), model, (97, 131), "bilinear", sigma=1.0)
    assert torch.allclose(const, torch.full_like(const, 3.0))  # beyond the last centre too


def test_scratches_draw_into_every_image():
    # a line starting on the border and heading out drew nothing, yet its image was labeled
    # anomalous (about 16 in 4000 images with one line each at 28x28)
    from oneclass.anomalies import scratches

    x = torch.full((4000, 1, 28, 28), 0.5)
    xa, mask = scratches(x, torch.Generator().manual_seed(0), max_lines=1)
    assert mask.flatten(1).any(1).all()
    assert ((xa - x).abs().flatten(1).amax(1) >= 0.25 - 1e-6).all()


def test_confetti_masks_every_pixel_it_changes():
    x = torch.full((8, 3, 96, 64), 0.5)
    xa, mask = confetti(x, torch.Generator().manual_seed(0))
    changed = (xa - x).abs().amax(1, keepdim=True) > 1 / 255
    assert not (changed & ~mask).any()


def test_the_receptive_field_probe_leaves_the_net_as_it_was():
    net = fcdd_nets.build("cnn28", 1, (28, 28), pretrained=False)
    net.train()
    probe_receptive_field(net, (1, 28, 28))
    assert net.training and all(p.grad is None for p in net.parameters())


def test_scratches_of_empty_images_return_at_once():
    from oneclass.anomalies import scratches

    for shape in ((2, 1, 0, 5), (2, 1, 5, 0)):
        xa, mask = scratches(torch.zeros(shape), torch.Generator().manual_seed(0))
        assert xa.shape == shape and not mask.any()


def test_an_anomaly_shifted_out_of_the_image_trains_as_normal():
    """A shift can crop a small synthetic anomaly near the border out of the image, mask and
    all; the image left is a normal one and must not keep the anomalous label."""
    import types

    from oneclass.anomalies import AnomalySource
    from oneclass.methods.fcdd import _FCDDTask

    det = types.SimpleNamespace(anomaly_fraction=0.5, augment="shift-flip")
    task = types.SimpleNamespace(det=det, source=AnomalySource(None, None, noise="mixed"))
    x = torch.full((2000, 1, 28, 28), 0.5)  # plain normal images: any change is an anomaly
    xb, labels, masks, has = _FCDDTask._member_batch(task, x, torch.Generator().manual_seed(0))
    changed = (xb - 0.5).abs().flatten(1).amax(1) > 1e-6
    assert (labels == 1).sum() > 900
    drawn = torch.rand(2000, generator=torch.Generator().manual_seed(0)) < 0.5  # as the draw
    assert int(drawn.sum()) > int((labels == 1).sum())  # some were shifted out: the case ran
    assert torch.equal(labels == 1, changed)  # anomalous exactly when the image shows one
    assert not has[labels == 0].any()


def test_nets_train_on_one_image_whose_map_is_one_pixel():
    """A training batch of one image whose feature map is 1x1 has one value per channel:
    batch norm takes its running statistics instead of stopping the training."""
    from oneclass.nets.fcdd_nets import EffNetFCN
    from oneclass.nets.lenet import BatchNorm2d

    net = EffNetFCN(3, stride=8, pretrained=False).train()
    out = net(torch.rand(1, 3, 8, 8))
    out.sum().backward()
    assert out.shape == (1, 1, 1, 1) and torch.isfinite(out).all()
    bn = BatchNorm2d(4, eps=1e-4).train()
    x = torch.randn(1, 4, 1, 1)
    expected = (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None]
                                                                  + bn.eps)
    assert torch.allclose(bn(x), expected)
    y = torch.randn(3, 4, 2, 2)  # more than one value per channel: batch statistics as before
    assert torch.allclose(bn(y), torch.nn.BatchNorm2d(4, eps=1e-4).train()(y))
