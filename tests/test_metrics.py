"""Tests for oneclass.metrics against scikit-learn, scipy and brute-force references."""

from fractions import Fraction

import numpy as np
import pytest
from scipy import ndimage
from sklearn import metrics as skm

from oneclass import metrics

EIGHT = np.ones((3, 3), dtype=int)


def _random_binary_problem(seed: int, n: int, n_levels: int | None):
    """Labels with both classes and scores, heavily tied when n_levels is small."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    rng.shuffle(labels)
    if n_levels is None:
        scores = rng.normal(size=n) + 0.8 * labels
    else:
        scores = rng.integers(0, n_levels, n) + (labels * rng.integers(0, 2, n))
        scores = scores.astype(np.float64)
    return labels, scores


CASES = [
    (seed, n, levels)
    for seed in range(6)
    for n, levels in [(2, 2), (9, 3), (50, 4), (300, None), (300, 20)]
]


# --------------------------------------------------------------------------- image level


@pytest.mark.parametrize(("seed", "n", "levels"), CASES)
def test_roc_curve_matches_sklearn(seed, n, levels):
    labels, scores = _random_binary_problem(seed, n, levels)
    fpr, tpr, thr = metrics.roc_curve(labels, scores)
    ref_fpr, ref_tpr, ref_thr = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr, rtol=0, atol=1e-15)
    np.testing.assert_allclose(tpr, ref_tpr, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(thr, ref_thr)
    # one point per distinct score plus the (0, 0) start
    assert len(thr) == len(np.unique(scores)) + 1


@pytest.mark.parametrize(("seed", "n", "levels"), CASES)
def test_auroc_and_ap_match_sklearn(seed, n, levels):
    labels, scores = _random_binary_problem(seed, n, levels)
    assert metrics.auroc(labels, scores) == pytest.approx(
        skm.roc_auc_score(labels, scores), abs=1e-12
    )
    assert metrics.average_precision(labels, scores) == pytest.approx(
        skm.average_precision_score(labels, scores), abs=1e-12
    )


def test_auroc_equals_trapezoid_of_roc_curve():
    labels, scores = _random_binary_problem(42, 200, 6)
    fpr, tpr, _ = metrics.roc_curve(labels, scores)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)
    assert metrics.auroc(labels, scores) == pytest.approx(area, abs=1e-12)


@pytest.mark.parametrize(
    ("labels", "scores", "expected_auc"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], 1.0),  # perfect
        ([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1], 0.0),  # inverted
        ([0, 1, 0, 1], [5, 5, 5, 5], 0.5),  # all tied: ties count one half
        ([0, 1], [3, 3], 0.5),
        ([1, 0, 0, 0], [2, 2, 1, 0], 5 / 6),  # one tie out of three pairs
        ([True, False, False], [1, 0, 1], 0.75),  # bool labels, integer scores
    ],
)
def test_edge_cases_against_sklearn_and_hand_values(labels, scores, expected_auc):
    assert metrics.auroc(labels, scores) == pytest.approx(expected_auc, abs=1e-15)
    assert metrics.auroc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores))
    assert metrics.average_precision(labels, scores) == pytest.approx(
        skm.average_precision_score(labels, scores), abs=1e-15
    )
    fpr, tpr, thr = metrics.roc_curve(labels, scores)
    ref = skm.roc_curve(labels, scores, drop_intermediate=False)
    for got, want in zip((fpr, tpr, thr), ref, strict=True):
        np.testing.assert_allclose(got, want)


def test_average_precision_hand_value_and_all_positive():
    # ranking: 1 (P), 0.8 (N), 0.6 (P): AP = 1/2 * 1 + 1/2 * 2/3
    assert metrics.average_precision([1, 0, 1], [1.0, 0.8, 0.6]) == pytest.approx(5 / 6)
    # a tie between a positive and a negative is one step with precision 1/2
    assert metrics.average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    # no normal sample: every threshold has precision 1
    assert metrics.average_precision([1, 1, 1], [0.2, 0.1, 0.3]) == 1.0


def _brute_force_f1(labels, scores):
    """Best F1 (exact fraction) and the highest threshold reaching it."""
    labels = np.asarray(labels, dtype=bool)
    best, best_t = Fraction(-1), None
    for t in sorted(set(np.asarray(scores).tolist()), reverse=True):
        pred = np.asarray(scores) >= t
        tp = int(np.sum(pred & labels))
        fp = int(np.sum(pred & ~labels))
        fn = int(np.sum(~pred & labels))
        f1 = Fraction(2 * tp, 2 * tp + fp + fn)
        if f1 > best:
            best, best_t = f1, t
    return best, best_t


@pytest.mark.parametrize(("seed", "n", "levels"), CASES)
def test_f1_max_matches_brute_force(seed, n, levels):
    labels, scores = _random_binary_problem(seed, n, levels)
    f1, threshold = metrics.f1_max(labels, scores)
    ref_f1, ref_t = _brute_force_f1(labels, scores)
    assert f1 == pytest.approx(float(ref_f1), abs=1e-15)
    assert threshold == ref_t
    # the returned threshold reproduces the F1 through sklearn's own f1_score
    assert skm.f1_score(labels, scores >= threshold) == pytest.approx(f1, abs=1e-12)


def test_f1_max_perfect_separation():
    f1, threshold = metrics.f1_max([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9])
    assert f1 == 1.0
    assert threshold == 0.7


@pytest.mark.parametrize("func", [metrics.auroc, metrics.roc_curve])
@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_single_class_raises(func, labels):
    with pytest.raises(ValueError, match="only one class"):
        func(labels, [0.1, 0.2, 0.3])


@pytest.mark.parametrize("func", [metrics.average_precision, metrics.f1_max])
def test_no_positive_raises(func):
    with pytest.raises(ValueError, match="without anomalous"):
        func([0, 0, 0], [0.1, 0.2, 0.3])


@pytest.mark.parametrize(
    ("labels", "scores", "match"),
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], "only 0 and 1"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "finite"),
        ([0, 1, 1], [0.1, np.inf, 0.3], "finite"),
        ([0, 1], [0.1, 0.2, 0.3], "same length"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
        ([], [], "empty"),
        ([0, 1], ["a", "b"], "real numbers"),
    ],
)
def test_invalid_input_raises(labels, scores, match):
    with pytest.raises(ValueError, match=match):
        metrics.auroc(labels, scores)


def test_image_metrics_bundle():
    labels, scores = _random_binary_problem(3, 120, 7)
    out = metrics.image_metrics(labels, scores)
    assert set(out) == {"image_auroc", "image_ap", "image_f1", "image_f1_threshold"}
    assert all(isinstance(v, float) and np.isfinite(v) for v in out.values())
    assert out["image_auroc"] == pytest.approx(skm.roc_auc_score(labels, scores))
    assert out["image_ap"] == pytest.approx(skm.average_precision_score(labels, scores))
    assert (out["image_f1"], out["image_f1_threshold"]) == metrics.f1_max(labels, scores)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_image_metrics_single_class_gives_none(labels):
    out = metrics.image_metrics(labels, [0.3, 0.1, 0.2])
    assert out == dict.fromkeys(["image_auroc", "image_ap", "image_f1", "image_f1_threshold"])


# --------------------------------------------------------------------------- pixel level


@pytest.mark.parametrize("seed", range(4))
def test_pixel_auroc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    masks = rng.random((5, 16, 12)) < 0.15
    maps = rng.random((5, 16, 12)).astype(np.float32) + 0.3 * masks
    if seed % 2:  # coarse values: many ties, also across classes
        maps = np.round(maps * 4) / 4
    expected = skm.roc_auc_score(masks.ravel(), maps.ravel())
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_perfect_and_single_class():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 1:3, 1:3] = True
    assert metrics.pixel_auroc(masks, masks.astype(float)) == 1.0
    assert metrics.pixel_auroc(masks, -masks.astype(float)) == 0.0
    with pytest.raises(ValueError, match="only one class"):
        metrics.pixel_auroc(np.zeros((2, 4, 4), bool), np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="same shape"):
        metrics.pixel_auroc(masks, np.ones((2, 4, 5)))


@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 0.6, 0.9])
def test_connected_components_matches_scipy(density):
    rng = np.random.default_rng(int(density * 100))
    for _ in range(5):
        mask = rng.random((rng.integers(1, 40), rng.integers(1, 40))) < density
        labels, n = metrics.connected_components(mask)
        ref, ref_n = ndimage.label(mask, structure=EIGHT)
        assert n == ref_n
        np.testing.assert_array_equal(labels, ref)  # same raster-order numbering as scipy


def test_connected_components_stack_keeps_images_separate():
    rng = np.random.default_rng(7)
    stack = rng.random((6, 15, 17)) < 0.4
    stack[:, -1, :] = True  # would touch the next image's first row if images were merged
    stack[:, 0, :] = True
    labels, n = metrics.connected_components(stack)
    structure = np.zeros((3, 3, 3), dtype=int)
    structure[1] = 1  # 8-connectivity within each image, none across images
    ref, ref_n = ndimage.label(stack, structure=structure)
    assert n == ref_n
    np.testing.assert_array_equal(labels, ref)
    assert set(np.unique(labels[0])) & set(np.unique(labels[1])) == {0}


def test_connected_components_diagonal_and_empty():
    diagonal = np.eye(5, dtype=bool)
    labels, n = metrics.connected_components(diagonal)
    assert n == 1 and labels[diagonal].tolist() == [1] * 5
    anti = np.fliplr(diagonal)
    assert metrics.connected_components(anti)[1] == 1
    labels, n = metrics.connected_components(np.zeros((4, 4), dtype=bool))
    assert n == 0 and not labels.any()


def _reference_aupro(masks, maps, fpr_limit):
    """Brute force: PRO and FPR at every distinct threshold, regions from scipy."""
    regions = []
    for mask, amap in zip(masks, maps, strict=True):
        lab, n = ndimage.label(mask, structure=EIGHT)
        regions += [amap[lab == k] for k in range(1, n + 1)]
    normal = maps[~masks]
    xs, ys = [0.0], [0.0]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        xs.append(float(np.mean(normal >= t)))
        ys.append(float(np.mean([np.mean(r >= t) for r in regions])))
    area = 0.0
    for i in range(1, len(xs)):
        x0, y0, x1, y1 = xs[i - 1], ys[i - 1], xs[i], ys[i]
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:  # segment crosses the limit: interpolate and stop
            y_lim = y0 + (fpr_limit - x0) / (x1 - x0) * (y1 - y0)
            area += (fpr_limit - x0) * (y0 + y_lim) / 2
            break
    return area / fpr_limit


def _blob_masks(rng, n, h, w):
    yy, xx = np.mgrid[:h, :w]
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        for _ in range(rng.integers(0, 3)):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(0.5, h / 3), rng.uniform(0.5, w / 3)
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    masks[0, 1, 1] = True  # at least one region
    return masks


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_aupro_matches_brute_force(seed, fpr_limit):
    rng = np.random.default_rng(seed)
    masks = _blob_masks(rng, 4, 12, 14)
    maps = rng.random(masks.shape) + 0.5 * masks
    if seed % 2:
        maps = np.round(maps * 5) / 5  # ties within and across classes
    expected = _reference_aupro(masks, maps, fpr_limit)
    before = maps.copy()
    assert metrics.aupro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-12)
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(
        skm.roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12
    )
    np.testing.assert_array_equal(maps, before)  # inputs are not sorted in place


def test_aupro_hand_computed_two_regions():
    # One 4x4 image: region A = 1 pixel, region B = 3 pixels, 12 normal pixels.
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, 0] = True  # A
    mask[2:4, 3] = True  # B (vertical pair ...)
    mask[3, 2] = True  # (... plus a neighbour), not touching A
    amap = np.zeros((4, 4))
    amap[0, 0] = 0.9  # A: detected first
    amap[2, 3] = amap[3, 3] = 0.8  # B: 2 of 3 pixels next
    amap[3, 2] = 0.1  # last B pixel
    amap[0, 3] = 0.85  # one normal pixel among the detections
    # curve: (0,0) -> (0, 1/2) at t=0.9 -> (1/12, 1/2) at 0.85 -> (1/12, 5/6) at 0.8
    #        -> (1/12, 1) at 0.1 -> (1, 1) at 0.0
    # area up to 0.3: 1/12 * 1/2 + (0.3 - 1/12) * 1 = 0.3 - 1/24
    assert metrics.connected_components(mask)[1] == 2
    assert metrics.aupro(mask[None], amap[None]) == pytest.approx((0.3 - 1 / 24) / 0.3)
    # with the limit inside the first flat part: PRO = 1/2 over [0, 1/24]
    assert metrics.aupro(mask[None], amap[None], fpr_limit=1 / 24) == pytest.approx(0.5)


def test_aupro_weights_regions_not_pixels():
    # a 1-pixel region fully found and a 15-pixel region missed: PRO is 1/2, not 1/16
    mask = np.zeros((1, 8, 8), dtype=bool)
    mask[0, 0, 0] = True
    mask[0, 5:8, 3:8] = True
    amap = np.zeros((1, 8, 8))
    amap[0, 0, 0] = 1.0
    amap[0, 5:8, 3:8] = -1.0  # below every normal pixel
    assert metrics.aupro(mask, amap) == pytest.approx(0.5)


def test_aupro_perfect_constant_inverted():
    rng = np.random.default_rng(0)
    masks = _blob_masks(rng, 5, 20, 20)
    assert metrics.aupro(masks, masks.astype(np.float32)) == 1.0
    assert metrics.aupro(masks, masks + rng.random(masks.shape) * 0.5) == 1.0
    # constant map: all pixels tie, the curve is the diagonal from (0, 0) to (1, 1), so the
    # normalised area up to L is (L * L / 2) / L = L / 2
    for limit in (0.3, 0.5, 1.0):
        assert metrics.aupro(masks, np.full(masks.shape, 2.0), fpr_limit=limit) == pytest.approx(
            limit / 2
        )
    # inverted perfect map: no region pixel is found before every normal pixel is
    inverted = -masks.astype(np.float64) + 0.01 * rng.random(masks.shape)
    assert metrics.aupro(masks, inverted) == pytest.approx(0.0, abs=1e-12)
    assert metrics.aupro(masks, inverted, fpr_limit=1.0) == pytest.approx(0.0, abs=1e-12)


def test_aupro_invariant_to_monotone_transform_and_single_image():
    rng = np.random.default_rng(5)
    masks = _blob_masks(rng, 3, 16, 16)
    maps = rng.random(masks.shape)
    base = metrics.aupro(masks, maps)
    assert metrics.aupro(masks, np.exp(3 * maps) - 7) == pytest.approx(base, abs=1e-12)
    assert metrics.aupro(masks[0], maps[0]) == pytest.approx(
        _reference_aupro(masks[:1], maps[:1], 0.3), abs=1e-12
    )


def test_aupro_quantile_grid_approximates_exact():
    rng = np.random.default_rng(11)
    masks = _blob_masks(rng, 6, 32, 32)
    maps = rng.random(masks.shape) + 0.4 * masks
    exact = metrics.aupro(masks, maps)
    assert 0.0 < exact < 1.0
    coarse = metrics.aupro(masks, maps, num_thresholds=5)
    fine = metrics.aupro(masks, maps, num_thresholds=1000)
    assert fine == pytest.approx(exact, abs=2e-3)
    assert abs(fine - exact) < abs(coarse - exact)
    # the grid is exact on a perfect map (the FPR-0 vertex is kept)
    assert metrics.aupro(masks, masks.astype(float), num_thresholds=3) == 1.0


def test_aupro_no_region_is_nan_and_bad_parameters_raise():
    maps = np.random.default_rng(0).random((2, 5, 5))
    assert np.isnan(metrics.aupro(np.zeros((2, 5, 5), dtype=bool), maps))
    assert np.isnan(metrics.aupro(np.ones((2, 5, 5), dtype=bool), maps))
    mask = np.zeros((2, 5, 5), dtype=bool)
    mask[0, 2, 2] = True
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fpr_limit"):
            metrics.aupro(mask, maps, fpr_limit=bad)
    with pytest.raises(ValueError, match="num_thresholds"):
        metrics.aupro(mask, maps, num_thresholds=0)
    with pytest.raises(ValueError, match="only 0 and 1"):
        metrics.aupro(mask * 255, maps)


def test_pixel_metrics_bundle():
    rng = np.random.default_rng(2)
    masks = _blob_masks(rng, 3, 10, 10)
    maps = rng.random(masks.shape) + 0.3 * masks
    out = metrics.pixel_metrics(masks, maps)
    assert out["pixel_auroc"] == pytest.approx(skm.roc_auc_score(masks.ravel(), maps.ravel()))
    assert out["aupro"] == pytest.approx(_reference_aupro(masks, maps, 0.3), abs=1e-12)
    none = {"pixel_auroc": None, "aupro": None}
    assert metrics.pixel_metrics(np.zeros((3, 10, 10), dtype=bool), maps) == none
    assert metrics.pixel_metrics(np.ones((3, 10, 10), dtype=bool), maps) == none  # no normal


def test_detector_flags_compare_in_float64_not_at_float32_rounding():
    # scores.csv writes 8 digits: a threshold copied from it lies between float32 values, and
    # a float32 comparison would round it to the score just below and flag that score
    import oneclass

    det = oneclass.create("deep_svdd")
    det.threshold_ = 113.653
    s = np.float32([113.653, 113.654])  # 113.65299987..., 113.65399932...
    assert float(s[0]) < 113.653
    assert det.flags(s).tolist() == [False, True]
    assert det.flags(s[0]).tolist() is False
    det.threshold_ = float(np.float32(0.1)) + 1e-12
    assert det.flags(np.float32([0.1])).tolist() == [False]


def _disc_masks(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    maps = rng.random((n, size, size), dtype=np.float32)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        cy, cx = rng.uniform(0, size, 2)
        masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 < (size / 8) ** 2
    return masks, maps


def test_aupro_memory_does_not_grow_with_the_number_of_distinct_values(monkeypatch):
    import tracemalloc

    # small working chunks, so the bound tested is the part that grows with the data
    monkeypatch.setattr(metrics, "_CHUNK", 1 << 12)
    masks, maps = _disc_masks(20, 128)
    for limit in (0.3, 1.0):
        tracemalloc.start()
        metrics.aupro(masks, maps, fpr_limit=limit)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        # the region labels, sorted normal values, bool masks: about 2.5 copies; a vertex
        # array per distinct value was 7.5 (limit 0.3) to 22 copies (limit 1)
        assert peak < 3.5 * maps.nbytes, (limit, peak / maps.nbytes)
    tracemalloc.start()
    metrics.aupro(masks[:1, :4, :4] | np.eye(4, dtype=bool), maps[:1, :4, :4], num_thresholds=10**7)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 * 2**20  # was 325 MB: one level per requested threshold


def test_aupro_and_pixel_auroc_do_not_depend_on_the_working_chunk(monkeypatch):
    rng = np.random.default_rng(5)
    masks, maps = _disc_masks(6, 16, seed=5)
    ties = np.round(maps * 7).astype(np.float32)  # many tied values across chunk borders
    want = [(metrics.aupro(masks, a, fpr_limit=lim), metrics.pixel_auroc(masks, a))
            for a in (maps, ties) for lim in (0.05, 0.3, 1.0)]
    for chunk in (1, 2, 3, int(rng.integers(4, 50))):
        monkeypatch.setattr(metrics, "_CHUNK", chunk)
        got = [(metrics.aupro(masks, a, fpr_limit=lim), metrics.pixel_auroc(masks, a))
               for a in (maps, ties) for lim in (0.05, 0.3, 1.0)]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_f1_score_of_predictions_is_the_point_of_the_f1_curve_at_that_threshold():
    labels = np.array([0, 0, 1, 1, 1, 0, 1])
    scores = np.array([0.1, 0.7, 0.8, 0.3, 0.9, 0.2, 0.75])
    best, at = metrics.f1_max(labels, scores)
    assert metrics.f1_score(labels, scores >= at) == pytest.approx(best)
    # at 0.76: TP 2 (0.8, 0.9), FP 0, FN 2 (0.3, 0.75): 2*2 / (2*2 + 0 + 2)
    assert metrics.f1_score(labels, scores >= 0.76) == pytest.approx(4 / 6)
    # at 0.5: TP 3, FP 1 (0.7), FN 1 (0.3): 2*3 / (2*3 + 1 + 1)
    assert metrics.f1_score(labels, scores >= 0.5) == pytest.approx(6 / 8)
    with pytest.raises(ValueError, match="without anomalous"):
        metrics.f1_score([0, 0], [1, 0])
    with pytest.raises(ValueError, match="differ in length"):
        metrics.f1_score([0, 1], [1])
