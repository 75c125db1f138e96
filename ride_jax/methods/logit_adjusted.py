"""Logit-adjusted loss (Menon et al., "Long-tail learning via logit adjustment", ICLR
2021): cross-entropy on ``logits + tau * log(prior)``, prior = the training class
frequencies, ``tau = loss.logit_adjust_tau`` (default 1; the official code adds
``log(prior ** tau + 1e-12)``, google-research ``logit_adjustment/utils.py``
``build_loss_fn``). Prediction is the plain ``argmax(logits)``. Recipe: the
single-model baseline's (one linear-head network, as CE).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ride_jax import losses
from ride_jax.methods.base import Method, Recipe, logits_loss
from ride_jax.methods.ldam_drw import single_model_preset


def make_loss(config, class_counts):
    counts = jnp.asarray(np.asarray(class_counts), jnp.float32)
    tau = float(config.loss.logit_adjust_tau)
    return logits_loss(lambda logits, labels: losses.logit_adjusted_loss(logits, labels,
                                                                         counts, tau=tau))


def preset(config, recipe: Recipe) -> None:
    config.loss.name = "logit_adjusted"
    single_model_preset(config, cosine=False)


def describe(config) -> str:
    return f"logit_adjusted (tau {config.loss.logit_adjust_tau})"


METHOD = Method(name="logit_adjusted", make_loss=make_loss, preset=preset,
                describe=describe)
