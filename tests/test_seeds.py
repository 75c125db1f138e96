"""``python -m ride_jax.analysis seeds``: N seeds of a recipe, mean +- std of the metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT

RECIPE = "configs/synthetic_lt.py:smoke,experts=2"
OVERRIDES = ("--config.epochs=1", "--config.data.remainder=drop")


def _cli(*args, cwd=ROOT):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "ride_jax.analysis", "seeds", *args],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=900)


def _train(workdir, *extra):
    return _cli(f"--config={ROOT / RECIPE}", "--seeds=2", f"--workdir={workdir}",
                *OVERRIDES, *extra)


@pytest.fixture(scope="module")
def seeds_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("seeds")
    p = _train(d)
    assert p.returncode == 0, p.stderr[-3000:]
    return d, p.stdout


def _members(d, name):
    return [json.loads((d / f"seed_{k:02d}" / name).read_text()) for k in range(2)]


def test_members_differ_only_in_seed(seeds_dir):
    d, _ = seeds_dir
    configs = _members(d, "config.json")
    assert [c["seed"] for c in configs] == [0, 1]
    assert [c["epochs"] for c in configs] == [1, 1]
    a, b = (dict(c, seed=None) for c in configs)
    assert a == b


def test_seeds_json_is_numpy_mean_and_sample_std(seeds_dir):
    d, out = seeds_dir
    saved = json.loads((d / "seeds.json").read_text())
    last = [r["last"] for r in _members(d, "results.json")]
    acc = [r["accuracy"] for r in last]
    m = saved["metrics"]
    assert m["accuracy"]["values"] == pytest.approx(acc, abs=1e-12)
    assert m["accuracy"]["mean"] == pytest.approx(np.mean(acc), abs=1e-12)
    assert m["accuracy"]["std"] == pytest.approx(np.std(acc, ddof=1), abs=1e-12)
    # every scalar of the last evaluation, lists and None skipped; ddof=1 checked on a
    # metric that differs between the seeds (the loss)
    want = {k for k, v in last[0].items() if isinstance(v, (int, float))
            and not isinstance(v, bool) and k in m}
    assert {"accuracy", "top5", "few", "class_mean_accuracy", "loss"} <= set(m) == want
    assert "per_class" not in m and "many" not in m      # a list; None (no many class)
    loss = [r["loss"] for r in last]
    assert loss[0] != loss[1]
    assert m["loss"]["std"] == pytest.approx(np.std(loss, ddof=1), rel=1e-9)
    assert saved["std"].startswith("sample")
    assert "accuracy" in out and "+-" in out


def test_rerun_does_not_retrain_and_shift_adds_per_distribution_stats(seeds_dir):
    """A rerun with ``--shift`` trains nothing, evaluates each member on the eleven
    distributions (its analysis/shift.json) and reports their mean +- std (ddof=1)."""
    d, _ = seeds_dir
    files = [d / f"seed_{k:02d}" / "results.json" for k in range(2)]
    mtimes = [f.stat().st_mtime_ns for f in files]
    p = _train(d, "--shift")
    assert p.returncode == 0, p.stderr[-3000:]
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert p.stdout.count("already finished") == 2
    shift = json.loads((d / "seeds.json").read_text())["shift"]
    members = _members(d, "analysis/shift.json")
    assert list(shift) == list(members[0]["distributions"]) and len(shift) == 11
    for name, e in shift.items():
        acc = [m["distributions"][name]["accuracy"] for m in members]
        assert e["accuracy"]["mean"] == pytest.approx(np.mean(acc), abs=1e-12)
        assert e["accuracy"]["std"] == pytest.approx(np.std(acc, ddof=1), abs=1e-12)
        pc = [m["distributions"][name]["prior_corrected"]["accuracy"] for m in members]
        assert e["prior_corrected"]["mean"] == pytest.approx(np.mean(pc), abs=1e-12)
        assert e["tta"] is None                          # RIDE: no test-time aggregation
    assert "backward50" in p.stdout and "prior-corrected" in p.stdout


def test_compare_tabulates(seeds_dir, tmp_path):
    d, _ = seeds_dir
    p = _cli("--compare", str(d), str(d), f"--out={tmp_path}")
    assert p.returncode == 0, p.stderr
    rows = json.loads((tmp_path / "seeds_compare.json").read_text())
    saved = json.loads((d / "seeds.json").read_text())["metrics"]
    assert len(rows) == 2 and {r["method"] for r in rows} == {"ride"}
    assert rows[0]["accuracy"]["mean"] == saved["accuracy"]["mean"]
    table = [line for line in p.stdout.splitlines() if line.startswith(f"| {d} |")]
    assert len(table) == 2 and "| ride | 2 |" in table[0]


@pytest.mark.parametrize("args", [
    ("--config=configs/no_such_recipe.py", "--seeds=2"),
    (f"--config={ROOT / RECIPE}", "--seeds=2", "--config.no_such_key=1"),
    (f"--config={ROOT / RECIPE}", "--seeds=0"),
    ("--compare", "NOWHERE"),
])
def test_bad_input_is_one_error_line(tmp_path, args):
    work = tmp_path / "w"
    extra = () if "--compare" in args else (f"--workdir={work}",)
    p = _cli(*args, *extra, cwd=tmp_path)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert list(tmp_path.iterdir()) == []          # nothing written
