"""The in-memory path runs where TensorFlow cannot be imported, as on the lent GPU
machines (their image has jax, flax, optax, orbax and tensorboard but no tensorflow or
tensorflow-datasets): prepare a cache, train from it with the scanned trainer, and run
the benchmark suite's full-run section on it.

A ``sitecustomize`` on ``PYTHONPATH`` makes ``import tensorflow`` and ``import
tensorflow_datasets`` fail in the subprocesses (and in the processes they re-execute),
whatever this environment has installed.
"""

import json
import pathlib

import pytest

from helpers import run_without_tf

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(tmp_path, *args, timeout=900):
    return run_without_tf(tmp_path, *args, timeout=timeout)


def test_cache_train_and_suite_without_tensorflow(tmp_path):
    probe = _run(tmp_path, "-c", "import tensorflow")
    assert probe.returncode != 0 and "import of tensorflow halted" in probe.stderr

    cache = tmp_path / "smoke.npz"
    proc = _run(tmp_path, "-m", "ride_jax.data.prepare", "--dataset=synthetic_lt",
                f"--out={cache}", "--num_classes=10", "--img_max=40", "--ratio=10",
                "--image_size=16", "--test_per_class=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cache.exists()

    workdir = tmp_path / "run"
    proc = _run(tmp_path, "-m", "ride_jax.main", "--config=configs/synthetic_lt.py:smoke,experts=2",
                f"--workdir={workdir}", f"--config.dataset.cache={cache}",
                "--config.steps_per_call=2", "--config.max_steps=6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stopped_at_max_steps at step 6" in proc.stdout
    assert "Traceback" not in proc.stderr
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train][-1] == 6
    dataset = json.loads((workdir / "dataset.json").read_text())
    assert dataset["train_counts"][0] == 40 and len(dataset["train_counts"]) == 10
    # TensorBoard events without TensorFlow (tensorboardX): the train rows, read back.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = sorted(workdir.glob("events.out.tfevents*"))
    assert events, sorted(p.name for p in workdir.iterdir())
    acc = EventAccumulator(str(events[-1]))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [r["step"] for r in train]
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx(
        [r["loss"] for r in train], rel=1e-6)

    out = tmp_path / "suite.json"
    proc = _run(tmp_path, "benchmarks/suite.py", "--tiny", "--only", "full_run", "--full-run",
                "--full-run-config", "configs/synthetic_lt.py:smoke,experts=2",
                "--full-run-cache", str(cache), "--json", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    (row,) = result["sections"]["full_run"]["rows"]
    assert row["status"] == "finished", row
