"""CIFAR ResNet-32 split into a shared trunk and one RIDE expert.

Official RIDE ``model/ldam_drw_resnets/ride_resnet_cifar.py`` (``ResNet32Model`` in
``model/model.py``).

* ``CifarTrunk``: conv3x3(3->16) -> BN -> ReLU -> layer1 (5 BasicBlocks, 16 channels).
    Shared by all experts.
* ``CifarExpert``: layer2 (5 blocks, stride 2) -> layer3 (5 blocks, stride 2) -> global
    average pool -> classifier. Widths 24/48 with ``reduce_dimension`` (every RIDE
    config), 32/64 otherwise (the original ResNet-32, the LDAM-DRW baseline).

Shortcuts are "option A": spatial subsampling ``x[:, ::2, ::2]`` and zero channel
padding of ``(out - in) // 2`` on both sides. Convs use ``kaiming_normal_`` (fan_in).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ride_jax.models.layers import (BatchNorm, NormedLinear, conv, fusion_barrier,
                                    kaiming_normal_fan_in, torch_linear_bias)

Array = jax.Array


class CifarBasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, + option-A shortcut, -> ReLU.

    ``fusion_barriers``: pass both ReLU outputs through ``layers.fusion_barrier`` (the
    same numbers; faster on XLA:CPU).
    """

    features: int
    stride: int = 1
    dtype: Any = None
    fusion_barriers: bool = False

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        in_features = x.shape[-1]
        y = conv(self.features, 3, self.stride, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(y, train))
        if self.fusion_barriers:
            y = fusion_barrier(y)
        y = conv(self.features, 3, 1, dtype=self.dtype, name="conv2")(y)
        y = BatchNorm(dtype=self.dtype, name="bn2")(y, train)
        shortcut = x
        if self.stride != 1 or in_features != self.features:
            shortcut = x[:, ::self.stride, ::self.stride, :]
            pad = (self.features - in_features) // 2
            shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0),
                                                                        (pad, self.features - in_features - pad)))
        out = nn.relu(y + shortcut.astype(y.dtype))
        return fusion_barrier(out) if self.fusion_barriers else out


class CifarTrunk(nn.Module):
    """Shared stem + layer1. ``images: [B, 32, 32, 3]`` -> ``[B, 32, 32, 16]``."""

    blocks: int = 5
    width: int = 16
    dtype: Any = None
    fusion_barriers: bool = False

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        x = conv(self.width, 3, 1, dtype=self.dtype, name="conv1")(x)
        x = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(x, train))
        if self.fusion_barriers:
            x = fusion_barrier(x)
        for j in range(self.blocks):
            x = CifarBasicBlock(self.width, 1, self.dtype, self.fusion_barriers,
                                name=f"layer1_{j}")(x, train)
        return x


def expert_layers(h: Array, layer2_dim: int, layer3_dim: int, blocks: int, dtype: Any,
                  train: bool, fusion_barriers: bool = False) -> Array:
    """An expert's layer2 and layer3 (``layer2_j``, ``layer3_j``); call it inside the
    compact ``__call__`` of the module that owns them (plain and ResLT experts)."""
    x = h
    for name, dim in (("layer2", layer2_dim), ("layer3", layer3_dim)):
        for j in range(blocks):
            x = CifarBasicBlock(dim, 2 if j == 0 else 1, dtype, fusion_barriers,
                                name=f"{name}_{j}")(x, train)
    return x


class CifarExpert(nn.Module):
    """One expert: layer2, layer3, pooling and head.

    Call: ``h: [B, 32, 32, 16]`` (trunk output) -> ``(logits [B, C], features [B, D])``
    with ``D = layer3_dim``.
    """

    num_classes: int
    layer2_dim: int = 24
    layer3_dim: int = 48
    blocks: int = 5
    use_norm: bool = True
    scale: float = 30.0
    dtype: Any = None
    fusion_barriers: bool = False

    @nn.compact
    def __call__(self, h: Array, train: bool) -> tuple[Array, Array]:
        x = expert_layers(h, self.layer2_dim, self.layer3_dim, self.blocks, self.dtype, train,
                          self.fusion_barriers)
        features = jnp.mean(x, axis=(1, 2))
        if self.use_norm:
            logits = NormedLinear(self.num_classes, self.scale, dtype=self.dtype,
                                                        name="linear")(features)
        else:
            # CIFAR _weights_init applies kaiming_normal_ to nn.Linear too; s = 1.
            logits = nn.Dense(self.num_classes, kernel_init=kaiming_normal_fan_in,
                                                bias_init=torch_linear_bias(features.shape[-1]),
                                                dtype=self.dtype, name="linear")(features)
        return logits, features
