"""On-device augmentation: exact crops, flips and rotations on constructed images."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ride_jax.data.augment import (AUGMENTATIONS, Augment, augment_gather, augment_images,
                                   get_augment, normalize, pil_rotate_reference,
                                   pil_rotation_fixed, pil_rotation_fixed_array,
                                   sample_params, sample_params_host)
from ride_jax.data.base import CIFAR_MEAN, CIFAR_STD

RNG = np.random.default_rng(0)
IMG = RNG.integers(1, 256, size=(3, 32, 32, 3), dtype=np.uint8)  # no zero pixel: 0 = fill


def _apply(images, offset, flip, angle, aug=Augment(4, True, 15.0)):
    b, h, w, _ = images.shape
    angles = np.broadcast_to(np.asarray(angle, np.float64), (b,))
    params = {"offset": jnp.asarray(offset, jnp.int32).reshape(b, 2),
              "flip": jnp.asarray(flip, bool).reshape(b),
              "affine": jnp.asarray([pil_rotation_fixed(a, w, h) for a in angles], jnp.int32)}
    return np.asarray(augment_gather(jnp.asarray(images), jnp.arange(b), params, aug))


def _torch_style_crop(img, i, j, pad=4):
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
    return padded[i:i + img.shape[0], j:j + img.shape[1]]


@pytest.mark.parametrize("i,j", [(0, 0), (4, 4), (8, 8), (0, 8), (3, 6), (8, 1)])
def test_crop_is_the_padded_window(i, j):
    out = _apply(IMG[:1], [i, j], False, 0.0)[0]
    np.testing.assert_array_equal(out, _torch_style_crop(IMG[0], i, j))


def test_flip_is_exact():
    out = _apply(IMG[:1], [4, 4], True, 0.0)[0]
    np.testing.assert_array_equal(out, IMG[0][:, ::-1])


def test_crop_then_flip_order():
    out = _apply(IMG[:1], [2, 7], True, 0.0)[0]
    np.testing.assert_array_equal(out, _torch_style_crop(IMG[0], 2, 7)[:, ::-1])


@pytest.mark.parametrize("angle", [90.0, -90.0, 180.0])
def test_right_angle_rotations_are_exact(angle):
    out = _apply(IMG[:1], [4, 4], False, angle)[0]
    # PIL/torchvision rotate counter-clockwise for a positive angle.
    k = {90.0: 1, -90.0: -1, 180.0: 2}[angle]
    np.testing.assert_array_equal(out, np.rot90(IMG[0], k=k, axes=(0, 1)))


def test_rotation_matches_pil_on_random_angles():
    angles = np.random.default_rng(1).uniform(-15, 15, size=200)
    imgs = np.repeat(IMG[:1], len(angles), axis=0)
    out = _apply(imgs, np.full((len(angles), 2), 4), np.zeros(len(angles)), angles)
    ref = np.stack([pil_rotate_reference(IMG[0], float(a)) for a in angles])
    np.testing.assert_array_equal(out, ref)
    # The fill is zero and the rotation really moves pixels.
    assert (out == 0).all(-1).any() and (out != IMG[:1]).any()


def test_full_chain_matches_pil_crop_flip_rotate():
    i, j, angle = 1, 6, 11.3
    out = _apply(IMG[1:2], [i, j], True, angle)[0]
    ref = pil_rotate_reference(np.ascontiguousarray(_torch_style_crop(IMG[1], i, j)[:, ::-1]),
                               angle)
    np.testing.assert_array_equal(out, ref)


def test_grey_images_and_non_square():
    img = RNG.integers(1, 256, size=(1, 28, 20, 1), dtype=np.uint8)
    out = _apply(img, [0, 8], True, 0.0)[0]
    padded = np.pad(img[0], ((4, 4), (4, 4), (0, 0)))
    np.testing.assert_array_equal(out, padded[0:28, 8:28][:, ::-1])
    out = _apply(img, [4, 4], False, 7.0)[0]
    np.testing.assert_array_equal(out, pil_rotate_reference(img[0], 7.0))


@pytest.mark.parametrize("where", ["host", "device"])
def test_sampled_parameters_cover_their_ranges(where):
    def draw(n, aug):
        if where == "host":
            return sample_params_host(np.random.default_rng(0), n, aug, 32, 32)
        return sample_params(jax.random.key(0), n, aug, 32, 32)
    p = draw(4096, AUGMENTATIONS["ride"])
    off, flip, ang = (np.asarray(p[k]) for k in ("offset", "flip", "angle"))
    assert off.min() == 0 and off.max() == 8
    assert sorted(np.unique(off).tolist()) == list(range(9))
    assert 0.45 < flip.mean() < 0.55
    assert -15 <= ang.min() < -14 and 14 < ang.max() <= 15
    p = draw(64, AUGMENTATIONS["ldam"])
    assert not np.asarray(p["angle"]).any()
    assert (np.asarray(p["affine"]) == pil_rotation_fixed(0.0, 32, 32)).all()


def test_device_sampler_rotation_is_pil_up_to_rare_edge_pixels():
    """float32 coefficients: a pixel whose source sits on a pixel edge may move."""
    aug = AUGMENTATIONS["ride"]
    p = sample_params(jax.random.key(7), 256, aug, 32, 32)
    p = {"offset": jnp.full((256, 2), 4), "flip": jnp.zeros(256, bool), "affine": p["affine"],
         "angle": p["angle"]}
    imgs = jnp.asarray(np.repeat(IMG[:1], 256, axis=0))
    out = np.asarray(augment_gather(imgs, jnp.arange(256), p, aug))
    ref = np.stack([pil_rotate_reference(IMG[0], float(a)) for a in np.asarray(p["angle"])])
    assert (out != ref).any(-1).mean() < 1e-3


def test_augmented_pixels_come_from_the_image_or_fill():
    out = np.asarray(augment_images(jnp.asarray(IMG), jax.random.key(3), "ride"))
    for k in range(len(IMG)):
        src = {tuple(p) for p in IMG[k].reshape(-1, 3)} | {(0, 0, 0)}
        assert {tuple(p) for p in out[k].reshape(-1, 3)} <= src


def test_none_is_identity():
    out = np.asarray(augment_images(jnp.asarray(IMG), jax.random.key(0), "none"))
    np.testing.assert_array_equal(out, IMG)


def test_normalize_constants_and_statistics():
    x = np.full((1, 2, 2, 3), 255, np.uint8)
    y = np.asarray(normalize(jnp.asarray(x), CIFAR_MEAN, CIFAR_STD))
    np.testing.assert_allclose(y[0, 0, 0], (1 - np.array(CIFAR_MEAN)) / np.array(CIFAR_STD),
                               rtol=1e-6)
    # Pixels with mean m*255 and std s*255 normalise to mean 0, std 1.
    mean, std = np.array([0.3, 0.5, 0.7]), np.array([0.1, 0.15, 0.2])
    pix = np.clip(np.rint(RNG.normal(mean * 255, std * 255, size=(20000, 3))), 0, 255)
    y = np.asarray(normalize(jnp.asarray(pix.astype(np.uint8)), pix.mean(0) / 255,
                             pix.std(0) / 255))
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(y.std(0), 1, atol=1e-4)
    assert normalize(jnp.asarray(x), CIFAR_MEAN, CIFAR_STD, jnp.bfloat16).dtype == jnp.bfloat16


def test_bad_recipes():
    with pytest.raises(ValueError, match="unknown augmentation 'rotate'.*valid choices"):
        get_augment("rotate")
    with pytest.raises(ValueError, match="padding"):
        Augment(padding=-1)
    with pytest.raises(ValueError, match="rotation"):
        Augment(rotation=400)


def test_vectorised_pil_coefficients_equal_the_scalar_ones():
    angles = np.concatenate([np.random.default_rng(2).uniform(-180, 180, 20000),
                             [0.0, -0.0, 90.0, -90.0, 180.0, 15.0, -15.0, 1e-9]])
    for w, h in [(32, 32), (28, 28), (20, 28)]:
        vec = pil_rotation_fixed_array(angles, w, h)
        ref = np.asarray([pil_rotation_fixed(a, w, h) for a in angles])
        np.testing.assert_array_equal(vec, ref)
    assert pil_rotation_fixed_array(np.zeros((3, 4)), 32, 32).shape == (3, 4, 6)
