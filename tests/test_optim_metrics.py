"""The official per-epoch LR and SGD semantics; evaluation metrics as the official test.py."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ride_jax import metrics, optim

DATA = pathlib.Path(__file__).parent / "data"


def test_lr_per_epoch_equals_the_official_table():
    ref = json.loads((DATA / "lr_schedule_cifar100_ride.json").read_text())
    args = ref["config_args"]
    kw = dict(warmup_epochs=args["warmup_epoch"], step1=args["step1"], step2=args["step2"],
              gamma=args["gamma"])
    table = {int(e): lr for e, lr in ref["lr_for_1_indexed_epoch"].items()}
    assert len(table) == 200
    for epoch, lr in table.items():
        assert optim.epoch_lr(ref["base_lr"], epoch, **kw) == pytest.approx(lr, rel=1e-12)
    # The optax schedule: constant within an epoch (85 steps: CIFAR-100-LT at batch 128).
    sched = jax.jit(optim.custom_lr_schedule(ref["base_lr"], 85, **kw))
    for epoch in (1, 2, 5, 6, 160, 161, 180, 181, 200):
        for step in ((epoch - 1) * 85, epoch * 85 - 1):
            assert float(sched(step)) == pytest.approx(table[epoch], rel=1e-6), (epoch, step)


def test_sgd_is_torch_sgd_with_coupled_decay():
    """g = grad + wd*theta; v = mu*v + g (v0 = g0); step = g + mu*v (nesterov); theta -= lr*step."""
    rng = np.random.default_rng(0)
    theta = rng.standard_normal(5)
    grads = [rng.standard_normal(5) for _ in range(6)]
    lrs = [0.02, 0.04, 0.04, 0.1, 0.001, 0.001]
    wd, mu = 5e-4, 0.9
    for nesterov in (True, False):
        tx = optim.make_optimizer(lambda step: jnp.asarray(lrs)[step], weight_decay=wd,
                                  nesterov=nesterov)
        with jax.enable_x64(True):
            p = jnp.asarray(theta)
            state = tx.init(p)
            ref, v = theta.copy(), None
            for k, g in enumerate(grads):
                upd, state = tx.update(jnp.asarray(g), state, p)
                p = optax.apply_updates(p, upd)
                gg = g + wd * ref
                v = gg if v is None else mu * v + gg
                ref = ref - lrs[k] * (gg + mu * v if nesterov else v)
            np.testing.assert_allclose(np.asarray(p), ref, rtol=1e-12, atol=1e-14)


def test_bad_steps_per_epoch():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        optim.custom_lr_schedule(0.1, 0)


def test_metrics_reproduce_the_official_test_script():
    z = np.load(DATA / "shot_splits.npz")
    targets, preds = z["toy_targets"], z["toy_preds"]
    counts = np.load(DATA / "cifar_lt_counts.npz")["cifar100_imb0.01_counts"]
    logits = jax.nn.one_hot(preds, 100) * 5.0
    # Two batches, the second padded: padding must not count.
    total = None
    for lo, hi in ((0, 6000), (6000, 10000)):
        lg, lb = np.asarray(logits[lo:hi]), targets[lo:hi]
        pad = 8000 - len(lb)
        mask = np.r_[np.ones(len(lb), bool), np.zeros(pad, bool)]
        lg = np.concatenate([lg, np.tile(lg[:1], (pad, 1))])
        lb = np.concatenate([lb, np.zeros(pad, lb.dtype)])
        total = metrics.add_counts(total, jax.jit(metrics.eval_counts)(lg, lb, mask))
    s = metrics.summarize(total, counts)
    assert s["num_examples"] == 10000
    assert s["accuracy"] == pytest.approx(float(z["toy_sample_acc"]), abs=1e-7)
    assert s["class_mean_accuracy"] == pytest.approx(float(z["toy_class_mean_acc"]), abs=1e-6)
    for group in ("many", "medium", "few"):
        assert s[group] == pytest.approx(float(z[f"toy_{group}_acc"]), abs=1e-6)
    np.testing.assert_allclose(s["per_class"], z["toy_acc_per_class"], atol=1e-6)


def test_per_expert_accuracy_top5_and_loss():
    labels = jnp.array([0, 1, 2, 3])
    ens = jnp.eye(4) * 3                               # all right
    experts = jnp.stack([jnp.eye(4), jnp.roll(jnp.eye(4), 1, axis=1)])  # right / all wrong
    c = metrics.eval_counts(ens, labels, expert_logits=experts, loss=jnp.array([1., 2, 3, 4]))
    s = metrics.summarize(c, [500, 50, 10, 5])
    assert s["accuracy"] == 1.0 and s["top5"] == 1.0
    assert s["expert_accuracy"] == [1.0, 0.0]
    assert s["loss"] == pytest.approx(2.5)
    assert s["many"] == 1.0 and s["medium"] == 1.0 and s["few"] == 1.0
    # A group without classes is None, not 0.
    assert metrics.summarize(c, [500, 500, 500, 500])["few"] is None
    with pytest.raises(ValueError, match="no evaluation example"):
        metrics.summarize(metrics.eval_counts(ens, labels, jnp.zeros(4, bool)), [1, 1, 1, 1])
