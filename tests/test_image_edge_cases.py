"""Edge cases of reading image and mask files: turned raw TIFFs, 12-, 16- and 32-bit data,
MinIsWhite TIFFs, alpha-only masks, suspicious defect masks, and a folder of MVTec folders."""

from __future__ import annotations

import gc
import io
import logging
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oneclass.data import base, images, load
from oneclass.data.images import read_image, read_mask
from oneclass.errors import DataError

# What each TIFF Orientation asks for to display the stored pixels.
TURN = {5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def _oriented_tiff(path: Path, arr: np.ndarray, orientation: int, compression=None) -> None:
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, exif=exif.tobytes(), compression=compression)


def _tiff(path: Path, arr: np.ndarray, sampleformat: int = 1, photometric: int = 1) -> None:
    """A minimal uncompressed little-endian one-channel TIFF (Pillow writes no int16 TIFF)."""
    h, w = arr.shape
    data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    data += b"\0" * (len(data) % 2)  # the IFD starts on a word boundary
    tags = [(256, 4, w), (257, 4, h), (258, 3, arr.dtype.itemsize * 8), (259, 3, 1),
            (262, 3, photometric), (273, 4, 8), (277, 3, 1), (278, 4, h), (279, 4, arr.nbytes),
            (339, 3, sampleformat)]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHIHH", t, 3, 1, v, 0) if typ == 3 else struct.pack("<HHII", t, 4, 1, v)
        for t, typ, v in tags) + struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8 + len(data)) + data + ifd)


# ------------------------------------------------------------- TIFF orientation 5-8


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
@pytest.mark.parametrize("compression", [None, "tiff_lzw"])
def test_turned_tiff_reads_as_displayed_by_path(tmp_path, orientation, compression):
    """An uncompressed TIFF turned by 90 degrees was scrambled when read by path (Pillow
    memory-maps it and lays it out with the swapped size); from a file object it was right."""
    a = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6) * 10  # every pixel different
    path = tmp_path / "o.tif"
    _oriented_tiff(path, a, orientation, compression)
    expected = np.asarray(Image.fromarray(a).transpose(TURN[orientation]))
    assert expected.shape == (6, 4)
    got = read_image(path)
    assert got.shape == (6, 4, 1)
    assert np.array_equal(got[..., 0], expected)
    with open(path, "rb") as f:  # an upload: the same pixels
        assert np.array_equal(read_image(f, label="upload")[..., 0], expected)


@pytest.mark.parametrize("orientation", [6, 8])
def test_turned_raw_tiff_mask_lines_up(tmp_path, orientation):
    m = np.zeros((4, 6), np.uint8)
    m[0, :2] = 255  # a defect in the top-left corner of the stored pixels
    _oriented_tiff(tmp_path / "m.tif", m, orientation)
    expected = np.asarray(Image.fromarray(m).transpose(TURN[orientation])) > 0
    mask = read_mask(tmp_path / "m.tif")
    assert mask.shape == (6, 4) and mask.sum() == 2
    assert np.array_equal(mask, expected)


def test_reading_by_path_leaves_no_file_open(tmp_path):
    """The file object the path is decoded from is closed (not left to the garbage collector),
    for good, corrupt and truncated images."""
    noise = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "ok.png")
    _oriented_tiff(tmp_path / "ok.tif", noise, 6)
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])  # truncated pixel data
    fds = len(os.listdir("/proc/self/fd"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(3):
            read_image(tmp_path / "ok.png")
            read_mask(tmp_path / "ok.tif")
            for name in ("bad.png", "cut.png"):
                with pytest.raises(DataError, match=name):
                    read_image(tmp_path / name)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert len(os.listdir("/proc/self/fd")) == fds


# ------------------------------------------------------------ 16- and 32-bit integers


def test_signed_16bit_tiff_is_an_error_naming_the_file(tmp_path):
    """Its negative half was clipped to black."""
    _tiff(tmp_path / "s16.tif", np.array([[-300, 0], [1000, 32767]], np.int16), sampleformat=2)
    with Image.open(tmp_path / "s16.tif") as im:
        assert im.mode == "I"
    with pytest.raises(DataError, match=r"s16\.tif: .*\[-300, 32767\].*\[0, 65535\]"):
        read_image(tmp_path / "s16.tif")


@pytest.mark.parametrize("values", [[0, 70000], [-5, 100], [0, 2**31 - 1]])
def test_32bit_values_outside_16bit_range_are_an_error(tmp_path, values):
    """Values above 65535 saturated at white, negative ones clipped to black."""
    Image.fromarray(np.array([values], np.int32), "I").save(tmp_path / "i.tif")
    with pytest.raises(DataError, match=r"i\.tif: integer image with values in \[") as exc:
        read_image(tmp_path / "i.tif")
    assert f"[{min(values)}, {max(values)}]" in str(exc.value)
    assert "rescale" in str(exc.value)


def test_32bit_values_inside_16bit_range_read_as_before(tmp_path):
    Image.fromarray(np.array([[0, 300, 60000, 65535]], np.int32), "I").save(tmp_path / "i.tif")
    assert read_image(tmp_path / "i.tif")[0, :, 0].tolist() == [0, 1, 233, 255]


@pytest.fixture
def few_bits_unwarned(monkeypatch):
    monkeypatch.setattr(images, "_few_bits_warned", False, raising=False)


def test_12bit_data_warns_once_naming_the_first_file(tmp_path, caplog, few_bits_unwarned):
    """12-bit camera data in 16-bit files keeps 17 grey levels (no per-image rescaling, which
    would make brightness differ across images), but says so once, naming the file."""
    ramp = np.linspace(0, 4095, 8 * 8).round().astype(np.uint16).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "cam1.png")
    Image.fromarray(ramp).save(tmp_path / "cam2.tif")
    caplog.set_level(logging.WARNING, logger="oneclass")
    a = read_image(tmp_path / "cam1.png")
    b = read_image(tmp_path / "cam2.tif")
    # read as before: on the 16-bit scale
    assert np.array_equal(a, b)
    assert a.max() == 16 and len(np.unique(a)) == 17
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    assert str(tmp_path / "cam1.png") in warned[0] and "cam2" not in warned[0]
    assert "4096" in warned[0] and "17 grey levels" in warned[0]
    assert "Rescale the files to the 16-bit range" in warned[0]


def test_full_range_16bit_and_black_images_do_not_warn(tmp_path, caplog, few_bits_unwarned):
    ramp = np.linspace(0, 65535, 8 * 8).round().astype(np.uint16).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "full.png")
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(tmp_path / "black.png")
    Image.fromarray(np.array([[0, 40000]], np.uint16)).save(tmp_path / "bright.tif")
    caplog.set_level(logging.WARNING, logger="oneclass")
    full = read_image(tmp_path / "full.png")[..., 0]
    assert np.array_equal(full, (ramp / 65535.0 * 255.0 + 0.5).astype(np.uint8))
    assert read_image(tmp_path / "black.png").max() == 0
    assert read_image(tmp_path / "bright.tif")[0, :, 0].tolist() == [0, 156]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ---------------------------------------------------------------- MinIsWhite TIFFs


@pytest.mark.parametrize("compression", [None, "tiff_adobe_deflate"])
def test_16bit_min_is_white_tiff_reads_like_the_8bit_one(tmp_path, compression):
    """Pillow inverts 8-bit MinIsWhite TIFFs but not 16-bit ones: those came out negative."""
    raw = np.array([[0, 65535, 257 * 100]], np.uint16)  # stored values; 0 is white
    Image.fromarray(raw).save(tmp_path / "w16.tif", compression=compression,
                              tiffinfo={262: 0})
    _tiff(tmp_path / "w8.tif", (raw >> 8).astype(np.uint8), photometric=0)
    with Image.open(tmp_path / "w16.tif") as im:
        assert im.mode == "I;16" and im.tag_v2[262] == 0
    w8 = read_image(tmp_path / "w8.tif")[..., 0]
    assert w8.tolist() == [[255, 0, 155]]  # what Pillow does itself for 8 bit
    assert read_image(tmp_path / "w16.tif")[..., 0].tolist() == [[255, 0, 155]]
    # a mask: white (stored 0) is anomalous, as in the 8-bit one
    assert read_mask(tmp_path / "w16.tif").tolist() == [[True, False, True]]
    assert read_mask(tmp_path / "w8.tif").tolist() == [[True, False, True]]


def test_16bit_min_is_black_tiff_is_not_inverted(tmp_path):
    Image.fromarray(np.array([[0, 65535]], np.uint16)).save(tmp_path / "b16.tif")
    with Image.open(tmp_path / "b16.tif") as im:
        assert im.tag_v2[262] == 1
    assert read_image(tmp_path / "b16.tif")[..., 0].tolist() == [[0, 255]]
    assert read_mask(tmp_path / "b16.tif").tolist() == [[False, True]]


# ------------------------------------------------------------------ alpha-only masks


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_opaque_black_defect_on_transparent_background_is_the_mask(tmp_path, mode):
    """One colour everywhere: the alpha channel alone marks the defect (it read as empty)."""
    defect = np.zeros((4, 5), bool)
    defect[1:3, 2:4] = True
    arr = np.zeros((4, 5, 4 if mode == "RGBA" else 2), np.uint8)
    arr[..., -1] = np.where(defect, 255, 0)
    Image.fromarray(arr, mode).save(tmp_path / "m.png")
    assert np.array_equal(read_mask(tmp_path / "m.png"), defect)


def test_alpha_masks_that_were_right_stay_right(tmp_path):
    # an opaque, all-black mask is empty (not all anomalous: the alpha does not vary)
    Image.fromarray(np.dstack([np.zeros((3, 3, 3), np.uint8), np.full((3, 3), 255, np.uint8)])
                    ).save(tmp_path / "empty.png")
    assert not read_mask(tmp_path / "empty.png").any()
    # white defect on a transparent black background: colour and alpha agree
    m = np.zeros((3, 3, 4), np.uint8)
    m[1, 1] = (255, 255, 255, 255)
    Image.fromarray(m).save(tmp_path / "white.png")
    assert read_mask(tmp_path / "white.png").tolist() == [[False] * 3, [False, True, False],
                                                          [False] * 3]
    # colour varies: a transparent white pixel is still not anomalous
    m[0, 0] = (255, 255, 255, 0)
    Image.fromarray(m).save(tmp_path / "both.png")
    assert read_mask(tmp_path / "both.png").sum() == 1


# ------------------------------------------------------- empty and inverted defect masks


def _mvtec(root: Path, masks: dict[str, np.ndarray]) -> Path:
    """A tiny MVTec-layout folder: one anomalous test image per mask, named by the key."""
    for sub in ("train/good", "test/good", "test/crack", "ground_truth/crack",
                "ground_truth/good"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    img = np.full((10, 10), 90, np.uint8)
    Image.fromarray(img).save(root / "train/good/000.png")
    Image.fromarray(img).save(root / "test/good/000.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "ground_truth/good/000_mask.png")
    for name, m in masks.items():
        Image.fromarray(img).save(root / f"test/crack/{name}.png")
        Image.fromarray(m.astype(np.uint8) * 255).save(root / f"ground_truth/crack/{name}_mask.png")
    return root


@pytest.fixture
def masks_unwarned(monkeypatch):
    monkeypatch.setattr(base, "_warned_masks", set(), raising=False)


def test_empty_and_inverted_defect_masks_warn_once_each(tmp_path, caplog, masks_unwarned):
    good = np.zeros((10, 10), bool)
    good[2:5, 2:5] = True  # 9 %
    full = np.ones((10, 10), bool)
    full[0, :5] = False  # 95 %: an inverted mask?
    root = _mvtec(tmp_path / "cat", {"a_good": good, "b_empty": np.zeros((10, 10), bool),
                                     "c_inverted": full, "d_all": np.ones((10, 10), bool)})
    caplog.set_level(logging.WARNING, logger="oneclass")
    test = load(str(root), "test")
    for _ in range(2):  # every epoch and pass reads the masks again: warned once
        for i in range(len(test)):
            test.read(i)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 3, warned
    by_file = {Path(w.split(": ")[0]).name: w for w in warned}
    assert set(by_file) == {"b_empty_mask.png", "c_inverted_mask.png", "d_all_mask.png"}
    assert str(root / "ground_truth/crack/b_empty_mask.png") in by_file["b_empty_mask.png"]
    assert "no pixel" in by_file["b_empty_mask.png"] and "0%" in by_file["b_empty_mask.png"]
    assert "95.0%" in by_file["c_inverted_mask.png"]
    assert "inverted" in by_file["c_inverted_mask.png"]
    assert "100.0%" in by_file["d_all_mask.png"]
    # the masks are read as they are: a warning, not a change
    masks = {test.names[i]: test.read(i).mask for i in range(len(test))}
    assert masks["test/crack/c_inverted.png"].mean() == pytest.approx(0.95)
    assert not masks["test/crack/b_empty.png"].any()
    assert not masks["test/good/000.png"].any()


def test_defect_masks_warn_when_materialized_for_training_or_eval(tmp_path, caplog,
                                                                  masks_unwarned):
    """The warning is given where the images are read for training and eval (loader)."""
    root = _mvtec(tmp_path / "cat", {"x": np.zeros((10, 10), bool)})
    caplog.set_level(logging.WARNING, logger="oneclass")
    x, _, masks = base.materialize(load(str(root), "test"), base.Preprocess())
    assert masks is not None and masks.sum() == 0
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        str(root / "ground_truth/crack/x_mask.png")]


# ------------------------------------------------------ a folder of MVTec-layout folders


@pytest.mark.parametrize("split", ["train", "test"])
def test_folder_of_mvtec_categories_is_an_error_naming_them(tmp_path, split):
    """The unpacked MVTec AD root read as a plain folder trained on test defects and masks."""
    m = np.zeros((10, 10), bool)
    m[1:3, 1:3] = True
    for cat in ("bottle", "cable", "grid", "hazelnut"):
        _mvtec(tmp_path / "mvtec" / cat, {"000": m})
    with pytest.raises(DataError) as exc:
        load(str(tmp_path / "mvtec"), split)
    msg = str(exc.value)
    assert msg.startswith(f"{tmp_path / 'mvtec'}: holds 4 folders in MVTec AD layout")
    assert "(bottle, cable, grid, ...)" in msg
    assert f"--data {tmp_path / 'mvtec' / 'bottle'}" in msg
    # one category is read as before
    assert len(load(str(tmp_path / "mvtec" / "bottle"), split)) == (1 if split == "train" else 2)


def test_mvtec_category_deeper_or_through_a_link_is_found(tmp_path):
    m = np.zeros((10, 10), bool)
    m[1, 1] = True
    _mvtec(tmp_path / "data" / "mvtec" / "bottle", {"000": m})
    with pytest.raises(DataError, match=r"holds 1 folder in MVTec AD layout \(mvtec/bottle\)"):
        load(str(tmp_path / "data"), "train")
    (tmp_path / "linked").mkdir()
    os.symlink(tmp_path / "data" / "mvtec" / "bottle", tmp_path / "linked" / "bottle")
    with pytest.raises(DataError, match=r"--data .*linked/bottle"):
        load(str(tmp_path / "linked"), "train")


def test_nested_plain_folders_still_load(tmp_path):
    """Sub-folders, even ones named train/ or test/, are fine when none is in MVTec layout."""
    for rel in ("a/x.png", "a/b/y.png", "c/test/z.png", "d/train/good/w.png", "e/ground_truth/v.png"):
        (tmp_path / "p" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "p" / rel)
    train = load(str(tmp_path / "p"), "train")
    assert len(train) == 5 and set(train.labels) == {0}
    assert len(load(str(tmp_path / "p"), "test")) == 5
    # a folder inside an MVTec category (its train/ or test/) is a plain folder too
    m = np.zeros((10, 10), bool)
    m[0, 0] = True
    cat = _mvtec(tmp_path / "bottle", {"000": m})
    assert len(load(str(cat / "test"), "test")) == 2


def test_predict_on_a_folder_of_categories_skips_the_masks(tmp_path):
    """predict lists its inputs itself (it scores whatever is below a folder): unchanged."""
    from oneclass.runs.prediction import _input_paths

    m = np.zeros((10, 10), bool)
    m[1, 1] = True
    _mvtec(tmp_path / "mvtec" / "bottle", {"000": m})
    paths = _input_paths([str(tmp_path / "mvtec")])
    assert sorted(p.relative_to(tmp_path / "mvtec").as_posix() for p in paths) == [
        "bottle/test/crack/000.png", "bottle/test/good/000.png", "bottle/train/good/000.png"]


def test_upload_bytes_and_path_agree_for_a_turned_16bit_tiff(tmp_path):
    """The same pixels whichever way the file comes in (16-bit, turned, uncompressed)."""
    a = (np.arange(12, dtype=np.uint16).reshape(3, 4) + 1) * 5000
    _oriented_tiff(tmp_path / "t.tif", a, 6)
    by_path = read_image(tmp_path / "t.tif")
    by_bytes = read_image(io.BytesIO((tmp_path / "t.tif").read_bytes()), label="t.tif")
    assert by_path.shape == (4, 3, 1)
    assert np.array_equal(by_path, by_bytes)
    expected = np.asarray(Image.fromarray(a).transpose(TURN[6])).astype(np.float64)
    assert np.array_equal(by_path[..., 0], (expected / 65535 * 255 + 0.5).astype(np.uint8))


# ---------------------------------------------------------------- sizes of the training images
def _gray(path: Path, h: int, w: int, exif_orientation: int | None = None) -> None:
    im = Image.fromarray(np.full((h, w), 128, np.uint8))
    if exif_orientation is None:
        im.save(path)
    else:
        exif = im.getexif()
        exif[0x0112] = exif_orientation
        im.save(path, exif=exif.tobytes())


def test_the_input_size_follows_the_median_image_not_the_first(tmp_path):
    import oneclass

    folder = tmp_path / "imgs"
    folder.mkdir()
    _gray(folder / "a_thumb.png", 24, 24)  # sorted first
    for i in range(6):
        _gray(folder / f"img{i}.png", 40, 56)
    det = oneclass.create("deep_svdd")
    assert det._resolve_preprocess(load(str(folder), split="train")).size == (40, 56)


def test_image_sizes_come_from_headers_upright_as_read(tmp_path):
    _gray(tmp_path / "turned.jpg", 10, 30, exif_orientation=6)
    _gray(tmp_path / "plain.png", 10, 30)
    for name in ("turned.jpg", "plain.png"):
        assert images.image_size(tmp_path / name) == read_image(tmp_path / name).shape[:2]
    fs = base.FileSet([tmp_path / "turned.jpg", tmp_path / "plain.png"], [0, 0])
    assert fs.typical_size() == ((20, 20), 2)  # the median of 30x10 and 10x30, two sizes
    assert fs.subset([1]).typical_size() == ((10, 30), 1)


@pytest.mark.parametrize("method, hw", [("fcdd", (3, 6)), ("anogan", (1, 2)), ("bigan", (1, 2))])
def test_images_too_small_for_a_network_are_a_config_error(method, hw):
    import oneclass
    from oneclass.data.base import ArraySet
    from oneclass.errors import ConfigError

    x = np.random.default_rng(0).integers(0, 256, (8, *hw), dtype=np.uint8)
    det = oneclass.create(method, epochs=1, batch_size=4)
    with pytest.raises(ConfigError, match=rf"{hw[0]}x{hw[1]} pixels are too small.*--set size="):
        det.fit(ArraySet(x))
    assert not hasattr(det, "model_")


def test_mixed_sizes_log_the_models_input_size(tmp_path, caplog):
    """The log of a set of several image sizes names the model's input size, not only their
    median (which a fixed-size method does not use)."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k, (h, w) in enumerate([(100, 120), (110, 130), (109, 129)] * 4):
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(folder / f"{k}.png")
    with caplog.at_level(logging.INFO, logger="oneclass"):
        import oneclass

        det = oneclass.create("deep_svdd", epochs=1, pretrain_epochs=0, holdout=0.0)
        det.fit(load(str(folder), "train"))
    h, w = det.input_shape_[1:]
    assert (h, w) != (109, 129)
    assert f"median 109x129; every image is resized to the model's input, {h}x{w}" in caplog.text
