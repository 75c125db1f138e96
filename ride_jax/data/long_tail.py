"""Long-tail profiles, the official subset selection and shot groups (NumPy only).

Conventions (official ``imbalance_cifar.py`` of LDAM-DRW, copied as RIDE
``data_loader/imbalance_cifar.py``; shot groups as RIDE ``test.py``):

* ``ratio`` is the imbalance ratio n_max / n_min, a number >= 1 (100, 50, 10); the
  official code's ``imb_factor`` is ``1 / ratio``. A value below 1 is rejected (it is
  almost surely an ``imb_factor`` passed by mistake).
* Exponential profile: ``n_c = int(img_max * (1 / ratio) ** (c / (C - 1)))`` for
  c = 0..C-1, truncated with ``int()`` as the official code does. Class 0 is the head.
* Step profile: the first ``C // 2`` classes keep ``int(img_max)``, the others
  ``int(img_max / ratio)``.
* Selection: one legacy MT19937 stream seeded once (``np.random.seed(0)`` in the
  official dataset), then for c = 0..C-1: the ascending positions of class c in the
  original training order, shuffled, the first n_c kept. The result is class-sorted.
  A local ``np.random.RandomState`` gives the same stream without touching numpy's
  global state.
* Shot groups from *training* counts: many n > 100, medium 20 <= n <= 100, few n < 20.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PROFILES = ("exp", "step")


def _check_ratio(ratio: Any) -> float:
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"ratio must be a number >= 1, got {ratio!r}") from None
    if not np.isfinite(r) or r < 1.0:
        hint = (f"; the official imb_factor {r:g} is ratio={1 / r:g}" if 0 < r < 1 else "")
        raise ValueError(f"ratio={ratio!r} is not a valid imbalance ratio: use n_max / n_min "
                         f">= 1 (e.g. 100, 50, 10; 1 is balanced){hint}")
    return r


def long_tail_counts(num_classes: int, img_max: float, ratio: float,
                     profile: str = "exp") -> np.ndarray:
    """Per-class image counts of a long-tailed training set.

    Args:
      num_classes: C >= 1.
      img_max: images of the head class (500 for CIFAR-100, 5000 for CIFAR-10).
      ratio: n_max / n_min >= 1.
      profile: ``'exp'`` or ``'step'``.

    Returns:
      ``[C]`` int64 counts, head first.
    """
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is not supported; valid choices are {PROFILES}")
    r = _check_ratio(ratio)
    factor = 1.0 / r
    if profile == "exp":
        exps = [c / (num_classes - 1.0) if num_classes > 1 else 0.0 for c in range(num_classes)]
        counts = [int(img_max * factor ** e) for e in exps]
    else:
        half = num_classes // 2
        counts = [int(img_max)] * half + [int(img_max * factor)] * (num_classes - half)
    if min(counts) < 1:
        raise ValueError(f"img_max={img_max} with ratio={ratio} leaves classes with no image")
    return np.asarray(counts, dtype=np.int64)


def select_long_tail(labels: Any, counts: Any, seed: int = 0) -> np.ndarray:
    """Indices of the official long-tailed subset, class-sorted.

    Args:
      labels: ``[N]`` integer labels of the full training set in its ORIGINAL order
        (the CIFAR training-file order).
      counts: ``[C]`` images to keep per class (``long_tail_counts``).
      seed: seed of the legacy MT19937 stream (0 in every official script).

    Returns:
      ``[sum(counts)]`` int64 indices into ``labels``: class 0's kept images first, each
      class in the order the official shuffle leaves them.
    """
    labels = np.asarray(labels)
    counts = np.asarray(counts)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {labels.shape} "
                         f"dtype {labels.dtype}")
    if counts.ndim != 1 or len(counts) == 0:
        raise ValueError(f"counts must be a non-empty 1-D array, got shape {counts.shape}")
    bad = np.flatnonzero((labels < 0) | (labels >= len(counts)))
    if bad.size:
        raise ValueError(f"labels out of range [0, {len(counts)}) at positions "
                         f"{bad[:10].tolist()}: values {labels[bad[:10]].tolist()}")
    rng = np.random.RandomState(seed)
    selected = []
    for c, n_c in enumerate(counts):
        idx = np.flatnonzero(labels == c)
        if n_c > len(idx):
            raise ValueError(f"class {c} has {len(idx)} images, fewer than the {int(n_c)} "
                             "asked for")
        rng.shuffle(idx)
        selected.append(idx[:n_c])
    return np.concatenate(selected).astype(np.int64)


def shot_masks(train_counts: Any, many_above: int = 100, few_below: int = 20
               ) -> dict[str, np.ndarray]:
    """Many / medium / few class masks from TRAINING counts.

    many: n > ``many_above``; medium: ``few_below`` <= n <= ``many_above``;
    few: n < ``few_below``.

    Args:
      train_counts: ``[C]`` training images per class.

    Returns:
      ``{'many': [C] bool, 'medium': [C] bool, 'few': [C] bool}`` (a partition).
    """
    n = np.asarray(train_counts)
    if n.ndim != 1 or len(n) == 0:
        raise ValueError(f"train_counts must be a non-empty 1-D array, got shape {n.shape}")
    return {"many": n > many_above, "medium": (n >= few_below) & (n <= many_above),
            "few": n < few_below}


# --------------------------------------------------------------------------- test-agnostic
# The shifted test sets of the test-agnostic protocol (SADE, Zhang et al., NeurIPS 2022;
# ``Vanint/SADE-AgnosticLT`` @ cba11b8b). CIFAR's are generated from the balanced test set
# by the training-set code run with ``train=False`` (``imbalance_cifar.py``:
# ``IMBALANCECIFAR100(train=False, imb_factor=1/ratio, reverse=direction == 'backward')``);
# ImageNet-LT, Places-LT and iNaturalist 2018 ship fixed lists
# (:mod:`ride_jax.data.test_agnostic`).

SHIFT_DIRECTIONS = ("forward", "backward", "uniform")
# The eleven test class distributions (forward-50 ... uniform ... backward-50).
SHIFTS = ("forward50", "forward25", "forward10", "forward5", "forward2", "uniform",
          "backward2", "backward5", "backward10", "backward25", "backward50")
# iNaturalist 2018 has 3 validation images per class: five distributions only.
INAT_SHIFTS = ("forward3", "forward2", "uniform", "backward2", "backward3")


def _check_direction(direction: Any, ratio: float) -> str:
    if direction not in SHIFT_DIRECTIONS:
        raise ValueError(f"direction={direction!r} is not supported; valid choices are "
                         f"{SHIFT_DIRECTIONS}")
    if direction == "uniform" and ratio != 1.0:
        raise ValueError(f"direction='uniform' needs ratio=1, got ratio={ratio!r}; use "
                         f"'forward' or 'backward' for ratio > 1")
    return direction


def shift_name(direction: str, ratio: float) -> str:
    """``('forward', 50)`` -> ``'forward50'``; any direction with ratio 1 -> ``'uniform'``."""
    r = _check_ratio(ratio)
    _check_direction(direction, r)
    return "uniform" if r == 1.0 else f"{direction}{r:g}"


def parse_shift(name: str) -> tuple[str, float]:
    """A test distribution name -> ``(direction, ratio)``.

    ``'forward50'`` -> ``('forward', 50.0)``, ``'backward2'`` -> ``('backward', 2.0)``,
    ``'uniform'`` -> ``('uniform', 1.0)`` (``shifted_test_indices`` accepts all three).
    The ratio is n_max / n_min >= 1 of the test class sizes (SADE's ``imb_factor`` is
    ``1 / ratio``).
    """
    if not isinstance(name, str):
        raise ValueError(f"shift name must be a string such as {SHIFTS}, got {name!r}")
    if name == "uniform":
        return "uniform", 1.0
    for direction in ("forward", "backward"):
        if name.startswith(direction):
            tail = name[len(direction):]
            try:
                r = float(tail)
            except ValueError:
                break
            if not np.isfinite(r) or r < 1.0:
                break
            return direction, r
    raise ValueError(f"{name!r} is not a test distribution name: use 'uniform' or "
                     f"'forward<ratio>' / 'backward<ratio>' with ratio >= 1, e.g. {SHIFTS}")


def shifted_counts(num_classes: int, per_class: int, ratio: float, direction: str,
                   train_counts: Any = None) -> np.ndarray:
    """Per-class image counts of a forward / backward shifted test set.

    ``n_k = int(per_class * (1 / ratio) ** (k / (C - 1)))`` with k the class's rank:
    forward gives rank k = c (class 0 the largest), backward k = C - 1 - c (the mirror
    image, computed by the same expression, so ``backward == forward[::-1]`` exactly).
    ``ratio = 1`` (or ``direction='uniform'``) gives ``per_class`` everywhere.

    Args:
      num_classes: C >= 2.
      per_class: images per class of the balanced test set (100 for CIFAR-100).
      ratio: n_max / n_min >= 1.
      direction: ``'forward'``, ``'backward'`` or ``'uniform'`` (ratio 1 only).
      train_counts: optional ``[C]`` training counts. When given, k is the class's rank
        by training frequency (0 = most frequent, a stable descending sort: ties keep
        label order), as for the shipped ImageNet-LT / Places-LT lists, whose tie order
        is arbitrary (only the counts sorted by rank are reproduced there). When None, k
        follows the label order (CIFAR, whose class 0 is the training head).

    Returns:
      ``[C]`` int64 counts in label order (a count may be 0 for tiny ``per_class``).
    """
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (the profile divides by "
                         f"C - 1), got {num_classes!r}")
    if not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}")
    r = _check_ratio(ratio)
    _check_direction(direction, r)
    factor = 1.0 / r
    by_rank = [int(per_class * factor ** (k / (num_classes - 1.0)))
               for k in range(num_classes)]
    if train_counts is None:
        rank = np.arange(num_classes)
    else:
        tc = np.asarray(train_counts)
        if tc.shape != (num_classes,):
            raise ValueError(f"train_counts must have shape ({num_classes},), got {tc.shape}")
        rank = np.empty(num_classes, np.int64)
        rank[np.argsort(-tc, kind="stable")] = np.arange(num_classes)
    if direction == "backward":
        rank = num_classes - 1 - rank
    return np.asarray(by_rank, np.int64)[rank]


def shifted_test_indices(labels: Any, ratio: float, direction: str, seed: int = 0, *,
                         num_classes: int | None = None) -> np.ndarray:
    """Indices of a forward / backward shifted subset of a BALANCED test set (CIFAR).

    Restates SADE's generation (sade-spec §5.2; ``imbalance_cifar.py`` with
    ``train=False``): ``n_c = shifted_counts(C, n, ratio, direction)[c]`` with n the
    per-class size of the balanced set, classes in natural label order (the order of the
    training imbalance); one legacy MT19937 stream seeded once with ``seed``
    (``np.random.seed(0)`` in the official dataset; a local ``RandomState`` here, so the
    global numpy state is untouched); then for c = 0..C-1 the ascending positions of
    class c are shuffled and the first n_c kept. Every class consumes the same draws
    whatever the ratio and direction, so all the subsets of one seed are nested per-class
    prefixes of one permutation, and ``ratio=1`` returns every index (class-sorted).

    Args:
      labels: ``[N]`` integer labels of the balanced test set in its ORIGINAL order (the
        torchvision / test-file order), every class 0..C-1 with the same count n.
      ratio: n_max / n_min >= 1 of the shifted test set (50, 25, 10, 5, 2; 1 = all).
      direction: ``'forward'`` (class 0 keeps the most), ``'backward'`` (the mirror) or
        ``'uniform'`` (ratio 1 only).
      seed: seed of the legacy stream (0 in the official code).
      num_classes: C; default ``labels.max() + 1``. Pass it to reject a test set whose
        last classes are absent.

    Returns:
      ``[sum_c n_c]`` int64 indices into ``labels``: class 0's kept images first, each
      class in the order the shuffle leaves them.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a non-empty 1-D integer array, got shape "
                         f"{labels.shape} dtype {labels.dtype}")
    if labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got {int(labels.min())} at position "
                         f"{int(np.argmin(labels))}")
    r = _check_ratio(ratio)
    _check_direction(direction, r)
    c_seen = int(labels.max()) + 1
    num_c = c_seen if num_classes is None else num_classes
    if not isinstance(num_c, (int, np.integer)) or num_c < c_seen:
        raise ValueError(f"num_classes={num_classes!r} must be an integer >= labels.max() "
                         f"+ 1 = {c_seen}")
    if num_c < 2:
        raise ValueError(f"a shifted test set needs C >= 2 classes, got C={num_c}")
    per_class = np.bincount(labels, minlength=num_c)
    if per_class.min() != per_class.max():
        lo, hi = int(np.argmin(per_class)), int(np.argmax(per_class))
        raise ValueError(f"labels must be a balanced test set (the same count in every class "
                         f"0..{num_c - 1}); got {per_class[lo]} in class {lo} and "
                         f"{per_class[hi]} in class {hi}")
    counts = shifted_counts(int(num_c), int(per_class[0]), r, direction)
    rng = np.random.RandomState(seed)
    selected = []
    for c, n_c in enumerate(counts):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        selected.append(idx[:n_c])
    return np.concatenate(selected).astype(np.int64)


def shift_prior(*, labels: Any = None, counts: Any = None,
                num_classes: int | None = None) -> np.ndarray:
    """The test class prior of a (shifted) test set, for post-hoc prior correction.

    Give exactly one of:
      labels: ``[N]`` labels of the test set (e.g. ``labels[shifted_test_indices(...)]``
        or the labels of ``shifted_test_list``); ``num_classes`` is then required, since
        a shifted set may have empty classes (iNat forward-3 / backward-3).
      counts: ``[C]`` per-class counts (e.g. ``shifted_counts(...)``).

    Returns:
      ``[C]`` float64 prior ``p_c = n_c / sum(n)``, summing to 1.
    """
    if (labels is None) == (counts is None):
        raise ValueError("shift_prior takes exactly one of labels=... or counts=..., got "
                         f"{'both' if labels is not None else 'neither'}")
    if labels is not None:
        y = np.asarray(labels)
        if y.ndim != 1 or y.size == 0 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels must be a non-empty 1-D integer array, got shape "
                             f"{y.shape} dtype {y.dtype}")
        if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"shift_prior(labels=...) needs num_classes (a positive "
                             f"integer), got {num_classes!r}")
        if y.min() < 0 or y.max() >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got values from "
                             f"{int(y.min())} to {int(y.max())}")
        n = np.bincount(y, minlength=num_classes)
    else:
        n = np.asarray(counts)
        if n.ndim != 1 or n.size == 0 or not np.all(np.isfinite(n)) or n.min() < 0:
            raise ValueError(f"counts must be a non-empty 1-D array of finite values >= 0, "
                             f"got shape {n.shape}")
        if num_classes is not None and len(n) != num_classes:
            raise ValueError(f"counts has {len(n)} classes, num_classes={num_classes!r}")
        if n.sum() <= 0:
            raise ValueError("counts sum to 0: the test set is empty")
    return n.astype(np.float64) / float(n.sum())
