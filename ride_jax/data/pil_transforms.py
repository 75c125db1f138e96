"""The official ImageNet-LT / iNat / Places-LT transforms on PIL images, randomness apart.

Official transforms (RIDE data_loader/imagenet_lt_data_loaders.py,
data_loader/inaturalist_data_loaders.py), torchvision semantics on PIL images:

* train: RandomResizedCrop(224) (scale (0.08, 1), ratio (3/4, 4/3), 10 attempts then
  the centre-crop fallback, PIL bilinear) -> RandomHorizontalFlip(0.5) ->
  ColorJitter(0.4, 0.4, 0.4, 0) (factors U[0.6, 1.4], the three ops in a random order)
  -> ToTensor -> Normalize;
* eval: Resize(256) on the shorter side (PIL bilinear) -> CenterCrop(224) -> ToTensor
  -> Normalize.

This module is the host-side (grain worker) version of the TensorFlow transforms in
:mod:`ride_jax.data.streaming`. It imports only NumPy and PIL (no torch, torchvision or
TensorFlow), and every name is a plain module-level function or a frozen dataclass, so
all of it pickles into worker processes. The random draws are separate from the pixel
work: :func:`sample_train_params` draws a :class:`TrainParams` from a
``np.random.Generator`` (the same algorithm as torchvision's ``get_params``, not torch's
random stream), :func:`train_transform` applies it deterministically. The pixel
operations are PIL's own calls, the ones torchvision makes on PIL images
(``Image.crop``, ``Image.resize(..., BILINEAR)``, ``Image.transpose(FLIP_LEFT_RIGHT)``,
``ImageEnhance.Brightness / Contrast / Color``), so given the same parameters the output
equals torchvision's pixel for pixel.

Outputs are uint8 ``[size, size, 3]`` HWC arrays; normalisation ``(x / 255 - mean) /
std`` is not done here (it runs on the device). A smaller ``size`` works the same (for
small images on a CPU): :func:`resize_size` gives the matching eval resize,
``round(size * 256 / 224)`` (64 -> 73).
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageEnhance

IMAGE_SIZE = 224
RESIZE_SIZE = 256
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
JITTER = 0.4
CROP_ATTEMPTS = 10

BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2
_ENHANCERS = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)


# --------------------------------------------------------------------------- helpers


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _check_positive_int(name: str, value) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_rgb(image) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
    if image.mode != "RGB":
        raise ValueError(f"image must be in mode 'RGB' (see decode), got mode {image.mode!r}")
    return image


def _to_array(image: Image.Image, size: int) -> np.ndarray:
    out = np.array(image, dtype=np.uint8)  # a fresh, writable, C-contiguous copy
    assert out.shape == (size, size, 3), out.shape
    return out


def resize_size(size: int = IMAGE_SIZE) -> int:
    """The eval resize matching a crop ``size``: ``round(size * 256 / 224)`` (224 -> 256, 64 -> 73)."""
    size = _check_positive_int("size", size)
    return int(round(size * RESIZE_SIZE / IMAGE_SIZE))


def decode(data: bytes) -> Image.Image:
    """Encoded bytes (JPEG, PNG, ...) -> RGB PIL image (torchvision's default ``pil_loader``:
    ``Image.open`` then ``.convert('RGB')``)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("data is empty (0 bytes), not an encoded image")
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


# --------------------------------------------------------------------------- parameters


def random_resized_crop_params(rng: np.random.Generator, height: int, width: int,
                               scale: Sequence[float] = CROP_SCALE,
                               ratio: Sequence[float] = CROP_RATIO,
                               attempts: int = CROP_ATTEMPTS) -> tuple[int, int, int, int]:
    """torchvision ``RandomResizedCrop.get_params``: the crop box of one image.

    Up to ``attempts`` draws of (area fraction ~ U[scale], log aspect ~ U[log ratio]);
    ``w = int(round(sqrt(area * f * aspect)))``, ``h = int(round(sqrt(area * f /
    aspect)))`` (Python ``round``, half to even); the first with ``0 < w <= width`` and
    ``0 < h <= height`` is used, its top-left corner uniform over the valid positions. If
    none fits: the whole image clamped to ``ratio`` (the short side kept, the long one
    ``int(round(...))`` of it), centred with ``//`` offsets.

    The draws from ``rng``, in order (torchvision's order, with NumPy float64 uniforms in
    place of torch's): per attempt ``rng.uniform(scale[0], scale[1])`` then
    ``rng.uniform(log(ratio[0]), log(ratio[1]))``; for the attempt that fits,
    ``rng.integers(0, height - h + 1)`` (top) then ``rng.integers(0, width - w + 1)``
    (left). The fallback draws nothing more.

    Args:
      rng: the generator drawn from.
      height, width: image size in pixels (>= 1).
      scale: ``(lo, hi)`` range of the crop's area fraction, ``0 <= lo <= hi``.
      ratio: ``(lo, hi)`` range of the crop's aspect ratio ``w / h``, ``0 < lo <= hi``.
      attempts: number of random draws before the fallback (torchvision: 10).

    Returns:
      ``(top, left, crop_height, crop_width)`` Python ints, inside the image.
    """
    height = _check_positive_int("height", height)
    width = _check_positive_int("width", width)
    if not _is_int(attempts) or attempts < 0:
        raise ValueError(f"attempts must be an integer >= 0, got {attempts!r}")
    s_lo, s_hi = (float(v) for v in scale)
    r_lo, r_hi = (float(v) for v in ratio)
    if not 0.0 <= s_lo <= s_hi:
        raise ValueError(f"scale must be (lo, hi) with 0 <= lo <= hi, got {tuple(scale)!r}")
    if not 0.0 < r_lo <= r_hi:
        raise ValueError(f"ratio must be (lo, hi) with 0 < lo <= hi, got {tuple(ratio)!r}")
    area = height * width
    log_lo, log_hi = math.log(r_lo), math.log(r_hi)
    for _ in range(attempts):
        target_area = area * float(rng.uniform(s_lo, s_hi))
        aspect_ratio = math.exp(float(rng.uniform(log_lo, log_hi)))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback to the central crop.
    in_ratio = float(width) / float(height)
    if in_ratio < r_lo:
        w = width
        h = int(round(w / r_lo))
    elif in_ratio > r_hi:
        h = height
        w = int(round(h * r_hi))
    else:  # whole image
        w = width
        h = height
    return (height - h) // 2, (width - w) // 2, h, w


def color_jitter_params(rng: np.random.Generator,
                        strength: float = JITTER) -> tuple[np.ndarray, np.ndarray]:
    """torchvision ``ColorJitter(s, s, s, 0).get_params``: op order and factors.

    Draws, in order: ``rng.permutation(3)`` (torchvision permutes 4 ops and skips the
    disabled hue, which leaves a uniform permutation of the other 3), then the factors
    ``rng.uniform(max(0, 1 - s), 1 + s, size=3)`` (brightness, contrast, saturation).

    Args:
      rng: the generator drawn from.
      strength: ``s >= 0`` of brightness, contrast and saturation alike.

    Returns:
      ``order``: int64 ``[3]``, a permutation of 0 = brightness, 1 = contrast,
      2 = saturation (applied first to last); ``factors``: float64 ``[3]`` indexed by op.
    """
    if not isinstance(strength, (int, float, np.floating, np.integer)) or not (
            math.isfinite(float(strength)) and float(strength) >= 0.0):
        raise ValueError(f"strength must be a finite number >= 0, got {strength!r}")
    strength = float(strength)
    order = rng.permutation(3).astype(np.int64)
    factors = rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength, size=3).astype(np.float64)
    return order, factors


@dataclasses.dataclass(frozen=True)
class TrainParams:
    """The random choices of one train transform (plain Python values, picklable).

    Attributes:
      crop: ``(top, left, crop_height, crop_width)`` in the source image.
      flip: mirror left-right after the crop.
      order: permutation of ``(0, 1, 2)`` (brightness, contrast, saturation), applied
        first to last; None: no colour jitter.
      factors: ``(brightness, contrast, saturation)`` enhancement factors (>= 0), indexed
        by op; None exactly when ``order`` is None.
    """
    crop: tuple[int, int, int, int]
    flip: bool
    order: tuple[int, int, int] | None = None
    factors: tuple[float, float, float] | None = None

    def __post_init__(self):
        crop = tuple(self.crop)
        if len(crop) != 4 or not all(_is_int(v) for v in crop):
            raise ValueError(f"crop must be 4 integers (top, left, h, w), got {self.crop!r}")
        top, left, h, w = (int(v) for v in crop)
        if top < 0 or left < 0 or h < 1 or w < 1:
            raise ValueError(f"crop must have top, left >= 0 and h, w >= 1, got {self.crop!r}")
        object.__setattr__(self, "crop", (top, left, h, w))
        if not isinstance(self.flip, (bool, np.bool_)):
            raise ValueError(f"flip must be a bool, got {self.flip!r}")
        object.__setattr__(self, "flip", bool(self.flip))
        if (self.order is None) != (self.factors is None):
            raise ValueError(f"order and factors must both be set or both be None, got "
                             f"order={self.order!r}, factors={self.factors!r}")
        if self.order is not None:
            order = tuple(self.order)
            if sorted(order) != [0, 1, 2] or not all(_is_int(v) for v in order):
                raise ValueError(f"order must be a permutation of (0, 1, 2), got {self.order!r}")
            factors = tuple(float(v) for v in self.factors)
            if len(factors) != 3 or not all(math.isfinite(f) and f >= 0.0 for f in factors):
                raise ValueError(f"factors must be 3 finite numbers >= 0, got {self.factors!r}")
            object.__setattr__(self, "order", tuple(int(v) for v in order))
            object.__setattr__(self, "factors", factors)


def sample_train_params(rng: np.random.Generator, height: int, width: int,
                        color_jitter: bool = True, strength: float = JITTER) -> TrainParams:
    """Draws one image's :class:`TrainParams`, in the official order of the transforms.

    Draws: :func:`random_resized_crop_params` ``(rng, height, width)``, then the flip
    ``rng.random() < 0.5`` (torchvision: ``torch.rand(1) < p``), then, if
    ``color_jitter``, :func:`color_jitter_params` ``(rng, strength)``.
    """
    crop = random_resized_crop_params(rng, height, width)
    flip = bool(rng.random() < 0.5)
    if not color_jitter:
        return TrainParams(crop=crop, flip=flip)
    order, factors = color_jitter_params(rng, strength)
    return TrainParams(crop=crop, flip=flip, order=tuple(int(v) for v in order),
                       factors=tuple(float(v) for v in factors))


# --------------------------------------------------------------------------- pixel work


def resized_crop(image: Image.Image, top: int, left: int, height: int, width: int,
                 size: int = IMAGE_SIZE) -> Image.Image:
    """torchvision ``F.resized_crop(img, top, left, height, width, [size, size])`` on PIL:
    ``img.crop((left, top, left + width, top + height))`` then ``resize`` bilinear."""
    img = image.crop((left, top, left + width, top + height))
    if img.size != (size, size):  # torchvision returns an image of the right size as is
        img = img.resize((size, size), Image.BILINEAR)
    return img


def apply_color_ops(image: Image.Image, order: Sequence[int],
                    factors: Sequence[float]) -> Image.Image:
    """Brightness (0), contrast (1), saturation (2) with ``factors[op]``, in ``order``.

    Each op is torchvision's ``adjust_*`` on PIL images: ``ImageEnhance.Brightness``,
    ``ImageEnhance.Contrast`` (blend with the rounded mean of the L image),
    ``ImageEnhance.Color`` (blend with the L image), ``.enhance(factor)``.
    """
    for op in order:
        image = _ENHANCERS[op](image).enhance(float(factors[op]))
    return image


def train_transform(image: Image.Image, params: TrainParams,
                    size: int = IMAGE_SIZE) -> np.ndarray:
    """RGB PIL image -> uint8 ``[size, size, 3]``: crop + resize, [flip], [colour jitter].

    Args:
      image: RGB PIL image (:func:`decode`).
      params: the draws of :func:`sample_train_params` for an image of this size.
      size: output side (torchvision ``RandomResizedCrop(size)``).
    """
    image = _check_rgb(image)
    size = _check_positive_int("size", size)
    if not isinstance(params, TrainParams):
        raise TypeError(f"params must be a TrainParams, got {type(params).__name__}")
    top, left, h, w = params.crop
    if top + h > image.height or left + w > image.width:
        raise ValueError(f"params.crop {params.crop} (top, left, h, w) lies outside the "
                         f"{image.height}x{image.width} (h x w) image")
    img = resized_crop(image, top, left, h, w, size)
    if params.flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if params.order is not None:
        img = apply_color_ops(img, params.order, params.factors)
    return _to_array(img, size)


def resize_shorter(image: Image.Image, size: int = RESIZE_SIZE) -> Image.Image:
    """torchvision ``Resize(size)`` on PIL: shorter side -> size, longer side
    ``int(size * long / short)``, bilinear (returned as is when already that size)."""
    width, height = image.size
    short, long_ = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long_ / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) == (width, height):
        return image
    return image.resize((new_w, new_h), Image.BILINEAR)


def center_crop(image: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """torchvision ``CenterCrop(size)`` on an image at least ``size`` on each side:
    ``top = int(round((H - size) / 2.0))`` (half to even), ``left`` likewise."""
    width, height = image.size
    if size > height or size > width:
        raise ValueError(f"center crop size {size} exceeds the {height}x{width} (h x w) image")
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def eval_transform(image: Image.Image, size: int = IMAGE_SIZE,
                   resize: int = RESIZE_SIZE) -> np.ndarray:
    """RGB PIL image -> uint8 ``[size, size, 3]``: Resize(resize) then CenterCrop(size).

    ``resize >= size`` (for a smaller ``size``, :func:`resize_size` gives the matching
    ``resize``).
    """
    image = _check_rgb(image)
    size = _check_positive_int("size", size)
    resize = _check_positive_int("resize", resize)
    if resize < size:
        raise ValueError(f"resize must be >= size ({size}), got {resize}")
    return _to_array(center_crop(resize_shorter(image, resize), size), size)
