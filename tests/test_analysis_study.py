"""The bias/variance study (RIDE Fig. 1a): resampled training sets, a fixed test set,
the decomposition checked against the trainer's own per-class evaluations."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from ride_jax.analysis.study import compare_studies, resample_config, run_study
from ride_jax.data import load_dataset

from helpers import ROOT, synthetic_config


def _config():
    return synthetic_config("loss=ce", **{"dataset.args.subset_seed": 0})


def test_synthetic_subset_seed_reselects_only_the_training_set():
    args = _config().dataset.args.to_dict()
    a = load_dataset("synthetic_lt", **args)
    b = load_dataset("synthetic_lt", **dict(args, subset_seed=1))
    np.testing.assert_array_equal(a.train_counts, b.train_counts)
    np.testing.assert_array_equal(a.test.images, b.test.images)
    assert not np.array_equal(a.selected, b.selected)
    assert not np.array_equal(a.train.images, b.train.images)
    plain = load_dataset("synthetic_lt", **{k: v for k, v in args.items()
                                             if k != "subset_seed"})
    np.testing.assert_array_equal(plain.train_counts, a.train_counts)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    result = run_study(_config(), d, 2, resample_arg="subset_seed")
    return d, result


def test_study_decomposes_the_resampled_runs(study):
    d, result = study
    runs = [json.loads((d / f"resample_{k:02d}" / "results.json").read_text())["last"]
            for k in range(2)]
    configs = [json.loads((d / f"resample_{k:02d}" / "config.json").read_text())
               for k in range(2)]
    assert [c["dataset"]["args"]["subset_seed"] for c in configs] == [0, 1]
    assert [c["seed"] for c in configs] == [0, 1]
    assert result["accuracy"] == pytest.approx([r["accuracy"] for r in runs], abs=1e-12)
    # The 0-1 loss of class c is 1 - its accuracy averaged over the resamples, whatever
    # the split of that loss into bias and variance.
    want = 1 - np.mean([r["per_class"] for r in runs], axis=0)
    np.testing.assert_allclose(result["per_class"]["loss"], want, atol=1e-12)
    assert result["table"]["all"]["loss"] == pytest.approx(want.mean(), abs=1e-12)
    for k in ("bias", "variance"):
        v = np.asarray(result["per_class"][k])
        assert np.all((v >= 0) & (v <= 1))
    saved = np.load(d / "predictions.npz")
    assert saved["predictions"].shape == (2, len(saved["labels"]))
    png = (d / "bias_variance.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (640, 480)


def test_rerun_resumes_and_compare(study, tmp_path):
    d, result = study
    mtime = (d / "resample_00" / "results.json").stat().st_mtime
    again = run_study(_config(), d, 2, resample_arg="subset_seed")   # nothing retrained
    assert (d / "resample_00" / "results.json").stat().st_mtime == mtime
    assert again["table"] == result["table"]
    text = compare_studies([str(d), str(d)], str(tmp_path), names=["a", "b"])
    assert text.count("| a |") == 4 and (tmp_path / "bias_variance.png").exists()
    assert "90% bootstrap over models" in text
    row = next(line for line in text.splitlines() if line.startswith("| a | all |"))
    bias, lo, hi = (float(v) for v in
                    row.split("|")[3].replace("[", " ").replace("]", " ").replace(",", " ")
                    .split())
    assert 0 <= lo <= hi <= 1 and 0 <= bias <= 1
    plain = compare_studies([str(d)], str(tmp_path / "p"), names=["a"], bootstrap=0)
    assert "[" not in plain and "bootstrap" not in plain


def test_study_refuses_what_cannot_be_a_study(tmp_path):
    with pytest.raises(ValueError, match="changes the TEST set"):
        run_study(_config(), tmp_path / "a", 2, resample_arg="seed")
    with pytest.raises(ValueError, match="no argument 'bogus'"):
        resample_config(_config(), 1, "bogus")
    with pytest.raises(ValueError, match="at least 2"):
        run_study(_config(), tmp_path / "b", 1)
    with pytest.raises(FileNotFoundError, match="study.json"):
        compare_studies([str(tmp_path)], str(tmp_path / "c"))


def test_command_line_compare_and_errors(study, tmp_path):
    d, _ = study
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "ride_jax.analysis.study"]
    ok = subprocess.run(cmd + [f"--compare={d}", "--names=CE", f"--out={tmp_path}"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "| CE | few |" in ok.stdout and (tmp_path / "bias_variance.md").exists()
    bad = subprocess.run(cmd + [f"--workdir={tmp_path / 'x'}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--config" in bad.stderr and "Traceback" not in bad.stderr
