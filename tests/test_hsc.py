"""HSC: distance and loss against their formulas, outlier exposure, labeled anomalies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import oneclass
from oneclass.data.base import ArraySet
from oneclass.errors import ConfigError
from oneclass.methods.hsc import hsc_distance, hsc_loss


def test_distance_is_pseudo_huber_of_the_norm():
    z = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    expected = torch.tensor([math.sqrt(26) - 1, 0.0, math.sqrt(2) - 1])
    assert torch.allclose(hsc_distance(z), expected)


def test_loss_normal_is_h_and_anomalous_is_minus_log_one_minus_exp():
    h = torch.tensor([0.5, 0.5, 3.0])
    anomalous = torch.tensor([False, True, True])
    expected = torch.tensor([0.5, -math.log(1 - math.exp(-0.5)), -math.log(1 - math.exp(-3.0))])
    assert torch.allclose(hsc_loss(h, anomalous), expected)
    # an anomaly at the centre costs a large but finite loss
    assert torch.isfinite(hsc_loss(torch.zeros(1), torch.tensor([True]))).all()


def test_distance_keeps_its_precision_near_the_centre():
    # sqrt(s + 1) - 1 rounds to 0 in float32 below s ~ 6e-8, which tied distinct embeddings
    # and gave an anomaly there a zero gradient; the value is ~s / 2 there
    z = torch.tensor([[1e-5, 0.0], [2e-5, 0.0], [1e-3, 0.0]], requires_grad=True)
    h = hsc_distance(z)
    s = (z.detach() ** 2).sum(dim=1).double()
    torch.testing.assert_close(h.double(), (s + 1).sqrt() - 1, rtol=1e-6, atol=0)
    assert h[0] < h[1] < h[2]
    hsc_loss(h, torch.tensor([True, True, True])).sum().backward()
    assert (z.grad[:, 0] < 0).all()  # an anomaly is pushed away from the centre


def test_gradient_at_the_centre_is_finite():
    z = torch.zeros(2, 3, requires_grad=True)
    hsc_loss(hsc_distance(z), torch.tensor([False, True])).sum().backward()
    assert torch.isfinite(z.grad).all()


def _hsc(**kw):
    return oneclass.create("hsc", **{"epochs": 4, "batch_size": 32, "seed": 0, **kw})


def test_outlier_exposure_replaces_noise_and_is_scored_higher(defects_train):
    rng = np.random.default_rng(0)
    oe = ArraySet((rng.random((40, 24, 24)) * 255).astype(np.uint8))
    det = _hsc().fit(defects_train, outliers=oe)
    assert det.anomaly_kinds_ == ["outliers"]  # noise=auto: no confetti once OE is given
    assert det.score(oe).mean() > det.score(defects_train).mean()


def test_noise_is_used_without_outliers_and_labeled_anomalies_join(defects_train, defects_test):
    from oneclass.data import concat

    assert _hsc(epochs=1).fit(defects_train).anomaly_kinds_ == ["noise"]
    labeled = defects_test.subset(np.flatnonzero(defects_test.labels == 1)[:5])
    det = _hsc(epochs=1, noise="none").fit(concat(defects_train, labeled))
    assert det.anomaly_kinds_ == ["real"]


def test_without_any_anomaly_source_training_is_refused(defects_train):
    with pytest.raises(ConfigError, match="needs anomalies"):
        _hsc(noise="none").fit(defects_train)
    with pytest.raises(ConfigError, match="noise must be"):
        _hsc(noise="sparkles")


def test_cli_trains_with_outliers_and_labeled_anomalies(mvtec_dir, tmp_path):
    import json

    from oneclass.cli import main
    from oneclass.data.synthetic import write_mvtec

    other = write_mvtec(tmp_path / "other", n_train=20, n_test_good=2, n_test_defect=2,
                        size=24, seed=5, texture="blobs")
    run = tmp_path / "hsc"
    assert main(["train", "--method", "hsc", "--data", str(mvtec_dir), "--out", str(run),
                 "--epochs", "1", "--set", "batch_size=16", "--outliers", str(other / "train"),
                 "--anomalies", str(mvtec_dir), "--anomaly-limit", "1", "-q"]) == 0
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["fitted"]["anomaly_kinds"] == ["real", "outliers"]
    assert main(["eval", str(run), "-q"]) == 0
    assert json.loads((run / "metrics.json").read_text())["image_auroc"] is not None


def test_training_step_marks_the_outliers_anomalous_and_minimises_their_loss(
        defects_train, monkeypatch):
    # hsc_loss is right on its own; this checks what the step feeds it and keeps of it: the
    # outliers (a constant gray no normal image has) and only they are marked anomalous, half
    # of each batch, and the step's loss is the paper's formula on those marks
    from oneclass.methods import hsc as hsc_mod
    from oneclass.methods.deep_svdd import SVDDNet

    inputs, seen, returned = [], [], []
    embed, loss, step = SVDDNet.embed, hsc_mod.hsc_loss, hsc_mod._HSCTask.step

    def spy_embed(self, x, *a, **kw):
        inputs.append(x.detach().clone())
        return embed(self, x, *a, **kw)

    def spy_loss(h, anomalous):
        seen.append((inputs[-1], h.detach().clone(), anomalous.clone()))
        return loss(h, anomalous)

    def spy_step(self, batch):
        out = step(self, batch)
        returned.append((len(seen), float(out["loss"])))
        return out

    monkeypatch.setattr(SVDDNet, "embed", spy_embed)
    monkeypatch.setattr(hsc_mod, "hsc_loss", spy_loss)
    monkeypatch.setattr(hsc_mod._HSCTask, "step", spy_step)
    oe = ArraySet(np.full((10, 24, 24), 7, np.uint8))
    _hsc(epochs=1, holdout=0.0).fit(defects_train, outliers=oe)
    assert len(returned) == 4 and [k for k, _ in returned] == [1, 2, 3, 4]  # 120 at 32
    for (x, h, marks), (_, step_loss) in zip(seen, returned):
        is_outlier = (x == 7 / 255).flatten(1).all(1)
        assert marks.dtype == torch.bool and marks.sum() * 2 == len(marks) == len(x)
        assert torch.equal(marks, is_outlier)
        expected = torch.where(marks, -torch.log(1 - torch.exp(-h)), h).mean()
        assert step_loss == pytest.approx(float(expected), rel=1e-5)


def test_labeled_anomalies_are_what_training_draws_as_real(defects_train, defects_test,
                                                          monkeypatch):
    from oneclass.data import concat
    from oneclass.methods import hsc as hsc_mod

    reals = []

    class Spy(hsc_mod.AnomalySource):
        def __init__(self, real=None, *a, **kw):
            reals.append(real)
            super().__init__(real, *a, **kw)

    monkeypatch.setattr(hsc_mod, "AnomalySource", Spy)
    labeled = defects_test.subset(np.flatnonzero(defects_test.labels == 1)[:5])
    _hsc(epochs=1, noise="none").fit(concat(defects_train, labeled))
    assert len(reals) == 1
    expected = np.stack([labeled.read(i).image for i in range(5)]).transpose(0, 3, 1, 2)
    assert torch.equal(reals[0][0], torch.from_numpy(expected))  # all of them, in order
