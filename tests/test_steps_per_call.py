"""``config.steps_per_call``: train steps scanned in one compiled call compute the same
training run as one call per step (batches, order, metrics, checkpoints, resume)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from ride_jax import compiler, optim
from ride_jax.checkpointing import Checkpointer
from ride_jax.data.loader import check_steps_per_call, make_loader
from ride_jax.data.synthetic import synthetic_lt
from ride_jax.models import create_model
from ride_jax.train import (create_state, make_loss_fn, make_multi_step, make_train_step,
                            scan_unroll, train_and_evaluate)

from helpers import synthetic_config


@pytest.fixture(scope="module")
def ds():
    # 403 training images: 6 full batches of 64 and a last one of 19.
    return synthetic_lt(num_classes=10, img_max=100, ratio=10, test_per_class=10, seed=3)


def _unstack(calls):
    out, ks = [], []
    for k, batch in calls:
        ks.append(k)
        if k > 1:
            assert batch["image"].shape[0] == batch["label"].shape[0] == k
            out += [{name: x[i] for name, x in batch.items()} for i in range(k)]
        else:
            out.append(batch)
    return ks, out


@pytest.mark.parametrize("k, start, stop, expected_ks", [
    (3, 0, None, [3, 3, 1]),            # two chunks, then the last (smaller) batch
    (4, 0, None, [4, 1, 1, 1]),         # leftover full batches run singly
    (2, 1, None, [2, 2, 1, 1]),         # resumed mid-epoch
    (0, 0, None, [6, 1]),               # 0: every full batch in one call
    (0, 2, None, [1, 1, 1, 1, 1]),      # a resumed epoch's rest runs singly (one chunk size)
    (4, 0, 5, [4, 1]),                  # stop (max_steps) inside the epoch
    (1, 0, None, [1] * 7),
])
def test_epoch_calls_are_the_epochs_batches_in_order(ds, k, start, stop, expected_ks):
    ld = make_loader(ds, 64, augment="ride", seed=2)
    reference = list(ld.epoch(1, start=start))[:None if stop is None else stop - start]
    ks, got = _unstack(ld.epoch_calls(1, start=start, steps_per_call=k, stop=stop))
    assert ks == expected_ks
    assert len(got) == len(reference)
    for a, b in zip(got, reference):
        np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
        np.testing.assert_array_equal(np.asarray(a["label"]), np.asarray(b["label"]))


def test_stacked_batches_are_sharded_on_the_batch_axis(ds):
    ld = make_loader(ds, 64, augment="ldam")
    k, batch = next(ld.epoch_calls(0, steps_per_call=3))
    assert k == 3 and batch["image"].shape == (3, 64) + ds.image_shape
    assert batch["image"].sharding == ld.chunk_sharding() == batch["label"].sharding


@pytest.mark.parametrize("bad", [-1, 2.5, True, "4", None])
def test_bad_steps_per_call_names_the_value(bad):
    with pytest.raises(ValueError, match=r"steps_per_call=.*int >= 1.*or 0") as e:
        check_steps_per_call(bad)
    assert f"steps_per_call={bad!r}:" in str(e.value)


def _step_fns(lr=0.01):
    counts = np.array([40, 30, 23, 18, 14, 11, 8, 6, 5, 4])
    # ResNet-8 (cifar_blocks=1): the step's chunking is under test, not the network's depth.
    model = create_model("resnet32", num_classes=10, num_experts=2, cifar_blocks=1,
                         fusion_barriers=jax.default_backend() == "cpu")
    c = common.get_base_config()
    c.loss.reweight_epoch = 0
    sched = optim.custom_lr_schedule(lr, 4, warmup_epochs=0)
    tx = optim.make_optimizer(sched, weight_decay=5e-4)
    step = make_train_step(model, tx, make_loss_fn(c.loss, counts, 30.0), sched, 4)
    return model, tx, step


def _update_error(new, old, reference):
    """max over leaves of max |update - reference update| / max |reference update|."""
    errs = []
    for a, z, r in zip(jax.tree.leaves(new), jax.tree.leaves(old), jax.tree.leaves(reference),
                       strict=True):
        d = np.asarray(a, np.float64) - np.asarray(z, np.float64)
        dr = np.asarray(r, np.float64) - np.asarray(z, np.float64)
        errs.append(np.max(np.abs(d - dr)) / (np.max(np.abs(dr)) + 1e-30))
    return max(errs)


def test_scanned_step_computes_the_single_steps():
    """Three RIDE-2 steps (distinct batches) in one call, compiled as the trainer compiles
    them here: the same state and per-step metrics as three jitted calls, to float32
    rounding (on a CPU, unrolled: the same operations, fused across the step boundaries);
    the batches in another order give another run."""
    model, tx, step = _step_fns()
    rng = np.random.default_rng(0)
    k = 3
    batches = {"image": jnp.asarray(rng.standard_normal((k, 16, 16, 16, 3)), jnp.float32),
               "label": jnp.asarray(rng.integers(0, 10, (k, 16)), jnp.int32)}
    state0 = create_state(model, tx, jax.random.key(0), batches["image"][0, :1])
    options = compiler.compiler_options("eigen")
    single = jax.jit(step, compiler_options=options)
    scanned = jax.jit(make_multi_step(step, scan_unroll(jax.default_backend())),
                      compiler_options=options)

    st, metrics = state0, []
    for i in range(k):
        st, m = single(st, {name: x[i] for name, x in batches.items()})
        metrics.append(m)
    sk, mk = scanned(state0, batches)
    assert mk["loss"].shape == (k,) and int(sk["step"]) == k
    np.testing.assert_allclose(mk["loss"], [m["loss"] for m in metrics], rtol=1e-5)
    np.testing.assert_array_equal(mk["lr"], [m["lr"] for m in metrics])
    err = _update_error(sk["params"], state0["params"], st["params"])
    assert err < 1e-4, err
    err = _update_error(sk["batch_stats"], state0["batch_stats"], st["batch_stats"])
    assert err < 1e-4, err
    flipped, _ = scanned(state0, jax.tree.map(lambda x: x[::-1], batches))
    assert _update_error(flipped["params"], state0["params"], st["params"]) > 1e-2


def test_rolled_scan_threads_state_and_metrics_in_order():
    """The rolled loop the trainer uses off the CPU: a toy SGD step (no convolutions,
    which XLA:CPU compiles differently inside loops) gives the per-step results."""
    def toy_step(state, batch, consts=None):
        err = batch["image"] @ state["w"] - batch["label"]
        w = state["w"] - 0.1 * batch["image"].T @ err / err.shape[0]
        return {"w": w, "step": state["step"] + 1}, {"loss": jnp.mean(err ** 2),
                                                       "step": state["step"]}
    rng = np.random.default_rng(1)
    batches = {"image": jnp.asarray(rng.standard_normal((5, 8, 3)), jnp.float32),
               "label": jnp.asarray(rng.standard_normal((5, 8)), jnp.float32)}
    state = {"w": jnp.zeros(3), "step": jnp.zeros((), jnp.int32)}
    got, metrics = jax.jit(make_multi_step(toy_step, unroll=1))(state, batches)
    losses = []
    for i in range(5):
        state, m = toy_step(state, {k: v[i] for k, v in batches.items()})
        losses.append(float(m["loss"]))
    np.testing.assert_allclose(got["w"], state["w"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(metrics["loss"], losses, rtol=1e-5)
    assert metrics["step"].tolist() == [0, 1, 2, 3, 4] and int(got["step"]) == 5
    assert scan_unroll("cpu") is True and scan_unroll("gpu") == 1


def _train_rows(workdir):
    return [json.loads(line) for line in open(workdir / "metrics.jsonl")
            if json.loads(line)["kind"] == "train"]


def _params(workdir):
    ck = Checkpointer(str(workdir), asynchronous=False)
    state, _ = ck.read(ck.latest_step())
    ck.close()
    return state


def test_trainer_with_scanned_steps_is_the_same_run(tmp_path):
    """RIDE-2, 2 epochs x 4 steps: steps_per_call=3 (a chunk and a single step per epoch)
    and steps_per_call=0 stopped at max_steps=7 then resumed, against one call per step:
    the same metrics rows, checkpoints and final parameters (to float32 rounding)."""
    def config(**over):     # ResNet-8: the trainer's chunking is under test, not the network
        return synthetic_config(**{"model.cifar_blocks": 1}, **over)
    ref = train_and_evaluate(config(log_every_steps=1), str(tmp_path / "one"))
    three = train_and_evaluate(config(steps_per_call=3, log_every_steps=1),
                               str(tmp_path / "three"))
    part = train_and_evaluate(config(steps_per_call=0, log_every_steps=2, max_steps=7),
                              str(tmp_path / "epoch"))
    assert part["status"] == "stopped_at_max_steps" and part["step"] == 7
    assert _params(tmp_path / "epoch")["step"] == 7
    rest = train_and_evaluate(config(steps_per_call=0, log_every_steps=2),
                              str(tmp_path / "epoch"))
    for r in (ref, three, rest):
        assert r["status"] == "finished" and r["step"] == 8
    rows = {name: _train_rows(tmp_path / name) for name in ("one", "three", "epoch")}
    assert [r["step"] for r in rows["one"]] == [r["step"] for r in rows["three"]] == list(
        range(1, 9))
    # Every second step (log_every_steps=2), plus step 7 where max_steps stopped it.
    assert [r["step"] for r in rows["epoch"]] == [2, 4, 6, 7, 8]
    loss = {name: np.array([r["loss"] for r in rs]) for name, rs in rows.items()}
    np.testing.assert_allclose(loss["three"], loss["one"], rtol=1e-5)
    pairs = [loss["one"][0:2].mean(), loss["one"][2:4].mean(), loss["one"][4:6].mean(),
             loss["one"][6], loss["one"][7]]
    np.testing.assert_allclose(loss["epoch"], pairs, rtol=1e-5)
    assert [r["lr"] for r in rows["three"]] == [r["lr"] for r in rows["one"]]
    reference = _params(tmp_path / "one")
    zeros = jax.tree.map(jnp.zeros_like, reference)
    for name in ("three", "epoch"):       # float32 rounding apart (~1e-7 here)
        got = _params(tmp_path / name)
        for part in ("params", "batch_stats"):
            err = _update_error(got[part], zeros[part], reference[part])
            assert err < 1e-5, (name, part, err)
    for r in (three, rest):
        assert r["last"]["accuracy"] == ref["last"]["accuracy"]


class _NotInMemory:
    """Just enough of a streamed dataset for the trainer to reach its loader check."""
    num_classes = 10
    image_shape = (16, 16, 3)
    train_counts = np.full(10, 8)

    def describe(self):
        return {"name": "fake_stream"}

    def steps_per_epoch(self, batch):
        return 1

    def __getattr__(self, name):
        raise AttributeError(name)


def test_streamed_datasets_refuse_scanned_steps(tmp_path):
    with pytest.raises(ValueError, match=r"steps_per_call=4: .*in-memory dataset"):
        train_and_evaluate(synthetic_config(steps_per_call=4), str(tmp_path),
                           dataset=_NotInMemory())
    with pytest.raises(ValueError, match=r"steps_per_call=-2"):
        train_and_evaluate(synthetic_config(steps_per_call=-2), str(tmp_path / "b"))
