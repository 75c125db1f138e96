"""RIDE stage-1 loss and its self-distillation wrapper.

Official RIDE ``model/loss.py:124-247`` (``RIDELoss``) and ``model/loss.py:249-284``
(``RIDELossWithDistill``).

Shapes: E experts, B samples, C classes.

    L_RIDE = sum_{k=1..E} [ rho * CE_w(z^k - s * m_y * onehot(y), y)                       (base term)
                          + lambda * Tbar^2 * KL(softmax(zbar / T) || softmax(z^k / T)) ]   (diversity term)

    zbar = (1/E) sum_k z^k, detached inside the KL target;
    T    = per-class temperatures [C] (each column divided by its T_c) or a scalar;
    Tbar = mean_c T_c, a constant (no gradient);
    KL   = batch mean: (1/B) sum_{b,c} p_bc (log p_bc - log q_bc);
    rho  = base_loss_factor, lambda = diversity_factor (negative in all configs);
    lambda == 0 exactly: the base term uses zbar instead of z^k for every expert
    (E * CE(zbar)), a quirk of the official code.

The loss is summed over experts, not averaged.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

import jax
import jax.numpy as jnp

from ride_jax.losses._checks import (
    check_choice,
    check_expert_logits,
    check_labels,
    check_logits,
    check_vector,
    float_dtype,
)
from ride_jax.losses.classification import _kl, _nll, distill_kl, softmax_kl

__all__ = ["BASE_LOSSES", "diversity_kl", "ride_loss", "ride_distill_loss"]

BASE_LOSSES = ("ldam", "ce")


def diversity_kl(expert_logits: Any, mean_logits: Any, temperatures: Any = 1.0) -> jax.Array:
    """Per-expert diversity KL of RIDE (without the lambda * Tbar^2 factor).

    KL_k = (1/B) sum_{b,c} p_bc (log p_bc - log q^k_bc),
    p = softmax(stop_gradient(zbar) / T), q^k = softmax(z^k / T),
    T a scalar or a per-class vector (column c divided by T_c).

    Args:
        expert_logits: z, ``[E, B, C]``, or a single expert ``[B, C]``.
        mean_logits: zbar, ``[B, C]`` (the KL target, no gradient).
        temperatures: Scalar or ``[C]``.

    Returns:
        ``[E]`` (one KL per expert), or a scalar for a ``[B, C]`` input.
    """
    expert_logits = check_logits("expert_logits", expert_logits)
    if expert_logits.ndim not in (2, 3):
        raise ValueError(f"expert_logits must be [E, B, C] or [B, C]; got shape {tuple(expert_logits.shape)}")
    return softmax_kl(mean_logits, expert_logits, temperatures)


def _check_scalar(name: str, value: Any) -> Any:
    """Python numbers pass through; anything else must be a 0-d array."""
    if isinstance(value, numbers.Real):
        return value
    if jnp.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar; got shape {tuple(jnp.shape(value))}")
    return value


def _constant_mean(t: jax.Array) -> jax.Array:
    """mean(t), returned exactly as t[0] when t is constant; no gradient.

    The exact branch makes ``temperatures=full(C, a)`` bit-identical to the
    scalar temperature ``a`` (whose Tbar is ``a`` itself).
    """
    t = jax.lax.stop_gradient(t)
    return jnp.where(jnp.all(t == t[0]), t[0], jnp.mean(t))


def ride_loss(
    expert_logits: Any,
    labels: Any,
    *,
    diversity_factor: Any,
    margins: Any = None,
    class_weights: Any = None,
    temperatures: Any = None,
    scale: Any = 30.0,
    base_loss: str = "ldam",
    base_temperature: float = 1.0,
    base_loss_factor: Any = 1.0,
    mean_logits: Any = None,
    num_experts: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """RIDE individual + diversity loss, summed over experts (official ``RIDELoss``).

    L = sum_k [ rho * CE_w(z^k - s * m_y * onehot(y), y)
                + lambda * Tbar^2 * KL(softmax(stop_grad(zbar) / T) || softmax(z^k / T)) ]

    with zbar = mean_k z^k computed here from ``expert_logits`` (or taken from
    ``mean_logits``), CE_w the weighted mean sum_i w_{y_i} l_i / sum_i w_{y_i},
    T the per-class temperatures and Tbar = mean_c T_c treated as a constant.
    If lambda == 0, the base term of every expert uses zbar instead of z^k
    (official quirk), giving E * rho * CE_w(zbar - s m_y onehot(y), y).

    Per-epoch vectors: pass the fields of :func:`ride_schedule` (or of
    :func:`select_class_vectors` inside ``jit``). ``class_weights=None`` is
    identical to ``ones(C)`` and ``temperatures=None`` to
    ``full(C, base_temperature)`` (Tbar = base_temperature).

    Args:
        expert_logits: z, ``[E, B, C]``, already scaled by s.
        labels: Integer ``[B]``.
        diversity_factor: lambda (-0.45 CIFAR, -0.2 ImageNet-LT / iNat).
            Normally a python float (configuration): the lambda == 0 switch is
            then a python branch. A jax scalar (also traced) is accepted; the
            switch then uses ``jnp.where``.
        margins: LDAM margins ``[C]``; required for ``base_loss='ldam'``,
            ignored for ``'ce'``.
        class_weights: DRW weights ``[C]`` or None (unit weights).
        temperatures: Diversity temperatures ``[C]``, a scalar, or None
            (scalar ``base_temperature``).
        scale: s, the logit scale used for the margin (30).
        base_loss: ``'ldam'`` (LDAM-DRW base term) or ``'ce'`` (weighted CE,
            the official behaviour without class counts).
        base_temperature: alpha, used only when ``temperatures`` is None.
        base_loss_factor: rho, multiplies the base term.
        mean_logits: Optional zbar ``[B, C]``. When given it is used as the
            mean instead of the mean of ``expert_logits``; it receives no
            gradient from the diversity term (the target is detached); with
            lambda == 0 the base term is computed on it and its gradient flows
            into it.
        num_experts: Optional configured E; a mismatch raises ValueError.

    Returns:
        ``(loss, aux)``: scalar loss and a dict with
        ``'per_expert_total'`` [E] (base + diversity, sums to ``loss``),
        ``'per_expert_base'`` [E] (rho * CE_w term, as added),
        ``'per_expert_diversity'`` [E] (lambda * Tbar^2 * KL_k, as added),
        ``'diversity_kl'`` [E] (raw KL_k), ``'mean_logits'`` [B, C] and
        ``'temperature_mean'`` (Tbar, scalar).

    Raises:
        ValueError: unknown ``base_loss``; ``expert_logits`` not 3-D or with
            E != ``num_experts``; labels of the wrong shape or (concrete)
            out of range; a per-class vector of length != C; margins missing
            for ``'ldam'``.
    """
    check_choice("base_loss", base_loss, BASE_LOSSES)
    z = check_expert_logits(expert_logits, num_experts)
    _, batch, num_classes = z.shape
    labels = check_labels(labels, num_classes, shape=(batch,))
    if mean_logits is not None:
        mean_logits = check_logits("mean_logits", mean_logits, ndim=2)
        if tuple(mean_logits.shape) != (batch, num_classes):
            raise ValueError(
                f"mean_logits has shape {tuple(mean_logits.shape)} but ({batch}, {num_classes}) is expected"
            )
    dtype = float_dtype(z, *([] if mean_logits is None else [mean_logits]))
    if temperatures is not None:
        temperatures = check_vector("temperatures", temperatures, num_classes, allow_scalar=True)
    if class_weights is not None:
        class_weights = check_vector("class_weights", class_weights, num_classes)
    if base_loss == "ldam":
        if margins is None:
            raise ValueError("base_loss='ldam' needs margins (a [C] vector, e.g. ldam_margins(class_counts))")
        margins = check_vector("margins", margins, num_classes)
    else:
        margins = None
    lam = _check_scalar("diversity_factor", diversity_factor)
    # lambda == 0 switch: a python branch for python numbers, jnp.where for arrays (possibly traced).
    lam_mode = ("zero" if lam == 0 else "nonzero") if isinstance(lam, numbers.Real) else "array"
    return _ride_core(
        z,
        labels,
        mean_logits,
        margins,
        class_weights,
        temperatures,
        lam,
        _check_scalar("scale", scale),
        _check_scalar("base_loss_factor", base_loss_factor),
        _check_scalar("base_temperature", base_temperature),
        dtype=dtype,
        lam_mode=lam_mode,
    )


@functools.partial(jax.jit, static_argnames=("dtype", "lam_mode"))
def _ride_core(z, labels, mean_logits, margins, class_weights, temperatures, lam, scale, base_loss_factor,
               base_temperature, *, dtype, lam_mode):
    """Jitted body of :func:`ride_loss` (inputs already validated)."""
    z = z.astype(dtype)
    num_classes = z.shape[-1]
    onehot = jax.nn.one_hot(labels, num_classes, dtype=dtype)
    zbar = jnp.mean(z, axis=0) if mean_logits is None else mean_logits.astype(dtype)
    lam = jnp.asarray(lam).astype(dtype)
    scale = jnp.asarray(scale).astype(dtype)
    base_loss_factor = jnp.asarray(base_loss_factor).astype(dtype)

    # Per-class vectors: None -> the exactly-equivalent constant vector.
    if temperatures is None:
        temps = jnp.full((num_classes,), base_temperature, dtype=dtype)
    else:
        temps = jnp.broadcast_to(temperatures.astype(dtype), (num_classes,))
    weights = jnp.ones((num_classes,), dtype) if class_weights is None else class_weights.astype(dtype)

    if lam_mode == "zero":
        base_logits = jnp.broadcast_to(zbar, z.shape)
    elif lam_mode == "nonzero":
        base_logits = z
    else:
        base_logits = jnp.where(lam == 0, zbar[None], z)
    if margins is not None:
        base_logits = base_logits - onehot * (margins.astype(dtype) * scale)

    nll = _nll(base_logits, onehot)  # [E, B]
    w_i = jnp.sum(onehot * weights, axis=-1)  # [B]
    per_base = base_loss_factor * (jnp.sum(w_i * nll, axis=-1) / jnp.sum(w_i))  # [E]

    tbar = _constant_mean(temps)
    kl = _kl(zbar, z, temps)  # [E]
    per_div = lam * tbar * tbar * kl
    per_total = per_base + per_div
    aux = {
        "per_expert_total": per_total,
        "per_expert_base": per_base,
        "per_expert_diversity": per_div,
        "diversity_kl": kl,
        "mean_logits": zbar,
        "temperature_mean": tbar,
    }
    return jnp.sum(per_total), aux


def ride_distill_loss(
    expert_logits: Any,
    labels: Any,
    teacher_logits: Any,
    *,
    distill_temperature: Any = 1.5,
    distill_factor: Any = 1.0,
    ride_loss_factor: Any = 1.0,
    **ride_kwargs: Any,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """RIDE loss with self-distillation (official ``RIDELossWithDistill``).

    L = E * [ rho_r * L_RIDE + kappa * T_d^2 * KL(softmax(stop_grad(t) / T_d) || softmax(zbar / T_d)) ]

    The factor E (number of student experts) is reproduced from the official
    code (a loop over experts whose body ignores the loop variable). zbar is
    the student's mean logits (built from ``expert_logits``, or
    ``ride_kwargs['mean_logits']`` if given); gradient flows through it.

    Args:
        expert_logits: Student per-expert logits ``[E, B, C]``.
        labels: Integer ``[B]``.
        teacher_logits: Teacher mean-over-experts logits ``[B, C]`` (detached).
        distill_temperature: T_d (1.5).
        distill_factor: kappa (``additional_distill_loss_factor``, 1.0).
        ride_loss_factor: rho_r (1.0).
        **ride_kwargs: Keyword arguments of :func:`ride_loss`
            (``diversity_factor`` is required).

    Returns:
        ``(loss, aux)``: scalar loss; ``aux`` is :func:`ride_loss`'s dict plus
        ``'ride_loss'`` (L_RIDE) and ``'distill'`` (T_d^2 * KL).
    """
    l_ride, aux = ride_loss(expert_logits, labels, **ride_kwargs)
    num_e = jnp.shape(expert_logits)[0]
    teacher = check_logits("teacher_logits", teacher_logits, ndim=2)
    if tuple(teacher.shape) != tuple(aux["mean_logits"].shape):
        raise ValueError(
            f"teacher_logits has shape {tuple(teacher.shape)} but the student logits have shape "
            f"{tuple(aux['mean_logits'].shape)}"
        )
    kd = distill_kl(aux["mean_logits"], teacher, distill_temperature)
    aux = dict(aux, ride_loss=l_ride, distill=kd)
    return num_e * (ride_loss_factor * l_ride + distill_factor * kd), aux
