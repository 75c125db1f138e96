"""The in-memory dataset container shared by every source and loader (NumPy only).

A source (``cifar100_lt``, ``fashion_mnist_lt``, ``image_folder_lt``, ...) returns an
:class:`ArrayDataset`: uint8 images in NHWC, int32 labels, the per-class training
counts and what is needed to reproduce the subset (the selected indices into the
source's ORIGINAL training order and the selection parameters). Nothing here imports
TensorFlow: a prepared cache (``save_cache``/``load_cache``, one ``.npz``) is all the
device loader needs, so it runs where TF is absent.

Normalisation constants are on the 0..1 scale (torchvision ``ToTensor`` then
``Normalize(mean, std)``), per RGB channel.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping

import numpy as np

# Official RIDE data_loader/cifar_data_loaders.py (ImbalanceCIFAR{10,100}DataLoader):
# the CIFAR-10 constants are used for CIFAR-100 too.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
# Official RIDE data_loader/imagenet_lt_data_loaders.py (ImageNet-LT; also Places-LT) and
# data_loader/inaturalist_data_loaders.py (iNaturalist 2018).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INAT_MEAN = (0.466, 0.471, 0.380)
INAT_STD = (0.195, 0.194, 0.192)

CACHE_FORMAT = 1


class StreamedImages:
    """What every streamed dataset of square RGB crops reports the same way, from its
    ``name``, ``num_classes``, ``num_train``, ``num_test``, ``train_counts``,
    ``image_size`` and ``info`` (:class:`~ride_jax.data.streaming.StreamingDataset`,
    :class:`~ride_jax.data.folder_stream.LabelledImages`)."""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary, written next to a run."""
        return {"name": self.name, "num_classes": self.num_classes,
                "num_train": self.num_train, "num_test": self.num_test,
                "image_shape": list(self.image_shape),
                "train_counts": self.train_counts.tolist(), "info": dict(self.info)}


@dataclasses.dataclass(frozen=True)
class ArraySplit:
    """One split held in host memory.

    Attributes:
      images: ``[N, H, W, C]`` uint8 (C = 3 for RGB, 1 for grey).
      labels: ``[N]`` int32 in ``[0, num_classes)``.
    """
    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        images, labels = np.asarray(self.images), np.asarray(self.labels)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"images must be [N, H, W, C] uint8, got shape {images.shape} "
                             f"dtype {images.dtype}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(f"labels must be [N] with N = {len(images)} images, got shape "
                             f"{labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels.astype(np.int32, copy=False))

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
    """A long-tailed dataset that fits in memory.

    Attributes:
      name: registry name of the source (``'cifar100_lt'``).
      train, test: the splits (``test`` is the balanced evaluation set).
      num_classes: C.
      class_names: ``C`` names, label order.
      mean, std: per-channel normalisation constants, 0..1 scale.
      selected: ``[N_train]`` int64 indices of the training images in the source's
        ORIGINAL training order, in the order of ``train`` (None when the source is
        used as it is).
      info: JSON-serialisable description (source, ratio, profile, seed, img_max, ...).
    """
    name: str
    train: ArraySplit
    test: ArraySplit
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    selected: np.ndarray | None = None
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        c = int(self.num_classes)
        if len(self.class_names) != c:
            raise ValueError(f"{len(self.class_names)} class names for {c} classes")
        for split_name, split in (("train", self.train), ("test", self.test)):
            if len(split) and (split.labels.min() < 0 or split.labels.max() >= c):
                bad = split.labels[(split.labels < 0) | (split.labels >= c)][:5]
                raise ValueError(f"{split_name} labels out of range [0, {c}): {bad.tolist()}")
        channels = self.train.images.shape[-1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean/std have {len(self.mean)}/{len(self.std)} entries for "
                             f"{channels}-channel images")
        if self.selected is not None:
            sel = np.asarray(self.selected, dtype=np.int64)
            if sel.shape != (len(self.train),):
                raise ValueError(f"selected must be [{len(self.train)}], got {sel.shape}")
            object.__setattr__(self, "selected", sel)
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "num_classes", c)

    @property
    def train_counts(self) -> np.ndarray:
        """``[C]`` int64 training images per class (what LDAM/DRW/RIDE and shot groups use)."""
        return np.bincount(self.train.labels, minlength=self.num_classes).astype(np.int64)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])

    def fingerprint(self) -> str:
        """sha256 of the training subset: selected indices (or labels) and the pixels.

        Two runs with the same fingerprint trained on the same images in the same order.
        """
        h = hashlib.sha256()
        h.update(self.name.encode())
        if self.selected is not None:
            h.update(np.ascontiguousarray(self.selected, dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(self.train.labels, dtype="<i4").tobytes())
        h.update(np.ascontiguousarray(self.train.images).tobytes())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary, written next to a run."""
        return {"name": self.name, "num_classes": self.num_classes,
                "num_train": len(self.train), "num_test": len(self.test),
                "image_shape": list(self.image_shape),
                "train_counts": self.train_counts.tolist(),
                "fingerprint": self.fingerprint(), "info": dict(self.info)}


def save_cache(dataset: ArrayDataset, path: str | os.PathLike) -> str:
    """Write ``dataset`` to one uncompressed ``.npz`` (atomic: temp file then rename).

    Returns the path written.
    """
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    meta = {"format": CACHE_FORMAT, "name": dataset.name, "num_classes": dataset.num_classes,
            "class_names": list(dataset.class_names), "mean": list(dataset.mean),
            "std": list(dataset.std), "info": dict(dataset.info),
            "fingerprint": dataset.fingerprint()}
    arrays = {"train_images": dataset.train.images, "train_labels": dataset.train.labels,
              "test_images": dataset.test.images, "test_labels": dataset.test.labels,
              "meta": np.asarray(json.dumps(meta))}
    if dataset.selected is not None:
        arrays["selected"] = dataset.selected
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
    return path


def load_cache(path: str | os.PathLike, *, verify: bool = False) -> ArrayDataset:
    """Read a cache written by :func:`save_cache` (NumPy only, no TensorFlow).

    Args:
      path: the ``.npz`` file.
      verify: recompute the fingerprint and compare it with the stored one.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no dataset cache at {path!r}; build one with "
            f"`python -m ride_jax.data.prepare --dataset=NAME --out={path}`")
    with np.load(path, allow_pickle=False) as z:
        if "meta" not in z.files:
            raise ValueError(f"{path!r} is not a ride_jax dataset cache (no 'meta' entry)")
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"{path!r} has cache format {meta.get('format')!r}; this version "
                             f"reads format {CACHE_FORMAT}: prepare it again")
        ds = ArrayDataset(
            name=meta["name"],
            train=ArraySplit(z["train_images"], z["train_labels"]),
            test=ArraySplit(z["test_images"], z["test_labels"]),
            num_classes=meta["num_classes"], class_names=tuple(meta["class_names"]),
            mean=tuple(meta["mean"]), std=tuple(meta["std"]),
            selected=z["selected"] if "selected" in z.files else None, info=meta["info"])
    if verify and ds.fingerprint() != meta["fingerprint"]:
        raise ValueError(f"{path!r} is corrupt: its fingerprint does not match its contents")
    return ds
