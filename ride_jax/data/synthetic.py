"""``synthetic_lt``: a small, learnable long-tailed dataset made from a seed (tests, benchmarks)."""

from __future__ import annotations

import numpy as np

from ride_jax.data.base import CIFAR_MEAN, CIFAR_STD, ArrayDataset, ArraySplit
from ride_jax.data.long_tail import PROFILES, long_tail_counts, select_long_tail


def _images(rng: np.random.Generator, labels: np.ndarray, num_classes: int, image_size: int,
            channels: int) -> np.ndarray:
    # Each class has its own mean colour and a bright square at a class-dependent place,
    # plus noise: learnable, and not constant (so augmentation changes it).
    colours = np.random.default_rng(1234).integers(40, 216, size=(num_classes, channels))
    n = len(labels)
    img = rng.normal(0.0, 25.0, size=(n, image_size, image_size, channels))
    img += colours[labels][:, None, None, :]
    q = max(1, image_size // 4)
    pos = (np.arange(num_classes) * 7) % max(1, image_size - q)
    for c in range(num_classes):
        sel = labels == c
        img[sel, pos[c]:pos[c] + q, pos[c]:pos[c] + q, :] = 250.0
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def synthetic_lt(num_classes: int = 10, image_size: int = 32, channels: int = 3,
                 img_max: int = 100, ratio: float = 10.0, profile: str = "exp",
                 test_per_class: int = 10, seed: int = 0,
                 subset_seed: int | None = None) -> ArrayDataset:
    """A synthetic long-tailed dataset.

    Args:
      num_classes: C.
      image_size: H = W.
      channels: 1 or 3.
      img_max: training images of the head class.
      ratio: n_max / n_min >= 1.
      profile: ``'exp'`` or ``'step'``.
      test_per_class: balanced test set size per class.
      seed: pixels and labels are a function of the arguments and this seed.
      subset_seed: None (default): the training set is generated as it is. An integer:
        a balanced pool of ``img_max`` images per class is generated (from ``seed``),
        and the long-tailed training set is selected from it with the official
        selection seeded by ``subset_seed`` (``long_tail.select_long_tail``), so that
        resamples share the pool and the test set (bias/variance studies).

    Returns:
      an :class:`ArrayDataset` (train class-sorted, test class-sorted).
    """
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is not supported; valid choices are {PROFILES}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if int(image_size) < 4:
        raise ValueError(f"image_size must be >= 4, got {image_size!r}")
    counts = long_tail_counts(num_classes, img_max, ratio, profile)
    rng = np.random.default_rng(seed)
    train_labels = np.repeat(np.arange(num_classes), counts).astype(np.int32)
    test_labels = np.repeat(np.arange(num_classes), test_per_class).astype(np.int32)
    selected = np.arange(len(train_labels), dtype=np.int64)
    if subset_seed is None:
        train = ArraySplit(_images(rng, train_labels, num_classes, image_size, channels),
                           train_labels)
    else:
        pool_labels = np.repeat(np.arange(num_classes), int(img_max)).astype(np.int32)
        pool = _images(rng, pool_labels, num_classes, image_size, channels)
        selected = select_long_tail(pool_labels, counts, int(subset_seed))
        train = ArraySplit(pool[selected], pool_labels[selected])
    test = ArraySplit(_images(rng, test_labels, num_classes, image_size, channels), test_labels)
    mean = CIFAR_MEAN if channels == 3 else (0.5,)
    std = CIFAR_STD if channels == 3 else (0.25,)
    return ArrayDataset(
        name="synthetic_lt", train=train, test=test, num_classes=num_classes,
        class_names=tuple(f"class_{c}" for c in range(num_classes)), mean=mean, std=std,
        selected=selected,
        info={"source": "synthetic", "ratio": float(ratio), "profile": profile,
              "img_max": int(img_max), "seed": int(seed), "image_size": int(image_size),
              "subset_seed": subset_seed})
