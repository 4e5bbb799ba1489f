"""Tests for mlem_jax.data: built-in datasets, image folders, and bad input."""

import numpy as np
import pytest
from PIL import Image

import mlem_jax.data as mdata


def test_digits_shape_range_and_split():
    x = mdata.digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0
    # sklearn's pixels are integers 0..16: the map is v/16 * 2 - 1 exactly.
    from sklearn.datasets import load_digits

    np.testing.assert_array_equal(x[:, 0], load_digits().images / 8.0 - 1.0)
    train, test = mdata.digits(split="train"), mdata.digits(split="test")
    assert len(train) + len(test) == 1797 and len(test) == round(0.1 * 1797)
    # Disjoint: every image of `all` is in exactly one part (digits has few duplicates,
    # so compare the multisets of rows).
    rows = lambda a: sorted(map(bytes, a.reshape(len(a), -1)))
    assert rows(np.concatenate([train, test])) == rows(x)
    np.testing.assert_array_equal(mdata.digits(split="test"), test)  # deterministic


def test_digits_pad_and_resize():
    x = mdata.digits(pad=4)
    assert x.shape == (1797, 1, 16, 16)
    assert np.all(x[:, :, :4] == -1.0) and np.all(x[:, :, :, -4:] == -1.0)
    np.testing.assert_array_equal(x[:, :, 4:12, 4:12], mdata.digits())
    y = mdata.digits(size=16)
    assert y.shape == (1797, 1, 16, 16) and y.min() >= -1.0 and y.max() <= 1.0
    with pytest.raises(ValueError, match="`pad` must be a non-negative int"):
        mdata.digits(pad=-1)
    with pytest.raises(ValueError, match="`split` must be one of"):
        mdata.digits(split="validation")


def test_patches_shapes_ranges_and_determinism():
    grey = mdata.patches(size=16, num=101)
    assert grey.shape == (101, 1, 16, 16) and grey.dtype == np.float32
    assert grey.min() >= -1.0 and grey.max() <= 1.0 and grey.std() > 0.05
    colour = mdata.patches(size=8, num=10, grey=False, split="test")
    assert colour.shape == (10, 3, 8, 8)
    np.testing.assert_array_equal(mdata.patches(size=16, num=101), grey)
    assert not np.array_equal(mdata.patches(size=16, num=101, seed=1), grey)
    assert not np.array_equal(mdata.patches(size=16, num=101, split="test"), grey)


def test_patches_bad_input():
    with pytest.raises(ValueError, match="`size` must be at most the 'test' region"):
        mdata.patches(size=32, split="test")
    with pytest.raises(ValueError, match="`size` must be a positive int"):
        mdata.patches(size=0)


def _write(path, array, fmt=None):
    Image.fromarray(np.asarray(array, np.uint8)).save(path, format=fmt)


@pytest.fixture
def image_folder(tmp_path):
    # A 20×10 PNG: white centre square, black left/right margins of 5 pixels.
    wide = np.zeros((10, 20, 3), np.uint8)
    wide[:, 5:15] = 255
    _write(tmp_path / "a_wide.png", wide)
    # A 12×12 JPEG of constant grey 128 (JPEG is lossless on constant images).
    _write(tmp_path / "b_grey.JPG", np.full((12, 12, 3), 128), fmt="JPEG")
    # A 8×8 greyscale PNG of black.
    _write(tmp_path / "c_black.png", np.zeros((8, 8)))
    return tmp_path


def test_folder_reads_pngs_and_jpegs(image_folder):
    x = mdata.folder(image_folder, size=4)
    assert x.shape == (3, 3, 4, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], 1.0)  # centre crop of the wide image is all white
    np.testing.assert_allclose(x[1], 128 / 255 * 2 - 1, atol=2 / 255)
    np.testing.assert_allclose(x[2], -1.0)
    g = mdata.folder(image_folder, size=4, grey=True)
    assert g.shape == (3, 1, 4, 4)
    assert mdata.folder(image_folder, size=4, limit=2).shape[0] == 2
    loaded = mdata.load_dataset("folder", path=str(image_folder), size=4)
    np.testing.assert_array_equal(loaded, x)


def test_folder_recursive(image_folder):
    sub = image_folder / "sub"
    sub.mkdir()
    _write(sub / "d.png", np.zeros((4, 4, 3)))
    assert mdata.folder(image_folder, size=4).shape[0] == 3
    assert mdata.folder(image_folder, size=4, recursive=True).shape[0] == 4


def test_folder_missing_or_not_a_folder(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="folder: `path` .*nope.* does not exist"
    ):
        mdata.folder(tmp_path / "nope")
    f = tmp_path / "file.png"
    _write(f, np.zeros((4, 4)))
    with pytest.raises(
        NotADirectoryError, match="`path` must be a folder; got .*file.png"
    ):
        mdata.folder(f)


def test_folder_empty_or_without_images(tmp_path):
    with pytest.raises(
        ValueError,
        match="`path` must be a folder of images; it holds no image files .*0 others",
    ):
        mdata.folder(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="holds no image files .*1 others"):
        mdata.folder(tmp_path)


def test_folder_corrupt_files_are_skipped_and_counted(image_folder):
    (image_folder / "z_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (image_folder / "y_truncated.jpg").write_bytes(
        (image_folder / "b_grey.JPG").read_bytes()[:40]
    )
    with pytest.warns(UserWarning, match="skipped 2 of 5 image file.*y_truncated.jpg"):
        x = mdata.folder(image_folder, size=4)
    assert x.shape[0] == 3


def test_folder_only_corrupt_files(tmp_path):
    for name in ("a.png", "b.jpeg"):
        (tmp_path / name).write_bytes(b"garbage")
    with pytest.raises(
        ValueError,
        match="`path` must be a folder of images that can be read \\(none of 2",
    ):
        mdata.folder(tmp_path)


def test_folder_other_files_are_counted(image_folder):
    (image_folder / "README.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="ignored 1 file.*without an image extension"):
        assert mdata.folder(image_folder, size=4).shape[0] == 3


def test_folder_bad_arguments(image_folder):
    with pytest.raises(ValueError, match="`size` must be a positive int"):
        mdata.folder(image_folder, size=0)
    with pytest.raises(ValueError, match="`limit` must be a positive int"):
        mdata.folder(image_folder, limit=0)


def test_unknown_dataset_name():
    with pytest.raises(
        ValueError, match="`name` must be one of 'digits', .*; got 'mnist'"
    ):
        mdata.load_dataset("mnist")
    assert mdata.load_dataset("digits").shape == (1797, 1, 8, 8)


def test_image_grid_scales_to_about_512_pixels_and_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    digits = rng.uniform(-1, 1, (64, 1, 8, 8)).astype(np.float32)
    grid = mdata.image_grid(digits)
    # 8 per row, each 8 pixels enlarged 512 // (8 · 9) = 7 times, 1-pixel borders.
    assert grid.shape == (8 * (56 + 1) + 1,) * 2 and grid.dtype == np.uint8
    # Pixel (0, 0) of image 9 (row 1, column 1), nearest-neighbour enlarged.
    top = 1 + 57
    expected = np.round((digits[9, 0, 0, 0] + 1) * 127.5)
    assert np.all(grid[top : top + 7, top : top + 7] == expected)
    assert mdata.image_grid(digits[:3], ncol=3, scale=1).shape == (10, 28)
    colour = mdata.image_grid(rng.uniform(-1, 1, (2, 3, 16, 16)), scale=2)
    assert colour.shape == (34, 67, 3)
    path = tmp_path / "grid.png"
    mdata.save_image_grid(digits, path)
    with Image.open(path) as image:
        assert image.size == (457, 457)
        assert np.array_equal(np.asarray(image), grid)


def test_image_grid_bad_input():
    x = np.zeros((4, 1, 8, 8))
    with pytest.raises(ValueError, match=r"`images` must be of shape \(n, channels"):
        mdata.image_grid(x[0])
    with pytest.raises(ValueError, match="1 or 3 channels"):
        mdata.image_grid(np.zeros((4, 2, 8, 8)))
    with pytest.raises(ValueError, match="NaN or inf"):
        mdata.image_grid(np.full((1, 1, 2, 2), np.nan))
    with pytest.raises(ValueError, match="`scale` must be a positive int"):
        mdata.image_grid(x, scale=0)
    with pytest.raises(TypeError, match="`ncol` must be a positive int"):
        mdata.image_grid(x, ncol=1.5)
    with pytest.raises(OSError, match="save_image_grid: cannot write `path` '/proc/"):
        mdata.save_image_grid(x, "/proc/mlem-grid.png")
