"""Tests of ride_jax.losses against the official-code fixtures and independent numpy references.

Fixtures (tests/data, produced by the official PyTorch RIDE code): ``*_f64`` keys are checked with
the float64 path (x64 enabled) to 1e-10 relative; ``*_f32`` keys with the float32 path to ~1e-5.
Spec 3.4 values are the official float32 numbers printed to 6-7 digits.
"""

from __future__ import annotations

import json
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ride_jax import losses as L

DATA = pathlib.Path(__file__).parent / "data"
CW = np.load(DATA / "class_weights_c10_lt_r100.npz")
LDAM = np.load(DATA / "ldam_loss_c10.npz")
RIDE = np.load(DATA / "ride_loss_c10_e3.npz")
ARGS = json.loads((DATA / "loss_constructor_args.json").read_text())
RIDE_ARGS = ARGS["RIDE_ARGS"]
LDAM_ARGS = ARGS["LDAM_ARGS"]
EPOCHS = [int(e) for e in ARGS["EPOCHS"]]

# Tolerances per precision: (rtol, atol)
TOL = {"f64": (1e-10, 1e-14), "f32": (1e-5, 1e-7)}


@pytest.fixture
def x64():
    """Enables float64 for one test and restores the previous setting afterwards."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(params=["f64", "f32"])
def precision(request):
    """Runs a test once with x64 (float64 arrays) and once without (float32 arrays)."""
    if request.param == "f64":
        with jax.enable_x64(True):
            yield "f64", np.float64
    else:
        yield "f32", np.float32


def close(actual, expected, prec, rtol=None, atol=None):
    r, a = TOL[prec]
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                               rtol=r if rtol is None else rtol, atol=a if atol is None else atol)


# ----------------------------------------------------------------------------------------------
# independent numpy references
# ----------------------------------------------------------------------------------------------

def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_ce(logits, y, w=None):
    l = -np_log_softmax(logits)[np.arange(len(y)), y]
    wi = np.ones_like(l) if w is None else np.asarray(w, np.float64)[y]
    return (wi * l).sum() / wi.sum()


def np_kl(target, logits, T=1.0):
    lp = np_log_softmax(np.asarray(target) / T)
    lq = np_log_softmax(np.asarray(logits) / T)
    return (np.exp(lp) * (lp - lq)).sum() / np.asarray(logits).shape[0]


def cifar100_lt_counts():
    return np.array([int(500 * 0.01 ** (c / 99)) for c in range(100)])


# RIDE loss worked example, inputs (docs/parity.md, Reference numbers)
S_Z1 = np.array([[9, -3, 6, -12], [1.5, 12, -6, 3], [-4.5, 0, 7.5, 10.5]])
S_Z2 = np.array([[6, 3, -1.5, -9], [4.5, 7.5, -3, 6], [-6, 1.5, 4.5, 13.5]])
S_Z = np.stack([S_Z1, S_Z2]).astype(np.float32)
S_T = np.array([[8, 0, 2, -10], [2, 11, -5, 4], [-5, 1, 6, 12]], np.float32)
S_Y = np.array([0, 1, 3])
S_N = [100, 40, 10, 2]


# ----------------------------------------------------------------------------------------------
# per-class vectors
# ----------------------------------------------------------------------------------------------

def test_class_vectors_match_fixture_f64(x64):
    counts = CW["counts"]
    m = L.ldam_margins(counts, RIDE_ARGS["max_m"])
    w = L.drw_weights(counts, 0.9999)
    t = L.diversity_temperatures(counts, RIDE_ARGS["reweight_factor"], RIDE_ARGS["base_diversity_temperature"])
    for arr in (m, w, t):
        assert arr.dtype == jnp.float64
    close(m, CW["ldam_margin_m_list_f64"], "f64", atol=0)
    close(w, CW["drw_weights_f64"], "f64", atol=0)
    close(t, CW["diversity_temperature_f64"], "f64", atol=0)
    close(t, CW["diversity_weights_f64"], "f64", atol=0)  # alpha = 1
    close(jnp.mean(t), CW["diversity_temperature_mean_f64"], "f64", atol=0)
    np.testing.assert_allclose(float(jnp.sum(w)), len(counts), rtol=1e-14)


def test_class_vectors_match_fixture_f32():
    counts = CW["counts"].tolist()  # python list input
    m = L.ldam_margins(counts)
    w = L.drw_weights(counts)
    t = L.diversity_temperatures(counts, 0.05)
    for arr in (m, w, t):
        assert arr.dtype == jnp.float32
    close(m, CW["ldam_margin_m_list_f32"], "f32", rtol=2e-7)
    close(w, CW["drw_weights_f32"], "f32", rtol=2e-7)
    close(t, CW["diversity_temperature_f32"], "f32", rtol=2e-7)
    close(jnp.mean(t), CW["diversity_temperature_mean_f32"], "f32", rtol=2e-7)


def test_class_vectors_dtype_argument(x64):
    assert L.ldam_margins([5, 3], dtype=jnp.float32).dtype == jnp.float32
    assert L.drw_weights(np.array([5, 3]), dtype=jnp.float64).dtype == jnp.float64


def test_spec_worked_class_vectors():
    np.testing.assert_allclose(L.ldam_margins(S_N), [0.188030, 0.236435, 0.334370, 0.5], atol=2e-6)
    np.testing.assert_allclose(L.drw_weights(S_N), [0.063288, 0.157746, 0.630038, 3.148929], atol=2e-6)
    np.testing.assert_allclose(L.diversity_temperatures(S_N, 0.05), [1.0, 0.927007, 0.890511, 0.880779], atol=2e-6)


def test_cifar100_lt_vectors_and_paper_formula(x64):
    n = cifar100_lt_counts()
    assert n.sum() == 10847 and n[0] == 500 and n[-1] == 5  # docs/parity.md, Reference numbers
    gamma, alpha = 0.05, 1.0
    b = gamma * 100 * n / n.sum() + (1 - gamma)  # hand computation
    official = L.diversity_temperatures(n, gamma, alpha)
    paper = L.diversity_temperatures(n, gamma, alpha, formula="paper")
    np.testing.assert_allclose(official, alpha * b / b.max(), rtol=1e-12)
    np.testing.assert_allclose(paper, alpha * (b + 1 - b.max()), rtol=1e-12)
    # reference numbers of the official code (docs/parity.md); paper formula's tail 0.7718
    np.testing.assert_allclose(float(official[-1]), 0.806711, atol=1e-6)
    np.testing.assert_allclose(float(jnp.mean(official)), 0.847114, atol=1e-6)
    np.testing.assert_allclose(float(official[-1]), 0.8067, atol=5e-5)
    np.testing.assert_allclose(float(paper[-1]), 0.7718, atol=5e-5)
    assert float(paper[0]) == float(official[0]) == alpha  # they agree for the head class only
    # paper formula with a non-unit alpha scales the whole vector
    np.testing.assert_allclose(L.diversity_temperatures(n, gamma, 2.0, "paper"), 2.0 * (b + 1 - b.max()), rtol=1e-12)
    # CIFAR-100-LT margins and DRW weights (docs/parity.md, Reference numbers)
    m, w = L.ldam_margins(n), L.drw_weights(n)
    np.testing.assert_allclose([m[0], m[-1]], [0.158114, 0.5], atol=1e-6)
    np.testing.assert_allclose([w[0], w[-1]], [0.044876, 4.378313], atol=1e-6)


# ----------------------------------------------------------------------------------------------
# LDAM loss vs fixture
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("epoch", EPOCHS)
def test_ldam_loss_matches_fixture(epoch, precision):
    prec, dt = precision
    re = LDAM_ARGS["reweight_epoch"]
    vec = L.ride_schedule(LDAM["counts"], epoch, re, max_margin=LDAM_ARGS["max_m"])
    assert L.reweighting_active(epoch, re) == bool(LDAM[f"ep{epoch}_weights_active"])
    logits = jnp.asarray(LDAM["logits"].astype(dt))
    y = LDAM["targets"]
    s = float(LDAM_ARGS["s"])

    def f(z):
        return L.ldam_loss(z, y, vec.margins, s, vec.class_weights)

    loss, grad = jax.value_and_grad(f)(logits)
    assert loss.dtype == dt and grad.dtype == dt
    close(loss, LDAM[f"ep{epoch}_loss_{prec}"], prec)
    close(grad, LDAM[f"ep{epoch}_grad_logits_{prec}"], prec)
    close(L.ldam_margin_logits(logits, y, vec.margins, s), LDAM[f"ep{epoch}_margin_logits_{prec}"], prec)


def test_ldam_loss_none_weights_equals_ones():
    z, y, n = LDAM["logits"].astype(np.float32), LDAM["targets"], LDAM["counts"]
    m = L.ldam_margins(n)
    a = L.ldam_loss(z, y, m)
    b = L.ldam_loss(z, y, m, class_weights=jnp.ones(10))
    assert float(a) == float(b)
    # and the numpy reference of the weighted mean
    w = np.asarray(L.drw_weights(n), np.float64)
    zm = LDAM["logits"] - 30 * np.eye(10)[y] * np.asarray(m, np.float64)
    np.testing.assert_allclose(L.ldam_loss(z, y, m, 30.0, w), np_ce(zm, y, w), rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# RIDE loss vs fixture
# ----------------------------------------------------------------------------------------------

def _ride_kwargs(epoch):
    vec = L.ride_schedule(
        RIDE["counts"], epoch, RIDE_ARGS["reweight_epoch"],
        max_margin=RIDE_ARGS["max_m"], reweight_factor=RIDE_ARGS["reweight_factor"],
        base_temperature=RIDE_ARGS["base_diversity_temperature"],
    )
    return dict(
        margins=vec.margins, class_weights=vec.class_weights, temperatures=vec.temperatures,
        diversity_factor=RIDE_ARGS["additional_diversity_factor"], scale=float(RIDE_ARGS["s"]),
        base_loss_factor=RIDE_ARGS["base_loss_factor"], base_temperature=RIDE_ARGS["base_diversity_temperature"],
    )


@pytest.mark.parametrize("epoch", EPOCHS)
def test_ride_loss_matches_fixture(epoch, precision):
    prec, dt = precision
    z = jnp.asarray(RIDE["expert_logits"].astype(dt))
    y = RIDE["targets"]
    kw = _ride_kwargs(epoch)

    (loss, aux), grad = jax.value_and_grad(lambda e: L.ride_loss(e, y, num_experts=3, **kw), has_aux=True)(z)
    assert loss.dtype == dt and grad.dtype == dt
    close(loss, RIDE[f"ep{epoch}_loss_{prec}"], prec)
    close(grad, RIDE[f"ep{epoch}_grad_expert_logits_{prec}"], prec)
    close(aux["per_expert_total"], RIDE[f"ep{epoch}_per_expert_total_{prec}"], prec)
    close(aux["per_expert_base"], RIDE[f"ep{epoch}_per_expert_ldam_term_{prec}"], prec)
    close(aux["per_expert_diversity"], RIDE[f"ep{epoch}_per_expert_diversity_term_{prec}"], prec)
    close(aux["mean_logits"], RIDE["mean_logits"], prec)
    # the diversity term as added is lambda * Tbar^2 * KL
    lam = RIDE_ARGS["additional_diversity_factor"]
    close(aux["per_expert_diversity"], lam * aux["temperature_mean"] ** 2 * aux["diversity_kl"], prec)
    # evaluation reports plain CE on the mean logits
    close(L.cross_entropy(aux["mean_logits"], y), RIDE[f"ep{epoch}_eval_plain_ce_{prec}"], prec)


@pytest.mark.parametrize("epoch", EPOCHS)
def test_ride_loss_leafmode_matches_fixture(epoch, precision):
    prec, dt = precision
    z = jnp.asarray(RIDE["expert_logits"].astype(dt))
    zbar = jnp.asarray(RIDE["mean_logits"].astype(dt))
    y = RIDE["targets"]
    kw = _ride_kwargs(epoch)

    def f(e, mbar):
        return L.ride_loss(e, y, mean_logits=mbar, **kw)[0]

    loss, (g_e, g_m) = jax.value_and_grad(f, argnums=(0, 1))(z, zbar)
    close(loss, RIDE[f"ep{epoch}_loss_{prec}"], prec)
    close(g_e, RIDE[f"ep{epoch}_leafmode_grad_expert_logits_{prec}"], prec)
    close(g_m, RIDE[f"ep{epoch}_leafmode_grad_mean_logits_{prec}"], prec)
    assert not np.any(np.asarray(g_m))


def test_ride_loss_independent_numpy_reference():
    """Per-expert terms against a from-scratch numpy implementation of official RIDE
    model/loss.py:216-247, RIDELoss.forward (epoch 161 vectors)."""
    z, y, n = RIDE["expert_logits"], RIDE["targets"], RIDE["counts"]
    with jax.enable_x64(True):
        loss, aux = L.ride_loss(z, y, **_ride_kwargs(170))
        m = np.asarray(L.ldam_margins(n))
        w = np.asarray(L.drw_weights(n))
        T = np.asarray(L.diversity_temperatures(n, 0.05))
    zbar = z.mean(0)
    oh = np.eye(10)[y]
    base = [np_ce(z[k] - 30 * oh * m, y, w) for k in range(3)]
    div = [-0.45 * T.mean() ** 2 * np_kl(zbar, z[k], T) for k in range(3)]
    np.testing.assert_allclose(aux["per_expert_base"], base, rtol=1e-12)
    np.testing.assert_allclose(aux["per_expert_diversity"], div, rtol=1e-12)
    np.testing.assert_allclose(float(loss), sum(base) + sum(div), rtol=1e-12)


@pytest.mark.parametrize(
    "epoch,lam,gamma,reweight_epoch,expected",
    [(1, -0.45, 0.05, 160, 9.761574), (161, -0.45, 0.05, 160, 17.19351), (81, -0.2, 0.02, 80, 17.225071)],
)
def test_spec_worked_ride_loss(epoch, lam, gamma, reweight_epoch, expected):
    vec = L.ride_schedule(S_N, epoch, reweight_epoch, reweight_factor=gamma)
    loss, _ = L.ride_loss(S_Z, S_Y, diversity_factor=lam, **vec._asdict())
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


@pytest.mark.parametrize("epoch,expected", [(1, 4.046739), (161, 8.534306)])
def test_spec_worked_ldam_on_mean(epoch, expected):
    vec = L.ride_schedule(S_N, epoch, 160)
    np.testing.assert_allclose(float(L.ldam_loss(S_Z.mean(0), S_Y, vec.margins, 30.0, vec.class_weights)),
                               expected, rtol=1e-6)


def test_spec_worked_ride_distill():
    vec = L.ride_schedule(S_N, 1, 160)
    loss, aux = L.ride_distill_loss(S_Z, S_Y, S_T, diversity_factor=-0.45, distill_temperature=1.5, **vec._asdict())
    np.testing.assert_allclose(float(loss), 19.548714, rtol=1e-6)
    np.testing.assert_allclose(float(aux["ride_loss"]), 9.761574, rtol=1e-6)
    np.testing.assert_allclose(float(aux["distill"]), 0.012783, atol=1e-6)
    # E * (RIDE + T^2 KL) with an independent numpy KD
    kd = 1.5 ** 2 * np_kl(S_T, S_Z.mean(0), 1.5)
    np.testing.assert_allclose(float(loss), 2 * (float(aux["ride_loss"]) + kd), rtol=1e-5)


def test_ride_distill_gradient(x64):
    """d/dz_k of E * KD(zbar) = E * T * (q - p) / (B * E): the student mean carries gradient."""
    z, y, t = S_Z.astype(np.float64), S_Y, S_T.astype(np.float64)
    vec = L.ride_schedule(S_N, 161, 160)
    kw = dict(diversity_factor=-0.45, **vec._asdict())
    g_total = jax.grad(lambda e: L.ride_distill_loss(e, y, t, distill_temperature=1.5, **kw)[0])(jnp.asarray(z))
    g_ride = jax.grad(lambda e: L.ride_loss(e, y, **kw)[0])(jnp.asarray(z))
    T = 1.5
    p, q = np.exp(np_log_softmax(t / T)), np.exp(np_log_softmax(z.mean(0) / T))
    g_kd = T * (q - p) / 3  # per expert, already multiplied by E / E
    np.testing.assert_allclose(g_total - 2 * g_ride, np.stack([g_kd, g_kd]), rtol=1e-10, atol=1e-14)


def test_distill_kl_numpy_and_gradient(x64):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 6, 5)) * 4
    np.testing.assert_allclose(L.distill_kl(s, t, 1.5), 2.25 * np_kl(t, s, 1.5), rtol=1e-12)
    np.testing.assert_allclose(L.distill_kl(s, t, 1.0), np_kl(t, s, 1.0), rtol=1e-12)
    g_t = jax.grad(lambda tt: L.distill_kl(s, tt))(t)  # teacher is detached
    assert not np.any(np.asarray(g_t))
    # analytic student gradient: T^2 * (q - p) / (T * B)
    T = 1.5
    p, q = np.exp(np_log_softmax(t / T)), np.exp(np_log_softmax(s / T))
    np.testing.assert_allclose(jax.grad(lambda ss: L.distill_kl(ss, t, T))(s), T * (q - p) / 6, rtol=1e-10, atol=1e-14)


# ----------------------------------------------------------------------------------------------
# schedule
# ----------------------------------------------------------------------------------------------

def test_ride_schedule_switch():
    n = RIDE["counts"]
    v1, v160, v161, v170 = (L.ride_schedule(n, e, 160, base_temperature=0.7) for e in (1, 160, 161, 170))
    for a, b in ((v1, v160), (v161, v170)):
        for fa, fb in zip(a, b):
            np.testing.assert_array_equal(fa, fb)
    np.testing.assert_array_equal(v1.class_weights, np.ones(10))
    np.testing.assert_array_equal(v1.temperatures, np.full(10, 0.7, np.float32))
    np.testing.assert_array_equal(v161.class_weights, L.drw_weights(n))
    np.testing.assert_array_equal(v161.temperatures, L.diversity_temperatures(n, 0.05, 0.7))
    np.testing.assert_array_equal(v1.margins, v161.margins)
    assert not np.allclose(v1.class_weights, v161.class_weights)


@pytest.mark.parametrize("alpha", [1.0, 0.7])
def test_inactive_vectors_exactly_equal_none(alpha):
    z, y = RIDE["expert_logits"].astype(np.float32), RIDE["targets"]
    v = L.ride_schedule(RIDE["counts"], 1, 160, base_temperature=alpha)
    a, aux_a = L.ride_loss(z, y, diversity_factor=-0.45, margins=v.margins, class_weights=v.class_weights,
                           temperatures=v.temperatures, base_temperature=alpha)
    b, aux_b = L.ride_loss(z, y, diversity_factor=-0.45, margins=v.margins, base_temperature=alpha)
    c, _ = L.ride_loss(z, y, diversity_factor=-0.45, margins=v.margins, temperatures=alpha)
    assert float(a) == float(b) == float(c)
    assert float(aux_a["temperature_mean"]) == float(aux_b["temperature_mean"]) == np.float32(alpha)


def test_select_class_vectors_traced_epoch_single_trace():
    n = RIDE["counts"]
    active = L.ride_class_vectors(n)
    z, y = RIDE["expert_logits"].astype(np.float32), RIDE["targets"]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(z, y, epoch):
        vec = L.select_class_vectors(epoch, 160, active)
        return L.ride_loss(z, y, diversity_factor=-0.45, **vec._asdict())[0]

    for epoch in EPOCHS:
        expected = L.ride_loss(z, y, diversity_factor=-0.45, **L.ride_schedule(n, epoch, 160)._asdict())[0]
        np.testing.assert_allclose(step(z, y, jnp.asarray(epoch)), expected, rtol=1e-6)
        sel = L.select_class_vectors(epoch, 160, active)
        ref = L.ride_schedule(n, epoch, 160)
        for a, b in zip(sel, ref):
            np.testing.assert_array_equal(a, b)


def test_jit_compiles_once_for_different_epoch_vectors():
    n = RIDE["counts"]
    z, y = RIDE["expert_logits"].astype(np.float32), RIDE["targets"]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def loss_fn(z, y, vec):
        return L.ride_loss(z, y, diversity_factor=-0.45, **vec._asdict())

    for epoch in EPOCHS:
        loss, aux = loss_fn(z, y, L.ride_schedule(n, epoch, 160))
        np.testing.assert_allclose(loss, RIDE[f"ep{epoch}_loss_f32"], rtol=1e-5)
        np.testing.assert_allclose(aux["per_expert_total"], RIDE[f"ep{epoch}_per_expert_total_f32"], rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# lambda == 0 special case
# ----------------------------------------------------------------------------------------------

def test_lambda_zero_is_E_times_ce_of_mean(x64):
    z, y, n = RIDE["expert_logits"], RIDE["targets"], RIDE["counts"]
    vec = L.ride_schedule(n, 161, 160)
    loss, aux = L.ride_loss(z, y, diversity_factor=0.0, **vec._asdict())
    m, w = np.asarray(vec.margins), np.asarray(vec.class_weights)
    zbar = z.mean(0)
    expected = 3 * np_ce(zbar - 30 * np.eye(10)[y] * m, y, w)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-12)
    np.testing.assert_array_equal(aux["per_expert_diversity"], 0.0)
    np.testing.assert_allclose(aux["per_expert_base"], np.full(3, expected / 3), rtol=1e-12)
    # base_loss='ce' ignores the margins
    loss_ce, _ = L.ride_loss(z, y, diversity_factor=0.0, base_loss="ce", class_weights=w)
    np.testing.assert_allclose(float(loss_ce), 3 * np_ce(zbar, y, w), rtol=1e-12)
    # gradient flows through the mean into every expert equally
    g = jax.grad(lambda e: L.ride_loss(e, y, diversity_factor=0, **vec._asdict())[0])(jnp.asarray(z))
    np.testing.assert_allclose(g[0], g[1], rtol=1e-12)
    np.testing.assert_allclose(g[0], g[2], rtol=1e-12)


def test_base_loss_factor_and_ce_base(x64):
    z, y, n = RIDE["expert_logits"], RIDE["targets"], RIDE["counts"]
    vec = L.ride_schedule(n, 170, 160)
    _, aux = L.ride_loss(z, y, diversity_factor=-0.45, base_loss_factor=0.25, **vec._asdict())
    w, T = np.asarray(vec.class_weights), np.asarray(vec.temperatures)
    m = np.asarray(vec.margins)
    oh = np.eye(10)[y]
    np.testing.assert_allclose(aux["per_expert_base"], [0.25 * np_ce(z[k] - 30 * oh * m, y, w) for k in range(3)],
                               rtol=1e-12)
    np.testing.assert_allclose(aux["per_expert_diversity"], RIDE["ep170_per_expert_diversity_term_f64"], rtol=1e-10)
    # base_loss='ce': weighted CE of each expert, no margin
    _, aux_ce = L.ride_loss(z, y, diversity_factor=-0.45, base_loss="ce", **vec._asdict())
    np.testing.assert_allclose(aux_ce["per_expert_base"], [np_ce(z[k], y, w) for k in range(3)], rtol=1e-12)


def test_traced_diversity_factor_matches_python():
    z, y = RIDE["expert_logits"].astype(np.float32), RIDE["targets"]
    vec = L.ride_schedule(RIDE["counts"], 161, 160)
    f = jax.jit(lambda lam: L.ride_loss(z, y, diversity_factor=lam, **vec._asdict())[0])
    for lam in (0.0, -0.45):
        np.testing.assert_allclose(f(jnp.float32(lam)), L.ride_loss(z, y, diversity_factor=lam, **vec._asdict())[0],
                                   rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# CE / focal / diversity KL
# ----------------------------------------------------------------------------------------------

def test_cross_entropy_numpy(x64):
    rng = np.random.default_rng(1)
    z, y = rng.normal(size=(7, 5)) * 5, rng.integers(0, 5, size=7)
    w = rng.uniform(0.1, 3, size=5)
    np.testing.assert_allclose(L.cross_entropy(z, y), np_ce(z, y), rtol=1e-12)
    np.testing.assert_allclose(L.cross_entropy(z, y, w), np_ce(z, y, w), rtol=1e-12)
    # [..., C] inputs: mean over all leading axes
    z3, y3 = rng.normal(size=(2, 3, 4)), rng.integers(0, 4, size=(2, 3))
    np.testing.assert_allclose(L.cross_entropy(z3, y3), np_ce(z3.reshape(6, 4), y3.reshape(6)), rtol=1e-12)


def test_focal_loss(x64):
    rng = np.random.default_rng(2)
    z, y = rng.normal(size=(9, 6)) * 3, rng.integers(0, 6, size=9)
    w = rng.uniform(0.1, 3, size=6)
    np.testing.assert_allclose(L.focal_loss(z, y, 0.0), L.cross_entropy(z, y), rtol=1e-14)
    ce_i = -np_log_softmax(z)[np.arange(9), y]
    np.testing.assert_allclose(L.focal_loss(z, y, 1.0), np.mean((1 - np.exp(-ce_i)) * ce_i), rtol=1e-12)
    np.testing.assert_allclose(L.focal_loss(z, y, 2.5), np.mean((1 - np.exp(-ce_i)) ** 2.5 * ce_i), rtol=1e-12)
    # weights are folded into the per-sample loss and the reduction is the plain mean (official FocalLoss)
    lw = w[y] * ce_i
    np.testing.assert_allclose(L.focal_loss(z, y, 1.0, w), np.mean((1 - np.exp(-lw)) * lw), rtol=1e-12)
    np.testing.assert_allclose(L.focal_loss(z, y, 0.0, w), np.mean(lw), rtol=1e-12)
    assert np.all(np.isfinite(jax.grad(lambda zz: L.focal_loss(zz, y, 1.0))(jnp.asarray(z))))


def test_diversity_kl_shapes_and_values(x64):
    z, zbar = RIDE["expert_logits"], RIDE["mean_logits"]
    T = np.asarray(L.diversity_temperatures(RIDE["counts"], 0.05))
    kl = L.diversity_kl(z, zbar, T)
    assert kl.shape == (3,)
    np.testing.assert_allclose(kl, [np_kl(zbar, z[k], T) for k in range(3)], rtol=1e-12)
    single = L.diversity_kl(z[1], zbar, T)
    assert single.shape == ()
    np.testing.assert_allclose(single, kl[1], rtol=1e-14)
    np.testing.assert_allclose(L.diversity_kl(z, zbar), [np_kl(zbar, z[k]) for k in range(3)], rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# routing
# ----------------------------------------------------------------------------------------------

# Expert logits (C = 2, all labels 0) built so that the running-sum ensembles have the
# official router example's correctness pattern [[1,0,0],[1,0,0],[0,0,1],[0,1,1]] (docs/parity.md).
ROUTE_Z = np.array([
    [[1, 0], [2, 0], [0, 1], [0, 1]],   # expert 0
    [[0, 3], [0, 5], [0, 1], [3, 0]],   # expert 1
    [[0, 0], [0, 1], [5, 0], [1, 0]],   # expert 2
], np.float32)
ROUTE_Y = np.zeros(4, np.int32)


def test_routing_targets_spec_example():
    correct = L.ensemble_correctness(ROUTE_Z, ROUTE_Y)
    np.testing.assert_array_equal(correct, np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 1, 1]], bool))
    t = L.routing_targets(ROUTE_Z, ROUTE_Y)
    assert t.shape == (4, 2) and t.dtype == jnp.float32
    np.testing.assert_array_equal(t[:, 0], [0, 0, 1, 1])
    np.testing.assert_array_equal(t[:, 1], [0, 0, 1, 0])


def test_routing_targets_ties_and_random():
    tie = np.array([[[1.0, 1.0]], [[0.0, 0.0]]], np.float32)  # acc stays tied: argmax -> class 0
    np.testing.assert_array_equal(L.ensemble_correctness(tie, np.array([0])), [[True, True]])
    np.testing.assert_array_equal(L.ensemble_correctness(tie, np.array([1])), [[False, False]])
    rng = np.random.default_rng(3)
    z = rng.normal(size=(4, 50, 3)).astype(np.float32)
    y = rng.integers(0, 3, size=50)
    acc = np.cumsum(z.astype(np.float64), axis=0)
    corr = (acc.argmax(-1) == y).T  # [B, E]
    ref = np.stack([~corr[:, i] & corr[:, i + 1:].any(1) for i in range(3)], 1)
    np.testing.assert_array_equal(L.routing_targets(z, y), ref.astype(np.float32))
    assert L.routing_targets(z[:1], y).shape == (50, 0)


def test_routing_loss_numpy(x64):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(16, 3)) * 3
    y = (rng.uniform(size=(16, 3)) < 0.3).astype(np.float64)
    sig = 1 / (1 + np.exp(-x))
    per = -(100.0 * y * np.log(sig) + (1 - y) * np.log(1 - sig))
    expected = per.mean(0).sum() / 3
    np.testing.assert_allclose(L.routing_loss(x, y, 100.0), expected, rtol=1e-12)
    per20 = -(20.0 * y * np.log(sig) + (1 - y) * np.log(1 - sig))
    np.testing.assert_allclose(L.routing_loss(x, y, 20.0), per20.mean(0).sum() / 3, rtol=1e-12)
    # stable for huge logits (naive log(sigmoid) would give inf)
    big = np.array([[200.0, -200.0]], np.float32)
    val = L.routing_loss(big, np.array([[0.0, 1.0]]), 100.0)
    np.testing.assert_allclose(val, (200.0 + 100.0 * 200.0) / 2, rtol=1e-6)
    assert np.all(np.isfinite(jax.grad(lambda a: L.routing_loss(a, np.array([[0.0, 1.0]])))(jnp.asarray(big))))


# ----------------------------------------------------------------------------------------------
# transformations, dtypes, sharding-friendliness
# ----------------------------------------------------------------------------------------------

def test_vmap_ride_loss_over_batches():
    rng = np.random.default_rng(5)
    zs = rng.normal(size=(4, 3, 8, 10)).astype(np.float32) * 10
    ys = rng.integers(0, 10, size=(4, 8))
    vec = L.ride_schedule(RIDE["counts"], 170, 160)

    def f(z, y):
        return L.ride_loss(z, y, diversity_factor=-0.45, **vec._asdict())[0]

    batched = jax.vmap(f)(zs, ys)
    looped = np.array([f(zs[i], ys[i]) for i in range(4)])
    np.testing.assert_allclose(batched, looped, rtol=1e-6)
    g = jax.jit(jax.vmap(jax.grad(f)))(zs, ys)
    assert g.shape == zs.shape and np.all(np.isfinite(g))


def test_dtypes_follow_inputs():
    """Output dtypes (checked with eval_shape: traced, not compiled)."""
    z, y = RIDE["expert_logits"], RIDE["targets"]
    m = L.ldam_margins(RIDE["counts"])

    def dtype_of(fn):
        return jax.eval_shape(fn).dtype

    assert dtype_of(lambda: L.ride_loss(z.astype(np.float32), y, diversity_factor=-0.45, margins=m)[0]) == jnp.float32
    assert dtype_of(lambda: L.ride_loss(jnp.asarray(z, jnp.bfloat16), y, diversity_factor=-0.45, margins=m)[0]) \
        == jnp.float32
    with jax.enable_x64(True):
        m64 = L.ldam_margins(RIDE["counts"])
        assert m64.dtype == jnp.float64
        assert dtype_of(lambda: L.ride_loss(z, y, diversity_factor=-0.45, margins=m64)[0]) == jnp.float64
        assert dtype_of(lambda: L.ride_loss(z.astype(np.float32), y, diversity_factor=-0.45, margins=m64)[0]) \
            == jnp.float32
        assert dtype_of(lambda: L.ldam_loss(z[0], y, m64)) == jnp.float64
        assert dtype_of(lambda: L.focal_loss(z[0].astype(np.float32), y, 1.0, m64)) == jnp.float32
        assert dtype_of(lambda: L.routing_targets(z, y)) == jnp.float64
        assert dtype_of(lambda: L.routing_loss(z[0], z[1])) == jnp.float64


def test_no_gather_or_scatter_in_jaxprs():
    z, y = RIDE["expert_logits"].astype(np.float32), RIDE["targets"]
    vec = L.ride_schedule(RIDE["counts"], 170, 160)

    def ride(z):
        return L.ride_loss(z, y, diversity_factor=-0.45, **vec._asdict())[0]

    fns = {
        "ride_loss+grad": jax.value_and_grad(ride),
        "ldam_loss+grad": jax.value_and_grad(lambda a: L.ldam_loss(a[0], y, vec.margins, 30.0, vec.class_weights)),
        "focal+grad": jax.value_and_grad(lambda a: L.focal_loss(a[0], y, 1.0, vec.class_weights)),
        "routing_targets": lambda a: L.routing_targets(a, y),
        "routing_loss+grad": jax.value_and_grad(lambda a: L.routing_loss(a[0, :, :2], jnp.ones((8, 2)))),
    }
    for name, fn in fns.items():
        text = str(jax.make_jaxpr(fn)(z))
        assert "gather" not in text and "scatter" not in text, name


# ----------------------------------------------------------------------------------------------
# bad inputs
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [L.ldam_margins, L.drw_weights, lambda n: L.diversity_temperatures(n, 0.05)])
def test_bad_class_counts(fn):
    with pytest.raises(ValueError, match=r"class_counts.*> 0.*1: 0\.0.*3: -4\.0"):
        fn([10, 0, 5, -4])
    with pytest.raises(ValueError, match="1-D"):
        fn([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="empty"):
        fn([])
    with pytest.raises(ValueError, match=r"finite.*2: nan"):
        fn([1.0, 2.0, float("nan")])
    with pytest.raises(TypeError, match="concrete"):
        jax.jit(fn)(jnp.ones(3))


def test_bad_scalar_options():
    with pytest.raises(ValueError, match=r"formula='bogus'.*'official', 'paper'"):
        L.diversity_temperatures([5, 3], 0.05, formula="bogus")
    with pytest.raises(ValueError, match="beta.*1.5"):
        L.drw_weights([5, 3], beta=1.5)
    with pytest.raises(ValueError, match=r"base_loss='focal'.*'ldam', 'ce'"):
        L.ride_loss(S_Z, S_Y, diversity_factor=-0.45, base_loss="focal")
    with pytest.raises(ValueError, match="margins"):
        L.ride_loss(S_Z, S_Y, diversity_factor=-0.45)  # 'ldam' without margins


@pytest.mark.parametrize("name", ["margins", "class_weights", "temperatures"])
def test_wrong_length_vectors(name):
    kw = dict(margins=np.full(4, 0.1), class_weights=np.ones(4), temperatures=np.ones(4))
    kw[name] = np.ones(5)
    with pytest.raises(ValueError, match=rf"{name} has length 5 but the logits have C=4"):
        L.ride_loss(S_Z, S_Y, diversity_factor=-0.45, **kw)
    with pytest.raises(ValueError, match=rf"{name} has length 5 but the logits have C=4"):
        jax.jit(lambda z: L.ride_loss(z, S_Y, diversity_factor=-0.45, **kw)[0])(S_Z)  # static check under jit


def test_wrong_length_vectors_single_head():
    with pytest.raises(ValueError, match="margins has length 3 but the logits have C=4"):
        L.ldam_loss(S_Z1, S_Y, np.ones(3))
    with pytest.raises(ValueError, match="class_weights has length 2 but the logits have C=4"):
        L.cross_entropy(S_Z1, S_Y, np.ones(2))


def test_bad_labels_and_shapes():
    m = np.full(4, 0.1)
    with pytest.raises(ValueError, match=r"\[0, 4\).*1: 7.*2: -1"):
        L.ride_loss(S_Z, np.array([0, 7, -1]), diversity_factor=-0.45, margins=m)
    with pytest.raises(ValueError, match=r"\[0, 4\).*0: 4"):
        L.cross_entropy(S_Z1, np.array([4, 0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        L.routing_targets(S_Z, np.array([0, 1, 9]))
    with pytest.raises(ValueError, match=r"labels has shape \(2,\) but shape \(3,\)"):
        L.ride_loss(S_Z, np.array([0, 1]), diversity_factor=-0.45, margins=m)
    with pytest.raises(TypeError, match="integer"):
        L.cross_entropy(S_Z1, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="expert_logits has 2 experts but the config has 3"):
        L.ride_loss(S_Z, S_Y, diversity_factor=-0.45, margins=m, num_experts=3)
    with pytest.raises(ValueError, match="3-D"):
        L.ride_loss(S_Z1, S_Y, diversity_factor=-0.45, margins=m)
    with pytest.raises(ValueError, match="mean_logits has shape"):
        L.ride_loss(S_Z, S_Y, diversity_factor=-0.45, margins=m, mean_logits=np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="targets has shape"):
        L.routing_loss(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="teacher_logits has shape"):
        L.ride_distill_loss(S_Z, S_Y, np.zeros((3, 5)), diversity_factor=-0.45, margins=m)


def test_out_of_range_labels_not_checked_under_jit():
    """Documented limitation: a traced label cannot be checked; its one-hot row is zero."""
    y = jnp.array([0, 1, 9])
    val = jax.jit(L.cross_entropy)(S_Z1, y)
    assert np.isfinite(float(val))
