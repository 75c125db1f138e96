"""Device loader: epochs, the balanced sampler, evaluation padding, sharding, the cache."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ride_jax.data import prepare
from ride_jax.data.augment import pil_rotate_reference
from ride_jax.data.base import ArrayDataset, ArraySplit, load_cache, save_cache
from ride_jax.data.loader import balanced_indices, make_loader, shuffle_indices
from ride_jax.data.synthetic import synthetic_lt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ds():
    # 10 classes, 100 .. 10 images: 403 training images, 100 test images.
    return synthetic_lt(num_classes=10, img_max=100, ratio=10, test_per_class=10, seed=3)


def _np_normalize(u8, ds):
    return (u8.astype(np.float32) / 255.0 - np.asarray(ds.mean, np.float32)) / np.asarray(
        ds.std, np.float32)


def test_shuffle_epoch_covers_every_image_once(ds):
    ld = make_loader(ds, 64, augment="none")
    n = len(ds.train)
    assert ld.steps_per_epoch == -(-n // 64)
    seen, labels = [], []
    for batch in ld.epoch(0):
        assert batch["image"].shape[1:] == ds.image_shape and batch["image"].dtype == np.float32
        labels.append(np.asarray(batch["label"]))
        seen.append(np.asarray(batch["image"]))
    idx = np.concatenate(ld.epoch_indices(0))
    assert sorted(idx.tolist()) == list(range(n))
    np.testing.assert_array_equal(np.concatenate(labels), ds.train.labels[idx])
    np.testing.assert_allclose(np.concatenate(seen), _np_normalize(ds.train.images[idx], ds),
                               rtol=1e-6, atol=1e-6)
    assert [len(b) for b in ld.epoch_indices(0)][-1] == n % 64


def test_order_is_a_function_of_seed_and_epoch(ds):
    a, b = make_loader(ds, 64, seed=1), make_loader(ds, 64, seed=1)
    np.testing.assert_array_equal(np.concatenate(a.epoch_indices(3)),
                                  np.concatenate(b.epoch_indices(3)))
    assert not np.array_equal(np.concatenate(a.epoch_indices(0)),
                              np.concatenate(a.epoch_indices(1)))
    assert not np.array_equal(shuffle_indices(403, 1, 0), shuffle_indices(403, 2, 0))
    # The same seed gives the same augmented batch.
    np.testing.assert_array_equal(np.asarray(next(a.epoch(2))["image"]),
                                  np.asarray(next(b.epoch(2))["image"]))


def test_remainder_drop(ds):
    ld = make_loader(ds, 64, remainder="drop")
    assert ld.steps_per_epoch == len(ds.train) // 64
    assert all(len(i) == 64 for i in ld.epoch_indices(0))


def test_train_batch_is_the_torchvision_chain(ds):
    """Crop(pad 4) -> flip -> PIL rotate(nearest, fill 0) -> ToTensor -> Normalize, image by image."""
    ld = make_loader(ds, 32, augment="ride", seed=5)
    batch = next(ld.epoch(1))
    idx = ld.epoch_indices(1)[0]
    p = ld.epoch_params(1, 0)
    assert p["flip"].any() and not p["flip"].all() and np.abs(p["angle"]).max() > 5
    for k, i in enumerate(idx):
        padded = np.pad(ds.train.images[i], ((4, 4), (4, 4), (0, 0)))
        r, c = p["offset"][k]
        img = padded[r:r + 32, c:c + 32]
        if p["flip"][k]:
            img = img[:, ::-1]
        img = pil_rotate_reference(np.ascontiguousarray(img), float(p["angle"][k]))
        np.testing.assert_allclose(np.asarray(batch["image"][k]), _np_normalize(img, ds),
                                   rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(batch["label"]), ds.train.labels[idx])


def test_balanced_sampler_is_the_official_scheme(ds):
    labels, c = ds.train.labels, ds.num_classes
    epochs = [balanced_indices(labels, c, seed=0, epoch=e) for e in range(4)]
    assert all(len(e) == len(labels) for e in epochs)          # retain_epoch_size=True
    drawn = np.concatenate(epochs)
    freq = np.bincount(labels[drawn], minlength=c) / len(drawn)
    np.testing.assert_allclose(freq, 1 / c, atol=0.03)         # classes drawn uniformly
    # Per class, the stream of items is a sequence of permutations of its bucket
    # (each item once per cycle), and the position carries over between epochs.
    for cls in range(c):
        bucket = np.flatnonzero(labels == cls)
        stream = drawn[labels[drawn] == cls]
        for start in range(0, len(stream) - len(bucket) + 1, len(bucket)):
            assert sorted(stream[start:start + len(bucket)]) == sorted(bucket)
    # Deterministic, and different seeds differ.
    np.testing.assert_array_equal(epochs[2], balanced_indices(labels, c, seed=0, epoch=2))
    assert not np.array_equal(epochs[0], balanced_indices(labels, c, seed=1, epoch=0))
    with pytest.raises(ValueError, match=r"classes \[2\] have none"):
        balanced_indices(np.array([0, 1, 3]), 4, seed=0, epoch=0)
    ld = make_loader(ds, 64, sampler="balanced")
    np.testing.assert_array_equal(np.concatenate(ld.epoch_indices(1)), epochs[1])


def test_eval_counts_every_example_once(ds):
    ld = make_loader(ds, 64, eval_batch_size=48, augment="ride")
    batches = list(ld.eval_batches())
    assert len(batches) == ld.num_eval_batches() == 3
    assert all(b["image"].shape[0] == 48 for b in batches)
    mask = np.concatenate([np.asarray(b["mask"]) for b in batches])
    labels = np.concatenate([np.asarray(b["label"]) for b in batches])[mask]
    images = np.concatenate([np.asarray(b["image"]) for b in batches])[mask]
    assert mask.sum() == len(ds.test) == 100 and not mask[100:].any()
    np.testing.assert_array_equal(labels, ds.test.labels)
    np.testing.assert_allclose(images, _np_normalize(ds.test.images, ds), rtol=1e-6, atol=1e-6)
    assert sum(int(np.asarray(b["mask"]).sum()) for b in ld.eval_batches("train")) == 403


def test_bad_arguments(ds):
    with pytest.raises(ValueError, match="sampler='weighted'.*valid choices"):
        make_loader(ds, 64, sampler="weighted")
    with pytest.raises(ValueError, match="remainder='pad'.*valid choices"):
        make_loader(ds, 64, remainder="pad")
    with pytest.raises(ValueError, match="batch_size=0"):
        make_loader(ds, 0)
    with pytest.raises(ValueError, match="unknown augmentation"):
        make_loader(ds, 64, augment="autoaugment")
    with pytest.raises(TypeError, match="in-memory ArrayDataset"):
        make_loader(ds.train, 64)
    with pytest.raises(ValueError, match="split='val'"):
        next(make_loader(ds, 64).eval_batches("val"))


_SHARDED = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    sys.path.insert(0, {repo!r})
    import jax, numpy as np
    from jax.sharding import PartitionSpec as P
    from ride_jax.data.loader import data_mesh, make_loader
    from ride_jax.data.synthetic import synthetic_lt
    assert jax.device_count() == 8, jax.devices()
    ds = synthetic_lt(num_classes=10, img_max=100, ratio=10, test_per_class=10, seed=3)
    one = make_loader(ds, 64, mesh=data_mesh(jax.devices()[:1]), augment="ride", seed=2)
    eight = make_loader(ds, 64, mesh=data_mesh(), augment="ride", seed=2)
    steps = 0
    for a, b in zip(one.epoch(1), eight.epoch(1)):
        assert b["image"].sharding.spec == P("data"), b["image"].sharding
        assert len(b["image"].addressable_shards) == 8
        assert b["image"].addressable_shards[0].data.shape[0] == b["image"].shape[0] // 8
        n = b["image"].shape[0]
        np.testing.assert_array_equal(np.asarray(a["image"])[:n], np.asarray(b["image"]))
        np.testing.assert_array_equal(np.asarray(a["label"])[:n], np.asarray(b["label"]))
        steps += 1
    # 403 = 6 * 64 + 19; with 8 devices the last batch is trimmed to 16.
    assert steps == 7 and n == 16, (steps, n)
    for a, b in zip(one.eval_batches(), eight.eval_batches()):
        for k in ("image", "label", "mask"):
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
        assert b["mask"].sharding.spec == P("data")
    # Stacked batches of scanned train steps (steps_per_call): B sharded, the same values.
    calls = list(zip(one.epoch_calls(1, steps_per_call=4), eight.epoch_calls(1, steps_per_call=4)))
    assert [k for (k, _), _ in calls] == [4, 1, 1, 1], [k for (k, _), _ in calls]
    (_, a), (_, b) = calls[0]
    assert b["image"].sharding.spec == P(None, "data") and len(b["image"].addressable_shards) == 8
    assert b["image"].addressable_shards[0].data.shape[:2] == (4, 8)
    for k in ("image", "label"):
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
    print("OK")
""")


def test_sharded_batches_on_8_devices_equal_single_device():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _SHARDED.format(repo=REPO)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr


def test_cache_round_trip_and_fingerprint(ds, tmp_path):
    path = save_cache(ds, tmp_path / "c")
    assert path.endswith(".npz")
    back = load_cache(path, verify=True)
    assert back.fingerprint() == ds.fingerprint()
    np.testing.assert_array_equal(back.train.images, ds.train.images)
    np.testing.assert_array_equal(back.selected, ds.selected)
    assert back.class_names == ds.class_names and back.mean == ds.mean
    assert dict(back.info) == dict(ds.info)
    # A corrupted file is caught by verify.
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["train_images"] = arrays["train_images"].copy()
    arrays["train_images"][0, 0, 0, 0] ^= 1
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="fingerprint"):
        load_cache(tmp_path / "bad.npz", verify=True)
    with pytest.raises(FileNotFoundError, match="ride_jax.data.prepare"):
        load_cache(tmp_path / "missing.npz")


def test_prepare_cli(tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert prepare.main(["--dataset=synthetic_lt", "--ratio=5", "--num_classes=4",
                         f"--out={out}"]) == 0
    ds = load_cache(out, verify=True)
    assert ds.train_counts.tolist() == [100, 58, 34, 20]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["fingerprint"] == ds.fingerprint()
    assert summary["builder_arguments"] == {"ratio": 5, "num_classes": 4}
    for argv, message in [
            (["--dataset=synthetic_lt", "--rato=5"], "no argument 'rato'"),
            (["--dataset=synthetic_lt", "--ratio=0.01"], "imb_factor 0.01 is ratio=100"),
            (["--dataset=cifar1000_lt"], "unknown"),
            (["--dataset=image_folder_stream"], "is read from its files already"),
            # a streamed dataset is copied into records, once its data is there
            (["--dataset=imagenet_lt", f"--data_dir={tmp_path / 'none'}"],
             "is not prepared in")]:
        with pytest.raises(SystemExit) as e:
            prepare.main(argv + [f"--out={tmp_path / 'x.npz'}"])
        assert e.value.code == 2
        assert message in capsys.readouterr().err


def test_container_checks():
    img = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        ArraySplit(img.astype(np.float32), np.zeros(2, int))
    with pytest.raises(ValueError, match="labels must be"):
        ArraySplit(img, np.zeros(3, int))
    split = ArraySplit(img, np.array([0, 5]))
    with pytest.raises(ValueError, match=r"train labels out of range \[0, 3\): \[5\]"):
        ArrayDataset("x", split, split, 3, ("a", "b", "c"), (0, 0, 0), (1, 1, 1))
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        ArrayDataset("x", split, split, 3, ("a", "b"), (0, 0, 0), (1, 1, 1))

