"""ResLT networks (official ResLT ``ResLTResNet32``, ``ResNet_ResLT``): CIFAR branch-BN
head, ImageNet 1x1 block head, RIDE experts carrying either, test-time classifier, pooling
order, default models intact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ride_jax import losses
from ride_jax.models import (CifarResLTExpert, RIDEModel, count_params, create_model,
                             tau_normalize)
from ride_jax.models.resnet_cifar import CifarExpert, CifarTrunk


def _n_params(model, size):
    v = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    return count_params(v)


def _perturb_bns(variables, names, key):
    """Random BN scale/bias/running stats for the named expert BNs, so that the branches
    differ and a (wrong) ReLU after them would change the result."""
    params = jax.tree.map(lambda a: a, variables["params"])
    stats = jax.tree.map(lambda a: a, variables["batch_stats"])
    for name in names:
        key, k1, k2, k3, k4 = jax.random.split(key, 5)
        p, s = params["experts"][name], stats["experts"][name]
        shape = p["scale"].shape
        p["scale"] = jax.random.uniform(k1, shape, minval=0.5, maxval=1.5)
        p["bias"] = jax.random.normal(k2, shape)
        s["mean"] = 0.3 * jax.random.normal(k3, shape)
        s["var"] = jax.random.uniform(k4, shape, minval=0.5, maxval=2.0)
    return {"params": params, "batch_stats": stats}


def _expert_internals(model, variables, images, i, layer, train=False):
    """Expert i's variables and the output of its module ``layer`` (float64), with the
    whole network in eval (running statistics) or train (batch statistics) mode."""
    trunk_vars = {c: t["trunk"] for c, t in variables.items()}
    v = model.expert_variables(variables, i)
    if train:
        h = model.trunk.apply(trunk_vars, images, train=True, mutable=["batch_stats"])[0]
        _, state = model.expert.apply(v, h, train=True, capture_intermediates=True,
                                      mutable=["batch_stats", "intermediates"])
    else:
        h = model.trunk.apply(trunk_vars, images, train=False)
        _, state = model.expert.apply(v, h, train=False, capture_intermediates=True)
    return v, np.asarray(state["intermediates"][layer]["__call__"][0], np.float64)


def _bn(x, p, mean, var):
    return (x - mean) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


# ------------------------------------------------------------------ parameter counts
# ResNet-32 (16/32/64) body: stem 3*3*3*16 + BN 2*16 = 464; layer1 5 * (2*9*16*16 + 2*32)
# = 23,360; layer2 (9*16*32 + 9*32*32 + 128) + 4*(2*9*32*32 + 128) = 88,192; layer3
# (9*32*64 + 9*64*64 + 256) + 4*(2*9*64*64 + 256) = 351,488; total 463,504.
# ResLTResNet32, C=100: + 3 BN(64) = 384 + Linear 64*100 + 100 = 6,500 -> 470,388.
# RIDE-3 CIFAR-100 (reduce): trunk 464 + 23,360 = 23,824; expert body: layer2
# (9*16*24 + 9*24*24 + 96) + 4*(2*9*24*24 + 96) = 50,592, layer3 (9*24*48 + 9*48*48
# + 192) + 4*(2*9*48*48 + 192) = 197,952. Default head NormedLinear 48*100 = 4,800:
# 23,824 + 3*(248,544 + 4,800) = 783,856 (official; docs/parity.md). ResLT head 3*2*48 + 48*100 + 100
# = 5,188: 23,824 + 3*(248,544 + 5,188) = 785,020.
# ResNet-10 body: 9,408 + 128 + 73,984 (layer1) + 230,144 (layer2: 73,728 + 147,456 + 512
# + ds 8,192 + 256) + 919,040 (layer3: 294,912 + 589,824 + 1,024 + ds 32,768 + 512) +
# 3,673,088 (layer4: 1,179,648 + 2,359,296 + 2,048 + ds 131,072 + 1,024) = 4,905,792;
# + fc 512*1000 + 1000 = 5,418,792 (torchvision-style resnet10). resnet10_reslt: + final
# conv 512*1536 = 786,432 + BN 2*1536 = 3,072 + Linear 513,000 -> 6,208,296.
# ResNeXt-50 body = 25,028,904 (torchvision resnext50_32x4d) - fc 2,049,000 = 22,979,904;
# resnext50_32x4d_reslt: + 2048*6144 = 12,582,912 + 12,288 + 2,049,000 -> 37,624,104.
# RIDE ResNeXt-50 (reduce, F=1536) with ResLT heads instead of NormedLinear(1536, 1000):
# per expert + 1536*4608 + 2*4608 + 1000 (bias) = 7,088,104; 3 experts -> +21,264,312.
@pytest.mark.parametrize("arch,size,kwargs,expected", [
    ("resnet32", 32, dict(num_experts=3), 783_856),
    ("resnet32", 32, dict(num_experts=1, reduce_dimension=False, use_norm=False,
                          head="reslt"), 470_388),
    ("resnet32", 32, dict(num_experts=3, use_norm=False, head="reslt"), 785_020),
    ("resnet10", 224, dict(num_experts=1, reduce_dimension=False, use_norm=False),
     5_418_792),
    ("resnet10", 224, dict(num_experts=1, reduce_dimension=False, use_norm=False,
                           head="reslt"), 6_208_296),
    # iNat two-branch variant: finalBlock keeps 3F channels (official), same count.
    ("resnet10", 224, dict(num_experts=1, reduce_dimension=False, use_norm=False,
                           head="reslt", reslt_branches=2), 6_208_296),
    ("resnext50", 224, dict(num_experts=1, reduce_dimension=False, use_norm=False,
                            head="reslt"), 37_624_104),
])
def test_parameter_counts(arch, size, kwargs, expected):
    assert _n_params(create_model(arch, num_classes=100 if arch == "resnet32" else 1000,
                                  **kwargs), size) == expected


def test_ride_resnext50_reslt_adds_the_block_per_expert():
    plain = create_model("resnext50", num_classes=1000, num_experts=3)
    reslt = create_model("resnext50", num_classes=1000, num_experts=3, use_norm=False,
                         head="reslt")
    assert _n_params(reslt, 224) - _n_params(plain, 224) == 3 * 7_088_104


# ------------------------------------------------------------------ CIFAR head
@pytest.fixture(scope="module")
def cifar():
    """RIDE-2 ResNet-32 with ResLT experts, C=10, random branch BNs."""
    model = create_model("resnet32", num_classes=10, num_experts=2, use_norm=False,
                         head="reslt")
    images = jax.random.normal(jax.random.key(1), (6, 32, 32, 3))
    variables = model.init(jax.random.key(0), images)
    variables = _perturb_bns(variables, ["bn_h", "bn_m", "bn_t"], jax.random.key(2))
    return model, variables, images


def test_cifar_reslt_matches_numpy_and_branch_sum(cifar):
    model, variables, images = cifar
    out = model.apply(variables, images)
    assert out["branch_logits"].shape == (2, 3, 6, 10)
    assert out["expert_logits"].shape == (2, 6, 10)
    assert out["features"].shape == (2, 6, 48)
    np.testing.assert_allclose(out["expert_logits"], out["branch_logits"].sum(1), rtol=1e-6)
    np.testing.assert_allclose(out["logits"], out["branch_logits"].sum(1).mean(0),
                               rtol=1e-5, atol=1e-6)
    for i in range(2):
        v, x = _expert_internals(model, variables, images, i, "layer3_4")  # [B, 8, 8, 48]
        p, s = v["params"], v["batch_stats"]
        w = np.asarray(p["linear"]["kernel"], np.float64)
        b = np.asarray(p["linear"]["bias"], np.float64)
        for k, name in enumerate(["bn_h", "bn_m", "bn_t"]):
            # BN (running stats), no ReLU, global average pool, shared Linear with bias.
            f = _bn(x, p[name], s[name]["mean"], s[name]["var"]).mean((1, 2))
            np.testing.assert_allclose(out["branch_logits"][i, k], f @ w + b,
                                       rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out["features"][i], x.mean((1, 2)), rtol=1e-4, atol=1e-5)
    # The branches are different functions (different BNs), the experts too.
    assert float(jnp.abs(out["branch_logits"][:, 0] - out["branch_logits"][:, 1]).max()) > 1e-2
    assert float(jnp.abs(out["branch_logits"][0] - out["branch_logits"][1]).max()) > 1e-2


def test_cifar_reslt_train_mode_uses_batch_stats_per_branch(cifar):
    model, variables, images = cifar
    out, state = model.apply(variables, images, train=True)
    v, x = _expert_internals(model, variables, images, 0, "layer3_4", train=True)
    p = v["params"]
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    w, b = np.asarray(p["linear"]["kernel"]), np.asarray(p["linear"]["bias"])
    for k, name in enumerate(["bn_h", "bn_m", "bn_t"]):
        f = _bn(x, p[name], mean, var).mean((1, 2))
        np.testing.assert_allclose(out["branch_logits"][0, k], f @ w + b, rtol=1e-3, atol=1e-3)
        n = x.size // x.shape[-1]
        np.testing.assert_allclose(
            state["batch_stats"]["experts"][name]["var"][0],
            0.9 * np.asarray(v["batch_stats"][name]["var"]) + 0.1 * var * n / (n - 1),
            rtol=1e-4)


def test_cifar_eval_gamma_is_the_official_test_classifier(cifar):
    model, variables, images = cifar
    gamma = 0.7
    scaled = create_model("resnet32", num_classes=10, num_experts=2, use_norm=False,
                          head="reslt", reslt_eval_gamma=gamma)
    out0 = model.apply(variables, images)
    out = scaled.apply(variables, images)
    for i in range(2):
        v, x = _expert_internals(model, variables, images, i, "layer3_4")
        p, s = v["params"], v["batch_stats"]
        w = np.asarray(p["linear"]["kernel"], np.float64)
        w_test = w / np.linalg.norm(w, axis=0, keepdims=True) ** gamma  # class vectors, no bias
        for k, name in enumerate(["bn_h", "bn_m", "bn_t"]):
            f = _bn(x, p[name], s[name]["mean"], s[name]["var"]).mean((1, 2))
            np.testing.assert_allclose(out["branch_logits"][i, k], f @ w_test,
                                       rtol=1e-4, atol=1e-4)
    assert float(jnp.abs(out["logits"] - out0["logits"]).max()) > 1e-2
    # Same as post-hoc tau-normalisation of the plain model's classifier.
    np.testing.assert_allclose(out["branch_logits"],
                               model.apply(tau_normalize(variables, gamma), images)["branch_logits"],
                               rtol=1e-5, atol=1e-5)
    # Training is not affected by the test-time option.
    t0 = model.apply(variables, images, train=True)[0]["branch_logits"]
    t1 = scaled.apply(variables, images, train=True)[0]["branch_logits"]
    np.testing.assert_array_equal(t0, t1)


def test_vmap_and_loop_reslt_experts_agree(cifar):
    model, variables, images = cifar
    vmap = create_model("resnet32", num_classes=10, num_experts=2, use_norm=False,
                        head="reslt", expert_impl="vmap")
    a, b = model.apply(variables, images), vmap.apply(variables, images)
    for key in ("branch_logits", "expert_logits", "logits", "features"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-4)


def test_jit_and_gradients_through_reslt_loss(cifar):
    model, variables, images = cifar
    labels = jnp.array([0, 1, 3, 5, 8, 9])
    mt = labels >= 2
    tail = labels >= 4

    @jax.jit
    def step(params):
        out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                             images, train=True)
        per_expert = jax.vmap(lambda z: losses.reslt_loss(z, labels, mt, tail, 0.995)[0])(
            out["branch_logits"])
        return per_expert.sum(), out

    (loss, out), grads = jax.value_and_grad(step, has_aux=True)(variables["params"])
    eager = model.apply(variables, images, train=True)[0]
    np.testing.assert_allclose(out["branch_logits"], eager["branch_logits"], rtol=1e-4,
                               atol=1e-4)
    assert np.isfinite(float(loss))
    for name in ("bn_h", "bn_m", "bn_t", "linear", "layer2_0"):
        g = jax.tree.leaves(grads["experts"][name])
        assert all(bool(jnp.isfinite(x).all()) for x in g)
        assert max(float(jnp.abs(x).max()) for x in g) > 0, name
    jitted_eval = jax.jit(lambda v, x: model.apply(v, x))(variables, images)
    np.testing.assert_allclose(jitted_eval["logits"], model.apply(variables, images)["logits"],
                               rtol=1e-4, atol=1e-4)


def test_reslt_classifier_init_is_torch_default(cifar):
    _, variables, _ = cifar
    lin = variables["params"]["experts"]["linear"]
    assert lin["kernel"].shape == (2, 48, 10) and lin["bias"].shape == (2, 10)
    bound = 1 / np.sqrt(48)   # U(+-1/sqrt(fan_in)), not kaiming normal (std sqrt(2/48))
    assert float(jnp.abs(lin["kernel"]).max()) <= bound
    assert float(jnp.abs(lin["kernel"]).max()) > 0.8 * bound
    assert float(jnp.abs(lin["bias"]).max()) <= bound
    assert float(jnp.abs(lin["bias"]).max()) > 0.3 * bound


# ------------------------------------------------------------------ ImageNet head
@pytest.fixture(scope="module")
def imagenet():
    """resnet10_reslt (single model), C=7, 64x64 inputs (2x2 final map), random final BN."""
    model = create_model("resnet10", num_classes=7, num_experts=1, reduce_dimension=False,
                         use_norm=False, head="reslt")
    images = jax.random.normal(jax.random.key(3), (4, 64, 64, 3))
    variables = model.init(jax.random.key(4), images)
    variables = _perturb_bns(variables, ["final_bn"], jax.random.key(5))
    return model, variables, images


def _imagenet_reference(v, x, order, train):
    p, s = v["params"], v["batch_stats"]
    wc = np.asarray(p["final_conv"]["kernel"], np.float64)[0, 0]   # [F, 3F]
    y = x.mean((1, 2), keepdims=True) if order == "pool_conv" else x
    y = y @ wc
    if train:
        mean, var = y.mean((0, 1, 2)), y.var((0, 1, 2))
    else:
        mean, var = s["final_bn"]["mean"], s["final_bn"]["var"]
    y = np.maximum(_bn(y, p["final_bn"], mean, var), 0).mean((1, 2))   # [B, 3F]
    f = x.shape[-1]
    w = np.asarray(p["linear"]["kernel"], np.float64)
    b = np.asarray(p["linear"]["bias"], np.float64)
    return np.stack([y[:, k * f:(k + 1) * f] @ w + b for k in range(3)])


def test_imagenet_reslt_pooling_orders(imagenet):
    model, variables, images = imagenet
    v, x = _expert_internals(model, variables, images, 0, "layer4_0")   # [B, 2, 2, 512]
    assert x.shape == (4, 2, 2, 512)
    assert v["params"]["final_conv"]["kernel"].shape == (1, 1, 512, 1536)
    # Official defaults: evaluation pools first, training applies the block first.
    ev = model.apply(variables, images)["branch_logits"][0]
    np.testing.assert_allclose(ev, _imagenet_reference(v, x, "pool_conv", False),
                               rtol=1e-3, atol=1e-3)
    _, xt = _expert_internals(model, variables, images, 0, "layer4_0", train=True)
    tr = model.apply(variables, images, train=True)[0]["branch_logits"][0]
    np.testing.assert_allclose(tr, _imagenet_reference(v, xt, "conv_pool", True),
                               rtol=1e-3, atol=1e-3)
    # The other orders, as options.
    alt = create_model("resnet10", num_classes=7, num_experts=1, reduce_dimension=False,
                       use_norm=False, head="reslt", reslt_train_order="pool_conv",
                       reslt_eval_order="conv_pool")
    ev_alt = alt.apply(variables, images)["branch_logits"][0]
    np.testing.assert_allclose(ev_alt, _imagenet_reference(v, x, "conv_pool", False),
                               rtol=1e-3, atol=1e-3)
    tr_alt = alt.apply(variables, images, train=True)[0]["branch_logits"][0]
    np.testing.assert_allclose(tr_alt, _imagenet_reference(v, xt, "pool_conv", True),
                               rtol=1e-3, atol=1e-3)
    # ReLU does not commute with pooling: the two evaluation functions differ.
    assert float(jnp.abs(ev - ev_alt).max()) > 1e-2


def test_imagenet_reslt_two_branches_and_eval_gamma(imagenet):
    model, variables, images = imagenet
    three = model.apply(variables, images)
    two_model = create_model("resnet10", num_classes=7, num_experts=1,
                             reduce_dimension=False, use_norm=False, head="reslt",
                             reslt_branches=2, reslt_eval_gamma=0.3)
    two = two_model.apply(variables, images)      # same variables: same parameters
    assert two["branch_logits"].shape == (1, 2, 4, 7)
    w = np.asarray(variables["params"]["experts"]["linear"]["kernel"][0], np.float64)
    b = np.asarray(variables["params"]["experts"]["linear"]["bias"][0], np.float64)
    # Recover the pooled branch features from the plain model's logits (w has full rank
    # 7 over 512 dims, so compare in logit space): z = f @ w + b and z' = f @ w / |w|^0.3.
    scale = np.linalg.norm(w, axis=0) ** 0.3
    expected = (np.asarray(three["branch_logits"][0, :2], np.float64) - b) / scale
    np.testing.assert_allclose(two["branch_logits"][0], expected, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(two["logits"], two["branch_logits"].sum(1).mean(0), rtol=1e-5,
                               atol=1e-6)


def test_ride_imagenet_reslt_outputs():
    model = create_model("resnet10", num_classes=5, num_experts=3, use_norm=False,
                         head="reslt", reslt_eval_gamma=0.7)
    images = jnp.zeros((2, 64, 64, 3))
    out = jax.eval_shape(lambda x: model.apply(model.init(jax.random.key(0), x), x), images)
    assert out["branch_logits"].shape == (3, 3, 2, 5)
    assert out["expert_logits"].shape == (3, 2, 5)
    assert out["logits"].shape == (2, 5)
    assert out["features"].shape == (3, 2, 384)    # reduced layer4 planes


# ------------------------------------------------------------------ defaults unchanged
def test_default_models_are_unchanged():
    default = create_model("resnet32", num_classes=10, num_experts=2)
    assert default.expert == CifarExpert(num_classes=10, layer2_dim=24, layer3_dim=48)
    assert default.trunk == CifarTrunk()
    assert default.num_branches == 0
    by_hand = RIDEModel(trunk=CifarTrunk(), expert=CifarExpert(num_classes=10), num_experts=2,
                        num_classes=10, arch="resnet32")
    assert default == by_hand
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = default.init(jax.random.key(0), images)
    out = default.apply(variables, images)
    assert set(out) == {"expert_logits", "logits", "features"}
    np.testing.assert_array_equal(out["logits"], by_hand.apply(variables, images)["logits"])
    reslt = create_model("resnet32", num_classes=10, num_experts=2, use_norm=False,
                         head="reslt")
    assert isinstance(reslt.expert, CifarResLTExpert) and reslt.num_branches == 3


def test_bad_reslt_options():
    with pytest.raises(ValueError, match="use_norm=False"):
        create_model("resnet32", num_classes=10, head="reslt")
    with pytest.raises(ValueError, match="need head='reslt'"):
        create_model("resnet32", num_classes=10, reslt_eval_gamma=0.5)
    with pytest.raises(ValueError, match="ImageNet-size"):
        create_model("resnet32", num_classes=10, use_norm=False, head="reslt",
                     reslt_eval_order="conv_pool")
    with pytest.raises(ValueError, match="reslt_branches"):
        create_model("resnet10", num_classes=10, use_norm=False, head="reslt",
                     reslt_branches=4)
    with pytest.raises(ValueError, match="head"):
        create_model("resnet10", num_classes=10, head="cosine")
    with pytest.raises(ValueError, match="reslt_eval_gamma"):
        create_model("resnet10", num_classes=10, use_norm=False, head="reslt",
                     reslt_eval_gamma=-1.0)
