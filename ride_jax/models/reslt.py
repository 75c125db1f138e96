"""ResLT heads (official ResLT: CIFAR ``ResLTResNet32``; ``ResNet_ResLT`` in
``ImageNetLT/networks/nets.py`` and ``Inat/networks/nets.py``) as RIDE experts.

ResLT keeps one main branch H (trained on all classes) and residual branches M
(medium+tail classes) and T (tail classes). The branches differ only by a few
parameters, share **one** classifier, and their logits are summed for the
prediction: ``z = z_H + z_M + z_T``. The branch order on the K axis is always
``(H, M, T)``, which is what :func:`ride_jax.losses.reslt_loss` expects.

Two heads, both usable as the expert of a :class:`ride_jax.models.RIDEModel`
(``create_model(..., head='reslt')``); with ``num_experts=1`` and
``reduce_dimension=False`` the network is the official single ResLT model:

* :class:`CifarResLTExpert` (``ResLTResNet32``): layer2 -> layer3 -> K separate
  ``BatchNorm2d`` (BNH, BNM, BNT; **no ReLU** after them) on the last feature map ->
  global average pool per branch -> shared ``Linear(D, C)``.
* :class:`ImageNetResLTExpert` (``ResNet_ResLT``): layer3 -> layer4 -> ``finalBlock``
  = conv1x1(F -> 3F, no bias) -> BN(3F) -> ReLU, split into three F-wide chunks
  (H, M, T), each pooled -> shared ``Linear(F, C)``. ReLU does not commute with
  averaging, so the place of the pooling matters:

  - ``train_order='conv_pool'`` (official ``--after_1x1conv``: the ResNeXt-50/101 and
    iNat ResNet-50 scripts and every RIDE+ResLT script): finalBlock on the map, then pool;
  - ``train_order='pool_conv'`` (no flag: the ResNet-10 script): pool, then finalBlock
    on the 1x1 map;
  - ``eval_order='pool_conv'`` (default, official: evaluation **always** pools first,
    so with ``train_order='conv_pool'`` train and test are different functions);
    ``'conv_pool'`` evaluates the training function instead.

  ``num_branches=2`` is the iNat recipe: finalBlock still has 3F channels (the
  official model is built with three chunks) but only H and M are returned; the T
  chunk is computed and ignored, as in the official code.

The shared classifier is :class:`ResLTClassifier`, ``nn.Linear`` with PyTorch's
default init (also in the CIFAR model: the official ``_weights_init`` only covers the
inner ResNet). Its optional test-time form (``eval_gamma``) is the official one:
class vectors ``w_c / ||w_c||_2 ** gamma`` and **no bias**. ``eval_gamma=None`` (the
default) keeps the trained linear layer with its bias at test time; this is the
official CIFAR behaviour (no ``--gamma`` there). The official ImageNet/iNat code always
uses the test-time form; its scripts' values are in :data:`RESLT_EVAL_GAMMA` and must be
passed explicitly. The classifier is named ``linear`` like the RIDE heads, so
:func:`ride_jax.models.tau_normalize` also applies to it (post hoc, same formula).

Each expert returns ``(branch_logits [K, B, C], features [B, D])`` where ``features`` is
the global average pool of the backbone's last feature map (before the branch BNs /
finalBlock).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ride_jax.losses._checks import check_choice
from ride_jax.models.layers import BatchNorm, torch_linear_bias, torch_linear_kernel
from ride_jax.models.resnet_cifar import expert_layers as cifar_expert_layers
from ride_jax.models.resnet_imagenet import _conv
from ride_jax.models.resnet_imagenet import expert_layers as imagenet_expert_layers

Array = jax.Array

BRANCH_NAMES = ("h", "m", "t")
POOL_ORDERS = ("conv_pool", "pool_conv")

# gamma of the official test-time classifier, per shipped script (``--gamma`` of ResLT's
# ``ImageNetLT/sh/*.sh`` and iNat scripts).
# CIFAR scripts use none (eval_gamma=None).
RESLT_EVAL_GAMMA = {
    "imagenet_lt_resnet10": 0.3,
    "imagenet_lt_resnext50": 0.7,
    "imagenet_lt_resnext101": 0.7,
    "imagenet_lt_ride_resnext50": 0.7,   # hard-coded in the official RIDE+ResLT code
    "inat2018_resnet50": 0.3,            # R50.sh; R50_eval.sh evaluates with 0.0
    "inat2018_ride_resnet50": 0.3,
}


def _check_branches(num_branches) -> None:
    if num_branches not in (2, 3):
        raise ValueError(f"num_branches must be 2 (H, M: iNat) or 3 (H, M, T), "
                         f"got {num_branches!r}")


def _check_gamma(eval_gamma) -> None:
    if eval_gamma is not None and not float(eval_gamma) >= 0:
        raise ValueError(f"eval_gamma must be None or >= 0, got {eval_gamma!r}")


class ResLTClassifier(nn.Module):
    """The shared branch classifier: PyTorch ``nn.Linear(D, C)`` (default init).

    Attributes:
      num_classes: C.
      eval_gamma: None: ``x @ W + b`` in training and evaluation. A float gamma >= 0:
        in evaluation (``train=False``) the official test-time classifier
        ``x @ (w_c / ||w_c||_2 ** gamma)`` without bias; training is unchanged.
      dtype: computation dtype.

    Call: ``x: [..., D]`` (e.g. ``[K, B, D]``, one classifier for all K) -> ``[..., C]``.
    Parameters ``kernel [D, C]`` (class vectors are columns) and ``bias [C]``.
    """

    num_classes: int
    eval_gamma: float | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        d = x.shape[-1]
        w = self.param("kernel", torch_linear_kernel, (d, self.num_classes), self.param_dtype)
        b = self.param("bias", torch_linear_bias(d), (self.num_classes,), self.param_dtype)
        dtype = self.dtype or jnp.promote_types(x.dtype, w.dtype)
        x, w, b = x.astype(dtype), w.astype(dtype), b.astype(dtype)
        if train or self.eval_gamma is None:
            return x @ w + b
        norms = jnp.sqrt(jnp.sum(w * w, axis=0, keepdims=True))
        return x @ (w / norms ** float(self.eval_gamma))


class CifarResLTExpert(nn.Module):
    """One CIFAR ResLT expert: layer2, layer3, K branch BNs, pooling, shared classifier.

    With ``layer2_dim=32, layer3_dim=64`` on :class:`CifarTrunk` this is the official
    ``ResLTResNet32`` (scale 1). The backbone parameters have the same names as in
    :class:`ride_jax.models.resnet_cifar.CifarExpert`; the branch BNs are ``bn_h``,
    ``bn_m``, ``bn_t`` (official BNH, BNM, BNT).

    Call: ``h: [B, 32, 32, 16]`` -> ``(branch_logits [K, B, C], features [B, layer3_dim])``.
    """

    num_classes: int
    layer2_dim: int = 32
    layer3_dim: int = 64
    blocks: int = 5
    num_branches: int = 3
    eval_gamma: float | None = None
    dtype: Any = None
    fusion_barriers: bool = False   # as CifarExpert's (same numbers, faster on XLA:CPU)

    @nn.compact
    def __call__(self, h: Array, train: bool) -> tuple[Array, Array]:
        _check_branches(self.num_branches)
        _check_gamma(self.eval_gamma)
        x = cifar_expert_layers(h, self.layer2_dim, self.layer3_dim, self.blocks, self.dtype,
                                train, self.fusion_barriers)
        features = jnp.mean(x, axis=(1, 2))
        branch_features = jnp.stack([
            jnp.mean(BatchNorm(dtype=self.dtype, name=f"bn_{BRANCH_NAMES[k]}")(x, train),
                     axis=(1, 2))
            for k in range(self.num_branches)])                       # [K, B, D]
        logits = ResLTClassifier(self.num_classes, self.eval_gamma, dtype=self.dtype,
                                 name="linear")(branch_features, train)
        return logits, features


class ImageNetResLTExpert(nn.Module):
    """One ImageNet-size ResLT expert: layer3, layer4, finalBlock, shared classifier.

    With ``layer3_dim=256, layer4_dim=512`` on :class:`ImageNetTrunk` this is the official
    ``ResNet_ResLT`` (``resnet10_reslt``, ``resnet50_reslt``, ``resnext50_32x4d_reslt``).
    finalBlock is ``final_conv`` (1x1, F -> 3F, no bias, normal(0, sqrt(2 / 3F)) like the
    other convs) and ``final_bn``.

    Attributes:
      train_order, eval_order: ``'conv_pool'`` (finalBlock on the map, then average
        pool) or ``'pool_conv'`` (pool, then finalBlock on the pooled 1x1 map) in
        training / evaluation. Official: ``'conv_pool'`` / ``'pool_conv'`` (module docs).
      num_branches: 3 (H, M, T) or 2 (H, M; iNat: the T chunk is computed and dropped).
      eval_gamma: test-time classifier (:class:`ResLTClassifier`).

    Call: trunk output -> ``(branch_logits [K, B, C], features [B, F])``,
    ``F = layer4_dim * expansion``.
    """

    num_classes: int
    arch: str = "resnet50"
    layer3_dim: int = 256
    layer4_dim: int = 512
    num_branches: int = 3
    eval_gamma: float | None = None
    train_order: str = "conv_pool"
    eval_order: str = "pool_conv"
    dtype: Any = None

    @nn.compact
    def __call__(self, h: Array, train: bool) -> tuple[Array, Array]:
        _check_branches(self.num_branches)
        _check_gamma(self.eval_gamma)
        check_choice("train_order", self.train_order, POOL_ORDERS)
        check_choice("eval_order", self.eval_order, POOL_ORDERS)
        x = imagenet_expert_layers(h, self.arch, self.layer3_dim, self.layer4_dim, self.dtype,
                                   train)
        f = x.shape[-1]
        features = jnp.mean(x, axis=(1, 2))
        final_conv = _conv(3 * f, 1, 1, dtype=self.dtype, name="final_conv")
        final_bn = BatchNorm(dtype=self.dtype, name="final_bn")
        order = self.train_order if train else self.eval_order
        if order == "pool_conv":
            y = nn.relu(final_bn(final_conv(features[:, None, None, :]), train))[:, 0, 0, :]
        else:
            y = jnp.mean(nn.relu(final_bn(final_conv(x), train)), axis=(1, 2))
        branch_features = jnp.stack(
            [y[:, k * f:(k + 1) * f] for k in range(self.num_branches)])  # [K, B, F]
        logits = ResLTClassifier(self.num_classes, self.eval_gamma, dtype=self.dtype,
                                 name="linear")(branch_features, train)
        return logits, features


__all__ = ["BRANCH_NAMES", "CifarResLTExpert", "ImageNetResLTExpert", "POOL_ORDERS",
           "RESLT_EVAL_GAMMA", "ResLTClassifier"]
