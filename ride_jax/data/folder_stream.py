"""``image_folder_stream``: an ImageNet-style folder or zip, streamed from its files.

The dataset of ``configs/folder_lt.py``: a user's own ``train/<class>/*`` +
``test/<class>/*`` (or ``val/<class>/*``) folder or ``.zip`` (layout, class order and
file order as :mod:`ride_jax.data.image_folder`), already long-tailed or subsampled with
``ratio=`` (the official CIFAR-LT selection, as ``image_folder_lt``), trained with the
ImageNet-LT pipeline: images are decoded one by one when a batch needs them
(:class:`~ride_jax.data.grain_loader.GrainLoader`, grain) and transformed with the
official torchvision transforms on PIL images (:mod:`ride_jax.data.pil_transforms`:
RandomResizedCrop ``image_size``, flip, ColorJitter 0.4; Resize ``resize_size`` +
CenterCrop ``image_size``). Nothing is held in memory but the file list; no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import numpy as np

from ride_jax.data.base import IMAGENET_MEAN, IMAGENET_STD, StreamedImages
from ride_jax.data.image_folder import (_check_path, _index, _Tree, files_sha256,
                                        long_tail_selection)
from ride_jax.data.long_tail import PROFILES

TEST_SPLITS = ("test", "val")


class LabelledImages(StreamedImages):
    """What a streamed dataset of labelled images tells the trainer, from its
    ``train_labels``, ``test_labels``, ``num_classes``, ``image_size``, ``name`` and
    ``info`` (:class:`FileDataset`, :class:`~ride_jax.data.records.RecordDataset`)."""

    @property
    def train_counts(self) -> np.ndarray:
        return np.bincount(self.train_labels, minlength=self.num_classes).astype(np.int64)

    @property
    def num_train(self) -> int:
        return len(self.train_labels)

    @property
    def num_test(self) -> int:
        return len(self.test_labels)


@dataclasses.dataclass(frozen=True)
class FileDataset(LabelledImages):
    """A long-tailed dataset of image files, read when needed (see the module docstring).

    Attributes:
      name: registry name.
      num_classes, class_names: C and the names in label order.
      train_paths, test_paths: one path per example (a file, or ``'archive.zip::member'``).
      train_labels, test_labels: ``[N]`` int64 labels.
      mean, std: normalisation constants (0..1 scale).
      image_size: crop size; ``resize_size``: evaluation shorter side.
      color_jitter: ColorJitter(0.4, 0.4, 0.4) in training.
      selected: ``[N]`` indices of the kept training files in the full class-sorted list.
      info: JSON-serialisable description.
    """
    name: str
    num_classes: int
    class_names: tuple[str, ...]
    train_paths: tuple[str, ...]
    train_labels: np.ndarray
    test_paths: tuple[str, ...]
    test_labels: np.ndarray
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    resize_size: int
    color_jitter: bool
    selected: np.ndarray
    info: Mapping[str, Any]


    def grain_train_source(self):
        """The training files with the official training transform (grain source)."""
        from ride_jax.data.grain_pipeline import FileSource, official_train_transform
        return FileSource(self.train_paths, self.train_labels,
                          transform_train=official_train_transform(self.image_size,
                                                                   self.color_jitter))

    def grain_test_source(self):
        """The test files with the official evaluation transform (grain source)."""
        from ride_jax.data.grain_pipeline import FileSource, official_eval_transform
        return FileSource(self.test_paths, self.test_labels,
                          transform_eval=official_eval_transform(self.image_size,
                                                                 self.resize_size))


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid: expected an integer >= 1")
    return int(value)


def image_folder_stream(path: str | os.PathLike, ratio: float | None = None,
                        img_max: float | None = None, profile: str = "exp", seed: int = 0,
                        train_split: str = "train", test_split: str = "auto",
                        image_size: int = 224, resize_size: int | None = None,
                        color_jitter: bool = True, classes: Sequence[str] | None = None
                        ) -> FileDataset:
    """The files of a ``split/class/file`` folder or zip as a streamed dataset.

    Args:
      path: a folder, or a ``.zip`` holding the same tree.
      ratio: n_max / n_min >= 1: the official long-tailed selection of the training
        files (as ``image_folder_lt``); None keeps the training split as it is.
      img_max: head-class images with ``ratio`` (default ``len(train files) / C``).
      profile: ``'exp'`` or ``'step'``.
      seed: seed of the selection.
      train_split: the training split's folder name.
      test_split: the evaluation split: ``'test'``, ``'val'``, or ``'auto'`` (``test``
        where there is one, else ``val``).
      image_size: the crop size (224 as ImageNet-LT; e.g. 64 for small images on a CPU).
      resize_size: the evaluation resize of the shorter side; default
        ``round(image_size * 256 / 224)`` (256 at 224).
      color_jitter: ColorJitter(0.4, 0.4, 0.4) in training (the official ImageNet-LT
        transform has it).
      classes: class folder names in label order (head first); default sorted names.

    Returns:
      A :class:`FileDataset` named ``'image_folder_stream'``, normalised with the
      ImageNet constants.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is not supported; valid choices are {PROFILES}")
    if test_split not in TEST_SPLITS + ("auto",):
        raise ValueError(f"test_split={test_split!r} is not supported; valid choices are "
                         f"{TEST_SPLITS + ('auto',)}")
    image_size = _positive_int("image_size", image_size)
    resize_size = (round(image_size * 256 / 224) if resize_size is None
                   else _positive_int("resize_size", resize_size))
    if resize_size < image_size:
        raise ValueError(f"resize_size={resize_size} is smaller than image_size={image_size}")
    tree = _Tree(_check_path(path))
    try:
        if test_split == "auto":
            found = tree.splits(TEST_SPLITS)
            test_split = next((s for s in TEST_SPLITS if s in found), "test")
        index = _index(tree, train_split, test_split, classes)
        prefix, kind = tree.prefix, tree.kind
    finally:
        tree.close()
    selected, img_max = long_tail_selection(index, ratio, img_max, profile, seed)

    def where(rel: str) -> str:
        if kind == "folder":
            return os.path.join(index.path, *rel.split("/"))
        return f"{index.path}::{prefix}{rel}"

    info = {"source": "image_folder_stream", "path": index.path, "kind": kind,
            "train_split": train_split, "test_split": test_split,
            "ratio": None if ratio is None else float(ratio), "profile": profile,
            "seed": int(seed), "img_max": None if img_max is None else float(img_max),
            "image_size": image_size, "resize_size": resize_size,
            "color_jitter": bool(color_jitter), "num_train_files": len(index.train_files),
            "train_files_sha256": files_sha256(index.train_files)}
    return FileDataset(
        name="image_folder_stream", num_classes=len(index.classes),
        class_names=index.classes,
        train_paths=tuple(where(index.train_files[i]) for i in selected),
        train_labels=np.asarray(index.train_labels[selected], np.int64),
        test_paths=tuple(where(r) for r in index.test_files),
        test_labels=np.asarray(index.test_labels, np.int64),
        mean=IMAGENET_MEAN, std=IMAGENET_STD, image_size=image_size,
        resize_size=resize_size, color_jitter=bool(color_jitter),
        selected=np.asarray(selected, np.int64), info=info)
