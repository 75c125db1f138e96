"""ride_jax.metric_writer: TensorBoard events written without TensorFlow, metrics.jsonl,
truncation on resume, and the disabled writer.

The events are written in a subprocess where a ``sitecustomize`` on ``PYTHONPATH`` makes
``import tensorflow`` and ``import tensorflow_datasets`` fail (and records each try), and
read back here with TensorBoard's own reader.
"""

import json
import pathlib

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from ride_jax.metric_writer import MetricWriter, truncate_metrics

from helpers import run_without_tf

ROOT = pathlib.Path(__file__).resolve().parents[1]

# helpers.NO_TF_SITECUSTOMIZE lists every ``import tensorflow...`` statement tried in
# ``sys.ride_jax_tf_tried``.

WRITE = """\
import json, sys
from ride_jax.metric_writer import MetricWriter

workdir = sys.argv[1]
w = MetricWriter(workdir, True)
w.hparams({"optim": {"lr": 0.1, "nesterov": True}, "model": {"name": "ride"},
           "steps": 7, "skipped": [1, 2]})
w.scalars(1, {"loss": 2.5, "accuracy": 0.25, "note": "not a number"}, "train")
w.scalars(2, {"loss": 1.5, "accuracy": 0.5}, "train")
w.scalars(2, {"accuracy": 0.75, "few": 0.125}, "eval")
w.scalars(3, {"loss": 0.75, "accuracy": 0.875}, "train")
w.close()
assert sys.modules["tensorflow"] is None, "writing metrics imported tensorflow"
assert sys.modules["tensorflow_datasets"] is None
print(json.dumps({"tried": sys.ride_jax_tf_tried}))
"""


def _events(workdir):
    acc = EventAccumulator(str(workdir))
    acc.Reload()
    return acc


def _scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _rows(workdir):
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_events_without_tensorflow(tmp_path):
    probe = run_without_tf(tmp_path, "-c", "import tensorflow")
    assert probe.returncode != 0 and "import of tensorflow halted" in probe.stderr

    workdir = tmp_path / "run"
    workdir.mkdir()
    proc = run_without_tf(tmp_path, "-c", WRITE, str(workdir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # nothing even tried to import TensorFlow
    assert json.loads(proc.stdout.splitlines()[-1]) == {"tried": []}

    # one event file, directly in workdir
    files = sorted(p.name for p in workdir.iterdir())
    assert files[-1] == "metrics.jsonl" and len(files) == 2, files
    assert files[0].startswith("events.out.tfevents.")
    assert all(p.is_file() for p in workdir.iterdir())

    acc = _events(workdir)
    assert sorted(acc.Tags()["scalars"]) == ["eval/accuracy", "eval/few", "train/accuracy",
                                             "train/loss"]
    # values exact in float32, as TensorBoard stores them
    assert _scalars(acc, "train/loss") == [(1, 2.5), (2, 1.5), (3, 0.75)]
    assert _scalars(acc, "train/accuracy") == [(1, 0.25), (2, 0.5), (3, 0.875)]
    assert _scalars(acc, "eval/accuracy") == [(2, 0.75)]
    assert _scalars(acc, "eval/few") == [(2, 0.125)]

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]).session_start_info
    assert sorted(start.hparams) == ["model.name", "optim.lr", "optim.nesterov", "steps"]
    assert start.hparams["optim.lr"].number_value == 0.1
    assert start.hparams["optim.nesterov"].bool_value is True
    assert start.hparams["model.name"].string_value == "ride"
    assert start.hparams["steps"].number_value == 7

    assert _rows(workdir) == [
        {"step": 1, "kind": "train", "loss": 2.5, "accuracy": 0.25},
        {"step": 2, "kind": "train", "loss": 1.5, "accuracy": 0.5},
        {"step": 2, "kind": "eval", "accuracy": 0.75, "few": 0.125},
        {"step": 3, "kind": "train", "loss": 0.75, "accuracy": 0.875},
    ]


def test_resume_keeps_each_step_once(tmp_path):
    w = MetricWriter(str(tmp_path), True)
    for step in (1, 2, 3, 4):
        w.scalars(step, {"loss": float(step)}, "train")
    w.scalars(4, {"accuracy": 0.5}, "eval")
    w.close()

    # resumed from the checkpoint of step 2: steps 3 and 4 are redone
    w = MetricWriter(str(tmp_path), True, resume_step=2)
    for step in (3, 4):
        w.scalars(step, {"loss": step + 0.5}, "train")
    w.close()

    assert _rows(tmp_path) == [{"step": 1, "kind": "train", "loss": 1.0},
                               {"step": 2, "kind": "train", "loss": 2.0},
                               {"step": 3, "kind": "train", "loss": 3.5},
                               {"step": 4, "kind": "train", "loss": 4.5}]
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    acc = _events(tmp_path)
    assert _scalars(acc, "train/loss") == [(1, 1.0), (2, 2.0), (3, 3.5), (4, 4.5)]
    # TensorBoard's purge at step 3 also drops the first run's eval at step 4
    assert _scalars(acc, "eval/accuracy") == []


def test_truncate_after(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 0, "kind": "eval", "accuracy": 0.1},
            {"step": 5, "kind": "train", "loss": 3.0},
            {"step": 10, "kind": "train", "loss": 2.0},
            {"step": 10, "kind": "eval", "accuracy": 0.3},
            {"step": 15, "kind": "train", "loss": 1.0},
            {"step": 20, "kind": "eval", "accuracy": 0.5}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 25, "ki')

    w = MetricWriter(str(tmp_path), True)
    w.truncate_after(10)
    assert _rows(tmp_path) == rows[:4]   # the cut-short last line goes too
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("events.")) \
        == ["metrics.jsonl"]   # no .tmp left
    # the writer appends to the truncated file, not to the replaced one
    w.scalars(15, {"loss": 0.5}, "train")
    w.close()
    assert _rows(tmp_path) == rows[:4] + [{"step": 15, "kind": "train", "loss": 0.5}]

    # the constructor's resume_step truncates before appending
    w = MetricWriter(str(tmp_path), True, resume_step=5)
    w.scalars(6, {"loss": 0.25}, "train")
    w.close()
    assert _rows(tmp_path) == rows[:2] + [{"step": 6, "kind": "train", "loss": 0.25}]

    # a missing file is fine (and stays missing for the bare function)
    truncate_metrics(str(tmp_path / "none.jsonl"), 3)
    assert not (tmp_path / "none.jsonl").exists()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    w = MetricWriter(str(fresh), True, resume_step=3)
    w.truncate_after(3)
    w.scalars(4, {"loss": 1.0}, "train")
    w.close()
    assert _rows(fresh) == [{"step": 4, "kind": "train", "loss": 1.0}]
    assert not list(fresh.glob("*.tmp"))


def test_disabled_writes_nothing(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 9, "kind": "train", "loss": 1.0}\n')
    before = sorted(tmp_path.iterdir())
    w = MetricWriter(str(tmp_path), False, resume_step=3)
    w.hparams({"optim": {"lr": 0.1}})
    w.scalars(1, {"loss": 1.0}, "train")
    w.truncate_after(0)
    w.close()
    assert sorted(tmp_path.iterdir()) == before
    assert _rows(tmp_path) == [{"step": 9, "kind": "train", "loss": 1.0}]
