"""SADE's training loss: three experts, each fitted to its own label prior.

SADE (Zhang et al., "Self-Supervised Aggregation of Diverse Experts for Test-Agnostic
Long-Tailed Recognition", NeurIPS 2022; official Vanint/SADE-AgnosticLT, commit
``cba11b8b``, ``model/loss.py:244-286``, ``DiverseExpertLoss``). With the training prior
pi = n / sum(n), its rank-reversed copy pi_bar (:func:`inverse_prior`), lambda = ``lam``
and eps = 1e-9 inside every log (``model/loss.py:279, 283``)::

    L1 = CE(v1, y)                                          forward expert  (plain softmax)
    L2 = CE(v2 + log(pi + eps), y)                          uniform expert  (Balanced Softmax)
    L3 = CE(v3 + log(pi + eps) - lam * log(pi_bar + eps), y)  backward expert
    L  = L1 + L2 + L3

each CE the batch mean, unit weights, no temperature (the cosine scale s = 30 is already in
the logits: ``DiverseExpertLoss``'s ``s`` is unused, ``model/loss.py:245``), no diversity
term and no re-weighting. The experts are read by position, 0 = forward, 1 = uniform,
2 = backward (``model/loss.py:270-272``). At the optimum expert k's softmax is
p(x | y) q_k(y) with q_1 = pi, q_2 uniform, q_3 proportional to pi_bar ** lam.

Shapes: ``expert_logits`` ``[3, B, C]`` (the network's ``outputs['expert_logits']``, NOT
the mean ``outputs['logits']``), ``labels`` integer ``[B]``, ``class_counts`` ``[C]``.
Computation happens in the logits' float dtype (float32 for half precision).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from ride_jax.losses._checks import check_expert_logits, check_labels, float_dtype
from ride_jax.losses.classification import _nll
from ride_jax.losses.prior import _counts, _scalar

__all__ = ["SADE_EPS", "SADE_EXPERTS", "inverse_prior", "sade_adjustments", "sade_loss"]

SADE_EPS = 1e-9                      # official model/loss.py:279, 283
SADE_EXPERTS = ("forward", "uniform", "backward")   # expert 0, 1, 2


def _inverse_prior(prior: jax.Array) -> jax.Array:
    """pi_bar_c = (pi sorted ascending)[C - 1 - rank(c)] (official ``inverse_prior``,
    ``model/loss.py:255-261``); ties: the larger class id is the rarer (see
    :func:`inverse_prior`)."""
    num = prior.shape[-1]
    # Class ids in ascending order of prior, equal priors with the larger id first: a
    # stable sort of the id-reversed vector, mapped back to ids.
    order = (num - 1) - jnp.argsort(prior[::-1], stable=True)
    ascending = prior[order]
    return jnp.zeros_like(prior).at[order].set(ascending[::-1])


def _adjustments(counts: jax.Array, lam: Any, dtype: Any) -> jax.Array:
    counts = jnp.asarray(counts).astype(dtype)
    prior = counts / jnp.sum(counts)
    eps = jnp.asarray(SADE_EPS, dtype)
    log_prior = jnp.log(prior + eps)
    log_inverse = jnp.log(_inverse_prior(prior) + eps)
    return jnp.stack([jnp.zeros_like(log_prior), log_prior,
                      log_prior - jnp.asarray(lam, dtype) * log_inverse])


@functools.partial(jax.jit, static_argnames=("dtype",))
def _inverse_prior_core(counts, dtype):
    counts = counts.astype(dtype)
    return _inverse_prior(counts / jnp.sum(counts))


@functools.partial(jax.jit, static_argnames=("dtype",))
def _adjustments_core(counts, lam, dtype):
    return _adjustments(counts, lam, dtype)


@functools.partial(jax.jit, static_argnames=("dtype",))
def _sade_core(expert_logits, labels, counts, lam, dtype):
    shifted = expert_logits.astype(dtype) + _adjustments(counts, lam, dtype)[:, None, :]
    onehot = jax.nn.one_hot(labels, expert_logits.shape[-1], dtype=dtype)
    per_expert = jnp.mean(_nll(shifted, onehot[None]), axis=-1)      # [3]
    return jnp.sum(per_expert), per_expert


def inverse_prior(class_counts: Any, *, dtype: Any = jnp.float32) -> jax.Array:
    """SADE's inverse prior pi_bar ``[C]``: the training prior pi = n / sum(n) with its
    values reassigned in reversed rank order (official ``DiverseExpertLoss.inverse_prior``,
    ``model/loss.py:255-261``), NOT 1 / pi: the most frequent class receives the smallest
    prior value, the second most frequent the second smallest, and so on.

    Ties: the official ``torch.sort`` leaves the order of equal priors unspecified. Here
    the class with the larger id counts as the rarer one, so for classes numbered by
    decreasing frequency (CIFAR-LT; Places-LT after its remap) pi_bar is exactly pi
    reversed, ``pi_bar_c = pi_{C-1-c}``; for other orders (ImageNet-LT) it is this fixed,
    device-independent rule.

    Args:
      class_counts: training counts n ``[C]``, finite and >= 0 with a positive sum.
      dtype: output float dtype.

    Returns:
      ``[C]`` pi_bar (a permutation of pi).
    """
    counts = _counts(class_counts, None, allow_zero=True)
    return _inverse_prior_core(jnp.asarray(counts), jnp.dtype(dtype))


def sade_adjustments(class_counts: Any, lam: Any = 2.0, *,
                     dtype: Any = jnp.float32) -> jax.Array:
    """The per-expert logit shifts of :func:`sade_loss`, ``[3, C]``: rows 0 (forward,
    zeros), 1 (uniform, ``log(pi + 1e-9)``) and 2 (backward,
    ``log(pi + 1e-9) - lam * log(pi_bar + 1e-9)``)."""
    counts = _counts(class_counts, None, allow_zero=True)
    return _adjustments_core(jnp.asarray(counts), _scalar("lam", lam), jnp.dtype(dtype))


def sade_loss(expert_logits: Any, labels: Any, class_counts: Any,
              lam: Any = 2.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SADE's skill-diverse expert loss (official ``DiverseExpertLoss``, the module
    docstring's L1 + L2 + L3).

    Args:
      expert_logits: ``[3, B, C]`` logits of the forward, uniform and backward experts,
        in that order (cosine heads: the scale s already applied).
      labels: integer ``[B]`` in ``[0, C)``.
      class_counts: training counts n ``[C]``, >= 0 with a positive sum (a zero count
        gives log(1e-9), as the official code).
      lam: lambda, the backward expert's exponent on pi_bar (scalar; the official
        ``loss.args.tau``: 2 for CIFAR-100-LT and ImageNet-LT, 1 for iNat and Places-LT).

    Returns:
      ``(loss, aux)``: the float scalar L1 + L2 + L3 and ``aux`` with the float32 scalars
      ``expert0`` (L1, forward), ``expert1`` (L2, uniform) and ``expert2`` (L3, backward).

    Raises:
      ValueError: ``expert_logits`` is not ``[3, B, C]``, ``labels`` not ``[B]`` or out of
        range (concrete labels), bad ``class_counts`` (wrong length, negative, all zero)
        or a ``lam`` that is not a finite scalar.
      TypeError: non-float logits or non-integer labels.
    """
    logits = check_expert_logits(expert_logits)
    if logits.shape[0] != 3:
        raise ValueError(f"expert_logits must hold SADE's 3 experts (forward, uniform, "
                         f"backward) on axis 0; got shape {tuple(logits.shape)}")
    labels = check_labels(labels, logits.shape[-1], shape=logits.shape[1:2])
    counts = _counts(class_counts, logits.shape[-1], allow_zero=True)
    loss, per_expert = _sade_core(logits, labels, counts, _scalar("lam", lam),
                                  float_dtype(logits))
    aux = {f"expert{k}": per_expert[k].astype(jnp.float32) for k in range(3)}
    return loss, aux
