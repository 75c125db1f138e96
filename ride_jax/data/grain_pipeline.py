"""A random-access input pipeline on grain, with exact, resumable epochs (no TensorFlow).

Images are read one by one from a random-access *source* (``len(source)``,
``source[i] -> {'image': uint8 HWC, 'label': int}``; :class:`FileSource` reads image
files and decodes them with PIL) and batched on the host with grain
(``grain.MapDataset``). The order of an epoch is the one of the in-memory loader
(:mod:`ride_jax.data.loader`), a function of ``(seed, epoch)`` only:

* ``sampler='shuffle'``: :func:`~ride_jax.data.loader.shuffle_indices`, a fresh
  permutation every epoch;
* ``sampler='balanced'``: :func:`~ride_jax.data.loader.balanced_indices`, the official
  class-balanced sampler's draws.

An epoch of ``N`` examples in global batches of ``B`` has ``ceil(N / B)`` steps with
``remainder='partial'`` (official ``drop_last=False``; the smaller last batch is trimmed
to a multiple of ``multiple``, e.g. the number of devices, as
``DeviceLoader._batch_sizes`` does) and ``floor(N / B)`` with ``remainder='drop'``.
With ``P`` processes every global batch is cut into ``P`` contiguous equal parts and
process ``p`` reads part ``p`` only.

The training transform of an example gets a NumPy generator seeded with
``(seed, 5, epoch, position)`` (:func:`example_rng`; ``position`` is the example's place
in the epoch's order), so a resumed run draws the same augmentations. Resuming at
``start_step`` slices the epoch's index list: the examples of the skipped steps are
never read. The returned iterators are grain ``DatasetIterator``s:
``get_state()`` / ``set_state()`` checkpoint them.
"""

from __future__ import annotations

import io
import math
import os
import threading
import zipfile
from typing import Any, Callable, Iterator, Sequence

import grain
import numpy as np

from ride_jax.data.loader import REMAINDERS, SAMPLERS, balanced_indices, shuffle_indices

__all__ = [
    "SAMPLERS", "REMAINDERS", "FileSource", "decode_image", "epoch_steps", "epoch_order",
    "example_rng", "local_positions", "make_train_iter", "make_eval_iter",
    "official_train_transform", "official_eval_transform", "reader_options",
]

# The word of the per-example augmentation stream in ``default_rng([seed, 5, epoch,
# position])`` (the loader uses 0 for the shuffle, 1 and 2 for the balanced sampler,
# 3 for its on-device augmentations).
AUGMENT_STREAM = 5
ZIP_SEPARATOR = "::"


def example_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The generator of the training transform of the ``position``-th example of ``epoch``."""
    return np.random.default_rng([int(seed), AUGMENT_STREAM, int(epoch), int(position)])


# ----------------------------------------------------------------------------- sources

def decode_image(data: bytes):
    """Encoded image bytes -> an RGB ``PIL.Image`` (loaded)."""
    from PIL import Image
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.convert("RGB")


class FileSource:
    """Image files as a grain random-access data source (``__len__``, ``__getitem__``).

    ``source[i]`` is ``{'image': uint8 [H, W, C], 'label': int}``: the decoded image
    through ``transform_eval`` (or as decoded when it is None). Training reads
    :meth:`train_item` instead, which passes the decoded image and a generator to
    ``transform_train``.

    Args:
      paths: one path per example: a plain file, or ``'archive.zip::member'`` for a
        member of a zip archive.
      labels: ``[N]`` integer labels.
      transform_train: ``transform_train(image: PIL.Image, rng: np.random.Generator) ->
        uint8 [h, w, c]`` (e.g. :func:`official_train_transform`); None: the decoded
        image unchanged (every image must then have the same size to be batched).
      transform_eval: ``transform_eval(image: PIL.Image) -> uint8 [h, w, c]`` (e.g.
        :func:`official_eval_transform`); None: the decoded image unchanged.
      decode: ``decode(data: bytes) -> PIL.Image`` (default :func:`decode_image`).

    Everything here must pickle (cloudpickle) for ``worker_count > 0``: the transforms
    travel to the worker processes. Open zip archives are kept per process.
    """

    def __init__(self, paths: Sequence[str], labels: Any,
                 transform_train: Callable[[Any, np.random.Generator], np.ndarray] | None = None,
                 transform_eval: Callable[[Any], np.ndarray] | None = None, *,
                 decode: Callable[[bytes], Any] | None = None):
        self.paths = [os.fspath(p) for p in paths]
        self.labels = np.asarray(labels, np.int64).reshape(-1)
        if len(self.labels) != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")
        self.transform_train = transform_train
        self.transform_eval = transform_eval
        self.decode = decode_image if decode is None else decode
        self._zips: dict = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_zips"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"FileSource({len(self)} files)"

    def _zip(self, archive: str) -> zipfile.ZipFile:
        key = (os.getpid(), archive)
        with self._lock:
            zf = self._zips.get(key)
            if zf is None:
                zf = self._zips[key] = zipfile.ZipFile(archive)
            return zf

    def read(self, index: int) -> bytes:
        """The encoded bytes of example ``index``."""
        path = self.paths[index]
        if ZIP_SEPARATOR in path:
            archive, member = path.split(ZIP_SEPARATOR, 1)
            return self._zip(archive).read(member)
        with open(path, "rb") as f:
            return f.read()

    def image(self, index: int):
        """Example ``index`` decoded (a ``PIL.Image``)."""
        return self.decode(self.read(index))

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        img = self.image(index)
        pixels = np.asarray(img if self.transform_eval is None else self.transform_eval(img))
        return {"image": pixels.astype(np.uint8, copy=False), "label": int(self.labels[index])}

    def train_item(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """Example ``index`` through ``transform_train`` with generator ``rng``."""
        index = int(index)
        img = self.image(index)
        pixels = np.asarray(img if self.transform_train is None
                            else self.transform_train(img, rng))
        return {"image": pixels.astype(np.uint8, copy=False), "label": int(self.labels[index])}


# ------------------------------------------------------------------ official transforms

class _OfficialTrain:
    """Picklable ``(image, rng) -> uint8`` running :mod:`ride_jax.data.pil_transforms`."""

    def __init__(self, size: int, color_jitter: bool):
        self.size, self.color_jitter = int(size), bool(color_jitter)

    def __call__(self, image, rng: np.random.Generator) -> np.ndarray:
        from ride_jax.data import pil_transforms as pt
        if isinstance(image, (bytes, bytearray)):
            image = pt.decode(bytes(image))
        params = pt.sample_train_params(rng, image.height, image.width,
                                        color_jitter=self.color_jitter)
        return pt.train_transform(image, params, size=self.size)


class _OfficialEval:
    """Picklable ``image -> uint8`` running :mod:`ride_jax.data.pil_transforms`."""

    def __init__(self, size: int, resize: int):
        self.size, self.resize = int(size), int(resize)

    def __call__(self, image) -> np.ndarray:
        from ride_jax.data import pil_transforms as pt
        if isinstance(image, (bytes, bytearray)):
            image = pt.decode(bytes(image))
        return pt.eval_transform(image, size=self.size, resize=self.resize)


def official_train_transform(size: int = 224, color_jitter: bool = True):
    """The official training transform (RandomResizedCrop, flip, optional colour
    jitter; torchvision-exact, :mod:`ride_jax.data.pil_transforms`) as a
    ``transform_train`` for :class:`FileSource`."""
    import ride_jax.data.pil_transforms  # noqa: F401  (fail here, not in a worker)
    return _OfficialTrain(size, color_jitter)


def official_eval_transform(size: int = 224, resize: int = 256):
    """The official evaluation transform (resize ``resize``, centre crop ``size``) as a
    ``transform_eval`` for :class:`FileSource`."""
    import ride_jax.data.pil_transforms  # noqa: F401
    return _OfficialEval(size, resize)


# ------------------------------------------------------------------------- epoch plans

def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < minimum:
        raise ValueError(f"{name}={value!r}: expected an int >= {minimum}")
    return int(value)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name}={value!r}; valid choices are {choices}")
    return value


def epoch_steps(num_examples: int, batch_size: int, remainder: str = "partial",
                multiple: int = 1) -> list[int]:
    """The global batch size of every step of an epoch.

    ``remainder='partial'``: ``ceil(N / B)`` steps, the last one smaller, trimmed to a
    multiple of ``multiple`` (dropped when that leaves nothing); ``'drop'``:
    ``floor(N / B)`` full steps.
    """
    num_examples = _check_int("num_examples", num_examples, 0)
    batch_size = _check_int("batch_size", batch_size, 1)
    multiple = _check_int("multiple", multiple, 1)
    _check_choice("remainder", remainder, REMAINDERS)
    full, rest = divmod(num_examples, batch_size)
    sizes = [batch_size] * full
    rest -= rest % multiple
    if remainder == "partial" and rest:
        sizes.append(rest)
    return sizes


def epoch_order(num_examples: int, *, seed: int, epoch: int, sampler: str = "shuffle",
                labels: Any = None, num_classes: int | None = None) -> np.ndarray:
    """``[N]`` int64 example indices of ``epoch`` in order (the in-memory loader's)."""
    _check_choice("sampler", sampler, SAMPLERS)
    if sampler == "balanced":
        if labels is None or num_classes is None:
            raise ValueError("sampler='balanced' needs labels and num_classes")
        if len(labels) != num_examples:
            raise ValueError(f"{len(labels)} labels for a source of {num_examples} examples")
        return np.asarray(balanced_indices(labels, int(num_classes), seed, epoch), np.int64)
    return np.asarray(shuffle_indices(num_examples, seed, epoch), np.int64)


def _check_processes(batch_size: int, process_index: int, process_count: int) -> None:
    process_count = _check_int("process_count", process_count, 1)
    process_index = _check_int("process_index", process_index, 0)
    if process_index >= process_count:
        raise ValueError(f"process_index={process_index}; valid choices are "
                         f"0..{process_count - 1} (process_count={process_count})")
    if batch_size % process_count:
        raise ValueError(f"batch_size={batch_size} is not divisible by "
                         f"process_count={process_count}; it must be a multiple of it")


def local_positions(sizes: Sequence[int], process_index: int = 0,
                    process_count: int = 1) -> list[np.ndarray]:
    """Per step, the epoch positions process ``process_index`` reads: part
    ``process_index`` of ``process_count`` contiguous equal parts of the step's batch."""
    out, start = [], 0
    for size in sizes:
        if size % process_count:
            raise ValueError(f"a batch of {size} does not split over "
                             f"process_count={process_count}")
        per = size // process_count
        lo = start + process_index * per
        out.append(np.arange(lo, lo + per, dtype=np.int64))
        start += size
    return out


class _TrainLoad:
    """grain map: epoch position -> the transformed example (picklable)."""

    def __init__(self, source, order: np.ndarray, seed: int, epoch: int):
        self.source, self.order, self.seed, self.epoch = source, order, seed, epoch

    def __call__(self, position) -> dict[str, Any]:
        position = int(position)
        index = int(self.order[position])
        train_item = getattr(self.source, "train_item", None)
        if train_item is None:
            item = self.source[index]
        else:
            item = train_item(index, example_rng(self.seed, self.epoch, position))
        return {"image": np.asarray(item["image"], np.uint8),
                "label": np.int32(item["label"]), "index": np.int64(index)}


class _EvalLoad:
    """grain map: test position -> the example, or a zero padding example (picklable)."""

    def __init__(self, source):
        self.source, self.num = source, len(source)
        self._shape = None

    def __getstate__(self):
        return {"source": self.source, "num": self.num, "_shape": self._shape}

    def __call__(self, position) -> dict[str, Any]:
        position = int(position)
        if position < self.num:
            item = self.source[position]
            image = np.asarray(item["image"], np.uint8)
            self._shape = image.shape
            return {"image": image, "label": np.int32(item["label"]),
                    "index": np.int64(position), "mask": np.bool_(True)}
        if self._shape is None:          # a worker holding only padding: read one shape
            self._shape = np.asarray(self.source[0]["image"]).shape
        return {"image": np.zeros(self._shape, np.uint8), "label": np.int32(0),
                "index": np.int64(-1), "mask": np.bool_(False)}


def reader_options(worker_count: int = 0, cores: int | None = None) -> grain.ReadOptions:
    """Reader threads for ``worker_count`` grain workers on ``cores`` cores (default: this
    machine's): one thread per core in this process without workers, else the cores
    shared out among the workers (at least one each), at most grain's default 16.

    PIL holds the GIL for part of each image, so more threads than cores in one process
    only contend (BENCHMARKS.md, "grain reader threads"); with workers, each worker is
    its own process and the parallelism is theirs, as in a torch ``DataLoader``.
    """
    cores = int(cores or os.cpu_count() or 1)
    threads = cores if worker_count <= 0 else cores // worker_count
    return grain.ReadOptions(num_threads=max(1, min(16, threads)))


def _to_iter(ds: grain.MapDataset, read_options, worker_count: int):
    worker_count = _check_int("worker_count", worker_count, 0)
    it_ds = ds.to_iter_dataset(read_options)
    if worker_count > 0:
        # grain 0.2.18 reads an absl flag in mp_prefetch (google/grain#1355, fixed
        # upstream by #1362): outside an absl app, take the flags' defaults.
        from absl import flags
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        # Each worker reads every worker_count-th batch; grain interleaves them back in
        # order, so the batches do not depend on worker_count.
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(it_ds)


def make_train_iter(source, *, batch_size: int, seed: int, epoch: int,
                    sampler: str = "shuffle", labels: Any = None, num_classes: int | None = None,
                    remainder: str = "partial", process_index: int = 0, process_count: int = 1,
                    multiple: int = 1, start_step: int = 0, worker_count: int = 0,
                    read_options: grain.ReadOptions | None = None) -> Iterator[dict[str, np.ndarray]]:
    """This process's training batches of ``epoch`` (0-indexed) from step ``start_step``.

    Args:
      source: random access (``len``, ``source[i]``); when it has ``train_item(i, rng)``
        (:class:`FileSource`) that is read, with :func:`example_rng` of the example's
        epoch position.
      batch_size: the global batch (a multiple of ``process_count`` and ``multiple``).
      seed: the order and augmentation seed.
      epoch: the epoch (0-indexed).
      sampler: ``'shuffle'`` or ``'balanced'``.
      labels: ``[N]`` labels for the balanced sampler (default ``source.labels``).
      num_classes: C, for the balanced sampler.
      remainder: ``'partial'`` or ``'drop'``.
      process_index: this process (``jax.process_index()``).
      process_count: the processes (``jax.process_count()``).
      multiple: a smaller last global batch is trimmed to a multiple of
        ``lcm(multiple, process_count)`` (pass ``process_count * local_devices``).
      start_step: first step (resuming mid-epoch); the skipped steps are never read.
      worker_count: grain worker processes (``mp_prefetch``); 0 reads in this process
        (grain's reader threads).
      read_options: ``grain.ReadOptions`` of the reader threads (default grain's).

    Returns:
      A grain ``DatasetIterator`` of ``{'image': uint8 [b, H, W, C], 'label': int32 [b],
      'index': int64 [b]}`` (``b = global / process_count``; ``index``: the position in
      the source); ``get_state()`` / ``set_state()`` checkpoint it. Close it
      (``it.close()``) when ``worker_count > 0``.
    """
    _check_choice("sampler", sampler, SAMPLERS)
    _check_choice("remainder", remainder, REMAINDERS)
    batch_size = _check_int("batch_size", batch_size, 1)
    multiple = _check_int("multiple", multiple, 1)
    _check_processes(batch_size, process_index, process_count)
    if batch_size % multiple:
        raise ValueError(f"batch_size={batch_size} is not divisible by multiple={multiple}; "
                         "it must be a multiple of it")
    n = len(source)
    sizes = epoch_steps(n, batch_size, remainder, math.lcm(multiple, int(process_count)))
    if not sizes and n:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} examples and "
                         f"remainder={remainder!r} leaves no step")
    start_step = _check_int("start_step", start_step, 0)
    if start_step > len(sizes):
        raise ValueError(f"start_step={start_step}; valid choices are 0..{len(sizes)} "
                         f"(the epoch has {len(sizes)} steps)")
    if sampler == "balanced" and labels is None:
        labels = getattr(source, "labels", None)
    order = epoch_order(n, seed=seed, epoch=epoch, sampler=sampler, labels=labels,
                        num_classes=num_classes)
    parts = local_positions(sizes[start_step:], process_index, process_count)
    # Positions continue from the skipped steps: slice the epoch, never read it.
    offset = sum(sizes[:start_step])
    positions = (np.concatenate(parts) + offset) if parts else np.zeros(0, np.int64)
    local = batch_size // int(process_count)
    # Full local batches, then at most one smaller last one: batching the concatenated
    # parts by the local batch size gives exactly the steps' parts.
    ds = (grain.MapDataset.source(positions)
          .map(_TrainLoad(source, order, int(seed), int(epoch)))
          .batch(local, drop_remainder=False))
    return _to_iter(ds, read_options, worker_count)


def make_eval_iter(source, *, batch_size: int, process_index: int = 0, process_count: int = 1,
                   worker_count: int = 0,
                   read_options: grain.ReadOptions | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Every example of ``source`` exactly once, in order: this process's part.

    Global batches of ``batch_size`` (the last one padded), each cut into
    ``process_count`` contiguous parts; over all processes every example is in exactly
    one unmasked row.

    Returns:
      A grain ``DatasetIterator`` of ``{'image': uint8 [b, H, W, C], 'label': int32 [b],
      'index': int64 [b], 'mask': bool [b]}`` (``b = batch_size / process_count``;
      padding rows: ``mask`` False, zero image, label 0, index -1).
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    _check_processes(batch_size, process_index, process_count)
    n = len(source)
    steps = -(-n // batch_size)
    parts = local_positions([batch_size] * steps, process_index, process_count)
    positions = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    ds = (grain.MapDataset.source(positions).map(_EvalLoad(source))
          .batch(batch_size // int(process_count), drop_remainder=False))
    return _to_iter(ds, read_options, worker_count)
