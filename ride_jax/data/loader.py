"""Device-resident loader for datasets that fit in memory (no TensorFlow).

The uint8 training and test images are put on every device of a 1-D ``'data'`` mesh
once. A training step then sends only ``[B]`` int32 indices (sharded ``P('data')``);
one jitted function gathers, augments (:mod:`ride_jax.data.augment`) and normalises
the batch on the devices, each device producing its own slice of the global batch.

Batches are dicts: ``{'image': [B, H, W, C] float (normalised NHWC), 'label': [B] int32}``,
and evaluation batches add ``'mask': [B] bool`` (False on padding), sharded ``P('data')``.
``epoch_calls`` groups an epoch's batches for a train step scanned over ``k`` steps
(``config.steps_per_call``): ``[k, B, ...]`` stacks, sharded ``P(None, 'data')``.
Every loader gives the trainer the same three things: ``train_calls`` (the ``(k,
inputs)`` of an epoch's train calls), ``step_batch`` (pure, traced inside the jitted
train step: ``inputs -> batch``) and ``call_spec`` (the abstract inputs of a call, for
compiling without reading data). A loader whose calls are ready batches
(:class:`ReadyBatches`: the streamed ones, and this one by default) makes
``step_batch`` the identity. ``fuse=True`` (``config.data.fuse_input``) makes this
loader's inputs its small device-resident epoch plan and step number instead, and the
train step gathers, augments and normalises the batch itself: one dispatch per step.

Order and randomness are functions of ``(seed, epoch)`` alone, so a resumed run sees
the same batches as an uninterrupted one:

* ``sampler='shuffle'``: a fresh permutation every epoch (PyTorch ``shuffle=True``).
* ``sampler='balanced'``: the official ``BalancedSampler`` (RIDE data_loader/cifar_data_loaders.py, RIDE's
  router stage): each draw picks a class uniformly, then the next item of that class's
  shuffled bucket, which is reshuffled when exhausted; the bucket positions carry over
  between epochs as the official sampler's pointers do; the epoch length is the
  dataset size (``retain_epoch_size=True``).
* ``remainder='partial'`` (official ``drop_last=False``): the last batch of an epoch is
  smaller (one more compiled shape). With several devices it is trimmed to a multiple
  of the device count (fewer than ``num_devices`` images skipped per epoch).
  ``remainder='drop'`` (ResLT's ``drop_last=True``) drops it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ride_jax.data.augment import (Augment, augment_gather, get_augment, normalize,
                                   sample_params_host)
from ride_jax.data.base import ArrayDataset
from ride_jax.sharding import (DATA_AXIS, batch_sharding, chunk_sharding,  # noqa: F401
                               data_mesh)

SAMPLERS = ("shuffle", "balanced")
REMAINDERS = ("partial", "drop")


def _seed_rng(*words: int) -> np.random.Generator:
    return np.random.default_rng([int(w) for w in words])


def shuffle_indices(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """``[N]`` int64 permutation for ``epoch`` (0-indexed), a function of (seed, epoch)."""
    return _seed_rng(seed, 0, epoch).permutation(num_examples)


def balanced_indices(labels: Any, num_classes: int, seed: int, epoch: int,
                     epoch_size: int | None = None) -> np.ndarray:
    """The official class-balanced sampler's draws for ``epoch`` (0-indexed).

    Args:
      labels: ``[N]`` training labels.
      num_classes: C (a class without examples is an error: the official sampler
        would crash on its empty bucket).
      seed: the stream's seed.
      epoch: which epoch's draws to return; the bucket positions carry over from the
        draws of epochs ``0..epoch-1``, as the official sampler's pointers do.
      epoch_size: draws per epoch (default N, the official ``retain_epoch_size=True``).

    Returns:
      ``[epoch_size]`` int64 indices into ``labels``.
    """
    labels = np.asarray(labels)
    n = len(labels) if epoch_size is None else int(epoch_size)
    buckets = [np.flatnonzero(labels == c) for c in range(num_classes)]
    empty = [c for c, b in enumerate(buckets) if len(b) == 0]
    if empty:
        raise ValueError(f"the balanced sampler needs an example of every class; classes "
                         f"{empty[:10]} have none")
    # Classes drawn in every epoch up to this one: the pointers' positions.
    before = np.zeros(num_classes, np.int64)
    for e in range(epoch):
        before += np.bincount(_seed_rng(seed, 1, e).integers(0, num_classes, n),
                              minlength=num_classes)
    classes = _seed_rng(seed, 1, epoch).integers(0, num_classes, n)
    out = np.empty(n, np.int64)
    for c in range(num_classes):
        where = np.flatnonzero(classes == c)
        if not len(where):
            continue
        size = len(buckets[c])
        pos = before[c] + np.arange(len(where))          # positions in the class's stream
        cycles = np.unique(pos // size)
        perms = {k: _seed_rng(seed, 2, c, k).permutation(size) for k in cycles}
        out[where] = [buckets[c][perms[p // size][p % size]] for p in pos]
    return out


def train_batch(data: dict[str, jax.Array], idx: jax.Array, params: dict[str, jax.Array], *,
                aug: Augment, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
    """Gather + augment + normalise one training batch on the device (pure, jittable).

    Args:
      data: ``DeviceLoader.data``: ``train_images [N, H, W, C]`` uint8, ``train_labels [N]``,
        ``mean [C]``, ``std [C]``.
      idx: ``[B]`` int32 rows.
      params: augmentation parameters (``offset [B, 2]``, ``flip [B]``, ``affine [B, 6]``).

    Returns:
      ``{'image': [B, H, W, C] dtype, 'label': [B] int32}``.
    """
    pixels = augment_gather(data["train_images"], idx, params, aug)
    return {"image": normalize(pixels, data["mean"], data["std"], dtype),
            "label": jnp.take(data["train_labels"], idx)}


def plan_batch(data: dict[str, jax.Array], plan: dict[str, jax.Array], step: jax.Array, *,
               aug: Augment, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
    """Step ``step`` of an epoch plan (``DeviceLoader.epoch_plan``) as a batch (pure, jittable).

    Call it inside your own jitted train step to fuse the input pipeline into it (one
    dispatch per step): ``batch = plan_batch(data, plan, step, aug=loader.augment)``.

    Args:
      data: ``DeviceLoader.data``.
      plan: ``{'idx': [S, B], 'offset': [S, B, 2], 'flip': [S, B], 'affine': [S, B, 6]}``.
      step: scalar int32 in ``[0, S)``.
    """
    row = {k: jax.lax.dynamic_index_in_dim(v, step, 0, keepdims=False) for k, v in plan.items()}
    idx = row.pop("idx")
    return train_batch(data, idx, row, aug=aug, dtype=dtype)


def plan_chunk(data: dict[str, jax.Array], plan: dict[str, jax.Array], start: jax.Array, *,
               k: int, aug: Augment, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
    """Steps ``start .. start + k - 1`` of an epoch plan, stacked (pure, jittable).

    The batches of :func:`plan_batch` for those steps (the same gather, augmentation and
    normalisation, vmapped over the steps), for a train step scanned over ``k`` steps.

    Args:
      data: ``DeviceLoader.data``.
      plan: ``DeviceLoader.epoch_plan``'s ``{'idx': [S, B], ...}``.
      start: scalar int32, ``start + k <= S``.
      k: number of steps (static).

    Returns:
      ``{'image': [k, B, H, W, C] dtype, 'label': [k, B] int32}``.
    """
    steps = start + jnp.arange(k, dtype=jnp.int32)
    return jax.vmap(lambda s: plan_batch(data, plan, s, aug=aug, dtype=dtype))(steps)


def check_steps_per_call(steps_per_call: Any) -> int:
    """``steps_per_call`` as an int >= 0 (0: every full batch of an epoch in one call)."""
    if (isinstance(steps_per_call, (bool, np.bool_))
            or not isinstance(steps_per_call, (int, np.integer)) or steps_per_call < 0):
        raise ValueError(f"steps_per_call={steps_per_call!r}: expected an int >= 1 (train "
                         "steps scanned in one compiled call), or 0 (a whole epoch's full "
                         "batches per call)")
    return int(steps_per_call)


def batch_spec(image_shape, dtype, size: int, sharding) -> dict[str, jax.ShapeDtypeStruct]:
    """``{'image': [size, *image_shape] dtype, 'label': [size] int32}`` as abstract arrays
    with ``sharding``: a loader's training batch, for compiling without reading one
    (``dtype`` None: float32, as :func:`~ride_jax.data.augment.normalize` makes it)."""
    dtype = jnp.float32 if dtype is None else dtype
    return {"image": jax.ShapeDtypeStruct((int(size),) + tuple(image_shape), dtype,
                                          sharding=sharding),
            "label": jax.ShapeDtypeStruct((int(size),), jnp.int32, sharding=sharding)}


def _stacked(batch: dict[str, jax.ShapeDtypeStruct], k: int, sharding) -> dict[str, Any]:
    """``[k, ...]`` abstract stacks of an abstract batch, with ``sharding``."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((k,) + x.shape, x.dtype,
                                                       sharding=sharding), batch)


class ReadyBatches:
    """The trainer's interface for a loader whose train calls are ready batches
    (``epoch_calls``): the step takes the batch as it is."""

    def train_calls(self, epoch: int, start: int = 0, steps_per_call: int = 1,
                    stop: int | None = None) -> Iterator[tuple[int, Any]]:
        """``(k, inputs)`` of the train calls of ``epoch`` from ``start`` (before ``stop``)."""
        return self.epoch_calls(epoch, start=start, steps_per_call=steps_per_call, stop=stop)

    @staticmethod
    def step_batch(inputs: Any) -> dict[str, jax.Array]:
        """The batch of a call's inputs, inside the train step (here: the inputs)."""
        return inputs

    def call_spec(self, size: int, k: int = 1) -> dict[str, jax.ShapeDtypeStruct]:
        """The abstract inputs of a call of ``k`` steps of ``size`` examples (nothing is
        read): the batch spec, stacked ``[k, ...]`` for ``k > 1``."""
        batch = self.batch_spec(size)
        return batch if k == 1 else _stacked(batch, k, self.chunk_sharding())


def _abstract(x, sharding=None) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype,
                                sharding=x.sharding if sharding is None else sharding)


@functools.partial(jax.jit, static_argnames=("dtype",))
def _eval_batch(images, labels, plan, step, mean, std, *, dtype):
    idx, mask = (jax.lax.dynamic_index_in_dim(plan[k], step, 0, keepdims=False)
                 for k in ("idx", "mask"))
    return {"image": normalize(jnp.take(images, idx, axis=0), mean, std, dtype),
            "label": jnp.take(labels, idx), "mask": mask}


@dataclasses.dataclass(frozen=True, eq=False)
class DeviceLoader(ReadyBatches):
    """Batches of an :class:`ArrayDataset` made on the devices.

    Build with :func:`make_loader`. Iterate ``loader.epoch(e)`` for training and
    ``loader.eval_batches()`` for evaluation.
    """
    dataset: ArrayDataset
    batch_size: int
    eval_batch_size: int
    mesh: Mesh
    augment: Augment
    sampler: str
    remainder: str
    seed: int
    dtype: Any
    _arrays: dict = dataclasses.field(repr=False)
    fuse: bool = False

    def train_calls(self, epoch: int, start: int = 0, steps_per_call: int = 1,
                    stop: int | None = None) -> Iterator[tuple[int, Any]]:
        """:meth:`epoch_inputs` when fused (the step makes the batch), else ready batches."""
        if self.fuse:
            return self.epoch_inputs(epoch, start=start, steps_per_call=steps_per_call,
                                     stop=stop)
        return self.epoch_calls(epoch, start=start, steps_per_call=steps_per_call, stop=stop)

    def step_batch(self, inputs: Any) -> dict[str, jax.Array]:
        """:meth:`assemble` when fused, else the ready batch as it is."""
        return self.assemble(inputs) if self.fuse else inputs

    def call_spec(self, size: int, k: int = 1) -> dict[str, Any]:
        """:meth:`input_spec` when fused, else the (stacked) batch spec."""
        return self.input_spec(size, k) if self.fuse else super().call_spec(size, k)

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    @property
    def batch_sharding(self) -> NamedSharding:
        return batch_sharding(self.mesh)

    @property
    def num_train(self) -> int:
        return len(self.dataset.train)

    def _batch_sizes(self) -> list[int]:
        full, rest = divmod(self.num_train, self.batch_size)
        sizes = [self.batch_size] * full
        rest -= rest % self.num_devices
        if self.remainder == "partial" and rest:
            sizes.append(rest)
        return sizes

    @property
    def steps_per_epoch(self) -> int:
        return len(self._batch_sizes())

    def train_batch_sizes(self) -> list[int]:
        """The global batch size of every train step of an epoch (the last may be smaller)."""
        return self._batch_sizes()

    def batch_spec(self, size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """The abstract training batch of ``size`` examples (nothing is read)."""
        return batch_spec(self.dataset.train.images.shape[1:], self.dtype, size,
                          self.batch_sharding)

    def _order(self, epoch: int) -> np.ndarray:
        if self.sampler == "balanced":
            return balanced_indices(self.dataset.train.labels, self.dataset.num_classes,
                                    self.seed, epoch)
        return shuffle_indices(self.num_train, self.seed, epoch)

    def epoch_indices(self, epoch: int) -> list[np.ndarray]:
        """The training indices of every step of ``epoch`` (0-indexed), host side."""
        order, out, start = self._order(epoch), [], 0
        for size in self._batch_sizes():
            out.append(order[start:start + size])
            start += size
        return out

    def _epoch_params(self, epoch: int) -> dict[str, np.ndarray]:
        # One draw of shape [steps, batch_size] per epoch; a trimmed last batch (several
        # devices) uses the first rows of its step, so it matches the untrimmed one.
        _, height, width, _ = self.dataset.train.images.shape
        return sample_params_host(_seed_rng(self.seed, 3, epoch),
                                  (max(1, self.steps_per_epoch), self.batch_size),
                                  self.augment, height, width)

    def epoch_params(self, epoch: int, step: int) -> dict[str, np.ndarray]:
        """The augmentation parameters of ``(epoch, step)`` as :meth:`epoch` uses them."""
        size = len(self.epoch_indices(epoch)[step])
        return {k: v[step, :size] for k, v in self._epoch_params(epoch).items()}

    def _put(self, local: np.ndarray, axis: int = 0) -> jax.Array:
        # Single-process: local == global. Multi-process: every process computes the same
        # global array and feeds its own contiguous slice of the batch axis.
        n = local.shape[axis]
        per = n // jax.process_count()
        part = np.take(local, np.arange(per) + jax.process_index() * per, axis=axis)
        spec = P(*([None] * axis + [DATA_AXIS]))
        return jax.make_array_from_process_local_data(NamedSharding(self.mesh, spec), part,
                                                      local.shape)

    def _step_id(self, step: int) -> jax.Array:
        # Device-resident step numbers, made once: a NumPy scalar argument would be a
        # host-to-device copy every step, which can wait for the running train step.
        ids = self._arrays["step_ids"]
        if step >= len(ids):
            ids.extend(jax.device_put(np.arange(len(ids), 2 * step + 2, dtype=np.int32),
                                      NamedSharding(self.mesh, P())))
        return ids[step]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, jax.Array]]:
        """Training batches of ``epoch`` (0-indexed), augmented on the devices.

        ``start`` skips the first steps (resuming mid-epoch): the batches that follow
        are the ones an uninterrupted run sees.

        At the start of the epoch the indices and augmentation parameters of all its
        full batches go to the devices at once (``[steps, B]``, sharded on B); each step
        is then one dispatch of a jitted gather + augment + normalise. The parameters
        are drawn on the host from ``default_rng([seed, 3, epoch])``
        (:func:`sample_params_host`: PIL-exact rotations).
        """
        for _, batch in self.epoch_calls(epoch, start=start):
            yield batch

    def chunk_sharding(self) -> NamedSharding:
        """Sharding of stacked batches ``[k, B, ...]`` (:meth:`epoch_calls`): B on ``'data'``."""
        return chunk_sharding(self.mesh)

    def assemble(self, inputs: dict[str, Any]) -> dict[str, jax.Array]:
        """The batch of a train call's ``inputs`` (:meth:`epoch_inputs`; pure, traceable).

        Inside a jitted train step this fuses the input pipeline into it (one dispatch
        per step). By the inputs' structure: ``{'data', 'plan', 'step'}``: one step of
        the epoch plan (:func:`plan_batch`, ``[B, ...]``); ``{'data', 'plan', 'steps'}``:
        ``k = len(steps)`` consecutive steps stacked (:func:`plan_chunk`, ``[k, B, ...]``);
        ``{'data', 'idx', 'params'}``: the smaller last batch (:func:`train_batch`).
        Batches are constrained to :attr:`batch_sharding` (stacks: :meth:`chunk_sharding`).
        """
        data = inputs["data"]
        if "step" in inputs:
            batch = plan_batch(data, inputs["plan"], inputs["step"], aug=self.augment,
                               dtype=self.dtype)
            sharding = self.batch_sharding
        elif "steps" in inputs:
            steps = inputs["steps"]
            batch = plan_chunk(data, inputs["plan"], steps[0], k=steps.shape[0],
                               aug=self.augment, dtype=self.dtype)
            sharding = self.chunk_sharding()
        else:
            batch = train_batch(data, inputs["idx"], inputs["params"], aug=self.augment,
                                dtype=self.dtype)
            sharding = self.batch_sharding
        # Materialised as its own call makes it: XLA does not fuse the gather into the
        # network's first operations (same arithmetic; the fused gather scheduled badly).
        return jax.lax.optimization_barrier(jax.lax.with_sharding_constraint(batch, sharding))

    def assemble_jit(self, inputs: dict[str, Any]) -> dict[str, jax.Array]:
        """:meth:`assemble` as its own jitted call (ready batches: :meth:`epoch_calls`)."""
        stacked = "steps" in inputs
        fns = self._arrays.setdefault("assemble_jits", {})
        if stacked not in fns:
            fns[stacked] = jax.jit(self.assemble, out_shardings=(
                self.chunk_sharding() if stacked else self.batch_sharding))
        return fns[stacked](inputs)

    def _steps_ids(self, start: int, k: int) -> jax.Array:
        # Device-resident [k] step numbers of a chunk, made once per (start, k).
        cache = self._arrays.setdefault("chunk_steps", {})
        if (start, k) not in cache:
            cache[start, k] = jax.device_put(np.arange(start, start + k, dtype=np.int32),
                                              NamedSharding(self.mesh, P()))
        return cache[start, k]

    def input_spec(self, size: int, k: int = 1) -> dict[str, Any]:
        """The abstract :meth:`epoch_inputs` of a call of ``k`` stacked full batches
        (``k > 1``), of one step of ``size`` examples (the full batch or the smaller last
        one): ``jax.ShapeDtypeStruct`` with the shardings of the real inputs (nothing is
        read or sent)."""
        k, size = int(k), int(size)
        _, height, width, _ = self.dataset.train.images.shape
        sample = sample_params_host(np.random.default_rng(0), (1, 1), self.augment,
                                    height, width)
        sample.pop("angle")
        repl = NamedSharding(self.mesh, P())
        data = jax.tree.map(_abstract, self.data)
        if k == 1 and size != self.batch_size:       # the smaller last batch
            sh = self.batch_sharding
            return {"data": data,
                    "idx": jax.ShapeDtypeStruct((size,), jnp.int32, sharding=sh),
                    "params": {name: jax.ShapeDtypeStruct((size,) + v.shape[2:], v.dtype,
                                                          sharding=sh)
                               for name, v in sample.items()}}
        if size != self.batch_size:
            raise ValueError(f"stacked steps (k={k}) take full batches of "
                             f"{self.batch_size}, not {size}")
        full = sum(1 for s in self._batch_sizes() if s == self.batch_size)
        sh = self.chunk_sharding()
        plan = {name: jax.ShapeDtypeStruct((full, size) + v.shape[2:], v.dtype, sharding=sh)
                for name, v in sample.items()}
        plan["idx"] = jax.ShapeDtypeStruct((full, size), jnp.int32, sharding=sh)
        if k == 1:
            return {"data": data, "plan": plan,
                    "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=repl)}
        return {"data": data, "plan": plan,
                "steps": jax.ShapeDtypeStruct((k,), jnp.int32, sharding=repl)}

    def epoch_inputs(self, epoch: int, start: int = 0, steps_per_call: int = 1,
                     stop: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
        """The calls of :meth:`epoch_calls` as ``(k, inputs)``, ``inputs`` being what
        :meth:`assemble` turns into the batch, inside the train step: device-resident
        pytrees holding :attr:`data` (by reference: nothing is copied), the epoch plan
        (sent once per epoch) and a device-resident step number (``'step'``), the
        ``[k]`` step numbers of a stacked call (``'steps'``), or the indices and
        augmentation parameters of the smaller last batch (``'idx'``, ``'params'``).
        Same arguments as :meth:`epoch_calls`.
        """
        k = check_steps_per_call(steps_per_call)
        data = self.data
        plan, full, last = self.epoch_plan(epoch)
        end = self.steps_per_epoch if stop is None else min(int(stop), self.steps_per_epoch)
        k = k or full
        s, full_end = start, min(full, end)
        if k > 1:
            while s + k <= full_end:
                yield k, {"data": data, "plan": plan, "steps": self._steps_ids(s, k)}
                s += k
        while s < full_end:
            yield 1, {"data": data, "plan": plan, "step": self._step_id(s)}
            s += 1
        if last is not None and start <= full < end:
            idx, params = last
            yield 1, {"data": data, "idx": idx, "params": params}

    def epoch_calls(self, epoch: int, start: int = 0, steps_per_call: int = 1,
                    stop: int | None = None) -> Iterator[tuple[int, dict[str, jax.Array]]]:
        """The batches of :meth:`epoch`, grouped for a train step scanned over steps.

        Yields ``(k, batch)``. Full batches come ``steps_per_call`` at a time as one
        stacked batch (``k = steps_per_call`` > 1: ``{'image': [k, B, H, W, C], 'label':
        [k, B]}``, sharded on B, made by one jitted :func:`plan_chunk`); the full batches
        left over before the end (or ``stop``), and the smaller last batch, come one at a
        time (``k = 1``, unstacked, as :meth:`epoch` makes them). Concatenated, they are
        :meth:`epoch`'s batches from ``start``, in order. The chunk size never changes
        within a run (one compiled scanned step); a resumed epoch's leftover steps run
        singly. Each batch is one jitted :meth:`assemble` of :meth:`epoch_inputs`'s
        inputs (the trainer fuses that into its train step instead).

        Args:
          epoch: 0-indexed epoch.
          start: first step (resuming mid-epoch).
          steps_per_call: steps per stacked call, >= 1; 0: every full batch of the epoch
            in one call.
          stop: step of the epoch to end before (default: its end; e.g. ``max_steps``).
        """
        for k, inputs in self.epoch_inputs(epoch, start=start, steps_per_call=steps_per_call,
                                           stop=stop):
            yield k, self.assemble_jit(inputs)

    def epoch_plan(self, epoch: int) -> tuple[dict[str, jax.Array], int, Any]:
        """The device-side plan of ``epoch``: what :meth:`epoch` iterates over.

        Returns:
          ``(plan, full_steps, last)``: ``plan`` holds ``[full_steps, B, ...]`` arrays
          (sharded on B) for :func:`plan_batch`; ``last`` is None or ``(idx, params)`` of
          the smaller last batch for :func:`train_batch`.
        """
        sizes = self._batch_sizes()
        order = self._order(epoch)
        params = self._epoch_params(epoch)
        params.pop("angle")
        full = sum(1 for size in sizes if size == self.batch_size)
        plan = {k: self._put(v[:full], axis=1) for k, v in params.items()}
        plan["idx"] = self._put(
            order[:full * self.batch_size].reshape(full, self.batch_size).astype(np.int32),
            axis=1)
        last = None
        if len(sizes) > full:
            size, start = sizes[-1], full * self.batch_size
            last = (self._put(order[start:start + size].astype(np.int32)),
                    {k: self._put(v[full, :size]) for k, v in params.items()})
        return plan, full, last

    @property
    def data(self) -> dict[str, jax.Array]:
        """The device-resident arrays (``train_images``, ``train_labels``, ``mean``, ``std``)."""
        return {k: self._arrays[k] for k in ("train_images", "train_labels", "mean", "std")}

    def step_id(self, step: int) -> jax.Array:
        """A device-resident int32 scalar ``step`` (no host-to-device copy per call)."""
        return self._step_id(step)

    def eval_batches(self, split: str = "test") -> Iterator[dict[str, jax.Array]]:
        """Every example of ``split`` exactly once, in order, in batches of
        ``eval_batch_size`` (the last one padded; ``'mask'`` is False on padding)."""
        if split not in ("test", "train"):
            raise ValueError(f"split={split!r}; valid choices are ('test', 'train')")
        a = self._arrays
        images, labels = a[f"{split}_images"], a[f"{split}_labels"]
        n, bs = images.shape[0], self.eval_batch_size
        steps = -(-n // bs)
        idx = np.arange(steps * bs).reshape(steps, bs)
        mask = idx < n
        plan = {"idx": self._put(np.where(mask, idx, 0).astype(np.int32), axis=1),
                "mask": self._put(mask, axis=1)}
        for step in range(steps):
            yield _eval_batch(images, labels, plan, self._step_id(step), a["mean"], a["std"],
                              dtype=self.dtype)

    def num_eval_batches(self, split: str = "test") -> int:
        n = len(getattr(self.dataset, split))
        return -(-n // self.eval_batch_size)


def make_loader(dataset: ArrayDataset, batch_size: int, *, eval_batch_size: int | None = None,
                mesh: Mesh | None = None, augment: str | Augment = "ride",
                sampler: str = "shuffle", remainder: str = "partial", seed: int = 0,
                dtype: Any = jnp.float32, fuse: bool = False) -> DeviceLoader:
    """Put ``dataset`` on the devices of ``mesh`` and return its :class:`DeviceLoader`.

    Args:
      dataset: an in-memory dataset (a source, or ``load_cache``).
      batch_size: global training batch (divisible by the number of devices).
      eval_batch_size: global evaluation batch (default ``batch_size``).
      mesh: a 1-D mesh with axis ``'data'`` (default: all devices).
      augment: ``'ride'`` (crop 4, flip, rotation 15), ``'ldam'`` (no rotation), ``'none'``
        or an :class:`Augment`.
      sampler: ``'shuffle'`` or ``'balanced'``.
      remainder: ``'partial'`` (official ``drop_last=False``) or ``'drop'``.
      seed: order and augmentation seed.
      dtype: dtype of the normalised images.
      fuse: the trainer's steps make their batches themselves (:class:`DeviceLoader`).
    """
    if not isinstance(dataset, ArrayDataset):
        raise TypeError(f"make_loader needs an in-memory ArrayDataset, got "
                        f"{type(dataset).__name__}; large datasets use ride_jax.data.streaming")
    mesh = data_mesh() if mesh is None else mesh
    if tuple(mesh.axis_names) != (DATA_AXIS,):
        raise ValueError(f"the loader needs a 1-D mesh with axis {DATA_AXIS!r}, got axes "
                         f"{mesh.axis_names}")
    eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
    for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if not isinstance(value, (int, np.integer)) or value < 1 or value % mesh.size:
            raise ValueError(f"{name}={value!r} must be a positive multiple of the "
                             f"{mesh.size} devices")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r}; valid choices are {SAMPLERS}")
    if remainder not in REMAINDERS:
        raise ValueError(f"remainder={remainder!r}; valid choices are {REMAINDERS}")
    if len(dataset.train) < batch_size and remainder == "drop":
        raise ValueError(f"batch_size={batch_size} exceeds the {len(dataset.train)} training "
                         "images and remainder='drop' would leave no step")
    repl = NamedSharding(mesh, P())
    arrays = {
        "train_images": jax.device_put(dataset.train.images, repl),
        "train_labels": jax.device_put(dataset.train.labels, repl),
        "test_images": jax.device_put(dataset.test.images, repl),
        "test_labels": jax.device_put(dataset.test.labels, repl),
        "mean": jax.device_put(np.asarray(dataset.mean, np.float32), repl),
        "std": jax.device_put(np.asarray(dataset.std, np.float32), repl),
        "step_ids": [],
    }
    return DeviceLoader(dataset=dataset, batch_size=int(batch_size),
                        eval_batch_size=int(eval_batch_size), mesh=mesh,
                        augment=get_augment(augment), sampler=sampler, remainder=remainder,
                        seed=int(seed), dtype=dtype, _arrays=arrays, fuse=bool(fuse))


class StreamLoader(ReadyBatches):
    """The loader of a streamed dataset (:class:`~ride_jax.data.streaming.StreamingDataset`,
    tf.data): the same interface as :class:`DeviceLoader` for the trainer.

    Epoch ``e`` is the first ``ceil(N / B)`` batches (the official epoch length) of a
    fresh endless stream seeded with ``(seed, e)``, so epochs are reproducible and a
    run resumes at any step (mid-epoch by reading past the batches already done). The
    dataset's own official transforms augment; one train step per call.
    """

    def __init__(self, dataset, batch_size: int, eval_batch_size: int, mesh: Mesh, seed: int,
                 sampler: str):
        self.dataset, self.mesh, self.seed, self.sampler = dataset, mesh, seed, sampler
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.steps_per_epoch = dataset.steps_per_epoch(batch_size)

    @property
    def batch_sharding(self) -> NamedSharding:
        return batch_sharding(self.mesh)

    def chunk_sharding(self) -> NamedSharding:
        return chunk_sharding(self.mesh)

    def train_batch_sizes(self) -> list[int]:
        """Every step of an epoch takes a full batch (the stream never ends)."""
        return [self.batch_size] * self.steps_per_epoch

    def batch_spec(self, size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """The abstract training batch of ``size`` examples (float32 images)."""
        return batch_spec(self.dataset.image_shape, jnp.float32, size, self.batch_sharding)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, jax.Array]]:
        stream = self.dataset.train_iterator(
            self.batch_size, seed=int(np.random.default_rng([self.seed, 7, epoch])
                                      .integers(2 ** 31)),
            mesh=self.mesh, sampler=self.sampler)
        for step in range(self.steps_per_epoch):
            batch = next(stream)
            if step >= start:
                yield batch

    def epoch_calls(self, epoch: int, start: int = 0, steps_per_call: int = 1,
                    stop: int | None = None) -> Iterator[tuple[int, dict[str, jax.Array]]]:
        """``(1, batch)`` for each step of ``epoch`` from ``start`` (before ``stop``)."""
        if check_steps_per_call(steps_per_call) != 1:
            raise ValueError("a streamed dataset runs one train step per call")
        end = self.steps_per_epoch if stop is None else min(int(stop), self.steps_per_epoch)
        for step, batch in enumerate(self.epoch(epoch, start), start):
            if step >= end:
                return
            yield 1, batch

    def eval_batches(self):
        return self.dataset.eval_iterator(self.eval_batch_size, mesh=self.mesh)


def loader_from_config(dataset, config, mesh: Mesh | None = None, dtype: Any = jnp.float32):
    """The loader of ``dataset`` with ``config.data``'s settings: a :class:`DeviceLoader`
    for an in-memory :class:`ArrayDataset`, a
    :class:`~ride_jax.data.grain_loader.GrainLoader` for image files or records
    (:class:`~ride_jax.data.folder_stream.FileDataset`,
    :class:`~ride_jax.data.records.RecordDataset`), a :class:`StreamLoader` (tf.data)
    otherwise.

    Raises:
      ValueError: settings the loader cannot honour: ``steps_per_call != 1`` or
        ``data.augment`` other than ``'none'`` on a streamed dataset (its own official
        transforms augment it).
    """
    d, mesh = config.data, data_mesh() if mesh is None else mesh
    if isinstance(dataset, ArrayDataset):
        return make_loader(dataset, d.batch_size, eval_batch_size=d.eval_batch_size,
                           mesh=mesh, augment=d.augment, sampler=d.sampler,
                           remainder=d.remainder, seed=config.seed, dtype=dtype,
                           fuse=d.get("fuse_input", False))
    name = dataset.describe().get("name", type(dataset).__name__)
    steps_per_call = check_steps_per_call(config.get("steps_per_call", 1))
    if steps_per_call != 1:
        raise ValueError(f"steps_per_call={steps_per_call}: scanning several train steps "
                         "per call needs an in-memory dataset; streamed datasets "
                         f"({name!r}) take steps_per_call=1")
    if d.augment != "none":
        raise ValueError(f"data.augment={d.augment!r} does not apply to the streamed "
                         f"dataset {name!r}: its input pipeline runs the official "
                         "transforms; set --config.data.augment=none")
    if hasattr(dataset, "grain_train_source"):     # image files or records: grain
        from ride_jax.data.grain_loader import GrainLoader
        return GrainLoader(dataset, d.batch_size, d.eval_batch_size, mesh, config.seed,
                           d.sampler, d.remainder, dtype, d.get("workers", 0))
    return StreamLoader(dataset, d.batch_size, d.eval_batch_size, mesh, config.seed,
                        d.sampler)
