"""On-device CIFAR-style augmentation, as one gather (pure JAX, jit/shard friendly).

The official RIDE CIFAR train transform (``data_loader/cifar_data_loaders.py``,
``ImbalanceCIFAR100DataLoader``), in order of application:

1. ``RandomCrop(32, padding=4)``: zero-pad 4 pixels on every side, then a crop at an
   offset drawn uniformly from ``{0, ..., 2 * padding}`` on each axis;
2. ``RandomHorizontalFlip(p=0.5)``;
3. ``RandomRotation(15)``: angle ~ U[-15, 15] degrees (counter-clockwise), PIL
   ``Image.rotate`` with nearest resampling, ``expand=False``, centre ``(W / 2, H / 2)``
   and fill 0;
4. ``ToTensor`` and ``Normalize(mean, std)``.

LDAM-DRW and ResLT use 1-2 only (``rotation=0``). All three geometric steps are maps of
output pixel -> source pixel, so they compose into one integer coordinate map per image
and a single gather from the uint8 source images; a pixel whose source falls in the
padding or outside the rotated frame is 0, exactly as in the chain of PIL operations.

The rotation reproduces what PIL does for ``rotate`` with NEAREST resampling: the
affine matrix in float64 (host side, :func:`pil_rotation_fixed`), converted to 16.16
fixed point, and every output pixel's source found with integer arithmetic, as PIL's
C routine ``affine_fixed`` does. With parameters drawn on the host
(:func:`sample_params_host`, what the loader uses) the output equals PIL's pixel for
pixel; tests/test_augment.py compares with PIL itself.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Augment:
    """Train-time augmentation of small images (CIFAR, Fashion-MNIST).

    Attributes:
      padding: zero padding of the random crop (0 disables the crop).
      flip: random horizontal flip with p = 0.5.
      rotation: maximum rotation in degrees (angle ~ U[-rotation, rotation]); 0 disables.
    """
    padding: int = 4
    flip: bool = True
    rotation: float = 15.0

    def __post_init__(self):
        if not isinstance(self.padding, (int, np.integer)) or self.padding < 0:
            raise ValueError(f"padding must be an integer >= 0, got {self.padding!r}")
        if not (isinstance(self.rotation, (int, float)) and 0 <= self.rotation <= 180):
            raise ValueError(f"rotation must be a number of degrees in [0, 180], got "
                             f"{self.rotation!r}")

    @property
    def is_identity(self) -> bool:
        return self.padding == 0 and not self.flip and self.rotation == 0


# Named recipes (RIDE data_loader/cifar_data_loaders.py; LDAM-DRW cifar_train.py).
AUGMENTATIONS = {
    "ride": Augment(padding=4, flip=True, rotation=15.0),     # RIDE CIFAR-LT loaders
    "ldam": Augment(padding=4, flip=True, rotation=0.0),      # LDAM-DRW and ResLT
    "none": Augment(padding=0, flip=False, rotation=0.0),
}


def get_augment(spec: str | Augment | None) -> Augment:
    """An :class:`Augment` from a recipe name (``'ride'``, ``'ldam'``, ``'none'``) or itself."""
    if spec is None:
        return AUGMENTATIONS["none"]
    if isinstance(spec, Augment):
        return spec
    if spec not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {spec!r}; valid choices are "
                         f"{sorted(AUGMENTATIONS)} or an Augment(...)")
    return AUGMENTATIONS[spec]


def pil_rotation_fixed(angle: float, width: int, height: int) -> tuple[int, ...]:
    """PIL's 16.16 fixed-point affine coefficients of ``Image.rotate(angle)`` (host, float64).

    Reproduces ``Image.rotate`` (centre ``(W/2, H/2)``, ``expand=False``) and the C
    routine ``affine_fixed`` it lands in for NEAREST resampling, operation for operation:
    output pixel ``(x, y)`` reads input ``((A2 + y*A1 + x*A0) >> 16, (A5 + y*A4 + x*A3) >> 16)``.

    Returns:
      ``(A0, A1, A2, A3, A4, A5)`` Python ints.
    """
    a = -math.radians(float(angle) % 360.0)
    m0, m1 = round(math.cos(a), 15), round(math.sin(a), 15)
    m3, m4 = round(-math.sin(a), 15), round(math.cos(a), 15)
    cx, cy = width / 2, height / 2
    m2 = m0 * -cx + m1 * -cy + 0.0 + cx
    m5 = m3 * -cx + m4 * -cy + 0.0 + cy

    def fix(v):
        return math.floor(v * 65536.0 + 0.5)
    return (fix(m0), fix(m1), fix(m2 + m0 * 0.5 + m1 * 0.5),
            fix(m3), fix(m4), fix(m5 + m3 * 0.5 + m4 * 0.5))


def pil_rotation_fixed_array(angles: Any, width: int, height: int) -> np.ndarray:
    """:func:`pil_rotation_fixed` for an array of angles, vectorised (NumPy float64).

    Returns:
      ``[*angles.shape, 6]`` int32. Equal to the scalar function (tests/test_augment.py
      compares them on many angles).
    """
    a = -np.radians(np.mod(np.asarray(angles, np.float64), 360.0))
    m0, m1 = np.round(np.cos(a), 15), np.round(np.sin(a), 15)
    m3, m4 = np.round(-np.sin(a), 15), np.round(np.cos(a), 15)
    cx, cy = width / 2, height / 2
    m2 = m0 * -cx + m1 * -cy + 0.0 + cx
    m5 = m3 * -cx + m4 * -cy + 0.0 + cy
    coeffs = (m0, m1, m2 + m0 * 0.5 + m1 * 0.5, m3, m4, m5 + m3 * 0.5 + m4 * 0.5)
    return np.stack([np.floor(v * 65536.0 + 0.5) for v in coeffs], -1).astype(np.int32)


def sample_params_host(rng: np.random.Generator, batch: int | tuple[int, ...], aug: Augment,
                       height: int, width: int) -> dict[str, np.ndarray]:
    """Random parameters of ``batch`` augmentations, drawn on the host (NumPy).

    The rotation coefficients are PIL's own (:func:`pil_rotation_fixed_array`, float64),
    so the augmented pixels equal torchvision's for the same crop offset, flip and
    angle. This is what :class:`~ride_jax.data.loader.DeviceLoader` uses.

    Args:
      batch: B, or a shape such as ``(steps, B)``.

    Returns:
      ``{'offset': [*batch, 2] int32 (crop row and column offsets in 0..2*padding),
      'flip': [*batch] bool, 'affine': [*batch, 6] int32 (fixed point),
      'angle': [*batch] float32 degrees}``.
    """
    shape = (batch,) if np.ndim(batch) == 0 else tuple(batch)
    offset = rng.integers(0, 2 * aug.padding + 1, size=shape + (2,)).astype(np.int32)
    flip = (rng.random(shape) < 0.5) if aug.flip else np.zeros(shape, bool)
    angle = (rng.uniform(-aug.rotation, aug.rotation, shape) if aug.rotation
             else np.zeros(shape))
    return {"offset": offset, "flip": flip,
            "affine": pil_rotation_fixed_array(angle, width, height),
            "angle": angle.astype(np.float32)}


def sample_params(key: jax.Array, batch: int, aug: Augment, height: int, width: int
                  ) -> dict[str, jax.Array]:
    """Random parameters of ``batch`` augmentations, drawn on the device (jittable).

    Same layout as :func:`sample_params_host`. The fixed-point rotation coefficients
    are computed in float32 here, so a pixel whose source coordinate lies within ~1e-5
    of a pixel edge can land on the neighbouring pixel compared with PIL (measured:
    about 1 pixel in 5,000); use the host sampler for exact parity.
    """
    k_off, k_flip, k_ang = jax.random.split(key, 3)
    offset = jax.random.randint(k_off, (batch, 2), 0, 2 * aug.padding + 1, dtype=jnp.int32)
    flip = (jax.random.bernoulli(k_flip, 0.5, (batch,)) if aug.flip
            else jnp.zeros((batch,), bool))
    angle = (jax.random.uniform(k_ang, (batch,), jnp.float32, -aug.rotation, aug.rotation)
             if aug.rotation else jnp.zeros((batch,), jnp.float32))
    a = -jnp.deg2rad(angle)
    m0, m1, m3, m4 = jnp.cos(a), jnp.sin(a), -jnp.sin(a), jnp.cos(a)
    cx, cy = width / 2, height / 2
    m2 = m0 * -cx + m1 * -cy + cx
    m5 = m3 * -cx + m4 * -cy + cy

    def fix(v):
        return jnp.floor(v * 65536.0 + 0.5).astype(jnp.int32)
    affine = jnp.stack([fix(m0), fix(m1), fix(m2 + m0 * 0.5 + m1 * 0.5),
                        fix(m3), fix(m4), fix(m5 + m3 * 0.5 + m4 * 0.5)], axis=-1)
    return {"offset": offset, "flip": flip, "affine": affine, "angle": angle}


def source_coordinates(params: dict[str, jax.Array], height: int, width: int, padding: int
                       ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Source pixel of every output pixel after crop -> flip -> rotate.

    Args:
      params: from :func:`sample_params_host` or :func:`sample_params` (leading axis B).
      height, width: image size (the output has the same size).
      padding: the crop's zero padding.

    Returns:
      ``(rows, cols, valid)``, each ``[B, H, W]``: the source pixel in the ORIGINAL
      (unpadded) image, and False where the output pixel is fill (padding or outside the
      rotated frame). Invalid positions hold in-range dummy indices.
    """
    aff = jnp.asarray(params["affine"], jnp.int32)
    a0, a1, a2, a3, a4, a5 = (aff[:, k, None, None] for k in range(6))
    y = jnp.arange(height, dtype=jnp.int32)[None, :, None]
    x = jnp.arange(width, dtype=jnp.int32)[None, None, :]
    # PIL affine_fixed: 16.16 fixed point, >> 16 is floor.
    xr = jnp.right_shift(a2 + y * a1 + x * a0, 16)
    yr = jnp.right_shift(a5 + y * a4 + x * a3, 16)
    valid = (xr >= 0) & (xr < width) & (yr >= 0) & (yr < height)
    # Undo the flip, then the crop offset within the padded image.
    xr = jnp.where(jnp.asarray(params["flip"])[:, None, None], width - 1 - xr, xr)
    offset = jnp.asarray(params["offset"], jnp.int32)
    rows = yr + offset[:, 0, None, None] - padding
    cols = xr + offset[:, 1, None, None] - padding
    valid &= (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    return (jnp.clip(rows, 0, height - 1), jnp.clip(cols, 0, width - 1), valid)


def augment_gather(source: jax.Array, indices: jax.Array, params: dict[str, jax.Array],
                   aug: Augment) -> jax.Array:
    """Gather ``source[indices]`` already augmented.

    Args:
      source: ``[N, H, W, C]`` uint8, the whole (device-resident) training set.
      indices: ``[B]`` int32 rows of ``source``.
      params: from :func:`sample_params_host` or :func:`sample_params`.
      aug: the recipe.

    Returns:
      ``[B, H, W, C]`` uint8.
    """
    _, height, width, _ = source.shape
    if aug.is_identity:
        return jnp.take(source, indices, axis=0)
    rows, cols, valid = source_coordinates(params, height, width, aug.padding)
    out = source[indices[:, None, None], rows, cols]              # [B, H, W, C]
    return jnp.where(valid[..., None], out, jnp.zeros((), source.dtype))


def augment_images(images: jax.Array, key: jax.Array, aug: Augment | str) -> jax.Array:
    """Augment a batch: ``images [B, H, W, C]`` uint8 -> ``[B, H, W, C]`` uint8."""
    aug = get_augment(aug)
    params = sample_params(key, images.shape[0], aug, images.shape[1], images.shape[2])
    return augment_gather(images, jnp.arange(images.shape[0]), params, aug)


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float],
              dtype: Any = jnp.float32) -> jax.Array:
    """``ToTensor`` + ``Normalize``: ``[..., C]`` uint8 -> ``(x / 255 - mean) / std`` in ``dtype``.

    The arithmetic is float32 (as torchvision), then cast to ``dtype``.
    """
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    x = images.astype(jnp.float32) / 255.0
    return ((x - mean) / std).astype(dtype)


def pil_rotate_reference(image: np.ndarray, angle: float) -> np.ndarray:
    """PIL's own ``Image.rotate(angle, NEAREST, fillcolor=0)`` of one ``[H, W, C]`` uint8 image.

    The ground truth that tests compare :func:`source_coordinates` with (needs Pillow).
    """
    from PIL import Image
    squeeze = image.shape[-1] == 1
    pil = Image.fromarray(image[..., 0] if squeeze else image)
    out = np.asarray(pil.rotate(angle, resample=Image.NEAREST, expand=False, fillcolor=0))
    return out[..., None] if squeeze else out


__all__ = ["AUGMENTATIONS", "Augment", "augment_gather", "augment_images", "get_augment",
           "normalize", "pil_rotate_reference", "pil_rotation_fixed",
           "pil_rotation_fixed_array", "sample_params",
           "sample_params_host", "source_coordinates"]
