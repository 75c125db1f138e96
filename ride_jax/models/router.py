"""RIDE expert assignment (RIDE-EA): the router and routed inference that skips work.

The router (official RIDE ``model/ldam_drw_resnets/ea_resnet_cifar.py``,
``ResNet_s.pred_expert_help``; ``model/fb_resnets/EAResNet.py``) has
``E - 1`` parts; part ``i`` decides whether expert ``i + 1`` runs::

    g     = f_i / ||f_i||_2                   f_i: pooled features of expert i   [B, D]
    h     = relu(g @ W_hid[i] + b_hid[i])     PER-ROUTER Linear(D -> 16)
    v     = concat(top_s(zbar_i), h)          top-s VALUES (descending) of the mean
                                              logits of experts 0..i, then h    [B, s+16]
    logit = v @ w_out + b_out                 SHARED Linear(s+16 -> 1)

Parameters (a plain dict, stored as ``params['router']`` next to the network's)::

    {'hidden': {'kernel': [R, D, 16], 'bias': [R, 16]},
     'out':    {'kernel': [s + 16, 1], 'bias': [1]}}          R = E - 1

Routed inference (official ``ResNet_s.forward`` without a target): expert 0 always
runs; expert ``i`` runs on the examples whose routers said "go on"
(``sigmoid(logit) > 0.5``) at every step so far; the output is the mean of the logits
of the experts used. :func:`routed_apply` makes that real work
saving under jit: the active examples are compacted (stable, in batch order) into the
smallest of a few static bucket sizes, only that bucket goes through the expert
(``lax.switch`` picks the compiled branch), and the results are scattered back.
BatchNorm runs in inference mode, so every example's output is independent of its
batch mates and the padding rows of a bucket change nothing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from ride_jax.losses._checks import check_choice
from ride_jax.models.ride import RIDEModel, _index, _split

Array = jax.Array
Params = dict[str, Any]

ROUTER_INITS = ("cifar", "torch")


@dataclasses.dataclass(frozen=True)
class Router:
    """The E-1 routers of a RIDE-EA model. Hashable, holds no arrays.

    Attributes:
      num_experts: E of the network it routes (>= 2).
      feature_dim: D, the experts' pooled feature size.
      num_classes: C.
      top_k: s, how many top mean-logit values each router sees (official
        ``top_choices_num``: 30 for CIFAR-100 and ImageNet-LT ResNet-10, 50 otherwise);
        ``1 <= s <= C``.
      hidden: width of the per-router hidden layer (16, official).
      init: ``'cifar'`` (kaiming-normal weights, as ``ea_resnet_cifar``'s
        ``_weights_init``) or ``'torch'`` (PyTorch's default Linear init, as the
        ImageNet EA models); biases use PyTorch's default in both.
    """

    num_experts: int
    feature_dim: int
    num_classes: int
    top_k: int
    hidden: int = 16
    init: str = "cifar"

    def __post_init__(self):
        check_choice("router init", self.init, ROUTER_INITS)
        if not isinstance(self.num_experts, int) or self.num_experts < 2:
            raise ValueError(f"a router needs num_experts >= 2, got {self.num_experts!r} "
                             "(a single-expert model has nothing to route)")
        if not isinstance(self.top_k, int) or not 1 <= self.top_k <= self.num_classes:
            raise ValueError(f"router top_k must be an integer in [1, num_classes="
                             f"{self.num_classes}], got {self.top_k!r}")

    @property
    def num_routers(self) -> int:
        return self.num_experts - 1

    @property
    def macs(self) -> int:
        """MACs of ONE router part per image: ``D * hidden + (s + hidden)``."""
        return self.feature_dim * self.hidden + self.top_k + self.hidden

    # ------------------------------------------------------------------ params
    def init_params(self, rng: Array, dtype=jnp.float32) -> Params:
        """Fresh router parameters (see the module docstring for the layout)."""
        r, d, h, s = self.num_routers, self.feature_dim, self.hidden, self.top_k
        k1, k2, k3, k4 = jax.random.split(rng, 4)

        def kernel(key, shape, fan_in):
            if self.init == "cifar":        # kaiming_normal_(fan_in, relu gain)
                return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / fan_in)
            return _uniform(key, shape, 1.0 / math.sqrt(fan_in), dtype)

        return {"hidden": {"kernel": kernel(k1, (r, d, h), d),
                           "bias": _uniform(k2, (r, h), 1.0 / math.sqrt(d), dtype)},
                "out": {"kernel": kernel(k3, (s + h, 1), s + h),
                        "bias": _uniform(k4, (1,), 1.0 / math.sqrt(s + h), dtype)}}

    def count_params(self) -> int:
        r, d, h, s = self.num_routers, self.feature_dim, self.hidden, self.top_k
        return r * (d * h + h) + (s + h) + 1

    # ------------------------------------------------------------------ apply
    def logit(self, params: Params, i: int, features: Array, mean_logits: Array) -> Array:
        """Router ``i``'s logit: should expert ``i + 1`` run?

        Args:
          params: router parameters.
          i: router index, ``0 <= i < E - 1`` (static).
          features: ``[B, D]`` pooled features of expert ``i``.
          mean_logits: ``[B, C]`` mean logits of experts ``0..i`` (scale included).

        Returns:
          ``[B]`` logits; > 0 (``sigmoid > 0.5``) means "run expert i + 1".
        """
        if not 0 <= i < self.num_routers:
            raise ValueError(f"router index {i} out of range [0, {self.num_routers})")
        g = features / jnp.linalg.norm(features, axis=-1, keepdims=True)   # no eps (official)
        hid = params["hidden"]
        h = jax.nn.relu(g @ hid["kernel"][i] + hid["bias"][i])
        top = lax.top_k(mean_logits, self.top_k)[0]
        v = jnp.concatenate([top.astype(h.dtype), h], axis=-1)
        return (v @ params["out"]["kernel"] + params["out"]["bias"])[:, 0]

    def all_logits(self, params: Params, expert_logits: Array, features: Array) -> Array:
        """Every router's logit with all experts run (stage 2, official ``forward(x, target)``).

        Args:
          expert_logits: ``[E, B, C]``.
          features: ``[E, B, D]``.

        Returns:
          ``[B, E - 1]``; column ``i`` sees expert ``i``'s features and the mean logits of
          experts ``0..i`` (the running sum divided by ``i + 1``, accumulated in order).
        """
        acc = expert_logits[0]
        cols = []
        for i in range(self.num_routers):
            if i > 0:
                acc = acc + expert_logits[i]
            cols.append(self.logit(params, i, features[i], acc / (i + 1)))
        return jnp.stack(cols, axis=-1)


def _uniform(key, shape, bound, dtype):
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def make_router(model: RIDEModel, image_shape: Sequence[int], *, top_k: int,
                hidden: int = 16) -> Router:
    """The router that fits ``model`` (feature size read off the network's shapes).

    Args:
      model: the RIDE network (E >= 2).
      image_shape: ``(H, W, channels)`` of one input image.
      top_k: s (checked against the number of classes).
      hidden: hidden width (16).
    """
    if model.num_branches:
        raise NotImplementedError("the RIDE-EA router is not wired for ResLT (multi-branch) "
                                  "experts")
    images = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
    return Router(num_experts=model.num_experts, feature_dim=int(out["features"].shape[-1]),
                  num_classes=model.num_classes, top_k=top_k, hidden=hidden,
                  init="cifar" if model.arch == "resnet32" else "torch")


# ----------------------------------------------------------------- routed inference

def bucket_sizes(batch: int, num_buckets: int) -> tuple[int, ...]:
    """Static bucket sizes ``ceil(batch * j / num_buckets)``, j = 1..num_buckets."""
    if not isinstance(num_buckets, int) or num_buckets < 1:
        raise ValueError(f"num_buckets must be a positive integer, got {num_buckets!r}")
    return tuple(sorted({max(1, -(-batch * j // num_buckets))
                         for j in range(1, num_buckets + 1)}))


def _compacted(fn, x: Array, active: Array, sizes: Sequence[int]):
    """``fn`` on the active rows of ``x`` only, through the smallest bucket that fits.

    Args:
      fn: ``[b, ...] -> pytree of [b, ...]`` (row-independent).
      x: ``[B, ...]``.
      active: ``[B]`` bool.
      sizes: increasing static bucket sizes, the last one ``B``.

    Returns:
      The pytree at full size ``[B, ...]``: ``fn``'s rows at the active positions, zeros
      elsewhere. With no active row nothing runs.
    """
    batch = x.shape[0]
    n = jnp.sum(active.astype(jnp.int32))
    order = jnp.argsort(~active, stable=True)        # active rows first, in batch order
    shapes = jax.eval_shape(fn, x)

    def zeros(_):
        return jax.tree.map(lambda s: jnp.zeros((batch,) + s.shape[1:], s.dtype), shapes)

    def branch(size):
        def run(_):
            idx = order[:size]
            out = fn(x[idx])
            keep = jnp.arange(size) < n

            def scatter(o):
                o = jnp.where(keep.reshape((size,) + (1,) * (o.ndim - 1)), o, 0)
                return jnp.zeros((batch,) + o.shape[1:], o.dtype).at[idx].set(
                    o, unique_indices=True)
            return jax.tree.map(scatter, out)
        return run

    sizes_arr = jnp.asarray(sizes, jnp.int32)
    which = jnp.where(n == 0, 0, 1 + jnp.searchsorted(sizes_arr, n, side="left"))
    return lax.switch(which, [zeros] + [branch(s) for s in sizes], None)


def routed_apply(model: RIDEModel, router: Router, variables: dict[str, Any],
                 images: Array, *, num_buckets: int = 4, force_all: bool = False,
                 compact: bool = True) -> dict[str, Array]:
    """Routed inference (official EA ``forward(x)``), skipping the experts not needed.

    Args:
      model: the RIDE network.
      router: its :class:`Router`.
      variables: ``{'params': {'trunk', 'experts', 'router'}, 'batch_stats': ...}``.
      images: ``[B, H, W, channels]``, normalised.
      num_buckets: bucket sizes are ``B/num_buckets, 2B/num_buckets, ..., B``.
      force_all: every example uses every expert (the official ``force_all``): the
        output equals the all-experts model's.
      compact: False runs every expert on the full batch and masks (same numbers, no
        saving; a reference for tests and benchmarks).

    Returns:
      ``{'logits': [B, C]`` mean logits of the experts used, ``'num_experts': [B]`` int32
      how many experts each example used (1..E), ``'router_logits': [B, E - 1]`` (for a
      router that was not reached: 0)``}``.
    """
    if router.num_experts != model.num_experts:
        raise ValueError(f"router for {router.num_experts} experts, model has "
                         f"{model.num_experts}")
    trunk_vars, expert_vars = _split(variables)
    params = variables["params"]["router"]
    h = model.trunk.apply(trunk_vars, images, train=False)

    def expert(i):
        v = _index(expert_vars, i)
        return lambda x: model.expert.apply(v, x, train=False)

    logits0, feats = expert(0)(h)
    total = logits0
    used = jnp.ones((images.shape[0],), jnp.int32)
    active = jnp.ones((images.shape[0],), bool)
    sizes = bucket_sizes(images.shape[0], num_buckets)
    router_logits = []
    for i in range(1, model.num_experts):
        p = router.logit(params, i - 1, feats, total / i)
        p = jnp.where(active, p, 0.0)
        router_logits.append(p)
        if not force_all:
            active = active & (jax.nn.sigmoid(p) > 0.5)
        if compact:
            logits_i, feats_i = _compacted(expert(i), h, active, sizes)
        else:
            logits_i, feats_i = expert(i)(h)
        mask = active[:, None]
        total = jnp.where(mask, total + logits_i, total)
        feats = jnp.where(mask, feats_i, feats)
        used = used + active.astype(jnp.int32)
    return {"logits": total / used[:, None].astype(total.dtype), "num_experts": used,
            "router_logits": jnp.stack(router_logits, axis=-1)}
