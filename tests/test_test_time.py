"""SADE's test-time self-supervised aggregation (``ride_jax.test_time``), its random
views (``ride_jax.data.views``) and the ``shift`` analysis that runs it.

Expected values are NumPy restatements of sade-spec §4 (official
``test_training_cifar.py``), hand computations of torch's SGD, or PIL's own image
operations: never the code under test.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ride_jax import test_time
from ride_jax.data import views as V

from helpers import ROOT

ENV = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}


# ---------------------------------------------------------------- the objective
def np_softmax(z, axis=-1):
    z = z - z.max(axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis, keepdims=True)


def np_loss(a, v1, v2, mask=None, entropy=0.0):
    """sade-spec §4.2 in float64: w = softmax(a); z = sum_k w_k v_k; p = softmax(z);
    -mean cos(p', p'') (torch CosineSimilarity, eps 1e-6) [- entropy * (mean H' + mean H'')]."""
    w = np_softmax(np.asarray(a, np.float64))
    p1 = np_softmax(np.tensordot(w, v1, 1))
    p2 = np_softmax(np.tensordot(w, v2, 1))
    cos = (p1 * p2).sum(-1) / (np.maximum(np.linalg.norm(p1, axis=-1), 1e-6)
                               * np.maximum(np.linalg.norm(p2, axis=-1), 1e-6))
    rows = np.ones(len(cos), bool) if mask is None else np.asarray(mask)
    loss = -cos[rows].mean()
    if entropy:
        h = lambda p: (-p * np.log(p))[rows].mean()          # mean over B x C
        loss -= entropy * (h(p1) + h(p2))
    return loss


def np_grad(a, *args, **kw):
    """Central differences of :func:`np_loss` (float64)."""
    a = np.asarray(a, np.float64)
    g = np.zeros_like(a)
    for k in range(len(a)):
        e = np.zeros_like(a)
        e[k] = 1e-6
        g[k] = (np_loss(a + e, *args, **kw) - np_loss(a - e, *args, **kw)) / 2e-6
    return g


@pytest.fixture(scope="module")
def logits():
    rng = np.random.RandomState(0)
    return rng.randn(3, 6, 5) * 3, rng.randn(3, 6, 5) * 3


def test_aggregate_is_the_softmax_weighted_sum_of_expert_logits(logits):
    v1, _ = logits
    a = np.array([0.2, -0.4, 1.0])
    w = np.exp(a) / np.exp(a).sum()
    want = w[0] * v1[0] + w[1] * v1[1] + w[2] * v1[2]
    np.testing.assert_allclose(test_time.aggregate(jnp.asarray(a, jnp.float32),
                                                   jnp.asarray(v1, jnp.float32)),
                               want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("entropy", [0.0, 0.01])
@pytest.mark.parametrize("masked", [False, True])
def test_stability_loss_matches_numpy(logits, entropy, masked):
    v1, v2 = logits
    a = np.array([0.5, 0.1, -0.3])
    mask = np.array([1, 1, 1, 0, 1, 0], bool) if masked else None
    got = test_time.stability_loss(jnp.asarray(a, jnp.float32), jnp.asarray(v1, jnp.float32),
                                   jnp.asarray(v2, jnp.float32),
                                   None if mask is None else jnp.asarray(mask), entropy)
    assert float(got) == pytest.approx(np_loss(a, v1, v2, mask, entropy), abs=1e-5)


def test_identical_views_give_loss_minus_one(logits):
    v1, _ = logits
    got = test_time.stability_loss(jnp.zeros(3), jnp.asarray(v1, jnp.float32),
                                   jnp.asarray(v1, jnp.float32))
    assert float(got) == pytest.approx(-1.0, abs=1e-6)


@pytest.mark.parametrize("nesterov", [True, False])
def test_one_sgd_step_matches_torch_sgd_by_hand(logits, nesterov):
    """torch SGD (momentum 0.9, coupled weight decay), first step: the momentum buffer is
    d = g + wd * a, the update is d + 0.9 * d with Nesterov, d without."""
    v1, v2 = logits
    s = test_time.Settings(lr=0.1, weight_decay=5e-4, nesterov=nesterov)
    opt, step = test_time.make_step(s)
    a0 = np.full(3, 1 / 3)
    mask = np.array([1, 1, 1, 1, 0, 1], bool)
    raw = jnp.asarray(a0, jnp.float32)
    raw1, state, loss = step(raw, opt.init(raw), jnp.asarray(v1, jnp.float32),
                             jnp.asarray(v2, jnp.float32), jnp.asarray(mask))
    d = np_grad(a0, v1, v2, mask) + 5e-4 * a0
    want = a0 - 0.1 * ((1 + 0.9) * d if nesterov else d)
    np.testing.assert_allclose(raw1, want, rtol=1e-4, atol=1e-6)
    assert float(loss) == pytest.approx(np_loss(a0, v1, v2, mask), abs=1e-5)
    # the second step uses the buffer: buf = 0.9 * d + d2
    raw2, _, _ = step(raw1, state, jnp.asarray(v1, jnp.float32), jnp.asarray(v2, jnp.float32),
                      jnp.asarray(mask))
    a1 = np.asarray(raw1, np.float64)
    d2 = np_grad(a1, v1, v2, mask) + 5e-4 * a1
    buf = 0.9 * d + d2
    want2 = a1 - 0.1 * (d2 + 0.9 * buf if nesterov else buf)
    np.testing.assert_allclose(raw2, want2, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- the loop
def _fake_views(num_experts=3, classes=4, favour=0, noise=1.0, calls=None):
    """Expert logits of two views: expert ``favour`` is identical in both views (stable),
    the others are noisy, so the objective pushes weight towards ``favour``."""
    def view_logits(key, positions):
        if calls is not None:
            calls.append(np.asarray(positions).copy())
        k1, k2 = jax.random.split(key)
        b = len(positions)
        base = jnp.asarray(np.eye(classes)[np.asarray(positions) % classes] * 4.0)
        n1 = noise * jax.random.normal(k1, (num_experts, b, classes))
        n2 = noise * jax.random.normal(k2, (num_experts, b, classes))
        keep = jnp.arange(num_experts)[:, None, None] == favour
        return (jnp.where(keep, base, base + 3 * n1), jnp.where(keep, base, base + 3 * n2))
    return view_logits


def test_fit_reads_every_image_once_per_epoch_in_batches_of_128():
    calls = []
    s = test_time.Settings(lr=1e-6, weight_decay=0.0, epochs=2)   # weights stay ~uniform
    fit = test_time.fit_aggregation(_fake_views(calls=calls), 300, 3, s, seed=0)
    assert fit["epochs"] == 2 and not fit["stopped_early"]
    assert len(calls) == 2 * math.ceil(300 / 128)
    assert all(len(c) == 128 for c in calls)                       # padded to compile once
    for epoch in range(2):
        got = np.concatenate([calls[3 * epoch][:128], calls[3 * epoch + 1][:128],
                              calls[3 * epoch + 2][:300 - 256]])
        np.testing.assert_array_equal(np.sort(got), np.arange(300))
    assert not np.array_equal(calls[0], calls[3])                  # reshuffled per epoch
    np.testing.assert_allclose(fit["weights"], [1 / 3] * 3, atol=1e-4)
    assert len(fit["losses"]) == 2


def test_fit_moves_weight_to_the_stable_expert_and_stops_under_0_05():
    s = test_time.Settings(lr=5.0, weight_decay=0.0, epochs=50)
    fit = test_time.fit_aggregation(_fake_views(favour=2), 256, 3, s, seed=1)
    w = np.asarray(fit["weights"])
    assert w.argmax() == 2 and w.sum() == pytest.approx(1.0)
    assert fit["stopped_early"] and fit["epochs"] < 50
    assert np.round(w, 2).min() < 0.05
    np.testing.assert_allclose(w, np_softmax(np.asarray(fit["raw"])), rtol=1e-6)


def test_fit_starts_from_uniform_every_call_and_is_seeded():
    s = test_time.Settings(lr=0.5, weight_decay=5e-4, epochs=1)
    a = test_time.fit_aggregation(_fake_views(favour=1), 100, 3, s, seed=3)
    b = test_time.fit_aggregation(_fake_views(favour=1), 100, 3, s, seed=3)
    c = test_time.fit_aggregation(_fake_views(favour=1), 100, 3, s, seed=4)
    assert a == b and a["weights"] != c["weights"]


def test_fit_refuses_one_expert_and_bad_settings():
    with pytest.raises(ValueError, match="several experts"):
        test_time.fit_aggregation(_fake_views(num_experts=1), 10, 1,
                                  test_time.Settings(lr=0.1, weight_decay=0.0))
    with pytest.raises(ValueError, match="lr > 0"):
        test_time.Settings(lr=0.0, weight_decay=0.0)


def test_settings_come_from_the_training_recipe():
    from configs import cifar100_lt, inat2018
    c = cifar100_lt.get_config("loss=sade")
    s = test_time.settings_from_config(c)
    assert (s.lr, s.weight_decay, s.momentum, s.nesterov) == (0.1, 5e-4, 0.9, True)
    assert (s.batch_size, s.epochs, s.min_weight, s.entropy_weight) == (128, 5, 0.05, 0.0)
    i = test_time.settings_from_config(inat2018.get_config("loss=sade"))
    assert (i.lr, i.weight_decay, i.entropy_weight) == (0.2, 2e-4, 0.01)


# ---------------------------------------------------------------- the views
def _images(n=6, channels=3, seed=0):
    from scipy.ndimage import gaussian_filter
    rng = np.random.RandomState(seed)
    raw = rng.rand(n, 32, 32, channels) * 255
    return np.stack([np.clip(gaussian_filter(i, (1.5, 1.5, 0)), 0, 255)
                     for i in raw]).astype(np.uint8)


def _diff(ours, pil):
    d = np.abs(np.round(np.asarray(ours, np.float64) * 255) - pil.astype(np.float64))
    return d.max(), d.mean()


@pytest.mark.parametrize("factor", [0.6, 1.0, 1.4])
def test_brightness_contrast_saturation_match_pil_within_one_level(factor):
    from PIL import Image, ImageEnhance
    imgs = _images()
    x = jnp.asarray(imgs, jnp.float32) / 255
    for ours, enhancer in ((V.adjust_brightness, ImageEnhance.Brightness),
                           (V.adjust_contrast, ImageEnhance.Contrast),
                           (V.adjust_saturation, ImageEnhance.Color)):
        got = jax.vmap(lambda y: ours(y, factor))(x)
        pil = np.stack([np.asarray(enhancer(Image.fromarray(i)).enhance(factor))
                        for i in imgs])
        assert _diff(got, pil)[0] <= 1, ours.__name__


@pytest.mark.parametrize("hue", [-0.1, 0.03, 0.1])
def test_hue_matches_torchvisions_pil_path_within_its_uint8_hsv_rounding(hue):
    """torchvision's ``adjust_hue`` on a PIL image shifts PIL's uint8 HSV hue channel by
    ``uint8(hue * 255)``; ours works in float HSV (torchvision's tensor path)."""
    from PIL import Image
    imgs = _images()
    got = jax.vmap(lambda y: V.adjust_hue(y, hue))(jnp.asarray(imgs, jnp.float32) / 255)
    pil = []
    for i in imgs:
        hsv = np.array(Image.fromarray(i).convert("HSV"))
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + int(hue * 255)) % 256
        pil.append(np.asarray(Image.fromarray(hsv, "HSV").convert("RGB")))
    worst, mean = _diff(got, np.stack(pil))
    assert worst <= 4 and mean <= 0.5
    same = jax.vmap(lambda y: V.adjust_hue(y, 0.0))(jnp.asarray(imgs, jnp.float32) / 255)
    assert _diff(same, imgs)[0] <= 1                                # HSV round trip


def test_grayscale_matches_pil_and_one_channel_colour_steps_do_nothing():
    from PIL import Image
    imgs = _images()
    got = jax.vmap(V.grayscale)(jnp.asarray(imgs, jnp.float32) / 255)[..., 0]
    pil = np.stack([np.asarray(Image.fromarray(i).convert("L")) for i in imgs])
    assert _diff(got, pil)[0] <= 1
    grey = jnp.asarray(_images(channels=1), jnp.float32) / 255
    for fn in (V.adjust_saturation, V.adjust_hue):
        np.testing.assert_array_equal(jax.vmap(lambda y: fn(y, 0.3))(grey), grey)


@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0, 2.0])
def test_gaussian_blur_is_close_to_pils_box_approximation(sigma):
    from PIL import Image, ImageFilter
    imgs = _images()
    got = jax.vmap(lambda y: V.gaussian_blur(y, sigma))(jnp.asarray(imgs, jnp.float32) / 255)
    pil = np.stack([np.asarray(Image.fromarray(i).filter(ImageFilter.GaussianBlur(sigma)))
                    for i in imgs])
    worst, mean = _diff(got, pil)
    assert worst <= 10 and mean <= 1.0
    # a constant image stays constant (weights sum to 1, edges replicated)
    flat = jnp.full((8, 8, 3), 0.5)
    np.testing.assert_allclose(V.gaussian_blur(flat, sigma), flat, atol=1e-6)


def test_random_views_without_augmentation_is_the_normalised_image():
    imgs = _images(4)
    plain = V.ViewAugment(padding=0, flip=False, jitter_p=0, grayscale_p=0, blur_p=0)  # ints
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    got = V.random_views(jax.random.PRNGKey(0), jnp.asarray(imgs), jnp.array([2, 0]),
                         mean, std, plain)
    want = (imgs[[2, 0]].astype(np.float32) / 255 - np.float32(mean)) / np.float32(std)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_random_views_draw_independent_augmentations():
    imgs = _images(64)
    mean, std = (0.5,) * 3, (0.25,) * 3
    key = jax.random.PRNGKey(0)
    a = V.random_views(key, jnp.asarray(imgs), jnp.arange(64), mean, std)
    b = V.random_views(jax.random.PRNGKey(1), jnp.asarray(imgs), jnp.arange(64), mean, std)
    assert a.shape == (64, 32, 32, 3) and a.dtype == jnp.float32
    assert not np.allclose(a, b)
    # grey views (R = G = B) appear at about p = 0.2 (+ jitter never makes them)
    x = np.asarray(a) * 0.25 + 0.5
    grey = np.mean(np.all(np.abs(x[..., 0] - x[..., 1]) < 1e-5, axis=(1, 2)))
    assert 0.03 <= grey <= 0.45
    with pytest.raises(ValueError, match="blur_p"):
        V.ViewAugment(blur_p=1.5)


# ---------------------------------------------------------------- SADE smoke + shift
def _cli(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env=ENV)


@pytest.fixture(scope="module")
def sade_run(tmp_path_factory):
    """A SADE smoke run (3 experts on a ResNet-8 trunk, synthetic data) and ``shift --run``
    on it."""
    d = tmp_path_factory.mktemp("sade")
    r = _cli("-m", "ride_jax.main", "--config=configs/synthetic_lt.py:smoke,loss=sade",
             "--config.model.cifar_blocks=1", f"--workdir={d / 'run'}")
    assert r.returncode == 0, r.stderr[-3000:]
    s = _cli("-m", "ride_jax.analysis", "shift", "--run", str(d / "run"))
    assert s.returncode == 0, s.stderr[-3000:]
    return {"dir": d, "out": s.stdout, "err": s.stderr,
            "shift": json.loads((d / "run" / "analysis" / "shift.json").read_text())}


def test_sade_shift_runs_test_time_aggregation_per_distribution(sade_run):
    """Every distribution has learned weights (3, summing to 1, re-initialised per
    distribution: each fit ran at most 5 epochs from uniform) and the accuracies of
    argmax sum_k w_k v_k(clean image), recomputed here from the experts' clean logits."""
    from ride_jax.analysis.runs import predict_run
    from test_shift import NAMES, by_hand, official_subset

    run = sade_run["dir"] / "run"
    r = sade_run["shift"]
    assert r["tta"]["lr"] == 0.1 and r["tta"]["batch_size"] == 128 and r["tta"]["epochs"] == 5
    p = predict_run(run)
    for name in NAMES:
        e = r["distributions"][name]
        t = e["tta"]
        w = np.asarray(t["weights"])
        assert w.shape == (3,) and w.sum() == pytest.approx(1.0) and np.all(w > 0)
        assert 1 <= t["epochs"] <= 5 and len(t["losses"]) == t["epochs"]
        assert t["stopped_early"] == bool(np.round(w, 2).min() < 0.05)
        idx = official_subset(p["labels"], name)
        z = np.einsum("e,enc->nc", w, p["expert_logits"])
        want = by_hand(z, p["labels"], p["train_counts"], idx, correct=False)
        for k, v in want.items():
            assert t[k] == (None if v is None else pytest.approx(v, abs=1e-9)), (name, k)
        # the plain prediction stays SADE's uniform mean of the experts
        plain = by_hand(p["expert_logits"].mean(0), p["labels"], p["train_counts"], idx,
                        correct=False)
        assert e["accuracy"] == pytest.approx(plain["accuracy"], abs=1e-9)
    # distributions differ, so the learned weights differ (re-learned per distribution)
    ws = {tuple(np.round(r["distributions"][n]["tta"]["weights"], 6)) for n in NAMES}
    assert len(ws) > 1
    assert "expert weights" in sade_run["out"] and "tta" in sade_run["out"]
    assert sade_run["err"].count("test-time aggregation on ") == 11       # progress
    png = run / "analysis" / "shift.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_tta_skips_it_and_tta_refuses_a_single_expert_run(sade_run, tmp_path):
    from ride_jax.analysis.shift import evaluate_shift, tta_settings
    run = sade_run["dir"] / "run"
    plain = evaluate_shift(run, out_dir=tmp_path / "plain", tta=False)
    assert plain["tta"] is None
    assert all("tta" not in e for e in plain["distributions"].values())
    assert plain["distributions"]["uniform"]["accuracy"] == \
        sade_run["shift"]["distributions"]["uniform"]["accuracy"]
    config = json.loads((run / "config.json").read_text())
    assert tta_settings(config, None).lr == 0.1                 # SADE: on by default
    config["loss"]["name"] = "ride"
    assert tta_settings(config, None) is None                   # RIDE: only when asked
    assert tta_settings(config, True).weight_decay == config["optim"]["weight_decay"]
    config["model"]["num_experts"] = 1
    with pytest.raises(ValueError, match="^--tta weighs the experts of a multi-expert run; "
                       "this run has model.num_experts=1$"):
        tta_settings(config, True)
