"""NumPy analyses behind the RIDE paper's motivation (bias / variance, hardest negatives).

Every function is pure NumPy, has no hidden state and validates its inputs, raising
``ValueError`` with a message that names the bad argument, what it got and what is
expected. Shapes: N test examples, C classes, M models, E experts.

Shot groups come from TRAINING counts (:func:`ride_jax.data.long_tail.shot_masks`):
many n > 100, medium 20 <= n <= 100, few n < 20. A group statistic is the MEAN OF
PER-CLASS VALUES over the group's classes that have test examples, as the project's
many / medium / few accuracies are (``ride_jax.metrics.summarize``); a group with no
such class is reported as ``None``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ride_jax.data.long_tail import shot_masks

GROUPS = ("many", "medium", "few")
SPLITS = ("all",) + GROUPS


# --------------------------------------------------------------------------- validation


def _check_num_classes(num_classes: Any) -> int:
    if (isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer))
            or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def _int_array(x: Any, name: str, ndim: int) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D integer array, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {a.dtype}")
    return a.astype(np.int64)


def _check_range(a: np.ndarray, name: str, num_classes: int) -> None:
    bad = np.flatnonzero((a.ravel() < 0) | (a.ravel() >= num_classes))
    if bad.size:
        pos = [np.unravel_index(i, a.shape) for i in bad[:5]]
        pos = [tuple(int(j) for j in p) if len(p) > 1 else int(p[0]) for p in pos]
        raise ValueError(f"{name} out of range [0, {num_classes}): {bad.size} value(s), e.g. "
                         f"{a.ravel()[bad[:5]].tolist()} at positions {pos}")


def _labels(labels: Any, num_classes: int, n: int | None = None) -> np.ndarray:
    y = _int_array(labels, "labels", 1)
    if n is not None and len(y) != n:
        raise ValueError(f"labels has {len(y)} entries but {n} examples were given "
                         f"(expected labels of shape [{n}])")
    if len(y) == 0:
        raise ValueError("labels is empty: at least one example is needed")
    _check_range(y, "labels", num_classes)
    return y


def _float_array(x: Any, name: str, ndim: int) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {a.shape}")
    if a.size and not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    return a.astype(np.float64)


def _train_counts(train_counts: Any) -> np.ndarray:
    n = np.asarray(train_counts)
    if n.ndim != 1 or len(n) == 0:
        raise ValueError(f"train_counts must be a non-empty 1-D array of training images "
                         f"per class, got shape {n.shape}")
    if not np.issubdtype(n.dtype, np.number) or not np.all(np.isfinite(n)) or np.any(n < 0):
        raise ValueError(f"train_counts must hold non-negative counts, got {n.tolist()[:10]}")
    return n


# --------------------------------------------------------------------------- bias / variance


def bias_variance(predictions: Any, labels: Any, num_classes: int) -> dict[str, np.ndarray]:
    """Per-example 0-1 loss bias / variance decomposition (Domingos, ICML 2000).

    The decomposition RIDE's Figure 1a uses: M models, each trained on an independently
    resampled training set, predict the N test examples. For example i with label y_i:

    * main prediction ``y_m``: the most frequent prediction among the M models; a tie
      goes to the SMALLEST class index;
    * ``bias = 1[y_m != y_i]``;
    * ``variance = mean_models 1[pred != y_m]``;
    * ``loss = mean_models 1[pred != y_i]``;
    * ``c2``: Domingos's multiclass coefficient (Theorem 2) with noise taken as 0:
      ``1`` if bias is 0, else ``-P(pred = y_i | pred != y_m)``; when bias is 1 and
      variance is 0 that conditional is undefined and c2 is set to 0 (it multiplies 0).

    Then ``loss = bias + c2 * variance`` holds exactly for every example. Averaging
    the per-example entries over examples gives Domingos's aggregate terms: the unbiased
    variance ``V_u = mean((1 - bias) * variance)``, the biased variance
    ``V_b = mean(bias * variance)`` and the net variance
    ``mean(c2 * variance) = V_u - mean(bias * P(pred = y | pred != y_m) * variance)``.

    Args:
      predictions: ``[M, N]`` int, the predicted class of model m on example n.
      labels: ``[N]`` int true classes.
      num_classes: C; every class index must be in ``[0, C)``.

    Returns:
      A dict of ``[N]`` arrays: ``'main_prediction'`` (int64), ``'bias'``,
      ``'variance'``, ``'loss'``, ``'c2'``, ``'variance_unbiased'`` ((1 - bias) *
      variance), ``'variance_biased'`` (bias * variance) and ``'net_variance'``
      (c2 * variance), float64.
    """
    c = _check_num_classes(num_classes)
    p = _int_array(predictions, "predictions", 2)
    m, n = p.shape
    if m == 0 or n == 0:
        raise ValueError(f"predictions must be [M, N] with M >= 1 models and N >= 1 examples, "
                         f"got shape {p.shape}")
    _check_range(p, "predictions", c)
    y = _labels(labels, c, n)

    # votes[i, k]: models predicting class k on example i; argmax takes the first
    # (smallest) class among ties.
    flat = (np.arange(n)[None, :] * c + p).ravel()
    votes = np.bincount(flat, minlength=n * c).reshape(n, c)
    main = votes.argmax(1)
    rows = np.arange(n)
    bias = (main != y).astype(np.float64)
    variance = 1.0 - votes[rows, main] / m
    loss = 1.0 - votes[rows, y] / m
    off_main = m - votes[rows, main]                  # models with pred != y_m
    with np.errstate(invalid="ignore", divide="ignore"):
        cond = np.where(off_main > 0, votes[rows, y] / np.maximum(off_main, 1), 0.0)
    c2 = np.where(bias == 0, 1.0, -cond)
    return {
        "main_prediction": main.astype(np.int64),
        "bias": bias,
        "variance": variance,
        "loss": loss,
        "c2": c2,
        "variance_unbiased": (1.0 - bias) * variance,
        "variance_biased": bias * variance,
        "net_variance": c2 * variance,
    }


def per_class_means(values: Any, labels: Any, num_classes: int) -> np.ndarray:
    """Mean of a per-example value within each true class.

    Args:
      values: ``[N]`` numbers (e.g. the ``'bias'`` of :func:`bias_variance`).
      labels: ``[N]`` int true classes in ``[0, C)``.
      num_classes: C.

    Returns:
      ``[C]`` float64; NaN for a class without examples.
    """
    c = _check_num_classes(num_classes)
    v = _float_array(values, "values", 1)
    y = _labels(labels, c, len(v))
    count = np.bincount(y, minlength=c).astype(np.float64)
    total = np.bincount(y, weights=v, minlength=c)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def group_means(per_class: Any, train_counts: Any) -> dict[str, float | None]:
    """Many / medium / few means of a per-class statistic, NaN classes left out.

    Args:
      per_class: ``[C]`` per-class values, NaN for a class without test examples.
      train_counts: ``[C]`` TRAINING images per class (many n > 100, medium 20..100,
        few n < 20).

    Returns:
      ``{'many', 'medium', 'few'}``: the mean over the group's classes with a finite
      value, or ``None`` when there is none (as ``ride_jax.metrics.summarize``).
    """
    v = _float_array(per_class, "per_class", 1)
    n = _train_counts(train_counts)
    if len(v) != len(n):
        raise ValueError(f"per_class has {len(v)} classes but train_counts has {len(n)} "
                         "(expected both of shape [C])")
    out: dict[str, float | None] = {}
    for name, mask in shot_masks(n).items():
        vals = v[mask & ~np.isnan(v)]
        out[name] = float(vals.mean()) if vals.size else None
    return out


def bias_variance_table(predictions: Any, labels: Any, train_counts: Any
                        ) -> dict[str, dict[str, float | None]]:
    """Bias, variance and 0-1 loss per shot group (RIDE Fig. 1a).

    Each entry is a class mean: per-class means of the per-example terms of
    :func:`bias_variance`, then averaged over the classes of the split that have test
    examples (also for ``'all'``), as the project's group accuracies are.

    Args:
      predictions: ``[M, N]`` int predictions of M independently trained models.
      labels: ``[N]`` int true classes.
      train_counts: ``[C]`` TRAINING images per class; C = ``len(train_counts)``.

    Returns:
      ``{'all' | 'many' | 'medium' | 'few': {'bias', 'variance', 'loss'}}`` floats, each
      ``None`` for a group with no class that has test examples.
    """
    n = _train_counts(train_counts)
    c = len(n)
    bv = bias_variance(predictions, labels, c)
    y = np.asarray(labels).astype(np.int64)
    table: dict[str, dict[str, float | None]] = {s: {} for s in SPLITS}
    for key in ("bias", "variance", "loss"):
        pc = per_class_means(bv[key], y, c)
        table["all"][key] = float(np.nanmean(pc))    # >= 1 class has examples (N >= 1)
        for name, value in group_means(pc, n).items():
            table[name][key] = value
    return table


def bias_variance_interval(predictions: Any, labels: Any, train_counts: Any, *,
                           samples: int = 1000, level: float = 0.9, seed: int = 0
                           ) -> dict[str, dict[str, list[float] | None]]:
    """Bootstrap interval of :func:`bias_variance_table` over the M models.

    Each of ``samples`` draws takes M of the models with replacement (a model drawn twice
    votes twice) and recomputes the table; the interval is the central ``level`` range of
    the draws (percentiles). It says how much the split values depend on which training
    sets happened to be drawn; the test set is fixed, so it does not cover test-set noise.

    Args:
      predictions: ``[M, N]`` int predictions of M >= 2 models.
      labels: ``[N]`` int true classes.
      train_counts: ``[C]`` training images per class.
      samples: bootstrap draws (>= 1).
      level: central coverage in (0, 1).
      seed: NumPy seed of the draws (the same seed gives the same interval).

    Returns:
      ``{split: {'bias' | 'variance' | 'loss': [low, high]}}``, a split ``None`` where the
      table's split is ``None``.
    """
    p = _int_array(predictions, "predictions", 2)
    if p.shape[0] < 2:
        raise ValueError(f"a bootstrap over models needs M >= 2 models, got {p.shape[0]}")
    if int(samples) < 1:
        raise ValueError(f"samples={samples} must be >= 1")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level={level} must be in (0, 1)")
    rng = np.random.default_rng(seed)
    m = p.shape[0]
    draws: dict[str, dict[str, list[float]]] = {s: {"bias": [], "variance": [], "loss": []}
                                                 for s in SPLITS}
    for _ in range(int(samples)):
        table = bias_variance_table(p[rng.integers(0, m, size=m)], labels, train_counts)
        for split, row in table.items():
            for key, value in row.items():
                if value is not None:
                    draws[split][key].append(value)
    lo, hi = 50 * (1 - float(level)), 50 * (1 + float(level))
    return {split: ({key: [float(np.percentile(v, lo)), float(np.percentile(v, hi))]
                     for key, v in row.items()} if row["bias"] else None)
            for split, row in draws.items()}


# --------------------------------------------------------------------------- hardest negatives


def softmax(logits: Any, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in NumPy.

    Args:
      logits: ``[..., C]`` finite numbers.
      axis: the class axis.

    Returns:
      float64 probabilities of the same shape, summing to 1 along ``axis``.
    """
    z = _float_array(logits, "logits", np.ndim(logits))
    if z.ndim == 0:
        raise ValueError("logits must have at least one (class) axis, got a scalar")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits must be finite (got NaN or inf)")
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def hardest_negative_scores(probs: Any, labels: Any, atol: float = 1e-3) -> np.ndarray:
    """Largest probability among the WRONG classes of each example (RIDE Fig. 1b).

    Args:
      probs: ``[N, C]`` softmax probabilities, C >= 2, rows summing to 1 within
        ``atol`` (from logits use :func:`softmax` or ``jax.nn.softmax``).
      labels: ``[N]`` int true classes in ``[0, C)``.
      atol: tolerance on the row sums.

    Returns:
      ``[N]`` float64, ``max_{k != y_i} probs[i, k]``.
    """
    p = _float_array(probs, "probs", 2)
    if p.shape[1] < 2:
        raise ValueError(f"probs must be [N, C] with C >= 2 classes, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs must be finite (got NaN or inf)")
    if np.any(p < -atol) or np.any(p > 1 + atol):
        raise ValueError(f"probs must lie in [0, 1], got values in [{p.min():g}, {p.max():g}]; "
                         "pass probabilities, e.g. softmax(logits) or jax.nn.softmax(logits)")
    sums = p.sum(1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > atol)
    if bad.size:
        raise ValueError(f"probs rows must sum to 1 (within {atol:g}); {bad.size} row(s) do not, "
                         f"e.g. row {int(bad[0])} sums to {sums[bad[0]]:g}. Are these logits? "
                         "Use softmax(logits) or jax.nn.softmax(logits)")
    y = _labels(labels, p.shape[1], len(p))
    neg = p.copy()
    neg[np.arange(len(p)), y] = -np.inf
    return neg.max(1)


def histograms_by_group(scores: Any, labels: Any, train_counts: Any, bins: int = 20,
                        range: tuple[float, float] = (0.0, 1.0)
                        ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Histograms of a per-example score for all examples and per shot group.

    An example belongs to the group of its TRUE class's training count.

    Args:
      scores: ``[N]`` numbers (e.g. :func:`hardest_negative_scores`).
      labels: ``[N]`` int true classes.
      train_counts: ``[C]`` TRAINING images per class.
      bins: number of equal-width bins (>= 1).
      range: ``(low, high)`` of the bins; values outside are not counted (as
        ``np.histogram``).

    Returns:
      ``{'all' | 'many' | 'medium' | 'few': (counts [bins] int64, edges [bins + 1])}``;
      an empty group has all-zero counts.
    """
    s = _float_array(scores, "scores", 1)
    n = _train_counts(train_counts)
    y = _labels(labels, len(n), len(s))
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    try:
        lo, hi = (float(r) for r in range)
    except (TypeError, ValueError):
        raise ValueError(f"range must be a pair (low, high), got {range!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"range must be finite with low < high, got {range!r}")
    masks = {"all": np.ones(len(n), bool)}
    masks.update(shot_masks(n))
    out = {}
    for name, cls in masks.items():
        counts, edges = np.histogram(s[cls[y]], bins=int(bins), range=(lo, hi))
        out[name] = (counts.astype(np.int64), edges)
    return out


# --------------------------------------------------------------------------- accuracy


def _predictions_and_labels(predictions: Any, labels: Any, num_classes: int
                            ) -> tuple[int, np.ndarray, np.ndarray]:
    """Validated ``(C, predictions [N], labels [N])``."""
    c = _check_num_classes(num_classes)
    p = _int_array(predictions, "predictions", 1)
    y = _labels(labels, c, len(p))
    _check_range(p, "predictions", c)
    return c, p, y


def per_class_accuracy(predictions: Any, labels: Any, num_classes: int) -> np.ndarray:
    """Accuracy within each true class.

    Args:
      predictions: ``[N]`` int predicted classes.
      labels: ``[N]`` int true classes.
      num_classes: C.

    Returns:
      ``[C]`` float64; NaN for a class without examples.
    """
    c, p, y = _predictions_and_labels(predictions, labels, num_classes)
    return per_class_means((p == y).astype(np.float64), y, c)


def confusion_matrix(predictions: Any, labels: Any, num_classes: int) -> np.ndarray:
    """Confusion counts.

    Args:
      predictions: ``[N]`` int predicted classes.
      labels: ``[N]`` int true classes.
      num_classes: C.

    Returns:
      ``[C, C]`` int64; entry ``[t, p]`` counts examples of true class t predicted p
      (rows = true class).
    """
    c, p, y = _predictions_and_labels(predictions, labels, num_classes)
    return np.bincount(y * c + p, minlength=c * c).reshape(c, c).astype(np.int64)


__all__ = [
    "bias_variance", "per_class_means", "group_means", "bias_variance_table", "softmax",
    "hardest_negative_scores", "histograms_by_group", "per_class_accuracy",
    "confusion_matrix", "GROUPS", "SPLITS",
]
