"""Tests for oneclass.viz (colouring, overlays, PNGs, grids) and oneclass.report (HTML report)."""

from __future__ import annotations

import base64
import errno
import io
import pathlib
import re
import zlib

import numpy as np
import pytest
from PIL import Image

from oneclass import metrics, report, viz
from oneclass.errors import OneclassError
from oneclass.report import Example, build_report, roc_curve

PNG_URI = "data:image/png;base64,"


# --------------------------------------------------------------------------------------- viz


def test_colormap_endpoints_and_monotone_brightness():
    v = np.linspace(0, 1, 11).reshape(1, -1)
    c = viz.colormap(v)
    assert c.shape == (1, 11, 3) and c.dtype == np.uint8
    lum = c[0].astype(float) @ [0.299, 0.587, 0.114]
    assert np.all(np.diff(lum) > 0), "inferno-like map gets brighter with the value"
    assert lum[0] < 10 and lum[-1] > 200
    # out-of-range and NaN values are clipped instead of failing
    assert np.array_equal(viz.colormap(np.array([[-3.0, 7.0, np.nan]]))[0], c[0, [0, -1, 0]])


def test_normalize_map_default_and_explicit_range():
    a = np.array([[2.0, 4.0], [6.0, 10.0]])
    n = viz.normalize_map(a)
    assert n.min() == 0.0 and n.max() == 1.0
    np.testing.assert_allclose(n, [[0.0, 0.25], [0.5, 1.0]])
    n2 = viz.normalize_map(a, vmin=0.0, vmax=5.0)
    np.testing.assert_allclose(n2, [[0.4, 0.8], [1.0, 1.0]])  # clipped above vmax


def test_normalize_map_constant_is_zero():
    n = viz.normalize_map(np.full((5, 7), 3.5))
    assert n.shape == (5, 7)
    assert np.all(n == 0.0)
    assert np.isfinite(n).all()


def test_normalize_map_with_an_empty_range_still_shows_what_is_above_it():
    # predict/serve colour with map_scale_ = [median, max] of normal maps, which can be equal
    n = viz.normalize_map(np.array([[0.0, 1.0, 5.0, np.nan]]), 1.0, 1.0)
    np.testing.assert_array_equal(n, [[0.0, 0.0, 1.0, 0.0]])


def test_overlay_shape_dtype_and_colours():
    img = np.full((16, 16, 3), 128, dtype=np.uint8)
    amap = np.zeros((16, 16))
    amap[:, 8:] = 1.0
    out = viz.overlay(img, amap, alpha=0.6)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    high = viz.colormap(np.ones((1, 1)))[0, 0].astype(float)
    low = viz.colormap(np.zeros((1, 1)))[0, 0].astype(float)
    hot, cold = out[0, 15].astype(float), out[0, 0].astype(float)
    # the high-valued half moves towards the map's high-end colour, the low half towards its low
    assert np.linalg.norm(hot - high) < np.linalg.norm(128 - high)
    assert np.linalg.norm(cold - low) < np.linalg.norm(128 - low)
    assert hot.sum() > cold.sum()
    np.testing.assert_allclose(hot, 0.4 * 128 + 0.6 * high, atol=1)


def test_overlay_grayscale_and_resized_map():
    img = np.full((32, 48, 1), 50, dtype=np.uint8)
    amap = np.zeros((4, 6))
    amap[0, 0] = 1.0  # hot spot in the top-left corner of a small map
    out = viz.overlay(img, amap)
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8
    lum = out.astype(float).sum(axis=2)
    assert lum[0, 0] > lum[-1, -1]  # the hot spot stays in the corner after resizing
    out2d = viz.overlay(img[:, :, 0], amap)
    assert np.array_equal(out, out2d)


def test_overlay_shared_scale_is_comparable():
    img = np.zeros((8, 8), dtype=np.uint8)
    weak = np.full((8, 8), 0.1)
    strong = np.full((8, 8), 0.9)
    a = viz.overlay(img, weak, vmin=0.0, vmax=1.0, alpha=1.0)
    b = viz.overlay(img, strong, vmin=0.0, vmax=1.0, alpha=1.0)
    assert a.astype(int).sum() < b.astype(int).sum()


def test_mask_outline_one_pixel_boundary_resized():
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 1:3] = True  # becomes rows/cols 2..5 at 8x8
    out = viz.mask_outline(img, mask, color=(0, 255, 0))
    drawn = (out == [0, 255, 0]).all(axis=2)
    expected = np.zeros((8, 8), dtype=bool)
    expected[2:6, 2:6] = True
    expected[3:5, 3:5] = False
    assert np.array_equal(drawn, expected)
    assert not img.any(), "input image is not modified"


def test_png_round_trip_and_save(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    gray = rgb[:, :, 0]
    for arr in (rgb, gray):
        data = viz.to_png(arr)
        assert data.startswith(b"\x89PNG")
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), arr)
    p = viz.save_png(tmp_path / "sub" / "x.png", rgb)
    assert np.array_equal(np.asarray(Image.open(p)), rgb)
    with pytest.raises(ValueError, match="uint8"):
        viz.to_png(rgb.astype(np.float32))


def test_grid_tiles_and_pads():
    a = np.full((4, 4, 3), 10, dtype=np.uint8)
    b = np.full((2, 3), 200, dtype=np.uint8)
    g = viz.grid([a, b, a], ncol=2, gap=1, fill=255)
    assert g.dtype == np.uint8
    assert g.shape == (2 * 5 + 1, 2 * 5 + 1, 3)
    assert (g[1:5, 1:5] == 10).all()
    assert (g[1:3, 6:9] == 200).all() and (g[3:5, 6:10] == 255).all()  # padded cell
    assert (g[6:10, 6:10] == 255).all()  # empty last cell
    with pytest.raises(ValueError):
        viz.grid([], ncol=2)


# ------------------------------------------------------------------------------------ report


def test_roc_curve_handles_ties():
    fpr, tpr = roc_curve(np.array([0.5, 0.5, 0.5, 0.2]), np.array([1, 0, 1, 0]))
    # the three tied scores form one diagonal step, not a staircase
    np.testing.assert_allclose(fpr, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0.0, 1.0, 1.0])
    fpr, tpr = roc_curve(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    np.testing.assert_allclose(fpr, [0.0, 0.0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0.0, 0.5, 0.5, 1.0, 1.0])
    assert report._auc(fpr, tpr) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        roc_curve(np.array([0.1, 0.2]), np.array([0, 0]))


def _example(name, score, label, *, amap=True, mask=False, size=16, rng=None):
    rng = rng or np.random.default_rng(zlib.crc32(name.encode()))
    image = rng.integers(0, 256, (size, size, 1), dtype=np.uint8)
    m = None
    if mask:
        m = np.zeros((size // 2, size // 2), dtype=bool)
        m[1:4, 1:4] = True
    return Example(
        name=name,
        image=image,
        amap=rng.random((size // 4, size // 4)) * score if amap else None,
        mask=m,
        score=score,
        label=label,
    )


def _build(path, *, labels=None, most=None, least=None, metrics=None, samples=None, **kw):
    rng = np.random.default_rng(0)
    if labels is None:
        labels = np.array([0] * 20 + [1] * 10 + [-1] * 5)
    scores = rng.normal(size=labels.size) + 2.0 * (labels == 1)
    return build_report(
        path,
        title=kw.pop("title", "Run <1>"),
        scores=scores,
        labels=labels,
        threshold=kw.pop("threshold", 0.75),
        metrics=metrics if metrics is not None else {"auroc": 0.9123, "f1": None},
        most=most if most is not None else [],
        least=least if least is not None else [],
        info=kw.pop("info", {"method": "patchcore", "params": {"k": 3, "layers": [2, 3]}}),
        samples=samples,
    )


def _png_uris(text):
    return re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)


def _scores_of_build():
    """The scores and labels :func:`_build` reports by default (the same seed)."""
    labels = np.array([0] * 20 + [1] * 10 + [-1] * 5)
    return np.random.default_rng(0).normal(size=labels.size) + 2.0 * (labels == 1), labels


def _cards(text):
    """``(section heading, caption text)`` of each gallery card, in page order; the caption
    text is the card's text outside its pictures and their figure captions."""
    out = []
    for section in re.findall(r"<section\b.*?</section>", text, re.S):
        heading = re.search(r"<h2>(.*?)</h2>", section)[1]
        for card in section.split('<div class="card">')[1:]:
            card = re.sub(r"<figure>.*?</figure>", "", card, flags=re.S)
            out.append((heading, " ".join(re.sub(r"<[^>]+>", " ", card).split())))
    return out


def test_report_embeds_expected_pngs_metrics_and_info(tmp_path, monkeypatch):
    charts = {}  # chart function name -> its arguments

    def spy(name):
        real = getattr(report, name)

        def chart(*args):
            charts[name] = args
            return real(*args)

        monkeypatch.setattr(report, name, chart)

    spy("_roc_png")
    spy("_hist_png")
    most = [
        _example("bad_01.png", 3.0, 1, mask=True),
        _example("bad_02.png", 2.5, 1, mask=False),
    ]
    least = [_example("good_01.png", 0.1, 0, mask=False), _example("x.png", 0.2, -1, amap=False)]
    samples = {"Generated samples": viz.grid([np.zeros((8, 8), np.uint8)] * 4, ncol=2)}
    path = _build(tmp_path / "report.html", most=most, least=least, samples=samples)
    assert path == tmp_path / "report.html"
    text = path.read_text(encoding="utf-8")

    # ROC + histogram + colour bar + sample grid + per example: image, heatmap, mask outline
    per_example = (1 + 1 + 1) + (1 + 1) + (1 + 1) + 1
    assert text.count(PNG_URI) == 2 + 1 + 1 + per_example
    uris = _png_uris(text)
    assert len(uris) == text.count(PNG_URI)
    for u in uris:  # every embedded image is a valid PNG
        with Image.open(io.BytesIO(base64.b64decode(u))) as im:
            im.verify()

    assert "0.9123" in text  # metric value
    assert re.search(r"<th>f1</th><td[^>]*>—</td>", text)  # None metric
    assert "patchcore" in text and "&quot;layers&quot;" in text  # nested info as JSON
    assert 'id="roc"' in text and "Most anomalous" in text and "Least anomalous" in text
    assert "share one colour scale" in text
    assert "Generated samples" in text
    assert "Run &lt;1&gt;" in text
    # no external resources
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert "<link" not in text

    # galleries: the most anomalous examples under "Most anomalous", in the order given, then
    # the least anomalous ones; each captioned with its name, score, prediction at the
    # threshold (0.75) and true label
    assert _cards(text) == [
        ("Most anomalous", "bad_01.png score 3.0000 predicted anomalous true: anomalous"),
        ("Most anomalous", "bad_02.png score 2.5000 predicted anomalous true: anomalous"),
        ("Least anomalous", "good_01.png score 0.1000 predicted normal true: normal"),
        ("Least anomalous", "x.png score 0.2000 predicted normal true: unknown"),
    ]
    # charts: the histogram of every score with the threshold; the ROC curve of the labelled
    # scores, whose area is the image AUROC of oneclass.metrics
    scores, labels = _scores_of_build()
    hist_scores, hist_labels, threshold = charts["_hist_png"]
    np.testing.assert_array_equal(hist_scores, scores)
    np.testing.assert_array_equal(hist_labels, labels)
    assert threshold == 0.75
    fpr, tpr = charts["_roc_png"]
    known = labels >= 0
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.auroc(labels[known], scores[known]))
    assert 0.8 < metrics.auroc(labels[known], scores[known]) < 1  # not symmetric around 0.5


def test_report_escapes_names(tmp_path):
    evil = "<script>x</script>"
    ex = _example(evil, 1.0, 1)
    path = _build(
        tmp_path / "r.html",
        most=[ex],
        title=evil,
        info={evil: evil},
        metrics={evil: 0.5},
        samples={evil: np.zeros((4, 4), np.uint8)},
    )
    text = path.read_text(encoding="utf-8")
    assert "<script" not in text
    assert "&lt;script&gt;x&lt;/script&gt;" in text
    assert _cards(text) == [("Most anomalous", "&lt;script&gt;x&lt;/script&gt; score 1.0000 "
                                               "predicted anomalous true: anomalous")]


def test_report_shows_bidirectional_controls_in_names_as_escapes(tmp_path):
    """U+202E in a file name reversed the rest of the caption ("scan\u202egnp.exe" showed as
    "scanexe.png"); the report now shows such characters as escapes."""
    name = "scan\u202egnp.exe"
    path = _build(tmp_path / "r.html", most=[_example(name, 1.0, 1)], title=name, info={"data": name})
    text = path.read_text(encoding="utf-8")
    assert "\u202e" not in text
    assert text.count("scan\\u202egnp.exe") >= 3  # title, run table, caption


def test_report_only_normal_labels_has_no_roc(tmp_path):
    labels = np.zeros(12, dtype=int)
    most = [_example("a.png", 1.0, 0)]
    path = _build(tmp_path / "r.html", labels=labels, most=most, metrics={"auroc": None})
    text = path.read_text(encoding="utf-8")
    assert 'id="roc"' not in text
    assert "No ROC curve" in text
    assert 'id="scores"' in text
    # histogram + colour bar + image + heatmap
    assert text.count(PNG_URI) == 4


def test_report_without_maps_or_examples(tmp_path):
    labels = np.array([-1, -1, -1])
    path = _build(tmp_path / "r.html", labels=labels, threshold=None, info={}, metrics={})
    text = path.read_text(encoding="utf-8")
    assert text.count(PNG_URI) == 1  # only the histogram
    assert 'id="heatmap-scale"' not in text
    assert text.count("No examples.") == 2


def test_report_shared_heatmap_scale(tmp_path, monkeypatch):
    seen = []
    real = viz.overlay

    def spy(image, amap, vmin=None, vmax=None, alpha=0.5):
        seen.append((vmin, vmax))
        return real(image, amap, vmin=vmin, vmax=vmax, alpha=alpha)

    monkeypatch.setattr(viz, "overlay", spy)
    a = _example("a", 1.0, 1)
    b = _example("b", 1.0, 0)
    a.amap = np.full((4, 4), 5.0)
    b.amap = np.full((4, 4), -1.0)
    _build(tmp_path / "r.html", most=[a], least=[b])
    assert seen == [(-1.0, 5.0), (-1.0, 5.0)]


def test_report_rejects_bad_labels(tmp_path):
    with pytest.raises(ValueError, match="labels"):
        _build(tmp_path / "r.html", labels=np.array([0, 1, 2]))
    assert not (tmp_path / "r.html").exists()


def test_failed_write_keeps_previous_report(tmp_path, monkeypatch):
    path = _build(tmp_path / "r.html", most=[_example("a", 1.0, 1)])
    before = path.read_bytes()

    def full_disk(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", full_disk)
    with pytest.raises(OneclassError, match="no space"):
        _build(tmp_path / "r.html", title="second run")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temporary file left


def test_failed_render_keeps_previous_report(tmp_path, monkeypatch):
    path = _build(tmp_path / "r.html")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("rendering failed")

    monkeypatch.setattr(report, "_hist_png", boom)
    with pytest.raises(RuntimeError):
        _build(tmp_path / "r.html", title="second run")
    assert path.read_bytes() == before


def test_report_downscales_large_images(tmp_path):
    ex = _example("big.png", 1.0, 1, mask=True, size=1000)
    path = _build(tmp_path / "r.html", labels=np.array([0, 1]), most=[ex])
    sizes = []
    for u in _png_uris(path.read_text(encoding="utf-8"))[3:]:  # skip ROC, histogram, colour bar
        with Image.open(io.BytesIO(base64.b64decode(u))) as im:
            sizes.append(im.size)
    assert sizes == [(report.MAX_SIDE, report.MAX_SIDE)] * 3  # image, heatmap, mask outline


def test_numpy_non_finite_values_in_info_are_shown_as_text():
    import numpy as np

    from oneclass.report import _plain

    assert _plain({"p": np.float64("nan"), "q": [np.float32("inf")]}) == {"p": "nan", "q": ["inf"]}


def test_normalize_map_spans_huge_ranges_without_overflow():
    from oneclass.viz import normalize_map

    out = normalize_map(np.array([[-1e308, 0.0, 1e308]]))
    assert np.allclose(out, [[0.0, 0.5, 1.0]])


def test_a_card_shows_the_prediction_at_the_threshold_beside_the_true_label(tmp_path):
    most = [_example("false_alarm", 2.0, 0), _example("missed", 0.1, 1)]
    text = _build(tmp_path / "r.html", most=most, threshold=0.75).read_text()
    cards = dict((cap.split()[0], cap) for _, cap in _cards(text))
    assert "predicted anomalous" in cards["false_alarm"] and "true: normal" in cards["false_alarm"]
    assert "predicted normal" in cards["missed"] and "true: anomalous" in cards["missed"]


def test_a_score_next_to_the_threshold_is_shown_apart_from_it():
    """"score 1.5659 predicted normal" beside "threshold 1.5659" read as a wrong prediction."""
    assert report._apart(1.565912, 1.565918) == ("1.56591", "1.56592")
    assert report._apart(2.5, 1.25) == ("2.5000", "1.2500")
    assert report._apart(1.5, 1.5) == ("1.5000", "1.5000")
