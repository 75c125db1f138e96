"""``python -m ride_jax.analysis shift``: a finished run on the eleven shifted test
distributions (forward 50 ... uniform ... backward 50), against the run's own evaluation
and NumPy recomputations.

The expected subsets and per-class sizes are restated below from SADE's
``imbalance_cifar.py`` (``train=False``), never taken from the code under test.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from ride_jax.analysis.shift import compare_shift, evaluate_shift, shift_logits, shift_table

from helpers import ROOT, run_main

NAMES = ["forward50", "forward25", "forward10", "forward5", "forward2", "uniform",
         "backward2", "backward5", "backward10", "backward25", "backward50"]
RATIO = {"forward": (50, 25, 10, 5, 2), "backward": (2, 5, 10, 25, 50)}
CONFIG = "configs/synthetic_lt.py:smoke,experts=2"
ENV = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}


def _parse(name):
    if name == "uniform":
        return "forward", 1.0
    for d in ("forward", "backward"):
        if name.startswith(d):
            return d, float(name[len(d):])
    raise AssertionError(name)


def official_counts(num_classes, per_class, name):
    """SADE ``IMBALANCECIFAR*.get_img_num_per_cls`` with ``imb_factor = 1 / ratio``."""
    direction, ratio = _parse(name)
    f = 1.0 / ratio
    rank = [c if direction == "forward" else num_classes - 1 - c for c in range(num_classes)]
    return [int(per_class * f ** (k / (num_classes - 1.0))) for k in rank]


def official_subset(labels, name, seed=0):
    """SADE ``IMBALANCECIFAR*.gen_imbalanced_data`` on a balanced test set."""
    labels = np.asarray(labels)
    num_classes = labels.max() + 1
    counts = official_counts(num_classes, int(np.sum(labels == 0)), name)
    rng = np.random.RandomState(seed)
    kept = []
    for c in range(num_classes):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        kept.append(idx[:counts[c]])
    return np.concatenate(kept)


def by_hand(logits, labels, train_counts, idx, correct):
    """Top-1 and per-group accuracies on rows ``idx``, optionally prior-corrected."""
    z, y = logits[idx].astype(np.float64), labels[idx]
    num_classes = logits.shape[1]
    if correct:
        test = np.bincount(y, minlength=num_classes) / len(y)
        train = np.asarray(train_counts, np.float64) / np.sum(train_counts)
        with np.errstate(divide="ignore"):
            z = z + np.log(test) - np.log(train)
    pred = z.argmax(-1)
    out = {"accuracy": float(np.mean(pred == y))}
    per_class = np.array([np.mean(pred[y == c] == c) if np.any(y == c) else np.nan
                          for c in range(num_classes)])
    n = np.asarray(train_counts)
    for g, m in (("many", n > 100), ("medium", (n >= 20) & (n <= 100)), ("few", n < 20)):
        v = per_class[m & ~np.isnan(per_class)]
        out[g] = float(v.mean()) if v.size else None
    return out


def assert_close(got, want):
    assert set(got) >= set(want)
    for k, v in want.items():
        if v is None:
            assert got[k] is None, k
        else:
            assert got[k] == pytest.approx(v, abs=1e-12), k


def shift_cli(*args):
    return subprocess.run([sys.executable, "-m", "ride_jax.analysis", "shift", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENV)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny finished runs (seeds 0 and 1) and ``shift --run`` on the first."""
    d = tmp_path_factory.mktemp("shift")
    for name, seed in (("a", 0), ("b", 1)):
        r = run_main(d / name, CONFIG, ["--config.epochs=1", "--config.data.remainder=drop",
                                        f"--config.seed={seed}",
                                        "--config.model.cifar_blocks=1"])   # a ResNet-8
        assert r.returncode == 0, r.stderr[-3000:]
    cli = shift_cli("--run", str(d / "a"))
    assert cli.returncode == 0, cli.stderr[-3000:]
    return {"dir": d, "cli": cli,
            "shift": json.loads((d / "a" / "analysis" / "shift.json").read_text()),
            "results": json.loads((d / "a" / "results.json").read_text()),
            "info": json.loads((d / "a" / "dataset.json").read_text())}


def test_json_has_the_eleven_distributions_in_order(runs):
    s = runs["shift"]
    assert list(s["distributions"]) == NAMES
    assert s["which"] == "latest" and s["dataset"] == "synthetic_lt"
    assert s["train_counts"] == runs["info"]["train_counts"]
    for name, e in s["distributions"].items():
        assert (e["direction"], e["ratio"]) == ((_parse(name)[0] if name != "uniform"
                                                 else "uniform"), _parse(name)[1])
        assert set(e["prior_corrected"]) == {"accuracy", "many", "medium", "few"}
    out = runs["cli"].stdout
    assert "wrote" in out and all(n in out for n in NAMES)


def test_uniform_is_the_runs_own_evaluation(runs):
    uniform = runs["shift"]["distributions"]["uniform"]
    last = runs["results"]["last"]
    assert uniform["num_examples"] == last["num_examples"] == 80
    assert_close(uniform, {k: last[k] for k in ("accuracy", "many", "medium", "few")})


def test_num_examples_follow_the_formula(runs):
    counts = runs["info"]["train_counts"]
    assert len(counts) == 10
    for name, e in runs["shift"]["distributions"].items():
        want = official_counts(10, 8, name)     # smoke: 10 classes, 8 test images each
        assert e["test_counts"] == want, name
        assert e["num_examples"] == sum(want), name
    # A few by hand: forward 50 keeps int(8 * 0.02 ** (k / 9)) = 8, 5, 3, 2, 1, 0, ...
    d = runs["shift"]["distributions"]
    assert d["forward50"]["num_examples"] == 19 == d["backward50"]["num_examples"]


def test_shifted_entries_match_a_numpy_recomputation(runs):
    run = runs["dir"] / "a"
    p = shift_logits(run)
    logits, labels = p["logits"], p["labels"]
    train = runs["info"]["train_counts"]
    # the logits are the run's evaluation (its own accuracy)
    assert np.mean(logits.argmax(-1) == labels) == pytest.approx(
        runs["results"]["last"]["accuracy"], abs=1e-12)
    for name in ("forward10", "backward25", "backward2"):
        idx = official_subset(labels, name)
        e = runs["shift"]["distributions"][name]
        assert_close(e, by_hand(logits, labels, train, idx, correct=False))
        assert_close(e["prior_corrected"], by_hand(logits, labels, train, idx, correct=True))


def test_shift_table_on_random_logits_matches_numpy():
    """Prior correction that changes many predictions (the tiny run hardly learns)."""
    rng = np.random.default_rng(3)
    labels = rng.permutation(np.repeat(np.arange(20), 30))   # balanced, shuffled order
    train = np.round(300 * 0.02 ** (np.arange(20) / 19)).astype(int)   # many/medium/few
    logits = rng.normal(size=(600, 20)) + 2.0 * np.eye(20)[labels] + np.log(train)
    table = shift_table(logits, labels, train)
    assert list(table) == NAMES
    changed = 0
    for name in NAMES:
        idx = official_subset(labels, name)
        plain = by_hand(logits, labels, train, idx, correct=False)
        corrected = by_hand(logits, labels, train, idx, correct=True)
        assert table[name]["num_examples"] == len(idx)
        assert_close(table[name], plain)
        assert_close(table[name]["prior_corrected"], corrected)
        changed += corrected["accuracy"] != plain["accuracy"]
    assert changed >= 8
    # Correction helps most on the backward sets (the test prior opposes the training one).
    assert (table["backward50"]["prior_corrected"]["accuracy"]
            > table["backward50"]["accuracy"] + 0.1)


def _png_size(path):
    data = pathlib.Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_png_is_written(runs):
    png = runs["dir"] / "a" / "analysis" / "shift.png"
    assert _png_size(png) == (640, 480)
    assert sorted(x.name for x in png.parent.iterdir()) == ["shift.json", "shift.png"]


def test_which_reaches_the_checkpoint(runs, tmp_path):
    run = runs["dir"] / "a"
    step = runs["results"]["last"]["step"]
    r = evaluate_shift(run, str(step), tmp_path / "step")
    assert r["which"] == step
    assert json.loads((tmp_path / "step" / "shift.json").read_text())["which"] == step
    assert r["distributions"] == runs["shift"]["distributions"]   # the only checkpoint
    with pytest.raises(ValueError, match=f"available steps are \\[{step}\\]"):
        evaluate_shift(run, step + 1, tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


def test_compare_two_runs_writes_one_png(runs, tmp_path):
    d = runs["dir"]
    r = shift_cli("--compare", str(d / "a"), str(d / "b"), "--out", str(tmp_path / "cmp"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert [x.name for x in (tmp_path / "cmp").iterdir()] == ["shift.png"]
    assert _png_size(tmp_path / "cmp" / "shift.png") == (640, 480)
    assert "a (latest checkpoint)" in r.stdout and "b (latest checkpoint)" in r.stdout
    assert not (d / "b" / "analysis").exists()       # nothing written into the runs


def test_compare_reuses_a_saved_shift_json(runs, tmp_path):
    # A folder holding only a's shift.json: it compares only if the file is reused.
    saved = tmp_path / "copy" / "analysis"
    saved.mkdir(parents=True)
    shutil.copy(runs["dir"] / "a" / "analysis" / "shift.json", saved / "shift.json")
    out = compare_shift([tmp_path / "copy"], tmp_path / "o")
    assert out["reused"] == ["copy"]
    assert out["results"]["copy"]["distributions"] == runs["shift"]["distributions"]
    # ... and not for another checkpoint: then the folder (no run) is an error.
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        compare_shift([tmp_path / "copy"], tmp_path / "o2", which="best")
    assert not (tmp_path / "o2").exists()


def _one_error_line(r):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    return lines[0]


def test_bad_input_is_one_line_and_writes_nothing(runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no checkpoint" in _one_error_line(
        shift_cli("--run", str(empty), "--out", str(tmp_path / "o1")))
    assert "which='newest'" in _one_error_line(
        shift_cli("--run", str(runs["dir"] / "a"), "--which", "newest",
                  "--out", str(tmp_path / "o2")))
    streamed = tmp_path / "inet"
    streamed.mkdir()
    (streamed / "config.json").write_text(json.dumps({"dataset": {"name": "imagenet_lt"}}))
    # a streamed run reads its test images from files: without --image-root (and none
    # in its config) that is an error before anything is loaded
    assert "pass --image-root DIR" in _one_error_line(
        shift_cli("--run", str(streamed), "--out", str(tmp_path / "o3")))
    assert "no checkpoint" in _one_error_line(
        shift_cli("--compare", str(runs["dir"] / "a"), str(empty), "--out",
                  str(tmp_path / "o4")))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["empty", "inet"]
    assert sorted(x.name for x in empty.iterdir()) == []
