"""SADE's two random test-time views of ImageNet-size images, on PIL images (host side).

SADE's test-time self-supervised aggregation (:mod:`ride_jax.test_time`) compares the
predictions of two independently augmented views of every test image. For ImageNet-LT,
Places-LT and iNaturalist 2018 the official view (``test_training_imagenet.py:177-187``,
``test_training_places.py:224-234``, ``test_training_inat.py:176-186``; sade-spec §4.3)
is, in order, torchvision on PIL images::

    RandomResizedCrop(size, scale=(0.2, 1))         # iNat: the default scale (0.08, 1)
    RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)
    RandomGrayscale(p=0.2)
    RandomApply([GaussianBlur(sigma ~ U[0.1, 2])], p=0.5)   # PIL ImageFilter radius
    RandomHorizontalFlip()
    ToTensor(); Normalize(mean, std)                # on the device here

As :mod:`ride_jax.data.pil_transforms` (whose crop and colour operations it reuses), the
random draws are separate from the pixel work: :func:`sample_view_params` draws a
:class:`ViewParams` from a ``np.random.Generator`` in torchvision's order (NumPy uniforms
in place of torch's stream), :func:`view_transform` applies it deterministically with
the PIL calls torchvision makes on PIL images:

* crop: ``Image.crop`` + ``resize(BILINEAR)`` (``pil_transforms.resized_crop``);
* ColorJitter: brightness / contrast / saturation as ``ImageEnhance`` (``pil_transforms``),
  hue as torchvision's ``F_pil.adjust_hue``: PIL's uint8 HSV, the H channel shifted by
  ``uint8(hue * 255)`` with wrap-around (:func:`adjust_hue`); the four in a random order;
* RandomGrayscale: ``convert('L')`` repeated on three channels (:func:`grayscale`);
* GaussianBlur: ``ImageFilter.GaussianBlur(radius=sigma)`` (SADE's MoCo-v2 class);
* flip: ``transpose(FLIP_LEFT_RIGHT)``.

Only NumPy and PIL are imported (no torch, torchvision or TensorFlow); everything is a
plain function or a frozen dataclass, so it pickles into worker processes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageFilter

from ride_jax.data import pil_transforms as pt

BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class PilViewSpec:
    """One random view (defaults: SADE's ImageNet-LT / Places-LT view).

    Attributes:
      scale: RandomResizedCrop's area-fraction range.
      ratio: its aspect-ratio range.
      jitter: ColorJitter's (brightness, contrast, saturation, hue).
      jitter_p: probability that the ColorJitter is applied.
      grayscale_p: RandomGrayscale's probability.
      blur_p: probability of the Gaussian blur.
      blur_sigma: its radius range (uniform).
      flip: RandomHorizontalFlip(p=0.5).
    """
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = pt.CROP_RATIO
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    flip: bool = True

    def __post_init__(self):
        check_view_fields(self)
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {self.scale!r}")
        lo, hi = self.blur_sigma
        if not 0 < lo <= hi:
            raise ValueError(f"blur_sigma must satisfy 0 < low <= high, got "
                             f"{self.blur_sigma!r}")


def check_view_fields(spec) -> None:
    """The checks every SADE view spec shares (this module's :class:`PilViewSpec` and
    :class:`ride_jax.data.views.ViewAugment`): ``jitter_p``, ``grayscale_p`` and
    ``blur_p`` are probabilities, ``jitter`` is ColorJitter's (b, c, s >= 0, 0 <= hue <=
    0.5). Raises ValueError (one line)."""
    for name in ("jitter_p", "grayscale_p", "blur_p"):
        p = getattr(spec, name)
        if not 0 <= p <= 1:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    if not 0 <= spec.jitter[3] <= 0.5 or min(spec.jitter[:3]) < 0:
        raise ValueError(f"jitter must be (brightness, contrast, saturation >= 0, "
                         f"0 <= hue <= 0.5), got {spec.jitter!r}")


# SADE test_training_imagenet.py:177-187 (Places-LT: test_training_places.py:224-234).
SADE_IMAGENET = PilViewSpec()
# SADE test_training_inat.py:176-186: RandomResizedCrop's default scale.
SADE_INAT = PilViewSpec(scale=pt.CROP_SCALE)
_SPECS = {"imagenet_lt": SADE_IMAGENET, "places_lt": SADE_IMAGENET, "inat2018": SADE_INAT}


def view_spec(dataset: str) -> PilViewSpec:
    """SADE's view of ``dataset`` (``'imagenet_lt'``, ``'places_lt'``, ``'inat2018'``)."""
    if dataset not in _SPECS:
        raise ValueError(f"no PIL test-time view for dataset={dataset!r}; valid choices are "
                         f"{tuple(_SPECS)}")
    return _SPECS[dataset]


@dataclasses.dataclass(frozen=True)
class ViewParams:
    """The random choices of one view (plain Python values).

    Attributes:
      crop: ``(top, left, crop_height, crop_width)`` in the source image.
      order: the ColorJitter's ops (0 brightness, 1 contrast, 2 saturation, 3 hue), first
        to last; None: no jitter.
      factors: ``(brightness, contrast, saturation, hue)`` factors (None with ``order``).
      grayscale: convert to grey (three equal channels).
      blur: the Gaussian blur's radius; None: no blur.
      flip: mirror left-right.
    """
    crop: tuple[int, int, int, int]
    order: tuple[int, int, int, int] | None
    factors: tuple[float, float, float, float] | None
    grayscale: bool
    blur: float | None
    flip: bool


def sample_view_params(rng: np.random.Generator, height: int, width: int,
                       spec: PilViewSpec = SADE_IMAGENET) -> ViewParams:
    """Draws one view's :class:`ViewParams` in torchvision's order.

    Draws, in order: :func:`ride_jax.data.pil_transforms.random_resized_crop_params`
    ``(rng, height, width, spec.scale, spec.ratio)``; ``rng.random()`` (the jitter is
    applied unless ``jitter_p < u``, torchvision ``RandomApply``), and when applied
    ``rng.permutation(4)`` then the brightness, contrast, saturation factors
    ``rng.uniform(max(0, 1 - j), 1 + j)`` and the hue ``rng.uniform(-h, h)`` (torchvision
    ``ColorJitter.get_params``); ``rng.random() < grayscale_p``; ``rng.random()`` (the
    blur unless ``blur_p < u``) and when applied ``rng.uniform(*blur_sigma)`` (SADE's
    ``random.uniform``); ``rng.random() < 0.5`` (the flip).
    """
    crop = pt.random_resized_crop_params(rng, height, width, spec.scale, spec.ratio)
    order = factors = None
    if not spec.jitter_p < rng.random():
        order = tuple(int(v) for v in rng.permutation(4))
        b, c, s, h = (float(v) for v in spec.jitter)
        factors = (float(rng.uniform(max(0.0, 1 - b), 1 + b)),
                   float(rng.uniform(max(0.0, 1 - c), 1 + c)),
                   float(rng.uniform(max(0.0, 1 - s), 1 + s)),
                   float(rng.uniform(-h, h)))
    grey = bool(rng.random() < spec.grayscale_p)
    blur = None
    if not spec.blur_p < rng.random():
        blur = float(rng.uniform(*spec.blur_sigma))
    flip = bool(spec.flip and rng.random() < 0.5)
    return ViewParams(crop=crop, order=order, factors=factors, grayscale=grey, blur=blur,
                      flip=flip)


def adjust_hue(image: Image.Image, factor: float) -> Image.Image:
    """torchvision ``F_pil.adjust_hue`` (``|factor| <= 0.5``): PIL's uint8 HSV, H shifted
    by ``uint8(factor * 255)`` with wrap-around (the cast written ``int(...) mod 256``:
    truncation toward zero, as NumPy's float-to-uint8 cast on these values)."""
    if not -0.5 <= factor <= 0.5:
        raise ValueError(f"hue factor must be in [-0.5, 0.5], got {factor!r}")
    h, s, v = image.convert("HSV").split()
    shift = int(factor * 255) % 256
    np_h = (np.asarray(h, np.uint8) + np.uint8(shift)).astype(np.uint8)   # wraps mod 256
    return Image.merge("HSV", (Image.fromarray(np_h, "L"), s, v)).convert(image.mode)


def grayscale(image: Image.Image) -> Image.Image:
    """torchvision ``rgb_to_grayscale(img, num_output_channels=3)`` on PIL: ``convert('L')``
    (``L = (299 R + 587 G + 114 B) / 1000``) on three channels."""
    return image.convert("L").convert("RGB")


def apply_jitter(image: Image.Image, order: Sequence[int],
                 factors: Sequence[float]) -> Image.Image:
    """ColorJitter's four ops with ``factors[op]``, in ``order`` (0 brightness, 1 contrast,
    2 saturation: :func:`ride_jax.data.pil_transforms.apply_color_ops`; 3 hue:
    :func:`adjust_hue`)."""
    for op in order:
        if op == HUE:
            image = adjust_hue(image, float(factors[HUE]))
        else:
            image = pt.apply_color_ops(image, (op,), factors[:3])
    return image


def view_transform(image: Image.Image, params: ViewParams,
                   size: int = pt.IMAGE_SIZE) -> np.ndarray:
    """RGB PIL image -> uint8 ``[size, size, 3]``: the view of ``params``.

    Args:
      image: RGB PIL image (:func:`ride_jax.data.pil_transforms.decode`).
      params: :func:`sample_view_params`'s draws for an image of this size.
      size: output side (RandomResizedCrop's).
    """
    image = pt._check_rgb(image)
    size = pt._check_positive_int("size", size)
    if not isinstance(params, ViewParams):
        raise TypeError(f"params must be a ViewParams, got {type(params).__name__}")
    top, left, h, w = params.crop
    if top < 0 or left < 0 or top + h > image.height or left + w > image.width:
        raise ValueError(f"params.crop {params.crop} (top, left, h, w) lies outside the "
                         f"{image.height}x{image.width} (h x w) image")
    img = pt.resized_crop(image, top, left, h, w, size)
    if params.order is not None:
        img = apply_jitter(img, params.order, params.factors)
    if params.grayscale:
        img = grayscale(img)
    if params.blur is not None:
        if not (math.isfinite(params.blur) and params.blur > 0):
            raise ValueError(f"params.blur must be a radius > 0, got {params.blur!r}")
        img = img.filter(ImageFilter.GaussianBlur(radius=params.blur))
    if params.flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return pt._to_array(img, size)


def random_view(image: Image.Image, rng: np.random.Generator,
                spec: PilViewSpec = SADE_IMAGENET, size: int = pt.IMAGE_SIZE) -> np.ndarray:
    """One random view: :func:`sample_view_params` then :func:`view_transform`."""
    return view_transform(image, sample_view_params(rng, image.height, image.width, spec),
                          size)


__all__ = ["PilViewSpec", "SADE_IMAGENET", "SADE_INAT", "ViewParams", "adjust_hue",
           "apply_jitter", "grayscale", "random_view", "sample_view_params", "view_spec",
           "view_transform"]
