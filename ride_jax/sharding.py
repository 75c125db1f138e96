"""The data-parallel mesh and the shardings the trainer, loaders and evaluation use.

One 1-D mesh, axis ``'data'``, over all devices (of every process under
``jax.distributed``): the train state is replicated (``P()``), batches are split on
their first axis (``P('data')``), stacked batches ``[k, B, ...]`` on their second.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def data_mesh(devices: Any = None) -> Mesh:
    """A 1-D mesh named ``'data'`` over ``devices`` (default: all devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same array on every device (the train state, constants)."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """A batch ``[B, ...]`` split over the devices on B."""
    return NamedSharding(mesh, P(DATA_AXIS))


def chunk_sharding(mesh: Mesh) -> NamedSharding:
    """Stacked batches ``[k, B, ...]`` split on B."""
    return NamedSharding(mesh, P(None, DATA_AXIS))
