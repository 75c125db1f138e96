"""Streaming datasets (ImageNet-LT, iNat 2018, Places-LT): tf.data with the official transforms.

A :class:`StreamingDataset` describes a long-tailed dataset too large for host memory:
where each split's examples come from (a tfds split, optionally filtered by a list of
file keys, or a list of image files under a folder), the per-class training counts
(from the actual labels) and the normalisation constants. Its iterators yield global
``jax.Array`` batches sharded ``NamedSharding(mesh, P('data'))``:

* train: ``{'image': float32 [B, 224, 224, 3] normalised NHWC, 'label': int32 [B]}``,
  an endless stream (``drop_remainder``), deterministic given the seed, drawn by one
  of two samplers (as the in-memory loader, :mod:`ride_jax.data.loader`):

  - ``'shuffle'``: every example once per epoch, reshuffled every epoch (file order
    shuffled, then a shuffle buffer);
  - ``'balanced'``: the official class-balanced sampler (RIDE data_loader/cifar_data_loaders.py, RIDE's
    router stage). Epoch e (0-indexed) is made of exactly the draws
    ``balanced_indices(labels, C, seed, e)`` (examples named by their position in the
    split's file order), the epoch length is the number of training examples, and
    epochs follow each other endlessly. A :class:`FileListSplit` yields the draws in
    the drawn order (the official sequence, per process: draws p, p + P, ...). A
    :class:`TfdsSplit` cannot seek, so it reads the split in file order and emits
    example i ``k_i`` times (``k_i``: its draws in the epoch), then shuffles within
    the epoch with a buffer: the per-epoch multiset is exact, the order only
    approximately random (repeats of one example can sit close together), unlike the
    official exact order;
* eval: the same plus ``'mask': bool [B]``; every example exactly once, the last batch
  padded with ``mask=False`` rows.

tf.data ships uint8 images; normalisation ``(x / 255 - mean) / std`` runs on the device
(jitted).

Official transforms (RIDE data_loader/imagenet_lt_data_loaders.py,
data_loader/inaturalist_data_loaders.py), torchvision semantics on PIL images:

* train: RandomResizedCrop(224) (scale (0.08, 1), ratio (3/4, 4/3), 10 attempts then
  the centre-crop fallback, bilinear) -> RandomHorizontalFlip(0.5) ->
  [ColorJitter(0.4, 0.4, 0.4, 0): factors U[0.6, 1.4], random order] -> Normalize;
* eval: Resize(256) on the shorter side -> CenterCrop(224) -> Normalize.

Resizing uses ``tf.image.resize(..., 'bilinear', antialias=True)`` (PIL's bilinear
filter also widens its support when downsampling); pixels are close to PIL's, not
bit-identical. JPEGs are decoded with the accurate integer DCT, as libjpeg in PIL.

TensorFlow is imported at module level: this module is only imported for the streaming
names (``ride_jax.data`` itself does not import it). GPUs are hidden from TF.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np
import tensorflow as tf
from jax.sharding import NamedSharding, PartitionSpec as P

from ride_jax.data.augment import normalize
from ride_jax.data.base import StreamedImages
from ride_jax.data.loader import DATA_AXIS, SAMPLERS, balanced_indices, data_mesh

tf.config.set_visible_devices([], "GPU")

IMAGE_SIZE = 224
RESIZE_SIZE = 256
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
JITTER = 0.4

AUTOTUNE = tf.data.AUTOTUNE


# --------------------------------------------------------------------------- transforms


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """Encoded bytes (JPEG, PNG, ...) -> ``[H, W, 3]`` uint8 (PIL ``.convert('RGB')``)."""
    return tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))


def random_resized_crop_box(seed: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
                            scale: Sequence[float] = CROP_SCALE,
                            ratio: Sequence[float] = CROP_RATIO,
                            attempts: int = 10) -> tf.Tensor:
    """torchvision ``RandomResizedCrop.get_params``: the crop box of one image.

    Up to ``attempts`` draws of (area fraction ~ U[scale], log aspect ~ U[log ratio]);
    the first that fits is used, with its top-left corner uniform over the valid
    positions. If none fits: the centre crop of the whole image clamped to ``ratio``.

    Args:
      seed: ``[2]`` int stateless seed.
      height, width: scalar image size.

    Returns:
      ``[4]`` int32 ``(top, left, crop_height, crop_width)``.
    """
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    s_area, s_ratio, s_pos = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=3))
    area = h * w
    target = area * tf.random.stateless_uniform([attempts], s_area, scale[0], scale[1])
    log_r = tf.random.stateless_uniform([attempts], s_ratio, math.log(ratio[0]),
                                        math.log(ratio[1]))
    aspect = tf.exp(log_r)
    cw = tf.round(tf.sqrt(target * aspect))  # round half to even, as Python's round()
    ch = tf.round(tf.sqrt(target / aspect))
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    u = tf.random.stateless_uniform([2], s_pos)
    ch_ok, cw_ok = ch[first], cw[first]
    top_ok = tf.floor(u[0] * (h - ch_ok + 1.0))
    left_ok = tf.floor(u[1] * (w - cw_ok + 1.0))
    # Fallback: whole image, clamped to the aspect range, centred.
    in_ratio = w / h
    fb_w = tf.where(in_ratio < ratio[0], w,
                    tf.where(in_ratio > ratio[1], tf.round(h * ratio[1]), w))
    fb_h = tf.where(in_ratio < ratio[0], tf.round(w / ratio[0]), h)
    fb_top = tf.floor((h - fb_h) / 2.0)
    fb_left = tf.floor((w - fb_w) / 2.0)
    ok = tf.reduce_any(fits)
    box = tf.where(ok, tf.stack([top_ok, left_ok, ch_ok, cw_ok]),
                   tf.stack([fb_top, fb_left, fb_h, fb_w]))
    return tf.cast(box, tf.int32)


def _resize_uint8(image: tf.Tensor, size: Sequence[int] | tf.Tensor) -> tf.Tensor:
    out = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear",
                          antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def random_resized_crop(image: tf.Tensor, seed: tf.Tensor, size: int = IMAGE_SIZE) -> tf.Tensor:
    """``[H, W, 3]`` uint8 -> ``[size, size, 3]`` uint8 (RandomResizedCrop, bilinear)."""
    shape = tf.shape(image)
    box = random_resized_crop_box(seed, shape[0], shape[1])
    crop = tf.image.crop_to_bounding_box(image, box[0], box[1], box[2], box[3])
    return _resize_uint8(crop, [size, size])


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Horizontal flip with probability 0.5. ``[H, W, C]`` -> ``[H, W, C]``."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    return tf.cond(flip, lambda: image[:, ::-1, :], lambda: image)


def _grey(x: tf.Tensor) -> tf.Tensor:
    # PIL convert('L'): L = R * 299/1000 + G * 587/1000 + B * 114/1000, rounded.
    g = x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114
    return tf.round(g)[..., None]


def _blend(degenerate: tf.Tensor, x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    # PIL ImageEnhance: blend(degenerate, image, factor), back to 8 bits.
    return tf.clip_by_value(tf.round(degenerate + factor * (x - degenerate)), 0.0, 255.0)


def adjust_brightness(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """``[H, W, 3]`` float in 0..255: blend with black."""
    return _blend(tf.zeros_like(x), x, factor)


def adjust_contrast(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """``[H, W, 3]`` float in 0..255: blend with the mean grey level (PIL: int(mean + 0.5))."""
    mean = tf.floor(tf.reduce_mean(_grey(x)) + 0.5)
    return _blend(tf.fill(tf.shape(x), mean), x, factor)


def adjust_saturation(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """``[H, W, 3]`` float in 0..255: blend with the grey image."""
    return _blend(tf.broadcast_to(_grey(x), tf.shape(x)), x, factor)


def color_jitter(image: tf.Tensor, seed: tf.Tensor, strength: float = JITTER) -> tf.Tensor:
    """ColorJitter(brightness=s, contrast=s, saturation=s, hue=0) on ``[H, W, 3]`` uint8.

    Factors ~ U[1 - s, 1 + s], the three ops in a random order (torchvision).
    """
    s_perm, s_fac = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    order = tf.argsort(tf.random.stateless_uniform([3], s_perm))
    factors = tf.random.stateless_uniform([3], s_fac, 1.0 - strength, 1.0 + strength)
    return apply_color_ops(image, order, factors)


def apply_color_ops(image: tf.Tensor, order: tf.Tensor, factors: tf.Tensor) -> tf.Tensor:
    """Brightness (0), contrast (1), saturation (2) with ``factors[op]``, in ``order``.

    Args:
      image: ``[H, W, 3]`` uint8.
      order: ``[3]`` int permutation of (0, 1, 2).
      factors: ``[3]`` float (brightness, contrast, saturation) factors.

    Returns:
      ``[H, W, 3]`` uint8.
    """
    x = tf.cast(image, tf.float32)
    ops = (adjust_brightness, adjust_contrast, adjust_saturation)
    for k in range(3):
        op = order[k]
        x = tf.switch_case(op, [lambda f=f: f(x, factors[op]) for f in ops])
    return tf.cast(x, tf.uint8)


def resize_shorter(image: tf.Tensor, size: int = RESIZE_SIZE) -> tf.Tensor:
    """torchvision ``Resize(size)``: shorter side -> size, longer ``int(size * long / short)``."""
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    short = tf.minimum(h, w)
    long_ = tf.maximum(h, w)
    new_long = (size * long_) // short  # int() truncation
    new_h = tf.where(h <= w, size, new_long)
    new_w = tf.where(h <= w, new_long, size)
    return _resize_uint8(image, tf.stack([new_h, new_w]))


def center_crop(image: tf.Tensor, size: int = IMAGE_SIZE) -> tf.Tensor:
    """torchvision ``CenterCrop(size)``: top = round((H - size) / 2) (half to even)."""
    shape = tf.shape(image)
    top = tf.cast(tf.round(tf.cast(shape[0] - size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(shape[1] - size, tf.float32) / 2.0), tf.int32)
    return tf.image.crop_to_bounding_box(image, top, left, size, size)


def train_transform(image: tf.Tensor, seed: tf.Tensor, size: int = IMAGE_SIZE,
                    jitter: bool = True) -> tf.Tensor:
    """Decoded ``[H, W, 3]`` uint8 -> ``[size, size, 3]`` uint8 (crop, flip, [jitter])."""
    s_crop, s_flip, s_jit = tf.unstack(tf.random.experimental.stateless_split(seed, num=3))
    image = random_resized_crop(image, s_crop, size)
    image = random_flip(image, s_flip)
    if jitter:
        image = color_jitter(image, s_jit)
    return tf.ensure_shape(image, [size, size, 3])


def eval_transform(image: tf.Tensor, size: int = IMAGE_SIZE,
                   resize: int = RESIZE_SIZE) -> tf.Tensor:
    """Decoded ``[H, W, 3]`` uint8 -> ``[size, size, 3]`` uint8 (Resize, CenterCrop)."""
    return tf.ensure_shape(center_crop(resize_shorter(image, resize), size), [size, size, 3])


# --------------------------------------------------------------------------- sources


def _image_and_label(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    out = {"label": tf.cast(ex["label"], tf.int32)}
    if "image" in ex:
        out["image"] = ex["image"]
    return out


@dataclasses.dataclass(frozen=True)
class TfdsSplit:
    """The examples of one tfds split, optionally only those named in a list.

    Attributes:
      builder: a ``tfds`` builder (``tfds.builder(name, data_dir=...)``).
      split: tfds split name.
      key_feature: feature identifying an example (``'id'``, ``'filename'``); with
        ``keys`` only.
      key_fn: tf function mapping the feature's value to a list key.
      keys, labels: ``[M]`` list keys and their labels; when given, only those
        examples are read and their label is the list's.
      num_examples: examples of the (filtered) split.
    """
    builder: Any
    split: str
    num_examples: int
    key_feature: str | None = None
    key_fn: Callable[[tf.Tensor], tf.Tensor] | None = None
    keys: tuple[str, ...] | None = None
    labels: np.ndarray | None = None

    def read(self, *, shuffle_files: bool, seed: int | None, process_index: int,
             process_count: int, train: bool, decoders: Any = None) -> tf.data.Dataset:
        """``{'image': tf.string encoded, 'label': int32}`` examples of this process."""
        import tensorflow_datasets as tfds

        split = self.split
        if train and process_count > 1:
            split = tfds.even_splits(split, n=process_count)[process_index]
        read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False,
                                      add_tfds_id=False)
        if decoders is None:
            decoders = {"image": tfds.decode.SkipDecoding()}
        ds = self.builder.as_dataset(split=split, shuffle_files=shuffle_files,
                                     decoders=decoders, read_config=read_config)
        if self.keys is not None:
            table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(self.keys), tf.constant(self.labels, tf.int64)),
                default_value=-1)
            key_fn = self.key_fn or (lambda k: k)
            feat = self.key_feature

            def relabel(ex):
                return dict(ex, label=table.lookup(key_fn(ex[feat])))

            ds = ds.map(relabel).filter(lambda ex: ex["label"] >= 0)
        ds = ds.map(_image_and_label)
        if not train and process_count > 1:
            ds = ds.shard(process_count, process_index)
        return ds

    def read_balanced(self, epoch_draws: Callable[[int], np.ndarray], num_examples: int, *,
                      seed: int, process_index: int, process_count: int,
                      shuffle_buffer: int, labels: np.ndarray | None = None
                      ) -> tf.data.Dataset:
        """Endless class-balanced ``{'image': tf.string encoded, 'label': int32}`` stream.

        Epoch e emits every example i of the split, read in file order (as
        :meth:`scan_labels` reads it), ``k_i`` times, ``k_i`` = the occurrences of i in
        ``epoch_draws(e)``; the repeated stream is split between processes (element
        j to process ``j % process_count``) and shuffled within the epoch with a
        ``shuffle_buffer`` seeded by (seed, e). The multiset of an epoch (over all
        processes) is exactly the draws'; the order is the buffer's, not the draws'.
        Every process reads the whole split (only its share is decoded downstream).

        Args:
          epoch_draws: epoch -> ``[num_examples]`` int indices into the file order.
          num_examples: examples of the (filtered) split.
          labels: ``[num_examples]`` file-order labels; when given, each example's
            label is checked against them (a mismatch: the file order changed).
        """
        base = self.read(shuffle_files=False, seed=None, process_index=0, process_count=1,
                         train=False).enumerate()
        if labels is not None:
            table = tf.constant(np.asarray(labels), tf.int32)

            def check(i, ex):
                ok = tf.debugging.assert_equal(
                    tf.gather(table, i), ex["label"],
                    message="the split's labels differ from the ones the balanced sampler "
                            "drew from (file order changed?)")
                with tf.control_dependencies([ok]):
                    return i, dict(ex, label=tf.identity(ex["label"]))

            base = base.map(check)

        def plan(e):
            e = int(e)
            counts = np.bincount(np.asarray(epoch_draws(e)), minlength=num_examples)
            if len(counts) != num_examples:
                raise ValueError(f"draws outside the {num_examples} examples")
            shuffle_seed = np.random.default_rng([int(seed), 3, e]).integers(2 ** 62)
            return counts.astype(np.int64), np.int64(shuffle_seed)

        def epoch(counts, shuffle_seed):
            ds = base.filter(lambda i, ex: tf.gather(counts, i) > 0)
            ds = ds.flat_map(lambda i, ex: tf.data.Dataset.from_tensors(ex).repeat(
                tf.gather(counts, i)))
            if process_count > 1:
                ds = ds.shard(process_count, process_index)
            if shuffle_buffer > 1:  # encoded bytes: decoding comes after
                ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed)
            return ds

        return _epoch_plans(plan, [tf.int64, tf.int64], [[num_examples], []]).flat_map(epoch)

    def scan_labels(self) -> np.ndarray:
        """``[N]`` int64 labels of the (filtered) split, reading no image."""
        import tensorflow_datasets as tfds

        feats = {"label": True}
        if self.key_feature:
            feats[self.key_feature] = True
        decoders = tfds.decode.PartialDecoding(feats)
        ds = self.read(shuffle_files=False, seed=None, process_index=0, process_count=1,
                       train=False, decoders=decoders)
        options = tf.data.Options()
        options.experimental_optimization.apply_default_optimizations = False
        ds = ds.map(lambda ex: ex["label"]).batch(65536).with_options(options)
        out = [np.asarray(b) for b in ds.as_numpy_iterator()]
        return (np.concatenate(out) if out else np.zeros([0], np.int32)).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class FileListSplit:
    """Image files ``root/<path>`` with labels, from a list such as ``Places_LT_train.txt``.

    Attributes:
      root: folder the list's paths are relative to.
      paths: ``[N]`` relative paths.
      labels: ``[N]`` int labels.
    """
    root: str
    paths: tuple[str, ...]
    labels: np.ndarray

    @property
    def num_examples(self) -> int:
        return len(self.paths)

    def read(self, *, shuffle_files: bool, seed: int | None, process_index: int,
             process_count: int, train: bool) -> tf.data.Dataset:
        files = [self.root.rstrip("/") + "/" + p for p in self.paths]
        ds = tf.data.Dataset.from_tensor_slices(
            {"image": tf.constant(files), "label": tf.constant(self.labels, tf.int32)})
        if process_count > 1:
            ds = ds.shard(process_count, process_index)
        if shuffle_files:
            ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        return ds.map(lambda ex: dict(ex, image=tf.io.read_file(ex["image"])),
                      num_parallel_calls=AUTOTUNE)

    def read_balanced(self, epoch_draws: Callable[[int], np.ndarray], num_examples: int, *,
                      seed: int, process_index: int, process_count: int,
                      shuffle_buffer: int, labels: np.ndarray | None = None
                      ) -> tf.data.Dataset:
        """Endless class-balanced ``{'image': tf.string encoded, 'label': int32}`` stream.

        Epoch e reads the files of ``epoch_draws(e)`` in the drawn order (the official
        sequence); process p gets draws p, p + P, ... No shuffle buffer
        (``shuffle_buffer`` and ``seed`` are unused: the draws are already random).
        """
        del seed, shuffle_buffer, labels
        files = tf.constant([self.root.rstrip("/") + "/" + p for p in self.paths])
        label_table = tf.constant(np.asarray(self.labels), tf.int32)

        def plan(e):
            draws = np.asarray(epoch_draws(int(e)), np.int64)
            if len(draws) != num_examples:
                raise ValueError(f"{len(draws)} draws for an epoch of {num_examples}")
            return draws

        def epoch(draws):
            ds = tf.data.Dataset.from_tensor_slices(draws)
            if process_count > 1:
                ds = ds.shard(process_count, process_index)
            return ds

        def load(i):
            return {"image": tf.io.read_file(tf.gather(files, i)),
                    "label": tf.gather(label_table, i)}

        ds = _epoch_plans(plan, [tf.int64], [[num_examples]]).flat_map(epoch)
        return ds.map(load, num_parallel_calls=AUTOTUNE)


def _epoch_plans(plan: Callable[[int], Any], dtypes: Sequence[tf.DType],
                 shapes: Sequence[Sequence[int]]) -> tf.data.Dataset:
    """Endless ``plan(0), plan(1), ...`` (NumPy, computed one epoch ahead)."""
    def call(e):
        out = tf.numpy_function(plan, [e], list(dtypes), stateful=True)  # one at a time
        out = [tf.ensure_shape(o, shape) for o, shape in zip(out, shapes)]
        return tuple(out) if len(out) > 1 else out[0]

    return tf.data.Dataset.range(2 ** 62).map(call).prefetch(1)


# --------------------------------------------------------------------------- dataset


def _local_batch(global_batch: int, process_count: int) -> int:
    if not isinstance(global_batch, (int, np.integer)) or global_batch < 1:
        raise ValueError(f"global_batch must be a positive integer, got {global_batch!r}")
    if global_batch % process_count:
        raise ValueError(f"global_batch={global_batch} is not divisible by the "
                         f"{process_count} processes")
    local = global_batch // process_count
    if local % jax.local_device_count():
        raise ValueError(f"the per-process batch {local} (global_batch={global_batch}) is not "
                         f"divisible by the {jax.local_device_count()} local devices")
    return local


def _shard_count(n: int, index: int, count: int) -> int:
    """Examples ``ds.shard(count, index)`` keeps out of ``n``."""
    return len(range(index, n, count))


@dataclasses.dataclass(frozen=True)
class StreamingDataset(StreamedImages):
    """A long-tailed dataset read with tf.data.

    Attributes:
      name: registry name (``'imagenet_lt'``).
      num_classes: C.
      class_names: C names, label order.
      train_counts: ``[C]`` int64 training images per class (from the actual labels).
      num_test: evaluation examples.
      mean, std: per-channel normalisation constants (0..1 scale).
      info: JSON-serialisable description.
      train_source, test_source: :class:`TfdsSplit` or :class:`FileListSplit`.
      color_jitter: apply ColorJitter(0.4, 0.4, 0.4) in training.
      image_size: crop size (224); ``resize_size``: eval shorter side (256).
    """
    name: str
    num_classes: int
    class_names: tuple[str, ...]
    train_counts: np.ndarray
    num_test: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: Mapping[str, Any]
    train_source: Any
    test_source: Any
    color_jitter: bool = True
    image_size: int = IMAGE_SIZE
    resize_size: int = RESIZE_SIZE

    def __post_init__(self):
        counts = np.asarray(self.train_counts, np.int64)
        if counts.shape != (self.num_classes,):
            raise ValueError(f"train_counts must be [{self.num_classes}], got {counts.shape}")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} "
                             "classes")
        object.__setattr__(self, "train_counts", counts)
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))

    @property
    def num_train(self) -> int:
        return int(self.train_counts.sum())

    def steps_per_epoch(self, global_batch: int) -> int:
        """``ceil(num_train / global_batch)``: the official ``drop_last=False`` count."""
        return -(-self.num_train // int(global_batch))

    def eval_steps(self, global_batch: int, process_count: int | None = None) -> int:
        """Eval batches: enough for the process with the most examples."""
        pc = jax.process_count() if process_count is None else process_count
        local = global_batch // pc
        most = _shard_count(self.num_test, 0, pc)
        return max(1, -(-most // local))

    # ---- tf.data (uint8, per process)

    @functools.cached_property
    def train_labels(self) -> np.ndarray:
        """``[N]`` int64 training labels in the train split's file order (read once).

        A :class:`FileListSplit` has them; a :class:`TfdsSplit` is scanned
        (:meth:`TfdsSplit.scan_labels`, labels only). Checked against ``train_counts``.
        """
        src = self.train_source
        labels = src.scan_labels() if hasattr(src, "scan_labels") else src.labels
        labels = np.asarray(labels, np.int64)
        if (len(labels) != self.num_train or labels.min(initial=0) < 0
                or labels.max(initial=0) >= self.num_classes
                or not np.array_equal(np.bincount(labels, minlength=self.num_classes),
                                      self.train_counts)):
            raise ValueError(f"{self.name}: the {len(labels)} training labels read do not "
                             f"match train_counts ({self.num_train} examples)")
        return labels

    def train_tf(self, global_batch: int, seed: int = 0, *, process_index: int | None = None,
                 process_count: int | None = None, shuffle_buffer: int = 10_000,
                 sampler: str = "shuffle") -> tf.data.Dataset:
        """Endless per-process train batches ``{'image': uint8 [b, S, S, 3], 'label': int32 [b]}``.

        b = global_batch / process_count. Deterministic given ``seed``: file order,
        shuffle, the balanced draws and every random transform use seeds derived from
        it (the transform of the k-th example of this process uses
        ``fold_in((seed, process), k)``).

        Args:
          sampler: ``'shuffle'`` (every example once per epoch) or ``'balanced'``: the
            official class-balanced sampler, epoch e = the draws
            ``balanced_indices(self.train_labels, C, seed, e)`` (module docstring:
            exact order for a :class:`FileListSplit`, exact per-epoch multiset and a
            ``shuffle_buffer`` order for a :class:`TfdsSplit`).
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
        pi = jax.process_index() if process_index is None else process_index
        pc = jax.process_count() if process_count is None else process_count
        local = _local_batch(global_batch, pc)
        if sampler == "shuffle":
            ds = self.train_source.read(shuffle_files=True, seed=seed, process_index=pi,
                                        process_count=pc, train=True)
            if shuffle_buffer > 1:
                ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
            ds = ds.repeat()
        else:
            empty = np.flatnonzero(self.train_counts == 0)
            if empty.size:
                raise ValueError(f"the balanced sampler needs an example of every class; "
                                 f"classes {empty[:10].tolist()} have none")
            labels, num_classes = self.train_labels, self.num_classes

            def draws(epoch: int) -> np.ndarray:
                return balanced_indices(labels, num_classes, seed, epoch)

            ds = self.train_source.read_balanced(
                draws, len(labels), seed=seed, process_index=pi, process_count=pc,
                shuffle_buffer=shuffle_buffer, labels=labels)
        ds = ds.enumerate()
        base = tf.constant([seed, pi], tf.int64)
        size, jitter = self.image_size, self.color_jitter

        def prep(k, ex):
            ex_seed = tf.random.experimental.stateless_fold_in(base, k)
            image = train_transform(decode_image(ex["image"]), ex_seed, size, jitter)
            return {"image": image, "label": ex["label"]}

        ds = ds.map(prep, num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.batch(local, drop_remainder=True)
        return _with_options(ds).prefetch(AUTOTUNE)

    def eval_tf(self, global_batch: int, *, process_index: int | None = None,
                process_count: int | None = None) -> tf.data.Dataset:
        """Per-process eval batches with ``'mask'``; ``eval_steps`` of them, padded.

        Process p reads examples p, p + P, ... of the test split in file order; the
        padding rows are zero images with label 0 and ``mask=False``.
        """
        pi = jax.process_index() if process_index is None else process_index
        pc = jax.process_count() if process_count is None else process_count
        local = _local_batch(global_batch, pc)
        n_local = _shard_count(self.num_test, pi, pc)
        n_pad = self.eval_steps(global_batch, pc) * local - n_local
        ds = self.test_source.read(shuffle_files=False, seed=None, process_index=pi,
                                   process_count=pc, train=False)
        size, resize = self.image_size, self.resize_size

        def prep(ex):
            image = eval_transform(decode_image(ex["image"]), size, resize)
            return {"image": image, "label": ex["label"], "mask": tf.constant(True)}

        ds = ds.map(prep, num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.take(n_local)  # static length even if the source had more
        pad = tf.data.Dataset.from_tensors({
            "image": tf.zeros([size, size, 3], tf.uint8), "label": tf.constant(0, tf.int32),
            "mask": tf.constant(False)}).repeat(n_pad)
        ds = ds.concatenate(pad).batch(local, drop_remainder=True)
        return _with_options(ds).prefetch(AUTOTUNE)

    # ---- global jax batches

    def train_iterator(self, global_batch: int, seed: int = 0, *,
                       mesh: jax.sharding.Mesh | None = None, shuffle_buffer: int = 10_000,
                       sampler: str = "shuffle") -> Iterator[dict[str, jax.Array]]:
        """Endless global train batches ``{'image': f32 [B, S, S, 3], 'label': i32 [B]}``.

        ``sampler``: ``'shuffle'`` or ``'balanced'`` (:meth:`train_tf`).
        """
        ds = self.train_tf(global_batch, seed, shuffle_buffer=shuffle_buffer, sampler=sampler)
        return _global_batches(ds, mesh or data_mesh(), self.mean, self.std)

    def eval_iterator(self, global_batch: int, *, mesh: jax.sharding.Mesh | None = None
                      ) -> Iterator[dict[str, jax.Array]]:
        """``eval_steps`` global batches with ``'mask': bool [B]`` (False = padding)."""
        ds = self.eval_tf(global_batch)
        return _global_batches(ds, mesh or data_mesh(), self.mean, self.std)


def _with_options(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    return ds.with_options(options)


_NORMALIZE_CACHE: dict[Any, Callable] = {}


def _normalizer(sharding: NamedSharding, mean, std) -> Callable:
    key = (sharding, tuple(mean), tuple(std))
    if key not in _NORMALIZE_CACHE:
        _NORMALIZE_CACHE[key] = jax.jit(lambda x: normalize(x, mean, std),
                                        out_shardings=sharding)
    return _NORMALIZE_CACHE[key]


def to_global_batch(local: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh,
                    mean: Sequence[float], std: Sequence[float]) -> dict[str, jax.Array]:
    """Process-local NumPy batch -> global arrays sharded ``P('data')``, image normalised.

    Args:
      local: ``{'image': uint8 [b, H, W, C], 'label': [b], ...}`` of this process.

    Returns:
      the same keys as global ``jax.Array`` s; ``'image'`` float32 normalised.
    """
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    out = {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
           for k, v in local.items()}
    out["image"] = _normalizer(sharding, mean, std)(out["image"])
    return out


def _global_batches(ds: tf.data.Dataset, mesh, mean, std) -> Iterator[dict[str, jax.Array]]:
    for local in ds.as_numpy_iterator():
        yield to_global_batch(local, mesh, mean, std)
