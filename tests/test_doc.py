"""DOC (Perera & Patel 2019): losses, frozen layers, kNN / LOF scores, reference sets, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import oneclass
from oneclass.cli import main
from oneclass.data import load
from oneclass.data.base import ArraySet
from oneclass.data.reference import Reference, check_specs, load_reference
from oneclass.errors import ConfigError
from oneclass.methods.doc import DOCNet, compactness_loss, gradcam_upsample, knn_distance
from oneclass.metrics import auroc
from oneclass.viz import save_png

SMALL = {"epochs": 2, "batch_size": 16, "net_size": 64, "trainable_blocks": 2, "seed": 0}


def test_compactness_loss_matches_eq1_on_hand_made_features():
    z = torch.tensor([[1.0, 2.0, 0.0], [3.0, -1.0, 2.0], [0.0, 0.0, 1.0], [2.0, 1.0, -1.0]])
    n, k = z.shape
    # Eq. 1: z_i minus the mean of the other n - 1 features, squared, summed, over n k.
    expect = sum(float(((z[i] - (z.sum(0) - z[i]) / (n - 1)) ** 2).sum()) for i in range(n)) / (n * k)
    assert compactness_loss(z).item() == pytest.approx(expect, rel=1e-6)
    assert compactness_loss(torch.ones(5, 3)).item() == 0.0  # identical features: no spread


@pytest.fixture(scope="module")
def small_fit(defects_train):
    return oneclass.create("doc", **SMALL, heatmap="gradcam").fit(
        defects_train.subset(range(40)))


def test_frozen_layers_stay_frozen_and_the_tail_trains(small_fit):
    m: DOCNet = small_fit.model_
    before = DOCNet(1, 64, 2, 0).state_dict()  # the ImageNet weights training started from
    after = m.state_dict()
    assert m.cut == 14
    frozen = [k for k in after if k.startswith(("trunk.stem.", *[f"trunk.blocks.{i}." for i in range(14)]))]
    tail = [k for k in after if k.startswith(("trunk.blocks.14.", "trunk.blocks.15.", "head."))
            and k.endswith("weight")]
    assert frozen and tail
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in tail)
    assert not any(p.requires_grad for mod in m.frozen_modules() for p in mod.parameters())


@pytest.mark.parametrize("lam", [0.1, 0.0])
def test_the_compactness_loss_alone_moves_the_tail_and_tightens_the_batch(
        lam, defects_train, monkeypatch):
    """One training step with the descriptiveness loss zeroed and no weight decay: the
    compactness term alone moves the trainable weights and pulls the batch together
    (and with lam = 0 nothing moves, so the motion is the compactness term's)."""
    from oneclass.methods import doc as doc_mod

    monkeypatch.setattr(doc_mod, "soft_cross_entropy", lambda logits, target: logits.sum() * 0.0)
    det = oneclass.create("doc", net_size=64, trainable_blocks=2, lr=1e-3, weight_decay=0.0,
                          lam=lam)
    det.device_ = torch.device("cpu")
    det.model_ = m = DOCNet(1, 64, 2, 0)
    x = torch.from_numpy(np.stack([defects_train.read(i).image for i in range(16)]))
    h = det._lower_all(x.permute(0, 3, 1, 2).contiguous())
    task = doc_mod._DOCTask(det, h, torch.full((16, 1000), 1e-3), torch.nn.Linear(1280, 1000))
    tail = {k: p.detach().clone() for k, p in m.named_parameters() if p.requires_grad}

    def spread():
        with torch.no_grad():
            return compactness_loss(m.pool(m.upper(h))).item()

    before = spread()
    m.train()
    out = task.step((h,))
    assert out["descriptiveness"].item() == 0.0
    assert out["loss"].item() == pytest.approx(lam * out["compactness"].item())
    moved = [k for k, p in m.named_parameters() if p.requires_grad and not torch.equal(p, tail[k])]
    if lam == 0.0:
        assert not moved and spread() == before
    else:
        assert moved and spread() < 0.9 * before, (before, spread())


def test_gradcam_maps_have_the_input_size(small_fit, defects_test):
    images = defects_test.subset(range(4))
    maps = small_fit.anomaly_map(images)
    assert maps.shape == (4, 24, 24) and np.isfinite(maps).all() and maps.std() > 0
    # Grad-CAM from the model's parts: the kNN score's gradient on the head feature map A,
    # relu(sum_c mean_uv(ds/dA_c) A_c), upsampled to the input from its units' centres
    m: DOCNet = small_fit.model_
    (x,) = list(small_fit.batches(images))
    with torch.no_grad():
        a = m.upper(m.lower(x))
    a.requires_grad_(True)
    s = torch.cdist(m.pool(a), m.bank).sort(1).values[:, :small_fit.k].mean(1)
    (g,) = torch.autograd.grad(s.sum(), a)
    cam = torch.relu((g.mean(dim=(2, 3))[:, :, None, None] * a).sum(1, keepdim=True))
    expect = gradcam_upsample(cam.detach()[:, 0], (24, 24), m.net_size, 32).numpy()
    assert (expect > 0).any()
    np.testing.assert_allclose(maps, expect, rtol=1e-3, atol=1e-4 * expect.max())


def test_gradcam_units_lie_on_their_receptive_fields_centres():
    """Unit i of the stride-32 head is centred on trunk-input pixel 32 * i; bilinear resizing
    (align_corners=False) put it at 32 * i + 15.5, so maps sat half a unit down and right."""
    cam = torch.zeros(1, 7, 7)
    cam[0, 2, 3] = 1.0
    up = gradcam_upsample(cam, (224, 224), 224, 32)[0]
    assert divmod(int(up.argmax()), 224) == (64, 96) and float(up[64, 96]) == 1.0
    assert float(up[63, 96]) == pytest.approx(float(up[65, 96])) and float(up[63, 96]) < 1.0
    # an image of 112x448 goes through the trunk at 224x224: row y lies on (y + 0.5) * 2 - 0.5,
    # so net row 64 is y = 31.75 (nearest row 32); column x on x / 2 - 0.25, so net column 96
    # is x = 192.5, between columns 192 and 193
    up = gradcam_upsample(cam, (112, 448), 224, 32)[0]
    assert float(up[32, 192]) == pytest.approx(float(up[32, 193])) == float(up.max())
    assert float(up[31, 192]) < float(up[32, 192]) and float(up[33, 192]) < float(up[32, 192])


def _toy_detector(scoring: str) -> oneclass.Detector:
    det = oneclass.create("doc", k=3, scoring=scoring, pretrained=False)
    det.device_ = torch.device("cpu")
    det.model_ = DOCNet(1, 64, 0, 0, pretrained=False)
    g = torch.Generator().manual_seed(0)
    det._set_bank(torch.randn(200, 1280, generator=g) * 0.1)
    return det


@pytest.mark.parametrize("scoring", ["knn", "lof"])
def test_scores_rise_with_distance_from_the_training_features(scoring):
    det = _toy_detector(scoring)
    direction = torch.nn.functional.normalize(torch.ones(1, 1280), dim=1)
    q = torch.cat([direction * r for r in (0.0, 2.0, 5.0, 10.0, 30.0)])
    s = det._score_features(q).numpy()
    assert np.all(np.diff(s) > 0), s
    # and the scores are the reference ones, on these queries and on some near the bank
    g = torch.Generator().manual_seed(1)
    bank = det.model_.bank
    q = torch.cat([q, bank[:5] + 0.02 * torch.randn(5, 1280, generator=g),
                   0.1 * torch.randn(5, 1280, generator=g)])
    s, q64, bank64 = det._score_features(q).numpy(), q.double().numpy(), bank.double().numpy()
    if scoring == "lof":
        from sklearn.neighbors import LocalOutlierFactor

        ref = -LocalOutlierFactor(n_neighbors=3, novelty=True).fit(bank64).score_samples(q64)
    else:
        from scipy.spatial.distance import cdist

        ref = np.sort(cdist(q64, bank64), axis=1)[:, :3].mean(1)
    np.testing.assert_allclose(s, ref, rtol=1e-5)


def test_knn_distance_agrees_with_brute_force():
    g = torch.Generator().manual_seed(1)
    bank, q = torch.randn(50, 8, generator=g), torch.randn(7, 8, generator=g)
    d, idx = knn_distance(q, bank, 4, chunk=3)
    full = torch.cdist(q, bank)
    ref = full.sort(1).values[:, :4]
    assert torch.allclose(d, ref, atol=1e-5)
    assert torch.allclose(full.gather(1, idx), d, atol=1e-5)


def test_labeled_reference_that_holds_the_training_images_is_refused(defects_train):
    x = np.stack([defects_train.read(i).image for i in range(40)])
    other = np.random.default_rng(0).integers(0, 255, (40, 24, 24, 1), dtype=np.uint8)
    ref = Reference(ArraySet(np.concatenate([x, other])), np.repeat([0, 1], 40),
                    ["target", "other"], "toy")
    with pytest.raises(ConfigError, match="'target'.*must not be in the reference"):
        oneclass.create("doc", **SMALL).fit(ArraySet(x), reference=ref)


def test_classic_reference_with_the_target_class_is_refused_by_spec():
    with pytest.raises(ConfigError, match="target class 3"):
        check_specs("cifar10:3", "cifar10")
    with pytest.raises(ConfigError, match="fashion-mnist:-7"):
        check_specs("fmnist:7:9", "fashion-mnist:-5")
    check_specs("cifar10:3", "cifar10:-3")
    check_specs("cifar10:3", "mnist")


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    """A data root with a tiny fake mnist.npz: 3 classes of 30 blobs."""
    root = tmp_path_factory.mktemp("root")
    rng = np.random.default_rng(0)

    def split(n):
        y = np.repeat(np.arange(3), n)
        x = rng.integers(0, 40, (len(y), 28, 28)).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, 4 + 7 * c:11 + 7 * c, 8:20] = 220
        return x, y

    (xtr, ytr), (xte, yte) = split(30), split(10)
    np.savez(root / "mnist.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return root


def test_two_class_test_spec_and_reference_without_a_class(fake_root):
    test = load("mnist:1:2", "test", root=str(fake_root))
    assert len(test) == 20 and set(test.kinds) == {"good", "2"}
    assert (test.labels == 1).sum() == 10
    ref = load_reference("mnist:-1", str(fake_root))
    assert ref.labeled and ref.class_names == ["0", "2"] and len(ref) == 60
    assert set(ref.classes.tolist()) == {0, 1}


def test_doc_learns_with_a_labeled_reference(fake_root):
    train = load("mnist:1", "train", root=str(fake_root))
    test = load("mnist:1", "test", root=str(fake_root))
    det = oneclass.create("doc", **SMALL).fit(train, reference=load_reference("mnist:-1", str(fake_root)))
    assert det.reference_["classes"] == ["0", "2"]
    assert det.history_[0]["descriptiveness"] > 0
    assert auroc(test.labels, det.score(test)) > 0.9, auroc(test.labels, det.score(test))


def _class_folders(root, rng):
    for c in range(2):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(12):
            img = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
            img[:, c * 12:(c + 1) * 12] //= 4
            save_png(d / f"{i}.png", img)


def test_cli_trains_and_evaluates_with_a_folder_reference(mvtec_dir, tmp_path):
    ref_dir = tmp_path / "ref"
    _class_folders(ref_dir, np.random.default_rng(1))
    run = tmp_path / "run"
    code = main(["train", "--method", "doc", "--data", str(mvtec_dir), "--out", str(run),
                 "--reference", str(ref_dir), "--epochs", "2", "--set", "net_size=64",
                 "--set", "trainable_blocks=2", "--set", "batch_size=16", "--set", "heatmap=gradcam",
                 "-q"])
    assert code == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["reference"] == str(ref_dir)
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["fitted"]["reference"]["classes"] == ["class0", "class1"]
    assert meta["fitted"]["bank_n"] == 54  # 60 training images, 10% held back
    assert main(["eval", str(run), "-q"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    # the written metrics are those of the written scores, and the scores find the defects
    rows = (run / "scores.csv").read_text().splitlines()[1:]
    labels = np.array([int(r.split(",")[2]) for r in rows])
    scores = np.array([float(r.split(",")[3]) for r in rows])
    assert len(rows) == m["n_test"] == 22 and labels.sum() == m["n_anomalous"] == 12
    assert m["image_auroc"] == pytest.approx(auroc(labels, scores), abs=1e-6)
    assert m["image_auroc"] >= 0.9, m["image_auroc"]
    assert m["pixel_auroc"] is not None


def test_cli_refuses_the_training_folder_as_reference(mvtec_dir, tmp_path, capsys):
    ref_dir = tmp_path / "ref"
    import shutil

    shutil.copytree(mvtec_dir / "train" / "good", ref_dir / "same")
    _class_folders(ref_dir, np.random.default_rng(2))
    code = main(["train", "--method", "doc", "--data", str(mvtec_dir), "--out", str(tmp_path / "r"),
                 "--reference", str(ref_dir), "--epochs", "1", "--set", "net_size=64", "-q"])
    assert code == 2
    assert "'same'" in capsys.readouterr().err


def test_bench_key_names_the_reference_only_when_set():
    from oneclass.bench import SUITES
    from oneclass.bench.suites import _key

    job = {"method": "doc", "data": "cifar10:0", "params": {}, "seed": 0}
    assert _key(job) == '["doc", "cifar10:0", 0, {}]'  # as before references existed
    assert "fashion-mnist" in _key({**job, "reference": "fashion-mnist"})
    refs = {j.get("reference") for j in SUITES["doc-cifar10"]}
    assert refs == {None, "fashion-mnist"}  # never CIFAR-10 itself


def test_unreadable_reference_images_follow_the_bad_image_policy(mvtec_dir, tmp_path, capsys):
    ref_dir = tmp_path / "ref"
    _class_folders(ref_dir, np.random.default_rng(3))
    (ref_dir / "class1" / "zzz.png").write_text("not an image")
    args = ["train", "--method", "doc", "--data", str(mvtec_dir), "--reference", str(ref_dir),
            "--epochs", "1", "--set", "net_size=64", "--set", "trainable_blocks=1",
            "--set", "batch_size=16", "-q"]
    assert main(args + ["--out", str(tmp_path / "r1")]) == 2
    assert "zzz.png" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "r2"), "--on-bad-image", "skip"]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 of 25 reference images" in err and "zzz.png" in err


def test_images_beside_the_class_folders_of_a_reference_are_an_error(tmp_path):
    _class_folders(tmp_path / "ref", np.random.default_rng(4))
    save_png(tmp_path / "ref" / "loose.png", np.zeros((24, 24, 3), np.uint8))
    with pytest.raises(oneclass.errors.DataError, match="1 image.*beside its class folders.*loose"):
        load_reference(str(tmp_path / "ref"))


def test_a_bank_of_one_is_refused_by_name_and_an_untrained_reference_is_reported(
        defects_train, caplog):
    import logging

    with pytest.raises(ConfigError, match="bank_size must be at least 2"):
        oneclass.create("doc", **SMALL, bank_size=1)._check_params()
    x = np.stack([defects_train.read(i).image for i in range(20)])
    other = np.random.default_rng(0).integers(0, 255, (40, 24, 24, 1), dtype=np.uint8)
    ref = Reference(ArraySet(other), np.repeat([0, 1], 20), ["a", "b"], "toy-ref")
    with caplog.at_level(logging.WARNING):
        oneclass.create("doc", **{**SMALL, "epochs": 0}).fit(ArraySet(x), reference=ref)
    assert "reference set toy-ref is not used" in caplog.text


def test_a_class_left_without_readable_images_is_an_error_not_a_silent_class(tmp_path):
    from oneclass.data.reference import screen_reference

    _class_folders(tmp_path / "ref", np.random.default_rng(5))
    for f in (tmp_path / "ref" / "class1").iterdir():
        f.write_text("not an image")
    ref = load_reference(str(tmp_path / "ref"))
    with pytest.raises(oneclass.errors.DataError, match="no readable image left.*class1"):
        screen_reference(ref, "skip")
