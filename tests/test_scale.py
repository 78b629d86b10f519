"""Large folders and large images: what a walk-through at scale found (each test fails on the
code before its fix)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from oneclass import data as oneclass_data
from oneclass import runs
from oneclass.cli import main
from oneclass.data.base import FileSet, loader, materialize
from oneclass.data.images import read_image
from oneclass.data.synthetic import write_mvtec
from oneclass.methods._common import normal_only
from oneclass.metrics import pixel_metrics


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small MVTec-layout folder (16x16) and a run trained on it for one epoch."""
    base = tmp_path_factory.mktemp("scale")
    data = write_mvtec(base / "mv", n_train=20, n_test_good=4, n_test_defect=6, size=16, seed=5)
    run = base / "run"
    runs.train("deep_svdd", str(data), run, {"epochs": 1, "pretrain_epochs": 0, "seed": 0},
               progress=False)
    return data, run


def test_eval_reads_each_test_image_twice_not_three_times(small, monkeypatch):
    """The masks were read in a pass of their own that decoded every image again (a third of
    eval's time on 2048x2048 images, with no output); the pixel metrics stay the same."""
    data, run = small
    det = runs.load_model(run)
    test = runs.test_set(str(data), None, runs.read_config(run))
    old_masks = np.concatenate([m[:, 0].numpy() > 0.5 for _, _, m, _, _ in
                                loader(test, det.preprocess_, 64)])
    want = pixel_metrics(old_masks, det.anomaly_map(test))
    reads = []
    real = FileSet.read
    monkeypatch.setattr(FileSet, "read", lambda self, i: reads.append(i) or real(self, i))
    got = runs.evaluate(run, progress=False)
    assert len(reads) == 2 * len(test)  # scores, then maps and masks together
    assert got["pixel_auroc"] == want["pixel_auroc"] and got["aupro"] == want["aupro"]


def test_bad_image_screening_shows_progress_in_eval_predict_and_report(small, tmp_path,
                                                                          monkeypatch):
    """--on-bad-image skip reads every image first, silently (2 minutes for 2000 large
    images)."""
    data, run = small
    asked = []
    real = oneclass_data.screen

    def spy(images, on_bad="error", *, progress=False, **kw):
        asked.append((kw.get("what"), progress))
        return real(images, on_bad, progress=progress, **kw)

    monkeypatch.setattr(oneclass_data, "screen", spy)
    runs.evaluate(run, on_bad_image="skip", progress=True)
    runs.predict(run, [str(data / "test" / "good")], tmp_path / "p", on_bad_image="skip",
                 progress=True)
    runs.report(run, on_bad_image="skip", progress=True)
    assert asked == [("test images", True), ("input images", True), ("test images", True)]


def test_report_galleries_never_show_an_image_twice(small, monkeypatch):
    """--top 100 of 10 test images put every image in both galleries."""
    data, run = small
    got = {}

    def capture(path, **kw):
        got.update(kw)

    monkeypatch.setattr("oneclass.report.build_report", capture)
    runs.report(run, top=100, progress=False)
    most, least = [e.name for e in got["most"]], [e.name for e in got["least"]]
    assert len(most) == len(least) == 5 and not set(most) & set(least)


def test_resumed_predict_counts_the_anomalous_rows_of_the_whole_file(small, tmp_path, capsys):
    """A resumed, finished run said "0 anomalous" of a file holding anomalous rows."""
    data, run = small
    folder = str(data / "test")
    out = tmp_path / "p"
    assert main(["predict", str(run), folder, "--out", str(out), "--no-heatmaps"]) == 0
    first = capsys.readouterr().out
    n = int(first.split(" anomalous")[0].rsplit(" ", 1)[1])
    assert main(["predict", str(run), folder, "--out", str(out), "--no-heatmaps",
                 "--resume"]) == 0
    second = capsys.readouterr().out
    assert f"0 anomalous ({n} in the whole file)" in second


def test_training_keeps_one_copy_of_the_images_when_none_is_anomalous():
    """Every method indexed x[y != 1], a full copy of the training images for the whole
    training even when all were normal; loading kept an all-zero mask per image."""
    x = torch.zeros(6, 1, 8, 8, dtype=torch.uint8)
    assert normal_only(x, torch.zeros(6, dtype=torch.long)) is x
    y = torch.tensor([0, 1, 0, 0, 1, 0])
    assert torch.equal(normal_only(x + torch.arange(6).view(6, 1, 1, 1), y)[:, 0, 0, 0],
                       torch.tensor([0, 2, 3, 5], dtype=torch.uint8))


def test_loading_images_without_masks_builds_no_masks(monkeypatch, tmp_path):
    from oneclass.data.base import ArraySet, Preprocess

    made = []
    real = torch.Tensor.to

    def spy(self, *a, **k):
        out = real(self, *a, **k)
        if a and a[0] is torch.uint8 and self.shape[1:2] == (1,) and not self.any():
            made.append(out.shape)
        return out

    images = ArraySet(np.random.default_rng(0).integers(0, 256, (10, 8, 8), dtype=np.uint8))
    monkeypatch.setattr(torch.Tensor, "to", spy)
    x, _, masks = materialize(images, Preprocess(size=None, channels=1))
    assert masks is None and made == []


def test_sixteen_bit_images_are_read_without_large_temporaries(tmp_path):
    """A 10000x10000 16-bit PNG took 3 GB to read: four float64 temporaries per pixel."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65536, (600, 800), dtype=np.uint16)
    path = tmp_path / "w16.png"
    Image.fromarray(arr).save(path)
    tracemalloc.start()
    got = read_image(Path(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    want = np.clip(arr.astype(np.float64) / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(got[..., 0], want)
    assert peak < 2.5 * arr.size * 8  # one float64 copy and small change, not four


def test_report_of_a_single_test_image_shows_it_once(small, monkeypatch):
    data, run = small
    real = runs.test_set
    monkeypatch.setattr(runs.reporting, "test_set", lambda *a, **k: real(*a, **k).subset([0]))
    got = {}
    monkeypatch.setattr("oneclass.report.build_report", lambda path, **kw: got.update(kw))
    runs.report(run, progress=False)
    assert len(got["most"]) == 1 and got["least"] == []
