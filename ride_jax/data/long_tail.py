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
