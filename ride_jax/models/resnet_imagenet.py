"""ImageNet-size RIDE ResNet-10 / ResNet-50 / ResNeXt-50 (32x4d).

Official RIDE ``model/fb_resnets/RIDEResNet.py`` and ``RIDEResNeXt.py``.

* ``ImageNetTrunk`` (shared): conv7x7/2(3->64) -> BN -> ReLU -> maxpool 3x3/2 ->
  layer1 -> layer2.
* ``ImageNetExpert`` (one per expert): layer3 -> layer4 -> global average pool ->
  classifier. With ``reduce_dimension`` the planes are 192/384 instead of 256/512.

Bottlenecks put the stride on the 3x3 conv ("v1.5"); ResNeXt widths are
``int(planes * base_width / 64) * groups``. Downsample is conv1x1(stride) -> BN when
the stride or the width changes. Convs use normal(0, sqrt(2 / (k * k * out))).
The official model pools with ``AvgPool2d(7)`` and therefore needs 224x224 inputs;
here pooling is a global mean, identical at 224 and usable at other sizes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ride_jax.models.layers import (BatchNorm, NormedLinear, conv, kaiming_normal_fan_out,
                                    torch_linear_bias, torch_linear_kernel)

Array = jax.Array

# name -> (block type, blocks per stage, groups, base width)
IMAGENET_ARCHS = {
    "resnet10": ("basic", (1, 1, 1, 1), 1, 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 1, 64),
    "resnext50": ("bottleneck", (3, 4, 6, 3), 32, 4),
}


def _conv(features, kernel, stride=1, groups=1, dtype=None, name=None):
    return conv(features, kernel, stride, groups=groups, init=kaiming_normal_fan_out,
                dtype=dtype, name=name)


class _Downsample(nn.Module):
    features: int
    stride: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train):
        x = _conv(self.features, 1, self.stride, dtype=self.dtype, name="conv")(x)
        return BatchNorm(dtype=self.dtype, name="bn")(x, train)


class BasicBlock(nn.Module):
    """Two 3x3 convs (expansion 1)."""

    planes: int
    stride: int = 1
    groups: int = 1
    base_width: int = 64
    dtype: Any = None
    expansion = 1

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        out_features = self.planes * self.expansion
        y = _conv(self.planes, 3, self.stride, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(y, train))
        y = _conv(self.planes, 3, 1, dtype=self.dtype, name="conv2")(y)
        y = BatchNorm(dtype=self.dtype, name="bn2")(y, train)
        if self.stride != 1 or x.shape[-1] != out_features:
            x = _Downsample(out_features, self.stride, self.dtype, name="downsample")(x, train)
        return nn.relu(y + x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, groups) -> 1x1 (expansion 4)."""

    planes: int
    stride: int = 1
    groups: int = 1
    base_width: int = 64
    dtype: Any = None
    expansion = 4

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        width = int(self.planes * (self.base_width / 64.0)) * self.groups
        out_features = self.planes * self.expansion
        y = _conv(width, 1, 1, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(y, train))
        y = _conv(width, 3, self.stride, groups=self.groups, dtype=self.dtype, name="conv2")(y)
        y = nn.relu(BatchNorm(dtype=self.dtype, name="bn2")(y, train))
        y = _conv(out_features, 1, 1, dtype=self.dtype, name="conv3")(y)
        y = BatchNorm(dtype=self.dtype, name="bn3")(y, train)
        if self.stride != 1 or x.shape[-1] != out_features:
            x = _Downsample(out_features, self.stride, self.dtype, name="downsample")(x, train)
        return nn.relu(y + x)


def _block_cls(kind: str):
    return BasicBlock if kind == "basic" else Bottleneck


class ImageNetTrunk(nn.Module):
    """Shared part. ``images: [B, H, W, 3]`` -> ``[B, H/8, W/8, 128 * expansion]``."""

    arch: str = "resnet50"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        kind, layers, groups, base_width = IMAGENET_ARCHS[self.arch]
        block = _block_cls(kind)
        x = _conv(64, 7, 2, dtype=self.dtype, name="conv1")(x)
        x = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(x, train))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, (planes, stride) in enumerate(((64, 1), (128, 2)), start=1):
            for j in range(layers[stage - 1]):
                x = block(planes, stride if j == 0 else 1, groups, base_width, self.dtype,
                          name=f"layer{stage}_{j}")(x, train)
        return x


def expert_layers(h: Array, arch: str, layer3_dim: int, layer4_dim: int, dtype: Any,
                  train: bool) -> Array:
    """An expert's layer3 and layer4 (``layer3_j``, ``layer4_j``); call it inside the
    compact ``__call__`` of the module that owns them (plain and ResLT experts)."""
    kind, layers, groups, base_width = IMAGENET_ARCHS[arch]
    block = _block_cls(kind)
    x = h
    for stage, planes in ((3, layer3_dim), (4, layer4_dim)):
        for j in range(layers[stage - 1]):
            x = block(planes, 2 if j == 0 else 1, groups, base_width, dtype,
                      name=f"layer{stage}_{j}")(x, train)
    return x


class ImageNetExpert(nn.Module):
    """One expert: layer3, layer4, pooling, head.

    Call: trunk output -> ``(logits [B, C], features [B, D])``, ``D = layer4_dim * expansion``.
    """

    num_classes: int
    arch: str = "resnet50"
    layer3_dim: int = 192
    layer4_dim: int = 384
    use_norm: bool = True
    scale: float = 30.0
    dtype: Any = None

    @nn.compact
    def __call__(self, h: Array, train: bool) -> tuple[Array, Array]:
        x = expert_layers(h, self.arch, self.layer3_dim, self.layer4_dim, self.dtype, train)
        features = jnp.mean(x, axis=(1, 2))
        if self.use_norm:
            logits = NormedLinear(self.num_classes, self.scale, dtype=self.dtype,
                                  name="linear")(features)
        else:
            logits = nn.Dense(self.num_classes, kernel_init=torch_linear_kernel,
                              bias_init=torch_linear_bias(features.shape[-1]),
                              dtype=self.dtype, name="linear")(features)
        return logits, features
