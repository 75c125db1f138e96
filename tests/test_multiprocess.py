"""Several processes under ``jax.distributed`` on this machine (CPU collectives, fake
CPU devices): ``python -m ride_jax.launch`` against one process with as many devices,
a SIGTERM to one process of two, and resuming with another process count.

The run: RIDE-2 on the synthetic smoke recipe with a ResNet-8 (``model.cifar_blocks=1``:
the trainer's behaviour is under test, not the network's, and it compiles ~4x faster),
3 epochs of 4 steps (batch 32, the last partial batch dropped), a small learning rate so that float32 reduction-order rounding
stays small (as in ``test_train.test_eight_devices_match_one_device``, whose tolerances
these are).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import ROOT

EPOCHS = 3
FLAGS = ["--config=configs/synthetic_lt.py:smoke,experts=2", f"--config.epochs={EPOCHS}",
         "--config.data.remainder=drop", "--config.optim.lr=0.0001",
         "--config.log_every_steps=1", "--config.model.cifar_blocks=1"]


def _env(devices: int | None = None) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _launch(workdir, processes: int, devices: int, *extra, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "ride_jax.launch", "--processes", str(processes),
         "--devices-per-process", str(devices), "--", *FLAGS, f"--workdir={workdir}", *extra],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def _train_losses(workdir) -> dict[int, float]:
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def _params(workdir):
    """The final parameters and BatchNorm statistics, read without jax.distributed."""
    code = ("import sys, numpy as np, jax\n"
            "from ride_jax.checkpointing import load_run\n"
            "_, v, _ = load_run(sys.argv[1])\n"
            "np.savez(sys.argv[2], *[np.asarray(x) for x in jax.tree.leaves("
            "(v['params'], v['batch_stats']))])\n")
    out = os.path.join(workdir, "..", os.path.basename(workdir) + "_params.npz")
    p = subprocess.run([sys.executable, "-c", code, workdir, out], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return np.load(out)


def _assert_same_run(got_dir, want_dir):
    got, want = _train_losses(got_dir), _train_losses(want_dir)
    assert sorted(got) == sorted(want) == list(range(1, 4 * EPOCHS + 1))
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)],
                               rtol=1e-3)
    a, b = _params(want_dir), _params(got_dir)
    assert len(a.files) == len(b.files) > 10
    for k in a.files:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-2, atol=1e-3, err_msg=k)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one process with 8 CPU devices."""
    wd = tmp_path_factory.mktemp("mp") / "one"
    p = subprocess.run([sys.executable, "-m", "ride_jax.main", *FLAGS, f"--workdir={wd}"],
                       cwd=ROOT, env=_env(8), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return wd


def test_two_processes_of_four_devices_are_one_of_eight(one_process, tmp_path):
    wd = tmp_path / "two"
    p = _launch(wd, 2, 4)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "devices: 8 (cpu), processes: 2" in p.stderr
    # One log: the second process says only what goes wrong.
    assert "[0] finished at step 12" in p.stdout and "[1] finished" not in p.stdout
    assert not re.search(r"^\[1\] I\d{4} ", p.stderr, re.M)
    _assert_same_run(wd, one_process)
    # Evaluation counts every test image once across the processes (80 in the recipe).
    for run in (wd, one_process):
        last = json.loads((run / "results.json").read_text())["last"]
        assert last["num_examples"] == 80
    want = json.loads((one_process / "results.json").read_text())["last"]
    got = json.loads((wd / "results.json").read_text())["last"]
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1.5 / 80)


def _start(workdir, index: int, port: int):
    """Process ``index`` of 2 (4 CPU devices), started as ride_jax.launch starts it."""
    from ride_jax.launch import process_env
    env = process_env(_env(), index, 2, port, 4)
    return subprocess.Popen(
        [sys.executable, "-m", "ride_jax.main", *FLAGS, f"--workdir={workdir}",
         "--config.distributed=True"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(one_process, tmp_path):
    from ride_jax.launch import _free_port
    wd = tmp_path / "stopped"
    port = _free_port()
    procs = [_start(wd, i, port) for i in range(2)]
    # Wait until the first train row is written, then stop process 1 only.
    deadline = time.monotonic() + 300
    metrics = wd / "metrics.jsonl"
    while not (metrics.exists() and '"kind": "train"' in metrics.read_text()):
        assert time.monotonic() < deadline, "no train step within 300 s"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    m = re.search(r"interrupted at step (\d+)", outs[0][0])
    assert m, outs[0][0] + outs[0][1][-2000:]
    stopped = int(m.group(1))
    assert 1 <= stopped < 4 * EPOCHS
    # Both processes stopped at that step: one checkpoint of it, written together.
    assert str(stopped) in os.listdir(wd / "checkpoints")
    assert max(int(s) for s in os.listdir(wd / "checkpoints") if s.isdigit()) == stopped
    # Rerunning resumes, here as one process with 8 devices, and ends where the
    # uninterrupted run ends.
    p = subprocess.run([sys.executable, "-m", "ride_jax.main", *FLAGS, f"--workdir={wd}"],
                       cwd=ROOT, env=_env(8), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"resumed from step {stopped}" in p.stderr
    assert "finished at step 12" in p.stdout
    _assert_same_run(wd, one_process)


@pytest.mark.parametrize("args,message", [
    (["--processes", "2"], "expected the flags of ride_jax.main after '--' (python -m "
                           "ride_jax.launch --processes N -- --config=... --workdir=...)"),
    (["--processes", "0", "--", "--config=x"], "--processes=0 is invalid: expected an integer >= 1"),
    (["--processes", "two", "--", "--config=x"],
     "--processes=two is invalid: expected an integer >= 1"),
    (["--processes", "2", "--devices-per-process", "-1", "--", "--config=x"],
     "--devices-per-process=-1 is invalid: expected an integer >= 1"),
    (["--processes", "2", "--port", "70000", "--", "--config=x"],
     "--port=70000 is invalid: expected 1..65535"),
    (["--processes", "2", "--"], "no flags for ride_jax.main after '--' (--config=... "
                                 "--workdir=...)"),
    (["--processes", "2", "--gpus-per-process", "2", "--devices-per-process", "2", "--",
      "--config=x"], "--gpus-per-process and --devices-per-process (CPU devices) exclude "
                     "each other"),
])
def test_launch_mistakes_are_one_line(args, message):
    p = subprocess.run([sys.executable, "-m", "ride_jax.launch", *args], cwd=ROOT,
                       env=_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"error: {message}"], p.stderr


def test_each_process_gets_its_id_the_coordinator_and_its_cpu_devices():
    from ride_jax.launch import process_env
    env = process_env({"XLA_FLAGS": "--xla_foo=1 --xla_force_host_platform_device_count=2"},
                      1, 3, 4321, 4)
    assert env["RIDE_JAX_PROCESS_ID"] == "1" and env["RIDE_JAX_NUM_PROCESSES"] == "3"
    assert env["JAX_COORDINATOR_ADDRESS"] == "localhost:4321"
    assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=4"
    assert env["JAX_PLATFORMS"] == "cpu"
    gpus = process_env({}, 2, 4, 1, None, gpus_per_process=2)
    assert gpus["JAX_LOCAL_DEVICE_IDS"] == "4,5" and "XLA_FLAGS" not in gpus
    from ride_jax.main import distributed_args
    assert distributed_args(env) == {"process_id": 1, "num_processes": 3}
    assert distributed_args({}) == {}


def test_two_processes_stream_image_files_each_reading_its_part(tmp_path):
    """The folder recipe (grain) over 2 processes x 2 devices: every process reads only
    its part of each batch, the evaluation counts each test image once, and the run is
    the one of 1 process x 4 devices."""
    from test_folder_stream import VAL_PER_CLASS, _folder
    folder = _folder(tmp_path / "mine")
    # A ResNet-8 on the 32x32 crops: the input path is under test, not the network.
    flags = [f"--config=configs/folder_lt.py:path={folder},smoke,experts=2",
             "--config.optim.lr=0.0001", "--config.log_every_steps=1",
             "--config.model.arch=resnet32", "--config.model.cifar_blocks=1"]
    two = subprocess.run(
        [sys.executable, "-m", "ride_jax.launch", "--processes", "2",
         "--devices-per-process", "2", "--", *flags, f"--workdir={tmp_path / 'two'}"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "ride_jax.main", *flags,
                          f"--workdir={tmp_path / 'one'}"], cwd=ROOT, env=_env(4),
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = _train_losses(tmp_path / "one"), _train_losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)],
                               rtol=1e-3)
    for run in ("one", "two"):
        last = json.loads((tmp_path / run / "results.json").read_text())["last"]
        assert last["num_examples"] == 4 * VAL_PER_CLASS
