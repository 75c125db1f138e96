"""``image_folder_lt``: a long-tailed dataset from a ``split/class/file`` folder or zip.

Layout (a folder, or a ``.zip`` holding the same tree)::

    PATH/train/<class>/<file>     e.g. train/airplane/0000.jpg
    PATH/test/<class>/<file>

* Classes: the class folder names sorted with plain ``sorted()`` (code-point order, as
  torchvision's ``ImageFolder``), unless ``classes=`` gives the order. Label c is the
  c-th name; with a ``ratio`` class 0 is the head. For CIFAR-10-JPEG the sorted names
  are the standard CIFAR-10 label order (airplane, automobile, bird, cat, deer, dog,
  frog, horse, ship, truck).
* Files of a class: every image file under the class folder (sub-folders included),
  sorted by relative path with plain ``sorted()``. Name the files so that this order is
  the original one (zero-padded numbers: ``0000.jpg`` ... ``4999.jpg``). Hidden entries
  (a name starting with ``.``), ``__MACOSX`` and files without an image extension
  (:data:`IMAGE_EXTENSIONS`) are ignored.
* A zip whose tree sits under one top-level folder (``cifar10/train/...``) is read from
  that folder.

Long-tail selection (``ratio`` given): ``long_tail_counts(C, img_max, ratio, profile)``
then ``select_long_tail`` on the labels of the class-sorted training file list. The
official code shuffles each class's ascending positions in the original training file
with one MT19937 stream; the result depends only on the class sizes, so when each
class's files are in their original order (as in CIFAR-10-JPEG) the kept files have the
same within-class ranks as the official subset. ``ratio=None`` uses the training folder
as it is (already long-tailed).

Only the kept images are decoded (Pillow). Needs no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np

from ride_jax.data.base import CIFAR_MEAN, CIFAR_STD, ArrayDataset, ArraySplit
from ride_jax.data.long_tail import PROFILES, long_tail_counts, select_long_tail

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".pbm",
                    ".tif", ".tiff", ".webp")
MODES = ("auto", "RGB", "L")
# Grey images get the channel average of the CIFAR constants by default.
GREY_MEAN = (round(sum(CIFAR_MEAN) / 3, 4),)
GREY_STD = (round(sum(CIFAR_STD) / 3, 4),)
_GREY_PIL_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "F")


@dataclasses.dataclass(frozen=True)
class FolderIndex:
    """The file listing of an image folder or zip (no pixels).

    Attributes:
      path: absolute path of the folder or zip.
      classes: ``C`` class folder names in label order.
      train_files, test_files: ``[N]`` relative paths (``'train/airplane/0000.jpg'``,
        '/'-separated, relative to the tree's root) in class-sorted order: class 0's
        files sorted, then class 1's, ...
      train_labels, test_labels: ``[N]`` int32 labels of those files.
    """
    path: str
    classes: tuple[str, ...]
    train_files: tuple[str, ...]
    train_labels: np.ndarray
    test_files: tuple[str, ...]
    test_labels: np.ndarray

    @property
    def train_counts(self) -> np.ndarray:
        """``[C]`` int64 training files per class."""
        return np.bincount(self.train_labels, minlength=len(self.classes)).astype(np.int64)


# ----------------------------------------------------------------------------- listing

def _hidden(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX"


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


class _Tree:
    """Read access to a folder or a zip: ``{split: {class: [relpath, ...]}}`` and bytes."""

    def __init__(self, path: str):
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        self.prefix = ""
        if os.path.isdir(path):
            self.kind = "folder"
        elif zipfile.is_zipfile(path):
            self.kind = "zip"
            self.zip = zipfile.ZipFile(path)
        else:
            raise ValueError(f"path={path!r} is neither a folder nor a zip file; give a "
                             "folder or a .zip laid out as split/class/file")

    def close(self):
        if self.zip is not None:
            self.zip.close()

    # split -> {class: sorted relpaths}
    def splits(self, wanted: Sequence[str]) -> dict[str, dict[str, list[str]]]:
        return self._folder_splits(wanted) if self.kind == "folder" else self._zip_splits(
            wanted)

    def _folder_splits(self, wanted):
        out = {}
        for split in wanted:
            root = os.path.join(self.path, split)
            if not os.path.isdir(root):
                continue
            classes = {}
            for entry in os.scandir(root):
                if _hidden(entry.name) or not entry.is_dir():
                    continue
                files = []
                for dirpath, dirnames, filenames in os.walk(entry.path, followlinks=True):
                    dirnames[:] = [d for d in dirnames if not _hidden(d)]
                    rel = os.path.relpath(dirpath, self.path).replace(os.sep, "/")
                    files += [f"{rel}/{f}" for f in filenames
                              if not _hidden(f) and _is_image(f)]
                classes[entry.name] = sorted(files)
            out[split] = classes
        return out

    def _zip_splits(self, wanted):
        names = [n for n in self.zip.namelist()
                 if not any(_hidden(p) for p in n.split("/") if p)]
        tops = {n.split("/", 1)[0] for n in names}
        if not tops & set(wanted) and len(tops) == 1:
            # The tree sits under one top-level folder: read from there.
            self.prefix = tops.pop() + "/"
            names = [n for n in names if n.startswith(self.prefix)]
        out: dict[str, dict[str, list[str]]] = {}
        for full in names:
            rel = full[len(self.prefix):]
            parts = rel.split("/")
            if len(parts) < 2 or parts[0] not in wanted:
                continue
            classes = out.setdefault(parts[0], {})
            if len(parts) == 2 or not parts[1]:  # split/file or the split's own entry
                continue
            files = classes.setdefault(parts[1], [])
            if parts[-1] and _is_image(parts[-1]):
                files.append(rel)
        for classes in out.values():
            for files in classes.values():
                files.sort()
        return out

    def reader(self) -> Callable[[str], bytes]:
        if self.kind == "folder":
            base = self.path

            def read(rel):
                with open(os.path.join(base, *rel.split("/")), "rb") as f:
                    return f.read()
            return read
        zf, prefix = self.zip, self.prefix
        return lambda rel: zf.read(prefix + rel)


def _check_path(path: Any) -> str:
    try:
        p = os.fspath(path)
    except TypeError:
        raise ValueError(f"path must be a folder or zip path, got {path!r}") from None
    p = os.path.abspath(os.path.expanduser(p))
    if not os.path.exists(p):
        raise FileNotFoundError(f"image folder path {p!r} does not exist; give a folder or a "
                                ".zip laid out as split/class/file")
    return p


def _index(tree: _Tree, train_split: str, test_split: str | None,
           classes: Sequence[str] | None) -> FolderIndex:
    wanted = [train_split] + ([test_split] if test_split is not None else [])
    found = tree.splits(wanted)
    for split in wanted:
        if split not in found:
            raise FileNotFoundError(
                f"{tree.kind} {tree.path!r} has no split folder {split!r}"
                + (f" (under {tree.prefix!r})" if tree.prefix else "")
                + "; expected split/class/file, e.g. train/<class>/<image>")
    train = found[train_split]
    if not train:
        raise ValueError(f"split {train_split!r} of {tree.path!r} has no class folders")
    if test_split is not None:
        test = found[test_split]
        if set(train) != set(test):
            only_train = sorted(set(train) - set(test))
            only_test = sorted(set(test) - set(train))
            raise ValueError(
                f"the class folders of {train_split!r} and {test_split!r} differ in "
                f"{tree.path!r}: only in {train_split!r}: {only_train}; only in "
                f"{test_split!r}: {only_test}")
    if classes is None:
        names = tuple(sorted(train))
    else:
        names = tuple(str(c) for c in classes)
        if len(set(names)) != len(names) or set(names) != set(train):
            raise ValueError(f"classes={list(names)} must be a permutation of the class "
                             f"folders {sorted(train)}")
    lists = {}
    for split in wanted:
        files, labels = [], []
        for c, name in enumerate(names):
            fs = found[split][name]
            if not fs:
                raise ValueError(f"class folder {split}/{name} of {tree.path!r} has no image "
                                 f"files (extensions {IMAGE_EXTENSIONS})")
            files += fs
            labels += [c] * len(fs)
        lists[split] = (tuple(files), np.asarray(labels, np.int32))
    test_files, test_labels = lists.get(test_split, ((), np.zeros([0], np.int32)))
    return FolderIndex(path=tree.path, classes=names, train_files=lists[train_split][0],
                       train_labels=lists[train_split][1], test_files=test_files,
                       test_labels=test_labels)


def list_image_folder(path: str | os.PathLike, train_split: str = "train",
                      test_split: str | None = "test",
                      classes: Sequence[str] | None = None) -> FolderIndex:
    """The class-sorted file listing of a folder or zip, without decoding anything.

    ``image_folder_lt(...).selected`` indexes ``list_image_folder(...).train_files``.
    Arguments as in :func:`image_folder_lt`.
    """
    tree = _Tree(_check_path(path))
    try:
        return _index(tree, train_split, test_split, classes)
    finally:
        tree.close()


def files_sha256(files: Sequence[str]) -> str:
    """sha256 of a file list (newline-joined), to check a listing did not change."""
    return hashlib.sha256("\n".join(files).encode()).hexdigest()


def long_tail_selection(index: FolderIndex, ratio: float | None,
                        img_max: float | None = None, profile: str = "exp",
                        seed: int = 0) -> tuple[np.ndarray, float | None]:
    """The training files :func:`image_folder_lt` keeps (no decoding).

    Args:
      index: from :func:`list_image_folder`.
      ratio, img_max, profile, seed: as in :func:`image_folder_lt`.

    Returns:
      ``([N] int64 indices into index.train_files, img_max used)`` (None if ratio is None).
    """
    if ratio is None:
        if img_max is not None:
            raise ValueError(f"img_max={img_max!r} needs a ratio; with ratio=None the "
                             "training folder is used as it is")
        return np.arange(len(index.train_files), dtype=np.int64), None
    num_classes = len(index.classes)
    available = index.train_counts
    if img_max is None:
        img_max = len(index.train_files) / num_classes
    counts = long_tail_counts(num_classes, img_max, ratio, profile)
    short = np.flatnonzero(counts > available)
    if short.size:
        c = int(short[0])
        raise ValueError(
            f"class {c} ({index.classes[c]!r}) has {int(available[c])} training images, "
            f"fewer than the {int(counts[c])} that img_max={img_max:g}, ratio={ratio:g}, "
            f"profile={profile!r} ask for (counts {counts.tolist()}, available "
            f"{available.tolist()})")
    return select_long_tail(index.train_labels, counts, seed), float(img_max)


# ---------------------------------------------------------------------------- decoding

def _size(image_size: Any) -> tuple[int, int] | None:
    """``image_size`` -> (H, W) or None."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        hw = (int(image_size), int(image_size))
    else:
        try:
            hw = tuple(int(s) for s in image_size)
        except (TypeError, ValueError):
            hw = ()
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"image_size must be a positive int or (height, width), got "
                         f"{image_size!r}")
    return hw


def _decode(data: bytes, rel: str, hw: tuple[int, int] | None) -> np.ndarray:
    """Bytes -> ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB) uint8."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            target = "L" if im.mode in _GREY_PIL_MODES else "RGB"
            if im.mode != target:
                im = im.convert(target)
            if hw is not None and im.size != (hw[1], hw[0]):
                im = im.resize((hw[1], hw[0]), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except Exception as e:  # PIL raises many types for a bad file
        raise ValueError(f"cannot decode image {rel!r}: {type(e).__name__}: {e}") from None


def _decode_all(read: Callable[[str], bytes], files: Sequence[str],
                hw: tuple[int, int] | None, num_workers: int) -> list[np.ndarray]:
    def one(rel):
        return _decode(read(rel), rel, hw)

    if num_workers <= 1 or len(files) < 2:
        return [one(f) for f in files]
    with ThreadPoolExecutor(num_workers) as ex:
        return list(ex.map(one, files, chunksize=64))


def _stack(arrays: list[np.ndarray], files: Sequence[str], rgb: bool, split: str
           ) -> np.ndarray:
    """Decoded images -> ``[N, H, W, C]`` uint8 (C = 3 if ``rgb`` else 1)."""
    channels = 3 if rgb else 1
    if not arrays:
        return np.zeros([0, 1, 1, channels], np.uint8)
    shape = arrays[0].shape[:2]
    out = np.empty((len(arrays),) + shape + (channels,), np.uint8)
    for i, a in enumerate(arrays):
        if a.shape[:2] != shape:
            raise ValueError(
                f"images of split {split!r} differ in size: {files[0]!r} is "
                f"{shape[1]}x{shape[0]}, {files[i]!r} is {a.shape[1]}x{a.shape[0]} "
                "(width x height); pass image_size=(height, width) to resize them all")
        if a.ndim == 2:
            out[i] = a[:, :, None]  # broadcasts grey to 3 channels (= PIL convert('RGB'))
        else:
            out[i] = a
    return out


def _constants(mean, std, images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    channels = images.shape[-1]

    def train_stat(kind):
        x = images.reshape(-1, channels).astype(np.float64) / 255.0
        return tuple(float(v) for v in (x.mean(0) if kind == "mean" else x.std(0)))

    def pick(value, default, kind):
        if value is None:
            return default
        if isinstance(value, str):
            if value != "train":
                raise ValueError(f"{kind}={value!r}: give {channels} numbers, None "
                                 "(CIFAR constants) or 'train' (computed from the kept "
                                 "training images)")
            return train_stat(kind)
        vals = tuple(float(v) for v in np.atleast_1d(np.asarray(value, dtype=np.float64)))
        if len(vals) != channels:
            raise ValueError(f"{kind}={value!r} has {len(vals)} entries for {channels}-channel "
                             "images")
        return vals

    m = pick(mean, CIFAR_MEAN if channels == 3 else GREY_MEAN, "mean")
    s = pick(std, CIFAR_STD if channels == 3 else GREY_STD, "std")
    if min(s) <= 0:
        raise ValueError(f"std must be positive, got {s}")
    return m, s


# ----------------------------------------------------------------------------- builder

def image_folder_lt(path: str | os.PathLike, ratio: float | None = None,
                    img_max: float | None = None, profile: str = "exp", seed: int = 0,
                    train_split: str = "train", test_split: str | None = "test",
                    image_size: int | Sequence[int] | None = None,
                    mean: Sequence[float] | str | None = None,
                    std: Sequence[float] | str | None = None,
                    mode: str = "auto", classes: Sequence[str] | None = None,
                    num_workers: int = 1) -> ArrayDataset:
    """A long-tailed :class:`ArrayDataset` from a ``split/class/file`` folder or zip.

    Args:
      path: a folder, or a ``.zip`` file holding the same tree.
      ratio: n_max / n_min >= 1 to make a long-tailed subset of the training split
        (the official CIFAR-LT selection); None uses the training split as it is.
      img_max: images of the head class; default ``len(train files) / C`` (the official
        code's ``len(train_data) / C``, 5000 for CIFAR-10).
      profile: ``'exp'`` or ``'step'``.
      seed: seed of the selection's legacy MT19937 stream (0 as in the official code).
      train_split, test_split: split folder names; ``test_split=None`` gives an empty
        test split.
      image_size: None: every image of a split must have the same size (else an error);
        an int S or (H, W): every image is resized to H x W with Pillow
        ``resize((W, H), BILINEAR)`` (antialiased when shrinking, as torchvision's
        ``Resize((H, W))`` on PIL images; the aspect ratio is not kept), images already
        H x W are left untouched.
      mean, std: per-channel normalisation constants (0..1 scale). None: the CIFAR
        constants (``base.CIFAR_MEAN/STD``) for RGB, their channel average
        (:data:`GREY_MEAN`, :data:`GREY_STD`) for grey; ``'train'``: computed from the
        kept training images (population std over all pixels).
      mode: ``'auto'``: grey ([.., 1]) if every decoded image of both splits is grey
        (Pillow mode L, 1, I, ...), else RGB ([.., 3]; grey images are replicated into
        3 channels, palette/RGBA/CMYK converted by Pillow ``convert('RGB')``);
        ``'RGB'``; ``'L'`` (Pillow ``convert('L')``).
      classes: class folder names in label order (head first); default sorted names.
      num_workers: decoding threads (Pillow releases the GIL while decoding: helps for
        large images; for 32x32 images one thread is fastest).

    Returns:
      ArrayDataset ``'image_folder_lt'``: train ``[N, H, W, C]`` uint8 class-sorted (with
      a ratio: in the official selection's order within a class), test class-sorted in
      file order; ``selected`` ``[N]`` = indices into the class-sorted training file list
      (``list_image_folder(path).train_files``; ``arange(N)`` when ``ratio`` is None).
      ``info``: source, path, kind (folder/zip), splits, ratio, profile, seed, img_max,
      image_size, mode, num_train_files, and ``train_files_sha256`` of the full listing.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is not supported; valid choices are {PROFILES}")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not supported; valid choices are {MODES}")
    hw = _size(image_size)
    tree = _Tree(_check_path(path))
    try:
        index = _index(tree, train_split, test_split, classes)
        num_classes = len(index.classes)
        selected, img_max = long_tail_selection(index, ratio, img_max, profile, seed)
        read = tree.reader()
        workers = max(1, int(num_workers))
        train_files = [index.train_files[i] for i in selected]
        train_dec = _decode_all(read, train_files, hw, workers)
        test_dec = _decode_all(read, index.test_files, hw, workers)
    finally:
        tree.close()
    if mode == "auto":
        rgb = any(a.ndim == 3 for a in train_dec + test_dec)
    else:
        rgb = mode == "RGB"
    if not rgb:
        # Pillow's L conversion (ITU-R 601-2 luma) for any RGB image.
        from PIL import Image
        train_dec = [a if a.ndim == 2 else np.asarray(Image.fromarray(a).convert("L"))
                     for a in train_dec]
        test_dec = [a if a.ndim == 2 else np.asarray(Image.fromarray(a).convert("L"))
                    for a in test_dec]
    train_images = _stack(train_dec, train_files, rgb, train_split)
    test_images = _stack(test_dec, index.test_files, rgb, str(test_split))
    if len(test_images) and test_images.shape[1:] != train_images.shape[1:]:
        raise ValueError(f"train images are {train_images.shape[1:3]} but test images are "
                         f"{test_images.shape[1:3]} (height, width); pass image_size= to "
                         "resize both")
    if not len(test_images):
        test_images = np.zeros((0,) + train_images.shape[1:], np.uint8)
    m, s = _constants(mean, std, train_images)
    info = {"source": "image_folder", "path": index.path, "kind": tree.kind,
            "train_split": train_split, "test_split": test_split,
            "ratio": None if ratio is None else float(ratio), "profile": profile,
            "seed": int(seed), "img_max": None if img_max is None else float(img_max),
            "image_size": None if hw is None else list(hw), "mode": "RGB" if rgb else "L",
            "num_train_files": len(index.train_files),
            "train_files_sha256": files_sha256(index.train_files)}
    return ArrayDataset(
        name="image_folder_lt",
        train=ArraySplit(train_images, index.train_labels[selected]),
        test=ArraySplit(test_images, index.test_labels),
        num_classes=num_classes, class_names=index.classes, mean=m, std=s,
        selected=selected, info=info)
