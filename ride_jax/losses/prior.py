"""Prior-corrected softmax losses and the post-hoc logit adjustment.

* Logit adjustment (Menon et al., "Long-tail learning via logit adjustment",
  ICLR 2021): train with CE on ``z + log(pi**tau + 1e-12)``, pi = n / sum(n),
  exactly the form of the official code (google-research ``logit_adjustment``,
  ``utils.py: build_loss_fn``); or, post hoc, predict
  ``argmax(z - log(pi**tau + 1e-12))``.
* Balanced Softmax (Ren et al., NeurIPS 2020):
  phi_j = n_j exp(z_j) / sum_i n_i exp(z_i), i.e. CE on ``z + log(n)``. Since
  CE is shift invariant this equals logit adjustment with tau = 1 (up to the
  1e-12 epsilon).

Shapes: ``logits`` ``[B, C]`` (or ``[..., C]``), ``labels`` integer ``[B]``
(``logits.shape[:-1]``), ``class_counts`` ``[C]``. Computation happens in
the logits' float dtype (float32 for half-precision logits, float64 only with
x64 enabled and float64 logits). Counts are validated when concrete; traced
counts (counts passed as a ``jit`` argument) get only the static length check.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ride_jax.losses._checks import check_class_counts, check_logits, check_vector, float_dtype, is_concrete
from ride_jax.losses.classification import _ce_core, _prepare

__all__ = ["log_prior", "logit_adjusted_loss", "balanced_softmax_loss", "posthoc_logit_adjust"]

_EPS = 1e-12  # the official logit-adjustment epsilon


def _counts(class_counts: Any, num_classes: int | None, allow_zero: bool) -> Any:
    """Validates counts ``[C]``: finite, > 0 (or >= 0 with a positive sum when ``allow_zero``)."""
    if is_concrete(class_counts):
        arr = np.asarray(class_counts)
        zero = (arr == 0) if allow_zero and np.issubdtype(arr.dtype, np.number) else False
        class_counts = check_class_counts(np.where(zero, 1, arr)) * ~np.asarray(zero)  # zeros pass, if allowed
        if not class_counts.any():
            raise ValueError("class_counts are all zero; the prior pi = n / sum(n) is undefined")
    if num_classes is not None:
        class_counts = check_vector("class_counts", class_counts, num_classes)
    return class_counts


def _scalar(name: str, value: Any) -> Any:
    if jnp.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar; got shape {tuple(jnp.shape(value))}")
    if is_concrete(value) and not np.isfinite(float(value)):
        raise ValueError(f"{name} must be finite; got {value!r}")
    return value


def _log_prior(counts: jax.Array, tau: Any, eps: Any, dtype: Any) -> jax.Array:
    counts = jnp.asarray(counts).astype(dtype)
    return jnp.log(jnp.power(counts / jnp.sum(counts), jnp.asarray(tau, dtype)) + jnp.asarray(eps, dtype))


@functools.partial(jax.jit, static_argnames=("dtype",))
def _log_prior_core(counts, tau, eps, dtype):
    return _log_prior(counts, tau, eps, dtype)


@functools.partial(jax.jit, static_argnames=("dtype", "balanced"))
def _prior_ce_core(logits, labels, counts, tau, dtype, balanced):
    counts = counts.astype(dtype)
    adjustment = jnp.log(counts) if balanced else _log_prior(counts, tau, _EPS, dtype)
    return jnp.mean(_ce_core(logits.astype(dtype) + adjustment, labels, None, 1.0, None, dtype)[0])


@functools.partial(jax.jit, static_argnames=("dtype",))
def _posthoc_core(logits, counts, tau, dtype):
    return logits.astype(dtype) - _log_prior(counts, tau, _EPS, dtype)


def log_prior(class_counts: Any, tau: Any = 1.0, eps: Any = _EPS, *, dtype: Any = jnp.float32) -> jax.Array:
    """Tempered log class prior, log(pi**tau + eps), pi = n / sum(n).

    Args:
        class_counts: Counts n ``[C]``, finite and >= 0 with a positive sum
            (a zero count gives log(eps), as in the official code).
        tau: Temperature (scalar; 1 in the paper; 0 gives all zeros).
        eps: Added inside the log (1e-12 in the official code).
        dtype: Output float dtype (float32 by default).

    Returns:
        ``[C]`` log prior.
    """
    counts = _counts(class_counts, None, allow_zero=True)
    return _log_prior_core(counts, _scalar("tau", tau), _scalar("eps", eps), jnp.dtype(dtype))


def logit_adjusted_loss(logits: Any, labels: Any, class_counts: Any, tau: Any = 1.0) -> jax.Array:
    """Logit-adjusted softmax cross-entropy (Menon et al. 2021).

    L = (1/B) sum_i -log softmax(z_i + log(pi**tau + 1e-12))_{y_i}; tau = 0 is plain CE.

    Args:
        logits: ``[B, C]`` (or ``[..., C]``; the mean runs over all leading axes).
        labels: Integer ``[B]``.
        class_counts: Counts n ``[C]`` (>= 0, positive sum).
        tau: Temperature (scalar).

    Returns:
        Scalar loss.
    """
    logits, labels, dtype = _prepare(logits, labels)
    counts = _counts(class_counts, logits.shape[-1], allow_zero=True)
    return _prior_ce_core(logits, labels, counts, _scalar("tau", tau), dtype, balanced=False)


def balanced_softmax_loss(logits: Any, labels: Any, class_counts: Any) -> jax.Array:
    """Balanced Softmax cross-entropy (Ren et al. 2020).

    L = (1/B) sum_i -log softmax(z_i + log n)_{y_i}
      = (1/B) sum_i -log( n_{y_i} exp(z_{i,y_i}) / sum_j n_j exp(z_ij) ).

    Args:
        logits: ``[B, C]`` (or ``[..., C]``).
        labels: Integer ``[B]``.
        class_counts: Counts n ``[C]``, every count > 0 (log 0 is undefined).

    Returns:
        Scalar loss.
    """
    logits, labels, dtype = _prepare(logits, labels)
    counts = _counts(class_counts, logits.shape[-1], allow_zero=False)
    return _prior_ce_core(logits, labels, counts, 1.0, dtype, balanced=True)


def posthoc_logit_adjust(logits: Any, class_counts: Any, tau: Any = 1.0) -> jax.Array:
    """Post-hoc logit adjustment (Menon et al. 2021, section 4).

    z'_ic = z_ic - log(pi_c**tau + 1e-12) (~= z_ic - tau * log pi_c); the
    prediction is ``argmax(z', axis=-1)``.

    Args:
        logits: ``[B, C]`` (or ``[..., C]``) of a model trained with plain CE.
        class_counts: Counts n ``[C]`` (>= 0, positive sum).
        tau: Temperature (scalar; 1 in the paper).

    Returns:
        ``[B, C]`` adjusted logits in the compute dtype (float32 for
        half-precision logits).
    """
    logits = check_logits("logits", logits, min_ndim=1)
    dtype = float_dtype(logits)
    counts = _counts(class_counts, logits.shape[-1], allow_zero=True)
    return _posthoc_core(logits, counts, _scalar("tau", tau), dtype)
