"""Losses of RIDE (ICLR 2021) and its baselines, as pure JAX functions.

Every function is pure, jit/grad/vmap friendly, and computes in the float
dtype of its inputs (float64 with x64 enabled and float64 inputs, float32
otherwise). Logits already include the cosine-classifier scale s = 30.

Per-class constants (computed once from concrete class counts):
    ldam_margins, drw_weights, diversity_temperatures, ride_class_vectors,
    ride_schedule / select_class_vectors (epoch switch), RideClassVectors.
Single-head losses:
    cross_entropy, per_sample_cross_entropy, focal_loss, ldam_margin_logits,
    ldam_loss, softmax_kl, distill_kl.
Prior-corrected (logit adjustment, Balanced Softmax):
    log_prior, logit_adjusted_loss, balanced_softmax_loss,
    posthoc_logit_adjust (post-hoc: predict argmax of its output).
RIDE:
    diversity_kl, ride_loss, ride_distill_loss.
SADE (official Vanint/SADE-AgnosticLT):
    sade_loss, sade_adjustments, inverse_prior, SADE_EPS, SADE_EXPERTS.
ResLT (official jiequancui/ResLT):
    reslt_loss; class groups reslt_index_groups (CIFAR, RESLT_CIFAR_GROUPS),
    reslt_frequency_groups (ImageNet-LT / iNat, RESLT_FREQUENCY_GROUPS),
    reslt_example_masks, ResLTGroups, RESLT_FUSED_CE.
Expert assignment (router):
    ensemble_correctness, routing_targets, routing_loss.
Validation helpers (for models and trainers):
    check_class_counts, check_labels, check_vector, check_expert_logits,
    check_logits, check_choice, is_concrete.
"""

from ride_jax.losses._checks import (
    check_choice,
    check_class_counts,
    check_expert_logits,
    check_labels,
    check_logits,
    check_vector,
    is_concrete,
)
from ride_jax.losses.class_vectors import (
    TEMPERATURE_FORMULAS,
    RideClassVectors,
    diversity_temperatures,
    drw_weights,
    ldam_margins,
    reweighting_active,
    ride_class_vectors,
    ride_schedule,
    select_class_vectors,
)
from ride_jax.losses.classification import (
    cross_entropy,
    distill_kl,
    focal_loss,
    ldam_loss,
    ldam_margin_logits,
    per_sample_cross_entropy,
    softmax_kl,
)
from ride_jax.losses.prior import balanced_softmax_loss, log_prior, logit_adjusted_loss, posthoc_logit_adjust
from ride_jax.losses.reslt import (
    RESLT_CIFAR_GROUPS,
    RESLT_FREQUENCY_GROUPS,
    RESLT_FUSED_CE,
    ResLTGroups,
    reslt_example_masks,
    reslt_frequency_groups,
    reslt_index_groups,
    reslt_loss,
)
from ride_jax.losses.ride import BASE_LOSSES, diversity_kl, ride_distill_loss, ride_loss
from ride_jax.losses.sade import SADE_EPS, SADE_EXPERTS, inverse_prior, sade_adjustments, sade_loss
from ride_jax.losses.routing import ensemble_correctness, routing_loss, routing_targets

__all__ = [
    "BASE_LOSSES",
    "RESLT_CIFAR_GROUPS",
    "RESLT_FREQUENCY_GROUPS",
    "RESLT_FUSED_CE",
    "ResLTGroups",
    "TEMPERATURE_FORMULAS",
    "RideClassVectors",
    "balanced_softmax_loss",
    "check_choice",
    "check_class_counts",
    "check_expert_logits",
    "check_labels",
    "check_logits",
    "check_vector",
    "cross_entropy",
    "distill_kl",
    "diversity_kl",
    "diversity_temperatures",
    "drw_weights",
    "ensemble_correctness",
    "focal_loss",
    "is_concrete",
    "ldam_loss",
    "ldam_margin_logits",
    "ldam_margins",
    "log_prior",
    "logit_adjusted_loss",
    "per_sample_cross_entropy",
    "posthoc_logit_adjust",
    "reslt_example_masks",
    "reslt_frequency_groups",
    "reslt_index_groups",
    "reslt_loss",
    "reweighting_active",
    "ride_class_vectors",
    "ride_distill_loss",
    "ride_loss",
    "ride_schedule",
    "routing_loss",
    "routing_targets",
    "SADE_EPS",
    "SADE_EXPERTS",
    "inverse_prior",
    "sade_adjustments",
    "sade_loss",
    "select_class_vectors",
    "softmax_kl",
]
