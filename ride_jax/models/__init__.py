"""RIDE networks (Flax Linen modules used through pure ``init`` / ``apply``)."""

from ride_jax.models.layers import BatchNorm, NormedLinear
from ride_jax.models.reslt import (RESLT_EVAL_GAMMA, CifarResLTExpert,
                                   ImageNetResLTExpert, ResLTClassifier)
from ride_jax.models.ride import (ARCHS, EXPERT_IMPLS, HEADS, RIDEModel, count_params,
                                  create_model, tau_normalize)
from ride_jax.models.router import Router, bucket_sizes, make_router, routed_apply

__all__ = ["ARCHS", "EXPERT_IMPLS", "HEADS", "RESLT_EVAL_GAMMA", "BatchNorm",
           "CifarResLTExpert", "ImageNetResLTExpert", "NormedLinear", "RIDEModel",
           "ResLTClassifier", "Router", "bucket_sizes", "count_params", "create_model",
           "make_router", "routed_apply", "tau_normalize"]
