"""Calibration in the evaluation: ECE overall and per shot group in every evaluation
summary (epoch JSON, results.json, eval/* metrics) and the reliability diagram of the
run analysis."""

from __future__ import annotations

import json
import pathlib
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ride_jax import evaluation, metrics
from ride_jax.data import shot_masks

from helpers import synthetic_config

STATE = {"params": {}, "batch_stats": {}}


class _FixedLogits:
    """A 'network' whose logits are the batch's images (one row per example)."""
    num_experts = 1

    def apply(self, variables, images, train=False):
        return {"logits": images, "expert_logits": images[None]}


class _Loader:
    def __init__(self, batches):
        self.batches = batches

    def eval_batches(self):
        return iter(self.batches)


class _Writer:
    def __init__(self):
        self.rows = []

    def scalars(self, step, values, kind):
        self.rows.append((step, kind, dict(values)))


def _np_softmax(x):
    x = np.asarray(x, np.float64)
    z = np.exp(x - x.max(-1, keepdims=True))
    return (z / z.sum(-1, keepdims=True)).astype(np.float32)


# Training counts: classes 0, 1 many (> 100), 2, 3 few (< 20), no medium class.
TRAIN_COUNTS = np.array([500, 150, 10, 3])


def _batches(seed=0, n_batches=3, batch=16):
    """Random logits with scales so that the confidences spread over the bins; the last
    batch ends in padding rows that are confidently WRONG (they would move the ECE)."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(n_batches):
        logits = rng.standard_normal((batch, 4)) * rng.uniform(0.2, 5.0, (batch, 1))
        labels = rng.integers(0, 4, batch)
        mask = np.ones(batch, bool)
        if b == n_batches - 1:
            mask[-5:] = False
            labels[-5:] = 0
            logits[-5:] = [-20.0, 20.0, 0.0, 0.0]       # 100% confident, wrong
        out.append({"image": jnp.asarray(logits, jnp.float32),
                    "label": jnp.asarray(labels, jnp.int32), "mask": jnp.asarray(mask)})
    return out


def _expected(batches, class_mask=None, with_padding=False):
    probs = np.concatenate([_np_softmax(b["image"]) for b in batches])
    labels = np.concatenate([np.asarray(b["label"]) for b in batches])
    mask = None if with_padding else np.concatenate([np.asarray(b["mask"]) for b in batches])
    return metrics.expected_calibration_error(probs, labels, 15, mask, class_mask)


def test_eval_step_counts_match_numpy_softmax():
    batches = _batches()
    step = jax.jit(evaluation.make_eval_step(_FixedLogits(), class_counts=TRAIN_COUNTS))
    total = None
    for b in batches:
        total = metrics.add_counts(total, step(STATE, b))
    cal = total["calibration"]
    assert set(cal) == {"all", "many", "medium", "few"}
    n_real = sum(int(np.asarray(b["mask"]).sum()) for b in batches)
    assert float(cal["all"]["count"].sum()) == n_real          # padding not counted
    assert float(cal["medium"]["count"].sum()) == 0            # no medium class
    assert metrics.ece_from_counts(cal["all"]) == pytest.approx(_expected(batches),
                                                                abs=1e-6)
    # Without class counts only the overall counts.
    plain = evaluation.make_eval_step(_FixedLogits())(STATE, batches[0])
    assert set(plain["calibration"]) == {"all"}


def test_evaluator_ece_equals_numpy_ece_without_padding(tmp_path):
    batches = _batches()
    step = jax.jit(evaluation.make_eval_step(_FixedLogits(), class_counts=TRAIN_COUNTS))
    writer = _Writer()
    ev = evaluation.Evaluator(step, _Loader(batches), TRAIN_COUNTS, str(tmp_path), writer)
    (tmp_path / "eval").mkdir()
    summary = ev(STATE, epoch=1, step=10)

    expected = _expected(batches)
    assert summary["ece"] == pytest.approx(expected, abs=1e-6)
    # The padding (confident and wrong) matters: counting it would change the ECE.
    assert abs(_expected(batches, with_padding=True) - expected) > 1e-2
    groups = shot_masks(TRAIN_COUNTS)
    assert summary["ece_many"] == pytest.approx(_expected(batches, groups["many"]),
                                                abs=1e-6)
    assert summary["ece_few"] == pytest.approx(_expected(batches, groups["few"]), abs=1e-6)
    assert summary["ece_medium"] is None                        # empty group
    assert summary["ece_many"] != pytest.approx(summary["ece_few"], abs=1e-6)

    saved = json.loads((tmp_path / "eval" / "epoch_0001.json").read_text())
    assert saved["ece"] == pytest.approx(expected, abs=1e-6)
    assert saved["ece_medium"] is None
    cal = saved["calibration"]
    assert set(cal) == {"count", "confidence_sum", "correct"}
    assert len(cal["count"]) == 15 and sum(cal["count"]) == summary["num_examples"]
    assert metrics.ece_from_counts(cal) == pytest.approx(expected, abs=1e-6)
    results = json.loads((tmp_path / "results.json").read_text())
    for key in ("best", "last"):
        assert results[key]["ece"] == pytest.approx(expected, abs=1e-6)
    (row,) = writer.rows
    assert row[1] == "eval" and row[2]["ece"] == pytest.approx(expected, abs=1e-6)
    assert "ece_medium" not in row[2] and "ece_few" in row[2]


def _png_size(path):
    data = pathlib.Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_train_writes_ece_and_analysis_draws_reliability(tmp_path):
    from ride_jax.analysis.runs import analyze_run
    from ride_jax.train import train_and_evaluate

    wd = tmp_path / "run"
    result = train_and_evaluate(synthetic_config("experts=2", epochs=1), str(wd))
    assert result["status"] == "finished"
    results = json.loads((wd / "results.json").read_text())
    epoch = json.loads((wd / "eval" / "epoch_0001.json").read_text())
    for s in (results["last"], results["best"], epoch):
        assert 0.0 <= s["ece"] <= 1.0
        assert {"ece_many", "ece_medium", "ece_few"} <= set(s)
    cal = epoch["calibration"]
    assert sum(cal["count"]) == epoch["num_examples"]
    assert metrics.ece_from_counts(cal) == pytest.approx(epoch["ece"], abs=1e-9)
    rows = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "eval" and "ece" in r for r in rows)

    s = analyze_run(wd, tmp_path / "out")
    png = [f for f in s["files"] if pathlib.Path(f).name == "reliability.png"]
    assert len(png) == 1 and _png_size(png[0]) == (640, 480)
    # The analysis's own ECE (from the checkpoint's predictions) agrees with the trainer.
    assert s["ece"]["all"] == pytest.approx(epoch["ece"], abs=1e-4)
    assert s["last_evaluation"]["ece"] == epoch["ece"]
    saved = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert saved["ece"]["all"] == pytest.approx(s["ece"]["all"])
