"""image_folder_lt: CIFAR-10-LT from the JPEG pack vs the official subsets, and a tiny tree."""

import io
import pathlib
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from ride_jax.data import long_tail_counts, select_long_tail
from ride_jax.data.base import CIFAR_MEAN, CIFAR_STD
from ride_jax.data.image_folder import (GREY_MEAN, image_folder_lt, list_image_folder,
                                        long_tail_selection)

DATA = pathlib.Path(__file__).parent / "data"
# ../shared beside the checkout: CI has it, a user's clone does not.
CIFAR_PACK = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")

needs_pack = pytest.mark.skipif(not CIFAR_PACK.is_dir(),
                                reason=f"{CIFAR_PACK} (CIFAR-10-JPEG pack) is absent")


# ----------------------------------------------------------------- CIFAR-10-JPEG pack

@pytest.fixture(scope="module")
def official():
    with np.load(DATA / "cifar_lt_counts.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def cifar_index():
    return list_image_folder(CIFAR_PACK / "cifar10-jpeg.zip")


@pytest.fixture(scope="module")
def cifar_r100():
    # The only decode of the pack in this file: 12,406 train + 10,000 test images.
    return image_folder_lt(CIFAR_PACK / "cifar10-jpeg.zip", ratio=100)


def _ranks(index, selected):
    return np.asarray([int(index.train_files[i].rsplit("/", 1)[1].split(".")[0])
                       for i in selected])


@needs_pack
def test_cifar_listing(cifar_index):
    assert cifar_index.classes == CIFAR10  # sorted names = the standard label order
    assert cifar_index.train_counts.tolist() == [5000] * 10
    assert np.bincount(cifar_index.test_labels).tolist() == [1000] * 10
    assert cifar_index.train_files[:2] == ("train/airplane/0000.jpg", "train/airplane/0001.jpg")
    assert cifar_index.train_files[-1] == "train/truck/4999.jpg"


@needs_pack
def test_cifar10_lt_r100_equals_official(official, cifar_index, cifar_r100):
    ds = cifar_r100
    key = "cifar10_imb0.01"
    np.testing.assert_array_equal(ds.train_counts, official[key + "_counts"])
    np.testing.assert_array_equal(ds.train.labels, official[key + "_selected_labels"])
    np.testing.assert_array_equal(_ranks(cifar_index, ds.selected),
                                  official[key + "_selected_within_class_rank"])
    assert ds.image_shape == (32, 32, 3) and len(ds.test) == 10000
    assert ds.mean == CIFAR_MEAN and ds.std == CIFAR_STD
    assert ds.info["img_max"] == 5000 and ds.info["ratio"] == 100
    # pixels are the named files'
    with zipfile.ZipFile(CIFAR_PACK / "cifar10-jpeg.zip") as z:
        for k in (0, 1, 7000, len(ds.train) - 1):
            name = cifar_index.train_files[ds.selected[k]]
            ref = np.asarray(Image.open(io.BytesIO(z.read(name))).convert("RGB"))
            np.testing.assert_array_equal(ds.train.images[k], ref)
        ref = np.asarray(Image.open(io.BytesIO(z.read("test/truck/0999.jpg"))))
        np.testing.assert_array_equal(ds.test.images[-1], ref)
    assert ds.test.labels[0] == 0 and ds.test.labels[-1] == 9


@needs_pack
@pytest.mark.parametrize("ratio", [100, 50, 10])
def test_cifar10_lt_selection_equals_official(official, cifar_index, ratio):
    selected, img_max = long_tail_selection(cifar_index, ratio)
    assert img_max == 5000
    key = f"cifar10_imb{1 / ratio:g}"
    np.testing.assert_array_equal(cifar_index.train_labels[selected],
                                  official[key + "_selected_labels"])
    np.testing.assert_array_equal(_ranks(cifar_index, selected),
                                  official[key + "_selected_within_class_rank"])


@needs_pack
def test_cifar10_lt_matches_original_file_positions(cifar_index):
    # train_order.npy: class of each image in the ORIGINAL CIFAR-10 training order; the
    # k-th image of class c there is train/<c>/{k:04d}.jpg. The selection made in the
    # original order names the same files.
    order = np.load(CIFAR_PACK / "train_order.npy").astype(np.int64)
    counts = long_tail_counts(10, 5000, 100)
    original = select_long_tail(order, counts)
    rank = np.empty(len(order), np.int64)
    for c in range(10):
        pos = np.flatnonzero(order == c)
        rank[pos] = np.arange(len(pos))
    expected = [f"train/{CIFAR10[order[i]]}/{rank[i]:04d}.jpg" for i in original]
    selected, _ = long_tail_selection(cifar_index, 100)
    assert [cifar_index.train_files[i] for i in selected] == expected


# -------------------------------------------------------------------------- tiny tree
# train: 3 classes x 6 images (4x4 PNG, value = 40 * label + rank), test: 2 per class.
# Class folder names are not in label order on disk; file names are not created in order.

CLASSES = ("ant", "bee", "cat")


def _png(value, size=(4, 4), mode="RGB"):
    buf = io.BytesIO()
    arr = np.full(size[::-1] + ((3,) if mode == "RGB" else ()), value, np.uint8)
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _make_tree(root, per_class=(6, 6, 6), test_per_class=2, mode="RGB"):
    for split, sizes in (("train", per_class), ("test", (test_per_class,) * 3)):
        for c in (2, 0, 1):
            d = root / split / CLASSES[c]
            d.mkdir(parents=True, exist_ok=True)
            for r in reversed(range(sizes[c])):
                (d / f"{r:02d}.png").write_bytes(_png(40 * c + r, mode=mode))
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    (root / "train" / "bee" / ".DS_Store").write_bytes(b"\0")
    (root / "README.md").write_text("ignored")
    return root


def _zip_tree(root, zip_path, prefix=""):
    with zipfile.ZipFile(zip_path, "w") as z:
        for f in sorted(root.rglob("*")):
            if f.is_file():
                z.write(f, prefix + f.relative_to(root).as_posix())
    return zip_path


@pytest.fixture
def tree(tmp_path):
    return _make_tree(tmp_path / "tree")


def _values(ds):  # the pixel value of each image = 40 * label + rank
    return ds.train.images[:, 0, 0, 0].astype(int)


def test_as_is(tree):
    ds = image_folder_lt(tree)
    assert ds.class_names == CLASSES
    assert ds.train_counts.tolist() == [6, 6, 6]
    np.testing.assert_array_equal(ds.selected, np.arange(18))
    np.testing.assert_array_equal(_values(ds), [40 * c + r for c in range(3) for r in range(6)])
    np.testing.assert_array_equal(ds.test.labels, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(ds.test.images[:, 0, 0, 0], [0, 1, 40, 41, 80, 81])
    assert ds.image_shape == (4, 4, 3) and ds.mean == CIFAR_MEAN and ds.std == CIFAR_STD
    assert ds.info["ratio"] is None and ds.info["img_max"] is None
    index = list_image_folder(tree)
    assert index.train_files[:2] == ("train/ant/00.png", "train/ant/01.png")
    assert ds.info["num_train_files"] == 18


def test_as_is_keeps_uneven_counts(tmp_path):
    ds = image_folder_lt(_make_tree(tmp_path, per_class=(5, 3, 1)))
    assert ds.train_counts.tolist() == [5, 3, 1]


def test_long_tail_selection(tree):
    ds = image_folder_lt(tree, ratio=3, seed=0)
    counts = long_tail_counts(3, 6, 3)
    assert ds.train_counts.tolist() == counts.tolist() == [6, 3, 2]
    labels = np.repeat(np.arange(3), 6)
    expected = select_long_tail(labels, counts, 0)
    np.testing.assert_array_equal(ds.selected, expected)
    np.testing.assert_array_equal(_values(ds), 40 * labels[expected] + expected % 6)
    assert ds.info["img_max"] == 6 and ds.info["seed"] == 0
    other = image_folder_lt(tree, ratio=3, seed=1, img_max=4, profile="step")
    assert other.train_counts.tolist() == [4, 1, 1]


def test_zip_equals_folder(tree, tmp_path):
    ref = image_folder_lt(tree, ratio=2)
    for prefix in ("", "top/"):  # tree at the zip's root, or under one top-level folder
        ds = image_folder_lt(_zip_tree(tree, tmp_path / f"t{len(prefix)}.zip", prefix),
                             ratio=2)
        assert ds.info["kind"] == "zip"
        assert ds.fingerprint() == ref.fingerprint()
        np.testing.assert_array_equal(ds.test.images, ref.test.images)


def test_class_order_override(tree):
    ds = image_folder_lt(tree, classes=("cat", "ant", "bee"))
    assert ds.class_names == ("cat", "ant", "bee")
    assert _values(ds)[0] == 80
    with pytest.raises(ValueError, match="permutation"):
        image_folder_lt(tree, classes=("cat", "ant"))


def test_grey_and_normalisation(tmp_path):
    tree = _make_tree(tmp_path, mode="L")
    ds = image_folder_lt(tree)
    assert ds.image_shape == (4, 4, 1) and ds.mean == GREY_MEAN
    rgb = image_folder_lt(tree, mode="RGB", mean=(0.1, 0.2, 0.3), std="train")
    assert rgb.image_shape == (4, 4, 3) and rgb.mean == (0.1, 0.2, 0.3)
    x = ds.train.images.astype(np.float64) / 255
    np.testing.assert_allclose(rgb.std, [x.std()] * 3)
    with pytest.raises(ValueError, match="2 entries for 3-channel"):
        image_folder_lt(tree, mode="RGB", mean=(0.1, 0.2))


def test_sizes_and_resize(tree):
    (tree / "train" / "bee" / "03.png").write_bytes(_png(43, size=(8, 6)))
    with pytest.raises(ValueError, match=r"differ in size: .*'train/bee/03.png' is 8x6"):
        image_folder_lt(tree)
    ds = image_folder_lt(tree, image_size=(2, 3))
    assert ds.image_shape == (2, 3, 3) and ds.test.images.shape[1:] == (2, 3, 3)
    assert ds.info["image_size"] == [2, 3]
    np.testing.assert_array_equal(ds.train.images[9], 43)  # a constant image stays constant


def test_test_split_none(tree):
    ds = image_folder_lt(tree, test_split=None)
    assert len(ds.test) == 0 and ds.test.images.shape == (0, 4, 4, 3)


# ----------------------------------------------------------------------------- errors

def test_error_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder_lt(tmp_path / "nope")


def test_error_not_folder_or_zip(tmp_path):
    f = tmp_path / "data.tar"
    f.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="neither a folder nor a zip"):
        image_folder_lt(f)


def test_error_split_missing(tree, tmp_path):
    with pytest.raises(FileNotFoundError, match="no split folder 'val'"):
        image_folder_lt(tree, test_split="val")
    shutil.rmtree(tree / "test")
    with pytest.raises(FileNotFoundError, match="no split folder 'test'"):
        image_folder_lt(_zip_tree(tree, tmp_path / "t.zip"))


def test_error_classes_differ(tree):
    (tree / "test" / "bee").rename(tree / "test" / "bea")
    with pytest.raises(ValueError, match=r"differ.*only in 'train': \['bee'\].*\['bea'\]"):
        image_folder_lt(tree)


def test_error_empty_class(tree, tmp_path):
    for f in (tree / "test" / "cat").iterdir():
        f.unlink()
    (tree / "test" / "cat" / "x.txt").write_text("no image")
    with pytest.raises(ValueError, match="test/cat .* has no image files"):
        image_folder_lt(tree)
    with pytest.raises(ValueError, match="test/cat .* has no image files"):
        image_folder_lt(_zip_tree(tree, tmp_path / "t.zip"))


def test_error_corrupt_image(tree):
    (tree / "train" / "cat" / "03.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="cannot decode image 'train/cat/03.png'"):
        image_folder_lt(tree)


def test_error_bad_ratio_and_counts(tree):
    with pytest.raises(ValueError, match=r"ratio=0.5 .* ratio=2"):
        image_folder_lt(tree, ratio=0.5)
    with pytest.raises(ValueError, match=r"class 0 \('ant'\) has 6 training images, fewer "
                                         "than the 10"):
        image_folder_lt(tree, ratio=2, img_max=10)
    with pytest.raises(ValueError, match="needs a ratio"):
        image_folder_lt(tree, img_max=4)
    with pytest.raises(ValueError, match="profile='log'"):
        image_folder_lt(tree, ratio=2, profile="log")
    with pytest.raises(ValueError, match="image_size"):
        image_folder_lt(tree, image_size=(0, 3))
