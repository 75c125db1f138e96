"""``config.cpu_fusion_barriers`` / ``create_model(fusion_barriers=True)``: the same
function, compiled without XLA:CPU's recompute-in-transpose fusions."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ride_jax import compiler, losses
from ride_jax.data import long_tail_counts
from ride_jax.models import create_model
from ride_jax.models.layers import fusion_barrier
from ride_jax.train import _fusion_barriers

from helpers import ride_train_grad


def test_barrier_is_an_exact_identity_with_an_exact_gradient():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5, 6)).astype(np.float32) * 1e3
    x.flat[:6] = [np.nan, np.inf, -np.inf, -0.0, 1e-42, -3.4e38]   # specials, subnormal
    out = np.asarray(jax.jit(fusion_barrier)(jnp.asarray(x)))
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_array_equal(out, x)                           # NaN == NaN here
    assert np.signbit(out.flat[3])                                  # -0.0 kept
    w = rng.standard_normal(x.shape).astype(np.float32)
    g = jax.grad(lambda v: jnp.sum(fusion_barrier(v) * w))(jnp.ones_like(x))
    np.testing.assert_array_equal(np.asarray(g), w)
    xb = jnp.asarray(x[1:], jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(fusion_barrier(xb), np.float32),
                                  np.asarray(xb, np.float32))
    assert fusion_barrier(xb).dtype == jnp.bfloat16


@pytest.mark.parametrize("head", ["plain", "reslt"])
def test_model_with_barriers_computes_the_same_function(head):
    """Loss, logits, BatchNorm statistics and every gradient of a 2-expert ResNet-32
    (plain RIDE and ResLT heads) match the model without barriers, same variables."""
    counts = long_tail_counts(10, 20, ratio=10)
    vec = losses.ride_schedule(counts, epoch=170, reweight_epoch=160, reweight_factor=0.05)
    kw = dict(num_classes=10, num_experts=2 if head == "plain" else 1,
              reduce_dimension=True, head=head, use_norm=head == "plain")
    plain = create_model("resnet32", **kw)
    barred = create_model("resnet32", fusion_barriers=True, **kw)
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.standard_normal((8, 32, 32, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 8))
    variables = plain.init(jax.random.key(0), images)
    assert (jax.tree_util.tree_structure(barred.init(jax.random.key(0), images))
            == jax.tree_util.tree_structure(variables))
    args = (variables["params"], variables["batch_stats"], images, labels)
    opts = compiler.compiler_options("eigen", jax.default_backend())
    (loss_p, aux_p), grads_p = jax.jit(ride_train_grad(plain, vec), compiler_options=opts)(*args)
    (loss_b, aux_b), grads_b = jax.jit(ride_train_grad(barred, vec), compiler_options=opts)(*args)
    np.testing.assert_allclose(loss_b, loss_p, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(aux_b), jax.tree_util.tree_leaves(aux_p)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    leaves_b, leaves_p = jax.tree_util.tree_leaves(grads_b), jax.tree_util.tree_leaves(grads_p)
    assert len(leaves_b) == len(leaves_p) > 50
    for a, b in zip(leaves_b, leaves_p):
        scale = float(np.max(np.abs(b))) + 1e-12
        assert float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) / scale < 1e-5


# What the barriers are for is a property of XLA:CPU's compiled program; CI runs on a
# CPU, so this always runs there.
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks XLA:CPU's fusions")
def test_barriers_stop_recompute_chains_in_the_compiled_cpu_step():
    """Without barriers XLA:CPU fuses whole residual chains (over 20 operands) into the
    transposes of layer1 activations to ``[C, H, W, N]`` in front of the kernel-gradient
    convolutions; with them each such transpose reads one stored activation, held by a
    full-size division (a future XLA that folds the barrier away fails here)."""
    counts = long_tail_counts(10, 20, ratio=10)
    vec = losses.ride_schedule(counts, epoch=170, reweight_epoch=160, reweight_factor=0.05)
    images = jnp.zeros((8, 32, 32, 3), jnp.float32)     # batch 8: [C, H, W, N] = [16, 32, 32, 8]
    labels = jnp.zeros((8,), jnp.int32)
    widest = {}
    for barriers in (False, True):
        model = create_model("resnet32", num_classes=10, num_experts=1,
                             fusion_barriers=barriers)
        variables = jax.eval_shape(model.init, jax.random.key(0), images)
        tx = optax.sgd(0.1, momentum=0.9)

        def step(params, batch_stats, opt_state, model=model):
            (_, _), grads = ride_train_grad(model, vec)(params, batch_stats, images, labels)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        hlo = jax.jit(step, compiler_options=compiler.compiler_options("eigen", "cpu")).lower(
            variables["params"], variables["batch_stats"],
            jax.eval_shape(tx.init, variables["params"])).compile().as_text()
        operands = [line.split(" fusion(", 1)[1].split("), kind=")[0].count("%")
                    for line in hlo.splitlines()
                    if re.match(r"\s+%transpose\S*fusion\S* = f32\[16,32,32,8\]", line)
                    and " fusion(" in line]
        assert operands, "no transpose fusions: the check below would be empty"
        widest[barriers] = max(operands)
        divides = re.findall(r"f32\[8,32,32,16\]\{3,2,1,0\} divide\(", hlo)
        assert bool(divides) == barriers
    assert widest[False] > 12, widest
    assert widest[True] <= 2, widest


def test_create_model_checks_the_option():
    with pytest.raises(ValueError, match="'resnet50'"):
        create_model("resnet50", num_classes=10, fusion_barriers=True)
    with pytest.raises(ValueError, match="True or False.*'yes'"):
        create_model("resnet32", num_classes=10, fusion_barriers="yes")


def test_trainer_uses_barriers_on_cpu_only_and_checks_the_value():
    config = ml_collections.ConfigDict({"cpu_fusion_barriers": True})
    assert _fusion_barriers(config, "cpu") is True
    assert _fusion_barriers(config, "gpu") is False
    assert _fusion_barriers(ml_collections.ConfigDict({"cpu_fusion_barriers": False}),
                            "cpu") is False
    assert _fusion_barriers(ml_collections.ConfigDict({}), "cpu") is True  # older runs
    with pytest.raises(ValueError, match="cpu_fusion_barriers.*'on'"):
        _fusion_barriers(ml_collections.ConfigDict({"cpu_fusion_barriers": "on"}), "cpu")
