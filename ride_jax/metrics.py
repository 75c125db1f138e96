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
