"""Cross-entropy: the plain baseline, one linear-head network (the RIDE repository's
single-model recipe, :func:`ride_jax.methods.ldam_drw.single_model_preset`)."""

from __future__ import annotations

from ride_jax import losses
from ride_jax.methods.base import Method, Recipe, logits_loss
from ride_jax.methods.ldam_drw import single_model_preset


def make_loss(config, class_counts):
    return logits_loss(losses.cross_entropy)


def preset(config, recipe: Recipe) -> None:
    config.loss.name = "ce"
    single_model_preset(config, cosine=False)


METHOD = Method(name="ce", make_loss=make_loss, preset=preset)
