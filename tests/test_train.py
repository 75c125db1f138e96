"""The training system end to end: main, resume, 8 devices, faults, the step itself."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from ride_jax import optim
from ride_jax.checkpointing import Checkpointer
from ride_jax.data import long_tail_counts
from ride_jax.models import create_model
from ride_jax.train import (create_state, make_loss_fn, make_train_step,
                            train_and_evaluate)

from helpers import run_main, synthetic_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tiny_config(**over):
    """2 epochs x 4 steps of RIDE-2 on 16x16 synthetic data (159 images, batch 32, 'drop'),
    on a ResNet-8 (``model.cifar_blocks=1``): these tests check the trainer."""
    return synthetic_config("experts=2", **{"model.cifar_blocks": 1, **over})


def _final_params(workdir):
    ck = Checkpointer(str(workdir), asynchronous=False)
    step = ck.latest_step()
    state, _ = ck.read(step)
    ck.close()
    return step, state


_run_main = run_main


def test_main_end_to_end_synthetic(tmp_path):
    out = _run_main(tmp_path, "configs/synthetic_lt.py:smoke,experts=2")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "finished at step" in out.stdout
    for name in ("config.json", "dataset.json", "metrics.jsonl", "results.json",
                 "selected_indices.npy", "eval/epoch_0001.json", "eval/epoch_0002.json"):
        assert (tmp_path / name).exists(), name
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())
    results = json.loads((tmp_path / "results.json").read_text())
    last = results["last"]
    assert last["epoch"] == 2 and last["num_examples"] == 80
    assert len(last["per_class"]) == 10 and len(last["expert_accuracy"]) == 2
    assert {"many", "medium", "few", "top5", "class_mean_accuracy"} <= set(last)
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert train and all(np.isfinite(r["loss"]) for r in train)
    # Epoch 1 runs at the warmup LR 0.1 * 1/1, epoch 2 after step1=1 at 0.1 * 0.01.
    assert {round(r["lr"], 6) for r in train} <= {0.1, 0.001}
    steps = Checkpointer(str(tmp_path), asynchronous=False)
    assert steps.latest_step() == 10
    steps.close()
    dataset = json.loads((tmp_path / "dataset.json").read_text())
    assert len(dataset["fingerprint"]) == 64
    assert dataset["train_counts"] == long_tail_counts(10, 40, 10).tolist()   # 159 images


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="apt-get install dataset-fashion-mnist (CI installs it)")
def test_main_on_fashion_mnist_lt(tmp_path):
    """The README's first command, cut to 3 steps (real data, offline)."""
    out = _run_main(tmp_path, "configs/fashion_mnist_lt.py:smoke,experts=2",
                    ["--config.max_steps=3", "--config.log_every_steps=1"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "stopped_at_max_steps at step 3" in out.stdout
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]
    dataset = json.loads((tmp_path / "dataset.json").read_text())
    assert dataset["name"] == "fashion_mnist_lt" and dataset["image_shape"] == [28, 28, 1]
    assert dataset["train_counts"] == long_tail_counts(10, 200, 10).tolist()
    ck = Checkpointer(str(tmp_path), asynchronous=False)
    assert ck.latest_step() == 3
    ck.close()


def test_main_reports_user_errors_without_traceback(tmp_path):
    out = _run_main(tmp_path, "configs/synthetic_lt.py:smoke", ["--config.model.arch=resnet33"])
    assert out.returncode == 2
    assert "resnet33" in out.stderr and "Traceback" not in out.stderr
    out = _run_main(tmp_path, "configs/synthetic_lt.py:smoke", ["--config.model.archh=x"])
    assert out.returncode != 0 and "archh" in out.stderr


def test_resume_after_interruption_is_bitwise_identical(tmp_path):
    full = train_and_evaluate(_tiny_config(), str(tmp_path / "full"))
    assert full["status"] == "finished" and full["step"] == 8
    # Interrupted in the middle of epoch 2 (step 7 of 8), then resumed.
    part = train_and_evaluate(_tiny_config(max_steps=7), str(tmp_path / "part"))
    assert part["status"] == "stopped_at_max_steps" and part["step"] == 7
    rest = train_and_evaluate(_tiny_config(), str(tmp_path / "part"))
    assert rest["status"] == "finished" and rest["step"] == 8
    (s1, a), (s2, b) = _final_params(tmp_path / "full"), _final_params(tmp_path / "part")
    assert s1 == s2 == 8
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(a["batch_stats"]), jax.tree.leaves(b["batch_stats"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert full["last"]["accuracy"] == rest["last"]["accuracy"]


def test_refuses_a_workdir_of_another_config(tmp_path):
    train_and_evaluate(_tiny_config(max_steps=2), str(tmp_path))
    with pytest.raises(ValueError, match=r"different config \(optim\.lr=0\.1 there but "
                                         r"0\.05 here\)"):
        train_and_evaluate(_tiny_config(**{"optim.lr": 0.05}), str(tmp_path))
    # Told to, it resumes.
    out = train_and_evaluate(_tiny_config(**{"optim.lr": 0.05, "max_steps": 3,
                                             "resume_with_different_config": True}),
                             str(tmp_path))
    assert out["step"] == 3


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    cfg = "configs/synthetic_lt.py:smoke,experts=1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ride_jax.main", f"--config={cfg}", f"--workdir={tmp_path}",
         "--config.epochs=400", "--config.log_every_steps=1"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "interrupted at step" in out
    ck = Checkpointer(str(tmp_path), asynchronous=False)
    step = ck.latest_step()
    ck.close()
    assert step is not None and step >= 1


def test_train_step_traces_once_across_the_loss_switch():
    """One trace for steps before and after the reweight epoch and the LR steps."""
    counts = np.array([40, 20, 10, 5])
    model = create_model("resnet32", num_classes=4, num_experts=2)
    c = common.get_base_config()
    c.loss.reweight_epoch = 1
    spe = 2
    sched = optim.custom_lr_schedule(0.1, spe, warmup_epochs=1, step1=1, step2=2)
    tx = optim.make_optimizer(sched, weight_decay=5e-4)
    loss_fn = make_loss_fn(c.loss, counts, 30.0)
    images = jnp.zeros((4, 8, 8, 3))
    state = create_state(model, tx, jax.random.key(0), images[:1])
    traces = []
    inner = make_train_step(model, tx, loss_fn, sched, spe)

    def counted(state, batch):
        traces.append(1)
        return inner(state, batch)
    step = jax.jit(counted)
    batch = {"image": images + 0.1, "label": jnp.array([0, 1, 2, 3])}
    lrs = []
    for k in range(5):
        # The loss the step reports is the one of its epoch: DRW weights and class
        # temperatures off in epoch 1 (steps 0-1), on from epoch 2 = reweight_epoch + 1.
        out, _ = model.apply({"params": state["params"], "batch_stats": state["batch_stats"]},
                             batch["image"], train=True)
        off, on = (float(loss_fn(out, batch["label"], e)[0]) for e in (1, 2))
        state, m = step(state, batch)
        assert float(m["loss"]) == pytest.approx(off if k < 2 else on, rel=1e-5), k
        assert off != pytest.approx(on, rel=1e-3)
        lrs.append(float(m["lr"]))
    assert len(traces) == 1
    assert lrs == pytest.approx([0.1, 0.1, 0.001, 0.001, 1e-5])
    # The loss switch is in the step: epoch 1 (before) vs epoch 2 (DRW on) differ.
    out = model.apply({"params": state["params"], "batch_stats": state["batch_stats"]},
                      batch["image"])
    before, _ = loss_fn(out, batch["label"], 1)
    after, _ = loss_fn(out, batch["label"], 2)
    assert float(before) != pytest.approx(float(after))


_EIGHT = textwrap.dedent("""
    import os, sys, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    sys.path.insert(0, {root!r})
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from configs import common
    from ride_jax import optim
    from ride_jax.checkpointing import Checkpointer
    from ride_jax.configlib import load
    from ride_jax.data.loader import data_mesh
    from ride_jax.models import create_model
    from ride_jax.train import create_state, make_loss_fn, make_train_step, train_and_evaluate
    assert jax.device_count() == 8
    out = {{}}

    # 1. The train step in float64 on a 1-device and an 8-device mesh: the same numbers.
    with jax.enable_x64(True):
        counts = np.array([40, 30, 23, 18, 14, 11, 8, 6, 5, 4])
        model = create_model("resnet32", num_classes=10, num_experts=2, dtype=jnp.float64,
                             cifar_blocks=1)
        c = common.get_base_config()
        c.loss.reweight_epoch = 0
        sched = optim.custom_lr_schedule(0.1, 4, warmup_epochs=1)
        tx = optim.make_optimizer(sched, weight_decay=5e-4)
        step_fn = make_train_step(model, tx, make_loss_fn(c.loss, counts, 30.0), sched, 4)
        rng = np.random.default_rng(0)
        batch = {{"image": jnp.asarray(rng.standard_normal((32, 16, 16, 3))),
                  "label": jnp.asarray(np.arange(32) % 10)}}
        state0 = create_state(model, tx, jax.random.key(0), batch["image"][:1])
        state0 = jax.tree.map(lambda a: a.astype(jnp.float64)
                              if jnp.issubdtype(a.dtype, jnp.floating) else a, state0)
        res = {{}}
        for n in (1, 8):
            mesh = data_mesh(jax.devices()[:n])
            repl, bsh = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
            f = jax.jit(step_fn, in_shardings=(repl, bsh), out_shardings=(repl, repl))
            with jax.set_mesh(mesh):
                st = state0
                for _ in range(3):
                    st, m = f(st, batch)
            res[n] = jax.device_get((st["params"], st["batch_stats"], m["loss"]))
        out["x64_max_rel"] = max(
            float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-30))
            for a, b in zip(jax.tree.leaves(res[1]), jax.tree.leaves(res[8])))

    # 2. The whole trainer (float32) on 1 and on 8 devices.
    c = load({root!r} + "/configs/synthetic_lt.py", "smoke,experts=2")
    c.unlock(); c.data.remainder = "drop"; c.epochs = 1; c.optim.lr = 1e-4
    c.log_every_steps = 1; c.model.cifar_blocks = 1; c.lock()
    for n in (1, 8):
        wd = sys.argv[1] + f"/w{{n}}"
        r = train_and_evaluate(c, wd, devices=jax.devices()[:n])
        state, _ = Checkpointer(wd, asynchronous=False).read()
        out[f"step{{n}}"] = r["step"]
        out[f"loss{{n}}"] = [json.loads(l)["loss"] for l in open(wd + "/metrics.jsonl")
                            if json.loads(l)["kind"] == "train"]
        np.savez(sys.argv[1] + f"/p{{n}}.npz", *[np.asarray(x) for x in jax.tree.leaves(
            (state["params"], state["batch_stats"]))])

    # 3. The 8-device checkpoint resumes on 1 device (and trains on).
    c.unlock(); c.epochs = 2; c.resume_with_different_config = True; c.lock()
    r = train_and_evaluate(c, sys.argv[1] + "/w8", devices=jax.devices()[:1])
    out["resumed_on_1"] = [r["status"], r["step"]]

    # 4. Routed evaluation runs per device shard (shard_map): 8 devices count as 1.
    from ride_jax.models import make_router
    from ride_jax.train import make_eval_step
    with jax.enable_x64(True):
        model = create_model("resnet32", num_classes=10, num_experts=3, dtype=jnp.float64,
                             cifar_blocks=1)
        router = make_router(model, (16, 16, 3), top_k=5)
        x = jnp.asarray(np.random.default_rng(1).standard_normal((64, 16, 16, 3)))
        v = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(jax.random.key(0), x[:1]))
        rp = jax.tree.map(lambda a: a.astype(jnp.float64),
                          router.init_params(jax.random.key(2)))
        o = model.apply(v, x)
        l0 = router.logit(rp, 0, o["features"][0], o["expert_logits"][0])
        rp["out"]["bias"] = rp["out"]["bias"] - jnp.median(l0) + 1e-6
        state = {{"params": dict(v["params"], router=rp), "batch_stats": v["batch_stats"]}}
        batch = {{"image": x, "label": jnp.asarray(np.arange(64) % 10),
                  "mask": jnp.ones(64, bool)}}
        got = {{}}
        for n in (1, 8):
            mesh = data_mesh(jax.devices()[:n])
            repl, bsh = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
            f = jax.jit(make_eval_step(model, router=router, mesh=mesh),
                        in_shardings=(repl, bsh), out_shardings=repl)
            with jax.set_mesh(mesh):
                got[n] = jax.device_get(f(state, batch))
        out["routed"] = [[np.asarray(got[n][k]).tolist() for k in ("usage", "correct")]
                         for n in (1, 8)]
    print(json.dumps(out))
""")


def test_eight_devices_match_one_device(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", _EIGHT.format(root=str(ROOT)), str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    # float64: the sharded step is the same computation (global-batch BatchNorm); a
    # per-device BatchNorm would differ by ~1e-2.
    assert out["x64_max_rel"] < 1e-6, out["x64_max_rel"]   # measured 5.5e-8 after 3 steps
    # float32, whole runs: equal up to reduction-order rounding (which BatchNorm's
    # backward amplifies to ~1e-3 of a conv gradient after a few steps).
    assert out["step1"] == out["step8"] == 4 and len(out["loss1"]) == 4
    np.testing.assert_allclose(out["loss8"], out["loss1"], rtol=1e-3)
    assert out["resumed_on_1"] == ["finished", 8]
    a, b = np.load(tmp_path / "p1.npz"), np.load(tmp_path / "p8.npz")
    assert len(a.files) == len(b.files) > 10
    # Small biases whose exact gradient nearly cancels (a BN bias feeding the next BN)
    # carry the largest relative rounding: hence the absolute tolerance.
    for k in a.files:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-2, atol=1e-3, err_msg=k)
    # Routed evaluation: the same experts used and the same hits on 8 devices as on 1,
    # with examples stopping after expert 0 and others going on.
    (usage1, correct1), (usage8, correct8) = out["routed"]
    assert usage8 == usage1 and correct8 == correct1
    usage = np.asarray(usage1).sum(-1)
    assert usage.sum() == 64 and usage[0] > 0 and usage[1:].sum() > 0, usage


def _stream_dataset(root):
    """48 tiny PNG files, 4 classes, as a StreamingDataset (tf.data, official transforms)."""
    tf = pytest.importorskip("tensorflow")
    from ride_jax.data import streaming as st
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), [24, 12, 8, 4])
    paths = []
    for k, y in enumerate(labels):
        img = np.clip(rng.normal(60 * y + 40, 30, (40, 44, 3)), 0, 255).astype(np.uint8)
        (root / f"{k:03d}.png").write_bytes(tf.io.encode_png(img).numpy())
        paths.append(f"{k:03d}.png")
    src = st.FileListSplit(str(root), tuple(paths), labels)
    return st.StreamingDataset(
        name="toy_stream", num_classes=4, class_names=("a", "b", "c", "d"),
        train_counts=np.bincount(labels), num_test=len(labels),
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), info={},
        train_source=src, test_source=src, image_size=32, resize_size=36)


def test_streamed_dataset_trains_evaluates_and_resumes(tmp_path):
    (tmp_path / "img").mkdir()
    ds = _stream_dataset(tmp_path / "img")
    # The stream runs its own (official) transforms: data.augment must say so.
    cfg = dict(**{"data.batch_size": 16, "data.eval_batch_size": 32, "data.augment": "none"})
    with pytest.raises(ValueError, match=r"data.augment='ride' does not apply to the "
                                         r"streamed dataset 'toy_stream'.*augment=none"):
        train_and_evaluate(_tiny_config(**{"data.batch_size": 16}), str(tmp_path / "aug"),
                           dataset=ds)
    assert not (tmp_path / "aug").exists()
    full = train_and_evaluate(_tiny_config(**cfg), str(tmp_path / "full"), dataset=ds)
    assert full["status"] == "finished" and full["step"] == 6      # 2 epochs x ceil(48/16)
    assert full["last"]["num_examples"] == 48                       # padded eval, each once
    part = train_and_evaluate(_tiny_config(max_steps=4, **cfg), str(tmp_path / "part"),
                              dataset=ds)
    assert part["step"] == 4
    rest = train_and_evaluate(_tiny_config(**cfg), str(tmp_path / "part"), dataset=ds)
    assert rest["step"] == 6
    (_, a), (_, b) = _final_params(tmp_path / "full"), _final_params(tmp_path / "part")
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
