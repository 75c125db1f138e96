"""Sources read with TensorFlow Datasets: CIFAR-10/100-LT (in memory) and the streaming sets.

* ``cifar10_lt`` / ``cifar100_lt`` -> :class:`~ride_jax.data.base.ArrayDataset`, the
  exact official subset (RIDE ``data_loader/imbalance_cifar.py``). tfds's ``id`` feature (``'train_16399'``)
  is the example's position in the concatenated original training files
  (``data_batch_1..5.bin`` for CIFAR-10, ``train.bin`` for CIFAR-100: the tfds builder
  numbers the examples with one counter while reading the files in order), so sorting
  by it recovers the original order the official ``np.where(targets == c)`` sees.
* ``imagenet_lt`` (tfds ``imagenet_lt``: train = ImageNet_LT_train, test = the
  ILSVRC2012 val set = ImageNet_LT_test; tfds's ``validation`` split is
  ImageNet_LT_val, unused as in RIDE), ``inat2018`` (tfds ``i_naturalist2018``: test =
  the official val2018 = ``iNaturalist18_val.txt``) and ``places_lt`` (Places365 +
  the Places-LT lists shipped in ``ride_jax/data/lists``) ->
  :class:`~ride_jax.data.streaming.StreamingDataset`.

Counts and split sizes come from the labels actually read (never from
``builder.info.splits``, which is empty under ``tfds.testing.mock_data``).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import json
import os
import warnings
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ride_jax.data.base import (CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD,
                                INAT_MEAN, INAT_STD, ArrayDataset, ArraySplit)
from ride_jax.data.long_tail import PROFILES, long_tail_counts, select_long_tail
from ride_jax.data.streaming import FileListSplit, StreamingDataset, TfdsSplit
from ride_jax.data.test_agnostic import parse_list

tf.config.set_visible_devices([], "GPU")

LISTS_PACKAGE = "ride_jax.data.lists"


class DatasetNotFoundError(FileNotFoundError):
    """The data of a source is missing; the message says what to download and where."""


def _data_root(data_dir: str | None) -> str:
    return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR")
                              or "~/tensorflow_datasets")


def _builder(name: str, data_dir: str | None):
    return tfds.builder(name, data_dir=data_dir)


def _not_found(what: str, err: BaseException | None = None) -> DatasetNotFoundError:
    detail = f"\n(tfds said: {str(err).strip().splitlines()[0][:300]})" if err else ""
    return DatasetNotFoundError(what + detail)


# --------------------------------------------------------------------------- CIFAR-LT


def _split_to_numpy(builder, split: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
    ds = builder.as_dataset(split=split, shuffle_files=False)
    ds = ds.map(lambda ex: {k: ex[k] for k in keys}).batch(10_000)
    parts = list(ds.as_numpy_iterator())
    if not parts:
        raise ValueError(f"tfds {builder.name!r} split {split!r} is empty")
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def original_order(ids: Sequence[bytes | str], prefix: str) -> np.ndarray:
    """Permutation putting tfds examples back in the original file order.

    Args:
      ids: ``[N]`` tfds ``id`` features, ``'<prefix>_<position>'`` (e.g. ``'train_00042'``).
      prefix: ``'train'`` or ``'test'``.

    Returns:
      ``[N]`` int64 ``order`` with ``ids[order[k]]`` the k-th example of the original files.
    """
    pos = np.empty(len(ids), np.int64)
    for k, i in enumerate(ids):
        s = i.decode() if isinstance(i, bytes) else str(i)
        head, _, num = s.rpartition("_")
        if head != prefix or not num.isdigit():
            raise ValueError(f"unexpected tfds id {s!r}: expected '{prefix}_<position>'")
        pos[k] = int(num)
    if not np.array_equal(np.sort(pos), np.arange(len(ids))):
        raise ValueError(f"the {len(ids)} tfds '{prefix}' ids are not a permutation of "
                         f"positions 0..{len(ids) - 1}: the split is incomplete")
    order = np.empty_like(pos)
    order[pos] = np.arange(len(ids))
    return order


def _prepared_cifar(tfds_name: str, data_dir: str | None):
    builder = _builder(tfds_name, data_dir)
    try:
        builder.download_and_prepare()
    except Exception as err:  # no network, disk full, ...: one clear message
        raise _not_found(
            f"tfds dataset {tfds_name!r} is not prepared in {_data_root(data_dir)!r} and "
            f"could not be downloaded. On a machine with internet run "
            f"`tfds build {tfds_name} --data_dir=DIR` and copy DIR/{tfds_name} to "
            f"{_data_root(data_dir)}/{tfds_name} (or set TFDS_DATA_DIR=DIR; from Python, "
            f"{tfds_name}_lt(data_dir=DIR)).", err) from None
    return builder


def _cifar_lt(name: str, tfds_name: str, ratio: float, profile: str, seed: int,
              data_dir: str | None, img_max: float | None) -> ArrayDataset:
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is not supported; valid choices are {PROFILES}")
    builder = _prepared_cifar(tfds_name, data_dir)
    num_classes = builder.info.features["label"].num_classes
    class_names = tuple(builder.info.features["label"].names)
    train = _split_to_numpy(builder, "train", ("id", "image", "label"))
    test = _split_to_numpy(builder, "test", ("id", "image", "label"))
    tr_order = original_order(train["id"], "train")
    te_order = original_order(test["id"], "test")
    labels = train["label"][tr_order].astype(np.int64)
    n_train = len(labels)
    head = n_train / num_classes if img_max is None else img_max
    counts = long_tail_counts(num_classes, head, ratio, profile)
    selected = select_long_tail(labels, counts, seed)
    rows = tr_order[selected]  # tfds positions of the selected originals
    return ArrayDataset(
        name=name,
        train=ArraySplit(train["image"][rows], train["label"][rows]),
        test=ArraySplit(test["image"][te_order], test["label"][te_order]),
        num_classes=num_classes, class_names=class_names, mean=CIFAR_MEAN, std=CIFAR_STD,
        selected=selected,
        info={"source": f"tfds:{tfds_name}", "ratio": float(ratio), "profile": profile,
              "seed": int(seed), "img_max": float(head), "num_original_train": n_train})


def cifar10_lt(ratio: float = 100, profile: str = "exp", seed: int = 0,
               data_dir: str | None = None, img_max: float | None = None) -> ArrayDataset:
    """CIFAR-10-LT, the official subset (train class-sorted, test in original order).

    Args:
      ratio: n_max / n_min >= 1 (RIDE's CIFAR-10 loader is fixed at 100).
      profile: ``'exp'`` or ``'step'``.
      seed: seed of the legacy MT19937 selection stream (0 officially).
      data_dir: tfds data dir (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      img_max: head-class size (default ``len(train) / C`` = 5000).

    Returns:
      an :class:`ArrayDataset` of ``[N, 32, 32, 3]`` uint8 images; ``selected`` indexes
      the original training-file order.
    """
    return _cifar_lt("cifar10_lt", "cifar10", ratio, profile, seed, data_dir, img_max)


def cifar100_lt(ratio: float = 100, profile: str = "exp", seed: int = 0,
                data_dir: str | None = None, img_max: float | None = None) -> ArrayDataset:
    """CIFAR-100-LT, the official subset; see :func:`cifar10_lt` (img_max default 500).

    Normalised with the CIFAR-10 constants, as the official code does.
    """
    return _cifar_lt("cifar100_lt", "cifar100", ratio, profile, seed, data_dir, img_max)


# --------------------------------------------------------------------------- lists


def read_list(source: str | os.PathLike) -> tuple[tuple[str, ...], np.ndarray]:
    """A ``path label`` list file (plain or ``.gz``), or a shipped list by file name.

    Args:
      source: a path, or the name of a list in ``ride_jax/data/lists``
        (``'Places_LT_train.txt.gz'``).

    Returns:
      ``(paths, labels)``: ``N`` relative paths and ``[N]`` int64 labels.
    """
    source = os.fspath(source)
    if os.path.exists(source):
        opener = gzip.open if source.endswith(".gz") else open
        with opener(source, "rt") as f:
            text = f.read()
    else:
        res = importlib.resources.files(LISTS_PACKAGE) / source
        if not res.is_file():
            raise FileNotFoundError(f"no list file {source!r} (neither a path nor a list "
                                    f"shipped in {LISTS_PACKAGE})")
        data = res.read_bytes()
        text = (gzip.decompress(data) if source.endswith(".gz") else data).decode()
    return parse_list(text, source)


def _scan(split: TfdsSplit, missing_message: str, cache_dir: str | None) -> np.ndarray:
    """``[N]`` labels of a tfds split (cached in ``cache_dir`` when given)."""
    cache = None
    if cache_dir:
        h = hashlib.sha256(json.dumps([split.builder.name, str(split.builder.version),
                                       split.split, list(split.keys or ())]).encode())
        cache = os.path.join(cache_dir, f"{split.builder.name}_{split.split}_labels_"
                                        f"{h.hexdigest()[:16]}.npy")
        if os.path.exists(cache):
            return np.load(cache)
    try:
        labels = split.scan_labels()
    except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as err:
        raise _not_found(missing_message, err) from None
    if split.keys is not None and len(labels) != len(split.keys):
        raise ValueError(
            f"{len(split.keys) - len(labels)} of the {len(split.keys)} listed examples of "
            f"{split.builder.name!r} split {split.split!r} were not found (or appear more "
            f"than once): the tfds data and the list do not match (first keys of the "
            f"list: {list(split.keys[:3])})")
    if cache:
        os.makedirs(cache_dir, exist_ok=True)
        np.save(cache, labels)
    return labels


def _counts(labels: np.ndarray, num_classes: int, what: str) -> np.ndarray:
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(f"{what}: labels out of range [0, {num_classes}): {bad[:5].tolist()}")
    return np.bincount(labels, minlength=num_classes).astype(np.int64)


def _basename_noext(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _tf_basename(x: tf.Tensor) -> tf.Tensor:
    return tf.strings.regex_replace(x, r"^.*/", "")


def _tf_basename_noext(x: tf.Tensor) -> tf.Tensor:
    return tf.strings.regex_replace(_tf_basename(x), r"\.[^.]*$", "")


def _listed_split(builder, split: str, key_feature: str, key_fn: Callable,
                  keys: Sequence[str] | None, labels: np.ndarray | None) -> TfdsSplit:
    if keys is not None and len(set(keys)) != len(keys):
        raise ValueError(f"the list for {builder.name!r} split {split!r} names some "
                         "examples twice")
    return TfdsSplit(builder=builder, split=split, num_examples=0, key_feature=key_feature,
                     key_fn=key_fn, keys=None if keys is None else tuple(keys),
                     labels=labels)


def _finish(split: TfdsSplit, labels: np.ndarray) -> TfdsSplit:
    return TfdsSplit(builder=split.builder, split=split.split, num_examples=len(labels),
                     key_feature=split.key_feature, key_fn=split.key_fn, keys=split.keys,
                     labels=split.labels)


# --------------------------------------------------------------------------- ImageNet-LT


def _official_imagenet_lt_counts() -> np.ndarray:
    res = importlib.resources.files(LISTS_PACKAGE) / "ImageNet_LT_train_cls_freq.json"
    return np.asarray(json.loads(res.read_text()), np.int64)


def imagenet_lt(data_dir: str | None = None, color_jitter: bool = True,
                cache_dir: str | None = None) -> StreamingDataset:
    """ImageNet-LT from the tfds ``imagenet_lt`` builder (1000 classes, 115,846 train).

    Train = ImageNet_LT_train; test = tfds ``test`` = the 50,000 ILSVRC2012 val images
    = ImageNet_LT_test (labels = sorted-wnid index, as the lists).

    Args:
      data_dir: tfds data dir.
      color_jitter: ColorJitter(0.4, 0.4, 0.4) in training (official: on).
      cache_dir: where to cache the label scans (reading the labels once reads the
        whole split); None = no cache.
    """
    root = _data_root(data_dir)
    missing = (
        f"ImageNet-LT (tfds 'imagenet_lt') is not prepared in {root!r}. Download "
        f"ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (https://image-net.org/"
        f"download-images), put both in {root}/downloads/manual/ and run `tfds build "
        f"imagenet_lt --data_dir={root} --manual_dir={root}/downloads/manual` (the build "
        f"also fetches ImageNet_LT_train.txt/ImageNet_LT_val.txt from Google Drive, so run "
        f"it with internet, or copy a prepared DIR/imagenet_lt to {root}/imagenet_lt). A "
        f"folder other than {root!r} is the recipe argument "
        f"--config=configs/imagenet_lt.py:data_dir=DIR.")
    builder = _builder("imagenet_lt", data_dir)
    train = TfdsSplit(builder=builder, split="train", num_examples=0)
    test = TfdsSplit(builder=builder, split="test", num_examples=0)
    train_labels = _scan(train, missing, cache_dir)
    test_labels = _scan(test, missing, cache_dir)
    names = tuple(builder.info.features["label"].names)
    counts = _counts(train_labels, len(names), "imagenet_lt train")
    official = _official_imagenet_lt_counts()
    matches = bool(len(official) == len(counts) and np.array_equal(official, counts))
    if not matches:
        warnings.warn(f"imagenet_lt: the {counts.sum()} training labels read do not match "
                      f"the official ImageNet-LT class counts ({official.sum()} images)")
    return StreamingDataset(
        name="imagenet_lt", num_classes=len(names), class_names=names, train_counts=counts,
        num_test=len(test_labels), mean=IMAGENET_MEAN, std=IMAGENET_STD,
        info={"source": "tfds:imagenet_lt", "train_split": "train", "test_split": "test",
              "counts_match_official": matches, "color_jitter": bool(color_jitter)},
        train_source=_finish(train, train_labels), test_source=_finish(test, test_labels),
        color_jitter=color_jitter)


# --------------------------------------------------------------------------- iNaturalist


def inat2018(data_dir: str | None = None, train_list: str | None = None,
             test_list: str | None = None, cache_dir: str | None = None) -> StreamingDataset:
    """iNaturalist 2018 from tfds ``i_naturalist2018`` (8142 classes, no ColorJitter).

    Train = tfds ``train`` (437,513 images), test = tfds ``validation`` = the official
    val2018 = RIDE's ``iNaturalist18_val.txt`` (24,426). tfds labels are the category
    ids (its label names are in ``categories.json`` id order), as in the RIDE lists.

    Args:
      data_dir: tfds data dir.
      train_list, test_list: optional RIDE/classifier-balancing lists
        (``train_val2018/<super>/<id>/<hash>.jpg label``): only the listed images are
        used, matched by file name (tfds ``id`` = file name without extension), with the
        list's labels.
      cache_dir: where to cache the label scans; None = no cache.
    """
    root = _data_root(data_dir)
    missing = (
        f"iNaturalist 2018 (tfds 'i_naturalist2018') is not prepared in {root!r}. Run "
        f"`tfds build i_naturalist2018 --data_dir={root}` on a machine with internet: it "
        f"downloads train_val2018.tar.gz, train2018.json.tar.gz, val2018.json.tar.gz, "
        f"test2018.tar.gz and categories.json.tar.gz from https://ml-inat-competition-"
        f"datasets.s3.amazonaws.com/2018/ (about 200 GB). Built elsewhere with "
        f"--data_dir=DIR: copy DIR/i_naturalist2018 to {root}/i_naturalist2018, or give the "
        f"recipe that folder: --config=configs/inat2018.py:data_dir=DIR.")
    builder = _builder("i_naturalist2018", data_dir)
    splits = []
    for split, lst in (("train", train_list), ("validation", test_list)):
        keys = labels = None
        if lst is not None:
            paths, labels = read_list(lst)
            keys = [_basename_noext(p) for p in paths]
        splits.append(_listed_split(builder, split, "id", _tf_basename_noext, keys, labels))
    train_labels = _scan(splits[0], missing, cache_dir)
    test_labels = _scan(splits[1], missing, cache_dir)
    names = tuple(builder.info.features["label"].names)
    counts = _counts(train_labels, len(names), "inat2018 train")
    return StreamingDataset(
        name="inat2018", num_classes=len(names), class_names=names, train_counts=counts,
        num_test=len(test_labels), mean=INAT_MEAN, std=INAT_STD,
        info={"source": "tfds:i_naturalist2018", "train_split": "train",
              "test_split": "validation", "train_list": train_list, "test_list": test_list,
              "color_jitter": False},
        train_source=_finish(splits[0], train_labels),
        test_source=_finish(splits[1], test_labels), color_jitter=False)


# --------------------------------------------------------------------------- Places-LT

PLACES_TRAIN_LIST = "Places_LT_train.txt.gz"
PLACES_TEST_LIST = "Places_LT_test.txt.gz"
PLACES_CLASSES = 365


def places_train_key(list_path: str) -> str:
    """Places-LT train path -> match key: drop the leading ``train/``.

    ``'train/apartment_building-outdoor/00000001.jpg'`` ->
    ``'apartment_building-outdoor/00000001.jpg'``.
    """
    return list_path.split("/", 1)[1]


def _tf_places_train_key(filename: tf.Tensor) -> tf.Tensor:
    # tfds: 'data_256/a/apartment_building/outdoor/00000001.jpg'
    #   -> 'apartment_building-outdoor/00000001.jpg' (Places-LT's flattened folder names).
    rel = tf.strings.regex_replace(filename, r"^[^/]*/[^/]*/", "")
    folder = tf.strings.regex_replace(rel, r"/[^/]*$", "")
    return tf.strings.join([tf.strings.regex_replace(folder, "/", "-"), _tf_basename(rel)],
                           separator="/")


def places_lt(data_dir: str | None = None, image_root: str | None = None,
              train_list: str = PLACES_TRAIN_LIST, test_list: str = PLACES_TEST_LIST,
              color_jitter: bool = True, cache_dir: str | None = None) -> StreamingDataset:
    """Places-LT (365 classes, 62,500 train, 36,500 test), Places365-Standard + the lists.

    Two ways to read the images:

    * ``image_root`` (most faithful): the Places365-Standard "easy format" folder the
      lists were made from (``places365standard_easyformat.tar``), holding
      ``train/<category>/<file>.jpg`` and ``val/<category>/Places365_val_<n>.jpg``;
      the listed files ``image_root/<path>`` are read directly;
    * otherwise tfds ``places365_small`` (the same 256x256 images): train examples are
      matched on ``<flattened category>/<file>`` from the ``filename`` feature, test on
      the ``Places365_val_<n>.jpg`` file name of tfds ``validation``. Every epoch reads
      (and filters) the full 1.8M-image train split: prefer ``image_root``.

    Args:
      data_dir: tfds data dir (without ``image_root``).
      image_root: Places365 easy-format folder.
      train_list, test_list: list files (default: the shipped Places-LT lists).
      color_jitter: ColorJitter(0.4, 0.4, 0.4) in training (as ImageNet-LT).
      cache_dir: where to cache the tfds label scans; None = no cache.
    """
    tr_paths, tr_labels = read_list(train_list)
    te_paths, te_labels = read_list(test_list)
    info = {"train_list": os.path.basename(os.fspath(train_list)),
            "test_list": os.path.basename(os.fspath(test_list)),
            "color_jitter": bool(color_jitter)}
    if image_root is not None:
        root = os.path.expanduser(os.fspath(image_root))
        absent = [p for p in (tr_paths[0], tr_paths[-1], te_paths[0], te_paths[-1])
                  if not os.path.isfile(os.path.join(root, p))]
        if absent:
            raise DatasetNotFoundError(
                f"Places-LT: {os.path.join(root, absent[0])!r} does not exist. image_root "
                f"must be the Places365-Standard easy-format folder (extract "
                f"places365standard_easyformat.tar from http://data.csail.mit.edu/places/"
                f"places365/ and pass its places365_standard/ folder, which holds train/ "
                f"and val/: --config=configs/places_lt.py:image_root=DIR).")
        train_src = FileListSplit(root, tr_paths, tr_labels)
        test_src = FileListSplit(root, te_paths, te_labels)
        train_labels, test_labels = tr_labels, te_labels
        folder = {int(c): p.split("/")[1] for p, c in zip(tr_paths, tr_labels)}
        names = tuple(folder.get(c, f"class_{c}") for c in range(PLACES_CLASSES))
        info["source"] = f"folder:{root}"
    else:
        droot = _data_root(data_dir)
        missing = (
            f"Places-LT needs Places365-Standard: tfds 'places365_small' is not prepared in "
            f"{droot!r}. Either run `tfds build places365_small --data_dir={droot}` with "
            f"internet (it downloads train_256_places365standard.tar, val_256.tar, "
            f"test_256.tar and filelist_places365-standard.tar from http://data.csail.mit."
            f"edu/places/places365/; a tfds folder DIR elsewhere is "
            f"--config=configs/places_lt.py:data_dir=DIR), or extract "
            f"places365standard_easyformat.tar from the same site and pass its "
            f"places365_standard folder: --config=configs/places_lt.py:image_root=DIR.")
        builder = _builder("places365_small", data_dir)
        train = _listed_split(builder, "train", "filename", _tf_places_train_key,
                              [places_train_key(p) for p in tr_paths], tr_labels)
        test = _listed_split(builder, "validation", "filename", _tf_basename,
                             [os.path.basename(p) for p in te_paths], te_labels)
        train_labels = _scan(train, missing, cache_dir)
        test_labels = _scan(test, missing, cache_dir)
        train_src, test_src = _finish(train, train_labels), _finish(test, test_labels)
        names = tuple(builder.info.features["label"].names)
        info["source"] = "tfds:places365_small"
    counts = _counts(np.asarray(train_labels), PLACES_CLASSES, "places_lt train")
    return StreamingDataset(
        name="places_lt", num_classes=PLACES_CLASSES, class_names=names,
        train_counts=counts, num_test=len(test_labels), mean=IMAGENET_MEAN,
        std=IMAGENET_STD, info=info, train_source=train_src, test_source=test_src,
        color_jitter=color_jitter)
