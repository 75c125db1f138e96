"""Long-tailed data: sources by name, the official subsets, device loaders.

Importing this package does not import TensorFlow; only the tfds-backed sources do,
when they are used.
"""

from ride_jax.data.augment import AUGMENTATIONS, Augment, augment_images, get_augment, normalize
from ride_jax.data.base import (CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, INAT_MEAN,
                                INAT_STD, ArrayDataset, ArraySplit, load_cache, save_cache)
from ride_jax.data.loader import (DATA_AXIS, DeviceLoader, balanced_indices, data_mesh,
                                  make_loader, shuffle_indices)
from ride_jax.data.long_tail import PROFILES, long_tail_counts, select_long_tail, shot_masks
from ride_jax.data.registry import (DATASETS, IN_MEMORY, STREAMING, dataset_arguments,
                                    load_dataset)

__all__ = [
    "AUGMENTATIONS", "Augment", "augment_images", "get_augment", "normalize",
    "CIFAR_MEAN", "CIFAR_STD", "IMAGENET_MEAN", "IMAGENET_STD", "INAT_MEAN", "INAT_STD",
    "ArrayDataset", "ArraySplit", "load_cache", "save_cache",
    "DATA_AXIS", "DeviceLoader", "balanced_indices", "data_mesh", "make_loader",
    "shuffle_indices",
    "PROFILES", "long_tail_counts", "select_long_tail", "shot_masks",
    "DATASETS", "IN_MEMORY", "STREAMING", "dataset_arguments", "load_dataset",
]
