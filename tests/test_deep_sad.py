"""Deep SAD: the loss against its formula, label mapping, labeled anomalies help, data setting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import oneclass
from oneclass.data.base import ArraySet
from oneclass.data.semi import semi_counts
from oneclass.errors import ConfigError, DataError
from oneclass.methods.deep_sad import deep_sad_loss, semi_targets
from oneclass.metrics import auroc


def test_loss_matches_the_paper_formula():
    dist = torch.tensor([0.5, 2.0, 4.0, 0.25])
    y = torch.tensor([0, 1, -1, -1])  # unlabeled, known normal, two known anomalies
    eta, eps = 2.0, 1e-6
    expected = torch.tensor([0.5, eta * (2.0 + eps), eta / (4.0 + eps), eta / (0.25 + eps)])
    assert torch.allclose(deep_sad_loss(dist, y, eta, eps), expected)
    # an anomaly at the centre costs eta / eps: finite, and large
    assert deep_sad_loss(torch.zeros(1), torch.tensor([-1]), 1.0, 1e-6).item() == pytest.approx(1e6)


def test_imageset_labels_map_to_deep_sad_targets():
    labels = torch.tensor([0, 1, -1, 0, 1])
    assert semi_targets(labels).tolist() == [1, -1, 0, 1, -1]


def test_counts_follow_the_reference_linear_system():
    assert semi_counts(6000, 0.0, 0.05, 0.0) == (0, 6000, 0, 315)  # 0.05 / 0.95 * 6000
    kn, un, uo, ko = semi_counts(6000, 0.1, 0.05, 0.1)
    total = kn + un + uo + ko
    assert abs(kn + un - 6000) <= 1  # counts are rounded down, as in the reference
    assert kn / total == pytest.approx(0.1, abs=1e-3)
    assert ko / total == pytest.approx(0.05, abs=1e-3)
    assert uo / (un + uo) == pytest.approx(0.1, abs=1e-3)
    with pytest.raises(DataError, match="ratio_pollution"):
        semi_counts(100, 0.0, 0.0, 1.0)


def test_soft_boundary_is_refused():
    with pytest.raises(ConfigError, match="one-class"):
        oneclass.create("deep_sad", objective="soft-boundary")


def _stripes(n, rng, stripe, amp=40):
    """Noise images; anomalies carry a faint horizontal stripe."""
    x = rng.normal(128, 30, (n, 16, 16))
    if stripe:
        for i, r in enumerate(rng.integers(2, 14, n)):
            x[i, r - 1:r + 1, :] += amp
    return np.clip(x, 0, 255).astype(np.uint8)


def test_labeled_anomalies_raise_auroc():
    # The paper's setting: unlabeled training data polluted with anomalies. Labeling the
    # same anomalies pushes them (and unseen ones like them) away from c.
    rng = np.random.default_rng(0)
    x = np.concatenate([_stripes(100, rng, False), _stripes(20, rng, True)])
    test = ArraySet(np.concatenate([_stripes(50, rng, False), _stripes(50, rng, True)]),
                    np.r_[np.zeros(50), np.ones(50)].astype(int))
    result = {}
    for labeled in (False, True):
        y = np.r_[np.full(100, -1), np.full(20, 1 if labeled else -1)]
        det = oneclass.create("deep_sad", epochs=12, pretrain_epochs=1, batch_size=32, lr=1e-3)
        det.fit(ArraySet(x, y))
        result[labeled] = auroc(test.labels, det.score(test))
    assert det.n_labeled_anomalies_ == 20
    assert result[True] > result[False] + 0.05, result


def test_bf16_training_runs_the_encoder_in_bf16_keeps_distances_fp32_and_still_learns(
        monkeypatch):
    from oneclass.methods import deep_sad as sad_mod
    from oneclass.nets import Decoder, Encoder

    seen = {"enc": set(), "dec": set(), "dist": set()}
    enc_fwd, dec_fwd, loss = Encoder.forward, Decoder.forward, sad_mod.deep_sad_loss

    def spy(key, fn):
        def wrapped(self, x):
            out = fn(self, x)
            if self.training:  # not the centre, the threshold or scoring
                seen[key].add(out.dtype)
            return out
        return wrapped

    monkeypatch.setattr(Encoder, "forward", spy("enc", enc_fwd))
    monkeypatch.setattr(Decoder, "forward", spy("dec", dec_fwd))
    monkeypatch.setattr(sad_mod, "deep_sad_loss",
                        lambda d, *a: (seen["dist"].add(d.dtype), loss(d, *a))[1])
    rng = np.random.default_rng(0)
    x = np.concatenate([_stripes(100, rng, False), _stripes(20, rng, True)])
    test = ArraySet(np.concatenate([_stripes(50, rng, False), _stripes(50, rng, True)]),
                    np.r_[np.zeros(50), np.ones(50)].astype(int))
    det = oneclass.create("deep_sad", epochs=12, pretrain_epochs=1, batch_size=32, lr=1e-3,
                          train_precision="bf16")
    det.fit(ArraySet(x, np.r_[np.full(100, -1), np.ones(20, int)]))
    assert seen == {"enc": {torch.bfloat16}, "dec": {torch.bfloat16}, "dist": {torch.float32}}
    assert all(p.dtype == torch.float32 for p in det.model_.parameters())
    assert auroc(test.labels, det.score(test)) > 0.8
    with pytest.raises(ConfigError, match="train_precision must be one of"):
        oneclass.create("deep_sad", train_precision="half")


@pytest.mark.parametrize("with_anomalies", [False, True])
def test_labeled_anomalies_join_pretraining_only_when_asked(monkeypatch, with_anomalies):
    from oneclass.methods.deep_svdd import DeepSVDD

    seen = []
    orig = DeepSVDD._pretrain_and_centre
    monkeypatch.setattr(DeepSVDD, "_pretrain_and_centre",
                        lambda self, x, loop: (seen.append(len(x)), orig(self, x, loop)))
    rng = np.random.default_rng(0)
    x = np.concatenate([_stripes(30, rng, False), _stripes(6, rng, True)])
    y = np.r_[np.full(26, -1), np.zeros(4, int), np.ones(6, int)]  # unlabeled, normal, anomalous
    oneclass.create("deep_sad", epochs=1, pretrain_epochs=1, batch_size=16,
                    init_with_anomalies=with_anomalies).fit(ArraySet(x, y))
    assert seen == [36 if with_anomalies else 30]


def test_cli_trains_on_a_folder_with_labeled_anomalies(mvtec_dir, tmp_path):
    import json

    from oneclass.cli import main

    run = tmp_path / "sad"
    assert main(["train", "--method", "deep_sad", "--data", str(mvtec_dir), "--out", str(run),
                 "--epochs", "1", "--set", "pretrain_epochs=1", "--set", "batch_size=16",
                 "--anomalies", str(mvtec_dir), "--anomaly-limit", "2", "-q"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["fitted"]["n_labeled_anomalies"] == len(cfg["anomalies_used"]) > 0
    assert main(["eval", str(run), "-q"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["n_test"] == 22 - len(cfg["anomalies_used"])
    assert m["pixel_auroc"] is not None  # gradient heatmaps scored against the masks


def test_semi_supervised_set_draws_labeled_anomalies_from_one_class(monkeypatch, tmp_path):
    from oneclass.data import semi

    y = np.repeat(np.arange(10), 100)
    x = (y[:, None, None] * 20 + np.zeros((1, 4, 4))).astype(np.uint8)
    monkeypatch.setattr(semi, "_arrays", lambda name, root, split: (x, y))
    s = semi.semi_supervised("mnist", 3, ratio_known_outlier=0.05, ratio_pollution=0.1,
                             root=str(tmp_path))
    kn, un, uo, ko = semi.semi_counts(100, 0.0, 0.05, 0.1)
    assert (s.labels == 1).sum() == ko > 0 and (s.labels == -1).sum() == un + uo
    assert set(np.asarray(s.kinds)[s.labels == 1]) == {"4"}  # (C + 1) % 10
    polluted = [k for k, lab in zip(s.kinds, s.labels) if lab == -1 and k != "good"]
    assert len(polluted) == uo and "3" not in polluted
    assert (s.images[s.labels == 1, 0, 0, 0] == 80).all()
    with pytest.raises(DataError, match="another class"):
        semi.semi_supervised("mnist", 3, known_outlier_class=3, root=str(tmp_path))


def test_threshold_source_says_when_it_comes_from_unlabeled_images():
    # the paper's semi-supervised sets label no image normal: nothing to hold back, and the
    # threshold's source must not claim there were too few normal images
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 16, 16, 1), dtype=np.uint8)
    labels = np.r_[np.full(36, -1), np.ones(4)].astype(np.int64)
    det = oneclass.create("deep_sad", epochs=1, pretrain_epochs=1, batch_size=16, seed=0)
    det.fit(ArraySet(x, labels))
    assert "36 unlabeled training images (none is labeled normal" in det.threshold_source_


def test_no_image_is_both_an_unlabeled_and_a_labeled_anomaly(monkeypatch, tmp_path):
    from oneclass.data import semi

    y = np.repeat(np.arange(10), 200)
    x = np.zeros((len(y), 4, 4), np.uint8)
    monkeypatch.setattr(semi, "_arrays", lambda name, root, split: (x, y))
    for seed in range(5):
        s = semi.semi_supervised("mnist", 0, ratio_known_outlier=0.2, ratio_pollution=0.2,
                                 seed=seed, root=str(tmp_path))
        assert len(set(s.names)) == len(s.names), seed  # each image once, with one label
        kn, un, uo, ko = semi.semi_counts(200, 0.0, 0.2, 0.2)
        assert (s.labels == 1).sum() == ko and (s.labels == -1).sum() == un + uo
    for bad in (10, -1):
        with pytest.raises(DataError, match="normal class must be in 0..9"):
            semi.semi_supervised("mnist", bad, ratio_known_outlier=0.05, root=str(tmp_path))


def test_eta_and_eps_reach_the_training_loss(monkeypatch):
    # eta weighs the labeled samples: the loss of training must get the configured value,
    # and a different eta must train a different model, everything else equal
    from oneclass.methods import deep_sad as sad_mod

    seen = []
    loss = sad_mod.deep_sad_loss
    monkeypatch.setattr(sad_mod, "deep_sad_loss",
                        lambda d, y, eta, eps: (seen.append((eta, eps)), loss(d, y, eta, eps))[1])
    rng = np.random.default_rng(0)
    data = ArraySet(np.concatenate([_stripes(30, rng, False), _stripes(6, rng, True)]),
                    np.r_[np.full(26, -1), np.zeros(4, int), np.ones(6, int)])
    scores = {}
    for eta in (2.0, 1.0):
        seen.clear()
        det = oneclass.create("deep_sad", epochs=2, pretrain_epochs=1, batch_size=16, seed=0,
                              eta=eta, eps=1e-3).fit(data)
        assert seen and set(seen) == {(eta, 1e-3)}, seen
        scores[eta] = det.score(data)
    assert not np.allclose(scores[2.0], scores[1.0])
