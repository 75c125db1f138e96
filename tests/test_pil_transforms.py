"""Host-side PIL transforms (ImageNet-LT / iNat / Places-LT): torchvision semantics.

Expected values come from PIL called directly here, from a restatement of torchvision's
``RandomResizedCrop.get_params`` written out in this file, from hand-computed numbers
and, where torchvision imports, from torchvision itself.
"""

import ast
import functools
import io
import math
import pathlib
import pickle
import subprocess
import sys

import chex
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps, UnidentifiedImageError

from ride_jax.data import pil_transforms as pt

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOG_RATIO = (math.log(3.0 / 4.0), math.log(4.0 / 3.0))


def _image(height, width, seed=0, mode="RGB"):
    rs = np.random.default_rng(seed)
    if mode == "RGB":
        return Image.fromarray(rs.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    return Image.fromarray(rs.integers(0, 256, (height, width), dtype=np.uint8), "L")


def _smooth_image(height, width, seed=0, noise=12.0):
    # Gradients plus noise: a photo-like image on which the colour ops move many pixels.
    rs = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 200.0 / width, y * 180.0 / height, (x + y) * 100.0 / (height + width)],
                    axis=-1) + 30.0
    arr = np.clip(base + rs.normal(0, noise, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _ref_get_params(rng, height, width, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
    """torchvision RandomResizedCrop.get_params, written out, drawing from a NumPy rng."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = int(rng.integers(0, height - h + 1))
            j = int(rng.integers(0, width - w + 1))
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class _Scripted:
    """A stand-in Generator returning scripted values and recording each call's bounds."""

    def __init__(self, uniforms, integers=()):
        self.uniforms = list(uniforms)
        self.integers_ = list(integers)
        self.calls = []

    def uniform(self, lo, hi):
        self.calls.append(("uniform", lo, hi))
        return self.uniforms.pop(0)

    def integers(self, lo, hi):
        self.calls.append(("integers", lo, hi))
        return self.integers_.pop(0)


def _pil_train(img, params, size):
    """The official train chain on PIL images, PIL calls written out."""
    top, left, h, w = params.crop
    out = img.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
    if params.flip:
        out = ImageOps.mirror(out)
    if params.order is not None:
        enhancers = {0: ImageEnhance.Brightness, 1: ImageEnhance.Contrast, 2: ImageEnhance.Color}
        for op in params.order:
            out = enhancers[op](out).enhance(params.factors[op])
    return np.asarray(out)


def _check_uint8(arr, size):
    chex.assert_shape(arr, (size, size, 3))
    chex.assert_type(arr, np.uint8)


# --------------------------------------------------------------------------- constants


def test_constants_and_resize_size():
    assert (pt.IMAGE_SIZE, pt.RESIZE_SIZE, pt.JITTER) == (224, 256, 0.4)
    assert pt.resize_size(224) == 256
    assert pt.resize_size(64) == 73          # 64 * 256 / 224 = 73.14
    assert pt.resize_size(112) == 128


# --------------------------------------------------------------------------- crop params


@pytest.mark.parametrize("height,width", [(375, 500), (500, 333), (224, 224), (30, 900),
                                          (2, 3), (1, 1)])
def test_crop_params_equal_restated_get_params(height, width):
    for seed in range(60):
        got = pt.random_resized_crop_params(np.random.default_rng(seed), height, width)
        want = _ref_get_params(np.random.default_rng(seed), height, width)
        assert got == want, (seed, got, want)
        assert all(type(v) is int for v in got)


def test_crop_params_scripted_draws():
    # 100 x 200: attempt 1 (scale 1, aspect 4/3) gives h = round(sqrt(15000)) = 122 > 100;
    # attempt 2 (scale 0.5, aspect 1) gives 100 x 100: top in [0, 1), left in [0, 101).
    rng = _Scripted([1.0, LOG_RATIO[1], 0.5, 0.0], [0, 37])
    assert pt.random_resized_crop_params(rng, 100, 200) == (0, 37, 100, 100)
    assert rng.calls == [("uniform", 0.08, 1.0), ("uniform", *LOG_RATIO),
                         ("uniform", 0.08, 1.0), ("uniform", *LOG_RATIO),
                         ("integers", 0, 1), ("integers", 0, 101)]


def test_crop_params_round_half_to_even():
    # 10 x 10, scale 0.0625, aspect 1: sqrt(6.25) = 2.5 -> round() = 2 (not 3).
    rng = _Scripted([0.0625, 0.0], [4, 6])
    assert pt.random_resized_crop_params(rng, 10, 10) == (4, 6, 2, 2)
    assert rng.calls[-2:] == [("integers", 0, 9), ("integers", 0, 9)]
    # 10 x 10, scale 0.1225, aspect 1: sqrt(12.25) = 3.5 -> 4.
    rng = _Scripted([0.1225, 0.0], [0, 0])
    assert pt.random_resized_crop_params(rng, 10, 10) == (0, 0, 4, 4)


@pytest.mark.parametrize("height,width,want", [
    (10, 1000, (0, 493, 10, 13)),    # too wide: h kept, w = round(10 * 4/3) = 13
    (1000, 10, (493, 0, 13, 10)),    # too tall: w kept, h = round(10 / (3/4)) = 13
    (11, 1000, (0, 492, 11, 15)),    # w = round(14.67) = 15 (not int() = 14)
    (1000, 11, (492, 0, 15, 11)),    # h = round(11 / (3/4)) = round(14.67) = 15
])
def test_crop_params_fallback_extreme_aspect(height, width, want):
    # No attempt can fit (area >= 0.08 * 10000 needs a short side >= 24): always the fallback.
    for seed in range(20):
        assert pt.random_resized_crop_params(np.random.default_rng(seed), height, width) == want


def test_crop_params_fallback_after_ten_failures():
    # 100 x 100, every attempt scale 1 and aspect 4/3: w = round(115.47) = 115 > 100.
    rng = _Scripted([1.0, LOG_RATIO[1]] * 10)
    assert pt.random_resized_crop_params(rng, 100, 100) == (0, 0, 100, 100)
    assert len(rng.calls) == 20 and all(c[0] == "uniform" for c in rng.calls)
    # 90 x 100 (aspect 1.11, in range): the whole image.
    rng = _Scripted([1.0, LOG_RATIO[1]] * 10)
    assert pt.random_resized_crop_params(rng, 90, 100) == (0, 0, 90, 100)
    # 50 x 100 (aspect 2): h kept, w = round(50 * 4/3) = 67, left = (100 - 67) // 2 = 16.
    rng = _Scripted([1.0, LOG_RATIO[1]] * 10)
    assert pt.random_resized_crop_params(rng, 50, 100) == (0, 16, 50, 67)


def test_crop_params_bounds_and_distribution():
    rng = np.random.default_rng(3)
    boxes = np.array([pt.random_resized_crop_params(rng, 375, 500) for _ in range(400)])
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= 375).all() and (left + w <= 500).all()
    frac = h * w / (375 * 500)
    assert frac.min() >= 0.07 and frac.max() <= 1.0
    assert (w / h).min() >= 0.7 and (w / h).max() <= 1.4
    assert len({tuple(b) for b in boxes}) > 390          # genuinely random


def test_crop_params_deterministic():
    a = [pt.random_resized_crop_params(np.random.default_rng(11), 300, 400) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    b = pt.random_resized_crop_params(np.random.default_rng(12), 300, 400)
    assert b != a[0]


# --------------------------------------------------------------------------- jitter params


def test_color_jitter_params_equal_restatement():
    for seed in range(30):
        order, factors = pt.color_jitter_params(np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        np.testing.assert_array_equal(order, rng.permutation(3))
        np.testing.assert_array_equal(factors, rng.uniform(0.6, 1.4, size=3))
        chex.assert_shape([order, factors], (3,))
        assert np.issubdtype(order.dtype, np.integer) and factors.dtype == np.float64


def test_color_jitter_params_ranges():
    rng = np.random.default_rng(0)
    draws = [pt.color_jitter_params(rng) for _ in range(600)]
    orders = {tuple(int(v) for v in o) for o, _ in draws}
    assert orders == {(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)}
    f = np.stack([f for _, f in draws])
    assert f.min() >= 0.6 and f.max() <= 1.4 and f.min() < 0.62 and f.max() > 1.38
    _, f0 = pt.color_jitter_params(rng, 0.0)
    np.testing.assert_array_equal(f0, [1.0, 1.0, 1.0])
    _, big = pt.color_jitter_params(np.random.default_rng(1), 1.5)
    want = np.random.default_rng(1)
    want.permutation(3)
    np.testing.assert_array_equal(big, want.uniform(0.0, 2.5, size=3))   # lo clamped at 0


def test_sample_train_params_draw_order():
    for seed in range(20):
        p = pt.sample_train_params(np.random.default_rng(seed), 240, 320)
        rng = np.random.default_rng(seed)
        crop = _ref_get_params(rng, 240, 320)
        flip = rng.random() < 0.5
        order = tuple(int(v) for v in rng.permutation(3))
        factors = tuple(float(v) for v in rng.uniform(0.6, 1.4, size=3))
        assert p == pt.TrainParams(crop=crop, flip=flip, order=order, factors=factors)
        q = pt.sample_train_params(np.random.default_rng(seed), 240, 320, color_jitter=False)
        assert q == pt.TrainParams(crop=crop, flip=flip) and q.order is None and q.factors is None
    flips = [pt.sample_train_params(np.random.default_rng(s), 50, 50).flip for s in range(400)]
    assert 150 < sum(flips) < 250


# --------------------------------------------------------------------------- train pixels


@pytest.mark.parametrize("size", [224, 64])
def test_train_transform_equals_pil_chain(size):
    img = _smooth_image(180, 260, seed=1)
    rng = np.random.default_rng(5)
    seen_flip = set()
    for _ in range(8):
        p = pt.sample_train_params(rng, 180, 260)
        out = pt.train_transform(img, p, size)
        _check_uint8(out, size)
        np.testing.assert_array_equal(out, _pil_train(img, p, size))
        seen_flip.add(p.flip)
    assert seen_flip == {True, False}
    p = pt.sample_train_params(rng, 180, 260, color_jitter=False)
    np.testing.assert_array_equal(pt.train_transform(img, p, size), _pil_train(img, p, size))


def test_train_transform_default_size_and_determinism():
    img = _image(300, 200, seed=2)
    p = pt.sample_train_params(np.random.default_rng(0), 300, 200)
    a, b = pt.train_transform(img, p), pt.train_transform(img, p)
    _check_uint8(a, 224)
    np.testing.assert_array_equal(a, b)
    assert a.flags.writeable and a.flags.c_contiguous


def test_train_crop_without_resampling_and_flip():
    # A crop of exactly the output size is the pixels themselves (no resampling).
    img = _image(100, 120, seed=4)
    arr = np.asarray(img)
    out = pt.train_transform(img, pt.TrainParams(crop=(5, 7, 64, 64), flip=False), 64)
    np.testing.assert_array_equal(out, arr[5:69, 7:71])
    out = pt.train_transform(img, pt.TrainParams(crop=(5, 7, 64, 64), flip=True), 64)
    np.testing.assert_array_equal(out, arr[5:69, 7:71][:, ::-1])


def test_brightness_by_hand():
    img = Image.new("RGB", (32, 32), (100, 50, 200))
    p = pt.TrainParams(crop=(0, 0, 32, 32), flip=False, order=(0, 1, 2),
                       factors=(1.2, 1.0, 1.0))
    out = pt.train_transform(img, p, 32)
    np.testing.assert_array_equal(out, np.broadcast_to([120, 60, 240], (32, 32, 3)))
    # Saturation 0 leaves the grey level L = (299 R + 587 G + 114 B) / 1000 = 82.05 -> 82.
    p = pt.TrainParams(crop=(0, 0, 32, 32), flip=False, order=(2, 0, 1),
                       factors=(1.0, 1.0, 0.0))
    np.testing.assert_array_equal(pt.train_transform(img, p, 32),
                                  np.full((32, 32, 3), 82, np.uint8))


def test_color_order_is_honoured():
    img = _smooth_image(64, 64, seed=3)
    factors = (1.4, 0.6, 1.3)
    box = (0, 0, 64, 64)
    outs = {}
    for order in [(0, 1, 2), (1, 0, 2), (2, 1, 0)]:
        p = pt.TrainParams(crop=box, flip=False, order=order, factors=factors)
        outs[order] = pt.train_transform(img, p, 64)
        np.testing.assert_array_equal(outs[order], _pil_train(img, p, 64))
    # Precondition: the orders give different images (clipping), so the check has teeth.
    assert not np.array_equal(outs[(0, 1, 2)], outs[(1, 0, 2)])
    assert not np.array_equal(outs[(0, 1, 2)], outs[(2, 1, 0)])


def test_contrast_uses_pil_rounded_mean():
    # ImageEnhance.Contrast blends with int(mean(L) + 0.5): direct PIL is the reference.
    img = _smooth_image(48, 40, seed=8)
    p = pt.TrainParams(crop=(0, 0, 48, 40), flip=False, order=(1, 0, 2),
                       factors=(1.0, 0.7, 1.0))
    want = np.asarray(ImageEnhance.Contrast(img.resize((32, 32), Image.BILINEAR)).enhance(0.7))
    np.testing.assert_array_equal(pt.train_transform(img, p, 32), want)


# --------------------------------------------------------------------------- eval pixels


@pytest.mark.parametrize("height,width,new", [
    (300, 500, (256, 426)),     # int(256 * 500 / 300) = int(426.67) = 426 (truncated)
    (500, 300, (426, 256)),
    (256, 256, (256, 256)),
    (375, 500, (256, 341)),     # int(341.33)
    (257, 1000, (256, 996)),    # int(996.11)
])
def test_resize_shorter_sizes(height, width, new):
    out = pt.resize_shorter(_image(height, width), 256)
    assert (out.height, out.width) == new


def test_resize_shorter_equals_pil():
    img = _image(300, 500, seed=6)
    np.testing.assert_array_equal(np.asarray(pt.resize_shorter(img, 256)),
                                  np.asarray(img.resize((426, 256), Image.BILINEAR)))


@pytest.mark.parametrize("side,offset", [(224, 0), (225, 0), (226, 1), (227, 2), (229, 2),
                                         (231, 4)])
def test_center_crop_offsets(side, offset):
    # torchvision: int(round((side - 224) / 2.0)), half to even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2.
    img = _image(side, side + 2, seed=side)
    arr = np.asarray(img)
    out = np.asarray(pt.center_crop(img, 224))
    left = int(round((side + 2 - 224) / 2.0))
    np.testing.assert_array_equal(out, arr[offset:offset + 224, left:left + 224])


def test_eval_transform_equals_pil_chain():
    img = _image(300, 500, seed=7)
    out = pt.eval_transform(img)
    _check_uint8(out, 224)
    # 300 x 500 -> 256 x 426; top = round(16.0) = 16, left = round(101.0) = 101.
    want = img.resize((426, 256), Image.BILINEAR).crop((101, 16, 101 + 224, 16 + 224))
    np.testing.assert_array_equal(out, np.asarray(want))


def test_eval_transform_small_size():
    # Already 73 x 73: no resampling; offsets round(4.5) = 4 (half to even).
    img = _image(73, 73, seed=9)
    out = pt.eval_transform(img, size=64, resize=73)
    _check_uint8(out, 64)
    np.testing.assert_array_equal(out, np.asarray(img)[4:68, 4:68])
    # 100 x 150 -> 73 x int(109.5) = 109; top = round(4.5) = 4, left = round(22.5) = 22.
    img = _image(100, 150, seed=10)
    want = img.resize((109, 73), Image.BILINEAR).crop((22, 4, 22 + 64, 4 + 64))
    np.testing.assert_array_equal(pt.eval_transform(img, size=64, resize=73), np.asarray(want))


def test_eval_transform_extreme_aspect():
    img = _image(10, 1000, seed=12)
    out = pt.eval_transform(img, size=64, resize=73)
    _check_uint8(out, 64)
    # 10 x 1000 -> 73 x 7300; top = round(4.5) = 4, left = round(3618.0) = 3618.
    want = img.resize((7300, 73), Image.BILINEAR).crop((3618, 4, 3618 + 64, 4 + 64))
    np.testing.assert_array_equal(out, np.asarray(want))


# --------------------------------------------------------------------------- decode


def _encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_decode_jpeg_round_trip():
    img = _smooth_image(40, 56, seed=13, noise=0.0)
    data = _encode(img, "JPEG", quality=95)
    out = pt.decode(data)
    assert out.mode == "RGB" and out.size == (56, 40)
    np.testing.assert_array_equal(np.asarray(out),
                                  np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    # A lossy round trip, but close to the source.
    diff = np.abs(np.asarray(out, np.int32) - np.asarray(img, np.int32))
    assert diff.mean() < 4.0
    assert pt.eval_transform(out, size=32, resize=37).shape == (32, 32, 3)


def test_decode_converts_to_rgb():
    grey = _image(20, 30, seed=14, mode="L")
    out = pt.decode(_encode(grey, "PNG"))
    assert out.mode == "RGB"
    arr = np.asarray(out)
    for c in range(3):
        np.testing.assert_array_equal(arr[..., c], np.asarray(grey))
    rgba = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 9, 4), dtype=np.uint8))
    out = pt.decode(bytearray(_encode(rgba, "PNG")))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(rgba)[..., :3])


def test_decode_errors():
    with pytest.raises(UnidentifiedImageError):
        pt.decode(b"not an image at all")
    with pytest.raises(ValueError, match="empty"):
        pt.decode(b"")
    with pytest.raises(TypeError, match="bytes"):
        pt.decode("a path.jpg")


# --------------------------------------------------------------------------- validation


def test_errors_name_the_bad_value():
    img = _image(50, 60)
    ok = pt.TrainParams(crop=(0, 0, 50, 60), flip=False)
    cases = [
        (lambda: pt.train_transform(img, ok, size=0), r"size must be an integer >= 1, got 0"),
        (lambda: pt.eval_transform(img, size=-3), r"size must be an integer >= 1, got -3"),
        (lambda: pt.eval_transform(img, size=64, resize=60), r"resize must be >= size \(64\), got 60"),
        (lambda: pt.train_transform(img, pt.TrainParams(crop=(1, 0, 50, 60), flip=False)),
         r"\(1, 0, 50, 60\).*outside the 50x60"),
        (lambda: pt.train_transform(img, pt.TrainParams(crop=(0, 10, 5, 51), flip=True)),
         r"\(0, 10, 5, 51\).*outside"),
        (lambda: pt.TrainParams(crop=(-1, 0, 5, 5), flip=False), r"\(-1, 0, 5, 5\)"),
        (lambda: pt.TrainParams(crop=(0, 0, 0, 5), flip=False), r"\(0, 0, 0, 5\)"),
        (lambda: pt.TrainParams(crop=(0, 0, 5), flip=False), r"crop must be 4 integers"),
        (lambda: pt.TrainParams(crop=(0, 0, 5, 5), flip=False, order=(0, 1, 1),
                                factors=(1.0, 1.0, 1.0)), r"permutation.*\(0, 1, 1\)"),
        (lambda: pt.TrainParams(crop=(0, 0, 5, 5), flip=False, order=(0, 1, 2)),
         r"both be set or both be None"),
        (lambda: pt.TrainParams(crop=(0, 0, 5, 5), flip=False, order=(0, 1, 2),
                                factors=(1.0, -0.5, 1.0)), r"-0\.5"),
        (lambda: pt.TrainParams(crop=(0, 0, 5, 5), flip="yes"), r"flip must be a bool, got 'yes'"),
        (lambda: pt.random_resized_crop_params(np.random.default_rng(0), 0, 10),
         r"height must be an integer >= 1, got 0"),
        (lambda: pt.random_resized_crop_params(np.random.default_rng(0), 10, 2.5),
         r"width must be an integer >= 1, got 2.5"),
        (lambda: pt.random_resized_crop_params(np.random.default_rng(0), 10, 10, scale=(1.0, 0.5)),
         r"scale .*\(1.0, 0.5\)"),
        (lambda: pt.random_resized_crop_params(np.random.default_rng(0), 10, 10, ratio=(0.0, 1.0)),
         r"ratio .*\(0.0, 1.0\)"),
        (lambda: pt.color_jitter_params(np.random.default_rng(0), -0.1), r"strength .*-0.1"),
        (lambda: pt.eval_transform(img.convert("L")), r"mode 'L'"),
        (lambda: pt.center_crop(_image(30, 40), 35), r"35 exceeds the 30x40"),
    ]
    for fn, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            fn()
    with pytest.raises(TypeError, match="PIL"):
        pt.eval_transform(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(TypeError, match="TrainParams"):
        pt.train_transform(img, (0, 0, 50, 60))


def test_train_params_normalises_numpy_values():
    p = pt.TrainParams(crop=tuple(np.array([1, 2, 3, 4])), flip=np.bool_(True),
                       order=tuple(np.array([2, 0, 1])), factors=tuple(np.array([0.7, 1.1, 1.3])))
    assert p.crop == (1, 2, 3, 4) and all(type(v) is int for v in p.crop)
    assert p.flip is True and p.order == (2, 0, 1) and all(type(v) is int for v in p.order)
    assert p.factors == (0.7, 1.1, 1.3) and all(type(v) is float for v in p.factors)


# --------------------------------------------------------------------------- workers


def test_everything_pickles():
    p = pt.sample_train_params(np.random.default_rng(0), 60, 80)
    assert pickle.loads(pickle.dumps(p)) == p
    img = _image(60, 80, seed=15)
    for fn in [pt.train_transform, pt.eval_transform, pt.decode, pt.sample_train_params,
               pt.random_resized_crop_params, pt.color_jitter_params]:
        assert pickle.loads(pickle.dumps(fn)) is fn
    train = pickle.loads(pickle.dumps(functools.partial(pt.train_transform, size=32)))
    np.testing.assert_array_equal(train(img, p), pt.train_transform(img, p, 32))


def test_imports_only_numpy_and_pil():
    src = (ROOT / "ride_jax" / "data" / "pil_transforms.py").read_text()
    tops = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            tops |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            tops.add(node.module.split(".")[0])
    assert tops <= {"__future__", "dataclasses", "io", "math", "typing", "numpy", "PIL"}, tops
    code = ("import sys; import ride_jax.data.pil_transforms; "
            "print(sorted(m for m in ('torch', 'torchvision', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]", out


# torchvision itself, where it is installed and imports (tests/torchvision_parity.py)
def _torchvision_works() -> bool:
    try:
        import torch  # noqa: F401
        from torchvision.transforms import functional  # noqa: F401
    except (ImportError, RuntimeError):   # RuntimeError: a CUDA torchvision beside a CPU torch
        return False
    return True


if _torchvision_works():
    from torchvision_parity import *  # noqa: E402,F401,F403
