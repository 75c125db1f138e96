"""Streamed datasets copied into ArrayRecord files (``ride_jax.data.records``) and read
by grain without TensorFlow: the copy holds every example's bytes and label in the
split's order; ``prepare`` writes it (here from a tfds build under ``mock_data`` and
from listed files); a recipe trains on it with ``dataset.cache`` where TensorFlow
cannot be imported.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

from ride_jax.data import prepare, records  # noqa: E402
from ride_jax.data import streaming as st  # noqa: E402
from ride_jax.data.grain_loader import GrainLoader  # noqa: E402
from ride_jax.data.loader import shuffle_indices  # noqa: E402
from ride_jax.sharding import data_mesh  # noqa: E402

from helpers import run_without_tf  # noqa: E402

COUNTS = [12, 6, 4, 2]


def _listed(root):
    """PNG files of varied sizes, 4 classes, as a tf.data StreamingDataset (file lists)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), COUNTS)
    paths = []
    for k, y in enumerate(labels):
        h, w = (int(v) for v in rng.integers(30, 50, 2))
        img = np.clip(rng.normal(60 * y + 40, 30, (h, w, 3)), 0, 255).astype(np.uint8)
        (root / f"{k:03d}.png").write_bytes(tf.io.encode_png(img).numpy())
        paths.append(f"{k:03d}.png")
    train = st.FileListSplit(str(root), tuple(paths), labels)
    test = st.FileListSplit(str(root), tuple(paths[::3]), labels[::3])
    return st.StreamingDataset(
        name="toy_stream", num_classes=4, class_names=("a", "b", "c", "d"),
        train_counts=np.bincount(labels), num_test=len(test.paths),
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), info={"made": "here"},
        train_source=train, test_source=test, image_size=24, resize_size=28)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec")
    (root / "img").mkdir()
    ds = _listed(root / "img")
    return ds, records.write_records(ds, root / "records")


def test_the_copy_holds_every_example_in_order(prepared):
    ds, out = prepared
    rec = records.load_records(out)
    assert (rec.name, rec.num_classes, rec.class_names) == ("toy_stream", 4, ("a", "b", "c", "d"))
    assert rec.train_counts.tolist() == COUNTS and rec.num_test == 8
    assert (rec.image_size, rec.resize_size, rec.mean) == (24, 28, (0.485, 0.456, 0.406))
    assert rec.info["made"] == "here" and rec.info["records"] == out
    src = rec.grain_train_source()
    for i in (0, 11, 23):
        path = f"{ds.train_source.root}/{ds.train_source.paths[i]}"
        assert src.read(i) == open(path, "rb").read()
        assert src.labels[i] == ds.train_source.labels[i]
    test = rec.grain_test_source()
    assert test.read(2) == open(f"{ds.test_source.root}/{ds.test_source.paths[2]}", "rb").read()
    assert test[2]["image"].shape == (24, 24, 3)


def test_grain_trains_on_the_copy_in_the_epochs_order(prepared):
    _, out = prepared
    rec = records.load_records(out)
    loader = GrainLoader(rec, 8, 8, data_mesh(), seed=2)
    labels = np.concatenate([np.asarray(b["label"]) for b in loader.epoch(1)])
    np.testing.assert_array_equal(labels, rec.train_labels[shuffle_indices(24, 2, 1)])
    masks = [np.asarray(b["mask"]) for b in loader.eval_batches()]
    assert sum(int(m.sum()) for m in masks) == 8


def test_prepare_writes_records_of_a_tfds_build(tmp_path, capsys):
    # ImageNet-LT as tfds serves it (mocked): 1000 classes, one tiny JPEG each.
    jpeg = tf.io.encode_jpeg(tf.fill([30, 20, 3], tf.constant(90, tf.uint8))).numpy()

    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kw):
        n = 1000
        return tf.data.Dataset.from_tensor_slices(
            {"label": np.arange(n)[::-1].copy(), "file_name": np.full([n], "x.JPEG"),
             "image": np.full([n], jpeg)})
    out = tmp_path / "inlt"
    with tfds.testing.mock_data(as_dataset_fn=as_dataset,
                                policy=tfds.testing.MockPolicy.USE_CODE), \
            pytest.warns(UserWarning, match="do not match"):
        assert prepare.main(["--dataset=imagenet_lt", f"--out={out}"]) == 0
    assert f"train with --config.dataset.cache={out}" in capsys.readouterr().out
    rec = records.load_records(out)
    assert rec.num_train == rec.num_test == 1000 and rec.num_classes == 1000
    np.testing.assert_array_equal(rec.train_labels, np.arange(1000)[::-1])
    assert rec.grain_train_source().read(5) == jpeg
    assert (rec.image_size, rec.resize_size) == (224, 256)
    # a second prepare into the same folder is refused, nothing overwritten
    with pytest.raises(SystemExit) as e:
        prepare.main(["--dataset=imagenet_lt", f"--out={out}"])
    assert e.value.code == 2 and "exists; give a new folder" in capsys.readouterr().err


def test_load_records_names_a_folder_without_a_copy(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"holds no prepared dataset \(dataset.json "
                                                 r"missing\); write one with python -m "
                                                 r"ride_jax.data.prepare"):
        records.load_records(tmp_path)


def test_a_recipe_trains_on_the_copy_without_tensorflow(prepared, tmp_path):
    _, out = prepared
    workdir = tmp_path / "run"
    proc = run_without_tf(
        tmp_path, "-m", "ride_jax.main", "--config=configs/imagenet_lt.py:backbone=r10,experts=2",
        f"--workdir={workdir}", f"--config.dataset.cache={out}", "--config.epochs=2",
        "--config.data.batch_size=8", "--config.data.eval_batch_size=8",
        "--config.eval_every_epochs=1", "--config.optim.warmup_epochs=1",
        "--config.optim.step1=1", "--config.optim.step2=2", "--config.loss.reweight_epoch=1",
        "--config.max_steps=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stopped_at_max_steps at step 4" in proc.stdout
    # resumed: the second epoch starts at its second step, then evaluates
    proc = run_without_tf(
        tmp_path, "-m", "ride_jax.main", "--config=configs/imagenet_lt.py:backbone=r10,experts=2",
        f"--workdir={workdir}", f"--config.dataset.cache={out}", "--config.epochs=2",
        "--config.data.batch_size=8", "--config.data.eval_batch_size=8",
        "--config.eval_every_epochs=1", "--config.optim.warmup_epochs=1",
        "--config.optim.step1=1", "--config.optim.step2=2", "--config.loss.reweight_epoch=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "finished at step 6" in proc.stdout
    results = json.loads((workdir / "results.json").read_text())
    assert results["last"]["num_examples"] == 8
    assert json.loads((workdir / "dataset.json").read_text())["name"] == "toy_stream"
