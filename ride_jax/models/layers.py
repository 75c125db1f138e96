"""Building blocks shared by the CIFAR and ImageNet-size RIDE networks.

Everything here follows the official PyTorch code's numerics (official RIDE
``model/ldam_drw_resnets/ride_resnet_cifar.py`` and ``model/fb_resnets/RIDEResNet.py``:
``NormedLinear``, the weight init; PyTorch's ``BatchNorm2d`` defaults):

* ``BatchNorm``: PyTorch semantics. Batch statistics over every axis but the last,
    normalisation with the biased variance, running statistics updated as
    ``running = momentum * running + (1 - momentum) * batch`` with the *unbiased* batch
    variance (PyTorch ``momentum=0.1`` is ``momentum=0.9`` here), epsilon 1e-5.
* ``NormedLinear``: the LDAM cosine classifier, weight ``(in, out)`` with unit-norm
    columns at init, output ``scale * <x/|x|, w_c/|w_c|>``.
* Initialisers that reproduce ``kaiming_normal_`` (untruncated normal) and PyTorch's
    default ``nn.Linear`` init.

Images and feature maps are NHWC.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any

# kaiming_normal_(mode='fan_in', nonlinearity='relu'): std = sqrt(2 / fan_in), untruncated.
# (jax's he_normal is a *truncated* normal, which is not what PyTorch does.)
kaiming_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# fb_resnets init: normal(0, sqrt(2 / (kh * kw * out_channels))).
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch nn.Linear default: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)).
torch_linear_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_linear_bias(fan_in: int) -> Callable[..., Array]:
    """PyTorch nn.Linear default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""

    def init(key, shape, dtype=jnp.float32):
        bound = 1.0 / jnp.sqrt(fan_in)
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def unit_column_uniform(key, shape, dtype=jnp.float32) -> Array:
    """NormedLinear init: U(-1, 1), then every column (class vector) renormed to norm 1.

    Args:
        shape: ``(in_features, out_features)``.
    """
    w = jax.random.uniform(key, shape, dtype, -1.0, 1.0)
    return w / jnp.linalg.norm(w, axis=0, keepdims=True)


def l2_normalize(x: Array, axis: int, eps: float = 1e-12) -> Array:
    """``torch.nn.functional.normalize``: x / max(||x||_2, eps) along ``axis``."""
    norm = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


def _unit(x: Array) -> Array:
    """Ones shaped like ``x`` that no compiler pass can fold: ``(bits | 1) & 1``."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    return ((bits | 1) & 1).astype(x.dtype)


@jax.custom_vjp
def fusion_barrier(x: Array) -> Array:
    """``x``, materialised: an exact identity that XLA does not fuse into its consumers.

    ``x: [...]`` -> the same values, shape and dtype: ``x / u`` with ``u`` a tensor of
    ones computed from ``x``'s own bits, so no compiler pass can fold it (and, not being
    a broadcast, it is not rewritten into a multiplication). The gradient is ``g / u(g)``,
    exact too. XLA counts a division as expensive and does not duplicate it into several
    consumers. Without it XLA:CPU fuses a ResNet's cheap BatchNorm/ReLU/residual chains
    into every consumer, including the layout transposes in front of each kernel-gradient
    convolution, and so recomputes up to six residual blocks per transpose, reading every
    input in transposed (strided) order (BENCHMARKS.md, "Fusion barriers and the host
    allocator"). Used by the CIFAR ResNet when ``fusion_barriers=True``
    (``config.cpu_fusion_barriers``).
    """
    return x / _unit(x)


def _barrier_fwd(x):
    return fusion_barrier(x), None


def _barrier_bwd(_, g):
    return (g / _unit(g),)


fusion_barrier.defvjp(_barrier_fwd, _barrier_bwd)


class BatchNorm(nn.Module):
    """BatchNorm over the channel (last) axis with PyTorch's training semantics.

    Attributes:
        momentum: running-average decay (PyTorch momentum 0.1 == 0.9 here).
        epsilon: added to the variance, 1e-5 as in PyTorch.
        dtype: output dtype (None: the input's). Statistics are computed in at least
            float32.

    Call: ``x: [..., F]`` -> ``[..., F]``; ``train=True`` uses batch statistics and
    updates ``batch_stats`` (``mean``, ``var``; ``var`` tracks the unbiased variance).
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        ra_mean = self.variable(
                "batch_stats", "mean", lambda: jnp.zeros((features,), self.param_dtype))
        ra_var = self.variable(
                "batch_stats", "var", lambda: jnp.ones((features,), self.param_dtype))

        stat_dtype = jnp.promote_types(x.dtype, jnp.float32)
        reduce_axes = tuple(range(x.ndim - 1))
        if train:
            xs = x.astype(stat_dtype)
            mean = jnp.mean(xs, axis=reduce_axes)
            var = jnp.mean(jnp.square(xs - mean), axis=reduce_axes)
            if not self.is_initializing():
                n = 1
                for a in reduce_axes:
                    n *= x.shape[a]
                unbiased = var * (n / max(n - 1, 1))
                m = self.momentum
                ra_mean.value = (m * ra_mean.value + (1.0 - m) * mean).astype(ra_mean.value.dtype)
                ra_var.value = (m * ra_var.value + (1.0 - m) * unbiased).astype(ra_var.value.dtype)
        else:
            mean, var = ra_mean.value, ra_var.value

        mul = scale.astype(stat_dtype) * jax.lax.rsqrt(var.astype(stat_dtype) + self.epsilon)
        add = bias.astype(stat_dtype) - mean.astype(stat_dtype) * mul
        out_dtype = self.dtype or x.dtype
        return (x.astype(stat_dtype) * mul + add).astype(out_dtype)


class NormedLinear(nn.Module):
    """Cosine classifier of LDAM/RIDE: ``scale * normalize(x) @ normalize_cols(W)``.

    Attributes:
        features: number of classes C.
        scale: logit scale s (30 in every RIDE config; the margin of the LDAM loss is
            applied to these already-scaled logits).

    Call: ``x: [B, D]`` -> logits ``[B, C]`` in ``[-scale, scale]``. Parameter
    ``kernel: [D, C]`` (the official ``weight`` has the same ``(in, out)`` layout).
    """

    features: int
    scale: float = 30.0
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        w = self.param("kernel", unit_column_uniform, (x.shape[-1], self.features),
                                      self.param_dtype)
        dtype = self.dtype or jnp.promote_types(x.dtype, w.dtype)
        x = l2_normalize(x.astype(dtype), axis=-1)
        w = l2_normalize(w.astype(dtype), axis=0)
        return self.scale * (x @ w)


def conv(features: int, kernel: int, stride: int = 1, *, padding: int | None = None,
                  groups: int = 1, init=kaiming_normal_fan_in, dtype=None, name=None) -> nn.Conv:
    """A bias-free conv with PyTorch's symmetric zero padding (``kernel // 2`` default)."""
    p = kernel // 2 if padding is None else padding
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                                  padding=((p, p), (p, p)), use_bias=False, feature_group_count=groups,
                                  kernel_init=init, dtype=dtype, name=name)
