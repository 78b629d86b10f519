"""The Detector contract, run over every registered method."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import oneclass
from oneclass.errors import ConfigError, DataError, ModelFileError
from oneclass.metrics import auroc

from .conftest import fast_params

METHODS = oneclass.available()


@pytest.fixture(scope="module", params=METHODS)
def fitted(request, defects_train):
    det = oneclass.create(request.param, **fast_params(request.param))
    det.fit(defects_train)
    return det


def test_registry_lists_methods():
    assert "deep_svdd" in METHODS
    assert METHODS == sorted(METHODS)


def test_unknown_method_names_the_valid_ones():
    with pytest.raises(ConfigError, match="available: .*deep_svdd"):
        oneclass.create("deep_svd")


@pytest.mark.parametrize("name", METHODS)
def test_unknown_parameter_lists_valid_ones(name):
    with pytest.raises(ConfigError, match="unknown parameter.*valid: .*epochs"):
        oneclass.create(name, epochz=3)


def test_scores_and_maps_are_finite_and_informative(fitted, defects_test):
    scores = fitted.score(defects_test)
    assert scores.shape == (len(defects_test),)
    assert np.isfinite(scores).all()
    assert scores.std() > 0, "constant scores: hypersphere collapse"
    maps = fitted.anomaly_map(defects_test.subset(range(6)))
    assert maps.shape == (6, 24, 24)
    assert np.isfinite(maps).all() and maps.std() > 0
    # Trained for a few epochs on textures only, the method must still rank defects higher.
    assert auroc(defects_test.labels, scores) > 0.6


def test_predict_uses_threshold_and_records_its_source(fitted, defects_test):
    scores = fitted.score(defects_test)
    assert np.array_equal(fitted.predict(defects_test), (scores >= fitted.threshold_).astype(int))
    assert "held-back normal images" in fitted.threshold_source_


def test_threshold_does_not_flag_everything_without_anomalies(fitted):
    from oneclass.data.synthetic import make_defects

    normals = make_defects(40, 0, size=24, seed=9)
    assert fitted.predict(normals).mean() < 0.5


def test_holdout_threshold_flags_at_most_the_contamination():
    from oneclass.detector import holdout_threshold

    def flagged(scores, c):
        scores = np.asarray(scores)
        return int((scores >= holdout_threshold(scores, c)).sum())

    rng = np.random.default_rng(0)
    distinct = rng.permutation(100).astype(np.float32) / 7
    assert flagged(distinct, 0.05) == 5
    assert flagged(distinct, 0.0) == 0
    assert flagged(distinct[:10], 0.05) == 0  # 0.5 of an image: none, not one
    assert flagged(distinct[:40], 0.05) == 2
    # collapsed scores: tied values never straddle the threshold, so nothing is flagged
    assert flagged(np.full(30, 0.2, dtype=np.float32), 0.05) == 0
    # a tie at the boundary: flagging one of the tied pair would be arbitrary, so neither is
    tied = np.arange(100, dtype=np.float64)
    tied[94] = tied[95]
    assert flagged(tied, 0.05) == 4
    # the threshold is just above the 95th score, also when compared in float32
    thr = holdout_threshold(distinct, 0.05)
    assert np.sort(distinct)[94] < thr <= np.sort(distinct)[95]
    assert int((distinct >= np.float32(thr)).sum()) == 5


def test_holdout_threshold_keeps_clear_of_the_scores_it_is_set_on():
    """One image scored alone or in a batch moves by up to ~1e-4 of its score: a threshold one
    float32 step above a held-back score flipped that image's label between predict (batches)
    and serve (one image). It sits in the gap now, and is a float32 value."""
    from oneclass.detector import holdout_threshold

    held = np.array([18.0, 18.5, 18.822134], np.float32)  # none flagged
    thr = holdout_threshold(held, 0.05)
    assert thr > float(held.max()) * (1 + 1e-4) and thr == float(np.float32(thr))
    assert thr == pytest.approx(18.822134 + 0.5 * 0.322134, rel=1e-6)
    # the margin comes from the upper half of the scores: a stray low one does not widen it
    assert holdout_threshold(np.array([-1e6, 1.0, 1.1, 1.2]), 0.05) == pytest.approx(1.25)
    # two flagged of 40: halfway between the highest left normal (37) and the lowest flagged
    assert holdout_threshold(np.arange(40, dtype=np.float32), 0.05) == 37.5


def test_fit_refuses_scores_that_are_not_finite(defects_train, monkeypatch):
    from oneclass.errors import TrainingError

    det = oneclass.create("deep_svdd", **fast_params("deep_svdd"))
    monkeypatch.setattr(type(det), "score", lambda self, x, **_: np.full(len(x), np.nan))
    with pytest.raises(TrainingError, match="scores of .* held-back normal images are not finite"):
        det.fit(defects_train)


def test_explicit_threshold(defects_train):
    det = oneclass.create(METHODS[0], **fast_params(METHODS[0]), threshold=1.5)
    det.fit(defects_train)
    assert det.threshold_ == 1.5 and det.threshold_source_ == "explicit"


def test_save_load_gives_identical_scores_and_maps(fitted, defects_test, tmp_path):
    fitted.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["method"] == fitted.name and meta["format"] == "oneclass-model"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json",
                                                                  "weights.safetensors"]
    loaded = oneclass.load(tmp_path / "m")
    sub = defects_test.subset(range(10))
    assert np.array_equal(loaded.score(defects_test), fitted.score(defects_test))
    assert np.array_equal(loaded.anomaly_map(sub), fitted.anomaly_map(sub))
    assert loaded.threshold_ == fitted.threshold_
    assert loaded.get_params() == fitted.get_params()
    # fitted values kept in model.json come back, and a second save writes them again
    for attr in type(fitted).fitted_json:
        assert getattr(fitted, attr) is not None, attr
        assert json.dumps(getattr(loaded, attr)) == json.dumps(getattr(fitted, attr)), attr
    loaded.save(tmp_path / "m2")
    again = json.loads((tmp_path / "m2" / "model.json").read_text())["fitted"]
    assert {k: again[k] for k in meta["fitted"] if k != "train_seconds"} == \
        {k: v for k, v in meta["fitted"].items() if k != "train_seconds"}


def test_same_seed_same_scores(defects_train, defects_test):
    name = METHODS[0]
    a = oneclass.create(name, **fast_params(name)).fit(defects_train).score(defects_test)
    b = oneclass.create(name, **fast_params(name)).fit(defects_train).score(defects_test)
    c = oneclass.create(name, **{**fast_params(name), "seed": 1}).fit(defects_train)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c.score(defects_test))


def test_tampered_weights_are_refused(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    w = tmp_path / "m" / "weights.safetensors"
    raw = bytearray(w.read_bytes())
    raw[-5] ^= 0xFF
    w.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="checksum"):
        oneclass.load(tmp_path / "m")


def test_model_from_another_version_is_refused(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    p = tmp_path / "m" / "model.json"
    meta = json.loads(p.read_text())
    meta["format_version"] = 99
    p.write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="format version 99"):
        oneclass.load(tmp_path / "m")


def test_wrong_tensor_shape_is_a_clear_error(fitted):
    with pytest.raises(DataError, match="does not match the model's input"):
        fitted.score(torch.zeros(2, 3, 24, 24))


def test_tensor_and_imageset_inputs_agree(fitted, defects_test):
    sub = defects_test.subset(range(8))
    x = torch.stack([torch.from_numpy(sub.read(i).image.copy()).permute(2, 0, 1)
                     for i in range(8)])
    np.testing.assert_allclose(fitted.score(x), fitted.score(sub), rtol=1e-5, atol=1e-6)


def test_unfitted_detector_refuses_to_score(defects_test):
    with pytest.raises(ConfigError, match="fit"):
        oneclass.create(METHODS[0]).score(defects_test)


def test_score_map_in_one_pass_agrees_with_score_and_map(fitted, defects_test):
    """``_score_map`` (batch scoring and the service) gives what ``_score`` and ``_map`` give."""
    x = next(fitted.batches(defects_test.subset(range(6))))
    score, amap = fitted._score_map(x)
    with torch.no_grad():
        ref = fitted._score(x)
    torch.testing.assert_close(score, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(amap, fitted._map(x), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def svdd(defects_train):
    return oneclass.create("deep_svdd", **fast_params("deep_svdd")).fit(defects_train)


def _as_tensor(sub) -> torch.Tensor:
    return torch.stack([torch.from_numpy(sub.read(i).image.copy()).permute(2, 0, 1)
                        for i in range(len(sub))])


def test_every_integer_and_float_encoding_of_an_image_scores_alike(svdd, defects_test):
    """int64 arrays (numpy's default) and int32 tensors in 0..255 were taken for [0, 1]:
    scores 10^5 times too large, every image flagged, no warning."""
    x = _as_tensor(defects_test.subset(range(6)))
    want = svdd.score(x)
    for other in (x.long(), x.int(), x.numpy().astype(np.int64), x.float() / 255,
                  x.numpy().astype(np.float64) / 255):
        np.testing.assert_allclose(svdd.score(other), want, rtol=1e-5, atol=1e-6)
    # a flipped view (negative strides) is scored as the flipped image
    flipped = np.flip(x.numpy(), axis=-1)
    np.testing.assert_allclose(svdd.score(flipped), svdd.score(x.flip(-1)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad, words", [
    (lambda x: x.float(), "float images must lie in [0, 1], got values in [43, 216]"),
    (lambda x: x.long() - 100, "integer images must lie in 0..255"),
    (lambda x: x.long() * 2, "integer images must lie in 0..255"),
    (lambda x: (x.float() / 255).masked_fill(x > 200, float("nan")), "NaN"),
    (lambda x: x > 0, "dtype torch.bool"),
    (lambda x: x.numpy().astype(object), "dtype object"),
])
def test_images_out_of_range_are_a_clear_error(svdd, defects_test, bad, words):
    x = _as_tensor(defects_test.subset(range(4)))
    with pytest.raises(DataError) as exc:
        svdd.score(bad(x))
    assert words in str(exc.value)


def test_fit_names_what_it_takes(defects_train):
    det = oneclass.create("deep_svdd", **fast_params("deep_svdd"))
    for what, args in (("train", (np.zeros((40, 24, 24), np.uint8),)),
                       ("val", (defects_train, torch.zeros(4, 1, 24, 24)))):
        with pytest.raises(DataError, match=f"{what} must be an ImageSet, got .*ArraySet"):
            det.fit(*args)


def test_a_val_set_without_normal_images_is_an_error(defects_train, defects_test):
    det = oneclass.create("deep_svdd", **fast_params("deep_svdd"))
    anomalous = defects_test.subset(defects_test.where(label=1))
    with pytest.raises(DataError, match="no normal images .* to set the threshold"):
        det.fit(defects_train, anomalous)


def test_list_defaults_are_not_shared():
    a = oneclass.create("deep_svdd")
    a.lr_milestones.append(5)
    assert oneclass.create("deep_svdd").lr_milestones == []
    assert oneclass.registry.get("deep_svdd").all_defaults()["lr_milestones"] == []
    assert a.lr_milestones == [5]


@pytest.mark.parametrize("name", oneclass.registry.available())
def test_scikit_learn_clone_works_for_every_method(name):
    # clone checks that the constructor stores each parameter object as given: list
    # parameters (lr_milestones, layers) were copied, and clone refused them
    sklearn_base = pytest.importorskip("sklearn.base")
    det = oneclass.create(name)
    twin = sklearn_base.clone(det)
    assert twin is not det and twin.get_params() == det.get_params()
    lists = [k for k, v in det.get_params().items() if isinstance(v, list)]
    assert all(getattr(twin, k) is not getattr(det, k) for k in lists)  # not shared


def test_set_params_validates_like_the_constructor_and_changes_nothing_on_error():
    det = oneclass.create("fcdd")
    assert det.set_params(epochs=7, precision="bf16") is det
    assert (det.epochs, det.precision) == (7, "bf16")
    with pytest.raises(ConfigError, match="unknown parameter"):
        det.set_params(epochs=9, epochz=1)
    with pytest.raises(ConfigError):
        det.set_params(epochs=9, score_batch_size="abc")
    assert (det.epochs, det.score_batch_size) == (7, oneclass.create("fcdd").score_batch_size)
    # scikit-learn's clone: get_params(deep=...) and set_params
    sklearn_base = pytest.importorskip("sklearn.base")
    twin = sklearn_base.clone(det)
    assert twin is not det and twin.get_params() == det.get_params()


def test_set_params_on_a_fitted_model_changes_scoring_params_only(svdd, defects_test):
    with pytest.raises(ConfigError, match="cannot change after training"):
        svdd.set_params(rep_dim=3)
    before = svdd.score(defects_test)
    old = svdd.get_params()["score_batch_size"]
    try:
        assert svdd.set_params(score_batch_size=7) is svdd
        assert svdd.get_params()["score_batch_size"] == 7
        assert np.allclose(svdd.score(defects_test), before, rtol=1e-5, atol=1e-6)
    finally:
        svdd.set_params(score_batch_size=old)


def test_set_scoring_params_keeps_every_old_value_when_one_cannot_be_read():
    det = oneclass.create("fcdd")
    before = det.get_params()
    with pytest.raises(ConfigError, match="abc"):
        det.set_scoring_params(precision="bf16", score_batch_size="abc")
    assert det.get_params() == before


def test_method_names_must_be_lookup_names():
    with pytest.raises(ValueError, match="lower case with underscores .*'my_svdd'"):
        oneclass.register("My-SVDD")


def test_save_refuses_to_delete_other_files(svdd, tmp_path):
    """save() replaces the whole directory: a folder with other files lost them, and a file
    at the path left a hidden '.name.old' that broke every later save."""
    from oneclass.io import WriteError

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "notes.txt").write_text("keep me")
    with pytest.raises(WriteError, match="holds data, notes.txt, not only a saved model"):
        svdd.save(project)
    assert (project / "notes.txt").read_text() == "keep me" and (project / "data").is_dir()
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(WriteError, match="exists and is not a directory"):
        svdd.save(afile)
    assert afile.read_text() == "x"
    svdd.save(tmp_path / "m")
    svdd.save(tmp_path / "m")  # a saved model's directory is replaced
    assert sorted(f.name for f in (tmp_path / "m").iterdir()) == ["model.json", "weights.safetensors"]


def test_save_to_the_current_directory(svdd, tmp_path, monkeypatch, defects_test):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    svdd.save(".")
    np.testing.assert_allclose(oneclass.load(tmp_path / "here").score(defects_test),
                               svdd.score(defects_test), rtol=1e-6)


@pytest.mark.parametrize("method,params,word", [
    ("fcdd", {"sigma": 0}, "sigma"), ("fcdd", {"sigma": -3}, "sigma"),
    ("fcdd", {"sigma": "abc"}, "sigma"), ("fcdd", {"trunk_lr_factor": -1}, "trunk_lr_factor"),
    ("fcdd", {"frozen_blocks": -5}, "frozen_blocks"),
    ("deep_svdd", {"weight_decay": -1}, "weight_decay"),
    ("deep_svdd", {"pretrain_lr": -1}, "pretrain_lr"),
    ("deep_sad", {"pretrain_weight_decay": float("nan")}, "pretrain_weight_decay"),
    ("hsc", {"weight_decay": -1}, "weight_decay"), ("doc", {"head_lr": 0}, "head_lr"),
    ("anogan", {"search_lr": float("inf")}, "search_lr"), ("bigan", {"lr": True}, "lr"),
])
def test_bad_rates_and_fcdd_settings_are_refused_before_training(method, params, word):
    with pytest.raises(ConfigError, match=word):
        oneclass.create(method, **params)


def test_widths_too_deep_for_the_images_are_a_config_error(defects_train):
    with pytest.raises(ConfigError, match="too small for 5 pooling blocks.*fewer widths"):
        oneclass.create("deep_svdd", widths=[8, 8, 8, 8, 8], epochs=1,
                        pretrain_epochs=0).fit(defects_train.subset(range(8)))


def test_labels_other_than_the_three_codes_are_refused():
    """Deep SAD took a label 2 (a class index, say) as a known normal, silently."""
    from oneclass.data.base import ArraySet
    from oneclass.errors import DataError

    x = np.random.default_rng(0).integers(0, 256, (24, 16, 16), dtype=np.uint8)
    for bad in (2, -5):
        with pytest.raises(DataError, match=rf"labels must be 0 \(normal\), 1 \(anomalous\) or "
                                            rf"-1 \(unlabeled\), got \[{bad}\]"):
            oneclass.create("deep_sad", epochs=1, pretrain_epochs=0).fit(
                ArraySet(x, labels=[0] * 20 + [bad] * 4))


def test_a_three_dimensional_array_is_not_guessed():
    """(3, H, W) was taken as one colour image, so three gray images scored as one."""
    from oneclass.data.base import ArraySet
    from oneclass.errors import DataError

    x = np.random.default_rng(0).integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    det = oneclass.create("deep_svdd", epochs=1, pretrain_epochs=0, holdout=0.0).fit(ArraySet(x))
    one = x[0].transpose(2, 0, 1)
    with pytest.raises(DataError, match=r"input of shape \(3, 16, 16\): arrays are \(N, C, H, W\)"):
        det.score(one)
    assert det.score(one[None]).shape == (1,)


def test_the_training_set_as_its_own_outliers_is_refused(mvtec_dir):
    from oneclass.errors import DataError

    train = oneclass.data.load(str(mvtec_dir), "train")
    with pytest.raises(DataError, match="the outliers hold training images"):
        oneclass.create("hsc", epochs=1).fit(train, outliers=train)
    again = oneclass.data.load(str(mvtec_dir), "train")  # the same files, another object
    with pytest.raises(DataError, match="the outliers hold training images .*000"):
        oneclass.create("hsc", epochs=1).fit(train, outliers=again.subset([0, 1]))


def test_a_threshold_from_the_training_images_scores_them_as_predict_does():
    """With too few images to hold back the threshold comes from the training images; it
    must be set on them as ``score``/predict reads them (resized in float), not on the
    uint8-rounded copies training uses: a threshold from those flagged the very training
    images it was set on."""
    from oneclass.data import ArraySet
    from oneclass.detector import holdout_threshold

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 47, 47), dtype=np.uint8)  # resized to 30x30: not whole values
    det = oneclass.create("deep_svdd", epochs=1, pretrain_epochs=0, holdout=0.0, size=30,
                          contamination=0.0, seed=0).fit(ArraySet(x))
    scores = det.score(ArraySet(x))
    assert det.threshold_ == holdout_threshold(scores, 0.0)
    assert not det.predict(ArraySet(x)).any()


def test_gray_pictures_with_chroma_noise_of_lossy_files_are_gray(tmp_path):
    """Lossy WebP (and JPEG) files of gray pictures decode with channels 1 level apart: they
    made colour models, and predict then warned that gray images were unlike training."""
    from PIL import Image

    from oneclass.data import load
    from oneclass.data.base import is_colour

    rng = np.random.default_rng(0)
    a = rng.integers(0, 250, (32, 32), dtype=np.uint8)
    noisy = np.stack([a, a + rng.integers(0, 2, a.shape).astype(np.uint8), a], axis=-1)
    assert not is_colour(noisy)
    tinted = noisy.copy()
    tinted[5, 5, 2] += 4
    assert is_colour(tinted)
    for i in range(3):
        Image.fromarray(noisy).save(tmp_path / f"{i}.webp", quality=90)
    assert load(str(tmp_path), "train").channels() == 1


def test_a_mostly_gray_training_set_with_colour_strays_is_warned_about(tmp_path, caplog):
    import logging

    from PIL import Image

    from oneclass.data import load

    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(tmp_path / f"g{i}.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "c.png")
    train = load(str(tmp_path), "train")
    with caplog.at_level(logging.WARNING, logger="oneclass"):
        det = oneclass.create("deep_svdd", epochs=1, pretrain_epochs=0, holdout=0.0).fit(train)
    assert det.preprocess_.channels == 3
    assert "mix colour and gray ones (colour: 1 or more, first " in caplog.text
    assert "c.png" in caplog.text and "gray: 6 or more" in caplog.text
    assert "if the colour images are strays" in caplog.text


def test_colour_strays_are_seen_whatever_the_order_of_the_files(tmp_path, caplog):
    """Gray pictures stored as RGB count as gray only when decoded: a colour stray sorted
    first ended the survey before any of them was."""
    import logging

    from PIL import Image

    from oneclass.data import load

    rng = np.random.default_rng(0)
    for i in range(1, 8):
        g = rng.integers(0, 256, (16, 16), dtype=np.uint8)
        Image.fromarray(np.stack([g] * 3, axis=-1)).save(tmp_path / f"{i:03d}.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "000.png")
    with caplog.at_level(logging.WARNING, logger="oneclass"):
        oneclass.create("deep_svdd", epochs=1, pretrain_epochs=0, holdout=0.0).fit(
            load(str(tmp_path), "train"))
    assert "mix colour and gray ones (colour: 1 or more, first " in caplog.text
    assert "gray: 7 or more" in caplog.text


def test_small_strip_images_are_squeezed_to_four_to_one_like_large_ones():
    """1x64 strips kept their size (images up to 64 px are), so PatchCore upsampled them to
    96x6144 (50 s and 1.3 GB for 8 strips) and Deep SVDD refused them."""
    from oneclass.data import ArraySet

    x = np.random.default_rng(0).integers(0, 256, (8, 1, 64), dtype=np.uint8)
    det = oneclass.create("deep_svdd", epochs=1, pretrain_epochs=0, holdout=0.0).fit(ArraySet(x))
    assert det.preprocess_.size == (16, 64)
    assert oneclass.create("deep_svdd", epochs=1, pretrain_epochs=0, holdout=0.0).fit(
        ArraySet(x.transpose(0, 2, 1).copy())).preprocess_.size == (64, 16)


def test_training_images_far_from_their_median_size_are_warned_about(tmp_path, caplog):
    """Thumbnails among the training images were trained on without a word (predict then
    warned about the same files)."""
    import logging

    from PIL import Image

    from oneclass.data import load

    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / f"t{i}.png")
    with caplog.at_level(logging.WARNING, logger="oneclass"):
        oneclass.create("deep_svdd", epochs=1, pretrain_epochs=0, holdout=0.0).fit(
            load(str(tmp_path), "train"))
    assert "2 of 8 training images differ much in size from their median 32x32" in caplog.text
    assert "t0.png, 8x8" in caplog.text


def test_fit_gives_the_callers_random_generators_back(defects_train):
    """fit seeded Python's, NumPy's and torch's global generators and left them so: after
    every fit the caller's "random" draws were the same, whatever the caller had seeded."""
    import random

    def draws():
        return np.random.rand(), torch.rand(1).item(), random.random()

    det = oneclass.create("deep_svdd", **{**fast_params("deep_svdd"), "epochs": 1})
    for seed in (100, 101):
        np.random.seed(seed), torch.manual_seed(seed), random.seed(seed)
        want = draws()
        np.random.seed(seed), torch.manual_seed(seed), random.seed(seed)
        det.fit(defects_train)
        assert draws() == want


def test_fit_checks_parameters_set_as_attributes(defects_train):
    """Attributes set directly (which scikit-learn allows) were never checked: holdout 2.0
    trained, contamination 5.0 set a threshold, lr -1 gave a raw torch error."""
    for k, v, words in (("holdout", 2.0, "holdout must be in"),
                        ("contamination", 5.0, "contamination must be in"),
                        ("lr", -1, "lr must be a positive number")):
        det = oneclass.create("deep_svdd", **fast_params("deep_svdd"))
        setattr(det, k, v)
        with pytest.raises(ConfigError, match=words):
            det.fit(defects_train)


@pytest.mark.parametrize("k, v", [("epochs", 2.5), ("batch_size", 2.5), ("epochs", True),
                                  ("search_steps", 10.5)])
def test_counts_must_be_whole_numbers(k, v):
    """epochs=2.5 trained 2 epochs and batch_size=2.5 was taken as 2, while seed=1.5 was
    refused."""
    with pytest.raises(ConfigError, match=f"{k} must be a whole number"):
        oneclass.create("anogan", **{k: v})
    assert oneclass.create("anogan", epochs=3.0, batch_size=16.0).epochs == 3.0  # whole: fine


def test_array_parameters_are_plain_lists_and_repr_works():
    det = oneclass.create("deep_svdd", size=np.array([28, 28]))
    assert det.get_params()["size"] == [28, 28] and "size=[28, 28]" in repr(det)
    det.size = np.array([28, 28])  # set as an attribute: repr still works
    assert "DeepSVDD(" in repr(det)


def test_every_numeric_array_encoding_in_range_scores_alike(svdd, defects_test):
    """uint16/uint32 arrays in 0..255 crashed in torch ("min_all" not implemented), big-endian
    and long double arrays gave raw torch errors, and a tensor that requires grad warned."""
    import warnings

    x = _as_tensor(defects_test.subset(range(4)))
    want = svdd.score(x)
    for other in (x.numpy().astype(np.uint16), x.numpy().astype(np.uint32),
                  x.numpy().astype(np.uint64), x.to(torch.uint16), x.to(torch.uint32),
                  (x.numpy() / 255).astype(">f4"), (x.numpy() / 255).astype(np.longdouble)):
        np.testing.assert_allclose(svdd.score(other), want, rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(svdd.score((x.float() / 255).requires_grad_(True)), want,
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(DataError, match="integer images must lie in 0..255"):
        svdd.score(x.numpy().astype(np.uint16) * 256)


def test_labels_that_are_not_whole_numbers_are_refused():
    """ArraySet truncated labels to integers: 0.9 trained as a known normal."""
    from oneclass.data.base import ArraySet

    x = np.zeros((4, 8, 8), np.uint8)
    for bad in ([0.9, 0, 0, 0], [0, 1.5, 0, 0], [0, float("nan"), 0, 0]):
        with pytest.raises(DataError, match="labels must be whole numbers"):
            ArraySet(x, labels=bad)
    with pytest.raises(DataError, match="labels must be numbers"):
        ArraySet(x, labels=["a", "b", "c", "d"])
    assert ArraySet(x, labels=[0.0, 1.0, -1.0, 0.0]).labels.tolist() == [0, 1, -1, 0]


def test_an_empty_batch_scores_nothing_for_every_method(fitted):
    """BiGAN raised IndexError on an empty array; the others returned shape (0,)."""
    empty = torch.zeros(0, *fitted.input_shape_, dtype=torch.uint8)
    assert fitted.score(empty).shape == (0,)
    assert fitted.predict(empty).shape == (0,)


def test_whole_number_check_keeps_large_integers_and_older_models(defects_train, tmp_path,
                                                                   caplog):
    """The count check compared float(v) with int(v), refusing seeds above 2**53 and
    coreset_max=sys.maxsize; and a model saved with epochs 1.5 (accepted before the check,
    trained with 1) no longer loaded."""
    import sys

    assert oneclass.create("deep_svdd", seed=2**62 + 1).seed == 2**62 + 1
    assert oneclass.create("patchcore", coreset_max=sys.maxsize).coreset_max == sys.maxsize
    det = oneclass.create("deep_svdd", **{**fast_params("deep_svdd"), "epochs": 1})
    det.fit(defects_train)
    det.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["params"]["epochs"] = 1.5
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with caplog.at_level("WARNING"):
        back = oneclass.Detector.load(tmp_path / "m")
    assert "epochs=1.5 in the saved model is not a whole number" in caplog.text
    back.set_scoring_params(score_batch_size=8)  # the history is not checked again
    with pytest.raises(ConfigError, match="epochs must be a whole number"):
        back.fit(defects_train)  # a new training is


def test_labels_given_as_objects_or_digit_strings_still_load():
    from oneclass.data.base import ArraySet

    x = np.zeros((3, 8, 8), np.uint8)
    assert ArraySet(x, labels=np.array([0, 1, -1], dtype=object)).labels.tolist() == [0, 1, -1]
    assert ArraySet(x, labels=["0", "1", "-1"]).labels.tolist() == [0, 1, -1]


def test_a_misspelt_device_is_refused_when_set_not_at_fit():
    """device="bogus" constructed fine and failed only at fit; a device this machine lacks
    (cuda here) is still accepted until fit, for a model set up for another machine."""
    with pytest.raises(ConfigError, match="device 'bogus' is not a valid torch device"):
        oneclass.create("deep_svdd", device="bogus")
    assert oneclass.create("deep_svdd", device="cuda:1").device == "cuda:1"
