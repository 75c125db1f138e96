"""The shipped shifted test lists of the test-agnostic protocol (NumPy only, no TensorFlow).

SADE (Zhang et al., NeurIPS 2022; ``Vanint/SADE-AgnosticLT`` @ cba11b8b, ``data_txt/``)
evaluates on forward / uniform / backward long-tailed test sets. CIFAR's are generated
(:func:`ride_jax.data.long_tail.shifted_test_indices`); ImageNet-LT, Places-LT and
iNaturalist 2018 ship fixed random per-class subsets (unknown seed: use them verbatim),
stored gzipped, content unchanged, in ``ride_jax/data/lists/test_agnostic/``:

* ``ImageNet_LT_{forward,backward}{50,25,10,5,2}.txt.gz`` (subsets of ImageNet_LT_test);
* ``Places_LT_{forward,backward}{50,25,10,5,2}.txt.gz`` (subsets of Places_LT_test; SADE's
  ``Places_LT_v2`` paths ``val_256/Places365_val_<n>.jpg``, original Places365 labels);
* ``iNaturalist18_{forward,backward}{3,2}.txt.gz`` (subsets of iNaturalist18_val);
* the uniform sets, which are the plain test lists: ``ImageNet_LT_test.txt.gz`` and
  ``iNaturalist18_val.txt.gz`` here (facebookresearch/classifier-balancing @ f162adef,
  byte-identical before gzip) and ``../Places_LT_test.txt.gz``.

Per-class sizes: ``int(N * (1 / ratio) ** (k / (C - 1)))`` with k the class's training
frequency rank (reversed for backward), N = 50 / 100 / 3 for ImageNet-LT / Places-LT /
iNat (C = 1000 / 365 / 8142); iNat forward-3 and backward-3 miss 1 and 11 images of that
(1 and 8 empty classes), as shipped.

Every shifted list (``paths='test_list'``) is a subset of the dataset's test list:
:func:`shifted_test_positions` gives each distribution as rows of the uniform list
(:func:`list_positions`: by path, the labels checked), so one evaluation of the test
list serves all of them (``python -m ride_jax.analysis shift --image-root``).
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import os

import numpy as np

from ride_jax.data.long_tail import INAT_SHIFTS, SHIFTS, parse_shift, shift_name

LISTS_PACKAGE = "ride_jax.data.lists"
LIST_DIR = "test_agnostic"
PATH_STYLES = ("test_list", "shipped")

# dataset -> (file prefix, test distributions, uniform list: (folder, file name)).
_DATASETS = {
    "imagenet_lt": ("ImageNet_LT", SHIFTS, (LIST_DIR, "ImageNet_LT_test.txt.gz")),
    "places_lt": ("Places_LT", SHIFTS, (None, "Places_LT_test.txt.gz")),
    "inat2018": ("iNaturalist18", INAT_SHIFTS, (LIST_DIR, "iNaturalist18_val.txt.gz")),
}
DATASETS = tuple(_DATASETS)
_PLACES_SHIPPED_DIR = "val_256/"


def _check_dataset(dataset: str) -> str:
    if dataset in ("cifar10_lt", "cifar100_lt"):
        raise ValueError(f"{dataset!r} has no shipped shifted lists: its shifted test sets "
                         f"are generated, use ride_jax.data.long_tail.shifted_test_indices "
                         f"on the balanced test labels (valid datasets here: {DATASETS})")
    if dataset not in _DATASETS:
        raise ValueError(f"dataset={dataset!r} has no shipped shifted test lists; valid "
                         f"choices are {DATASETS}")
    return dataset


def shift_names(dataset: str) -> tuple[str, ...]:
    """The protocol's test distributions of ``dataset`` (11, or iNat's 5)."""
    return _DATASETS[_check_dataset(dataset)][1]


def parse_list(text: str, source: str) -> tuple[tuple[str, ...], np.ndarray]:
    """``path label`` lines -> ``(paths, [N] int64 labels)``: the format of every list
    the package ships (``tfds_sources.read_list`` reads them with it); ``source`` names
    the list in errors."""
    paths, labels = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ValueError(f"{source}:{n}: expected 'relative/path label', got {line!r}")
        paths.append(parts[0])
        labels.append(int(parts[1]))
    if not paths:
        raise ValueError(f"list {source!r} is empty")
    return tuple(paths), np.asarray(labels, np.int64)


@functools.lru_cache(maxsize=8)
def _read_packaged(folder: str | None, filename: str) -> tuple[tuple[str, ...], np.ndarray]:
    res = importlib.resources.files(LISTS_PACKAGE)
    if folder:
        res = res.joinpath(folder)
    res = res.joinpath(filename)
    source = f"{LISTS_PACKAGE}/{folder + '/' if folder else ''}{filename}"
    if not res.is_file():
        raise FileNotFoundError(f"the shipped list {source} is missing: the package data "
                                f"of {LISTS_PACKAGE} was not installed")
    paths, labels = parse_list(gzip.decompress(res.read_bytes()).decode(), source)
    labels.setflags(write=False)
    return paths, labels


def _places_test_paths() -> dict[str, tuple[str, int]]:
    paths, labels = _read_packaged(None, "Places_LT_test.txt.gz")
    return {os.path.basename(p): (p, int(c)) for p, c in zip(paths, labels)}


def shifted_test_list(dataset: str, name: str, *, paths: str = "test_list"
                      ) -> tuple[tuple[str, ...], np.ndarray]:
    """A shipped test distribution of the test-agnostic protocol.

    Args:
      dataset: ``'imagenet_lt'``, ``'places_lt'`` or ``'inat2018'``.
      name: one of ``shift_names(dataset)`` (``'forward50'``, ..., ``'uniform'``, ...,
        ``'backward50'``; iNat: ``'forward3'``, ``'forward2'``, ``'uniform'``,
        ``'backward2'``, ``'backward3'``).
      paths: ``'test_list'`` (default): the paths of the dataset's test list
        (ImageNet_LT_test / the shipped Places_LT_test / iNaturalist18_val), so one
        image root serves the test split and every shifted set. Only Places-LT differs:
        SADE's ``val_256/Places365_val_<n>.jpg`` becomes the test list's
        ``val/<category>/Places365_val_<n>.jpg`` (same image, same label).
        ``'shipped'``: the lines as SADE ships them (Places uniform then also uses
        ``val_256/<file>``).

    Returns:
      ``(paths, labels)``: ``N`` relative paths and ``[N]`` int64 labels, in file order
      (the shifted lists are class-sorted, the uniform ones are the test lists' order).
      Places labels are the original Places365 ids, not the training-frequency rank
      SADE remaps them to at load time.
    """
    prefix, names, uniform = _DATASETS[_check_dataset(dataset)]
    if paths not in PATH_STYLES:
        raise ValueError(f"paths={paths!r} is not supported; valid choices are {PATH_STYLES}")
    try:
        canonical = shift_name(*parse_shift(name))
    except ValueError:
        canonical = None
    if canonical not in names:
        raise ValueError(f"name={name!r} is not a test distribution of {dataset}; valid "
                         f"choices are {names}")
    if canonical == "uniform":
        p, y = _read_packaged(*uniform)
        if dataset == "places_lt" and paths == "shipped":
            p = tuple(_PLACES_SHIPPED_DIR + os.path.basename(q) for q in p)
        return p, y.copy()
    p, y = _read_packaged(LIST_DIR, f"{prefix}_{canonical}.txt.gz")
    if dataset == "places_lt" and paths == "test_list":
        table = _places_test_paths()
        out = []
        for q, c in zip(p, y):
            hit = table.get(os.path.basename(q))
            if hit is None or hit[1] != c:
                raise ValueError(f"{prefix}_{canonical}: {q} (label {c}) is not in "
                                 f"Places_LT_test.txt.gz with that label")
            out.append(hit[0])
        p = tuple(out)
    return p, y.copy()


def list_positions(paths, labels, uniform_paths, uniform_labels, *,
                   source: str = "the list") -> np.ndarray:
    """The rows of a list's ``(paths, labels)`` in the uniform list ``(uniform_paths,
    uniform_labels)``: ``[N]`` int64 positions, in the list's order.

    ``uniform_paths`` is a sequence of paths or a ready ``{path: position}`` dict.

    Raises:
      ValueError: (one line, naming ``source``) a path that is not in the uniform list,
        whose label there differs, or a uniform list naming a path twice.
    """
    if isinstance(uniform_paths, dict):
        index = uniform_paths
    else:
        index = uniform_index(uniform_paths)
    uniform_labels = np.asarray(uniform_labels)
    labels = np.asarray(labels)
    if len(labels) != len(paths):
        raise ValueError(f"{source}: {len(paths)} paths but {len(labels)} labels")
    out = np.empty(len(paths), np.int64)
    for k, (p, c) in enumerate(zip(paths, labels)):
        row = index.get(p)
        if row is None:
            raise ValueError(f"{source}: {p} is not in the uniform (test) list")
        if uniform_labels[row] != c:
            raise ValueError(f"{source}: {p} has label {int(c)}, the uniform (test) list "
                             f"gives it {int(uniform_labels[row])}")
        out[k] = row
    return out


def uniform_index(paths) -> dict[str, int]:
    """``{path: position}`` of a uniform (test) list; a path listed twice is an error."""
    index = {p: i for i, p in enumerate(paths)}
    if len(index) != len(paths):
        seen = set()
        twice = next(p for p in paths if p in seen or seen.add(p))
        raise ValueError(f"the uniform (test) list names {twice} twice")
    return index


def shifted_test_positions(dataset: str, names=None) -> dict[str, np.ndarray]:
    """Every test distribution of ``dataset`` as rows of its uniform (test) list.

    Args:
      dataset: ``'imagenet_lt'``, ``'places_lt'`` or ``'inat2018'``.
      names: distributions (default: :func:`shift_names`).

    Returns:
      ``{name: [n] int64 positions}`` in ``shifted_test_list(dataset, 'uniform')`` (the
      ``paths='test_list'`` paths, so one evaluation of the test list serves them all);
      ``'uniform'`` is ``arange(N)``.

    Raises:
      ValueError: a listed path that is not in the uniform list, or with another label
        there (:func:`list_positions`).
    """
    names = shift_names(dataset) if names is None else tuple(names)
    uniform_paths, uniform_labels = shifted_test_list(dataset, "uniform")
    index = uniform_index(uniform_paths)
    out = {}
    for name in names:
        paths, labels = shifted_test_list(dataset, name)
        out[name] = list_positions(paths, labels, index, uniform_labels,
                                   source=f"{dataset} {name}")
    return out
