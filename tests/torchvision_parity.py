"""Parity of ride_jax.data.pil_transforms with torchvision itself, given the same random
parameters. Not a test module of its own: tests/test_pil_transforms.py imports these
tests where torchvision imports and runs (torchvision has no CPU wheel for this
machine's torch build, so CI runs the PIL-operation tests of that file instead; see
its docstring)."""

import math

import numpy as np
import pytest
from PIL import Image

from ride_jax.data import pil_transforms as pt
# Defined before test_pil_transforms imports this module (at its end).
from test_pil_transforms import _image, _smooth_image


@pytest.fixture(scope="module")
def tv():
    """torchvision's transforms and functional, or a skip naming why they are missing."""
    try:
        import torch  # noqa: F401
        from torchvision import transforms as T
        from torchvision.transforms import functional as F
    except ImportError as e:
        pytest.skip(f"torchvision not importable: {e}")
    except RuntimeError as e:   # e.g. a CUDA torchvision wheel beside a CPU torch
        pytest.skip(f"torchvision fails to import: {e}")
    return T, F


def test_torchvision_train_chain(tv):
    _, F = tv
    img = _smooth_image(150, 210, seed=16)
    rng = np.random.default_rng(17)
    adjust = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation]
    for size in (224, 64):
        for _ in range(6):
            p = pt.sample_train_params(rng, 150, 210)
            ref = F.resized_crop(img, *p.crop, [size, size])
            if p.flip:
                ref = F.hflip(ref)
            for op in p.order:
                ref = adjust[op](ref, p.factors[op])
            np.testing.assert_array_equal(pt.train_transform(img, p, size), np.asarray(ref))


@pytest.mark.parametrize("height,width", [(300, 500), (500, 300), (375, 500), (227, 229),
                                          (10, 1000)])
def test_torchvision_eval_chain(tv, height, width):
    T, F = tv
    img = _image(height, width, seed=height + width)
    for size, resize in [(224, 256), (64, 73)]:
        ref = T.Compose([T.Resize(resize), T.CenterCrop(size)])(img)
        np.testing.assert_array_equal(pt.eval_transform(img, size, resize), np.asarray(ref))
        ref = F.center_crop(F.resize(img, resize), size)
        np.testing.assert_array_equal(pt.eval_transform(img, size, resize), np.asarray(ref))


class _Value:
    def __init__(self, v):
        self.v = v

    def item(self):
        return self.v


class _TorchShim:
    """What get_params calls on ``torch``, drawing from a NumPy Generator in its order."""

    def __init__(self, rng):
        self.rng = rng

    def tensor(self, x):
        return np.asarray(x, np.float64)

    def log(self, x):
        return np.log(x)

    def exp(self, x):
        return _Value(math.exp(x.v))

    def empty(self, n):
        shim = self

        class _Empty:
            def uniform_(self, lo, hi):
                return _Value(float(shim.rng.uniform(float(lo), float(hi))))
        return _Empty()

    def randint(self, lo, hi, size):
        return _Value(int(self.rng.integers(lo, hi)))


@pytest.mark.parametrize("height,width", [(375, 500), (224, 224), (30, 900), (3, 2)])
def test_torchvision_get_params_code(tv, monkeypatch, height, width):
    # torchvision's own get_params, its torch calls fed from the same NumPy stream.
    T, _ = tv
    import torchvision.transforms.transforms as tvt
    img = Image.new("RGB", (width, height))
    for seed in range(40):
        monkeypatch.setattr(tvt, "torch", _TorchShim(np.random.default_rng(seed)))
        want = T.RandomResizedCrop.get_params(img, [0.08, 1.0], [3.0 / 4.0, 4.0 / 3.0])
        monkeypatch.undo()
        assert pt.random_resized_crop_params(np.random.default_rng(seed), height, width) == want


def test_torchvision_fallback_and_color_jitter(tv):
    import torch
    T, _ = tv
    for height, width in [(10, 1000), (1000, 10)]:
        want = T.RandomResizedCrop.get_params(Image.new("RGB", (width, height)),
                                              [0.08, 1.0], [3.0 / 4.0, 4.0 / 3.0])
        assert pt.random_resized_crop_params(np.random.default_rng(0), height, width) == want
    # ColorJitter.forward with torch's draws, replayed through apply_color_ops.
    cj = T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0)
    img = _smooth_image(40, 50, seed=18)
    torch.manual_seed(0)
    for _ in range(20):
        state = torch.get_rng_state()
        fn_idx, b, c, s, h = cj.get_params(cj.brightness, cj.contrast, cj.saturation, cj.hue)
        torch.set_rng_state(state)
        ref = np.asarray(cj(img))
        assert h is None and all(0.6 <= f <= 1.4 for f in (b, c, s))
        order = [int(i) for i in fn_idx if int(i) < 3]
        np.testing.assert_array_equal(np.asarray(pt.apply_color_ops(img, order, (b, c, s))), ref)
