"""Checkpoint preservation: the newest ``keep`` AND the best by evaluation accuracy
(Orbax's LatestN + BestN), the best known after a reopen, and ``load_run`` of the
latest, the best or a given step."""

import json
import pathlib
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from ride_jax.checkpointing import (Checkpointer, NoIntactCheckpoint, check_which,
                                    load_run)

ACCS = [0.3, 0.5, 0.4, 0.2, 0.1]          # steps 1..5: step 2 is the best


def _state(step):
    return {"params": {"w": jnp.full((4,), float(step))},
            "batch_stats": {"bn": {"mean": jnp.full((2,), 10.0 * step)}},
            "step": jnp.asarray(step, jnp.int32)}


def _save_all(workdir, accs, keep, asynchronous=True, start=1):
    """Save steps ``start, start+1, ...`` with ``accs`` (None: without metrics)."""
    ck = Checkpointer(str(workdir), keep=keep, asynchronous=asynchronous)
    for step, acc in enumerate(accs, start):
        ck.save(step, _state(step), {"run": "r", "step": step},
                metrics=None if acc is None else {"accuracy": acc, "loss": 1.0 - acc})
    ck.wait()
    return ck


def _on_disk(workdir):
    return {int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir()
            if p.name.isdigit()}


def _best_of(accs):
    """The expected best step (1-based), the newest of equal accuracies."""
    scored = [(a, s) for s, a in enumerate(accs, 1) if a is not None]
    return max(scored)[1] if scored else None


# ------------------------------------------------------------------ preservation

def test_the_newest_keep_and_the_best_are_kept(tmp_path):
    ck = _save_all(tmp_path, ACCS, keep=2)
    expected = {_best_of(ACCS), len(ACCS) - 1, len(ACCS)}        # {2, 4, 5}
    assert expected == {2, 4, 5}
    assert _on_disk(tmp_path) == expected
    assert set(ck.all_steps()) == expected
    assert ck.best_step() == 2
    assert ck.metrics(2) == {"accuracy": 0.5, "loss": 0.5}
    ck.close()


def test_the_best_survives_a_reopen_and_still_guards_its_checkpoint(tmp_path):
    _save_all(tmp_path, ACCS, keep=2).close()
    ck = Checkpointer(str(tmp_path), keep=2)
    assert ck.best_step() == 2 and ck.all_steps() == [2, 4, 5]
    # A worse save after the reopen: step 2 (best, read from disk) stays, 4 goes.
    ck.save(6, _state(6), {"step": 6}, metrics={"accuracy": 0.05})
    ck.wait()
    assert _on_disk(tmp_path) == {2, 5, 6}
    assert ck.best_step() == 2
    ck.close()


def test_a_newer_better_checkpoint_replaces_the_old_best(tmp_path):
    ck = _save_all(tmp_path, ACCS, keep=2)
    ck.save(6, _state(6), {"step": 6}, metrics={"accuracy": 0.9})
    ck.wait()
    assert ck.best_step() == 6
    assert _on_disk(tmp_path) == {5, 6}            # old best 2 is not among the newest 2
    ck.close()
    ck = Checkpointer(str(tmp_path), keep=2)
    assert ck.best_step() == 6
    ck.close()


def test_an_old_best_among_the_newest_is_kept_as_a_newest(tmp_path):
    ck = _save_all(tmp_path, [0.3, 0.5, 0.6], keep=2)
    assert ck.best_step() == 3
    assert _on_disk(tmp_path) == {2, 3}            # 2 is no longer best, but newest
    ck.save(4, _state(4), {"step": 4}, metrics={"accuracy": 0.1})
    ck.wait()
    assert _on_disk(tmp_path) == {3, 4}
    ck.close()


def test_equal_accuracies_make_the_newer_one_the_best(tmp_path):
    accs = [0.5, 0.2, 0.5, 0.1, 0.1]
    ck = _save_all(tmp_path, accs, keep=1, asynchronous=False)
    assert _best_of(accs) == 3
    assert ck.best_step() == 3 and _on_disk(tmp_path) == {3, 5}
    ck.close()


def test_checkpoints_without_metrics_count_as_newest_never_as_best(tmp_path, caplog):
    accs = [0.3, None, 0.5, None, None]
    with caplog.at_level("WARNING"):
        ck = _save_all(tmp_path, accs, keep=2)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]   # intended saves
    assert ck.best_step() == 3
    assert _on_disk(tmp_path) == {3, 4, 5}
    assert ck.metrics(5) is None
    ck.save(6, _state(6), {"step": 6})
    ck.wait()
    assert _on_disk(tmp_path) == {3, 5, 6}
    ck.close()
    ck = Checkpointer(str(tmp_path), keep=2)
    assert ck.best_step() == 3 and ck.all_steps() == [3, 5, 6]
    ck.close()
    cfg, variables, _ = load_run(tmp_path, "latest")
    assert cfg["step"] == 6
    np.testing.assert_array_equal(variables["params"]["w"], np.full((4,), 6.0))


def test_without_any_metrics_only_the_newest_are_kept(tmp_path):
    ck = _save_all(tmp_path, [None] * 4, keep=2)
    assert ck.best_step() is None
    assert _on_disk(tmp_path) == {3, 4}
    ck.close()


def test_resume_restores_the_newest_not_the_best(tmp_path):
    _save_all(tmp_path, ACCS, keep=2).close()
    ck = Checkpointer(str(tmp_path), keep=2)
    state, config, step = ck.restore_intact()
    assert step == 5 and config["step"] == 5
    np.testing.assert_array_equal(np.asarray(state["params"]["w"]), np.full((4,), 5.0))
    ck.close()


@pytest.mark.parametrize("metrics", [{"acc": 0.5}, {"accuracy": float("nan")},
                                     {"accuracy": "high"}, {"accuracy": True}, 0.5])
def test_bad_metrics_are_refused_and_nothing_is_written(tmp_path, metrics):
    ck = Checkpointer(str(tmp_path), asynchronous=False)
    with pytest.raises(ValueError, match="metrics"):
        ck.save(1, _state(1), {}, metrics=metrics)
    assert ck.all_steps() == [] and _on_disk(tmp_path) == set()
    ck.close()


def test_metrics_as_array_scalars_are_stored_as_numbers(tmp_path):
    ck = Checkpointer(str(tmp_path), asynchronous=False)
    ck.save(1, _state(1), {}, metrics={"accuracy": jnp.asarray(0.25),
                                        "loss": np.float32(2.0)})
    ck.close()
    ck = Checkpointer(str(tmp_path))
    assert ck.metrics(1) == {"accuracy": 0.25, "loss": 2.0} and ck.best_step() == 1
    ck.close()


def test_a_damaged_metrics_file_is_no_metrics_not_an_error(tmp_path, caplog):
    _save_all(tmp_path, ACCS, keep=2).close()
    (tmp_path / "checkpoints" / "2" / "metrics" / "metrics").write_text("{garbage")
    with caplog.at_level("WARNING"):
        ck = Checkpointer(str(tmp_path), keep=2)
    assert ck.all_steps() == [2, 4, 5]
    assert ck.best_step() == 4                     # 0.2 of step 4 beats 0.1 of step 5
    assert any("metrics of checkpoint step 2" in r.getMessage() for r in caplog.records)
    _, _, step = ck.restore_intact()
    assert step == 5
    ck.close()


# ---------------------------------------------------------------------- load_run

def _run(tmp_path, accs=ACCS, keep=2, dataset=True):
    workdir = tmp_path / "run"
    _save_all(workdir, accs, keep=keep).close()
    if dataset:
        (workdir / "dataset.json").write_text(json.dumps({"num_classes": 7}))
    return workdir


def _assert_is_step(out, step):
    cfg, variables, _ = out
    assert cfg == {"run": "r", "step": step}
    assert set(variables) == {"params", "batch_stats"}
    np.testing.assert_array_equal(variables["params"]["w"], np.full((4,), float(step)))
    np.testing.assert_array_equal(variables["batch_stats"]["bn"]["mean"],
                                  np.full((2,), 10.0 * step))
    assert isinstance(variables["params"]["w"], np.ndarray)      # host arrays


def test_load_run_best_latest_and_default(tmp_path):
    workdir = _run(tmp_path)
    out = load_run(workdir, "best")
    _assert_is_step(out, 2)
    assert out[2] == {"num_classes": 7}
    _assert_is_step(load_run(str(workdir), "latest"), 5)
    _assert_is_step(load_run(workdir), 5)
    _assert_is_step(load_run(workdir / "checkpoints", "best"), 2)   # its folder works too


@pytest.mark.parametrize("which", [3, "3", np.int64(3)])
def test_load_run_of_a_given_step(tmp_path, which):
    workdir = _run(tmp_path, keep=3, dataset=False)      # steps 2 (best), 3, 4, 5
    assert _on_disk(workdir) == {2, 3, 4, 5}
    cfg, variables, info = load_run(workdir, which)
    _assert_is_step((cfg, variables, info), 3)
    assert info is None


def test_load_run_of_a_missing_step_lists_the_available_ones(tmp_path):
    workdir = _run(tmp_path)
    with pytest.raises(ValueError) as e:
        load_run(workdir, 3)
    msg = str(e.value)
    assert "\n" not in msg and "step 3" in msg and "[2, 4, 5]" in msg, msg


@pytest.mark.parametrize("which", ["bset", "", "-1", "3.0", -1, 2.0, True, None])
def test_load_run_of_a_bad_which_lists_the_choices(tmp_path, which):
    workdir = _run(tmp_path)
    with pytest.raises(ValueError) as e:
        load_run(workdir, which)
    msg = str(e.value)
    assert "\n" not in msg and repr(which) in msg, msg
    assert "'latest'" in msg and "'best'" in msg and "step number" in msg, msg


def test_check_which_needs_no_disk(tmp_path):
    assert check_which("latest") == "latest" and check_which("best") == "best"
    assert check_which(7) == 7 and check_which("12") == 12 and check_which(0) == 0
    assert type(check_which(np.int32(4))) is int
    with pytest.raises(ValueError, match=r"^init_which='bset' is invalid: expected "
                                         r"'latest'"):
        check_which("bset", name="init_which")
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match="'bset'"):          # not FileNotFoundError
        load_run(missing, "bset")
    assert not missing.exists()


def test_load_run_best_without_metrics_is_a_one_line_error(tmp_path):
    workdir = _run(tmp_path, accs=[None, None, None])
    with pytest.raises(ValueError) as e:
        load_run(workdir, "best")
    msg = str(e.value)
    assert "\n" not in msg and str(workdir) in msg and "metrics" in msg, msg
    assert "[2, 3]" in msg, msg
    _assert_is_step(load_run(workdir, "latest"), 3)      # the rest still works


def test_load_run_without_checkpoints_is_file_not_found(tmp_path):
    for which in ("latest", "best", 1):
        with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
            load_run(tmp_path, which)
    assert not (tmp_path / "checkpoints").exists()


def test_load_run_is_read_only_with_damaged_checkpoints(tmp_path):
    workdir = _run(tmp_path)
    shutil.rmtree(workdir / "checkpoints" / "5" / "state")      # the newest is damaged
    _assert_is_step(load_run(workdir), 4)                        # skipped, not moved
    shutil.rmtree(workdir / "checkpoints" / "2" / "state")      # the best is damaged
    with pytest.raises(NoIntactCheckpoint) as e:
        load_run(workdir, "best")
    msg = str(e.value)
    assert "\n" not in msg and "step 2" in msg and "damaged" in msg, msg
    assert _on_disk(workdir) == {2, 4, 5}                        # nothing moved
    assert not (workdir / "damaged_checkpoints").exists()
