"""Two random views of small test images, on the device: SADE's test-time augmentation.

SADE's test-time self-supervised aggregation (:mod:`ride_jax.test_time`) compares the
predictions of two independently augmented views of every test image. The official
CIFAR view (``test_training_cifar.py:179-189``, MoCo-v2 style), in order::

    RandomCrop(32, padding=4)
    RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)
    RandomGrayscale(p=0.2)
    RandomApply([GaussianBlur(sigma ~ U[0.1, 2])], p=0.2)     # PIL ImageFilter radius
    RandomHorizontalFlip()
    ToTensor(); Normalize(mean, std)

Here the whole chain runs in one jitted function on a batch, for any small image
(CIFAR, Fashion-MNIST: every :class:`~ride_jax.data.base.ArrayDataset`):

* crop and flip are one gather (:func:`ride_jax.data.augment.augment_gather`, the
  pixel-exact RandomCrop); the flip is applied with the crop, which is the same image
  because every later step commutes with a horizontal mirror (per-pixel colour maps,
  whole-image means, a symmetric blur kernel with replicated edges);
* the colour steps are torchvision's TENSOR implementations (``functional_tensor``:
  ``adjust_brightness`` / ``adjust_contrast`` / ``adjust_saturation`` / ``adjust_hue``
  with its ``_rgb2hsv`` / ``_hsv2rgb``, ``rgb_to_grayscale``) in float32 on 0..1, in
  ColorJitter's random order (a fresh permutation of the four per image); for one-channel
  images saturation, hue and grayscale do nothing, as in torchvision;
* the blur is a true Gaussian of standard deviation sigma (13 taps, edges replicated).

Deviations from the official PIL chain, all below what the objective can see (it
compares softmax outputs of two random views): the PIL chain rounds to uint8 after every
step and works in PIL's uint8 HSV for hue; PIL's ``GaussianBlur(radius)`` is an
extended-box approximation of the Gaussian. ``tests/test_views.py`` measures each step
against PIL (docs/parity.md lists it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from ride_jax.data import augment

# Taps of the blur kernel on each side of the centre (3 sigma at the largest sigma, 2).
BLUR_HALF_WIDTH = 6


@dataclasses.dataclass(frozen=True)
class ViewAugment:
    """The random view (official defaults: SADE CIFAR, ``test_training_cifar.py:179-189``).

    Attributes:
      padding: RandomCrop's zero padding (0: no crop).
      flip: RandomHorizontalFlip(p=0.5).
      jitter: ColorJitter's (brightness, contrast, saturation, hue).
      jitter_p: probability that the ColorJitter is applied.
      grayscale_p: RandomGrayscale's probability.
      blur_p: probability of the Gaussian blur.
      blur_sigma: its sigma range (uniform).
    """
    padding: int = 4
    flip: bool = True
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def __post_init__(self):
        from ride_jax.data.pil_views import check_view_fields
        check_view_fields(self)
        lo, hi = self.blur_sigma
        if not 0 < lo <= hi <= BLUR_HALF_WIDTH / 3:
            raise ValueError(f"blur_sigma must satisfy 0 < low <= high <= "
                             f"{BLUR_HALF_WIDTH / 3}, got {self.blur_sigma!r}")


SADE_CIFAR = ViewAugment()


def grayscale(x: jax.Array) -> jax.Array:
    """torchvision ``rgb_to_grayscale``: ``[..., H, W, 3] -> [..., H, W, 1]`` (one channel:
    unchanged)."""
    if x.shape[-1] == 1:
        return x
    return (0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[..., None]


def _blend(a: jax.Array, b: jax.Array, ratio: jax.Array) -> jax.Array:
    """torchvision ``_blend`` on 0..1 floats: ``clamp(ratio * a + (1 - ratio) * b)``."""
    return jnp.clip(ratio * a + (1.0 - ratio) * b, 0.0, 1.0)


def adjust_brightness(x: jax.Array, factor: jax.Array) -> jax.Array:
    """``x: [H, W, C]`` in 0..1, scalar factor."""
    return _blend(x, jnp.zeros_like(x), factor)


def adjust_contrast(x: jax.Array, factor: jax.Array) -> jax.Array:
    """Blend with the mean grey level of the image."""
    return _blend(x, jnp.mean(grayscale(x)), factor)


def adjust_saturation(x: jax.Array, factor: jax.Array) -> jax.Array:
    """Blend with the grey image (one channel: unchanged)."""
    if x.shape[-1] == 1:
        return x
    return _blend(x, grayscale(x), factor)


def rgb_to_hsv(x: jax.Array) -> jax.Array:
    """torchvision ``_rgb2hsv``: ``[..., 3]`` RGB in 0..1 -> HSV in 0..1."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    maxc = jnp.max(x, axis=-1)
    minc = jnp.min(x, axis=-1)
    eqc = maxc == minc
    cr = maxc - minc
    s = cr / jnp.where(eqc, 1.0, maxc)
    div = jnp.where(eqc, 1.0, cr)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    hr = jnp.where(maxc == r, bc - gc, 0.0)
    hg = jnp.where((maxc == g) & (maxc != r), 2.0 + rc - bc, 0.0)
    hb = jnp.where((maxc != g) & (maxc != r), 4.0 + gc - rc, 0.0)
    h = jnp.mod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return jnp.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(x: jax.Array) -> jax.Array:
    """torchvision ``_hsv2rgb``: ``[..., 3]`` HSV in 0..1 -> RGB in 0..1."""
    h, s, v = x[..., 0], x[..., 1], x[..., 2]
    i = jnp.floor(h * 6.0)
    f = h * 6.0 - i
    i = jnp.mod(i.astype(jnp.int32), 6)
    p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
    q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
    t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    table = jnp.stack([jnp.stack([v, q, p, p, t, v], -1),
                       jnp.stack([t, v, v, q, p, p], -1),
                       jnp.stack([p, p, t, v, v, q], -1)], -2)     # [..., 3, 6]
    return jnp.take_along_axis(table, i[..., None, None], axis=-1)[..., 0]


def adjust_hue(x: jax.Array, factor: jax.Array) -> jax.Array:
    """Rotate the hue by ``factor`` (in turns, |factor| <= 0.5); one channel: unchanged."""
    if x.shape[-1] == 1:
        return x
    hsv = rgb_to_hsv(x)
    hsv = hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + factor, 1.0))
    return hsv_to_rgb(hsv)


def gaussian_blur(x: jax.Array, sigma: jax.Array) -> jax.Array:
    """Separable Gaussian blur of ``x: [H, W, C]`` with standard deviation ``sigma`` (pixels),
    :data:`BLUR_HALF_WIDTH` taps either side, edges replicated."""
    k = jnp.arange(-BLUR_HALF_WIDTH, BLUR_HALF_WIDTH + 1, dtype=jnp.float32)
    w = jnp.exp(-0.5 * (k / sigma) ** 2)
    w = w / jnp.sum(w)
    n = BLUR_HALF_WIDTH
    p = jnp.pad(x, ((n, n), (n, n), (0, 0)), mode="edge")
    h, wd = x.shape[0], x.shape[1]
    rows = sum(w[j] * p[j:j + h] for j in range(2 * n + 1))          # [H, W + 2n, C]
    return sum(w[j] * rows[:, j:j + wd] for j in range(2 * n + 1))


def color_jitter(x: jax.Array, key: jax.Array, jitter: Sequence[float]) -> jax.Array:
    """torchvision ``ColorJitter(*jitter)`` of one image ``[H, W, C]`` in 0..1: factors
    drawn uniformly (brightness/contrast/saturation in ``[max(0, 1 - j), 1 + j]``, hue in
    ``[-j, j]``) and the four adjustments in a random order."""
    kb, kc, ks, kh, kp = jax.random.split(key, 5)
    b, c, s, hue = jitter
    fb = jax.random.uniform(kb, (), minval=max(0.0, 1 - b), maxval=1 + b)
    fc = jax.random.uniform(kc, (), minval=max(0.0, 1 - c), maxval=1 + c)
    fs = jax.random.uniform(ks, (), minval=max(0.0, 1 - s), maxval=1 + s)
    fh = jax.random.uniform(kh, (), minval=-hue, maxval=hue)
    order = jax.random.permutation(kp, 4)
    ops = (lambda y: adjust_brightness(y, fb), lambda y: adjust_contrast(y, fc),
           lambda y: adjust_saturation(y, fs), lambda y: adjust_hue(y, fh))
    for step in range(4):
        x = jax.lax.switch(order[step], ops, x)
    return x


def _view_one(x: jax.Array, key: jax.Array, spec: ViewAugment) -> jax.Array:
    """The colour and blur steps of one cropped image ``[H, W, C]`` in 0..1."""
    kj, kja, kg, kb, kbs = jax.random.split(key, 5)
    x = jnp.where(jax.random.bernoulli(kja, float(spec.jitter_p)),
                  color_jitter(x, kj, spec.jitter), x)
    if x.shape[-1] == 3:
        x = jnp.where(jax.random.bernoulli(kg, float(spec.grayscale_p)),
                      jnp.broadcast_to(grayscale(x), x.shape), x)
    sigma = jax.random.uniform(kbs, (), minval=spec.blur_sigma[0], maxval=spec.blur_sigma[1])
    return jnp.where(jax.random.bernoulli(kb, float(spec.blur_p)), gaussian_blur(x, sigma), x)


def random_views(key: jax.Array, source: jax.Array, indices: jax.Array,
                 mean: Sequence[float], std: Sequence[float],
                 spec: ViewAugment = SADE_CIFAR, dtype: Any = jnp.float32) -> jax.Array:
    """One random view of ``source[indices]``, normalised for the network.

    Args:
      key: PRNG key (independent draws per image).
      source: ``[N, H, W, C]`` uint8 images (device-resident).
      indices: ``[B]`` int32 rows.
      mean, std: per-channel normalisation (0..1 scale).

    Returns:
      ``[B, H, W, C]`` in ``dtype``: ``(view - mean) / std``.
    """
    _, height, width, _ = source.shape
    k_geo, k_col = jax.random.split(key)
    geo = augment.Augment(padding=spec.padding, flip=spec.flip, rotation=0.0)
    params = augment.sample_params(k_geo, indices.shape[0], geo, height, width)
    images = augment.augment_gather(source, indices, params, geo).astype(jnp.float32) / 255.0
    keys = jax.random.split(k_col, indices.shape[0])
    images = jax.vmap(lambda x, k: _view_one(x, k, spec))(images, keys)
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return ((images - mean) / std).astype(dtype)


__all__ = ["SADE_CIFAR", "ViewAugment", "adjust_brightness", "adjust_contrast",
           "adjust_hue", "adjust_saturation", "color_jitter", "gaussian_blur", "grayscale",
           "hsv_to_rgb", "random_views", "rgb_to_hsv"]
