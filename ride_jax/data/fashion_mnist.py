"""``fashion_mnist_lt``: Fashion-MNIST-LT built offline from Debian's ``dataset-fashion-mnist``.

Debian ships the four original IDX files re-gzipped: the deflate stream, CRC and size
are the originals', but the gzip header lost the file name (FNAME flag) and got a new
timestamp, so the files differ from the ones tfds' checksums record. Putting the
original header back (``1f 8b 08 08`` + the original mtime + XFL 0, OS 3 (Unix) + the
file name without ``.gz`` + NUL) makes them byte-identical to the originals (sha256 =
tfds' ``url_checksums/fashion_mnist.txt``); the stock tfds ``fashion_mnist`` builder
accepts them through ``DownloadConfig(manual_dir=...)``. The original mtimes were found
by searching the timestamps around the dataset's release for the one giving the
recorded sha256: 1504176606 (2017-08-31 10:50:06 UTC) for the train files, 1504176627
(10:50:27 UTC) for the t10k files.

Two backends give the same arrays (``backend='auto'``, the default, takes ``'tfds'`` when
TensorFlow and tensorflow-datasets are importable, else ``'idx'``):

* ``'tfds'``: the stock tfds builder (prepared once in ``data_dir``, TensorFlow needed).
  tfds stores the examples in a shuffled order (its records are ordered by a hash of
  the example key), so the original file order is recovered by matching every tfds
  example (pixels + label) to the IDX files parsed directly.
* ``'idx'``: the IDX files parsed with NumPy, their decompressed content checked against
  the sha256 recorded here. No TensorFlow.

The long-tailed subset is selected in the ORIGINAL training-file order (the official
CIFAR-LT recipe, ``long_tail.select_long_tail``), so ``selected`` indexes the original
``train-images-idx3-ubyte``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import struct
import tempfile
import zlib

import numpy as np

from ride_jax.data.base import ArrayDataset, ArraySplit
from ride_jax.data.long_tail import PROFILES, long_tail_counts, select_long_tail

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
# Mean / std of all 60,000 training images (one channel, 0..1 scale, population std over
# every pixel), computed in float64 from the IDX file:
#   x = train_images.astype(np.float64) / 255; x.mean(), x.std()
#   -> 0.2860405969887955, 0.35302424451492254
# (tests/test_fashion_mnist.py recomputes them).
FASHION_MNIST_MEAN = (0.2860405969887955,)
FASHION_MNIST_STD = (0.35302424451492254,)
BACKENDS = ("auto", "tfds", "idx")


@dataclasses.dataclass(frozen=True)
class _IdxFile:
    name: str          # original file name without .gz (= the gzip FNAME field)
    mtime: int         # original gzip header timestamp
    gz_size: int       # original .gz size and sha256 (tfds url_checksums)
    gz_sha256: str
    idx_sha256: str    # sha256 of the decompressed IDX file
    count: int


FILES = {
    "train_images": _IdxFile(
        "train-images-idx3-ubyte", 1504176606, 26421880,
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 60000),
    "train_labels": _IdxFile(
        "train-labels-idx1-ubyte", 1504176606, 29515,
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60000),
    "test_images": _IdxFile(
        "t10k-images-idx3-ubyte", 1504176627, 4422102,
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 10000),
    "test_labels": _IdxFile(
        "t10k-labels-idx1-ubyte", 1504176627, 5148,
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10000),
}


def _missing_message(debian_dir: str, missing: list[str]) -> str:
    return (f"Fashion-MNIST files not found in {debian_dir!r} (missing: {missing}); install "
            "them with `apt-get install dataset-fashion-mnist` or pass debian_dir= a folder "
            "holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")


def _debian_paths(debian_dir: str | os.PathLike) -> dict[str, str]:
    d = os.fspath(debian_dir)
    paths = {k: os.path.join(d, f.name + ".gz") for k, f in FILES.items()}
    missing = [os.path.basename(p) for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(_missing_message(d, missing))
    return paths


def _deflate_start(data: bytes, path: str) -> int:
    """Offset of the deflate stream in a one-member gzip file (RFC 1952 header)."""
    if len(data) < 18 or data[:3] != b"\x1f\x8b\x08":
        raise ValueError(f"{path!r} is not a gzip (deflate) file")
    flags = data[3]
    pos = 10
    if flags & 4:  # FEXTRA
        pos += 2 + struct.unpack_from("<H", data, pos)[0]
    for bit in (8, 16):  # FNAME, FCOMMENT: NUL-terminated
        if flags & bit:
            pos = data.index(b"\0", pos) + 1
    if flags & 2:  # FHCRC
        pos += 2
    return pos


def restored_gzip(path: str | os.PathLike, key: str) -> bytes:
    """The original ``.gz`` bytes from Debian's re-gzipped file (header restored).

    Args:
      path: Debian's file, e.g. ``.../train-images-idx3-ubyte.gz``.
      key: ``'train_images'``, ``'train_labels'``, ``'test_images'`` or ``'test_labels'``.

    Returns:
      the bytes; their sha256 is ``FILES[key].gz_sha256`` when the deflate stream is the
      original one (checked by :func:`restore_original_gzip`, not here).
    """
    spec = FILES[key]
    with open(path, "rb") as f:
        data = f.read()
    body = data[_deflate_start(data, os.fspath(path)):]
    header = (b"\x1f\x8b\x08\x08" + struct.pack("<I", spec.mtime) + b"\x00\x03"
              + spec.name.encode("ascii") + b"\x00")
    return header + body


def restore_original_gzip(out_dir: str | os.PathLike,
                          debian_dir: str | os.PathLike = DEBIAN_DIR) -> dict[str, str]:
    """Write the four original Fashion-MNIST ``.gz`` files (tfds' checksums) to ``out_dir``.

    Returns:
      ``{key: path}``. Raises ValueError if a restored file's size or sha256 differs from
      the original's (Debian's file then holds a different deflate stream).
    """
    src = _debian_paths(debian_dir)
    os.makedirs(out_dir, exist_ok=True)
    out = {}
    for key, spec in FILES.items():
        data = restored_gzip(src[key], key)
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != spec.gz_size or digest != spec.gz_sha256:
            raise ValueError(
                f"restoring the gzip header of {src[key]!r} gives {len(data)} bytes with "
                f"sha256 {digest}, not the original {spec.gz_size} bytes / "
                f"{spec.gz_sha256}: this file was recompressed differently; use "
                "backend='idx', which checks the decompressed content instead")
        path = os.path.join(os.fspath(out_dir), spec.name + ".gz")
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)
        out[key] = path
    return out


def _parse_idx(raw: bytes, key: str) -> np.ndarray:
    """IDX bytes -> ``[N, 28, 28, 1]`` uint8 images or ``[N]`` uint8 labels."""
    spec = FILES[key]
    images = key.endswith("images")
    magic, n = struct.unpack_from(">II", raw, 0)
    if magic != (2051 if images else 2049) or n != spec.count:
        raise ValueError(f"{spec.name}: bad IDX header (magic {magic}, {n} items)")
    if images:
        rows, cols = struct.unpack_from(">II", raw, 8)
        return np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows, cols, 1)
    return np.frombuffer(raw, np.uint8, offset=8)


def read_idx(debian_dir: str | os.PathLike = DEBIAN_DIR, verify: bool = True
             ) -> dict[str, np.ndarray]:
    """The four Fashion-MNIST arrays in the ORIGINAL file order, parsed with NumPy.

    Args:
      debian_dir: folder with the (Debian or original) ``*-ubyte.gz`` files.
      verify: check the decompressed files' sha256 against the original content.

    Returns:
      ``{'train_images': [60000, 28, 28, 1] uint8, 'train_labels': [60000] uint8,
      'test_images': [10000, 28, 28, 1] uint8, 'test_labels': [10000] uint8}``.
    """
    paths = _debian_paths(debian_dir)
    out = {}
    for key, spec in FILES.items():
        try:
            with gzip.open(paths[key], "rb") as f:
                raw = f.read()
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"cannot decompress {paths[key]!r}: {e}") from None
        if verify and hashlib.sha256(raw).hexdigest() != spec.idx_sha256:
            raise ValueError(f"{paths[key]!r} does not hold the original {spec.name} "
                             f"(sha256 of its content is not {spec.idx_sha256})")
        out[key] = _parse_idx(raw, key)
    return out


def _rows(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``[N]`` opaque rows (pixels + label) that sort and compare bytewise."""
    flat = np.concatenate([images.reshape(len(images), -1),
                           labels.astype(np.uint8).reshape(-1, 1)], axis=1)
    flat = np.ascontiguousarray(flat)
    return flat.view(np.dtype((np.void, flat.shape[1]))).ravel()


def original_order(images: np.ndarray, labels: np.ndarray, ref_images: np.ndarray,
                   ref_labels: np.ndarray) -> np.ndarray:
    """``perm`` with ``images[perm] == ref_images`` and ``labels[perm] == ref_labels``.

    Matches examples by pixels and label (identical examples are matched in order).

    Args:
      images, labels: ``[N, ...]`` / ``[N]`` in some order (tfds' stored order).
      ref_images, ref_labels: the same examples in the reference (original) order.

    Returns:
      ``[N]`` int64 permutation.
    """
    a, b = _rows(images, labels), _rows(ref_images, ref_labels)
    if a.shape != b.shape:
        raise ValueError(f"{len(a)} examples cannot be matched to {len(b)}")
    ia, ib = np.argsort(a, kind="stable"), np.argsort(b, kind="stable")
    if not np.array_equal(a[ia], b[ib]):
        raise ValueError("the two sets of examples differ (not a permutation of each other)")
    perm = np.empty(len(a), np.int64)
    perm[ib] = ia
    return perm


def _read_tfds(debian_dir: str, data_dir: str | None, ref: dict[str, np.ndarray],
               max_examples: int | None = None
               ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The stock tfds ``fashion_mnist`` (prepared from the restored originals if needed).

    Args:
      ref: :func:`read_idx`'s arrays (the original order).
      max_examples: tests only: prepare just the first ``max_examples`` examples of each
        split (tfds ``max_examples_per_split``) and compare with ``ref[:max_examples]``.

    Returns:
      ``(arrays in the original order, {split: perm})`` with ``tfds_split[perm]`` =
      original order.
    """
    try:
        import tensorflow  # noqa: F401  (tfds builders need it; it is an optional extra)
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(f"backend='tfds' needs tensorflow and tensorflow-datasets ({e}); "
                          "install them or use backend='idx'") from None
    builder = tfds.builder("fashion_mnist", data_dir=data_dir)
    if not builder.is_prepared():
        with tempfile.TemporaryDirectory(prefix="fashion_mnist_manual_") as manual:
            restore_original_gzip(manual, debian_dir)
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
                manual_dir=manual, max_examples_per_split=max_examples))
    out, perms = {}, {}
    for split in ("train", "test"):
        d = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1,
                                             shuffle_files=False))
        images, labels = np.asarray(d["image"]), np.asarray(d["label"])
        ref_images, ref_labels = ref[f"{split}_images"], ref[f"{split}_labels"]
        if max_examples is not None:
            ref_images, ref_labels = ref_images[:max_examples], ref_labels[:max_examples]
        if len(labels) != len(ref_labels):
            raise ValueError(f"the tfds fashion_mnist in {builder.data_dir!r} has "
                             f"{len(labels)} {split} examples, not {len(ref_labels)}: delete "
                             "that folder to prepare it again")
        perm = original_order(images, labels, ref_images, ref_labels)
        out[f"{split}_images"] = images[perm]
        out[f"{split}_labels"] = labels[perm].astype(np.uint8)
        perms[split] = perm
    return out, perms


def _has_tf() -> bool:
    import importlib.util
    return all(importlib.util.find_spec(m) is not None
               for m in ("tensorflow", "tensorflow_datasets"))


def fashion_mnist_lt(ratio: float | None = 100, img_max: float = 6000,
                     profile: str = "exp", seed: int = 0,
                     debian_dir: str | os.PathLike = DEBIAN_DIR,
                     data_dir: str | os.PathLike | None = None,
                     backend: str = "auto") -> ArrayDataset:
    """Fashion-MNIST-LT from Debian's ``dataset-fashion-mnist`` files (offline).

    Args:
      ratio: n_max / n_min >= 1; None keeps the full (balanced) training set.
      img_max: images of the head class (6000 = every training image of class 0).
      profile: ``'exp'`` or ``'step'``.
      seed: seed of the selection's legacy MT19937 stream.
      debian_dir: folder with the four ``*-ubyte.gz`` files.
      data_dir: tfds data folder for ``backend='tfds'`` (None: tfds' default); the
        dataset is prepared there once.
      backend: ``'tfds'`` (stock tfds builder fed the restored originals), ``'idx'``
        (NumPy parse, no TensorFlow) or ``'auto'`` (``'tfds'`` if TensorFlow and
        tensorflow-datasets are importable, else ``'idx'``). Both give the same arrays;
        ``info['backend']`` records the one used.

    Returns:
      ArrayDataset ``'fashion_mnist_lt'``: train ``[N, 28, 28, 1]`` uint8, class-sorted in
      the official selection's order; test ``[10000, 28, 28, 1]`` in the original t10k
      order; ``selected`` = ``[N]`` indices into the original 60,000 training images;
      mean / std :data:`FASHION_MNIST_MEAN` / :data:`FASHION_MNIST_STD`.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is not supported; valid choices are {PROFILES}")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not supported; valid choices are {BACKENDS}")
    debian_dir = os.fspath(debian_dir)
    if not os.path.isdir(debian_dir):
        raise FileNotFoundError(_missing_message(debian_dir, [f.name + ".gz"
                                                              for f in FILES.values()]))
    if backend == "auto":
        backend = "tfds" if _has_tf() else "idx"
    counts = None if ratio is None else long_tail_counts(10, img_max, ratio, profile)
    arrays = read_idx(debian_dir, verify=True)
    if backend == "tfds":
        arrays, _ = _read_tfds(debian_dir,
                               None if data_dir is None else os.fspath(data_dir), arrays)
    train_labels = arrays["train_labels"]
    if counts is None:
        selected = np.arange(len(train_labels), dtype=np.int64)
    else:
        available = np.bincount(train_labels, minlength=10)
        if np.any(counts > available):
            c = int(np.argmax(counts > available))
            raise ValueError(f"img_max={img_max:g} asks for {int(counts[c])} images of class "
                             f"{c}, which has {int(available[c])}")
        selected = select_long_tail(train_labels, counts, seed)
    info = {"source": "fashion_mnist", "backend": backend, "debian_dir": debian_dir,
            "ratio": None if ratio is None else float(ratio), "profile": profile,
            "seed": int(seed), "img_max": float(img_max)}
    return ArrayDataset(
        name="fashion_mnist_lt",
        train=ArraySplit(arrays["train_images"][selected], train_labels[selected]),
        test=ArraySplit(np.ascontiguousarray(arrays["test_images"]), arrays["test_labels"]),
        num_classes=10, class_names=CLASS_NAMES, mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD, selected=selected, info=info)
