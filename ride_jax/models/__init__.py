"""RIDE networks (Flax Linen modules used through pure ``init`` / ``apply``)."""

from ride_jax.models.layers import BatchNorm, NormedLinear
from ride_jax.models.ride import (ARCHS, EXPERT_IMPLS, RIDEModel, count_params,
                                  create_model)

__all__ = ["ARCHS", "EXPERT_IMPLS", "BatchNorm", "NormedLinear", "RIDEModel",
           "count_params", "create_model"]
