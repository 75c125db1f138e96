"""The benchmark suite (``benchmarks/suite.py``) runs end to end in its tiny CI setting,
so it cannot rot: every section, the tables, the JSON, the command-line errors."""

import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SECTIONS = ("train_step", "resnet50", "input", "eval", "full_run")
TABLE_HEADERS = (
    "| E | impl | cpu conv | barriers | batch | images/s | compile s | status |",
    "| E | batch | image | images/s | compile s | status |",
    "| pipeline | batch | images/s | status |",
    "| model | batch | images/s | compile s | status |",
    "| config | epochs | evaluations | wall s | train images/s | final top-1 % | status |",
)


def _suite(*args, timeout=600):
    return subprocess.run([sys.executable, "benchmarks/suite.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "tiny.json"
    # The full run scans its steps two per call (config.steps_per_call), so CI runs
    # that path of the trainer too.
    proc = _suite("--tiny", "--json", str(path), "--full-run-set", "steps_per_call=2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(path) as f:
        return proc, json.load(f)


def test_tiny_prints_a_table_per_section(tiny):
    proc, _ = tiny
    assert "Traceback" not in proc.stderr
    for name in SECTIONS:
        assert f"\n## {name}: " in proc.stdout, name
    for header in TABLE_HEADERS:
        assert header in proc.stdout, header
    assert "host peak RSS" in proc.stdout


def test_tiny_json_has_every_section_and_the_machine(tiny):
    _, result = tiny
    assert set(result["sections"]) == set(SECTIONS)
    for name, sec in result["sections"].items():
        assert sec["status"] == "ran", (name, sec["status"])
        assert sec["rows"], name
        assert sec["memory"]["peak_host_rss_bytes"] > 0
        if result["machine"]["backend"] == "cpu":       # host RSS is never device memory
            assert "peak_device_bytes" not in sec["memory"]
    machine = result["machine"]
    for key in ("date", "backend", "device_kind", "jax", "flax", "optax", "python",
                "cpu_count", "command"):
        assert machine[key], key
    assert "--tiny" in machine["command"]


def test_tiny_rows_are_measured(tiny):
    _, result = tiny
    sec = result["sections"]
    steps = sec["train_step"]["rows"]
    assert [(r["experts"], r["batch"], r["impl"], r["cpu_convolutions"]) for r in steps] == [
        (1, 8, "loop", "eigen")]
    assert [r["fusion_barriers"] for r in steps] == [True]     # the trainer's CPU choice
    assert [r["fusion_barriers"] for r in sec["eval"]["rows"]] == [True]
    for r in steps + sec["resnet50"]["rows"] + sec["eval"]["rows"]:
        assert r["status"].startswith("ok"), r
        assert r["images_per_s"] > 0 and r["compile_s"] > 0, r
    # Forced on the CPU backend (--tiny), at the small image size.
    assert [(r["experts"], r["batch"], r["image"]) for r in sec["resnet50"]["rows"]] == [
        (1, 2, 32)]
    inputs = sec["input"]["rows"]
    assert [r["augment"] for r in inputs] == ["none", "ldam", "ride"]
    assert all(r["status"] == "ok" and r["images_per_s"] > 0 for r in inputs)
    (full,) = sec["full_run"]["rows"]
    assert full["status"] == "finished", full
    assert full["wall_s"] > 0 and full["train_images_per_s"] > 0
    assert full["epochs"] == 2 and full["evaluations"] == 2      # evaluated every epoch
    assert full["steps_per_call"] == 2 and full["overrides"] == ["steps_per_call=2"]
    assert 0.0 <= full["top1"] <= 1.0


def test_unknown_section_is_a_one_line_error():
    proc = _suite("--only", "train_step,bogus", timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "'bogus'" in lines[0]
    for name in SECTIONS:
        assert name in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_bad_cpu_convolutions_is_a_one_line_error():
    proc = _suite("--cpu-convolutions", "eigen,fast", timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'fast'" in lines[0], proc.stderr
    assert "eigen" in lines[0] and "xla_default" in lines[0]


@pytest.mark.parametrize("item, message", [
    ("steps_per_call", "expected KEY=VALUE"),
    ("optim.lrate=0.1", "optim has no key 'lrate'; valid keys: .*momentum"),
    ("steps_per_call=two", "expected int"),
    ("optim=1", "'optim' is a group"),
])
def test_bad_full_run_override_is_a_one_line_error(item, message):
    proc = _suite("--only", "full_run", "--full-run", "--full-run-set", item, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), proc.stderr
    assert repr(item) in lines[0] or item.split("=")[0] in lines[0]


def test_full_run_is_opt_in_and_explicit_options_override_the_preset(tmp_path):
    path = tmp_path / "none.json"
    proc = _suite("--tiny", "--only", "full_run", "--no-full-run", "--json", str(path),
                  timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "## full_run: not run (pass --full-run)" in proc.stdout
    with open(path) as f:
        sections = json.load(f)["sections"]
    assert sections["full_run"] == {"status": "not run (pass --full-run)", "rows": []}
    for name in SECTIONS[:-1]:
        assert sections[name]["status"] == "not selected (--only)"


def test_input_pipeline_streaming_side_by_side_runs(tmp_path):
    """``input_pipeline.py --streaming --pipelines``: grain (in-process) and the torch
    DataLoader (in-process; skipped with a note without torch) on a few JPEG files, plus
    the one-thread PIL reference rows, in the table and the JSON."""
    path = tmp_path / "stream.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/input_pipeline.py", "--skip-loader", "--skip-train",
         "--streaming", "--pipelines", "grain,torch", "--workers", "0", "--images", "16",
         "--stream-batch", "8", "--repeats", "1", "--stream-transforms", "eval",
         "--json", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(path) as f:
        rows = json.load(f)["rows"]
    names = [r["pipeline"] for r in rows]
    assert names[0] == "grain" and rows[0]["workers"] == 0
    assert ("torch DataLoader" in " ".join(names)) != ("# torch: skipped" in proc.stdout)
    assert {"PIL decode only (open+convert)", "PIL decode + transform"} <= set(names)
    for r in rows:
        assert r["transform"] == "eval" and r["ratio_to_tfdata"] is None, r
        assert r["images_per_s"] > 0 and r["images_per_s_per_core"] > 0, r
        if r["workers"] != "serial":            # a pipeline: one whole epoch per repeat
            (first, last), = r["times_s"]
            assert 0 < first <= last and r["epoch_images_per_s"] > 0, r
    assert "vs tf.data" in proc.stdout
    bad = subprocess.run([sys.executable, "benchmarks/input_pipeline.py", "--streaming",
                          "--pipelines", "grain,bogus"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "bogus" in bad.stderr


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _read_ahead_pipeline(clock, start_s, ready, per_batch_s, batch):
    """A fake pipeline on a fake clock: ``start_s`` to its first batch, by when it has
    ``ready`` batches made (read ahead), then one batch per ``per_batch_s``."""
    def make(n):
        def it():
            clock.now += start_s
            for k in range(-(-n // batch)):
                if k >= ready:
                    clock.now += per_batch_s
                yield {"label": [0] * batch}
        return it()
    make.close_iter = lambda it: None
    return make


def test_the_stream_rate_is_the_steady_rate_despite_read_ahead_and_start_up(monkeypatch):
    """A pipeline that starts in 5 s with 8 batches of 64 read ahead, then makes one batch
    per 0.16 s (400 images/s): over a 2048-image epoch the steady rate is 400 and the
    epoch rate counts the start. Read-ahead past mid-epoch (20 of 32 batches) gives a
    note, since the second half then overstates the rate."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import input_pipeline as ip
    clock = _Clock()
    monkeypatch.setattr(ip.time, "perf_counter", clock)
    count = lambda b: len(b["label"])             # noqa: E731
    notes = []
    steady, epoch, startup, times = ip._time_stream(
        _read_ahead_pipeline(clock, 5.0, 8, 0.16, 64), count, 2048, 3, notes.append)
    assert steady == pytest.approx(400.0) and notes == []
    assert startup == pytest.approx(5.0)
    assert np.allclose(times, [(5.0, 5.0 + 24 * 0.16)] * 3)
    assert epoch == pytest.approx(2048 / (5.0 + 24 * 0.16))
    steady, *_ = ip._time_stream(_read_ahead_pipeline(clock, 5.0, 20, 0.16, 64), count,
                                 2048, 1, notes.append, "p")
    assert steady > 400 * 1.2                     # overstated: 16 batches in 12 x 0.16 s
    assert len(notes) == 1 and notes[0].startswith("# p: the epoch's third quarter came")


def test_grain_threads_prints_a_row_per_setting():
    proc = subprocess.run([sys.executable, "benchmarks/grain_threads.py", "--images", "8",
                           "--batch", "4", "--repeats", "1", "--settings", "0:1,0:2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 0 |")]
    assert [r.split("|")[2].strip() for r in rows] == ["1", "2"]
    assert all(float(r.split("|")[3]) > 0 for r in rows)
    bad = subprocess.run([sys.executable, "benchmarks/grain_threads.py", "--settings", "x"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "workers:threads" in bad.stderr
