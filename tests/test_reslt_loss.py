"""Tests of the ResLT loss and class groups (official ResLT code) against reference values
and independent NumPy references.

docs/parity.md ("Reference numbers") gives the official-code values L_ice = 0.522097,
L_fce = 0.217686, L = 0.520575 (beta 0.995) and 0.436862 (beta 0.72) for C = 4, M = {2, 3}, T = {3}, but not the logits they came from. The worked-value
test therefore builds logits in closed form (NumPy, float64) whose ResLT components are exactly those two
numbers, with masked-out entries set to values that would change the result if they were not masked, and
checks the loss reproduces the reference totals. The official formula itself (normalisation, epsilon, masks,
two branches, label smoothing, the ImageNet-LT fused CE) is checked against a NumPy restatement of the
official ``crossEntropy`` / ``ResLTLoss`` on random inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from ride_jax import losses as L

L_ICE, L_FCE = 0.522097, 0.217686  # official ResLT loss (docs/parity.md, Reference numbers)


@pytest.fixture
def x64():
    """Enables float64 for one test and restores the previous setting afterwards."""
    with jax.enable_x64(True):
        yield


# ----------------------------------------------------------------------------------------------
# independent NumPy reference: a restatement of the official code, float64
# ----------------------------------------------------------------------------------------------

def np_softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_official_ce(logit, y, weight, num_classes, delta=0.0):
    """Official crossEntropy: -(weight * (target * log(softmax + 1e-7)).sum(1)).sum(), smoothed target."""
    onehot = np.eye(num_classes)[y]
    target = (1 - delta - delta / (num_classes - 1)) * onehot + delta / (num_classes - 1)
    return -(np.asarray(weight, np.float64) * (target * np.log(np_softmax(logit) + 1e-7)).sum(1)).sum()


def np_reslt(z, y, masks, beta, delta=0.0, fused="plain"):
    """Official ResLTLoss; masks = [v] (2 branches) or [v, t] (3 branches)."""
    z = np.asarray(z, np.float64)
    c = z.shape[-1]
    weights = [np.ones(len(y))] + [np.asarray(m, np.float64) for m in masks]
    ice = sum(np_official_ce(z[k], y, weights[k], c, delta) for k in range(len(weights))) / sum(
        w.sum() for w in weights)
    s = z.sum(0)
    if fused == "plain":  # nn.CrossEntropyLoss
        fce = -np.mean(np.log(np_softmax(s))[np.arange(len(y)), y])
    else:  # crossEntropy(..., labelH) / labelH.sum()
        fce = np_official_ce(s, y, np.ones(len(y)), c, delta) / len(y)
    return beta * ice + (1 - beta) * fce, ice, fce


def random_case(seed, k=3, b=16, c=10, scale=4.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(k, b, c)) * scale
    y = rng.integers(0, c, size=b)
    v = y >= c // 3
    t = y >= (2 * c) // 3
    return z, y, v, t


# ----------------------------------------------------------------------------------------------
# worked values of the official ResLT loss (docs/parity.md, Reference numbers)
# ----------------------------------------------------------------------------------------------

def spec_worked_inputs():
    """C = 4, M = {2, 3}, T = {3}, labels [0, 2, 3]: logits whose L_ice / L_fce are the reference values.

    Every active (branch, example) term is l = -log(softmax(a e_y)_y + 1e-7) = L_ICE, with
    e^a = 3q / (1 - q), q = exp(-L_ICE) - 1e-7. Example 2 (tail) has all three branches = a e_3, so its
    fused CE is log(1 + 3 e^{-3a}); the inactive entries of examples 0 and 1 are chosen so that their summed
    logits are c e_y + const with fused CE r = (3 L_FCE - CE_2) / 2 each.
    """
    q = np.exp(-L_ICE) - 1e-7
    a = np.log(3 * q / (1 - q))
    ce2 = np.log1p(3 * np.exp(-3 * a))
    r = (3 * L_FCE - ce2) / 2
    s = np.exp(-r)
    c = np.log(3 * s / (1 - s))
    e = np.eye(4)
    g0 = np.array([5.0, -7.0, 2.0, 11.0])  # M branch of a head example: not trained, loss ~6 if it were
    z = np.zeros((3, 3, 4))
    z[:, 0] = [a * e[0], g0, (c - a) * e[0] - g0 + 4.0]
    z[:, 1] = [a * e[2], a * e[2] - 3.0, (c - 2 * a) * e[2] + 5.5]
    z[:, 2] = [a * e[3], a * e[3] + 1.0, a * e[3] - 2.0]
    y = np.array([0, 2, 3])
    return z, y, np.isin(y, [2, 3]), np.isin(y, [3])


@pytest.mark.parametrize("beta, total", [(0.995, 0.520575), (0.72, 0.436862)])
def test_spec_worked_values_f64(x64, beta, total):
    z, y, v, t = spec_worked_inputs()
    loss, aux = L.reslt_loss(z, y, v, t, beta)
    assert loss.dtype == jnp.float64
    np.testing.assert_allclose(float(aux["ice"]), L_ICE, rtol=1e-10)
    np.testing.assert_allclose(float(aux["fce"]), L_FCE, rtol=1e-10)
    np.testing.assert_allclose(float(loss), total, atol=1e-6)  # reference rounded to 6 digits
    np.testing.assert_array_equal(np.asarray(aux["branch_count"]), [3.0, 2.0, 1.0])
    np.testing.assert_allclose(float(loss), np_reslt(z, y, [v, t], beta)[0], rtol=1e-10)


@pytest.mark.parametrize("beta, total", [(0.995, 0.520575), (0.72, 0.436862)])
def test_spec_worked_values_f32(beta, total):
    z, y, v, t = spec_worked_inputs()
    loss, aux = L.reslt_loss(z.astype(np.float32), y, v, t, beta)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(float(aux["ice"]), L_ICE, rtol=1e-5)
    np.testing.assert_allclose(float(aux["fce"]), L_FCE, rtol=1e-5)
    np.testing.assert_allclose(float(loss), total, rtol=1e-5)


def test_worked_inputs_are_sensitive_to_masking(x64):
    """Guards the worked-value test: training M and T on every example would give a different L_ice."""
    z, y, v, t = spec_worked_inputs()
    ones = np.ones(3, bool)
    _, aux = L.reslt_loss(z, y, ones, ones, 0.995)
    assert abs(float(aux["ice"]) - L_ICE) > 0.1


# ----------------------------------------------------------------------------------------------
# official formula on random inputs
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fused", ["plain", "eps"])
@pytest.mark.parametrize("delta", [0.0, 0.1])
def test_matches_official_numpy_three_branches(x64, fused, delta):
    z, y, v, t = random_case(0)
    for beta in (0.0, 0.72, 1.0):
        loss, aux = L.reslt_loss(z, y, v, t, beta, fused_ce=fused, label_smoothing=delta)
        ref, ice, fce = np_reslt(z, y, [v, t], beta, delta, fused)
        np.testing.assert_allclose(float(loss), ref, rtol=1e-10)
        np.testing.assert_allclose(float(aux["ice"]), ice, rtol=1e-10)
        np.testing.assert_allclose(float(aux["fce"]), fce, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(aux["summed_logits"]), z.sum(0), rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(aux["branch_count"]), [16, v.sum(), t.sum()])


def test_matches_official_numpy_two_branches_inat(x64):
    """iNat: H and M only, denominator B + sum v, fused CE on z_H + z_M."""
    z, y, v, _ = random_case(1, k=2)
    loss, aux = L.reslt_loss(z, y, v, None, 0.85)
    ref, ice, fce = np_reslt(z, y, [v], 0.85)
    np.testing.assert_allclose([float(loss), float(aux["ice"]), float(aux["fce"])], [ref, ice, fce], rtol=1e-10)
    assert aux["branch_nll_sum"].shape == (2,)


def test_normalisation_is_over_all_masked_terms(x64):
    """Hand-made: one head, one tail example; l of each term known in closed form."""
    y = np.array([0, 1])
    # C = 2, zeros give p = 1/2 everywhere: every term is -log(0.5 + 1e-7); make the tail example's T branch
    # confident so its term is -log(1/(1+e^-6) + 1e-7): the official mean is over 2 + 1 + 1 = 4 terms.
    z = np.zeros((3, 2, 2))
    z[2, 1] = [0.0, 6.0]
    v = np.array([False, True])
    t = np.array([False, True])
    l_half = -np.log(0.5 + 1e-7)
    l_conf = -np.log(1 / (1 + np.exp(-6.0)) + 1e-7)
    _, aux = L.reslt_loss(z, y, v, t, 1.0)
    np.testing.assert_allclose(float(aux["ice"]), (3 * l_half + l_conf) / 4, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(aux["branch_nll_sum"]), [2 * l_half, l_half, l_conf], rtol=1e-12)


def test_epsilon_bounds_the_per_branch_term(x64):
    """-log(p + 1e-7) <= -log(1e-7) even when p underflows; the plain fused CE is not bounded."""
    z = np.zeros((3, 1, 3))
    z[:, 0] = [0.0, 0.0, 2000.0]  # label 0: p_0 = 0 in float64
    loss, aux = L.reslt_loss(z, np.array([0]), np.array([False]), np.array([False]), 1.0)
    np.testing.assert_allclose(float(aux["ice"]), -np.log(1e-7), rtol=1e-12)
    np.testing.assert_allclose(float(aux["fce"]), 6000.0, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# empty branches
# ----------------------------------------------------------------------------------------------

def test_batch_without_tail_examples(x64):
    z, y, v, _ = random_case(2)
    y = np.where(y >= 6, y - 6, y)  # no class >= 6: no tail example
    v = y >= 3
    t = np.zeros(16, bool)
    z[2] = 1e4 * np.sign(z[2])  # garbage tail logits: must not matter for L_ice, must not give NaN

    def f(zz, beta):
        return L.reslt_loss(zz, y, v, t, beta)

    loss, aux = f(z, 1.0)
    expected = (np_official_ce(z[0], y, np.ones(16), 10) + np_official_ce(z[1], y, v, 10)) / (16 + v.sum())
    np.testing.assert_allclose(float(loss), expected, rtol=1e-10)
    assert float(aux["branch_nll_sum"][2]) == 0.0 and float(aux["branch_count"][2]) == 0.0
    g = jax.grad(lambda zz: f(zz, 1.0)[0])(z)
    assert np.all(np.isfinite(g))
    assert np.all(np.asarray(g[2]) == 0.0)  # the tail branch is untrained by L_ice
    g = jax.grad(lambda zz: f(zz, 0.9)[0])(z)
    assert np.all(np.isfinite(g))


def test_batch_of_head_only_examples(x64):
    z, y, _, _ = random_case(3, b=6)
    y = np.zeros(6, int)
    none = np.zeros(6, bool)
    loss, aux = L.reslt_loss(z, y, none, none, 0.5)
    ref = np_reslt(z, y, [none, none], 0.5)[0]
    np.testing.assert_allclose(float(loss), ref, rtol=1e-10)
    np.testing.assert_array_equal(np.asarray(aux["branch_count"]), [6.0, 0.0, 0.0])


# ----------------------------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fused, delta", [("plain", 0.0), ("eps", 0.1)])
def test_gradients_vs_finite_differences(x64, fused, delta):
    z, y, v, t = random_case(4, b=6, c=5, scale=2.0)
    check_grads(lambda zz: L.reslt_loss(zz, y, v, t, 0.8, fused_ce=fused, label_smoothing=delta)[0],
                (z,), order=1, modes=("fwd", "rev"), atol=1e-7, rtol=1e-7)
    check_grads(lambda b: L.reslt_loss(z, y, v, t, b, fused_ce=fused, label_smoothing=delta)[0],
                (0.3,), order=1, modes=("rev",), atol=1e-7, rtol=1e-7)


def test_gradient_closed_form(x64):
    """beta = 1, one example in every group: d l / d z = -(p_y / (p_y + eps)) (onehot - p) / 3."""
    z = np.random.default_rng(5).normal(size=(3, 1, 4)) * 3
    y = np.array([3])
    g = jax.grad(lambda zz: L.reslt_loss(zz, y, np.array([1]), np.array([1]), 1.0)[0])(z)
    p = np_softmax(z[:, 0])
    expected = -(p[:, 3:4] / (p[:, 3:4] + 1e-7)) * (np.eye(4)[3] - p) / 3
    np.testing.assert_allclose(np.asarray(g)[:, 0], expected, rtol=1e-10, atol=1e-15)


# ----------------------------------------------------------------------------------------------
# jit / vmap / dtypes
# ----------------------------------------------------------------------------------------------

def test_jit_with_traced_masks_and_beta():
    z, y, v, t = random_case(6)
    z = z.astype(np.float32)
    eager = L.reslt_loss(z, y, v, t, 0.99)[0]
    jitted = jax.jit(lambda zz, yy, vv, tt, b: L.reslt_loss(zz, yy, vv, tt, b)[0])(z, y, v, t, 0.99)
    np.testing.assert_allclose(float(jitted), float(eager), rtol=1e-6)
    np.testing.assert_allclose(float(eager), np_reslt(z, y, [v, t], 0.99)[0], rtol=1e-5)


def test_vmap_over_experts_sums_like_the_official_loop():
    """ResLT on RIDE: the loss is the sum over experts of the per-expert ResLT loss."""
    rng = np.random.default_rng(7)
    z = (rng.normal(size=(3, 3, 8, 10)) * 4).astype(np.float32)  # [E, K, B, C]
    y = rng.integers(0, 10, size=8)
    groups = L.reslt_index_groups(**L.RESLT_CIFAR_GROUPS["cifar10"])
    v, t = L.reslt_example_masks(groups, y)

    def f(zz):
        return jax.vmap(lambda ze: L.reslt_loss(ze, y, v, t, 0.99)[0])(zz).sum()

    looped = sum(np_reslt(z[e], y, [np.asarray(v), np.asarray(t)], 0.99)[0] for e in range(3))
    np.testing.assert_allclose(float(jax.jit(f)(z)), looped, rtol=1e-5)
    g = jax.jit(jax.grad(f))(z)
    assert g.shape == z.shape and np.all(np.isfinite(g))


def test_dtypes_follow_inputs():
    z, y, v, t = random_case(8, b=4)

    def dtype_of(zz):
        return jax.eval_shape(lambda: L.reslt_loss(zz, y, v, t, 0.9)[0]).dtype

    assert dtype_of(z.astype(np.float32)) == jnp.float32
    assert dtype_of(jnp.asarray(z, jnp.bfloat16)) == jnp.float32
    with jax.enable_x64(True):
        assert dtype_of(z) == jnp.float64
        assert dtype_of(z.astype(np.float32)) == jnp.float32


def test_no_gather_or_scatter_in_jaxpr():
    z, y, v, t = random_case(9, b=4)
    groups = L.reslt_index_groups(10, 3, 6)

    def f(zz, yy):
        vv, tt = L.reslt_example_masks(groups, yy)
        return L.reslt_loss(zz, yy, vv, tt, 0.9)[0]

    text = str(jax.make_jaxpr(jax.value_and_grad(f))(z.astype(np.float32), y))
    assert "gather" not in text and "scatter" not in text


# ----------------------------------------------------------------------------------------------
# class groups
# ----------------------------------------------------------------------------------------------

def test_cifar100_official_groups():
    g = L.reslt_index_groups(**L.RESLT_CIFAR_GROUPS["cifar100"])
    np.testing.assert_array_equal(g.medium_tail, np.r_[np.zeros(35, bool), np.ones(65, bool)])
    np.testing.assert_array_equal(g.tail, np.r_[np.zeros(70, bool), np.ones(30, bool)])
    np.testing.assert_array_equal(g.class_map, np.arange(100))


def test_cifar10_official_groups():
    g = L.reslt_index_groups(**L.RESLT_CIFAR_GROUPS["cifar10"])
    f, T = False, True
    np.testing.assert_array_equal(g.medium_tail, [f, f, T, T, T, T, T, T, T, T])
    np.testing.assert_array_equal(g.tail, [f, f, f, f, T, T, T, T, T, T])


def test_example_masks_from_labels():
    g = L.reslt_index_groups(**L.RESLT_CIFAR_GROUPS["cifar100"])
    y = np.array([0, 34, 35, 69, 70, 99])
    for v, t in (L.reslt_example_masks(g, y), jax.jit(lambda yy: L.reslt_example_masks(g, yy))(y)):
        np.testing.assert_array_equal(np.asarray(v), [False, False, True, True, True, True])
        np.testing.assert_array_equal(np.asarray(t), [False, False, False, False, True, True])
        assert v.dtype == jnp.bool_


def test_frequency_groups_with_ties_use_stable_order():
    counts = np.array([5, 3, 3, 3, 9, 1])
    # ascending stable order: class 5 (1), classes 1, 2, 3 (3, by index), class 0 (5), class 4 (9)
    g = L.reslt_frequency_groups(counts, medium_tail_size=3, tail_size=2)
    np.testing.assert_array_equal(g.class_map, [4, 1, 2, 3, 5, 0])
    # the tie {1, 2, 3} straddles the medium+tail boundary: the lower indices 1, 2 join, 3 does not
    np.testing.assert_array_equal(g.medium_tail, [False, True, True, False, False, True])
    np.testing.assert_array_equal(g.tail, [False, True, False, False, False, True])
    # same counts in a different class order: the tie is still broken by original index
    g2 = L.reslt_frequency_groups(counts[::-1], 3, 2)  # [1, 9, 3, 3, 3, 5]: tie {2, 3, 4}, 2 and 3 join
    np.testing.assert_array_equal(g2.medium_tail, [True, False, True, True, False, False])
    np.testing.assert_array_equal(g2.class_map, [0, 5, 1, 2, 3, 4])


def test_frequency_groups_imagenet_sizes_and_two_branch_inat():
    rng = np.random.default_rng(10)
    counts = rng.permutation(np.arange(5, 1005))  # 1000 distinct counts
    g = L.reslt_frequency_groups(counts, **L.RESLT_FREQUENCY_GROUPS["imagenet_lt"])
    np.testing.assert_array_equal(g.medium_tail, counts < 5 + 825)  # the 825 rarest classes
    np.testing.assert_array_equal(g.tail, counts < 5 + 220)
    np.testing.assert_array_equal(g.class_map, counts - 5)
    g = L.reslt_frequency_groups(counts, medium_tail_size=600, tail_size=None)
    assert g.tail is None and int(g.medium_tail.sum()) == 600
    v, t = L.reslt_example_masks(g, np.array([int(np.argmin(counts)), int(np.argmax(counts))]))
    assert t is None
    np.testing.assert_array_equal(np.asarray(v), [True, False])
    assert L.RESLT_FREQUENCY_GROUPS["inat2018"] == {"medium_tail_size": 6600, "tail_size": None}


# ----------------------------------------------------------------------------------------------
# bad inputs
# ----------------------------------------------------------------------------------------------

def test_loss_errors():
    z, y, v, t = random_case(11, b=4, c=5)
    z = z.astype(np.float32)
    with pytest.raises(ValueError, match=r"3-D \[num_branches, batch, num_classes\].*\(4, 5\)"):
        L.reslt_loss(z[0], y, v, t, 0.9)
    with pytest.raises(ValueError, match="4 branches; ResLT uses 3"):
        L.reslt_loss(np.concatenate([z, z[:1]]), y, v, t, 0.9)
    with pytest.raises(ValueError, match="tail_mask is None but branch_logits has 3 branches"):
        L.reslt_loss(z, y, v, None, 0.9)
    with pytest.raises(ValueError, match="tail_mask must be None with 2 branches"):
        L.reslt_loss(z[:2], y, v, t, 0.9)
    with pytest.raises(ValueError, match=r"medium_tail_mask has shape \(3,\) but \(4,\) is expected"):
        L.reslt_loss(z, y, v[:3], t, 0.9)
    with pytest.raises(ValueError, match=r"tail_mask has shape \(4, 5\)"):
        L.reslt_loss(z, y, v, np.ones((4, 5), bool), 0.9)
    with pytest.raises(ValueError, match=r"labels has shape \(3,\) but shape \(4,\)"):
        L.reslt_loss(z, y[:3], v, t, 0.9)
    with pytest.raises(ValueError, match=r"\[0, 5\).*0: 7"):
        L.reslt_loss(z, np.array([7, 0, 1, 2]), v, t, 0.9)
    with pytest.raises(TypeError, match="integer"):
        L.reslt_loss(z, y.astype(np.float32), v, t, 0.9)
    with pytest.raises(TypeError, match="floating-point"):
        L.reslt_loss(z.astype(np.int32), y, v, t, 0.9)
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"beta=.* must lie in \[0, 1\]"):
            L.reslt_loss(z, y, v, t, bad)
    with pytest.raises(ValueError, match="beta must be a scalar"):
        L.reslt_loss(z, y, v, t, np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"fused_ce='ce'.*'plain', 'eps'"):
        L.reslt_loss(z, y, v, t, 0.9, fused_ce="ce")
    with pytest.raises(ValueError, match=r"label_smoothing=1.0 must lie in \[0, 1\)"):
        L.reslt_loss(z, y, v, t, 0.9, label_smoothing=1.0)
    with pytest.raises(ValueError, match="empty batch"):
        L.reslt_loss(z[:, :0], y[:0], v[:0], t[:0], 0.9)
    # a traced beta cannot be range-checked: no error under jit
    assert np.isfinite(float(jax.jit(lambda b: L.reslt_loss(z, y, v, t, b)[0])(1.5)))


def test_group_errors():
    with pytest.raises(ValueError, match="tail_start=30 < medium_start=35"):
        L.reslt_index_groups(100, 35, 30)
    with pytest.raises(ValueError, match=r"medium_start=101 must lie in \[0, 100\]"):
        L.reslt_index_groups(100, 101, None)
    with pytest.raises(ValueError, match="num_classes must be an integer"):
        L.reslt_index_groups(10.0, 2, 4)
    with pytest.raises(ValueError, match="tail_size=5 > medium_tail_size=3"):
        L.reslt_frequency_groups([1, 2, 3, 4, 5, 6], 3, 5)
    with pytest.raises(ValueError, match=r"medium_tail_size=7 must lie in \[0, 6\]"):
        L.reslt_frequency_groups([1, 2, 3, 4, 5, 6], 7)
    with pytest.raises(ValueError, match=r"finite and >= 0.*1: -2\.0"):
        L.reslt_frequency_groups([1, -2, 3], 1)
    with pytest.raises(ValueError, match="1-D and non-empty"):
        L.reslt_frequency_groups([[1, 2], [3, 4]], 1)
    with pytest.raises(TypeError, match="concrete"):
        jax.jit(lambda c: L.reslt_frequency_groups(c, 1))(jnp.ones(3))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        L.reslt_example_masks(L.reslt_index_groups(10, 2, 4), np.array([10]))
