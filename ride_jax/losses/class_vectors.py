"""Per-class constant vectors of RIDE / LDAM-DRW and their epoch schedule.

All three vectors are functions of the training class counts n_c only. They
are computed once, in float64 numpy, from concrete counts and returned as jax
arrays (float64 if x64 is enabled, float32 otherwise, or ``dtype``).

* LDAM margins (official RIDE model/loss.py:145-146):
    m_c = max_m * n_c^(-1/4) / max_j n_j^(-1/4)
* DRW weights (model/loss.py:152-158):
    w_c = (1 - beta) / (1 - beta^n_c), rescaled so sum_c w_c = C
* Diversity temperatures (model/loss.py:162-168):
    b_c = gamma * C * n_c / N + (1 - gamma), N = sum_c n_c
    - ``formula='official'`` (the code):  T_c = alpha * b_c / max_j b_j
    - ``formula='paper'`` (eqs. 13-14):   T_c = alpha * (b_c + 1 - max_j b_j)

Schedule (RIDE ``RIDELoss._hook_before_epoch``, model/loss.py:190-199): with
1-indexed ``epoch``, the DRW weights and the class temperatures are active iff
``epoch > reweight_epoch``.
Before that RIDE uses no class weights and the scalar temperature alpha.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ride_jax.losses._checks import check_choice, check_class_counts

__all__ = [
    "TEMPERATURE_FORMULAS",
    "RideClassVectors",
    "ldam_margins",
    "drw_weights",
    "diversity_temperatures",
    "ride_class_vectors",
    "ride_schedule",
    "select_class_vectors",
    "reweighting_active",
]

TEMPERATURE_FORMULAS = ("official", "paper")


def _to_jax(x: np.ndarray, dtype: Any) -> jax.Array:
    """Float64 numpy -> jax array (float64 under x64 else float32, or ``dtype``)."""
    return jnp.asarray(x) if dtype is None else jnp.asarray(x, dtype=dtype)


def _check_positive_scalar(name: str, value: float, *, allow_zero: bool = False) -> float:
    value = float(value)
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}; got {value!r}")
    return value


def ldam_margins(class_counts: Any, max_margin: float = 0.5, *, dtype: Any = None) -> jax.Array:
    """LDAM per-class margins.

    m_c = max_margin * n_c^(-1/4) / max_j n_j^(-1/4), so the rarest class gets
    ``max_margin``. The margins are in cosine units: losses subtract
    ``scale * m_y`` from the (already scaled) target logit.

    Args:
        class_counts: Training counts n_c, ``[C]``, concrete, all > 0.
        max_margin: The largest margin ``max_m`` (0.5 in all configs).
        dtype: Output dtype; default float64 under x64, else float32.

    Returns:
        Margins ``m``, shape ``[C]``.

    Raises:
        ValueError: invalid counts (see ``check_class_counts``) or a negative
            / non-finite ``max_margin``.
    """
    n = check_class_counts(class_counts)
    max_margin = _check_positive_scalar("max_margin", max_margin, allow_zero=True)
    inv = 1.0 / np.sqrt(np.sqrt(n))
    return _to_jax(inv * (max_margin / np.max(inv)), dtype)


def drw_weights(class_counts: Any, beta: float = 0.9999, *, dtype: Any = None) -> jax.Array:
    """Deferred re-weighting (class-balanced, effective-number) weights.

    w_c = (1 - beta) / (1 - beta^n_c), then rescaled to sum_c w_c = C.

    Args:
        class_counts: Training counts n_c, ``[C]``, concrete, all > 0.
        beta: Effective-number parameter, in [0, 1) (0.9999 in all configs).
        dtype: Output dtype; default float64 under x64, else float32.

    Returns:
        Weights ``w``, shape ``[C]``, summing to C.

    Raises:
        ValueError: invalid counts or ``beta`` outside [0, 1).
    """
    n = check_class_counts(class_counts)
    beta = float(beta)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must lie in [0, 1); got {beta!r}")
    effective_num = 1.0 - np.power(beta, n)
    w = (1.0 - beta) / effective_num
    return _to_jax(w / np.sum(w) * n.shape[0], dtype)


def diversity_temperatures(
    class_counts: Any,
    reweight_factor: float,
    base_temperature: float = 1.0,
    formula: str = "official",
    *,
    dtype: Any = None,
) -> jax.Array:
    """Distribution-aware diversity temperatures of RIDE.

    b_c = gamma * C * n_c / N + (1 - gamma), N = sum_c n_c, gamma = ``reweight_factor``.

    * ``formula='official'`` (official code): T_c = alpha * b_c / max_j b_j.
      The head class gets alpha and rarer classes less.
    * ``formula='paper'`` (paper eqs. 13-14): T_c = alpha * (b_c + 1 - max_j b_j).
      Agrees with 'official' only for the head class (CIFAR-100-LT r100 tail:
      0.7718 paper vs 0.8067 official).

    Args:
        class_counts: Training counts n_c, ``[C]``, concrete, all > 0.
        reweight_factor: gamma (0.05 CIFAR, 0.02 ImageNet-LT, 0.015 iNat).
        base_temperature: alpha (1.0 in all configs).
        formula: ``'official'`` or ``'paper'``.
        dtype: Output dtype; default float64 under x64, else float32.

    Returns:
        Temperatures ``T``, shape ``[C]``.

    Raises:
        ValueError: invalid counts, non-positive ``base_temperature``, an
            unknown ``formula`` (the message lists the valid ones), or a
            resulting temperature <= 0 (the official code asserts b_c > 0).
    """
    n = check_class_counts(class_counts)
    check_choice("formula", formula, TEMPERATURE_FORMULAS)
    alpha = _check_positive_scalar("base_temperature", base_temperature)
    gamma = float(reweight_factor)
    if not np.isfinite(gamma):
        raise ValueError(f"reweight_factor must be finite; got {reweight_factor!r}")
    num_classes = n.shape[0]
    b = num_classes * (n / np.sum(n)) * gamma + 1.0 - gamma
    if formula == "official":
        if np.any(b <= 0):
            raise ValueError(
                f"reweight_factor={gamma!r} gives non-positive diversity weights b_c; min b_c = {b.min()!r}"
            )
        t = alpha * (b / np.max(b))
    else:
        t = alpha * (b + 1.0 - np.max(b))
        if np.any(t <= 0):
            raise ValueError(f"reweight_factor={gamma!r} gives non-positive paper temperatures; min T_c = {t.min()!r}")
    return _to_jax(t, dtype)


class RideClassVectors(NamedTuple):
    """The per-class vectors a RIDE / LDAM-DRW loss uses in one epoch.

    A NamedTuple, hence a jax pytree: it can be passed straight into a jitted
    train step. All fields have shape ``[C]``.

    Attributes:
        margins: LDAM margins m_c (always active).
        class_weights: DRW weights w_c when re-weighting is active, else
            ``ones(C)`` (exactly equivalent to no weights).
        temperatures: Diversity temperatures T_c when active, else
            ``full(C, base_temperature)`` (exactly equivalent to the scalar
            base temperature, including T_bar = base_temperature).
    """

    margins: jax.Array
    class_weights: jax.Array
    temperatures: jax.Array


def ride_class_vectors(
    class_counts: Any,
    *,
    max_margin: float = 0.5,
    beta: float = 0.9999,
    reweight_factor: float = 0.05,
    base_temperature: float = 1.0,
    formula: str = "official",
    dtype: Any = None,
) -> RideClassVectors:
    """The per-class vectors with re-weighting ACTIVE (after the switch epoch).

    Args:
        class_counts: Training counts n_c, ``[C]``.
        max_margin: LDAM ``max_m``.
        beta: DRW beta.
        reweight_factor: Diversity gamma.
        base_temperature: Diversity alpha.
        formula: Temperature formula, ``'official'`` or ``'paper'``.
        dtype: Output dtype; default float64 under x64, else float32.

    Returns:
        ``RideClassVectors(margins, class_weights=DRW w, temperatures=T)``, each ``[C]``.
    """
    return RideClassVectors(
        margins=ldam_margins(class_counts, max_margin, dtype=dtype),
        class_weights=drw_weights(class_counts, beta, dtype=dtype),
        temperatures=diversity_temperatures(class_counts, reweight_factor, base_temperature, formula, dtype=dtype),
    )


def reweighting_active(epoch: int, reweight_epoch: int) -> bool:
    """Whether DRW weights and class temperatures are on in 1-indexed ``epoch``.

    Active iff ``epoch > reweight_epoch`` (RIDE ``_hook_before_epoch``;
    identical to LDAM-DRW's ``(epoch - 1) // reweight_epoch >= 1``).

    Args:
        epoch: 1-indexed epoch.
        reweight_epoch: Last epoch without re-weighting (160 CIFAR, 80 others).

    Returns:
        ``epoch > reweight_epoch``.
    """
    return int(epoch) > int(reweight_epoch)


def ride_schedule(
    class_counts: Any,
    epoch: int,
    reweight_epoch: int,
    *,
    max_margin: float = 0.5,
    beta: float = 0.9999,
    reweight_factor: float = 0.05,
    base_temperature: float = 1.0,
    formula: str = "official",
    dtype: Any = None,
) -> RideClassVectors:
    """The per-class vectors in force in the 1-indexed ``epoch``.

    If ``epoch > reweight_epoch``: ``(m, w_DRW, T)``. Otherwise
    ``(m, ones(C), full(C, base_temperature))``. Passing these "inactive"
    arrays to the losses is exactly equivalent to passing ``class_weights=None``
    and ``temperatures=None``: the weighted mean with unit weights is the plain
    mean, the per-column division by a constant is the scalar division, and
    T_bar of a constant vector is that constant. Because the shapes and dtypes
    do not change at the switch, a jitted train step taking these arrays as
    arguments does not recompile.

    Args:
        class_counts: Training counts n_c, ``[C]``.
        epoch: 1-indexed epoch (python int).
        reweight_epoch: Switch epoch (160 CIFAR, 80 ImageNet-LT / iNat).
        max_margin: LDAM ``max_m``.
        beta: DRW beta.
        reweight_factor: Diversity gamma.
        base_temperature: Diversity alpha.
        formula: Temperature formula, ``'official'`` or ``'paper'``.
        dtype: Output dtype; default float64 under x64, else float32.

    Returns:
        ``RideClassVectors``, each field ``[C]``.
    """
    active = ride_class_vectors(
        class_counts,
        max_margin=max_margin,
        beta=beta,
        reweight_factor=reweight_factor,
        base_temperature=base_temperature,
        formula=formula,
        dtype=dtype,
    )
    if reweighting_active(epoch, reweight_epoch):
        return active
    return select_class_vectors(epoch, reweight_epoch, active, base_temperature)


def select_class_vectors(
    epoch: Any,
    reweight_epoch: Any,
    active: RideClassVectors,
    base_temperature: float = 1.0,
) -> RideClassVectors:
    """Traceable version of :func:`ride_schedule` (``epoch`` may be traced).

    Uses ``jnp.where(epoch > reweight_epoch, active, inactive)`` so a jitted
    train step that receives the epoch as an array switches at the right epoch
    without recompiling.

    Args:
        epoch: 1-indexed epoch, python int or (traced) integer scalar.
        reweight_epoch: Switch epoch, python int or integer scalar.
        active: The vectors with re-weighting on (:func:`ride_class_vectors`).
        base_temperature: alpha, the temperature used before the switch.

    Returns:
        ``RideClassVectors`` with ``class_weights`` = w if active else ones(C)
        and ``temperatures`` = T if active else full(C, alpha); ``margins``
        unchanged. Shapes ``[C]``.
    """
    on = jnp.asarray(epoch) > jnp.asarray(reweight_epoch)
    w = jnp.asarray(active.class_weights)
    t = jnp.asarray(active.temperatures)
    return RideClassVectors(
        margins=active.margins,
        class_weights=jnp.where(on, w, jnp.ones_like(w)),
        temperatures=jnp.where(on, t, jnp.full_like(t, base_temperature)),
    )
