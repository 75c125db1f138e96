"""SADE (official Vanint/SADE-AgnosticLT): the loss against a NumPy restatement, the method,
its recipes and a short training run.

Expected values are float64 NumPy restatements of the official ``DiverseExpertLoss``
(``model/loss.py:244-286``): the rank-reversed prior written as a loop over ranks, the
three cross-entropies as log-sum-exp, and the softmax-CE gradient written out by hand;
never values from ride_jax itself.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ride_jax import config_checks, losses, methods
from ride_jax.configlib import load
from ride_jax.data.long_tail import long_tail_counts
from ride_jax.methods import sade as sade_method
from ride_jax.train import train_and_evaluate

from configs import common
from helpers import ROOT, synthetic_config

EPS = 1e-9          # official model/loss.py:279, 283
E, B, C = 3, 12, 7


# ------------------------------------------------------------------ NumPy restatement

def np_inverse_prior(counts):
    """pi_bar_c = (pi ascending)[C - 1 - rank(c)]; equal priors: the larger class id is
    ranked first (the rarer), the tie rule ride_jax documents."""
    counts = np.asarray(counts, np.float64)
    prior = counts / counts.sum()
    ranked = sorted(range(len(prior)), key=lambda c: (prior[c], -c))   # ascending
    ascending = [prior[c] for c in ranked]
    out = np.empty_like(prior)
    for rank, c in enumerate(ranked):
        out[c] = ascending[len(prior) - 1 - rank]
    return out


def np_sade(expert_logits, labels, counts, lam):
    """(loss, [L1, L2, L3], d loss / d expert_logits) in float64."""
    z = np.asarray(expert_logits, np.float64)
    counts = np.asarray(counts, np.float64)
    prior = counts / counts.sum()
    shift = [np.zeros_like(prior), np.log(prior + EPS),
             np.log(prior + EPS) - lam * np.log(np_inverse_prior(counts) + EPS)]
    terms, grads = [], []
    n = len(labels)
    for k in range(3):
        a = z[k] + shift[k]
        m = a.max(-1, keepdims=True)
        lse = (m + np.log(np.exp(a - m).sum(-1, keepdims=True)))[:, 0]
        terms.append(np.mean(lse - a[np.arange(n), labels]))
        p = np.exp(a - lse[:, None])
        onehot = np.eye(z.shape[-1])[labels]
        grads.append((p - onehot) / n)
    return sum(terms), terms, np.stack(grads)


def data(seed=0, counts=None):
    rng = np.random.default_rng(seed)
    logits = (10.0 * rng.standard_normal((E, B, C))).astype(np.float32)   # s = 30 range
    labels = rng.integers(0, C, B)
    if counts is None:   # unsorted, with a tie between classes 2 and 5
        counts = np.array([40, 3, 12, 100, 1, 12, 7])
    return logits, labels, np.asarray(counts)


# ------------------------------------------------------------------ the inverse prior

def test_inverse_prior_hand_computed():
    # counts [5, 50, 1, 20, 20] / 96: ascending 1, 5, 20 (class 4), 20 (class 3), 50;
    # reversed ranks give class 2 -> 50, 0 -> 20, 4 -> 20, 3 -> 5, 1 -> 1.
    got = np.asarray(losses.inverse_prior(np.array([5, 50, 1, 20, 20])))
    np.testing.assert_allclose(got, np.array([20, 1, 50, 5, 20]) / 96, rtol=1e-6)
    assert not np.allclose(got, (1 / np.array([5, 50, 1, 20, 20])) / np.sum(
        1 / np.array([5, 50, 1, 20, 20])))                     # not the normalised 1 / pi


def test_inverse_prior_of_frequency_sorted_classes_is_the_flip():
    # CIFAR-100-LT ratio 100 (class 0 the head) has ties; pi_bar must be pi reversed.
    counts = long_tail_counts(100, 500, 100)
    assert len(np.unique(counts)) < 100                        # there are ties
    prior = counts / counts.sum()
    np.testing.assert_allclose(np.asarray(losses.inverse_prior(counts)), prior[::-1],
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(losses.inverse_prior(counts)),
                               np_inverse_prior(counts), rtol=1e-6)


def test_inverse_prior_random_counts_against_numpy():
    rng = np.random.default_rng(3)
    for _ in range(5):
        counts = rng.integers(0, 30, 40)             # many ties, some zero counts
        counts[0] = 31
        np.testing.assert_allclose(np.asarray(losses.inverse_prior(counts)),
                                   np_inverse_prior(counts), rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------ the loss

@pytest.mark.parametrize("lam", [2.0, 1.0, 0.5])
def test_sade_loss_and_terms_match_numpy(lam):
    logits, labels, counts = data()
    loss, aux = losses.sade_loss(logits, labels, counts, lam=lam)
    want, terms, _ = np_sade(logits, labels, counts, lam)
    assert float(loss) == pytest.approx(want, rel=2e-6)
    assert sorted(aux) == ["expert0", "expert1", "expert2"]
    for k in range(3):
        assert aux[f"expert{k}"].shape == () and aux[f"expert{k}"].dtype == jnp.float32
        assert float(aux[f"expert{k}"]) == pytest.approx(terms[k], rel=2e-6)
    # Each expert has its own target: the three terms differ on the same logits.
    same, terms_same, _ = np_sade(np.stack([logits[0]] * 3), labels, counts, lam)
    got_same, aux_same = losses.sade_loss(np.stack([logits[0]] * 3), labels, counts, lam)
    assert float(got_same) == pytest.approx(same, rel=2e-6)
    assert len({round(float(v), 4) for v in aux_same.values()}) == 3


def test_sade_loss_gradients_match_numpy():
    logits, labels, counts = data(1)
    grad = jax.grad(lambda z: losses.sade_loss(z, labels, counts, 2.0)[0])(
        jnp.asarray(logits))
    _, _, want = np_sade(logits, labels, counts, 2.0)
    np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-4, atol=1e-7)


def test_sade_loss_float64_and_jit():
    logits, labels, counts = data(2)
    want, _, _ = np_sade(logits, labels, counts, 2.0)
    with jax.enable_x64(True):
        loss, aux = losses.sade_loss(logits.astype(np.float64), labels, counts, 2.0)
        assert loss.dtype == jnp.float64 and aux["expert2"].dtype == jnp.float32
        assert float(loss) == pytest.approx(want, rel=1e-12)
    jitted = jax.jit(lambda z, y, n, lam: losses.sade_loss(z, y, n, lam))
    loss, aux = jitted(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(counts), 2.0)
    assert float(loss) == pytest.approx(want, rel=2e-6)   # traced counts and lambda too


def test_sade_adjustments_are_the_three_priors():
    counts = np.array([40, 3, 12, 100, 1, 12, 7])
    prior = counts / counts.sum()
    adj = np.asarray(losses.sade_adjustments(counts, 2.0))
    np.testing.assert_allclose(adj[0], 0.0)
    np.testing.assert_allclose(adj[1], np.log(prior + EPS), rtol=1e-6)
    np.testing.assert_allclose(
        adj[2], np.log(prior + EPS) - 2.0 * np.log(np_inverse_prior(counts) + EPS), rtol=1e-6)


@pytest.mark.parametrize("change,error,message", [
    (dict(logits=np.zeros((2, B, C), np.float32)), ValueError, r"SADE's 3 experts"),
    (dict(logits=np.zeros((B, C), np.float32)), ValueError, r"must be 3-D"),
    (dict(logits=np.zeros((3, B, C), np.int32)), TypeError, r"floating-point"),
    (dict(labels=np.zeros(B + 1, np.int32)), ValueError, r"labels has shape"),
    (dict(labels=np.full(B, C)), ValueError, r"labels must lie in \[0, 7\)"),
    (dict(labels=np.zeros(B, np.float32)), TypeError, r"integer dtype"),
    (dict(counts=np.ones(C + 1)), ValueError, r"class_counts has length 8"),
    (dict(counts=np.zeros(C)), ValueError, r"all zero"),
    (dict(counts=-np.ones(C)), ValueError, r"class_counts must be > 0"),
    (dict(lam=np.ones(2)), ValueError, r"lam must be a scalar"),
    (dict(lam=float("nan")), ValueError, r"lam must be finite"),
])
def test_sade_loss_input_checks_are_one_line(change, error, message):
    logits, labels, counts = data()
    args = dict(logits=logits, labels=labels, counts=counts, lam=2.0) | change
    with pytest.raises(error, match=message) as info:
        losses.sade_loss(args["logits"], args["labels"], args["counts"], lam=args["lam"])
    assert "\n" not in str(info.value)


def test_zero_counts_follow_the_official_epsilon():
    logits, labels, _ = data()
    counts = np.array([40, 3, 0, 100, 1, 12, 7])
    loss, _ = losses.sade_loss(logits, labels, counts, 2.0)
    assert float(loss) == pytest.approx(np_sade(logits, labels, counts, 2.0)[0], rel=2e-6)


# ------------------------------------------------------------------ the method

def _config(lam=2.0):
    return ml_collections.ConfigDict({"loss": {"sade_lambda": lam}})


def test_method_is_registered_and_uses_the_expert_logits():
    method = methods.get("sade")
    assert method is sade_method.METHOD and "sade" in methods.NAMES
    assert method.eval_transform is None and method.distill_loss is None
    logits, labels, counts = data()
    fn = methods.checked(method.make_loss(_config(1.0), counts), "sade")
    outputs = {"expert_logits": jnp.asarray(logits),
               "logits": jnp.full((B, C), jnp.nan)}            # never read
    loss, aux = fn(outputs, jnp.asarray(labels), jnp.int32(1))
    want, terms, _ = np_sade(logits, labels, counts, 1.0)       # lambda from the config
    assert float(loss) == pytest.approx(want, rel=2e-6)
    assert [float(aux[f"expert{k}"]) for k in range(3)] == pytest.approx(terms, rel=2e-6)
    assert "lambda 1.0" in method.describe(_config(1.0))
    with pytest.raises(ValueError, match=r"loss.name='sade': class_counts are all zero"):
        method.make_loss(_config(), np.zeros(C))


def test_the_networks_logits_are_the_mean_of_the_experts():
    """SADE predicts argmax of the mean expert logits: the network's ``logits``."""
    from ride_jax.models import create_model
    model = create_model("resnet32", num_classes=5, num_experts=3)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16, 16, 3)), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    out = model.apply(variables, x, train=False)
    assert out["expert_logits"].shape == (3, 2, 5)
    np.testing.assert_allclose(np.asarray(out["logits"]),
                               np.asarray(out["expert_logits"]).mean(0), rtol=1e-6,
                               atol=1e-6)
    assert np.abs(np.asarray(out["expert_logits"])).max() <= 30.0 + 1e-4   # s * cos


def test_check_wants_three_plain_experts():
    c = load(ROOT / "configs" / "cifar100_lt.py", "loss=sade")
    sade_method.check(c)
    c.model.num_experts = 4
    with pytest.raises(ValueError, match=r"exactly 3 experts.*num_experts=3"):
        sade_method.check(c)
    c.model.num_experts = 3
    c.model.head = "reslt"
    with pytest.raises(ValueError, match=r"model.head=plain"):
        sade_method.check(c)


# ------------------------------------------------------------------ recipes

def _assert_sade_network(c):
    assert c.loss.name == "sade" and c.model.num_experts == 3 and c.model.head == "plain"
    assert c.model.use_norm and c.model.scale == 30.0
    assert c.optim.nesterov and c.optim.momentum == 0.9
    config_checks.check_config(c)


def test_preset_small_image_family():
    c = common.get_base_config()
    common.apply_loss_preset(c, "sade", experts=3)
    _assert_sade_network(c)
    assert c.model.reduce_dimension and c.model.arch == "resnet32"
    assert (c.data.batch_size, c.epochs, c.optim.lr, c.optim.weight_decay) == (
        128, 200, 0.1, 5e-4)
    assert (c.optim.schedule, c.optim.warmup_epochs, c.optim.step1, c.optim.step2,
            c.optim.gamma) == ("custom", 5, 160, 180, 0.1)
    assert c.data.augment == "ride" and c.loss.sade_lambda == 2.0
    with pytest.raises(ValueError, match=r"exactly 3 experts.*experts=2"):
        common.apply_loss_preset(common.get_base_config(), "sade", experts=2)


@pytest.mark.parametrize("ratio", [100, 50, 10])
def test_cifar100_recipe(ratio):
    c = load(ROOT / "configs" / "cifar100_lt.py", f"loss=sade,ratio={ratio}")
    _assert_sade_network(c)
    assert c.dataset.args.ratio == float(ratio) and c.loss.sade_lambda == 2.0
    assert (c.optim.lr, c.optim.gamma, c.optim.step1, c.optim.step2) == (0.1, 0.1, 160, 180)
    assert c.model.reduce_dimension and c.data.augment == "ride"


def test_cifar10_recipe_follows_the_authors_advice():
    c = load(ROOT / "configs" / "cifar10_lt.py", "loss=sade")
    _assert_sade_network(c)
    assert not c.model.reduce_dimension and c.optim.lr == 0.05


def test_imagenet_family_recipes():
    c = load(ROOT / "configs" / "imagenet_lt.py", "loss=sade,backbone=rx50")
    _assert_sade_network(c)
    assert c.model.arch == "resnext50" and c.model.reduce_dimension
    assert (c.data.batch_size, c.epochs, c.optim.lr, c.optim.weight_decay) == (
        64, 180, 0.025, 5e-4)
    assert (c.optim.schedule, c.optim.warmup_epochs) == ("cosine", 0)
    assert c.loss.sade_lambda == 2.0 and c.data.augment == "none"
    i = load(ROOT / "configs" / "inat2018.py", "loss=sade")
    _assert_sade_network(i)
    assert i.model.arch == "resnet50" and i.model.reduce_dimension
    assert (i.data.batch_size, i.epochs, i.optim.lr, i.optim.weight_decay) == (
        512, 100, 0.2, 2e-4)
    assert (i.optim.schedule, i.optim.warmup_epochs, i.optim.step1, i.optim.step2,
            i.optim.gamma) == ("custom", 5, 60, 80, 0.1)
    assert i.loss.sade_lambda == 1.0
    with pytest.raises(ValueError, match=r"loss=sade on places_lt.*ResNet-152"):
        load(ROOT / "configs" / "places_lt.py", "loss=sade")


# ------------------------------------------------------------------ training smoke

def test_training_logs_the_three_expert_terms(tmp_path):
    config = synthetic_config("loss=sade", max_steps=3)
    assert config.loss.name == "sade" and config.model.num_experts == 3
    result = train_and_evaluate(config, str(tmp_path))
    assert result["status"] == "stopped_at_max_steps" and result["step"] == 3
    rows = [json.loads(line) for line in
            (pathlib.Path(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert train
    for r in train:
        terms = [r[f"expert{k}"] for k in range(3)]
        assert all(np.isfinite(terms)) and all(t > 0 for t in terms)
        # The logged loss is the sum of the logged terms (means over the same steps).
        assert r["loss"] == pytest.approx(sum(terms), rel=1e-5)
