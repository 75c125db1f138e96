"""An ImageNet-style folder streamed by grain (``configs/folder_lt.py``,
``ride_jax.data.folder_stream``, ``ride_jax.data.grain_loader``): the recipe trains
through ``python -m ride_jax.main`` with TensorFlow unimportable, the loader's batches
are the epoch's exact order through the official transforms, and a run stopped
mid-epoch resumes with the batches an uninterrupted run sees, without decoding the
examples of the steps before it.
"""

from __future__ import annotations

import json
import os
import threading
import zipfile

import jax
import numpy as np
import pytest
from PIL import Image

from ride_jax.configlib import load
from ride_jax.data import grain_pipeline, load_dataset
from ride_jax.data import pil_transforms as pt
from ride_jax.data.base import IMAGENET_MEAN, IMAGENET_STD
from ride_jax.data.grain_loader import GrainLoader
from ride_jax.data.loader import balanced_indices, loader_from_config, shuffle_indices
from ride_jax.sharding import data_mesh

from helpers import ROOT, run_main, run_without_tf

TRAIN_COUNTS = [24, 12, 6, 4]        # already long-tailed
VAL_PER_CLASS = 5


def _folder(root, counts=TRAIN_COUNTS, test_name="val"):
    """JPEGs of varied sizes: ``train/class{c}/NNNN.jpg`` and ``<test_name>/...``."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", counts), (test_name, [VAL_PER_CLASS] * len(counts))):
        for c, n in enumerate(per_class):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = (int(v) for v in rng.integers(36, 70, 2))
                img = np.clip(rng.normal(50 * c + 40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i:04d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("folder") / "mine")


def _config(path, *extra):
    c = load(str(ROOT / "configs" / "folder_lt.py"), f"path={path},smoke,experts=2")
    c.unlock()
    for key, value in extra:
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    c.lock()
    return c


# ------------------------------------------------------------------------- the dataset

def test_dataset_lists_the_files_in_class_order_with_val_as_test(folder):
    ds = load_dataset("image_folder_stream", path=str(folder), image_size=32)
    assert ds.class_names == ("class0", "class1", "class2", "class3")
    assert ds.train_counts.tolist() == TRAIN_COUNTS
    assert ds.num_test == 4 * VAL_PER_CLASS and ds.info["test_split"] == "val"
    assert ds.train_paths[0] == str(folder / "train" / "class0" / "0000.jpg")
    assert ds.train_paths[TRAIN_COUNTS[0]] == str(folder / "train" / "class1" / "0000.jpg")
    assert ds.image_shape == (32, 32, 3) and ds.resize_size == round(32 * 256 / 224) == 37
    assert (ds.mean, ds.std) == (IMAGENET_MEAN, IMAGENET_STD)
    # ratio: the official selection keeps n_max * ratio^(-c/(C-1)) of each class
    lt = load_dataset("image_folder_stream", path=str(folder), ratio=4.0, img_max=12.0)
    assert lt.train_counts.tolist() == [12, 7, 4, 3]


def test_a_zip_reads_the_same_pixels(folder, tmp_path):
    z = tmp_path / "mine.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(folder.rglob("*.jpg")):
            zf.write(p, "top/" + p.relative_to(folder).as_posix())
    a = load_dataset("image_folder_stream", path=str(folder), image_size=32)
    b = load_dataset("image_folder_stream", path=str(z), image_size=32)
    assert b.train_paths[0] == f"{z}::top/train/class0/0000.jpg"
    sa = grain_pipeline.FileSource(a.test_paths, a.test_labels)
    sb = grain_pipeline.FileSource(b.test_paths, b.test_labels)
    for i in (0, 7, 19):
        np.testing.assert_array_equal(sa[i]["image"], sb[i]["image"])


@pytest.mark.parametrize("args,message", [
    ({"test_split": "dev"}, r"test_split='dev' is not supported; valid choices are "
                            r"\('test', 'val', 'auto'\)"),
    ({"image_size": 0}, r"image_size=0 is invalid: expected an integer >= 1"),
    ({"image_size": 64, "resize_size": 32}, r"resize_size=32 is smaller than image_size=64"),
])
def test_bad_dataset_arguments_are_one_line(folder, args, message):
    with pytest.raises(ValueError, match=message):
        load_dataset("image_folder_stream", path=str(folder), **args)


# -------------------------------------------------------------------------- the loader

def _loader(ds, sampler="shuffle", remainder="partial", batch=8, seed=3):
    return GrainLoader(ds, batch, 8, data_mesh(), seed, sampler, remainder)


@pytest.mark.parametrize("sampler,remainder", [("shuffle", "partial"), ("shuffle", "drop"),
                                               ("balanced", "partial")])
def test_batches_are_the_epochs_exact_order(folder, sampler, remainder):
    ds = load_dataset("image_folder_stream", path=str(folder), image_size=32)
    loader = _loader(ds, sampler, remainder)
    n = sum(TRAIN_COUNTS)               # 46: 5 full batches of 8 and one of 6
    assert loader.train_batch_sizes() == ([8] * 5 + [6] if remainder == "partial" else [8] * 5)
    for epoch in (0, 1):
        order = (shuffle_indices(n, 3, epoch) if sampler == "shuffle"
                 else balanced_indices(ds.train_labels, 4, 3, epoch))
        labels = np.concatenate([np.asarray(b["label"]) for b in loader.epoch(epoch)])
        want = order[:sum(loader.train_batch_sizes())]
        np.testing.assert_array_equal(labels, ds.train_labels[want])


def test_pixels_are_the_official_transform_normalised(folder):
    ds = load_dataset("image_folder_stream", path=str(folder), image_size=32)
    loader = _loader(ds)
    batch = next(loader.epoch(1, start=2))
    order = shuffle_indices(ds.num_train, 3, 1)
    for row in (0, 5):
        position = 2 * 8 + row
        with Image.open(ds.train_paths[order[position]]) as im:
            img = im.convert("RGB")
        params = pt.sample_train_params(np.random.default_rng([3, 5, 1, position]),
                                        img.height, img.width)
        pixels = pt.train_transform(img, params, 32)
        want = (pixels / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
        np.testing.assert_allclose(np.asarray(batch["image"][row]), want, atol=1e-5)
    evals = list(loader.eval_batches())
    assert [int(np.asarray(b["mask"]).sum()) for b in evals] == [8, 8, 4]
    with Image.open(ds.test_paths[9]) as im:
        pixels = pt.eval_transform(im.convert("RGB"), 32, 37)
    want = (pixels / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    np.testing.assert_allclose(np.asarray(evals[1]["image"][1]), want, atol=1e-5)


def test_the_config_picks_the_grain_loader_and_refuses_what_it_cannot_honour(folder):
    ds = load_dataset("image_folder_stream", path=str(folder), image_size=32)
    assert isinstance(loader_from_config(ds, _config(folder)), GrainLoader)
    with pytest.raises(ValueError, match=r"data.augment='ride' does not apply"):
        loader_from_config(ds, _config(folder, ("data.augment", "ride")))
    with pytest.raises(ValueError, match=r"steps_per_call=2: scanning"):
        loader_from_config(ds, _config(folder, ("steps_per_call", 2)))


class _Counted:
    """Counts decodes (grain's reader threads call it concurrently)."""

    def __init__(self):
        self.n, self.lock = 0, threading.Lock()

    def __call__(self, data):
        with self.lock:
            self.n += 1
        return grain_pipeline.decode_image(data)


def test_a_run_resumed_mid_epoch_sees_the_uninterrupted_batches_without_reading_the_skipped(
        folder, tmp_path, monkeypatch):
    from ride_jax import train
    counted = _Counted()
    real = grain_pipeline.FileSource.__init__

    def init(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if self.transform_train is not None:        # the training images only
            self.decode = counted
    monkeypatch.setattr(grain_pipeline.FileSource, "__init__", init)
    # A ResNet-8 on the 32x32 crops: the reads are under test, not the network.
    small = (("model.arch", "resnet32"), ("model.cifar_blocks", 1))
    c = _config(folder, ("log_every_steps", 1), *small)   # 3 steps of 16 (46 images) per epoch
    whole = train.train_and_evaluate(c, str(tmp_path / "whole"))
    assert whole["status"] == "finished" and whole["step"] == 6
    # Stopped after step 4 (mid-epoch 2), then resumed.
    counted.n = 0
    c_stop = _config(folder, ("log_every_steps", 1), ("max_steps", 4), *small)
    part = train.train_and_evaluate(c_stop, str(tmp_path / "resumed"))
    assert part["status"] == "stopped_at_max_steps" and part["step"] == 4
    # Steps 1..4 read 16 + 16 + 14 + 16 training images; grain's reader threads may
    # have read ahead into the rest of epoch 2 (16 + 14), never further.
    assert 16 + 16 + 14 + 16 <= counted.n <= 16 + 16 + 14 + 16 + 16 + 14
    counted.n = 0
    done = train.train_and_evaluate(c, str(tmp_path / "resumed"))
    assert done["status"] == "finished" and done["step"] == 6
    # The resumed run decoded the images of steps 5 and 6 (16 + 14), nothing before.
    assert counted.n == 16 + 14

    def rows(name):
        return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()
                if json.loads(line)["kind"] == "train"]
    a, b = rows("whole"), rows("resumed")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 7))
    # The same batches, the same computation: the same numbers.
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-6)
    assert done["last"]["accuracy"] == pytest.approx(whole["last"]["accuracy"])


# -------------------------------------------------------------------------- the recipe

def _recipe(arg):
    return load(str(ROOT / "configs" / "folder_lt.py"), f"path=/data/mine,{arg}".rstrip(","))


def test_the_recipe_is_imagenet_lts():
    c = _recipe("")
    assert c.dataset.name == "image_folder_stream"
    assert c.dataset.args.to_dict() == {"path": "/data/mine", "image_size": 224}
    assert (c.model.arch, c.model.num_experts, c.loss.name) == ("resnet50", 3, "ride")
    assert (c.epochs, c.data.batch_size, c.data.eval_batch_size) == (100, 256, 128)
    assert (c.optim.lr, c.optim.weight_decay, c.optim.step1, c.optim.step2) == (0.1, 2e-4, 60, 80)
    assert c.loss.reweight_epoch == 80 and c.data.augment == "none" and c.data.workers == 0
    c = _recipe("ratio=100,img_max=300,image_size=64,backbone=rx50,experts=4")
    assert c.dataset.args.to_dict() == {"path": "/data/mine", "image_size": 64,
                                        "ratio": 100.0, "img_max": 300.0}
    assert (c.model.arch, c.model.num_experts) == ("resnext50", 4)
    c = _recipe("epochs=10")
    assert (c.epochs, c.optim.warmup_epochs, c.optim.step1, c.optim.step2,
            c.loss.reweight_epoch) == (10, 1, 6, 8, 8)
    c = _recipe("smoke")
    assert (c.epochs, c.data.batch_size, c.model.arch, c.dataset.args.image_size) == (
        2, 16, "resnet10", 32)
    assert c.loss.reweight_epoch == 1


@pytest.mark.parametrize("loss", ["ldam_drw", "ce", "focal", "logit_adjusted",
                                  "balanced_softmax", "tests.plugin_method:make_loss"])
def test_every_method_and_stage_loads(loss):
    c = _recipe(f"loss={loss}")
    assert c.loss.name == loss
    for stage in ("router", "distill", "crt", "eval"):
        assert _recipe(f"stage={stage}").stage == stage


@pytest.mark.parametrize("arg,message", [
    ("ratio=0.5", r"config argument ratio=0.5 must be >= 1"),
    ("img_max=-1", r"config argument img_max=-1.0 must be > 0"),
    ("smoke,epochs=3", r"smoke and epochs= exclude each other"),
    ("backbone=r18", r"backbone"),
    ("loss=reslt", r"config argument loss=reslt: ResLT's large-dataset recipes fix their "
                   r"class groups for ImageNet-LT and iNat only; valid choices here are ride"),
])
def test_bad_recipe_arguments(arg, message):
    with pytest.raises(ValueError, match=message):
        _recipe(arg)


# ----------------------------------------------------------------- the recipe, no TF

def test_the_folder_recipe_trains_without_tensorflow(folder, tmp_path):
    workdir = tmp_path / "run"
    proc = run_without_tf(tmp_path, "-m", "ride_jax.main",
                          f"--config=configs/folder_lt.py:path={folder},smoke,experts=2",
                          f"--workdir={workdir}", "--config.data.workers=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "finished at step 6" in proc.stdout
    results = json.loads((workdir / "results.json").read_text())
    assert results["last"]["num_examples"] == 4 * VAL_PER_CLASS
    dataset = json.loads((workdir / "dataset.json").read_text())
    assert dataset["name"] == "image_folder_stream" and dataset["train_counts"] == TRAIN_COUNTS
    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["arch"] == "resnet10" and config["data"]["augment"] == "none"


def test_the_folder_recipe_needs_a_path(tmp_path):
    proc = run_main(tmp_path / "run", "configs/folder_lt.py")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: --config=configs/folder_lt.py: config argument path= must name your folder")
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()
