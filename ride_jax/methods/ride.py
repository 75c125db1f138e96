"""RIDE (Wang et al., ICLR 2021): diverse distribution-aware experts.

Loss: the RIDE loss of every expert (LDAM margins, DRW class weights and class
temperatures switched on after ``loss.reweight_epoch``, the diversity KL to the mean
logits; official ``model/loss.py`` ``RIDELoss``), and with a teacher the
self-distillation loss (``RIDELossWithDistill``). Network: the recipe's ``experts``
reduced experts with cosine (NormedLinear) heads: the base config as it is.
"""

from __future__ import annotations

import jax.numpy as jnp

from ride_jax import losses
from ride_jax.methods.base import Method, Recipe


def drw_vectors(config, class_counts):
    """The per-class margins, DRW weights and temperatures, and the epoch switch:
    ``epoch -> RideClassVectors`` (traced epoch; both sets are constants)."""
    loss = config.loss
    active = losses.ride_class_vectors(
        class_counts, max_margin=loss.max_margin, beta=loss.drw_beta,
        reweight_factor=loss.reweight_factor, base_temperature=loss.base_temperature,
        formula=loss.temperature_formula, dtype=jnp.float32)
    return lambda epoch: losses.select_class_vectors(epoch, loss.reweight_epoch, active,
                                                     loss.base_temperature)


def _ride_kwargs(config, vec) -> dict:
    loss = config.loss
    return dict(diversity_factor=loss.diversity_factor, margins=vec.margins,
                class_weights=vec.class_weights, temperatures=vec.temperatures,
                scale=config.model.scale, base_temperature=loss.base_temperature,
                base_loss_factor=loss.base_loss_factor)


def _scalars(aux: dict) -> dict:
    """The logged parts of ``ride_loss``'s aux: the base and diversity terms, summed
    over the experts (they add up to the loss)."""
    return {"base": jnp.sum(aux["per_expert_base"]),
            "diversity": jnp.sum(aux["per_expert_diversity"])}


def make_loss(config, class_counts):
    vectors = drw_vectors(config, class_counts)

    def loss_fn(outputs, labels, epoch):
        loss, aux = losses.ride_loss(outputs["expert_logits"].astype(jnp.float32), labels,
                                     **_ride_kwargs(config, vectors(epoch)))
        return loss, _scalars(aux)
    return loss_fn


def make_distill_loss(config, class_counts):
    """The RIDE loss plus the KL to ``outputs['teacher_logits']`` (``distill.*``)."""
    vectors = drw_vectors(config, class_counts)

    def loss_fn(outputs, labels, epoch):
        loss, aux = losses.ride_distill_loss(
            outputs["expert_logits"].astype(jnp.float32), labels,
            outputs["teacher_logits"].astype(jnp.float32),
            distill_temperature=config.distill.temperature,
            distill_factor=config.distill.factor, **_ride_kwargs(config, vectors(epoch)))
        return loss, dict(_scalars(aux), distill=aux["distill"])
    return loss_fn


def preset(config, recipe: Recipe) -> None:
    config.loss.name = "ride"
    config.model.num_experts = recipe.experts


def describe(config) -> str:
    loss = config.loss
    return (f"ride (diversity {loss.diversity_factor}, DRW from epoch "
            f"{loss.reweight_epoch + 1})")


METHOD = Method(name="ride", make_loss=make_loss, preset=preset,
                distill_loss=make_distill_loss, describe=describe)
