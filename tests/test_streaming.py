"""Streaming loader: the official transforms, eval padding/mask, determinism, sharded batches."""

import math
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import jax  # noqa: E402

from ride_jax.data import streaming as st  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _seed(k):
    return tf.constant([k, 7], tf.int64)


# --------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("height,width", [(375, 500), (500, 333), (224, 224), (64, 900)])
def test_random_resized_crop_box_bounds(height, width):
    box_fn = tf.function(st.random_resized_crop_box)
    h, w = tf.constant(height), tf.constant(width)
    boxes = np.stack([box_fn(_seed(k), h, w).numpy() for k in range(200)])
    top, left, ch, cw = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (ch >= 1).all() and (cw >= 1).all()
    assert (top + ch <= height).all() and (left + cw <= width).all()
    # Boxes from a successful attempt: area in scale, aspect in ratio (up to rounding).
    full = (ch == height) | (cw == width)
    area = ch * cw / (height * width)
    assert (area[~full] >= 0.08 - 0.02).all() and (area <= 1.0).all()
    aspect = cw / ch
    ok = ~full & (ch > 20) & (cw > 20)
    assert (aspect[ok] >= 0.75 * 0.9).all() and (aspect[ok] <= 4 / 3 * 1.1).all()
    if height * 4 < width:  # mostly the fallback: the centre crop clamped to 4:3
        assert (0, (width - 85) // 2, 64, 85) in {tuple(b) for b in boxes.tolist()}
    else:
        assert len({tuple(b) for b in boxes}) > 100  # random


def test_random_resized_crop_fallback_is_the_clamped_center_crop():
    # Any target area >= 0.9 * 10 * 1000 needs a height > 10: every attempt fails.
    box = st.random_resized_crop_box(_seed(0), 10, 1000, scale=(0.9, 1.0)).numpy()
    np.testing.assert_array_equal(box, [0, (1000 - 13) // 2, 10, round(10 * 4 / 3)])
    box = st.random_resized_crop_box(_seed(1), 1000, 10, scale=(0.9, 1.0)).numpy()
    np.testing.assert_array_equal(box, [(1000 - 13) // 2, 0, round(10 / 0.75), 10])


def test_random_resized_crop_output_and_constant_image():
    image = tf.fill([300, 451, 3], tf.constant(77, tf.uint8))
    out = st.random_resized_crop(image, _seed(3))
    assert out.shape == (224, 224, 3) and out.dtype == tf.uint8
    assert (out.numpy() == 77).all()  # bilinear of a constant is the constant


def _coords(h, w):
    """Image whose pixel (r, c) = (r, c, 0): positions can be read back exactly."""
    r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([r, c, np.zeros_like(r)], -1).astype(np.uint8)


def test_center_crop_is_exact():
    image = _coords(250, 240)
    out = st.center_crop(tf.constant(image), 224).numpy()
    top, left = round((250 - 224) / 2), round((240 - 224) / 2)
    np.testing.assert_array_equal(out, image[top:top + 224, left:left + 224])
    # torchvision rounds half to even: (225 - 224) / 2 = 0.5 -> 0.
    out = st.center_crop(tf.constant(_coords(225, 225)), 224).numpy()
    assert out[0, 0, 0] == 0 and out[0, 0, 1] == 0


@pytest.mark.parametrize("shape,expected", [((300, 400), (256, 341)), ((500, 256), (500, 256)),
                                            ((333, 500), (256, 384)), ((256, 256), (256, 256))])
def test_resize_shorter_side(shape, expected):
    out = st.resize_shorter(tf.zeros(shape + (3,), tf.uint8), 256)
    assert tuple(out.shape[:2]) == expected


def test_eval_transform_shape():
    out = st.eval_transform(tf.constant(_coords(240, 250)))
    assert out.shape == (224, 224, 3) and out.dtype == tf.uint8


def test_flip_is_exact_and_random():
    image = tf.constant(_coords(5, 7))
    flips = []
    for k in range(40):
        out = st.random_flip(image, _seed(k)).numpy()
        flipped = np.array_equal(out, image.numpy()[:, ::-1])
        assert flipped or np.array_equal(out, image.numpy())
        flips.append(flipped)
    assert 8 < sum(flips) < 32


def _random_image(h=16, w=12, seed=0):
    return tf.constant(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8))


def test_color_ops_with_factor_one_are_identity():
    image = _random_image()
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        out = st.apply_color_ops(image, tf.constant(order), tf.constant([1.0, 1.0, 1.0]))
        np.testing.assert_array_equal(out.numpy(), image.numpy())


def test_color_ops_values():
    image = _random_image()
    x = image.numpy().astype(np.float64)
    # Brightness 0.5: halve. Saturation 0: the grey image. Contrast 0: the mean grey.
    out = st.apply_color_ops(image, tf.constant([0, 1, 2]), tf.constant([0.5, 1.0, 1.0]))
    np.testing.assert_allclose(out.numpy(), np.round(x * 0.5), atol=0)
    out = st.apply_color_ops(image, tf.constant([2, 0, 1]), tf.constant([1.0, 1.0, 0.0]))
    grey = np.round(x @ np.array([0.299, 0.587, 0.114]))
    np.testing.assert_allclose(out.numpy(), np.repeat(grey[..., None], 3, -1), atol=1)
    out = st.apply_color_ops(image, tf.constant([1, 0, 2]), tf.constant([1.0, 0.0, 1.0]))
    assert len(np.unique(out.numpy())) == 1
    assert abs(int(out.numpy()[0, 0, 0]) - grey.mean()) <= 1
    # The order matters: brightness 1.4 then saturation 0.6 != the reverse (clipping).
    bright = tf.fill([4, 4, 3], tf.constant(200, tf.uint8))
    bright = tf.concat([bright[..., :1], bright[..., 1:] // 4], -1)
    a = st.apply_color_ops(bright, tf.constant([0, 2, 1]), tf.constant([1.4, 1.0, 0.6]))
    b = st.apply_color_ops(bright, tf.constant([2, 0, 1]), tf.constant([1.4, 1.0, 0.6]))
    assert not np.array_equal(a.numpy(), b.numpy())


def test_color_jitter_is_deterministic_given_the_seed():
    image = _random_image()
    a = st.color_jitter(image, _seed(1)).numpy()
    assert np.array_equal(a, st.color_jitter(image, _seed(1)).numpy())
    assert not np.array_equal(a, st.color_jitter(image, _seed(2)).numpy())


def test_normalize_statistics():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    images = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 3), np.uint8)
    out = np.asarray(st.normalize(images, mean, std))
    assert out.dtype == np.float32
    expected = (images / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.mean((0, 1, 2)), (0.5 - np.array(mean)) / np.array(std),
                               atol=0.05)
    np.testing.assert_allclose(out.std((0, 1, 2)), (1 / math.sqrt(12)) / np.array(std),
                               rtol=0.05)


# --------------------------------------------------------------------------- pipelines


def _make_folder(root, n, size=(40, 56)):
    """n PNG files; image k has every pixel = (k, 255 - k, 0)."""
    paths = []
    for k in range(n):
        img = np.zeros(size + (3,), np.uint8)
        img[..., 0], img[..., 1] = k, 255 - k
        p = f"img/{k:03d}.png"
        (root / "img").mkdir(parents=True, exist_ok=True)
        (root / p).write_bytes(tf.io.encode_png(img).numpy())
        paths.append(p)
    return tuple(paths)


def _folder_dataset(root, n, classes=40, jitter=True):
    paths = _make_folder(root, n)
    labels = np.arange(n) % classes
    src = st.FileListSplit(str(root), paths, labels)
    return st.StreamingDataset(
        name="toy", num_classes=classes, class_names=tuple(map(str, range(classes))),
        train_counts=np.bincount(labels, minlength=classes), num_test=n,
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), info={},
        train_source=src, test_source=src, color_jitter=jitter)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return _folder_dataset(tmp_path_factory.mktemp("toy"), 37)


@pytest.mark.parametrize("process_count,global_batch", [(1, 8), (1, 37), (3, 12), (2, 80)])
def test_eval_counts_every_example_once(toy, process_count, global_batch):
    seen, steps = [], []
    for p in range(process_count):
        batches = list(toy.eval_tf(global_batch, process_index=p,
                                   process_count=process_count).as_numpy_iterator())
        steps.append(len(batches))
        for b in batches:
            assert b["image"].shape == (global_batch // process_count, 224, 224, 3)
            assert b["mask"].dtype == bool
            # Real rows carry their own image: red channel = example index.
            np.testing.assert_array_equal(b["image"][b["mask"], 100, 100, 0] % 40,
                                          b["label"][b["mask"]])
            assert (b["image"][~b["mask"]] == 0).all()
            seen.extend(b["image"][b["mask"], 100, 100, 0].tolist())
    assert steps == [toy.eval_steps(global_batch, process_count)] * process_count
    assert sorted(seen) == list(range(37))


def test_train_is_deterministic_and_seeded(toy):
    def first(seed, n=3):
        it = toy.train_tf(8, seed, shuffle_buffer=16).as_numpy_iterator()
        return [next(it) for _ in range(n)]
    a, b, c = first(0), first(0), first(1)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))
    assert a[0]["image"].shape == (8, 224, 224, 3) and a[0]["image"].dtype == np.uint8
    assert a[0]["label"].dtype == np.int32


def test_train_epochs_cover_the_data(toy):
    # 37 examples, batch 8 (drop_remainder on the endless stream): the first 32 rows
    # are 32 distinct examples of the first epoch.
    it = toy.train_tf(8, 0, shuffle_buffer=64).as_numpy_iterator()
    labels = np.concatenate([next(it)["label"] for _ in range(4)])
    assert len(labels) == 32 and len(set(labels.tolist())) == 32
    assert toy.steps_per_epoch(8) == 5  # ceil(37 / 8), the official drop_last=False count


def test_batch_size_errors(toy):
    with pytest.raises(ValueError, match="global_batch=10 is not divisible by the 3"):
        toy.train_tf(10, process_count=3, process_index=0)
    with pytest.raises(ValueError, match="global_batch must be a positive integer"):
        toy.eval_tf(0)


def test_global_batches_single_device(toy):
    b = next(toy.train_iterator(8, seed=0, shuffle_buffer=8))
    assert b["image"].dtype == np.float32 and b["image"].shape == (8, 224, 224, 3)
    assert b["image"].sharding.spec == jax.sharding.PartitionSpec("data")
    ev = list(toy.eval_iterator(16))
    assert len(ev) == 3 and sum(int(e["mask"].sum()) for e in ev) == 37


_SHARDED = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, sys.argv[1])
    import pathlib
    import jax, numpy as np
    sys.path.insert(0, sys.argv[1] + "/tests")
    from test_streaming import _folder_dataset
    from ride_jax.data import streaming as st
    assert jax.device_count() == 8
    ds = _folder_dataset(pathlib.Path(sys.argv[2]), 21)
    mesh8 = st.data_mesh()
    mesh1 = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1],
                          axis_types=(jax.sharding.AxisType.Auto,))
    for a, b in [(ds.train_iterator(16, seed=5, mesh=mesh8, shuffle_buffer=8),
                  ds.train_iterator(16, seed=5, mesh=mesh1, shuffle_buffer=8)),
                 (ds.eval_iterator(16, mesh=mesh8), ds.eval_iterator(16, mesh=mesh1))]:
        for _ in range(2):
            x, y = next(a), next(b)
            assert set(x) == set(y)
            for k in x:
                assert x[k].sharding.spec == jax.sharding.PartitionSpec("data"), k
                assert len(x[k].addressable_shards) == 8, k
                assert x[k].addressable_shards[0].data.shape[0] == 2, k
                np.testing.assert_array_equal(np.asarray(x[k]), np.asarray(y[k]))
    print("SHARDED-OK")
""")


def test_sharded_batches_equal_single_device_batches(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", _SHARDED, str(ROOT), str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert "SHARDED-OK" in res.stdout, res.stdout[-2000:] + res.stderr[-4000:]


# --------------------------------------------------------------------------- balanced sampler

BAL_COUNTS = (14, 8, 4, 3, 1)  # 5 classes, 30 examples, long-tailed
BAL_N = sum(BAL_COUNTS)


def _bal_labels():
    # Interleaved so that the file order is not sorted by class.
    labels = np.repeat(np.arange(len(BAL_COUNTS)), BAL_COUNTS)
    return np.random.default_rng(3).permutation(labels)


def _id_png(k):
    """8x8 PNG whose every pixel is (k, 255 - k, 0): the id survives the transform."""
    img = np.zeros((8, 8, 3), np.uint8)
    img[..., 0], img[..., 1] = k, 255 - k
    return tf.io.encode_png(img).numpy()


def _bal_dataset(source, labels):
    c = len(BAL_COUNTS)
    return st.StreamingDataset(
        name="toy_lt", num_classes=c, class_names=tuple(map(str, range(c))),
        train_counts=np.bincount(labels, minlength=c), num_test=len(labels),
        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), info={}, train_source=source,
        test_source=source, color_jitter=False)


@pytest.fixture(scope="module")
def bal_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bal")
    labels = _bal_labels()
    paths = []
    for k in range(BAL_N):
        p = f"c{labels[k]}/{k:03d}.png"
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_bytes(_id_png(k))
        paths.append(p)
    return _bal_dataset(st.FileListSplit(str(root), tuple(paths), labels), labels)


def _ids(ds, batches, **kw):
    """Example ids (red channel) and labels of the first ``batches`` train batches."""
    it = ds.as_numpy_iterator() if isinstance(ds, tf.data.Dataset) else ds
    ids, labels = [], []
    for _ in range(batches):
        b = next(it)
        ids.append(b["image"][:, 100, 100, 0].astype(np.int64))
        labels.append(b["label"])
    return np.concatenate(ids), np.concatenate(labels)


def test_balanced_file_list_is_the_official_sequence(bal_files):
    labels = bal_files.train_labels
    ids, got = _ids(bal_files.train_tf(10, 4, sampler="balanced"), 6)  # 2 epochs of 30
    for e in range(2):
        np.testing.assert_array_equal(ids[30 * e:30 * (e + 1)],
                                      st.balanced_indices(labels, 5, 4, e))
    np.testing.assert_array_equal(got, labels[ids])
    # Roughly uniform classes (12 expected of each), the tail class far above 1/30.
    per_class = np.bincount(got, minlength=5)
    assert per_class.min() >= 5 and per_class.max() <= 20, per_class
    # Deterministic given the seed; another seed draws otherwise.
    np.testing.assert_array_equal(_ids(bal_files.train_tf(10, 4, sampler="balanced"), 6)[0],
                                  ids)
    assert not np.array_equal(_ids(bal_files.train_tf(10, 5, sampler="balanced"), 3)[0],
                              ids[:30])
    # Processes share the draws: process p gets draws p, p + 2, ...
    for p in range(2):
        pids, _ = _ids(bal_files.train_tf(10, 4, sampler="balanced", process_index=p,
                                          process_count=2), 3)  # 15 = one epoch's share
        np.testing.assert_array_equal(pids, st.balanced_indices(labels, 5, 4, 0)[p::2])


def test_sampler_errors(bal_files):
    with pytest.raises(ValueError, match=r"unknown sampler 'nope'.*'shuffle', 'balanced'"):
        bal_files.train_tf(10, sampler="nope")
    with pytest.raises(ValueError, match="unknown sampler 'Balanced'"):
        bal_files.train_iterator(10, sampler="Balanced")  # raised by the call itself
    labels = np.array([0, 0, 1])
    src = st.FileListSplit("/nonexistent", ("a", "b", "c"), labels)
    ds = st.StreamingDataset(
        name="x", num_classes=3, class_names=("a", "b", "c"), train_counts=[2, 1, 0],
        num_test=3, mean=(0.5,) * 3, std=(0.5,) * 3, info={}, train_source=src,
        test_source=src)
    with pytest.raises(ValueError, match=r"classes \[2\] have none"):
        ds.train_tf(2, sampler="balanced")


class _FakeBuilder:
    """A tfds builder's ``as_dataset`` (all :class:`TfdsSplit` uses) over in-memory columns.

    Decoders are ignored: images stay encoded, as ``SkipDecoding`` leaves them.
    """

    def __init__(self, ids, labels, pixels):
        self.cols = {"image": np.array([_id_png(k) for k in pixels], object),
                     "label": np.asarray(labels, np.int64), "id": np.array(ids)}

    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        assert split == "train" and not shuffle_files  # sequential, file order
        return tf.data.Dataset.from_tensor_slices(self.cols)


@pytest.mark.parametrize("with_keys", [False, True])
def test_balanced_tfds_epochs_are_the_exact_multisets(with_keys):
    pytest.importorskip("tensorflow_datasets")
    labels = _bal_labels()
    ids = [f"x{k:03d}" for k in range(BAL_N)]
    if with_keys:
        # The list names the examples in another order, with its own labels; the split
        # also has examples the list leaves out, before and among the listed ones
        # (label 99, pixel 200+: must never show). Positions count listed examples only.
        order = np.random.default_rng(5).permutation(BAL_N)
        keys = tuple(ids[k] for k in order)
        pixels = list(range(BAL_N))
        tf_labels = np.full(BAL_N, 99)
        for at, k in [(0, 0), (0, 1), (17, 2)]:
            ids.insert(at, f"extra{k}")
            pixels.insert(at, 200 + k)
            tf_labels = np.insert(tf_labels, at, 99)
        split = st.TfdsSplit(builder=_FakeBuilder(ids, tf_labels, pixels), split="train",
                             num_examples=BAL_N, key_feature="id", keys=keys,
                             labels=labels[order])
    else:
        split = st.TfdsSplit(builder=_FakeBuilder(ids, labels, range(BAL_N)), split="train",
                             num_examples=BAL_N)
    ds = _bal_dataset(split, labels)
    np.testing.assert_array_equal(ds.train_labels, labels)
    ids_seen, got = _ids(ds.train_tf(10, 7, sampler="balanced", shuffle_buffer=8), 6)
    for e in range(2):
        draws = st.balanced_indices(labels, 5, 7, e)
        np.testing.assert_array_equal(np.sort(ids_seen[30 * e:30 * (e + 1)]),
                                      np.sort(draws))
    assert not np.array_equal(ids_seen[:30], np.sort(ids_seen[:30]))  # shuffled
    np.testing.assert_array_equal(got, labels[ids_seen])
    per_class = np.bincount(got, minlength=5)
    assert per_class.min() >= 5 and per_class.max() <= 20, per_class
    again = _ids(ds.train_tf(10, 7, sampler="balanced", shuffle_buffer=8), 6)[0]
    np.testing.assert_array_equal(again, ids_seen)
    # Without a buffer: file order, example i repeated k_i times; two processes
    # split that stream element by element.
    draws = st.balanced_indices(labels, 5, 7, 0)
    expanded = np.repeat(np.arange(BAL_N), np.bincount(draws, minlength=BAL_N))
    np.testing.assert_array_equal(
        _ids(ds.train_tf(10, 7, sampler="balanced", shuffle_buffer=1), 3)[0], expanded)
    for p in range(2):
        pids, _ = _ids(ds.train_tf(10, 7, sampler="balanced", shuffle_buffer=1,
                                   process_index=p, process_count=2), 3)
        np.testing.assert_array_equal(pids, expanded[p::2])
