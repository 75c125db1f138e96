"""The loader of image files read at random (grain): batches made global.

A dataset it takes gives ``grain_train_source()`` and ``grain_test_source()`` (grain
random-access sources with the official transforms) and the usual ``num_train``,
``num_test``, ``num_classes``, ``image_shape``, ``mean``, ``std``:
:class:`~ride_jax.data.folder_stream.FileDataset` (a folder or zip of image files) and
:class:`~ride_jax.data.records.RecordDataset` (a streamed dataset prepared into
ArrayRecord files).

The same interface as :class:`~ride_jax.data.loader.DeviceLoader` for the trainer
(``steps_per_epoch``, ``train_batch_sizes``, ``epoch_calls``, ``eval_batches``,
``batch_sharding``). Every process reads only its own contiguous part of every global
batch (:func:`~ride_jax.data.grain_pipeline.make_train_iter`), decoded and transformed
on the host (uint8), then put into one global ``jax.Array`` sharded ``P('data')``
(``jax.make_array_from_process_local_data``) and normalised on the devices.

Epochs are the in-memory loader's (a fresh permutation per epoch for ``shuffle``, the
official draws for ``balanced``, ``remainder`` honoured, the last partial batch trimmed
to a multiple of the device count), functions of ``(seed, epoch)`` only. So the
position of a run in its input is its step: a run resumed at step ``s`` starts the
epoch's iterator at step ``s mod steps_per_epoch`` and never reads the examples of the
steps before it; the checkpointed step is the whole iterator state.
"""

from __future__ import annotations

import functools
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from ride_jax.data.augment import normalize
from ride_jax.data.grain_pipeline import (epoch_steps, make_eval_iter, make_train_iter,
                                          reader_options)
from ride_jax.data.loader import (REMAINDERS, SAMPLERS, ReadyBatches, batch_spec,
                                  check_steps_per_call)
from ride_jax.sharding import batch_sharding, chunk_sharding


class GrainLoader(ReadyBatches):
    """Batches of a dataset of image files (see the module).

    Args:
      dataset: a :class:`~ride_jax.data.folder_stream.FileDataset` or
        :class:`~ride_jax.data.records.RecordDataset`.
      batch_size, eval_batch_size: global batches (multiples of the device count).
      mesh: the 1-D ``'data'`` mesh.
      seed: order and augmentation seed.
      sampler: ``'shuffle'`` or ``'balanced'``.
      remainder: ``'partial'`` or ``'drop'``.
      dtype: dtype of the normalised images.
      workers: grain worker processes per process (0: grain's reader threads in this
        process).
    """

    def __init__(self, dataset, batch_size: int, eval_batch_size: int, mesh: Mesh, seed: int,
                 sampler: str = "shuffle", remainder: str = "partial",
                 dtype: Any = jnp.float32, workers: int = 0):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r}; valid choices are {SAMPLERS}")
        if remainder not in REMAINDERS:
            raise ValueError(f"remainder={remainder!r}; valid choices are {REMAINDERS}")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1 or value % mesh.size:
                raise ValueError(f"{name}={value} must be a positive multiple of the "
                                 f"{mesh.size} devices")
        self.dataset, self.mesh, self.seed = dataset, mesh, int(seed)
        self.sampler, self.remainder, self.workers = sampler, remainder, int(workers)
        self.dtype = dtype
        # One reader thread per core, shared out among the workers (reader_options).
        self.read_options = reader_options(self.workers)
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self._sizes = epoch_steps(dataset.num_train, self.batch_size, remainder, mesh.size)
        if not self._sizes:
            raise ValueError(f"batch_size={batch_size} exceeds the {dataset.num_train} "
                             "training images and remainder='drop' would leave no step")
        self.train_source = dataset.grain_train_source()
        self.test_source = dataset.grain_test_source()
        self._normalize = jax.jit(functools.partial(
            normalize, mean=tuple(dataset.mean), std=tuple(dataset.std), dtype=dtype))

    @property
    def batch_sharding(self) -> NamedSharding:
        return batch_sharding(self.mesh)

    def chunk_sharding(self) -> NamedSharding:
        return chunk_sharding(self.mesh)

    @property
    def steps_per_epoch(self) -> int:
        return len(self._sizes)

    def train_batch_sizes(self) -> list[int]:
        """The global batch size of every train step of an epoch (the last may be smaller)."""
        return list(self._sizes)

    def batch_spec(self, size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """The abstract training batch of ``size`` examples (nothing is read)."""
        return batch_spec(self.dataset.image_shape, self.dtype, size, self.batch_sharding)

    def _global(self, local: dict[str, np.ndarray], keys) -> dict[str, jax.Array]:
        n = len(local["label"]) * jax.process_count()
        out = {k: jax.make_array_from_process_local_data(
            self.batch_sharding, np.asarray(local[k]), (n,) + local[k].shape[1:])
            for k in keys}
        out["image"] = self._normalize(out["image"])
        return out

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, jax.Array]]:
        """Training batches ``{'image', 'label'}`` of ``epoch`` (0-indexed) from ``start``."""
        for _, batch in self.epoch_calls(epoch, start=start):
            yield batch

    def epoch_calls(self, epoch: int, start: int = 0, steps_per_call: int = 1,
                    stop: int | None = None) -> Iterator[tuple[int, dict[str, jax.Array]]]:
        """``(1, batch)`` for each step of ``epoch`` from ``start`` (before ``stop``)."""
        if check_steps_per_call(steps_per_call) != 1:
            raise ValueError("a streamed dataset runs one train step per call")
        end = self.steps_per_epoch if stop is None else min(int(stop), self.steps_per_epoch)
        if start >= end:
            return
        it = make_train_iter(
            self.train_source, batch_size=self.batch_size, seed=self.seed, epoch=int(epoch),
            sampler=self.sampler, num_classes=self.dataset.num_classes,
            remainder=self.remainder, process_index=jax.process_index(),
            process_count=jax.process_count(), multiple=self.mesh.size, start_step=int(start),
            worker_count=self.workers, read_options=self.read_options)
        try:
            for _, local in zip(range(start, end), it):
                yield 1, self._global(local, ("image", "label"))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def eval_batches(self) -> Iterator[dict[str, jax.Array]]:
        """Every test image exactly once, the last batch padded (``'mask'`` False)."""
        if not self.dataset.num_test:
            return
        it = make_eval_iter(self.test_source, batch_size=self.eval_batch_size,
                            process_index=jax.process_index(),
                            process_count=jax.process_count(), worker_count=self.workers,
                            read_options=self.read_options)
        try:
            for local in it:
                yield self._global(local, ("image", "label", "mask"))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
