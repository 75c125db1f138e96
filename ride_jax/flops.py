"""Compute accounting: multiply-accumulates (MACs) of convolutions and linear layers.

RIDE's papers and README report thop "GFLOPs", which are MACs of convs and linears per
image (official RIDE ``utils/gflops.py``, thop). The official counter silently skips the experts'
NormedLinear heads; these functions count them (``heads`` in ``ModelMacs`` says how
much they add, so ``total - heads`` compares with the official figures).

Counts are read off the traced computation (``jax.make_jaxpr``: every
``conv_general_dilated`` and ``dot_general``), so they hold for any architecture or width
the models module can build, without running anything.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from ride_jax.models.ride import RIDEModel


def jaxpr_macs(closed_jaxpr) -> int:
    """MACs of all convolutions and matrix products in a (closed) jaxpr, recursively.

    conv: ``prod(out_shape) * in_features_per_group * prod(kernel_spatial)``;
    dot_general: ``prod(out_shape) * prod(contracted dims)``.
    """
    jaxpr = getattr(closed_jaxpr, "jaxpr", closed_jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            rhs_spec = eqn.params["dimension_numbers"].rhs_spec
            kernel = rhs[rhs_spec[1]] * math.prod(rhs[d] for d in rhs_spec[2:])
            total += math.prod(eqn.outvars[0].aval.shape) * kernel
        elif name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += (math.prod(eqn.outvars[0].aval.shape)
                      * math.prod(lhs[d] for d in lhs_contract))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    total += jaxpr_macs(sub)
    return total


@dataclasses.dataclass(frozen=True)
class ModelMacs:
    """MACs per image of a RIDE model.

    Attributes:
      shared: trunk (stem and shared stages).
      per_expert: one expert, classifier head included.
      heads: one expert's classifier head alone (what the official counter omits); a
        ResLT expert's shared classifier counts once per branch (K times).
      num_experts: E.
    """

    shared: int
    per_expert: int
    heads: int
    num_experts: int

    @property
    def total(self) -> int:
        """All experts: ``shared + E * per_expert``."""
        return self.with_experts(self.num_experts)

    def with_experts(self, k: int) -> int:
        """MACs when only the first ``k`` experts run (1 <= k <= E)."""
        if not 1 <= k <= self.num_experts:
            raise ValueError(f"k={k} must be between 1 and num_experts={self.num_experts}")
        return self.shared + k * self.per_expert

    def expected(self, usage: Sequence[float]) -> float:
        """Expected MACs per image, ``sum_k p_k * with_experts(k)``.

        Args:
          usage: ``[E]`` fractions of images that used exactly k = 1..E experts
            (summing to 1; percentages are not accepted).
        """
        if len(usage) != self.num_experts:
            raise ValueError(f"usage has {len(usage)} entries, expected {self.num_experts}")
        if any(p < 0 for p in usage) or abs(sum(usage) - 1.0) > 1e-6:
            raise ValueError(f"usage must be non-negative fractions summing to 1, got {usage}")
        return float(sum(p * self.with_experts(k + 1) for k, p in enumerate(usage)))


def model_macs(model: RIDEModel, image_size: int | None = None, *,
               image_shape: Sequence[int] | None = None) -> ModelMacs:
    """Counts conv+linear MACs per ``image_size`` x ``image_size`` RGB image.

    Args:
      model: a ``RIDEModel`` (``ride_jax.models.create_model``).
      image_size: input side (default 32 for ``resnet32``, 224 otherwise).
      image_shape: ``(H, W, channels)`` instead (e.g. ``(28, 28, 1)`` for Fashion-MNIST).
    """
    if image_shape is None:
        size = image_size or model.default_image_size
        image_shape = (size, size, 3)
    images = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    trunk_vars = {c: t["trunk"] for c, t in variables.items()}
    expert_vars = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype),
                               {c: t["experts"] for c, t in variables.items()})

    def trunk_fn(v, x):
        return model.trunk.apply(v, x, train=False)

    h = jax.eval_shape(trunk_fn, trunk_vars, images)

    def expert_fn(v, h):
        return model.expert.apply(v, h, train=False)

    shared = jaxpr_macs(jax.make_jaxpr(trunk_fn)(trunk_vars, images))
    per_expert = jaxpr_macs(jax.make_jaxpr(expert_fn)(expert_vars, h))
    head = expert_vars["params"]["linear"]["kernel"].shape  # (D, C)
    # A ResLT expert applies its one classifier to each of its K branches.
    return ModelMacs(shared=shared, per_expert=per_expert,
                     heads=max(model.num_branches, 1) * head[0] * head[1],
                     num_experts=model.num_experts)


def routed_macs(macs: ModelMacs, router_macs: int, usage: Sequence[float]) -> dict:
    """Expected MACs per image of routed (RIDE-EA) inference, routers included.

    An image that used exactly ``k`` experts ran the trunk, ``k`` experts (heads
    included) and ``min(k, E - 1)`` router parts (the last one it reached said stop,
    unless ``k == E``).

    Args:
      macs: :func:`model_macs` of the network.
      router_macs: MACs of one router part (``Router.macs``).
      usage: ``[E]`` fractions of images that used exactly 1..E experts.

    Returns:
      ``{'expected': float, 'per_k': [E] ints, 'all_experts': int}`` where
      ``all_experts`` is the plain network with every expert and no router.
    """
    e = macs.num_experts
    per_k = [macs.with_experts(k) + min(k, e - 1) * router_macs for k in range(1, e + 1)]
    macs.expected(usage)                      # validates usage
    return {"expected": float(sum(p * m for p, m in zip(usage, per_k))), "per_k": per_k,
            "all_experts": macs.total}
