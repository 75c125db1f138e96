"""A streamed dataset copied once into ArrayRecord files, then read by grain without TF.

``python -m ride_jax.data.prepare --dataset=imagenet_lt --out=DIR`` (TensorFlow and
tfds needed once, to read the tfds build or the listed files) writes::

    DIR/train.array_record   one record per training example: its encoded image bytes,
                             in the split's file order (the order the balanced sampler's
                             draws and the epoch permutations index)
    DIR/test.array_record    the same for the test split
    DIR/dataset.json         name, classes, counts, normalisation, transforms, the
                             labels of both splits, and the source's description

``load_records(DIR)`` (NumPy, grain and array_record; no TensorFlow) returns a
:class:`RecordDataset`, which trains through
:class:`~ride_jax.data.grain_loader.GrainLoader` exactly as a folder of image files
(``ride_jax.data.folder_stream``): random access, the official torchvision transforms
on PIL images (:mod:`ride_jax.data.pil_transforms`), the in-memory loader's exact
epochs, resumable at any step without reading the steps before it. In a recipe:
``--config.dataset.cache=DIR``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import numpy as np

from ride_jax.data.folder_stream import LabelledImages
from ride_jax.data.grain_pipeline import (FileSource, official_eval_transform,
                                          official_train_transform)

META = "dataset.json"
SPLITS = ("train", "test")
FORMAT = "ride_jax.records/1"


def _records_path(root: str, split: str) -> str:
    return os.path.join(root, f"{split}.array_record")


class RecordSource(FileSource):
    """The examples of one ``<split>.array_record`` as a grain random-access source
    (:class:`~ride_jax.data.grain_pipeline.FileSource` reading records, not files)."""

    def __init__(self, path: str, labels: Any, transform_train=None, transform_eval=None):
        labels = np.asarray(labels, np.int64).reshape(-1)
        super().__init__([path] * len(labels), labels, transform_train, transform_eval)
        self.record_path = path
        self._reader = None

    def __getstate__(self):
        state = super().__getstate__()
        state["_reader"] = None          # reopened in each worker process
        return state

    def __repr__(self) -> str:
        return f"RecordSource({self.record_path!r}, {len(self)} records)"

    def read(self, index: int) -> bytes:
        if self._reader is None:
            import grain
            self._reader = grain.sources.ArrayRecordDataSource([self.record_path])
        return self._reader[int(index)]


@dataclasses.dataclass(frozen=True)
class RecordDataset(LabelledImages):
    """A prepared streamed dataset (see the module docstring); the interface of
    :class:`~ride_jax.data.folder_stream.FileDataset`."""
    root: str
    name: str
    num_classes: int
    class_names: tuple[str, ...]
    train_labels: np.ndarray
    test_labels: np.ndarray
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    resize_size: int
    color_jitter: bool
    info: Mapping[str, Any]

    def grain_train_source(self) -> RecordSource:
        return RecordSource(_records_path(self.root, "train"), self.train_labels,
                            transform_train=official_train_transform(self.image_size,
                                                                     self.color_jitter))

    def grain_test_source(self) -> RecordSource:
        return RecordSource(_records_path(self.root, "test"), self.test_labels,
                            transform_eval=official_eval_transform(self.image_size,
                                                                   self.resize_size))


def is_records(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by :func:`write_records`."""
    return os.path.isfile(os.path.join(os.fspath(path), META))


def load_records(path: str | os.PathLike) -> RecordDataset:
    """The :class:`RecordDataset` in folder ``path`` (no TensorFlow).

    Raises:
      FileNotFoundError: ``path`` holds no prepared dataset (one line).
      ValueError: its files do not match its description.
    """
    root = os.path.abspath(os.fspath(path))
    if not is_records(root):
        raise FileNotFoundError(f"{root!r} holds no prepared dataset ({META} missing); write "
                                "one with python -m ride_jax.data.prepare --dataset=NAME "
                                f"--out={root}")
    with open(os.path.join(root, META)) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{root!r}: format {meta.get('format')!r}, expected {FORMAT!r}")
    for split in SPLITS:
        if not os.path.isfile(_records_path(root, split)):
            raise FileNotFoundError(f"{_records_path(root, split)!r} is missing")
    return RecordDataset(
        root=root, name=meta["name"], num_classes=int(meta["num_classes"]),
        class_names=tuple(meta["class_names"]),
        train_labels=np.asarray(meta["train_labels"], np.int64),
        test_labels=np.asarray(meta["test_labels"], np.int64),
        mean=tuple(meta["mean"]), std=tuple(meta["std"]), image_size=int(meta["image_size"]),
        resize_size=int(meta["resize_size"]), color_jitter=bool(meta["color_jitter"]),
        info=dict(meta["info"], records=root))


def write_records(dataset, out: str | os.PathLike) -> str:
    """Copy a :class:`~ride_jax.data.streaming.StreamingDataset` (tf.data; TensorFlow
    needed here only) into ArrayRecord files in folder ``out`` (see the module
    docstring). The folder is written under a temporary name and renamed when complete.

    Returns:
      The folder written.
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    out = os.path.abspath(os.fspath(out))
    if os.path.exists(out):
        raise ValueError(f"--out={out!r} exists; give a new folder")
    tmp = out + ".partial"
    os.makedirs(tmp, exist_ok=True)
    labels = {}
    for split, source in (("train", dataset.train_source), ("test", dataset.test_source)):
        ds = source.read(shuffle_files=False, seed=None, process_index=0, process_count=1,
                         train=False)
        writer = ArrayRecordWriter(_records_path(tmp, split), "group_size:1")
        got = []
        try:
            for ex in ds.as_numpy_iterator():
                writer.write(bytes(ex["image"]))
                got.append(int(ex["label"]))
        finally:
            writer.close()
        labels[split] = np.asarray(got, np.int64)
    counts = np.bincount(labels["train"], minlength=dataset.num_classes)
    if not np.array_equal(counts, dataset.train_counts):
        raise ValueError(f"{dataset.name}: the {len(labels['train'])} training examples read "
                         "do not match its train_counts")
    meta = {"format": FORMAT, "name": dataset.name, "num_classes": dataset.num_classes,
            "class_names": list(dataset.class_names), "mean": list(dataset.mean),
            "std": list(dataset.std), "image_size": dataset.image_size,
            "resize_size": dataset.resize_size, "color_jitter": dataset.color_jitter,
            "info": dict(dataset.info), "train_labels": labels["train"].tolist(),
            "test_labels": labels["test"].tolist()}
    with open(os.path.join(tmp, META), "w") as f:
        json.dump(meta, f)
    os.rename(tmp, out)
    return out
