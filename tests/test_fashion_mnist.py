"""fashion_mnist_lt from Debian's dataset-fashion-mnist: restored originals, tfds, IDX parse."""

import gzip
import hashlib
import importlib.util
import pathlib

import numpy as np
import pytest

from ride_jax.data import long_tail_counts, select_long_tail
from ride_jax.data.fashion_mnist import (DEBIAN_DIR, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                                         FILES, _read_tfds, fashion_mnist_lt,
                                         original_order, restore_original_gzip)

# A user's machine may lack the Debian package; CI installs it (and conftest.py turns a
# skip under CI into a failure).
pytestmark = pytest.mark.skipif(
    not pathlib.Path(DEBIAN_DIR).is_dir(),
    reason=f"{DEBIAN_DIR} absent: `apt-get install dataset-fashion-mnist`")
HAS_TFDS = all(importlib.util.find_spec(m) is not None
               for m in ("tensorflow", "tensorflow_datasets"))


def _raw(key):
    """Direct, independent IDX parse of Debian's file."""
    spec = FILES[key]
    data = gzip.decompress((pathlib.Path(DEBIAN_DIR) / (spec.name + ".gz")).read_bytes())
    if key.endswith("images"):
        return np.frombuffer(data, np.uint8, offset=16).reshape(-1, 28, 28, 1)
    return np.frombuffer(data, np.uint8, offset=8)


@pytest.fixture(scope="module")
def raw():
    return {k: _raw(k) for k in FILES}


@pytest.fixture(scope="module")
def idx_r100():
    return fashion_mnist_lt(backend="idx")


needs_tf = pytest.mark.skipif(not HAS_TFDS,
                              reason="tensorflow / tensorflow-datasets are not installed")


@pytest.fixture(scope="module")
def tfds_subset(tmp_path_factory, raw):
    # The stock builder on the first 2,000 examples of each split (~3 s instead of ~45 s
    # for all 70,000; tfds still checks the sha256 of the whole restored .gz files).
    if not HAS_TFDS:
        pytest.skip("tensorflow / tensorflow-datasets are not installed")
    return _read_tfds(DEBIAN_DIR, str(tmp_path_factory.mktemp("tfds")), raw,
                      max_examples=2000)


def test_restored_gzip_has_original_sha256(tmp_path):
    paths = restore_original_gzip(tmp_path)
    for key, spec in FILES.items():
        data = pathlib.Path(paths[key]).read_bytes()
        assert len(data) == spec.gz_size
        assert hashlib.sha256(data).hexdigest() == spec.gz_sha256
        assert gzip.decompress(data) == gzip.decompress(
            (pathlib.Path(DEBIAN_DIR) / (spec.name + ".gz")).read_bytes())


@pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is None,
                    reason="tensorflow-datasets is not installed")
def test_checksums_are_tfds_checksums():
    spec = importlib.util.find_spec("tensorflow_datasets")
    table = pathlib.Path(spec.origin).parent / "url_checksums" / "fashion_mnist.txt"
    rows = {}
    for line in table.read_text().splitlines():
        if line.strip():
            url, size, sha, name = line.split("\t")
            rows[name] = (int(size), sha)
    assert rows == {f.name + ".gz": (f.gz_size, f.gz_sha256) for f in FILES.values()}


@pytest.mark.parametrize("ratio,profile", [(100, "exp"), (10, "exp"), (10, "step")])
def test_counts_and_pixels(raw, idx_r100, ratio, profile):
    ds = idx_r100 if (ratio, profile) == (100, "exp") else fashion_mnist_lt(
        ratio=ratio, profile=profile, backend="idx")
    counts = long_tail_counts(10, 6000, ratio, profile)
    np.testing.assert_array_equal(ds.train_counts, counts)
    np.testing.assert_array_equal(ds.selected, select_long_tail(raw["train_labels"], counts, 0))
    np.testing.assert_array_equal(ds.train.images, raw["train_images"][ds.selected])
    np.testing.assert_array_equal(ds.train.labels, raw["train_labels"][ds.selected])
    np.testing.assert_array_equal(ds.test.images, raw["test_images"])
    np.testing.assert_array_equal(ds.test.labels, raw["test_labels"])
    assert ds.image_shape == (28, 28, 1) and ds.class_names[0] == "T-shirt/top"
    assert ds.info["ratio"] == ratio and ds.info["img_max"] == 6000


def test_r100_counts(idx_r100):
    assert idx_r100.train_counts.tolist() == [6000, 3596, 2156, 1292, 774, 464, 278, 166,
                                              100, 60]


@needs_tf
def test_tfds_builder_gives_original_examples(raw, tfds_subset):
    arrays, perms = tfds_subset
    for split in ("train", "test"):
        np.testing.assert_array_equal(arrays[f"{split}_images"], raw[f"{split}_images"][:2000])
        np.testing.assert_array_equal(arrays[f"{split}_labels"], raw[f"{split}_labels"][:2000])
        # tfds stores the examples shuffled: the original order had to be recovered.
        assert not np.array_equal(perms[split], np.arange(2000))


@needs_tf
def test_tfds_rejects_debian_files_as_they_are(tmp_path):
    import tensorflow_datasets as tfds

    builder = tfds.builder("fashion_mnist", data_dir=str(tmp_path / "data"))
    with pytest.raises(Exception, match="checksum"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=DEBIAN_DIR, max_examples_per_split=10))


@needs_tf
def test_tfds_backend_equals_idx(tmp_path, idx_r100):
    ds = fashion_mnist_lt(data_dir=tmp_path, backend="tfds")
    assert ds.info["backend"] == "tfds"
    assert ds.fingerprint() == idx_r100.fingerprint()
    np.testing.assert_array_equal(ds.test.images, idx_r100.test.images)
    np.testing.assert_array_equal(ds.test.labels, idx_r100.test.labels)


def test_normalisation_constants(raw, idx_r100):
    x = raw["train_images"].astype(np.float64) / 255.0
    np.testing.assert_allclose(FASHION_MNIST_MEAN, [x.mean()], rtol=1e-12)
    np.testing.assert_allclose(FASHION_MNIST_STD, [x.std()], rtol=1e-12)
    assert idx_r100.mean == FASHION_MNIST_MEAN and idx_r100.std == FASHION_MNIST_STD


def test_full_set_when_ratio_none(raw):
    ds = fashion_mnist_lt(ratio=None, backend="idx")
    assert len(ds.train) == 60000
    np.testing.assert_array_equal(ds.selected, np.arange(60000))


def test_original_order_matches_duplicates():
    rng = np.random.default_rng(0)
    ref_images = rng.integers(0, 3, size=(50, 2, 2, 1)).astype(np.uint8)  # many duplicates
    ref_labels = rng.integers(0, 2, size=50).astype(np.uint8)
    shuffle = rng.permutation(50)
    perm = original_order(ref_images[shuffle], ref_labels[shuffle], ref_images, ref_labels)
    np.testing.assert_array_equal(ref_images[shuffle][perm], ref_images)
    np.testing.assert_array_equal(ref_labels[shuffle][perm], ref_labels)
    with pytest.raises(ValueError, match="differ"):
        original_order(ref_images, 1 - ref_labels, ref_images, ref_labels)


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist.*"
                                                "debian_dir="):
        fashion_mnist_lt(debian_dir=tmp_path / "absent", backend="idx")
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"missing: \['train-labels-idx1-ubyte.gz'"):
        fashion_mnist_lt(debian_dir=tmp_path, backend="idx")
    with pytest.raises(ValueError, match="ratio=0.01"):
        fashion_mnist_lt(ratio=0.01, backend="idx")
    with pytest.raises(ValueError, match="asks for 7000 images of class 0, which has 6000"):
        fashion_mnist_lt(img_max=7000, backend="idx")
    with pytest.raises(ValueError, match="backend='tf'"):
        fashion_mnist_lt(backend="tf")
