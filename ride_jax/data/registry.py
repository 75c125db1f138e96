"""Datasets by name: ``load_dataset('cifar100_lt', ratio=100)``.

Each name maps to a builder function in a module that is imported only when used, so
the in-memory names that need no TensorFlow (``synthetic_lt``, ``image_folder_lt``, a
prepared cache) never import it.

* In-memory names return an :class:`~ride_jax.data.base.ArrayDataset`.
* Streaming names (ImageNet-LT, iNaturalist 2018, Places-LT) return a
  :class:`~ride_jax.data.streaming.StreamingDataset` (tf.data from tfds);
  ``image_folder_stream`` a :class:`~ride_jax.data.folder_stream.FileDataset` (image
  files read by grain, no TensorFlow).

The tfds-backed names (CIFAR-10/100-LT and the streaming ones) need the ``tf`` extra;
without it, :func:`dataset_builder` raises a one-line ``ValueError`` naming the extra.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

# name -> (module, function)
_SOURCES = {
    "cifar10_lt": ("ride_jax.data.tfds_sources", "cifar10_lt"),
    "cifar100_lt": ("ride_jax.data.tfds_sources", "cifar100_lt"),
    "fashion_mnist_lt": ("ride_jax.data.fashion_mnist", "fashion_mnist_lt"),
    "image_folder_lt": ("ride_jax.data.image_folder", "image_folder_lt"),
    "image_folder_stream": ("ride_jax.data.folder_stream", "image_folder_stream"),
    "synthetic_lt": ("ride_jax.data.synthetic", "synthetic_lt"),
    "imagenet_lt": ("ride_jax.data.tfds_sources", "imagenet_lt"),
    "inat2018": ("ride_jax.data.tfds_sources", "inat2018"),
    "places_lt": ("ride_jax.data.tfds_sources", "places_lt"),
}
IN_MEMORY = ("cifar10_lt", "cifar100_lt", "fashion_mnist_lt", "image_folder_lt", "synthetic_lt")
STREAMING = ("imagenet_lt", "inat2018", "places_lt", "image_folder_stream")
DATASETS = IN_MEMORY + STREAMING
# What the ``tf`` extra installs: a source that fails to import one of these names the extra.
_TF_MODULES = ("tensorflow", "tensorflow_datasets")


def dataset_builder(name: str):
    """The builder function registered under ``name``."""
    if name not in _SOURCES:
        raise ValueError(f"unknown dataset {name!r}; valid choices are {sorted(DATASETS)}")
    module, fn = _SOURCES[name]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if not _is_tensorflow(e.name):
            raise
        raise ValueError(f"dataset {name!r} needs TensorFlow and tensorflow-datasets, which "
                         f"the base install leaves out: pip install 'ride-jax[tf]' (or -e "
                         f"'.[tf]' in a checkout)") from e
    return getattr(mod, fn)


def _is_tensorflow(module: str | None) -> bool:
    """Whether ``module`` is TensorFlow, tensorflow-datasets or one of their submodules."""
    return any(module == top or (module or "").startswith(top + ".")
               for top in _TF_MODULES)


def dataset_arguments(name: str) -> dict[str, Any]:
    """``{argument: default}`` that ``load_dataset(name, ...)`` accepts."""
    sig = inspect.signature(dataset_builder(name))
    return {k: (None if p.default is inspect.Parameter.empty else p.default)
            for k, p in sig.parameters.items()}


def load_dataset(name: str, **kwargs: Any):
    """Build the dataset registered under ``name`` with ``kwargs``.

    Unknown names and unknown arguments are errors that list the valid ones.
    """
    builder = dataset_builder(name)
    valid = inspect.signature(builder).parameters
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TypeError(f"dataset {name!r} got unknown argument(s) {unknown}; valid arguments "
                        f"are {sorted(valid)}")
    return builder(**kwargs)
