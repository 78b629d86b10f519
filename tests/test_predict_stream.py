"""Batch scoring: resuming after an interruption that cut the last CSV row short."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oneclass.runs import load_model, predict, train


def test_resume_drops_a_cut_row_and_scores_each_image_once(mvtec_dir, tmp_path):
    run = tmp_path / "run"
    train("deep_svdd", str(mvtec_dir), run, {"epochs": 1, "pretrain_epochs": 0, "seed": 0},
          progress=False)
    out = tmp_path / "pred"
    first = predict(run, [str(mvtec_dir / "test")], out, heatmaps=False, batch_size=5)
    assert first["scored"] == 22
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    # interrupted while writing row 8: 7 complete rows and a fragment without a newline
    with open(out / "predictions.csv", "w") as fh:
        fh.write("path,score,label\n" + "".join(f"{r['path']},{r['score']},{r['label']}\n"
                                                for r in rows[:7]) + f"{rows[7]['path']},0.1")
    again = predict(run, [str(mvtec_dir / "test")], out, resume=True, heatmaps=True,
                    batch_size=5)
    assert again["skipped"] == 7 and again["scored"] == 15
    final = list(csv.DictReader(open(out / "predictions.csv")))
    assert sorted(r["path"] for r in final) == sorted(r["path"] for r in rows)
    # label: 1 at or above the model's threshold (the scores are not near it: no rounding)
    threshold = load_model(run).threshold_
    assert all(abs(float(r["score"]) - threshold) > 1e-6 * abs(threshold) for r in final)
    assert [r["label"] for r in final] == [str(int(float(r["score"]) >= threshold)) for r in final]
    assert {r["label"] for r in final} == {"0", "1"}  # both sides of the threshold occur
    by_path = {r["path"]: float(r["score"]) for r in rows}
    assert all(abs(float(r["score"]) - by_path[r["path"]]) <= 1e-6 * max(1, abs(by_path[r["path"]]))
               for r in final)
    assert len(list((out / "heatmaps").glob("*.png"))) == 15  # for the images scored now


@pytest.fixture(scope="module")
def run(mvtec_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("stream") / "run"
    train("deep_svdd", str(mvtec_dir), out, {"epochs": 1, "pretrain_epochs": 0, "seed": 0},
          progress=False)
    return out


def _images(root: Path, names: list[str]) -> Path:
    for k, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((24, 24), 40 * k, np.uint8)).save(root / name)
    return root


def test_heatmap_names_are_unique_and_named_in_the_csv(run, tmp_path):
    """a/img.png, a/img_1.png and b/img.png once gave img, img_1, img_1: one map overwrote
    another. A name in several folders takes its folder's name (test/good/000.png and
    test/crack/000.png were 000 and 000_1, which only the CSV told apart); names stay unique
    against every name used, case-insensitively, in input order."""
    inputs = _images(tmp_path / "in", ["a/img.png", "a/img_1.png", "b/img.png", "c/x.png",
                                       "c/x_1.png"])
    (inputs / "c" / "X.PNG").write_bytes((inputs / "c" / "x.png").read_bytes())
    out = tmp_path / "pred"
    assert predict(run, [str(inputs)], out, batch_size=2)["scored"] == 6
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    got = {Path(r["path"]).relative_to(inputs).as_posix(): r["heatmap"] for r in rows}
    assert got == {"a/img.png": "heatmaps/a_img.png", "a/img_1.png": "heatmaps/img_1.png",
                   "b/img.png": "heatmaps/b_img.png", "c/X.PNG": "heatmaps/X.png",
                   "c/x.png": "heatmaps/x_1.png", "c/x_1.png": "heatmaps/x_1_1.png"}
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == sorted(
        Path(h).name for h in got.values())
    # a resume after a cut row keeps the column; without heatmaps it is empty
    text = (out / "predictions.csv").read_text()
    (out / "predictions.csv").write_text(text[: text.rindex(",")])
    assert predict(run, [str(inputs)], out, resume=True, heatmaps=False)["scored"] == 1
    again = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["heatmap"] for r in again] == [got[Path(r["path"]).relative_to(inputs).as_posix()]
                                             for r in again[:5]] + [""]
    # resumed with heatmaps, a name in several folders keeps its folder's name even when
    # the other folder's image is already done
    keep = [ln for ln in text.splitlines(keepends=True) if "b/img.png" not in ln]
    (out / "predictions.csv").write_text("".join(keep))
    (out / "heatmaps" / "b_img.png").unlink()
    assert predict(run, [str(inputs)], out, resume=True)["scored"] == 1
    assert (out / "heatmaps" / "b_img.png").is_file()


def test_resume_of_a_file_without_the_heatmap_column_keeps_its_columns(run, tmp_path):
    inputs = _images(tmp_path / "in", ["a.png", "b.png", "c.png"])
    out = tmp_path / "pred"
    out.mkdir()
    first = str(inputs / "a.png")
    (out / "predictions.csv").write_text(f"path,score,label\n{first},0.5,0\n")
    assert predict(run, [str(inputs)], out, resume=True)["scored"] == 2
    lines = (out / "predictions.csv").read_text().splitlines()
    assert lines[0] == "path,score,label" and all(len(ln.split(",")) == 3 for ln in lines)


def test_grayscale_images_given_to_a_colour_model_are_named_in_a_warning(tmp_path, caplog):
    import logging

    import oneclass
    from oneclass.data.base import ArraySet
    from oneclass.runs import predict

    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    det = oneclass.create("deep_svdd", epochs=1, pretrain_epochs=1, batch_size=8).fit(ArraySet(colour))
    run = tmp_path / "run"
    det.save(run / "model")
    Image.fromarray(colour[0]).save(tmp_path / "rgb.png")
    Image.fromarray(colour[1, ..., 0]).save(tmp_path / "gray.png")
    with caplog.at_level(logging.WARNING, logger="oneclass"):
        predict(run, [str(tmp_path / "rgb.png"), str(tmp_path / "gray.png")], tmp_path / "p",
                heatmaps=False, progress=False)
    said = [r.getMessage() for r in caplog.records if "grayscale" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("1 of 2 images are grayscale")
    assert "gray.png" in said[0] and "channels=1" in said[0]


def test_heatmaps_lie_over_the_image_as_given_at_its_size(run, tmp_path):
    """A heatmap is drawn over the image as given (its size, its colours), not over the
    model's resized gray input; ``heatmap_size="model"`` keeps the model's view."""
    from oneclass import viz
    from oneclass.data.images import read_image

    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rng.integers(0, 256, (30, 52, 3), dtype=np.uint8)).save(src / "wide.png")
    det = load_model(run)
    assert det.input_shape_[1:] != (30, 52) and det.input_shape_[0] == 1
    img = read_image(src / "wide.png")
    amap = det.anomaly_map(det.preprocess_.image(img, "wide")[None])[0]

    predict(run, [str(src)], tmp_path / "p_image")
    got = np.asarray(Image.open(tmp_path / "p_image" / "heatmaps" / "wide.png").convert("RGB"))
    assert got.shape == (30, 52, 3)
    expected = viz.overlay(img, amap, *det.map_scale_)
    assert np.abs(got.astype(int) - expected).max() <= 1  # one scoring batch vs another

    predict(run, [str(src)], tmp_path / "p_model", heatmap_size="model")
    small = Image.open(tmp_path / "p_model" / "heatmaps" / "wide.png")
    assert small.size == tuple(det.input_shape_[2:0:-1])
    with pytest.raises(Exception, match="heatmap size"):
        predict(run, [str(src)], tmp_path / "p_bad", heatmap_size="original")


def test_overlays_of_large_images_are_scaled_down_to_the_longest_side():
    from oneclass import viz

    img = np.zeros((50, 300), np.uint8)
    assert viz.fit_side(img, 100).shape == (17, 100)  # the layout kept: gray stays 1 channel
    assert viz.fit_side(img[:, :, None], 100).shape == (17, 100, 1)
    assert viz.fit_side(np.zeros((300, 50, 3), np.uint8), 100).shape == (100, 17, 3)
    assert viz.fit_side(img, 300) is img
    assert viz.image_overlay(img, np.ones((8, 8), np.float32), max_side=120).shape == (20, 120, 3)


def _wide(folder: Path, n: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (30, 52, 3), dtype=np.uint8)).save(
            folder / f"wide{k}.png")
    return folder


def test_heatmaps_come_from_the_read_that_scored_the_image(run, tmp_path, monkeypatch):
    """Each image's heatmap is drawn on the copy read for its score, so a file removed (or
    replaced) after it was scored neither stops the run nor gets another overlay; a large
    image's overlay is scaled down to viz.OVERLAY_MAX_SIDE."""
    from oneclass import viz
    from oneclass.data.base import Prepared

    src = _wide(tmp_path / "in", 3)
    reads = []
    real = Prepared.__getitem__

    def read_then_remove(self, i):  # the scoring read: the file goes right after it
        item = real(self, i)
        reads.append(self.images.paths[i].name)
        self.images.paths[i].unlink()
        return item

    monkeypatch.setattr(Prepared, "__getitem__", read_then_remove)
    monkeypatch.setattr(viz, "OVERLAY_MAX_SIDE", 26)
    r = predict(run, [str(src)], tmp_path / "p", batch_size=2)
    assert r["scored"] == 3 and sorted(reads) == ["wide0.png", "wide1.png", "wide2.png"]
    for k in range(3):
        assert Image.open(tmp_path / "p" / "heatmaps" / f"wide{k}.png").size == (26, 15)


def test_resume_keeps_the_heatmap_size_of_the_earlier_rows(run, tmp_path):
    import json

    from oneclass.errors import ConfigError

    src = _wide(tmp_path / "in", 1)
    out = tmp_path / "p"
    predict(run, [str(src)], out, heatmap_size="model")
    assert json.loads((out / "predictions.json").read_text())["heatmap_size"] == "model"
    Image.fromarray(np.zeros((30, 52), np.uint8)).save(src / "more.png")
    with pytest.raises(ConfigError, match="model size.*--heatmap-size image would mix"):
        predict(run, [str(src)], out, resume=True, heatmap_size="image")
    predict(run, [str(src)], out, resume=True)  # follows the rows: the model's size
    small = tuple(load_model(run).input_shape_[2:0:-1])
    assert [Image.open(out / "heatmaps" / f).size for f in ("wide0.png", "more.png")] == [small] * 2
    # a predictions.json from before the size was recorded: those heatmaps were the model's
    side = json.loads((out / "predictions.json").read_text())
    del side["heatmap_size"]
    (out / "predictions.json").write_text(json.dumps(side))
    with pytest.raises(ConfigError, match="model size"):
        predict(run, [str(src)], out, resume=True, heatmap_size="image")


def test_the_cli_takes_the_heatmap_size(run, tmp_path):
    from oneclass.cli import main

    src = _wide(tmp_path / "in", 1)
    assert main(["predict", str(run), str(src), "--out", str(tmp_path / "m"),
                 "--heatmap-size", "model"]) == 0
    assert main(["predict", str(run), str(src), "--out", str(tmp_path / "i")]) == 0
    det = load_model(run)
    assert Image.open(tmp_path / "m" / "heatmaps" / "wide0.png").size == tuple(det.input_shape_[2:0:-1])
    assert Image.open(tmp_path / "i" / "heatmaps" / "wide0.png").size == (52, 30)


def test_the_report_shows_images_as_given_with_their_masks(tmp_path):
    """The report's cards show each image at its size and in its colours (thumbnails of at
    most report.MAX_SIDE), with the map and the mask outline laid over it, not the model's
    resized gray input."""
    import base64
    import io
    import re

    from oneclass import report as report_mod
    from oneclass.data.synthetic import write_mvtec
    from oneclass.runs import report

    data = write_mvtec(tmp_path / "colour", n_train=24, n_test_good=3, n_test_defect=3,
                       size=(30, 52), channels=3, seed=1)
    run = tmp_path / "run"
    train("deep_svdd", str(data), run, {"epochs": 1, "pretrain_epochs": 0, "seed": 0,
                                        "size": 16, "channels": 1}, progress=False)
    html = report(run, top=2, progress=False).read_text(encoding="utf-8")
    cards = re.findall(r'src="data:image/png;base64,([^"]+)"', html)[3:]  # ROC, histogram, bar
    assert cards and max(30, 52) <= report_mod.MAX_SIDE
    for uri in cards:
        with Image.open(io.BytesIO(base64.b64decode(uri))) as im:
            assert im.size == (52, 30)
    with Image.open(io.BytesIO(base64.b64decode(cards[0]))) as im:  # the first card's image
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert np.abs(rgb[..., 0] - rgb[..., 1]).max() > 0  # its colours, not the model's gray


def test_the_all_anomalous_warning_counts_the_rows_of_a_resumed_file(run, tmp_path, monkeypatch,
                                                                     caplog):
    """Resumed, the warning that every image is predicted anomalous counts the earlier rows
    too: ten new defect images after three normal rows are not "every image"."""
    import json
    import logging

    import oneclass.runs.prediction as runs_mod  # where predict looks load_model up

    src = tmp_path / "in"
    _images(src, [f"a{k}.png" for k in range(3)])
    real = runs_mod.load_model

    def with_threshold(value):
        def load(*args, **kwargs):
            det = real(*args, **kwargs)
            det.threshold_ = value
            return det
        return load

    out, again = tmp_path / "p", tmp_path / "q"
    monkeypatch.setattr(runs_mod, "load_model", with_threshold(1e30))  # all normal
    predict(run, [str(src)], out, heatmaps=False)
    _wide(src, 10)
    monkeypatch.setattr(runs_mod, "load_model", with_threshold(-1e30))  # all anomalous
    # --resume refuses another threshold than the earlier rows': record this one for them
    side = json.loads((out / "predictions.json").read_text())
    (out / "predictions.json").write_text(json.dumps({**side, "threshold": -1e30}))
    with caplog.at_level(logging.WARNING, logger="oneclass"):
        assert predict(run, [str(src)], out, resume=True, heatmaps=False)["scored"] == 10
        assert "predicted anomalous" not in caplog.text
        predict(run, [str(src)], again, heatmaps=False)
        assert "all 13 images are at or above the threshold" in caplog.text


def test_an_unfinished_training_is_named_as_such(tmp_path):
    from oneclass.errors import ModelFileError

    (tmp_path / "r" / "checkpoints").mkdir(parents=True)
    (tmp_path / "r" / "checkpoints" / "epoch_0001.pt").write_bytes(b"")
    with pytest.raises(ModelFileError, match="training has not finished.*--resume"):
        load_model(tmp_path / "r")


def test_a_training_that_failed_before_its_first_epoch_is_not_sent_to_resume(tmp_path, capsys):
    """A training stopped by a bad file left checkpoints/ with its pending configuration only;
    eval pointed to --resume, which then found nothing to resume."""
    from oneclass.errors import ModelFileError

    from .conftest import cli

    data = tmp_path / "d"
    data.mkdir()
    for i in range(6):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(data / f"{i}.png")
    (data / "empty.png").write_bytes(b"")
    run = tmp_path / "r"
    assert cli("train", "--method", "deep_svdd", "--data", str(data), "--out", str(run),
               "--epochs", "1", "-q") != 0
    assert (run / "checkpoints").is_dir()
    with pytest.raises(ModelFileError, match="stopped before its first epoch") as err:
        load_model(run)
    assert "--resume" not in str(err.value)


def test_a_subset_of_files_keeps_their_paths(mvtec_dir):
    import oneclass

    test = oneclass.data.load(str(mvtec_dir), "test")
    sub = test.subset([3, 0])
    assert sub.paths == [test.paths[3], test.paths[0]]
    assert sub.subset([1]).paths == [test.paths[0]]
    assert not hasattr(oneclass.data.load("synthetic:stripes:16", "test").subset([0]), "paths")


def test_heatmap_names_take_as_many_folders_as_tell_them_apart(tmp_path):
    from oneclass.runs.prediction import _unique_stems

    paths = [tmp_path / "x/good/000.png", tmp_path / "y/good/000.png", tmp_path / "good/000.png",
             tmp_path / "a/img.png", tmp_path / "a/IMG.png", tmp_path / "b/one.png"]
    assert _unique_stems(paths) == ["x_good_000", "y_good_000", f"{tmp_path.name}_good_000",
                                    "img", "IMG_1", "one"]
    # a resume names the rest alike: collisions are decided over every input
    assert _unique_stems(paths[1:2], {"x_good_000"}, among=paths) == ["y_good_000"]


def test_colour_images_given_to_a_model_trained_on_gray_ones_are_named(run, tmp_path, caplog):
    """A gray model scores a colour image as its luminance, silently; it now says so. RGB
    files that hold gray pixels are not colour images."""
    import logging

    det = load_model(run)
    assert det.preprocess_.channels == 1 and det.channels is None
    gray_rgb = tmp_path / "gray_rgb"
    gray_rgb.mkdir()
    Image.fromarray(np.full((24, 24, 3), 90, np.uint8)).save(gray_rgb / "g.png")
    with caplog.at_level(logging.WARNING, logger="oneclass"):
        predict(run, [str(gray_rgb)], tmp_path / "p1", heatmaps=False)
        assert "colour image" not in caplog.text
        predict(run, [str(_wide(tmp_path / "colour", 1))], tmp_path / "p2", heatmaps=False)
    assert "wide0.png is a colour image, but the model was trained on grayscale" in caplog.text


def test_images_far_from_the_training_images_size_are_named(run, tmp_path, caplog):
    """A model resizes every image to its input: one from another camera, zoom or crop than
    the training images (median recorded in model.json) is scored silently at another scale;
    predict now says so. Images near the training size do not warn."""
    import json
    import logging

    from oneclass.runs import model_dir

    det = load_model(run)
    assert det.train_image_size_ == [24, 24]
    assert json.loads((model_dir(run) / "model.json").read_text())["fitted"][
        "train_image_size"] == [24, 24]
    near, far = tmp_path / "near", tmp_path / "far"
    _images(near, ["a.png", "b.png"])  # 24x24, as trained
    far.mkdir()
    Image.fromarray(np.zeros((30, 100), np.uint8)).save(far / "strip.png")
    with caplog.at_level(logging.WARNING, logger="oneclass"):
        predict(run, [str(near)], tmp_path / "p1", heatmaps=False)
        assert "differ much in size" not in caplog.text
        predict(run, [str(near), str(far)], tmp_path / "p2", heatmaps=False)
    assert ("1 of 3 images differ much in size from the model's training images (median "
            "24x24; first: " in caplog.text and "strip.png, 30x100)" in caplog.text)


def _saved_run(tmp_path: Path, name: str, **params) -> tuple[Path, Path]:
    """A run folder holding only a tiny model, and a folder of three images to score."""
    import oneclass
    from oneclass.data.base import ArraySet

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 16, 16), dtype=np.uint8)
    det = oneclass.create(name, epochs=1, batch_size=8, seed=0, **params).fit(ArraySet(x))
    run = tmp_path / "run"
    det.save(run / "model")
    src = tmp_path / "in"
    src.mkdir()
    for k in range(3):
        Image.fromarray(x[k]).save(src / f"im{k}.png")
    return run, src


def _resave(run: Path, change) -> None:
    """Change a saved model in place (threshold, scoring parameters): its id, a hash of the
    weights, stays the same."""
    from oneclass.export import model_id

    before = model_id(run / "model")
    det = load_model(run, "cpu")
    change(det)
    det.save(run / "model")
    assert model_id(run / "model") == before


def test_resume_refuses_rows_decided_by_another_threshold(tmp_path):
    """The same weights saved with another threshold kept the model id: --resume appended rows
    labelled by the new threshold to rows labelled by the old one (one image 0 and 1)."""
    import json

    from oneclass.errors import ConfigError

    run, src = _saved_run(tmp_path, "deep_svdd", pretrain_epochs=0)
    out = tmp_path / "p"
    predict(run, [str(src / "im0.png")], out, heatmaps=False, progress=False)
    old = load_model(run, "cpu").threshold_
    _resave(run, lambda det: setattr(det, "threshold_", 0.5))
    with pytest.raises(ConfigError, match=rf"threshold {old!r} -> 0\.5.*--overwrite"):
        predict(run, [str(src)], out, resume=True, heatmaps=False, progress=False)
    assert len(list(csv.DictReader(open(out / "predictions.csv")))) == 1  # left as it was
    # a predictions.json from before the scoring parameters were recorded: its threshold is
    side = json.loads((out / "predictions.json").read_text())
    del side["scoring_params"]
    (out / "predictions.json").write_text(json.dumps(side))
    with pytest.raises(ConfigError, match="threshold"):
        predict(run, [str(src)], out, resume=True, heatmaps=False, progress=False)
    _resave(run, lambda det: setattr(det, "threshold_", old))  # back: it goes on
    assert predict(run, [str(src)], out, resume=True, heatmaps=False,
                   progress=False)["scored"] == 2


def test_resume_refuses_rows_scored_with_other_scoring_parameters(tmp_path):
    """AnoGAN saved with another search_steps kept its model id: --resume mixed scores of
    the two searches in one predictions.csv."""
    import json

    from oneclass.errors import ConfigError

    run, src = _saved_run(tmp_path, "anogan", search_steps=2, search_candidates=2, width=8)
    out = tmp_path / "p"
    predict(run, [str(src / "im0.png")], out, heatmaps=False, progress=False)
    recorded = json.loads((out / "predictions.json").read_text())["scoring_params"]
    assert recorded["search_steps"] == 2 and set(recorded) == set(load_model(run).scoring_params)
    _resave(run, lambda det: det.set_scoring_params(search_steps=3))
    with pytest.raises(ConfigError, match="scoring parameter search_steps: 2 -> 3"):
        predict(run, [str(src)], out, resume=True, heatmaps=False, progress=False)
    assert len(list(csv.DictReader(open(out / "predictions.csv")))) == 1
