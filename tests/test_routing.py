"""RIDE-EA router, routed inference, tau-normalisation and routed compute accounting.

Reference: official RIDE ``model/ldam_drw_resnets/ea_resnet_cifar.py``: the router wiring
(``ResNet_s.pred_expert_help``), and test-time routing (``ResNet_s.forward`` without a
target), rewritten here the way the official code does it: boolean
indexing of the still-active examples, on the host.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ride_jax import flops, metrics
from ride_jax.models import (Router, bucket_sizes, create_model, make_router, routed_apply,
                             tau_normalize)


@pytest.fixture
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


def test_router_parameter_count_is_the_official_one():
    """1,615 router parameters for CIFAR-100 with 3 experts (official; docs/parity.md)."""
    model = create_model(num_classes=100, num_experts=3)
    router = make_router(model, (32, 32, 3), top_k=30)
    assert router.feature_dim == 48 and router.num_routers == 2
    params = router.init_params(jax.random.key(0))
    assert sum(x.size for x in jax.tree.leaves(params)) == 1615 == router.count_params()
    assert params["hidden"]["kernel"].shape == (2, 48, 16)      # per router
    assert params["out"]["kernel"].shape == (46, 1)              # shared: s + 16 -> 1
    # CIFAR init: kaiming-normal weights (std sqrt(2 / fan_in)), torch-default biases.
    w = np.asarray(params["hidden"]["kernel"])
    assert abs(w.std() - np.sqrt(2 / 48)) < 0.03
    assert np.abs(np.asarray(params["hidden"]["bias"])).max() <= 1 / np.sqrt(48)


def test_router_checks_its_arguments():
    with pytest.raises(ValueError, match="top_k"):
        Router(num_experts=3, feature_dim=48, num_classes=10, top_k=30)
    with pytest.raises(ValueError, match="num_experts >= 2"):
        Router(num_experts=1, feature_dim=48, num_classes=10, top_k=5)
    with pytest.raises(ValueError, match="cifar"):
        Router(num_experts=2, feature_dim=48, num_classes=10, top_k=5, init="xavier")


def _np_router_logit(params, i, f, z, top_k):
    p = jax.tree.map(np.asarray, params)
    g = f / np.sqrt((f * f).sum(-1, keepdims=True))
    h = np.maximum(g @ p["hidden"]["kernel"][i] + p["hidden"]["bias"][i], 0)
    top = -np.sort(-z, axis=-1)[:, :top_k]                  # values, descending
    v = np.concatenate([top, h], -1)
    return (v @ p["out"]["kernel"] + p["out"]["bias"])[:, 0]


def test_router_logit_matches_numpy_and_training_wiring(x64):
    rng = np.random.default_rng(0)
    router = Router(num_experts=3, feature_dim=6, num_classes=7, top_k=4)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                          router.init_params(jax.random.key(1)))
    z = rng.normal(size=(3, 5, 7)) * 10
    f = np.abs(rng.normal(size=(3, 5, 6)))
    for i in range(2):
        mean = z[: i + 1].sum(0) / (i + 1)
        np.testing.assert_allclose(router.logit(params, i, f[i], mean),
                                   _np_router_logit(params, i, f[i], mean, 4), rtol=1e-12)
    # all_logits: router i sees expert i's features and the mean of experts 0..i.
    got = router.all_logits(params, jnp.asarray(z), jnp.asarray(f))
    want = np.stack([_np_router_logit(params, i, f[i], z[: i + 1].sum(0) / (i + 1), 4)
                     for i in range(2)], -1)
    np.testing.assert_allclose(got, want, rtol=1e-12)


# ------------------------------------------------------------------ routed inference

def _routed_setup(num_experts=3, batch=24, seed=0):
    """A float64 RIDE network on 8x8 images and a router with mixed decisions."""
    model = create_model(num_classes=10, num_experts=num_experts)
    x = jax.random.normal(jax.random.key(seed + 1), (batch, 8, 8, 3), jnp.float64)
    v = model.init(jax.random.key(seed), x)
    # Non-trivial BN statistics, so inference mode matters.
    v["batch_stats"] = jax.tree.map(
        lambda a: a + 0.1 * jax.random.uniform(jax.random.key(7), a.shape), v["batch_stats"])
    router = make_router(model, (8, 8, 3), top_k=5)
    rp = router.init_params(jax.random.key(seed + 2))
    v = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), v)
    v["params"]["router"] = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), rp)
    # Centre the shared output bias on router 0's median logit: about half go on.
    out = model.apply(v, x)
    l0 = router.logit(v["params"]["router"], 0, out["features"][0], out["expert_logits"][0])
    r = v["params"]["router"]
    r["out"]["bias"] = rp["out"]["bias"] - float(jnp.median(l0)) + 1e-3
    # Then shift router 1 through one of its own hidden biases (the output layer is
    # shared) until about half of those that went on go on again.
    w_h = np.asarray(r["out"]["kernel"][router.top_k:, 0])
    on = np.asarray(l0 - jnp.median(l0) + 1e-3 > 0)
    mean01 = (out["expert_logits"][0] + out["expert_logits"][1]) / 2
    for _ in range(10):
        l1 = np.asarray(router.logit(r, 1, out["features"][1], mean01))[on]
        m = float(np.median(l1)) - 1e-3
        j = int(np.argmax(-np.sign(m) * w_h))
        r["hidden"]["bias"] = r["hidden"]["bias"].at[1, j].add(-m / w_h[j])
    return model, router, v, x


def _official_routed(model, router, v, x, force_all=False):
    """Official ``ResNet_s.forward`` without a target, as written there (boolean indexing, host loop)."""
    trunk = {c: t["trunk"] for c, t in v.items()}
    shared = np.asarray(model.trunk.apply(trunk, x, train=False))

    def part(i, h):
        logits, feats = model.expert.apply(model.expert_variables(v, i), jnp.asarray(h),
                                           train=False)
        return np.array(logits), np.array(feats)

    b = x.shape[0]
    nxt = np.ones(b, bool)
    used = np.ones(b, np.int64)
    out, feat = part(0, shared)
    for i in range(1, model.num_experts):
        p = np.asarray(router.logit(v["params"]["router"], i - 1, jnp.asarray(feat),
                                    jnp.asarray(out[nxt] / i)))
        if not force_all:
            nxt[nxt.copy()] = np.asarray(jax.nn.sigmoid(p)) > 0.5
        if not nxt.any():
            break
        logits, feat = part(i, shared[nxt])
        out[nxt] += logits
        used[nxt] += 1
    return out / used[:, None], used


@pytest.mark.parametrize("num_buckets", [1, 3, 4])
def test_routed_inference_equals_the_official_loop(x64, num_buckets):
    model, router, v, x = _routed_setup()
    want, want_used = _official_routed(model, router, v, x)
    assert set(np.unique(want_used)) == {1, 2, 3}, "the setup must mix 1, 2 and 3 experts"
    got = jax.jit(lambda v, x: routed_apply(model, router, v, x, num_buckets=num_buckets))(v, x)
    np.testing.assert_array_equal(got["num_experts"], want_used)
    np.testing.assert_allclose(got["logits"], want, rtol=1e-10, atol=1e-10)
    dense = routed_apply(model, router, v, x, compact=False)     # no compaction: same
    np.testing.assert_array_equal(dense["num_experts"], want_used)
    np.testing.assert_allclose(dense["logits"], want, rtol=1e-10, atol=1e-10)


def test_routed_inference_forced_on_equals_all_experts(x64):
    model, router, v, x = _routed_setup()
    got = routed_apply(model, router, v, x, force_all=True)
    full = model.apply(v, x)
    np.testing.assert_array_equal(got["num_experts"], 3)
    np.testing.assert_allclose(got["logits"], full["logits"], rtol=1e-12, atol=1e-12)
    want, _ = _official_routed(model, router, v, x, force_all=True)
    np.testing.assert_allclose(got["logits"], want, rtol=1e-10, atol=1e-10)


def test_routed_inference_when_everyone_stops_after_expert_0(x64):
    model, router, v, x = _routed_setup()
    v["params"]["router"]["out"]["bias"] = jnp.full((1,), -1e6, jnp.float64)
    got = jax.jit(lambda v, x: routed_apply(model, router, v, x))(v, x)
    np.testing.assert_array_equal(got["num_experts"], 1)
    np.testing.assert_allclose(got["logits"], model.apply(v, x)["expert_logits"][0],
                               rtol=1e-12)


def test_bucket_sizes():
    assert bucket_sizes(128, 4) == (32, 64, 96, 128)
    assert bucket_sizes(10, 4) == (3, 5, 8, 10)
    assert bucket_sizes(3, 8) == (1, 2, 3)
    assert bucket_sizes(7, 1) == (7,)
    with pytest.raises(ValueError, match="num_buckets"):
        bucket_sizes(8, 0)


# ------------------------------------------------------------------ accounting

def test_usage_counts_and_groups():
    labels = jnp.array([0, 0, 1, 2, 2, 2])
    used = jnp.array([1, 3, 2, 1, 1, 2])
    logits = jax.nn.one_hot(labels, 3)
    mask = jnp.array([True] * 5 + [False])
    c = metrics.eval_counts(logits, labels, mask, num_used=used, num_experts=3)
    # usage[k, c]: examples of class c that used exactly k + 1 experts (row 5 masked)
    np.testing.assert_array_equal(c["usage"], [[1, 0, 2], [0, 1, 0], [1, 0, 0]])
    s = metrics.summarize(c, train_counts=np.array([500, 50, 5]))   # many, medium, few
    assert s["experts_used"]["all"] == pytest.approx([0.6, 0.2, 0.2])
    assert s["experts_used"]["many"] == pytest.approx([0.5, 0, 0.5])
    assert s["experts_used"]["medium"] == pytest.approx([0, 1, 0])
    assert s["experts_used"]["few"] == pytest.approx([1, 0, 0])
    assert s["mean_experts"] == pytest.approx((1 * 3 + 2 + 3) / 5)


def test_routed_macs_include_routers():
    """ResNet-32 RIDE-3 on CIFAR-100: 100,358,208 conv+linear MACs (model_stats.json);
    a router part is 48*16 + 30 + 16 = 814 MACs."""
    model = create_model(num_classes=100, num_experts=3)
    router = make_router(model, (32, 32, 3), top_k=30)
    assert router.macs == 814
    macs = flops.model_macs(model)
    r = flops.routed_macs(macs, router.macs, [0.4099, 0.0947, 0.4954])
    assert r["all_experts"] == 100_358_208
    assert r["per_k"][2] == 100_358_208 + 2 * 814
    assert r["per_k"][0] == macs.shared + macs.per_expert + 814
    assert r["per_k"][1] == macs.shared + 2 * macs.per_expert + 2 * 814
    assert r["expected"] == pytest.approx(0.4099 * r["per_k"][0] + 0.0947 * r["per_k"][1]
                                          + 0.4954 * r["per_k"][2])
    # The README example's usage cuts about a quarter of the compute, as officially.
    assert 0.7 < r["expected"] / r["all_experts"] < 0.8
    with pytest.raises(ValueError, match="fractions"):
        flops.routed_macs(macs, 814, [40.99, 9.47, 49.54])
    # Fashion-MNIST shape: one input channel.
    grey = flops.model_macs(create_model(num_classes=10, num_experts=3),
                            image_shape=(28, 28, 1))
    assert grey.shared < flops.model_macs(create_model(num_classes=10, num_experts=3),
                                          image_shape=(28, 28, 3)).shared


# ------------------------------------------------------------------ tau-normalisation

def test_tau_normalize_matches_numpy():
    model = create_model(num_classes=5, num_experts=2, use_norm=False)
    v = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    w = np.asarray(v["params"]["experts"]["linear"]["kernel"])       # [E, D, C]
    for tau in (0.0, 0.5, 1.0):
        out = tau_normalize(v, tau)
        head = out["params"]["experts"]["linear"]
        want = w / np.linalg.norm(w, axis=1, keepdims=True) ** tau
        np.testing.assert_allclose(head["kernel"], want, rtol=1e-6)
        np.testing.assert_array_equal(head["bias"], 0)
        # the rest untouched
        np.testing.assert_array_equal(out["params"]["trunk"]["conv1"]["kernel"],
                                      v["params"]["trunk"]["conv1"]["kernel"])
    assert np.allclose(np.linalg.norm(tau_normalize(v, 1.0)["params"]["experts"]["linear"]
                                      ["kernel"], axis=1), 1)
    with pytest.raises(ValueError, match=">= 0"):
        tau_normalize(v, -0.5)
    cosine = create_model(num_classes=5, num_experts=2)
    with pytest.raises(ValueError, match="NormedLinear"):
        tau_normalize(cosine.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))), 1.0)
