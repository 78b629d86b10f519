"""Ground-truth masks: resizing keeps thin defects, and the messages about masks read wrong
(a 0/1 JPEG mask, a mask in another frame than its EXIF-turned image)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from oneclass import data
from oneclass.data.base import Preprocess
from oneclass.errors import DataError
from oneclass.metrics import connected_components


def _save(path: Path, arr: np.ndarray, orientation: int | None = None, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)
    if orientation is not None:
        exif = im.getexif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    im.save(path, **kw)


def _mvtec(root: Path, images: dict[str, np.ndarray], masks: dict[str, np.ndarray],
           image_orientation: int | None = None, mask_orientation: int | None = None,
           mask_suffix: str = ".png", **mask_kw) -> Path:
    """An MVTec-layout folder: one normal image per split, and the anomalous test images
    ``images`` (of type "scratch") with their masks ``masks`` (same keys)."""
    h, w = next(iter(images.values())).shape[:2]
    good = np.full((h, w), 90, np.uint8)
    _save(root / "train" / "good" / "000.png", good)
    _save(root / "test" / "good" / "000.png", good)
    for name, img in images.items():
        _save(root / "test" / "scratch" / f"{name}.png", img, image_orientation)
        _save(root / "ground_truth" / "scratch" / f"{name}_mask{mask_suffix}", masks[name],
              mask_orientation, **mask_kw)
    return root


def _anomalous(ds) -> list[int]:
    return [int(i) for i in np.flatnonzero(ds.labels == 1)]


def _nearest(mask: np.ndarray, size) -> np.ndarray:
    """The resize before the fix: nearest-exact alone."""
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(m, size=tuple(size), mode="nearest-exact")[0, 0].numpy()


# ------------------------------------------------------------------- A. thin defects kept
@pytest.mark.parametrize("offset", range(8))
def test_a_one_pixel_scratch_survives_shrinking_to_the_model_size(offset):
    mask = np.zeros((512, 512), bool)
    mask[100:500, 37 + offset] = True  # vertical 1-pixel line, 400 pixels
    out = Preprocess(size=(224, 224)).mask(mask)
    assert out.shape == (1, 224, 224)
    cols = np.flatnonzero(out[0].numpy().any(axis=0))
    # the line's column covers [37 + offset, 38 + offset) of 512: the output columns overlapping
    # it (each covers [j, j + 1) * 512 / 224)
    lo = 37 + offset
    expected = [j for j in range(224) if j * 512 / 224 < lo + 1 and (j + 1) * 512 / 224 > lo]
    assert cols.tolist() == expected
    assert out[0].sum() > 0


def test_a_thin_scratch_read_from_a_set_stays_in_its_mask(tmp_path):
    img = np.full((64, 64), 100, np.uint8)
    masks = {}
    for k in range(4):
        m = np.zeros((64, 64), np.uint8)
        m[5:60, 10 + k] = 255  # 1-pixel line: shrunk to 28 pixels, nearest-exact may miss it
        masks[f"{k:03d}"] = m
    root = _mvtec(tmp_path / "d", {k: img for k in masks}, masks)
    ds = data.load(str(root), "test")
    pre = Preprocess(size=(28, 28))
    before = [_nearest(ds.read(i).mask, (28, 28)).sum() for i in _anomalous(ds)]
    assert min(before) == 0  # the defect this is about: some lines vanish with nearest-exact
    for i in _anomalous(ds):
        assert pre.mask(ds.read(i).mask).sum() > 0, ds.names[i]


def test_a_lost_speck_marks_the_output_pixels_it_overlaps():
    pre = Preprocess(size=(4, 4))  # 10 -> 4: output i covers [2.5 i, 2.5 (i + 1)); centres 1, 3, 6, 8
    mask = np.zeros((10, 10), bool)
    mask[4, 4] = True  # sampled by no centre; inside output (1, 1) only
    assert np.argwhere(pre.mask(mask)[0].numpy()).tolist() == [[1, 1]]
    mask = np.zeros((10, 10), bool)
    mask[2, 7] = True  # straddles outputs 0-1 (rows) and 2-3 (columns)
    assert np.argwhere(pre.mask(mask)[0].numpy()).tolist() == [[0, 2], [0, 3], [1, 2], [1, 3]]


def test_a_components_nearest_exact_keeps_are_bit_identical():
    rng = np.random.default_rng(0)
    for trial in range(30):
        h, w = rng.integers(20, 300, 2)
        size = tuple(int(v) for v in rng.integers(8, 200, 2))
        # blobs (kept) and 1-pixel specks and lines (often lost)
        mask = np.zeros((h, w), bool)
        for _ in range(rng.integers(1, 6)):
            r, c = rng.integers(0, h), rng.integers(0, w)
            mask[r:r + rng.integers(8, 40), c:c + rng.integers(8, 40)] = True
        for _ in range(rng.integers(0, 12)):
            r, c = rng.integers(0, h), rng.integers(0, w)
            if rng.random() < 0.5:
                mask[r, c] = True
            else:
                mask[r, c:c + rng.integers(1, 30)] = True
        old = _nearest(mask, size)
        new = Preprocess(size=size).mask(mask)[0].numpy()
        assert set(np.unique(new)) <= {0.0, 1.0}
        assert (new >= old).all()  # nothing nearest-exact marks is dropped
        # every component nearest-exact keeps is unchanged: where new and old differ, the
        # pixel overlaps a component that nearest-exact lost entirely
        labels, n = connected_components(mask)  # 8-connected
        rows = np.minimum(np.floor((np.arange(size[0]) + 0.5) * h / size[0]).astype(int), h - 1)
        cols = np.minimum(np.floor((np.arange(size[1]) + 0.5) * w / size[1]).astype(int), w - 1)
        assert np.array_equal(mask[np.ix_(rows, cols)], old.astype(bool))
        kept = set(np.unique(labels[np.ix_(rows, cols)]).tolist()) - {0}
        only_kept = np.isin(labels, sorted(kept))
        assert np.array_equal(Preprocess(size=size).mask(only_kept)[0].numpy(),
                              _nearest(only_kept, size)), trial
        # and every component is in the output
        out = new.astype(bool)
        for k in range(1, n + 1):
            comp = Preprocess(size=size).mask(labels == k)[0].numpy().astype(bool)
            assert comp.any() and (out[comp]).all(), (trial, k)


def test_a_resizing_up_or_to_the_same_size_is_unchanged():
    rng = np.random.default_rng(1)
    mask = rng.random((17, 23)) < 0.1
    for size in [(17, 23), (40, 50), (17, 60)]:
        assert np.array_equal(Preprocess(size=size).mask(mask)[0].numpy(), _nearest(mask, size))


def test_a_many_components_and_no_scipy(monkeypatch):
    rng = np.random.default_rng(2)
    mask = rng.random((300, 400)) < 0.02  # thousands of specks
    pre = Preprocess(size=(64, 96))
    with_scipy = pre.mask(mask)
    monkeypatch.setitem(sys.modules, "scipy", None)  # import scipy raises ImportError
    assert torch.equal(pre.mask(mask), with_scipy)
    assert with_scipy.sum() > _nearest(mask, (64, 96)).sum()


# --------------------------------------------------------------- B. 0/1 JPEG masks
def test_b_a_zero_one_jpeg_mask_is_told_the_jpeg_rule(tmp_path, caplog):
    img = np.full((32, 32), 100, np.uint8)
    m = np.zeros((32, 32), np.uint8)
    m[8:20, 8:20] = 255
    root = _mvtec(tmp_path / "d", {"000": img}, {"000": (m > 0).astype(np.uint8)},
                  mask_suffix=".jpg", quality=95)
    ds = data.load(str(root), "test")
    with caplog.at_level(logging.WARNING):
        s = ds.read(_anomalous(ds)[0])
    assert not s.mask.any()  # the JPEG rule: 1 is below 128
    text = caplog.text
    assert "JPEG masks count a pixel from 128 on" in text
    assert "its largest value is 1" in text or "its largest value is 2" in text
    assert "save it as PNG, or with 255 for anomalous pixels" in text
    assert "0% of the image" not in text


def test_b_an_empty_png_mask_keeps_the_general_message(tmp_path, caplog):
    img = np.full((16, 16), 100, np.uint8)
    root = _mvtec(tmp_path / "d", {"000": img}, {"000": np.zeros((16, 16), np.uint8)})
    ds = data.load(str(root), "test")
    with caplog.at_level(logging.WARNING):
        ds.read(_anomalous(ds)[0])
    assert "marks no pixel as anomalous (0% of the image)" in caplog.text
    assert "JPEG" not in caplog.text


# ------------------------------------------------- C. masks of EXIF-turned images
def test_c_size_error_names_the_exif_orientation(tmp_path):
    img = np.full((32, 48), 100, np.uint8)  # 48x32 on disk; orientation 6: 32x48 as read
    m = np.zeros((32, 48), np.uint8)
    m[4:10, 4:20] = 255
    root = _mvtec(tmp_path / "d", {"000": img}, {"000": m}, image_orientation=6)
    ds = data.load(str(root), "test")
    with pytest.raises(DataError) as err:
        ds.read(_anomalous(ds)[0])
    text = str(err.value)
    assert "mask is 48x32 but its image" in text and "is 32x48 as read" in text
    assert "turned upright by its EXIF orientation tag (6" in text
    assert "it is 48x32 as stored" in text
    assert "upright" in text and "orientation tag" in text


def test_c_a_mask_turned_unlike_its_image_has_its_own_size_error(tmp_path):
    img = np.full((32, 48), 100, np.uint8)
    m = np.zeros((32, 48), np.uint8)
    m[4:10, 4:20] = 255
    root = _mvtec(tmp_path / "d", {"000": img}, {"000": m}, mask_orientation=8)
    ds = data.load(str(root), "test")
    with pytest.raises(DataError, match=r"mask was turned upright by its EXIF orientation tag \(8"):
        ds.read(_anomalous(ds)[0])


@pytest.mark.parametrize("orientation", [6, 3])
def test_c_square_turned_images_with_untagged_masks_warn_once_per_set(tmp_path, caplog,
                                                                        orientation):
    img = np.full((24, 24), 100, np.uint8)
    m = np.zeros((24, 24), np.uint8)
    m[2:6, 2:12] = 255
    root = _mvtec(tmp_path / "d", {"000": img, "001": img, "002": img},
                  {"000": m, "001": m, "002": m}, image_orientation=orientation)
    ds = data.load(str(root), "test")
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # two epochs
            for i in _anomalous(ds):
                ds.read(i)
    turned = [r for r in caplog.records if "upright frame" in r.getMessage()]
    assert len(turned) == 1
    msg = turned[0].getMessage()
    assert f"EXIF orientation {orientation}" in msg and "has none" in msg


def test_c_a_mask_with_its_images_tag_lines_up_without_a_warning(tmp_path, caplog):
    img = np.zeros((24, 24), np.uint8)
    img[2:6, 2:12] = 255  # the defect, drawn where the mask marks it (both as stored)
    m = img.copy()
    root = _mvtec(tmp_path / "d", {"000": img}, {"000": m}, image_orientation=6,
                  mask_orientation=6)
    ds = data.load(str(root), "test")
    with caplog.at_level(logging.WARNING):
        s = ds.read(_anomalous(ds)[0])
    assert np.array_equal(s.mask, s.image[..., 0] > 128)
    assert "upright frame" not in caplog.text


def test_c_untagged_images_and_masks_do_not_warn(tmp_path, caplog):
    img = np.full((24, 24), 100, np.uint8)
    m = np.zeros((24, 24), np.uint8)
    m[2:6, 2:12] = 255
    root = _mvtec(tmp_path / "d", {"000": img}, {"000": m})
    ds = data.load(str(root), "test")
    with caplog.at_level(logging.WARNING):
        ds.read(_anomalous(ds)[0])
    assert caplog.text == ""


def test_c_a_mask_drawn_upright_on_a_turned_non_square_image_does_not_warn(tmp_path, caplog):
    """Stored 40x20 with orientation 6, the image reads 20x40 (w x h); an untagged mask of
    20x40 matches that only if it was drawn on the upright image: the warning (whose advice,
    tagging the mask, would then break it) is not for it."""
    img = np.full((20, 40), 100, np.uint8)  # stored 40 wide, 20 high
    m = np.zeros((40, 20), np.uint8)  # drawn on the upright image: 20 wide, 40 high
    m[2:6, 2:12] = 255
    root = _mvtec(tmp_path / "d", {"000": img}, {"000": m}, image_orientation=6)
    ds = data.load(str(root), "test")
    with caplog.at_level(logging.WARNING):
        s = ds.read(_anomalous(ds)[0])
    assert s.mask.shape == s.image.shape[:2] == (40, 20)
    assert "upright frame" not in caplog.text
