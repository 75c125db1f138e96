"""Single-head classification losses: CE, focal, LDAM(-DRW), distillation KL.

Conventions (as the official RIDE ``model/loss.py``, where the scale s lives in the model):

* ``logits``: ``[..., C]`` (usually ``[B, C]``), already including the cosine
  classifier scale s = 30 where the model has one.
* ``labels``: integer ``[...]`` (usually ``[B]``), matching ``logits.shape[:-1]``.
* Per-class lookups are gather-free: ``v_y = sum_c onehot(y)_c * v_c``.
* Everything is computed in the logits' float dtype (float64 when x64 is
  enabled and the logits are float64, float32 otherwise). Per-class vectors
  are cast to that dtype.
* Label range is checked only for concrete labels; under ``jit`` an
  out-of-range label gives an all-zero one-hot row (loss term 0 for CE,
  weight 0 in weighted CE) and cannot be reported.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from ride_jax.losses._checks import check_labels, check_logits, check_vector, float_dtype

__all__ = [
    "per_sample_cross_entropy",
    "cross_entropy",
    "focal_loss",
    "ldam_margin_logits",
    "ldam_loss",
    "softmax_kl",
    "distill_kl",
]


def _prepare(logits: Any, labels: Any) -> tuple[jax.Array, jax.Array, Any]:
    """Validates ``logits [..., C]`` / ``labels [...]``; returns (logits, labels, compute dtype)."""
    logits = check_logits("logits", logits, min_ndim=1)
    labels = check_labels(labels, logits.shape[-1], shape=logits.shape[:-1])
    return logits, labels, float_dtype(logits)


def _opt_vector(name: str, v: Any, num_classes: int) -> jax.Array | None:
    return None if v is None else check_vector(name, v, num_classes)


def _nll(logits: jax.Array, onehot: jax.Array) -> jax.Array:
    """l = -log softmax(z)_y, gather-free; ``[..., C] -> [...]``."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.where(onehot > 0, logp, 0.0), axis=-1)


def _weighted_mean(per_sample: jax.Array, onehot: jax.Array, class_weights: jax.Array | None) -> jax.Array:
    """PyTorch weighted-mean reduction: sum_i w_{y_i} l_i / sum_i w_{y_i}."""
    if class_weights is None:
        return jnp.mean(per_sample)
    w = jnp.sum(onehot * class_weights, axis=-1)
    return jnp.sum(w * per_sample) / jnp.sum(w)


# The public functions validate in python, then call one jitted core: an eager call compiles a
# single program instead of dozens of op-by-op kernels; inside a user's jit the core is inlined.


@functools.partial(jax.jit, static_argnames=("dtype", "weighted_sample"))
def _ce_core(logits, labels, margins, scale, class_weights, dtype, weighted_sample=False):
    """Returns (per-sample nll [...], onehot [..., C], class weights or None), margins applied."""
    logits = logits.astype(dtype)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=dtype)
    if margins is not None:
        logits = logits - onehot * (margins.astype(dtype) * scale)
    w = None if class_weights is None else class_weights.astype(dtype)
    nll = _nll(logits, onehot)
    if weighted_sample and w is not None:
        nll = jnp.sum(onehot * w, axis=-1) * nll
    return nll, onehot, w


@functools.partial(jax.jit, static_argnames=("dtype",))
def _mean_ce_core(logits, labels, margins, scale, class_weights, dtype):
    nll, onehot, w = _ce_core(logits, labels, margins, scale, class_weights, dtype)
    return _weighted_mean(nll, onehot, w)


@functools.partial(jax.jit, static_argnames=("dtype", "gamma_is_zero"))
def _focal_core(logits, labels, gamma, class_weights, dtype, gamma_is_zero):
    l, _, _ = _ce_core(logits, labels, None, 1.0, class_weights, dtype, weighted_sample=True)
    if gamma_is_zero:
        return jnp.mean(l)
    return jnp.mean(jnp.power(-jnp.expm1(-l), jnp.asarray(gamma, dtype)) * l)


@functools.partial(jax.jit, static_argnames=("dtype",))
def _margin_logits_core(logits, labels, margins, scale, dtype):
    logits = logits.astype(dtype)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=dtype)
    return logits - onehot * (margins.astype(dtype) * scale)


def _kl(target_logits: jax.Array, logits: jax.Array, t: jax.Array) -> jax.Array:
    """(1/B) sum p (log p - log q), p from the detached target; ``[..., B, C] -> [...]``."""
    logp = jax.nn.log_softmax(jax.lax.stop_gradient(target_logits) / t, axis=-1)
    logq = jax.nn.log_softmax(logits / t, axis=-1)
    return jnp.sum(jnp.exp(logp) * (logp - logq), axis=(-2, -1)) / logits.shape[-2]


@functools.partial(jax.jit, static_argnames=("dtype",))
def _kl_core(target_logits, logits, temperature, factor, dtype):
    t = jnp.asarray(temperature).astype(dtype)
    return factor * _kl(target_logits.astype(dtype), logits.astype(dtype), t)


def per_sample_cross_entropy(logits: Any, labels: Any, class_weights: Any = None) -> jax.Array:
    """Per-sample (optionally weighted) cross-entropy, no reduction.

    l_i = -w_{y_i} * log softmax(z_i)_{y_i}   (w = 1 when ``class_weights`` is None),
    i.e. PyTorch ``F.cross_entropy(..., weight=w, reduction='none')``.

    Args:
        logits: ``[..., C]``.
        labels: Integer ``[...]`` = ``logits.shape[:-1]``.
        class_weights: Optional ``[C]``.

    Returns:
        ``[...]`` per-sample losses.
    """
    logits, labels, dtype = _prepare(logits, labels)
    w = _opt_vector("class_weights", class_weights, logits.shape[-1])
    return _ce_core(logits, labels, None, 1.0, w, dtype, weighted_sample=True)[0]


def cross_entropy(logits: Any, labels: Any, class_weights: Any = None) -> jax.Array:
    """Mean cross-entropy with PyTorch's weighted-mean semantics.

    L = sum_i w_{y_i} l_i / sum_i w_{y_i},  l_i = -log softmax(z_i)_{y_i};
    the plain mean (1/B) sum_i l_i when ``class_weights`` is None (identical to
    unit weights).

    Args:
        logits: ``[B, C]`` (or ``[..., C]``; the mean runs over all leading axes).
        labels: Integer ``[B]`` (``logits.shape[:-1]``).
        class_weights: Optional per-class weights ``[C]`` (e.g. DRW).

    Returns:
        Scalar loss.
    """
    logits, labels, dtype = _prepare(logits, labels)
    w = _opt_vector("class_weights", class_weights, logits.shape[-1])
    return _mean_ce_core(logits, labels, None, 1.0, w, dtype)


def focal_loss(logits: Any, labels: Any, gamma: Any = 0.0, class_weights: Any = None) -> jax.Array:
    """Focal loss as in the official RIDE / LDAM-DRW ``FocalLoss``.

    l_i = w_{y_i} * CE_i (per-sample CE, weight folded in, no reduction),
    p_i = exp(-l_i),
    L = (1/B) sum_i (1 - p_i)^gamma * l_i.

    Note the reduction is the PLAIN mean even with weights (unlike
    :func:`cross_entropy`), and p_i is computed from the weighted loss, exactly
    as the official code. With gamma = 0 and no weights this is plain mean CE.
    ``1 - p_i`` is evaluated as ``-expm1(-l_i)`` (same value, more accurate).

    Args:
        logits: ``[B, C]`` (or ``[..., C]``).
        labels: Integer ``[B]``.
        gamma: Focusing parameter >= 0 (1.0 in LDAM-DRW's focal runs). A
            python 0 skips the modulating factor entirely (no 0^0 gradient).
        class_weights: Optional ``[C]``.

    Returns:
        Scalar loss.
    """
    logits, labels, dtype = _prepare(logits, labels)
    w = _opt_vector("class_weights", class_weights, logits.shape[-1])
    gamma_is_zero = isinstance(gamma, (int, float)) and gamma == 0
    return _focal_core(logits, labels, gamma, w, dtype, gamma_is_zero)


def ldam_margin_logits(logits: Any, labels: Any, margins: Any, scale: Any = 30.0) -> jax.Array:
    """Subtracts the LDAM margin from the target logit only.

    z'_{ic} = z_{ic} - 1[c = y_i] * (m_{y_i} * s).

    Args:
        logits: ``[..., C]``, already scaled by s.
        labels: Integer ``[...]``.
        margins: LDAM margins m ``[C]`` (cosine units).
        scale: s (30 with the cosine classifier).

    Returns:
        ``[..., C]`` margin-adjusted logits.
    """
    logits, labels, dtype = _prepare(logits, labels)
    m = check_vector("margins", margins, logits.shape[-1])
    return _margin_logits_core(logits, labels, m, scale, dtype)


def ldam_loss(logits: Any, labels: Any, margins: Any, scale: Any = 30.0, class_weights: Any = None) -> jax.Array:
    """LDAM(-DRW) loss on already-scaled logits.

    L = CE_w(z - s * m_y * onehot(y), y), with the weighted mean of
    :func:`cross_entropy` (w = DRW weights after the switch, None before).

    Args:
        logits: ``[B, C]`` (or ``[..., C]``), already scaled by s.
        labels: Integer ``[B]``.
        margins: LDAM margins m ``[C]``.
        scale: s (30).
        class_weights: Optional ``[C]``.

    Returns:
        Scalar loss.
    """
    logits, labels, dtype = _prepare(logits, labels)
    m = check_vector("margins", margins, logits.shape[-1])
    w = _opt_vector("class_weights", class_weights, logits.shape[-1])
    return _mean_ce_core(logits, labels, m, scale, w, dtype)


def _check_kl_inputs(target_logits: Any, logits: Any, temperature: Any) -> tuple[jax.Array, jax.Array, jax.Array, Any]:
    target_logits = check_logits("target_logits", target_logits, ndim=2)
    logits = check_logits("logits", logits, min_ndim=2)
    if tuple(logits.shape[-2:]) != tuple(target_logits.shape):
        raise ValueError(
            f"logits have trailing shape {tuple(logits.shape[-2:])} but target_logits have shape "
            f"{tuple(target_logits.shape)}"
        )
    t = check_vector("temperatures", temperature, logits.shape[-1], allow_scalar=True)
    return target_logits, logits, t, float_dtype(logits, target_logits)


def softmax_kl(target_logits: Any, logits: Any, temperature: Any = 1.0) -> jax.Array:
    """Batch-mean KL between tempered softmaxes, target detached.

    KL = (1/B) sum_{b,c} p_bc (log p_bc - log q_bc),
    p = softmax(stop_gradient(t) / T), q = softmax(z / T) (PyTorch
    ``F.kl_div(log q, p, reduction='batchmean')``). ``T`` is a scalar or a
    per-class ``[C]`` vector dividing each column.

    Args:
        target_logits: t, ``[B, C]`` (no gradient flows into it).
        logits: z, ``[..., B, C]``; any leading axes are kept.
        temperature: Scalar or ``[C]``.

    Returns:
        ``logits.shape[:-2]`` (a scalar for ``[B, C]``).
    """
    target_logits, logits, t, dtype = _check_kl_inputs(target_logits, logits, temperature)
    return _kl_core(target_logits, logits, t, 1.0, dtype)


def distill_kl(student_logits: Any, teacher_logits: Any, temperature: Any = 1.5) -> jax.Array:
    """Knowledge-distillation term of RIDE (official RIDE ``model/loss.py:277-282``).

    KD = T^2 * KL(softmax(stop_gradient(t) / T) || softmax(s / T)), batch mean.

    Args:
        student_logits: s, ``[B, C]`` (the student's mean-over-experts logits).
        teacher_logits: t, ``[B, C]`` (detached).
        temperature: T_d (1.5 in all configs), a scalar.

    Returns:
        Scalar loss.
    """
    if jnp.ndim(temperature) != 0:
        raise ValueError(f"temperature must be a scalar; got shape {tuple(jnp.shape(temperature))}")
    teacher_logits, student_logits, t, dtype = _check_kl_inputs(teacher_logits, student_logits, temperature)
    if student_logits.ndim != 2:
        raise ValueError(f"student_logits must be 2-D [B, C]; got shape {tuple(student_logits.shape)}")
    return _kl_core(teacher_logits, student_logits, t, temperature * temperature, dtype)
