"""Balanced Softmax (Ren et al., "Balanced Meta-Softmax for long-tailed visual
recognition", NeurIPS 2020): cross-entropy on ``logits + log(class_counts)``, i.e. the
softmax weighted by the training counts ``n_j exp(z_j) / sum_i n_i exp(z_i)``; the plain
softmax at test time. (The same as the logit-adjusted loss with tau = 1 up to its
1e-12.) Recipe: the single-model baseline's (one linear-head network, as CE).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ride_jax import losses
from ride_jax.methods.base import Method, Recipe, logits_loss
from ride_jax.methods.ldam_drw import single_model_preset


def make_loss(config, class_counts):
    counts = np.asarray(class_counts)
    if np.any(counts <= 0):
        empty = np.flatnonzero(counts <= 0)[:5].tolist()
        raise ValueError(f"loss.name='balanced_softmax' needs every class in the training "
                         f"set (log of the counts); classes {empty} have none")
    counts = jnp.asarray(counts, jnp.float32)
    return logits_loss(lambda logits, labels: losses.balanced_softmax_loss(logits, labels,
                                                                           counts))


def preset(config, recipe: Recipe) -> None:
    config.loss.name = "balanced_softmax"
    single_model_preset(config, cosine=False)


METHOD = Method(name="balanced_softmax", make_loss=make_loss, preset=preset)
