"""``config.cpu_convolutions``: the CPU compiler option computes the same function, faster."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ride_jax import compiler, losses
from ride_jax.data import long_tail_counts
from ride_jax.models import create_model

from helpers import ride_train_grad

EIGEN = {"xla_cpu_experimental_ynn_fusion_type":
         "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def test_options_per_choice_and_backend():
    assert compiler.compiler_options("eigen", "cpu") == EIGEN
    assert compiler.compiler_options("xla_default", "cpu") is None
    assert compiler.compiler_options("eigen", "gpu") is None      # CPU-only option
    assert compiler.compiler_options("eigen", "tpu") is None


def test_bad_choice_names_value_and_choices():
    with pytest.raises(ValueError) as e:
        compiler.compiler_options("fast", "cpu")
    assert "'fast'" in str(e.value) and "'eigen'" in str(e.value) and "'xla_default'" in str(
        e.value)


def test_unknown_option_falls_back_to_xla_defaults():
    assert compiler._accepted((("xla_cpu_no_such_option_for_this_test", "1"),)) is False
    assert compiler._accepted(tuple(EIGEN.items())) is True


def _grad_fn(model, vec):
    """(params, batch_stats, images, labels) -> (loss, grads)."""
    fn = ride_train_grad(model, vec)

    def loss_and_grads(*args):
        (loss, _), grads = fn(*args)
        return loss, grads
    return loss_and_grads


def _relative_errors(grads, reference):
    """max |g - ref| / max |ref| per leaf."""
    return [float(np.max(np.abs(np.asarray(g, np.float64) - r)) / (np.max(np.abs(r)) + 1e-12))
            for g, r in zip(jax.tree_util.tree_leaves(grads),
                            jax.tree_util.tree_leaves(reference))]


# The option exists only for the CPU compiler (other backends get no options, tested
# above); CI runs on a CPU, so this check always runs there.
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU compiler option")
def test_eigen_computes_the_same_train_gradients_without_ynn_convolutions():
    """RIDE-2 ResNet-32 loss and gradients (every conv's kernel gradient, BatchNorm in
    training mode) are as close to a float64 reference as the default compile's, and the
    option really changes the program. Turning every YNNPACK fusion off (reductions too)
    fails this: its BatchNorm sums put the gradients ~3e-3 (relative) off."""
    counts = long_tail_counts(10, 20, ratio=10)
    vec = losses.ride_schedule(counts, epoch=170, reweight_epoch=160, reweight_factor=0.05)
    model = create_model("resnet32", num_classes=10, num_experts=2, reduce_dimension=True,
                         expert_impl="loop")
    rng = np.random.default_rng(0)
    images = rng.standard_normal((16, 32, 32, 3))
    labels = jnp.asarray(rng.integers(0, 10, 16))
    variables = model.init(jax.random.key(0), jnp.asarray(images, jnp.float32))
    args = (variables["params"], variables["batch_stats"], jnp.asarray(images, jnp.float32),
            labels)
    fn = _grad_fn(model, vec)

    eigen = jax.jit(fn, compiler_options=compiler.compiler_options("eigen", "cpu"))
    hlo = eigen.lower(*args).compile().as_text()
    assert "conv_general_dilated" in hlo
    ynn_ops = re.findall(r'%ynn_fusion[.\d]* = .*?op_name="([^"]*)"', hlo)
    assert ynn_ops and not [op for op in ynn_ops if op.endswith("conv_general_dilated")]
    (loss_e, grads_e), (loss_d, grads_d) = eigen(*args), jax.jit(fn)(*args)
    with jax.enable_x64(True):
        args64 = jax.tree_util.tree_map(
            lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x, args[:3])
        loss_r, grads_r = jax.jit(fn)(*args64, labels)
        grads_r = jax.tree_util.tree_map(np.asarray, grads_r)
    assert jax.tree_util.tree_leaves(grads_r)[0].dtype == np.float64
    np.testing.assert_allclose(loss_e, loss_r, rtol=1e-5)
    np.testing.assert_allclose(loss_d, loss_r, rtol=1e-5)
    err_e, err_d = _relative_errors(grads_e, grads_r), _relative_errors(grads_d, grads_r)
    assert len(err_e) > 50
    assert max(err_d) < 5e-5, max(err_d)          # float32 rounding of the default compile
    assert max(err_e) < 5e-5, max(err_e)
