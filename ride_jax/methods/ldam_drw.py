"""LDAM-DRW (Cao et al., NeurIPS 2019): label-distribution-aware margins, deferred
re-weighting; and the single-model recipe the RIDE repository trains its baselines with.

Loss: LDAM (margins ``max_m / n_j^(1/4)``, scaled by ``model.scale``) with the DRW class
weights from ``loss.reweight_epoch + 1`` (official RIDE ``model/loss.py`` ``LDAMLoss``).
"""

from __future__ import annotations

import jax.numpy as jnp

from ride_jax import losses
from ride_jax.methods.base import Method, Recipe
from ride_jax.methods.ride import drw_vectors


def single_model_preset(config, *, cosine: bool) -> None:
    """The official baseline recipe: one expert without dimension reduction, no
    Nesterov, weight decay 2e-4, crop + flip without rotation (``ldam``); a cosine
    classifier only when ``cosine``."""
    config.model.num_experts = 1
    config.model.reduce_dimension = False
    config.model.use_norm = cosine
    config.optim.weight_decay = 2e-4
    config.optim.nesterov = False
    config.data.augment = "ldam"


def make_loss(config, class_counts):
    vectors = drw_vectors(config, class_counts)
    scale = config.model.scale

    def loss_fn(outputs, labels, epoch):
        vec = vectors(epoch)
        return losses.ldam_loss(outputs["logits"].astype(jnp.float32), labels, vec.margins,
                                scale, class_weights=vec.class_weights), {}
    return loss_fn


def preset(config, recipe: Recipe) -> None:
    config.loss.name = "ldam_drw"
    single_model_preset(config, cosine=True)


def describe(config) -> str:
    loss = config.loss
    return (f"ldam_drw (max margin {loss.max_margin}, DRW from epoch "
            f"{loss.reweight_epoch + 1})")


METHOD = Method(name="ldam_drw", make_loss=make_loss, preset=preset, describe=describe)
