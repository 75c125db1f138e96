"""tfds sources under ``tfds.testing.mock_data``: the official CIFAR-LT subset, streaming sources.

No network: every tfds read is mocked (deterministic labels and ids injected through
``as_dataset_fn``), and the missing-data paths point at empty folders.
"""

import json
import pathlib

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

from ride_jax.data import shot_masks  # noqa: E402
from ride_jax.data import tfds_sources as ts  # noqa: E402
from ride_jax.data.registry import dataset_arguments  # noqa: E402

DATA = pathlib.Path(__file__).parent / "data"
CASES = [("cifar10", 10, 5000, r) for r in (100, 50, 10)] + [
    ("cifar100", 100, 500, r) for r in (100, 50, 10)]
JPEG = tf.io.encode_jpeg(tf.fill([30, 20, 3], tf.constant(128, tf.uint8))).numpy()


@pytest.fixture(scope="module")
def official():
    with np.load(DATA / "cifar_lt_counts.npz") as f:
        return {k: f[k] for k in f.files}


def _mock(splits):
    """``mock_data`` serving ``splits[split]`` (a dict of arrays) for every builder.

    Decoders are ignored: the arrays are already what the readers expect. A split
    without ``'image'`` gets the same tiny JPEG for every example.
    """
    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kw):
        if split not in splits:
            raise AssertionError(f"mock has no split {split!r}")
        cols = splits[split]
        ds = tf.data.Dataset.from_tensor_slices(cols)
        if "image" not in cols:
            images = tf.data.Dataset.from_tensors(JPEG).repeat(len(next(iter(cols.values()))))
            ds = tf.data.Dataset.zip(ds, images).map(lambda ex, im: dict(ex, image=im))
        return ds
    return tfds.testing.mock_data(as_dataset_fn=as_dataset,
                                  policy=tfds.testing.MockPolicy.USE_CODE)


# --------------------------------------------------------------------------- CIFAR-LT


def _cifar_mock(classes, per_class, seed=1):
    """50000 training examples with a known original order, served in a permuted tfds order.

    Pixel (0, 0) of each image encodes its ORIGINAL position: channel 0 = pos % 256,
    channel 1 = pos // 256.
    """
    n = classes * per_class
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(classes), per_class))  # original order
    tfds_order = rng.permutation(n)  # the tfds example k is original example tfds_order[k]

    def split(prefix, lab, order):
        img = np.zeros([len(order), 1, 1, 3], np.uint8)
        img[:, 0, 0, 0] = order % 256
        img[:, 0, 0, 1] = order // 256
        return {"id": np.array([f"{prefix}_{i:05d}" for i in order]), "image": img,
                "label": lab[order].astype(np.int64)}

    test_labels = np.arange(10 * classes) % classes
    return labels, {"train": split("train", labels, tfds_order),
                    "test": split("test", test_labels, rng.permutation(len(test_labels)))}


@pytest.fixture(scope="module")
def cifar_mocks():
    return {"cifar10": _cifar_mock(10, 5000), "cifar100": _cifar_mock(100, 500)}


def _position(images):
    px = images[:, 0, 0].astype(np.int64)
    return px[:, 0] + 256 * px[:, 1]


def _key(name, ratio):
    return f"{name}_imb{1 / ratio:g}"


@pytest.mark.parametrize("name,classes,img_max,ratio", CASES)
def test_cifar_lt_selects_the_official_subset(official, cifar_mocks, name, classes, img_max,
                                              ratio):
    labels, splits = cifar_mocks[name]
    fn = ts.cifar10_lt if name == "cifar10" else ts.cifar100_lt
    with _mock(splits):
        ds = fn(ratio=ratio)
    key = _key(name, ratio)
    np.testing.assert_array_equal(ds.train_counts, official[key + "_counts"])
    # Selected labels and within-class ranks (in the ORIGINAL order) = the official ones.
    np.testing.assert_array_equal(labels[ds.selected], official[key + "_selected_labels"])
    rank = np.empty(len(labels), np.int64)
    for c in range(classes):
        pos = np.flatnonzero(labels == c)
        rank[pos] = np.arange(len(pos))
    np.testing.assert_array_equal(rank[ds.selected],
                                  official[key + "_selected_within_class_rank"])
    # The arrays follow `selected`: each image is the original example it claims to be.
    pos = _position(ds.train.images)
    np.testing.assert_array_equal(pos, ds.selected)
    np.testing.assert_array_equal(ds.train.labels, labels[ds.selected])
    # Test split in the original test order.
    test_pos = _position(ds.test.images)
    np.testing.assert_array_equal(test_pos, np.arange(len(ds.test)))
    assert ds.mean == ts.CIFAR_MEAN and ds.std == ts.CIFAR_STD
    assert ds.info == {"source": f"tfds:{name}", "ratio": float(ratio), "profile": "exp",
                       "seed": 0, "img_max": float(img_max), "num_original_train": 50000}
    assert ds.name == f"{name}_lt" and ds.num_classes == classes


def test_cifar_lt_step_profile_and_img_max(cifar_mocks):
    _, splits = cifar_mocks["cifar10"]
    with _mock(splits):
        ds = ts.cifar10_lt(ratio=10, profile="step", img_max=1000, seed=3)
    np.testing.assert_array_equal(ds.train_counts, [1000] * 5 + [100] * 5)
    assert ds.info["img_max"] == 1000 and ds.info["seed"] == 3


def test_cifar_lt_bad_arguments(cifar_mocks):
    _, splits = cifar_mocks["cifar10"]
    with _mock(splits):
        with pytest.raises(ValueError, match="ratio=0.01.*ratio=100"):
            ts.cifar10_lt(ratio=0.01)
        with pytest.raises(ValueError, match="profile='linear'.*valid choices"):
            ts.cifar10_lt(profile="linear")


def test_original_order():
    order = ts.original_order([b"train_00002", b"train_00000", b"train_00001"], "train")
    np.testing.assert_array_equal(order, [1, 2, 0])
    with pytest.raises(ValueError, match="'test_00000'.*train_<position>"):
        ts.original_order(["test_00000"], "train")
    with pytest.raises(ValueError, match="not a permutation"):
        ts.original_order(["train_00000", "train_00002"], "train")


def test_cifar_missing_data_is_one_clear_error(tmp_path, monkeypatch):
    def offline(self, *a, **k):
        raise ConnectionError("no network")
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(ts.DatasetNotFoundError, match=r"tfds build cifar100 --data_dir"):
        ts.cifar100_lt(data_dir=str(tmp_path))


# --------------------------------------------------------------------------- lists


def test_shipped_places_lists_and_imagenet_counts():
    paths, labels = ts.read_list(ts.PLACES_TRAIN_LIST)
    counts = np.bincount(labels, minlength=365)
    assert len(paths) == 62500 and counts.max() == 4980 and counts.min() == 5
    assert [int(m.sum()) for m in shot_masks(counts).values()] == [131, 163, 71]
    paths, labels = ts.read_list(ts.PLACES_TEST_LIST)
    assert len(paths) == 36500 and (np.bincount(labels) == 100).all()
    assert paths[0].startswith("val/") and "Places365_val_" in paths[0]
    official = ts._official_imagenet_lt_counts()
    assert official.sum() == 115846 and len(official) == 1000
    assert [int(m.sum()) for m in shot_masks(official).values()] == [385, 479, 136]


def test_read_list_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("a/b.jpg 1\nno_label_here\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: expected 'relative/path label'"):
        ts.read_list(bad)
    with pytest.raises(FileNotFoundError, match="no list file 'nope.txt'"):
        ts.read_list("nope.txt")


# --------------------------------------------------------------------------- ImageNet-LT


def test_imagenet_lt_counts_from_labels():
    official = ts._official_imagenet_lt_counts()
    rng = np.random.default_rng(0)
    train_labels = rng.permutation(np.repeat(np.arange(1000), official))
    test_labels = np.repeat(np.arange(1000), 2)
    splits = {
        "train": {"label": train_labels,
                  "file_name": np.full([len(train_labels)], "x.JPEG")},
        "test": {"label": test_labels,
                 "file_name": np.full([2000], "y.JPEG")}}
    with _mock(splits):
        ds = ts.imagenet_lt(color_jitter=False)
    np.testing.assert_array_equal(ds.train_counts, official)
    assert ds.num_train == 115846 and ds.num_test == 2000 and ds.num_classes == 1000
    assert ds.info["counts_match_official"] is True and ds.color_jitter is False
    assert ds.class_names[0] == "n01440764" and ds.mean == ts.IMAGENET_MEAN
    assert ds.describe()["num_train"] == 115846


def test_imagenet_lt_warns_on_other_counts():
    splits = {s: {"label": np.arange(1000),
                  "file_name": np.full([1000], "x.JPEG")} for s in ("train", "test")}
    with _mock(splits), pytest.warns(UserWarning, match="do not match"):
        ds = ts.imagenet_lt()
    assert ds.info["counts_match_official"] is False


def test_streaming_sources_missing_data_is_one_clear_error(tmp_path):
    with pytest.raises(ts.DatasetNotFoundError,
                       match=r"ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar"
                             r".*downloads/manual"):
        ts.imagenet_lt(data_dir=str(tmp_path))
    with pytest.raises(ts.DatasetNotFoundError, match=r"tfds build i_naturalist2018"):
        ts.inat2018(data_dir=str(tmp_path))
    with pytest.raises(ts.DatasetNotFoundError, match=r"places365_small.*image_root"):
        ts.places_lt(data_dir=str(tmp_path))
    with pytest.raises(ts.DatasetNotFoundError, match=r"easy-format"):
        ts.places_lt(image_root=str(tmp_path))


# --------------------------------------------------------------------------- iNaturalist


def _inat_splits():
    train_ids = np.array([f"h{i:04d}" for i in range(30)])
    train_labels = np.arange(30) % 8142
    val_ids = np.array([f"v{i:04d}" for i in range(9)])
    return {"train": {"id": train_ids, "label": train_labels,
                      "supercategory": np.zeros(30, np.int64)},
            "validation": {"id": val_ids, "label": np.arange(9),
                           "supercategory": np.zeros(9, np.int64)}}


def test_inat2018_tfds_splits():
    with _mock(_inat_splits()):
        ds = ts.inat2018()
    assert ds.num_classes == 8142 and ds.num_train == 30 and ds.num_test == 9
    assert ds.train_counts[:30].tolist() == [1] * 30 and ds.train_counts[30:].sum() == 0
    assert ds.color_jitter is False and ds.mean == ts.INAT_MEAN
    assert ds.info["test_split"] == "validation"


def test_inat2018_lists_select_by_file_name(tmp_path):
    train_list = tmp_path / "iNaturalist18_train.txt"
    train_list.write_text("".join(f"train_val2018/Plantae/{7 + i % 2}/h{i:04d}.jpg {7 + i % 2}\n"
                                  for i in (3, 5, 8, 12)))
    test_list = tmp_path / "iNaturalist18_val.txt"
    test_list.write_text("train_val2018/Aves/2/v0001.jpg 2\ntrain_val2018/Aves/2/v0004.jpg 2\n")
    with _mock(_inat_splits()):
        ds = ts.inat2018(train_list=str(train_list), test_list=str(test_list))
        assert ds.num_train == 4 and ds.num_test == 2
        np.testing.assert_array_equal(np.flatnonzero(ds.train_counts), [7, 8])
        np.testing.assert_array_equal(ds.train_counts[[7, 8]], [2, 2])
        batch = next(ds.train_tf(4, seed=0, shuffle_buffer=1).as_numpy_iterator())
        assert sorted(batch["label"].tolist()) == [7, 7, 8, 8]
        ev = list(ds.eval_tf(4).as_numpy_iterator())
        assert len(ev) == 1 and ev[0]["mask"].tolist() == [True, True, False, False]
        # A list naming an image tfds does not have is an error, not a silent drop.
        test_list.write_text("train_val2018/Aves/2/zzz.jpg 2\n")
        with pytest.raises(ValueError, match="1 of the 1 listed examples"):
            ts.inat2018(test_list=str(test_list))


# --------------------------------------------------------------------------- Places-LT


def test_places_train_key_matches_tfds_filename():
    for tfds_name, list_path in [
            ("data_256/a/airfield/00004851.jpg", "train/airfield/00004851.jpg"),
            ("data_256/a/apartment_building/outdoor/00000012.jpg",
             "train/apartment_building-outdoor/00000012.jpg")]:
        got = ts._tf_places_train_key(tf.constant(tfds_name)).numpy().decode()
        assert got == ts.places_train_key(list_path)


def _places_lists(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("train/airfield/00000002.jpg 0\n"
                     "train/apartment_building-outdoor/00000001.jpg 8\n"
                     "train/apartment_building-outdoor/00000003.jpg 8\n")
    test = tmp_path / "test.txt"
    test.write_text("val/airfield/Places365_val_00000007.jpg 0\n"
                    "val/apartment_building-outdoor/Places365_val_00000002.jpg 8\n")
    return str(train), str(test)


def test_places_lt_from_tfds(tmp_path):
    train_list, test_list = _places_lists(tmp_path)
    names = ["data_256/a/airfield/00000001.jpg", "data_256/a/airfield/00000002.jpg",
             "data_256/a/apartment_building/outdoor/00000001.jpg",
             "data_256/a/apartment_building/outdoor/00000003.jpg",
             "data_256/b/bar/00000001.jpg"]
    vals = [f"val_256/Places365_val_{i:08d}.jpg" for i in range(1, 9)]
    splits = {"train": {"filename": np.array(names), "label": np.zeros(5, int)},
              "validation": {"filename": np.array(vals), "label": np.zeros(8, int)}}
    with _mock(splits):
        ds = ts.places_lt(train_list=train_list, test_list=test_list)
        assert ds.num_train == 3 and ds.num_test == 2 and ds.num_classes == 365
        assert ds.train_counts[0] == 1 and ds.train_counts[8] == 2
        assert ds.class_names[8] == "apartment_building/outdoor"
        batch = next(ds.train_tf(3, seed=0, shuffle_buffer=1).as_numpy_iterator())
        assert sorted(batch["label"].tolist()) == [0, 8, 8]  # list labels, not tfds's


def test_places_lt_from_folder(tmp_path):
    train_list, test_list = _places_lists(tmp_path)
    root = tmp_path / "places365_standard"
    for lst in (train_list, test_list):
        paths, _ = ts.read_list(lst)
        for p in paths:
            (root / p).parent.mkdir(parents=True, exist_ok=True)
            (root / p).write_bytes(JPEG)
    ds = ts.places_lt(image_root=str(root), train_list=train_list, test_list=test_list)
    assert ds.num_train == 3 and ds.num_test == 2 and ds.info["source"].startswith("folder:")
    assert ds.class_names[8] == "apartment_building-outdoor"
    ev = list(ds.eval_tf(2).as_numpy_iterator())
    assert len(ev) == 1 and ev[0]["label"].tolist() == [0, 8]
    assert ev[0]["image"].shape == (2, 224, 224, 3)


def test_registry_arguments():
    assert set(dataset_arguments("places_lt")) >= {"data_dir", "image_root", "train_list"}
    assert dataset_arguments("cifar100_lt")["ratio"] == 100
    assert json.dumps(dataset_arguments("inat2018"))
