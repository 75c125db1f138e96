"""Tests of the prior-corrected losses (logit adjustment, Balanced Softmax) and the post-hoc rule.

Expected values come from plain float64 NumPy restatements of the papers' formulas (log-sum-exp
and the analytic softmax-CE gradient written out by hand), never from ride_jax itself.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ride_jax import losses as L

B, C = 16, 10
TAUS = [0.0, 0.5, 1.0, 1.5, 2.0]


@pytest.fixture(params=["f64", "f32"])
def precision(request):
    """(numpy dtype, rtol, atol): once with x64 (float64 arrays), once without (float32 arrays)."""
    if request.param == "f64":
        with jax.enable_x64(True):
            yield np.float64, 1e-10, 1e-13
    else:
        yield np.float32, 2e-5, 2e-6


def data(seed=0):
    rng = np.random.default_rng(seed)
    logits = 3.0 * rng.standard_normal((B, C))
    labels = rng.integers(0, C, B)
    counts = np.round(500 * 0.01 ** (np.arange(C) / (C - 1))) + rng.integers(0, 3, C)  # long-tailed, >= 5
    return logits, labels, counts


# ----------------------------------------------------------------------------------------------
# independent numpy references (float64)
# ----------------------------------------------------------------------------------------------

def np_log_prior(counts, tau, eps=1e-12):
    pi = np.asarray(counts, np.float64) / np.sum(counts)
    return np.log(pi ** tau + eps)


def np_softmax_ce(z, y, adj):
    """Mean CE on z + adj and its gradient w.r.t. z: (softmax(z + adj) - onehot) / B."""
    a = np.asarray(z, np.float64) + np.asarray(adj, np.float64)
    m = a.max(-1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(a - m).sum(-1))
    loss = np.mean(lse - a[np.arange(len(y)), y])
    p = np.exp(a - lse[:, None])
    onehot = np.eye(a.shape[-1])[y]
    return loss, (p - onehot) / len(y)


def value_and_grad(fn, z, *args):
    return jax.value_and_grad(fn)(z, *args)


# ----------------------------------------------------------------------------------------------
# values and gradients
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tau", TAUS)
def test_log_prior_numpy(tau):
    counts = np.array([500, 120, 31, 7, 0, 2])  # a zero count gives log(1e-12), as in the official code
    out = L.log_prior(counts, tau)
    assert out.dtype == jnp.float32 and out.shape == (6,)
    np.testing.assert_allclose(out, np_log_prior(counts, tau), rtol=1e-6, atol=1e-6)
    with jax.enable_x64(True):
        out64 = L.log_prior(counts, tau, dtype=jnp.float64)
        assert out64.dtype == jnp.float64
        np.testing.assert_allclose(out64, np_log_prior(counts, tau), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(L.log_prior(counts, tau, eps=1e-3), np_log_prior(counts, tau, 1e-3), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("tau", TAUS)
def test_logit_adjusted_loss_value_and_grad(tau, seed, precision):
    dtype, rtol, atol = precision
    z, y, n = data(seed)
    z = z.astype(dtype)
    loss, grad = value_and_grad(L.logit_adjusted_loss, z, y, n, tau)
    ref_loss, ref_grad = np_softmax_ce(z, y, np_log_prior(n, tau))
    assert loss.dtype == dtype and grad.dtype == dtype
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol, atol=atol)
    np.testing.assert_allclose(grad, ref_grad, rtol=rtol, atol=atol)


def test_logit_adjusted_default_tau_is_one():
    z, y, n = data()
    np.testing.assert_allclose(L.logit_adjusted_loss(z, y, n), np_softmax_ce(z, y, np_log_prior(n, 1.0))[0],
                               rtol=1e-5)


def test_tau_zero_is_plain_cross_entropy(precision):
    dtype, rtol, atol = precision
    z, y, n = data()
    z = z.astype(dtype)
    loss, grad = value_and_grad(L.logit_adjusted_loss, z, y, n, 0.0)
    ref_loss, ref_grad = np_softmax_ce(z, y, 0.0)  # no adjustment at all
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol, atol=atol)
    np.testing.assert_allclose(grad, ref_grad, rtol=rtol, atol=atol)
    np.testing.assert_allclose(loss, L.cross_entropy(z, y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_softmax_value_and_grad(seed, precision):
    dtype, rtol, atol = precision
    z, y, n = data(seed)
    z = z.astype(dtype)
    loss, grad = value_and_grad(L.balanced_softmax_loss, z, y, n)
    ref_loss, ref_grad = np_softmax_ce(z, y, np.log(n))
    assert loss.dtype == dtype
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol, atol=atol)
    np.testing.assert_allclose(grad, ref_grad, rtol=rtol, atol=atol)
    # the paper's form: phi_j = n_j exp(z_j) / sum_i n_i exp(z_i), loss = mean -log phi_y
    w = n * np.exp(np.asarray(z, np.float64))
    phi = w / w.sum(-1, keepdims=True)
    np.testing.assert_allclose(loss, np.mean(-np.log(phi[np.arange(B), y])), rtol=rtol, atol=atol)


def test_balanced_softmax_equals_logit_adjustment_tau_one():
    """CE is shift invariant, so z + log n and z + log(n / N) give the same loss; the 1e-12 epsilon
    moves log(pi) by at most 1e-12 / min(pi) ~ 1e-9 here."""
    with jax.enable_x64(True):
        for seed in range(3):
            z, y, n = data(seed)
            bs, g_bs = value_and_grad(L.balanced_softmax_loss, z, y, n)
            la, g_la = value_and_grad(L.logit_adjusted_loss, z, y, n, 1.0)
            np.testing.assert_allclose(bs, la, rtol=0, atol=1e-9)
            np.testing.assert_allclose(g_bs, g_la, rtol=0, atol=1e-9)
            assert abs(float(bs) - float(L.cross_entropy(z, y))) > 1e-3  # the adjustment does matter


def test_posthoc_logit_adjust_hand_computed():
    # counts [9, 1] -> pi = [0.9, 0.1]; tau = 1: subtract log(pi + 1e-12) ~= [-0.1053605, -2.3025851].
    # row 0, z = [2, 0]: plain argmax 0; adjusted [2 + 0.1053605, 0 + 2.3025851] = [2.1053605, 2.3025851]
    #   -> argmax 1 (the tail class wins).
    # row 1, z = [3, 0]: adjusted [3.1053605, 2.3025851] -> argmax stays 0.
    z = np.array([[2.0, 0.0], [3.0, 0.0]], np.float32)
    out = L.posthoc_logit_adjust(z, [9, 1], 1.0)
    chex.assert_shape(out, (2, 2))
    np.testing.assert_allclose(out, [[2.1053605, 2.3025851], [3.1053605, 2.3025851]], rtol=1e-6)
    np.testing.assert_array_equal(np.argmax(z, -1), [0, 0])
    np.testing.assert_array_equal(np.argmax(out, -1), [1, 0])
    # tau = 2: subtract log(pi**2) = [log 0.81, log 0.01] = [-0.2107210, -4.6051702]
    np.testing.assert_allclose(L.posthoc_logit_adjust(z, [9, 1], 2.0),
                               [[2.2107210, 4.6051702], [3.2107210, 4.6051702]], rtol=1e-6)
    # tau = 0: log(1 + 1e-12) rounds to 0 in float32, the logits come back unchanged
    np.testing.assert_array_equal(L.posthoc_logit_adjust(z, [9, 1], 0.0), z)


@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_posthoc_logit_adjust_numpy(tau):
    with jax.enable_x64(True):
        z, _, n = data()
        out = L.posthoc_logit_adjust(z, n, tau)
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(out, z - np_log_prior(n, tau), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# jit, dtypes
# ----------------------------------------------------------------------------------------------

def test_jit_matches_eager():
    z, y, n = data()
    z = z.astype(np.float32)
    for tau in [0.0, 1.0]:
        eager = L.logit_adjusted_loss(z, y, n, tau)
        np.testing.assert_allclose(jax.jit(L.logit_adjusted_loss)(z, y, n, tau), eager, rtol=1e-6)  # traced counts, tau
        np.testing.assert_allclose(jax.jit(lambda a: L.logit_adjusted_loss(a, y, n, tau))(z), eager, rtol=1e-6)
    bs = L.balanced_softmax_loss(z, y, n)
    np.testing.assert_allclose(jax.jit(L.balanced_softmax_loss)(z, y, n), bs, rtol=1e-6)
    g = jax.jit(jax.grad(lambda a: L.balanced_softmax_loss(a, y, n)))(z)
    np.testing.assert_allclose(g, np_softmax_ce(z, y, np.log(n))[1], rtol=1e-5, atol=1e-6)
    post = jax.jit(L.posthoc_logit_adjust)(z, n, 1.0)
    np.testing.assert_allclose(post, L.posthoc_logit_adjust(z, n, 1.0), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(L.log_prior)(n, 0.5), L.log_prior(n, 0.5), rtol=1e-6)


def test_bfloat16_logits_give_float32():
    z, y, n = data()
    z16 = jnp.asarray(z, jnp.bfloat16)
    z_rounded = np.asarray(z16.astype(jnp.float32), np.float64)
    for loss, adj in [(L.logit_adjusted_loss(z16, y, n), np_log_prior(n, 1.0)),
                      (L.balanced_softmax_loss(z16, y, n), np.log(n))]:
        assert loss.dtype == jnp.float32 and np.isfinite(loss)
        np.testing.assert_allclose(loss, np_softmax_ce(z_rounded, y, adj)[0], rtol=1e-5)
    post = L.posthoc_logit_adjust(z16, n, 1.0)
    assert post.dtype == jnp.float32
    np.testing.assert_allclose(post, z_rounded - np_log_prior(n, 1.0), rtol=1e-5, atol=1e-5)


def test_no_gather_or_scatter_in_jaxprs():
    z, y, n = data()
    z = z.astype(np.float32)
    for fn in [lambda a: L.logit_adjusted_loss(a, y, n, 1.0), lambda a: L.balanced_softmax_loss(a, y, n)]:
        text = str(jax.make_jaxpr(jax.value_and_grad(fn))(z))
        assert "gather" not in text and "scatter" not in text


# ----------------------------------------------------------------------------------------------
# bad inputs
# ----------------------------------------------------------------------------------------------

Z4 = np.zeros((3, 4), np.float32)
Y4 = np.array([0, 1, 3])


def test_balanced_softmax_rejects_zero_counts():
    with pytest.raises(ValueError, match=r"class_counts must be > 0.*1: 0\.0"):
        L.balanced_softmax_loss(Z4, Y4, [5, 0, 2, 1])
    with pytest.raises(ValueError, match=r"class_counts must be > 0.*3: -1\.0"):
        L.balanced_softmax_loss(Z4, Y4, [5, 1, 2, -1])


def test_logit_adjustment_counts():
    z, y, n = data()
    n = n.astype(np.float64)
    n[3] = 0  # allowed: log(0 + 1e-12) = -27.6, as in the official code
    loss = L.logit_adjusted_loss(z, y, n)
    assert np.isfinite(loss)
    np.testing.assert_allclose(loss, np_softmax_ce(z, y, np_log_prior(n, 1.0))[0], rtol=1e-5)
    for fn in [lambda c: L.logit_adjusted_loss(Z4, Y4, c), lambda c: L.posthoc_logit_adjust(Z4, c), L.log_prior]:
        with pytest.raises(ValueError, match=r"all zero"):
            fn([0, 0, 0, 0])
        with pytest.raises(ValueError, match=r"class_counts must be > 0.*2: -3\.0"):
            fn([1, 0, -3, 2])
        with pytest.raises(ValueError, match=r"finite.*1: nan"):
            fn([1.0, float("nan"), 2.0, 1.0])


@pytest.mark.parametrize("name", ["la", "bs", "posthoc"])
def test_wrong_length_counts(name):
    fn = {"la": lambda z, c: L.logit_adjusted_loss(z, Y4, c),
          "bs": lambda z, c: L.balanced_softmax_loss(z, Y4, c),
          "posthoc": lambda z, c: L.posthoc_logit_adjust(z, c)}[name]
    with pytest.raises(ValueError, match="class_counts has length 3 but the logits have C=4"):
        fn(Z4, [1, 2, 3])
    with pytest.raises(ValueError, match="class_counts has length 5 but the logits have C=4"):
        jax.jit(fn)(Z4, jnp.ones(5))  # static check, also with traced counts
    with pytest.raises(ValueError, match="1-D"):
        fn(Z4, [[1, 2], [3, 4]])


def test_bad_tau_labels_logits():
    with pytest.raises(ValueError, match=r"tau must be a scalar"):
        L.logit_adjusted_loss(Z4, Y4, [1, 2, 3, 4], tau=np.ones(4))
    with pytest.raises(ValueError, match=r"tau must be finite"):
        L.posthoc_logit_adjust(Z4, [1, 2, 3, 4], float("inf"))
    with pytest.raises(ValueError, match=r"\[0, 4\).*1: 4"):
        L.balanced_softmax_loss(Z4, np.array([0, 4, 1]), [1, 2, 3, 4])
    with pytest.raises(TypeError, match="integer"):
        L.logit_adjusted_loss(Z4, np.array([0.0, 1.0, 2.0]), [1, 2, 3, 4])
    with pytest.raises(TypeError, match="floating"):
        L.posthoc_logit_adjust(np.zeros((3, 4), np.int32), [1, 2, 3, 4])
