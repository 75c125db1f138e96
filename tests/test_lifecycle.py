"""The run lifecycle: every mistake an early one-line error with nothing written, one run
per workdir, damaged checkpoints survived, nothing non-finite saved, SIGTERM within
seconds (evaluation and compilation included), each metrics row once after a resume."""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ride_jax import config_checks, metrics
from ride_jax.checkpointing import Checkpointer, NonFiniteState
from ride_jax.train import train_and_evaluate
from ride_jax.workdir import WorkdirBusy, WorkdirLock

from helpers import ROOT, run_main, synthetic_config

SMOKE = "configs/synthetic_lt.py:smoke,experts=1"


def _leaves(workdir):
    ck = Checkpointer(str(workdir), asynchronous=False)
    step = ck.latest_step()
    state, _ = ck.read(step)
    ck.close()
    return step, [np.asarray(x) for x in jax.tree.leaves((state["params"],
                                                          state["batch_stats"]))]


def _rows(workdir, kind="train"):
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(l) for l in lines if json.loads(l)["kind"] == kind]


# ----------------------------------------------------------------- config values, early

BAD_VALUES = [
    ("keep_checkpoints", 0, "keep_checkpoints=0 is invalid: expected an integer >= 1"),
    ("eval_every_epochs", 0, "eval_every_epochs=0 is invalid: expected an integer >= 1"),
    ("log_every_steps", 0, "log_every_steps=0 is invalid: expected an integer >= 1"),
    ("checkpoint_every_epochs", 0, "checkpoint_every_epochs=0 is invalid"),
    ("max_steps", -1, "max_steps=-1 is invalid: expected an integer >= 0 (0: no limit)"),
    ("seed", -1, "seed=-1 is invalid: expected an integer in [0, 4294967295]"),
    ("model.num_experts", 0, "model.num_experts=0 is invalid: expected an integer >= 1"),
    ("model.dtype", "float16",
     "model.dtype='float16' is not supported; valid choices are ['float32', 'bfloat16']"),
    ("model.arch", "resnet33", "model.arch='resnet33' is not supported"),
    ("optim.lr", 0.0, "optim.lr=0.0 is invalid: expected a number > 0"),
    ("optim.momentum", 1.0, "optim.momentum=1.0 is invalid: expected a number in [0, 1)"),
    ("data.batch_size", 0, "data.batch_size=0 is invalid"),
    ("data.sampler", "random", "data.sampler='random' is not supported"),
    ("epochs", -2, "epochs=-2 is invalid: expected an integer >= 0"),
    ("steps_per_call", -1, "steps_per_call=-1 is invalid"),
]


@pytest.mark.parametrize("key,value,message", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_every_bad_value_is_refused_before_anything_is_written(tmp_path, key, value, message):
    workdir = tmp_path / "run"
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as e:
        train_and_evaluate(synthetic_config(**{key: value}), str(workdir))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert time.perf_counter() - t0 < 5          # before any dataset, network or compile
    assert not workdir.exists()


def test_schema_covers_exactly_the_base_config():
    from configs import common
    flat = config_checks.flatten(common.get_base_config())
    assert set(flat) == set(config_checks.RULES)
    for key, value in flat.items():               # every default is valid
        config_checks.check_value(key, value)


def test_unknown_keys_list_the_valid_keys_of_their_section():
    assert config_checks.unknown_key("optim.lrr") == (
        "unknown config key 'optim.lrr'; valid keys of 'optim' are ['gamma', 'lr', "
        "'momentum', 'nesterov', 'schedule', 'step1', 'step2', 'warmup_epochs', "
        "'warmup_from', 'weight_decay']")
    top = config_checks.unknown_key("optimm.lr")
    assert "valid keys are [" in top and "'optim'" in top and "'seed'" in top


@pytest.mark.parametrize("extra,expected", [
    (["--config.optim.lrr=0.1"], "error: unknown config key 'optim.lrr'; valid keys of "
                                 "'optim' are ['gamma', 'lr',"),
    (["--config.keep_checkpoints=0"], "error: keep_checkpoints=0 is invalid"),
    (["--config.model.dtype=float16"], "error: model.dtype='float16' is not supported"),
    (["--config.optim.lr=abc"], "error: flag --config.optim.lr=abc: could not convert"),
], ids=["unknown_key", "keep0", "dtype", "type"])
def test_cli_errors_are_one_line_exit_2_and_write_nothing(tmp_path, extra, expected):
    workdir = tmp_path / "run"
    out = run_main(workdir, SMOKE, extra)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    errors = [l for l in out.stderr.splitlines() if "error" in l.lower()]
    assert len(errors) == 1 and errors[0].startswith(expected), out.stderr[-2000:]
    assert not workdir.exists()


def test_cli_refuses_an_empty_workdir_and_a_bad_recipe_argument(tmp_path):
    out = run_main("", str(ROOT / "configs" / "synthetic_lt.py") + ":smoke", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: --workdir is empty")
    assert os.listdir(tmp_path) == []             # nothing in the current directory
    out = run_main(tmp_path / "run", "configs/synthetic_lt.py:smok")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "error: --config=configs/synthetic_lt.py:smok: unknown config argument 'smok'; "
        "valid arguments are ['experts', 'loss', 'smoke', 'stage']")


def test_a_failed_validation_leaves_nothing_so_the_corrected_command_runs(tmp_path):
    with pytest.raises(ValueError, match="model.num_experts=0"):
        train_and_evaluate(synthetic_config(**{"model.num_experts": 0}), str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()
    out = train_and_evaluate(synthetic_config(max_steps=1), str(tmp_path / "w"))
    assert out["status"] == "stopped_at_max_steps" and out["step"] == 1


def test_refusing_another_config_names_each_key_and_both_values(tmp_path):
    train_and_evaluate(synthetic_config(max_steps=1), str(tmp_path))
    with pytest.raises(ValueError) as e:
        train_and_evaluate(synthetic_config(**{"model.num_experts": 3, "loss.max_margin": 0.4,
                                               "max_steps": 1}), str(tmp_path))
    msg = str(e.value)
    assert "loss.max_margin=0.5 there but 0.4 here" in msg
    assert "model.num_experts=2 there but 3 here" in msg


# ---------------------------------------------------------------------------- the lock

_HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from ride_jax.workdir import WorkdirLock
WorkdirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_busy_workdir_is_refused_naming_the_holder_and_a_stale_lock_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD.format(root=str(ROOT)),
                               str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirBusy) as e:
            train_and_evaluate(synthetic_config(max_steps=1), str(tmp_path))
        assert f"pid {holder.pid} on host" in str(e.value)
        assert "in use by a running training" in str(e.value)
        assert not (tmp_path / "config.json").exists()   # the refused run wrote nothing
        out = run_main(tmp_path, SMOKE, ["--config.max_steps=1"])
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert f"pid {holder.pid}" in out.stderr.strip().splitlines()[-1]
    finally:
        holder.kill()              # kill -9: the lock file stays, its holder is dead
        holder.wait()
    assert (tmp_path / "run.lock").exists()
    out = train_and_evaluate(synthetic_config(max_steps=1), str(tmp_path))
    assert out["step"] == 1
    assert not (tmp_path / "run.lock").exists()          # released at the end


def test_the_lock_excludes_a_second_holder_in_the_same_process(tmp_path):
    with WorkdirLock(str(tmp_path)):
        with pytest.raises(WorkdirBusy, match=f"pid {os.getpid()}"):
            WorkdirLock(str(tmp_path)).acquire()
    with WorkdirLock(str(tmp_path)):                     # free again
        pass


# ------------------------------------------------------------------ checkpoint damage

def _damage(step_dir: pathlib.Path, kind: str) -> None:
    data = sorted((p for p in (step_dir / "state").rglob("*") if p.is_file()
                   and "ocdbt.process" in str(p)), key=lambda p: p.stat().st_size)
    big = data[-1]
    if kind == "truncated":
        with open(big, "r+b") as f:
            f.truncate(big.stat().st_size // 2)
    elif kind == "deleted":
        big.unlink()
    elif kind == "overwritten":
        with open(big, "r+b") as f:
            f.seek(big.stat().st_size // 3)
            f.write(b"\xff" * 64)
    elif kind == "no_state":
        shutil.rmtree(step_dir / "state")
    else:
        raise AssertionError(kind)


KINDS = ("truncated", "deleted", "overwritten", "no_state")


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one(tmp_path, kind, caplog):
    state = {"params": {"w": jnp.arange(4000.0)}, "step": jnp.asarray(1, jnp.int32)}
    ck = Checkpointer(str(tmp_path), asynchronous=False)
    ck.save(1, state, {"a": 1})
    ck.save(2, {"params": {"w": jnp.arange(4000.0) * 2}, "step": jnp.asarray(2, jnp.int32)},
            {"a": 1})
    ck.close()
    _damage(tmp_path / "checkpoints" / "2", kind)
    ck = Checkpointer(str(tmp_path), asynchronous=False)
    with caplog.at_level("WARNING"):
        got, config, step = ck.restore_intact()
    assert step == 1 and config == {"a": 1}
    np.testing.assert_array_equal(np.asarray(got["params"]["w"]), np.arange(4000.0))
    warned = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert warned and "checkpoint step 2" in warned[0] and "\n" not in warned[0]
    assert ck.all_steps() == [1]                        # the damaged one was moved aside,
    assert (tmp_path / "damaged_checkpoints" / "2").is_dir()   # not deleted
    ck.close()


def test_a_run_resumes_past_a_damaged_checkpoint_bitwise_with_each_row_once(tmp_path):
    full = train_and_evaluate(synthetic_config(), str(tmp_path / "full"))
    assert full["status"] == "finished" and full["step"] == 8
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part)
    _damage(part / "checkpoints" / "8", "truncated")
    again = train_and_evaluate(synthetic_config(), str(part))
    assert again["status"] == "finished" and again["step"] == 8
    (s1, a), (s2, b) = _leaves(tmp_path / "full"), _leaves(part)
    assert s1 == s2 == 8
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    steps = [r["step"] for r in _rows(part)]
    assert steps == sorted(set(steps)) == [r["step"] for r in _rows(tmp_path / "full")]
    assert [r["step"] for r in _rows(part, "eval")] == [4, 8]
    assert (part / "damaged_checkpoints" / "8").is_dir()


def test_only_damaged_checkpoints_is_a_one_line_error_naming_the_path(tmp_path):
    # The ResNet-32: its checkpoint has enough reads in flight when the restore fails
    # that unfiltered late-read reports show (the smoke ResNet-8's did not, here).
    net = "--config.model.cifar_blocks=5"
    out = run_main(tmp_path, SMOKE, ["--config.max_steps=2", "--config.log_every_steps=1",
                                     net])
    assert out.returncode == 0, out.stderr[-2000:]
    _damage(tmp_path / "checkpoints" / "2", "truncated")
    out = run_main(tmp_path, SMOKE, ["--config.max_steps=3", net])
    assert out.returncode == 2 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: no intact checkpoint in {tmp_path}/checkpoints: "
                           "steps [2] are all damaged"), last
    assert (tmp_path / "checkpoints" / "2").is_dir()      # nothing moved or deleted


# ----------------------------------------------------------------------- non-finite

def test_a_non_finite_state_is_never_saved(tmp_path):
    state = {"params": {"w": jnp.ones(3)},
             "batch_stats": {"bn": {"var": jnp.array([1.0, jnp.inf])}}}
    ck = Checkpointer(str(tmp_path), asynchronous=False)
    with pytest.raises(NonFiniteState, match=r"after step 5 holds non-finite values "
                                             r"\(in batch_stats/bn/var\)"):
        ck.save(5, state, {})
    assert ck.latest_step() is None and ck.all_steps() == []
    ck.close()


def test_nan_stop_names_the_logged_step_and_the_real_last_good_checkpoint(tmp_path):
    # Epoch 1 trains normally and is checkpointed at step 4; the LR step at epoch 2
    # multiplies the LR by 1e30, so the loss of a step in epoch 2 is non-finite.
    out = run_main(tmp_path, "configs/synthetic_lt.py:smoke,experts=2",
                   ["--config.optim.gamma=1e30", "--config.log_every_steps=1",
                    "--config.data.remainder=drop"])
    assert out.returncode == 3, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert re.match(r"error: non-finite loss (nan|inf|-inf) at step \d+/8 \(epoch 2\); ",
                    last), last
    bad = int(last.split("at step ")[1].split("/")[0])
    assert bad > 4
    assert last.endswith(f"the last good checkpoint is step 4 in {tmp_path}/checkpoints")
    logged = [int(l.split("step ")[1].split("/")[0]) for l in out.stderr.splitlines()
              if " step " in l and " loss " in l and "ETA" in l]
    assert logged and max(logged) == bad - 1      # the log's numbering: steps done
    ck = Checkpointer(str(tmp_path), asynchronous=False)
    assert ck.all_steps() == [4]
    ck.close()


def test_nan_before_any_checkpoint_says_there_is_none(tmp_path):
    c = synthetic_config(**{"optim.lr": 1e30, "log_every_steps": 1})
    with pytest.raises(FloatingPointError) as e:
        train_and_evaluate(c, str(tmp_path))
    assert str(e.value).endswith("there is no checkpoint yet"), str(e.value)
    assert "step None" not in str(e.value)


# ------------------------------------------------------------------------ signals

def test_sigterm_during_evaluation_stops_at_once_and_the_resume_evaluates_first(
        tmp_path, monkeypatch):
    full = train_and_evaluate(synthetic_config(), str(tmp_path / "full"))
    calls = {"n": 0, "sent": None}
    add = metrics.add_counts

    def add_then_signal(total, counts):      # SIGTERM right after the 1st eval batch
        calls["n"] += 1
        if calls["n"] == 1:
            calls["sent"] = time.perf_counter()
            os.kill(os.getpid(), signal.SIGTERM)
        return add(total, counts)
    monkeypatch.setattr(metrics, "add_counts", add_then_signal)
    part = tmp_path / "part"
    out = train_and_evaluate(synthetic_config(), str(part))
    took = time.perf_counter() - calls["sent"]
    assert out["status"] == "interrupted" and out["step"] == 4, out
    assert took < 5, took                         # no waiting for the evaluation's end
    assert not (part / "eval" / "epoch_0001.json").exists()
    monkeypatch.setattr(metrics, "add_counts", add)
    rest = train_and_evaluate(synthetic_config(), str(part))
    assert rest["status"] == "finished" and rest["step"] == 8
    assert json.loads((part / "eval" / "epoch_0001.json").read_text())["step"] == 4
    assert [r["step"] for r in _rows(part, "eval")] == [4, 8]
    assert [r["step"] for r in _rows(part)] == [r["step"] for r in _rows(tmp_path / "full")]
    (_, a), (_, b) = _leaves(tmp_path / "full"), _leaves(part)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert rest["last"]["accuracy"] == full["last"]["accuracy"]


def test_sigterm_while_compiling_exits_within_seconds(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ride_jax.main", f"--config={SMOKE}", f"--workdir={tmp_path}"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:                  # wait until compilation starts
        lines.append(line)
        if "trainable parameters" in line:
            break
    assert proc.poll() is None, "".join(lines)
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    took = time.perf_counter() - t0
    assert proc.returncode == 0, err[-2000:]
    assert took < 8, took
    assert "interrupted while compiling, before any unsaved step; no checkpoint yet" in err
    assert not (tmp_path / "run.lock").exists() and (tmp_path / "config.json").exists()


def test_late_read_reports_are_dropped_and_nothing_else(monkeypatch):
    import logging as pylogging
    import types
    from ride_jax.checkpointing import quiet_late_read_reports
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)   # restored after
    seen = []
    hook = quiet_late_read_reports(lambda report: seen.append(report.exc_value))
    assert sys.unraisablehook is hook
    late = [RuntimeError("Event loop is closed"),
            Exception("Encountered error while reading array index: (slice(0, 3, 1),)")]
    other = [RuntimeError("something else"), ValueError("Event loop is closed!"),
             Exception("a reading error")]
    for exc in late + other:
        hook(types.SimpleNamespace(exc_value=exc, exc_type=type(exc), object=None))
    assert seen == other
    logged = []

    class Keep(pylogging.Handler):
        def emit(self, record):
            logged.append(record.exc_info[1])
    aio = pylogging.getLogger("asyncio")
    keep = Keep()
    aio.addHandler(keep)
    try:
        for exc in late + other:
            aio.error("Task exception was never retrieved",
                      exc_info=(type(exc), exc, None))
    finally:
        aio.removeHandler(keep)
    assert logged == other