"""Evaluation metrics as sums and counts (jit- and padding-friendly), reduced on the host.

Inside jit, :func:`eval_counts` turns one batch's logits into per-class sums (one-hot
products, no scatter), masked so padding rows count for nothing; summing them over
batches and then :func:`summarize` on the host gives what the official ``test.py``
prints (official RIDE ``test.py``): overall micro accuracy, per-class accuracy, and the
many / medium / few accuracies as the MEAN OF PER-CLASS ACCURACIES within each group of
TRAINING counts (many n > 100, medium 20 <= n <= 100, few n < 20); plus per-expert
accuracies.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ride_jax.data.long_tail import shot_masks


def eval_counts(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None,
                expert_logits: jax.Array | None = None, loss: jax.Array | None = None,
                num_used: jax.Array | None = None, num_experts: int | None = None
                ) -> dict[str, jax.Array]:
    """Per-class sums of one batch.

    Args:
      logits: ``[B, C]`` ensemble logits.
      labels: ``[B]`` int labels.
      mask: ``[B]`` bool, False on padding (default all True).
      expert_logits: ``[E, B, C]`` optional per-expert logits.
      loss: ``[B]`` optional per-example loss.
      num_used: ``[B]`` int, experts each example used (routed inference, 1..E).
      num_experts: E, required with ``num_used``.

    Returns:
      ``{'count': [C], 'correct': [C], 'correct_top5': [C]}`` float32, plus
      ``'expert_correct': [E, C]``, ``'loss_sum': []`` and ``'usage': [E, C]`` (examples
      of class c that used exactly k + 1 experts) when given.
    """
    num_classes = logits.shape[-1]
    w = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * w[:, None]
    hit = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    k = min(5, num_classes)
    top5 = jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], -1).astype(jnp.float32)
    out = {"count": onehot.sum(0), "correct": hit @ onehot, "correct_top5": top5 @ onehot}
    if expert_logits is not None:
        ehit = (jnp.argmax(expert_logits, -1) == labels[None]).astype(jnp.float32)
        out["expert_correct"] = ehit @ onehot
    if loss is not None:
        out["loss_sum"] = jnp.sum(loss * w)
    if num_used is not None:
        if num_experts is None:
            raise ValueError("num_used needs num_experts")
        used = jax.nn.one_hot(num_used - 1, num_experts, dtype=jnp.float32)
        out["usage"] = used.T @ onehot
    return out


def add_counts(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    """Sum two :func:`eval_counts` results (None is the empty sum)."""
    return dict(b) if a is None else jax.tree.map(lambda x, y: x + y, a, b)


def summarize(counts: dict[str, Any], train_counts: Any) -> dict[str, Any]:
    """Host-side accuracies from summed :func:`eval_counts` and the TRAINING class counts.

    Returns:
      ``{'accuracy', 'top5', 'class_mean_accuracy', 'many', 'medium', 'few' (None for an
      empty group), 'per_class': [C] list, 'num_examples', 'loss' (if summed),
      'expert_accuracy': [E] list (if given), 'experts_used' (routed inference: for
      'all' and each shot group, the fractions of examples that used exactly 1..E
      experts) and 'mean_experts'}``. A class without test examples has
      accuracy NaN and is left out of the means.
    """
    c = {k: np.asarray(jax.device_get(v), np.float64) for k, v in counts.items()}
    n = c["count"]
    total = n.sum()
    if total == 0:
        raise ValueError("no evaluation example was counted (all masked?)")
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = c["correct"] / n
    groups = shot_masks(train_counts)
    out: dict[str, Any] = {
        "accuracy": float(c["correct"].sum() / total),
        "top5": float(c["correct_top5"].sum() / total),
        "class_mean_accuracy": float(np.nanmean(per_class)),
        "num_examples": int(total),
    }
    for name, m in groups.items():
        vals = per_class[m & (n > 0)]
        out[name] = float(vals.mean()) if vals.size else None
    out["per_class"] = [None if np.isnan(v) else float(v) for v in per_class]
    if "expert_correct" in c:
        out["expert_accuracy"] = [float(v) for v in c["expert_correct"].sum(-1) / total]
    if "loss_sum" in c:
        out["loss"] = float(c["loss_sum"] / total)
    if "usage" in c:
        usage = c["usage"]                                  # [E, C]
        used = {"all": usage.sum(-1)}
        used.update({name: usage[:, m].sum(-1) for name, m in groups.items()})
        out["experts_used"] = {k: ([float(x) for x in v / v.sum()] if v.sum() else None)
                               for k, v in used.items()}
        out["mean_experts"] = float(np.arange(1, len(usage) + 1) @ used["all"] / total)
    return out


# ---------------------------------------------------------------------------------------
# Calibration: top-label expected calibration error (Guo et al. 2017, "On Calibration of
# Modern Neural Networks"), as sums per confidence bin so that it accumulates over
# evaluation batches like :func:`eval_counts`.
#
# Confidence = max_c probs[n, c], prediction = argmax_c probs[n, c] (first index on ties),
# M equal-width bins over [0, 1], bin k = (k/M, (k+1)/M] for k = 0..M-1, RIGHT edge
# closed, except that confidence exactly 0 falls in bin 0 (so bin 0 is [0, 1/M]) and
# confidence 1.0 falls in the last bin. Edges are compared in the floating dtype of
# ``probs`` (k/M rounded to that dtype), so 0.7 in float32 lands in (0.6, 0.7].
#
#   ECE = sum_k |B_k| / N * |acc(B_k) - conf(B_k)|,  a fraction in [0, 1].
# ---------------------------------------------------------------------------------------


def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _check_calibration_inputs(probs: Any, labels: Any, num_bins: Any, mask: Any,
                              class_mask: Any) -> None:
    """One-line ValueErrors for bad input; value checks only on concrete arrays."""
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"num_bins must be an int >= 1, got {num_bins!r}")
    if probs.ndim != 2 or probs.shape[1] < 1:
        raise ValueError(f"probs must be [N, C] with C >= 1, got shape {tuple(probs.shape)}")
    if labels.ndim != 1 or labels.shape[0] != probs.shape[0]:
        raise ValueError(f"labels must be [N] with N = {probs.shape[0]} (probs shape "
                         f"{tuple(probs.shape)}), got shape {tuple(labels.shape)}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if mask is not None and tuple(mask.shape) != (probs.shape[0],):
        raise ValueError(f"mask must be [N] with N = {probs.shape[0]}, got shape "
                         f"{tuple(mask.shape)}")
    if class_mask is not None and tuple(class_mask.shape) != (probs.shape[1],):
        raise ValueError(f"class_mask must be [C] with C = {probs.shape[1]}, got shape "
                         f"{tuple(class_mask.shape)}")
    num_classes = probs.shape[1]
    if not _is_traced(labels) and labels.size:
        lab = np.asarray(labels)
        if mask is not None and not _is_traced(mask):
            lab = lab[np.asarray(mask).astype(bool)]    # padding rows may hold anything
        if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
            bad = lab[(lab < 0) | (lab >= num_classes)][0]
            raise ValueError(f"labels must be in [0, {num_classes}), got {int(bad)}")
    if not _is_traced(probs) and probs.size:
        p = np.asarray(probs)
        if mask is not None and not _is_traced(mask):
            p = p[np.asarray(mask).astype(bool)]
        if p.size and not (np.all(p >= 0) and np.all(p <= 1 + 1e-5)):
            bad = p[~((p >= 0) & (p <= 1 + 1e-5))][0]
            raise ValueError(f"probs must be probabilities in [0, 1] (softmax, not logits), "
                             f"got {float(bad)}")


def _bin_sums(xp: Any, probs: Any, labels: Any, num_bins: int, mask: Any, class_mask: Any,
              sum_dtype: Any) -> dict[str, Any]:
    """Shared NumPy / jax.numpy core of :func:`calibration_counts` (xp = np or jnp)."""
    if not xp.issubdtype(probs.dtype, xp.floating):
        probs = probs.astype(sum_dtype)
    conf = xp.max(probs, axis=-1)                                        # [N]
    hit = (xp.argmax(probs, axis=-1) == labels).astype(sum_dtype)        # [N]
    # Interior edges k/M, k = 1..M-1, in conf's dtype; bin = number of edges < conf, so
    # an edge value belongs to the bin on its left (right-closed bins).
    edges = xp.arange(1, num_bins, dtype=conf.dtype) / conf.dtype.type(num_bins)
    idx = xp.sum(conf[:, None] > edges[None, :], axis=-1)                # [N] in [0, M)
    w = xp.ones(labels.shape, sum_dtype)
    if mask is not None:
        w = w * mask.astype(sum_dtype)
    if class_mask is not None:
        w = w * class_mask.astype(sum_dtype)[xp.clip(labels, 0, probs.shape[1] - 1)]
    onehot = (idx[:, None] == xp.arange(num_bins)[None, :]).astype(sum_dtype) * w[:, None]
    return {"count": onehot.sum(0), "confidence_sum": conf.astype(sum_dtype) @ onehot,
            "correct": hit @ onehot}


def calibration_counts(probs: Any, labels: Any, num_bins: int = 15, mask: Any = None,
                       class_mask: Any = None) -> dict[str, jax.Array]:
    """Per-confidence-bin sums of one batch (pure jnp, jittable with static ``num_bins``).

    Bins are (k/M, (k+1)/M], k = 0..M-1 (right edge closed; confidence 0 goes to bin 0,
    1.0 to the last); confidence is the top probability and correctness is
    argmax == label. Sum the results over batches (:func:`add_counts`) and reduce once
    with :func:`ece_from_counts`.

    Args:
      probs: ``[N, C]`` class probabilities (rows sum to 1, softmax of the logits).
      labels: ``[N]`` int labels in [0, C).
      num_bins: M, number of equal-width confidence bins over [0, 1].
      mask: ``[N]`` bool, False on padding rows (counted nowhere; their labels and
        probs are not checked).
      class_mask: ``[C]`` bool, count only examples whose TRUE label is in the group
        (e.g. a many / medium / few mask from
        :func:`ride_jax.data.long_tail.shot_masks`).

    Returns:
      ``{'count': [M], 'confidence_sum': [M], 'correct': [M]}`` float32: examples, sum
      of top confidences and correct predictions per bin.

    Raises:
      ValueError: num_bins < 1, bad shapes, and (on concrete, non-traced inputs only)
        labels out of range or probs outside [0, 1].
    """
    probs, labels = jnp.asarray(probs), jnp.asarray(labels)
    mask = None if mask is None else jnp.asarray(mask)
    class_mask = None if class_mask is None else jnp.asarray(class_mask)
    _check_calibration_inputs(probs, labels, num_bins, mask, class_mask)
    return _bin_sums(jnp, probs, labels, int(num_bins), mask, class_mask, jnp.float32)


def group_calibration_counts(probs: Any, labels: Any, class_masks: dict[str, Any],
                             num_bins: int = 15, mask: Any = None
                             ) -> dict[str, dict[str, jax.Array]]:
    """:func:`calibration_counts` for all examples and for each class group.

    Args:
      probs, labels, num_bins, mask: as in :func:`calibration_counts`.
      class_masks: name -> ``[C]`` bool, e.g. ``shot_masks(train_counts)``.

    Returns:
      ``{'all': counts, name: counts, ...}`` (sum over batches with :func:`add_counts`).
    """
    if "all" in class_masks:
        raise ValueError("class_masks must not contain the name 'all' (it is reserved)")
    out = {"all": calibration_counts(probs, labels, num_bins, mask)}
    for name, cm in class_masks.items():
        out[name] = calibration_counts(probs, labels, num_bins, mask, class_mask=cm)
    return out


def ece_from_counts(counts: dict[str, Any]) -> float:
    """Host-side ECE, a fraction in [0, 1], from summed :func:`calibration_counts`.

    ``sum_k count_k / N * |correct_k / count_k - confidence_sum_k / count_k|``; empty
    bins contribute nothing.

    Raises:
      ValueError: bad shapes or no example counted (all masked, or an empty group).
    """
    c = {k: np.asarray(jax.device_get(counts[k]), np.float64)
         for k in ("count", "confidence_sum", "correct")}
    if c["count"].ndim != 1 or any(v.shape != c["count"].shape for v in c.values()):
        raise ValueError(f"counts must hold three [M] arrays, got shapes "
                         f"{ {k: v.shape for k, v in c.items()} }")
    total = c["count"].sum()
    if total <= 0:
        raise ValueError("no example was counted for the ECE (all masked or empty group?)")
    # |acc_k - conf_k| * n_k / N == |correct_k - confidence_sum_k| / N
    return float(np.abs(c["correct"] - c["confidence_sum"]).sum() / total)


def expected_calibration_error(probs: Any, labels: Any, num_bins: int = 15,
                               mask: Any = None, class_mask: Any = None) -> float:
    """Top-label expected calibration error (Guo et al. 2017) on the host, in NumPy.

    ECE = sum_k |B_k| / N * |accuracy(B_k) - mean confidence(B_k)|, a fraction in
    [0, 1], with M equal-width bins B_k = (k/M, (k+1)/M], k = 0..M-1 (right edge
    closed; confidence exactly 0 goes to the first bin, exactly 1.0 to the last).
    Confidence is the top probability, correct means argmax == label. Edges are compared
    in the dtype of ``probs`` (float32 stays float32), so for float32 inputs this equals
    :func:`ece_from_counts` of :func:`calibration_counts` (up to float32 sums).

    Args:
      probs: ``[N, C]`` class probabilities (rows sum to 1).
      labels: ``[N]`` int labels in [0, C).
      num_bins: M >= 1.
      mask: ``[N]`` bool, False on padding rows (excluded; N counts only True rows).
      class_mask: ``[C]`` bool, restrict to examples whose TRUE label is in the group
        (the ECE of that subset).

    Raises:
      ValueError: num_bins < 1, bad shapes, labels out of range, probs outside [0, 1],
        or no example left.
    """
    probs, labels = np.asarray(probs), np.asarray(labels)
    mask = None if mask is None else np.asarray(mask)
    class_mask = None if class_mask is None else np.asarray(class_mask)
    _check_calibration_inputs(probs, labels, num_bins, mask, class_mask)
    return ece_from_counts(_bin_sums(np, probs, labels, int(num_bins), mask, class_mask,
                                     np.float64))


def group_ece(probs: Any, labels: Any, train_counts: Any, num_bins: int = 15,
              mask: Any = None) -> dict[str, float | None]:
    """Host-side ECE overall and per shot group of TRAINING counts.

    Returns:
      ``{'all', 'many', 'medium', 'few'}`` ECE fractions (groups from
      :func:`ride_jax.data.long_tail.shot_masks`; None for a group without examples).
    """
    out: dict[str, float | None] = {
        "all": expected_calibration_error(probs, labels, num_bins, mask)}
    for name, cm in shot_masks(train_counts).items():
        counts = _bin_sums(np, np.asarray(probs), np.asarray(labels), int(num_bins),
                           None if mask is None else np.asarray(mask), cm, np.float64)
        out[name] = ece_from_counts(counts) if counts["count"].sum() > 0 else None
    return out


def reliability_diagram(counts: dict[str, Any], path: Any, title: str | None = None) -> str:
    """Write a reliability diagram PNG (matplotlib, Agg; no display needed).

    Bars: accuracy per confidence bin (empty bins not drawn), with the mean confidence
    of each bin as a marker and the diagonal y = x of perfect calibration; ECE (in
    percent) in the title.

    Args:
      counts: summed :func:`calibration_counts` (``[M]`` arrays).
      path: PNG to write.
      title: optional prefix of the title.

    Returns:
      ``path`` as a string.
    """
    import os

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ece = ece_from_counts(counts)
    n = np.asarray(jax.device_get(counts["count"]), np.float64)
    correct = np.asarray(jax.device_get(counts["correct"]), np.float64)
    conf = np.asarray(jax.device_get(counts["confidence_sum"]), np.float64)
    m = len(n)
    filled = n > 0
    left = np.arange(m) / m
    acc = np.where(filled, correct / np.maximum(n, 1), 0.0)
    mean_conf = np.where(filled, conf / np.maximum(n, 1), np.nan)

    fig = Figure(figsize=(6.4, 4.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(left[filled], acc[filled], width=1.0 / m, align="edge", color="tab:blue",
           edgecolor="black", linewidth=0.5, label="accuracy")
    ax.plot(left[filled] + 0.5 / m, mean_conf[filled], "o", color="tab:red", ms=4,
            label="mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="0.4", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left")
    head = f"{title}: " if title else ""
    ax.set_title(f"{head}ECE = {100 * ece:.2f}% ({int(n.sum())} examples, {m} bins)")
    path = os.fspath(path)
    fig.savefig(path, dpi=100, format="png")
    fig.clear()
    return path
