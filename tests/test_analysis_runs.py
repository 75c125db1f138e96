"""Analysis of finished runs: predictions, figures and summary agree with the trainer's
own evaluation (plain and routed runs), and the command line."""

from __future__ import annotations

import json
import pathlib
import struct
import subprocess
import sys

import numpy as np
import pytest

from ride_jax.analysis.runs import analyze_run, predict_run
from ride_jax.train import train_and_evaluate

from helpers import ROOT, synthetic_config


def _png_size(path):
    data = pathlib.Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _results(workdir):
    return json.loads((pathlib.Path(workdir) / "results.json").read_text())


@pytest.fixture(scope="module")
def runs(ride2_run, tmp_path_factory):
    """A RIDE-2 stage-1 run (conftest's) and its RIDE-EA stage 2 (routed evaluation)."""
    d = tmp_path_factory.mktemp("analysis")
    (d / "s1").symlink_to(ride2_run, target_is_directory=True)
    assert train_and_evaluate(synthetic_config("experts=2,stage=router",
                                               init_from=str(ride2_run)),
                              str(d / "ea"))["status"] == "finished"
    return d


def test_predictions_reproduce_the_trainers_evaluation(runs):
    p = predict_run(runs / "s1")
    last = _results(runs / "s1")["last"]
    preds = p["logits"].argmax(-1)
    assert p["logits"].shape == (len(p["labels"]), 10)
    assert p["expert_logits"].shape == (2, len(p["labels"]), 10)
    assert np.mean(preds == p["labels"]) == pytest.approx(last["accuracy"], abs=1e-12)
    per_class = [float(np.mean(preds[p["labels"] == c] == c)) for c in range(10)]
    np.testing.assert_allclose(per_class, last["per_class"], atol=1e-12)
    assert np.all(p["num_experts"] == 2)


def test_analyze_run_writes_figures_and_summary(runs, tmp_path):
    s = analyze_run(runs / "s1", tmp_path / "out")
    names = sorted(pathlib.Path(f).name for f in s["files"])
    assert names == ["accuracy_vs_count.png", "confusion.png", "hardest_negatives.png",
                     "reliability.png"]
    for f in s["files"]:
        assert _png_size(f) == (640, 480)
    saved = json.loads((tmp_path / "out" / "analysis.json").read_text())
    last = _results(runs / "s1")["last"]
    assert saved["accuracy"] == pytest.approx(last["accuracy"], abs=1e-12)
    for g in ("many", "medium", "few"):
        assert saved["groups"][g] == pytest.approx(last[g], abs=1e-9)
    assert saved["per_class"]["train_count"] == json.loads(
        (runs / "s1" / "dataset.json").read_text())["train_counts"]


def test_routed_run_usage_matches_the_trainer(runs):
    s = analyze_run(runs / "ea")
    last = _results(runs / "ea")["last"]
    assert s["accuracy"] == pytest.approx(last["accuracy"], abs=1e-12)
    assert s["mean_experts"] == pytest.approx(last["mean_experts"], abs=1e-9)
    assert "expert_usage.png" in {pathlib.Path(f).name for f in s["files"]}
    usage = np.asarray(s["per_class"]["experts_used"])            # [C, E]
    assert usage.shape == (10, 2) and usage.sum() == len(predict_run(runs / "ea")["labels"])


def test_command_line(runs, tmp_path):
    env_cmd = [sys.executable, "-m", "ride_jax.analysis", "run"]
    ok = subprocess.run(env_cmd + [f"--workdir={runs / 's1'}", f"--out={tmp_path / 'o'}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin",
                             "PYTHONPATH": str(ROOT)})
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "o" / "analysis.json").exists() and "wrote" in ok.stdout
    bad = subprocess.run(env_cmd + [f"--workdir={tmp_path / 'none'}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600,
                         env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin",
                              "PYTHONPATH": str(ROOT)})
    assert bad.returncode == 2 and "no checkpoint" in bad.stderr
    assert "Traceback" not in bad.stderr
