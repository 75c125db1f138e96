"""Expert-assignment (router) targets and loss of RIDE-EA stage 2.

Official RIDE ``model/ldam_drw_resnets/ea_resnet_cifar.py``, ``ResNet_s.forward`` with a
target (and ``model/fb_resnets/EAResNet.py``).

Router i (i = 0..E-2) decides whether to add expert i+1. Its training target
is "the ensemble of experts 0..i is wrong, and some larger ensemble 0..j
(j > i) is right":

    acc_i        = sum_{k<=i} z^k                       (running SUM of expert logits)
    correct[:,i] = argmax_c acc_i == y                  (first index wins ties, as torch/jnp)
    y_on[:,i]    = (not correct[:,i]) and any_{j>i} correct[:,j]
    L_i          = mean_b BCEWithLogits(x[:,i], y_on[:,i], pos_weight = w_on)
    L_EA         = (1/(E-1)) sum_i L_i
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ride_jax.losses._checks import check_expert_logits, check_labels, check_logits, float_dtype

__all__ = ["ensemble_correctness", "routing_targets", "routing_loss"]


def ensemble_correctness(expert_logits: Any, labels: Any) -> jax.Array:
    """Correctness of the growing ensembles of experts 0..i.

    correct[b, i] = argmax_c (sum_{k<=i} z^k)_{b,c} == y_b. The running sum is
    accumulated expert by expert, in order, as the official code does.

    Args:
        expert_logits: ``[E, B, C]``.
        labels: Integer ``[B]``.

    Returns:
        Boolean ``[B, E]``.
    """
    z = check_expert_logits(expert_logits)
    num_e, batch, num_classes = z.shape
    labels = check_labels(labels, num_classes, shape=(batch,))
    acc = z[0]
    correct = [jnp.argmax(acc, axis=-1) == labels]
    for k in range(1, num_e):  # E is static; sequential sums like the official loop
        acc = acc + z[k]
        correct.append(jnp.argmax(acc, axis=-1) == labels)
    return jnp.stack(correct, axis=-1)


def routing_targets(expert_logits: Any, labels: Any) -> jax.Array:
    """Router targets y_on, one column per router.

    y_on[b, i] = (not correct[b, i]) and any(correct[b, i+1:]),
    with ``correct`` from :func:`ensemble_correctness`.

    Args:
        expert_logits: ``[E, B, C]`` (E >= 1; E == 1 gives ``[B, 0]``).
        labels: Integer ``[B]``.

    Returns:
        ``[B, E-1]`` float targets in {0, 1} (float64 under x64 with float64
        logits, float32 otherwise).
    """
    correct = ensemble_correctness(expert_logits, labels)
    dtype = float_dtype(expert_logits)
    num_e = correct.shape[-1]
    cols = [(~correct[:, i]) & jnp.any(correct[:, i + 1 :], axis=-1) for i in range(num_e - 1)]
    if not cols:
        return jnp.zeros((correct.shape[0], 0), dtype=dtype)
    return jnp.stack(cols, axis=-1).astype(dtype)


def routing_loss(router_logits: Any, targets: Any, pos_weight: Any = 100.0) -> jax.Array:
    """Router loss: BCE-with-logits with ``pos_weight``, batch mean, router mean.

    l_bi = -[ w * y_bi * log sigmoid(x_bi) + (1 - y_bi) * log(1 - sigmoid(x_bi)) ],
    computed with ``log_sigmoid`` (stable for any x);
    L = (1/R) sum_i (1/B) sum_b l_bi,  R = E - 1 routers.

    Args:
        router_logits: x, ``[B, R]``.
        targets: y, ``[B, R]`` in [0, 1] (:func:`routing_targets`).
        pos_weight: w_on (100 in the EA configs; official default 20).

    Returns:
        Scalar loss.

    Raises:
        ValueError: not 2-D, shapes differ, or R == 0.
    """
    x = check_logits("router_logits", router_logits, ndim=2)
    y = jnp.asarray(targets)
    if tuple(y.shape) != tuple(x.shape):
        raise ValueError(f"targets has shape {tuple(y.shape)} but router_logits has shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError("router_logits has 0 routers (a single-expert model has no router loss)")
    dtype = float_dtype(x)
    x = x.astype(dtype)
    y = y.astype(dtype)
    per = -(pos_weight * y * jax.nn.log_sigmoid(x) + (1.0 - y) * jax.nn.log_sigmoid(-x))
    return jnp.sum(jnp.mean(per, axis=0)) / x.shape[1]
