"""Focal loss (Lin et al., ICCV 2017) with ``loss.focal_gamma``, as the RIDE repository's
``FocalLoss`` (official ``model/loss.py``), on the single-model recipe."""

from __future__ import annotations

from ride_jax import losses
from ride_jax.methods.base import Method, Recipe, logits_loss
from ride_jax.methods.ldam_drw import single_model_preset


def make_loss(config, class_counts):
    gamma = config.loss.focal_gamma
    return logits_loss(lambda logits, labels: losses.focal_loss(logits, labels, gamma))


def preset(config, recipe: Recipe) -> None:
    config.loss.name = "focal"
    single_model_preset(config, cosine=False)


def describe(config) -> str:
    return f"focal (gamma {config.loss.focal_gamma})"


METHOD = Method(name="focal", make_loss=make_loss, preset=preset, describe=describe)
