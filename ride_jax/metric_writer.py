"""A run's metrics: TensorBoard event files (without TensorFlow) and ``metrics.jsonl``.

:class:`MetricWriter` writes each call of :meth:`~MetricWriter.scalars` two ways:

* one JSON row ``{"step", "kind", **values}`` appended to ``workdir/metrics.jsonl`` and
  flushed (the record the analysis tools read);
* TensorBoard scalars tagged ``"{kind}/{name}"`` in an ``events.out.tfevents.*`` file
  directly in ``workdir``, written with tensorboardX, which needs no TensorFlow (clu's
  TensorBoard writer imports TensorFlow, so the base install could not write events);

On resume, ``MetricWriter(workdir, enabled, resume_step=step)`` first cuts
``metrics.jsonl`` back to the rows of steps ``<= step`` (the steps after the checkpoint
are redone, so each step keeps one row), and starts its event file with TensorBoard's
purge marker at ``step + 1``, so TensorBoard likewise drops the earlier files' events
after ``step``.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from typing import Any

import jax
import numpy as np
from absl import logging

METRICS_FILE = "metrics.jsonl"
_SERIAL = itertools.count()


def _flatten(config: dict, prefix: str = "") -> dict[str, int | float | str | bool]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, keeping only int/float/str/bool leaves."""
    flat = {}
    for k, v in config.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float, str, bool)):
            flat[prefix + k] = v
    return flat


def truncate_metrics(path: str, step: int) -> None:
    """Rewrite the JSONL file ``path`` keeping only its rows with ``row["step"] <= step``.

    Atomic (a ``.tmp`` file then ``os.replace``); a missing file is left missing. A line
    that is not a JSON row with a ``step`` (a write cut short by a crash) is dropped.
    """
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return
    kept, bad = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            keep = row["step"] <= step
        except (ValueError, TypeError, KeyError):
            bad += 1
            continue
        if keep:
            kept.append(line)
    if bad:
        logging.warning("%s: dropped %d unreadable line(s) while truncating after step %d",
                        path, bad, step)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("".join(line + "\n" for line in kept))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class MetricWriter:
    """TensorBoard events (tensorboardX) and an append-only ``metrics.jsonl`` in ``workdir``.

    Args:
      workdir: an existing folder; the event file and ``metrics.jsonl`` go directly in it.
      enabled: False (processes other than the main one): every method does nothing and
        nothing is written.
      resume_step: when resuming from the checkpoint of this step, first keep only the
        ``metrics.jsonl`` rows of steps ``<= resume_step``, and have TensorBoard drop the
        older event files' events after it.
    """

    def __init__(self, workdir: str, enabled: bool, resume_step: int | None = None):
        self.enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter   # no TensorFlow needed
        self.path = os.path.join(workdir, METRICS_FILE)
        if resume_step is not None:
            truncate_metrics(self.path, resume_step)
        self.jsonl = open(self.path, "a")
        # purge_step: a SessionLog.START at resume_step + 1, on which TensorBoard forgets
        # the events of steps >= resume_step + 1 read from earlier files.
        # tensorboardX names its file events.out.tfevents.<seconds>.<host> and opens it
        # "wb": a second writer within the same second would erase the first one's file.
        # The suffix keeps names unique and in the order TensorBoard must read them.
        suffix = f".{time.time_ns():020d}.{os.getpid()}.{next(_SERIAL)}"
        self.tb = SummaryWriter(logdir=workdir, flush_secs=30, filename_suffix=suffix,
                                purge_step=None if resume_step is None else resume_step + 1)

    def scalars(self, step: int, values: dict[str, Any], kind: str) -> None:
        """Write the int/float entries of ``values`` at ``step`` (others are skipped)."""
        if not self.enabled:
            return
        flat = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
        self.jsonl.write(json.dumps({"step": step, "kind": kind, **flat}) + "\n")
        self.jsonl.flush()
        for k, v in flat.items():     # the trainer logs its own one-line summary
            self.tb.add_scalar(f"{kind}/{k}", v, global_step=step)

    def hparams(self, config: dict) -> None:
        """The config's int/float/str/bool leaves (``"a.b"`` keys) as TensorBoard hparams."""
        if not self.enabled:
            return
        from tensorboardX.summary import hparams
        flat = _flatten(config)     # (not logged: the full config is in config.json)
        # What SummaryWriter.add_hparams writes, but into this run's own event file
        # (add_hparams opens a new writer in a sub-folder).
        for summary in hparams(flat, {}):
            self.tb.file_writer.add_summary(summary)

    def truncate_after(self, step: int) -> None:
        """Keep only the ``metrics.jsonl`` rows of steps ``<= step`` (atomically)."""
        if not self.enabled:
            return
        self.jsonl.close()
        truncate_metrics(self.path, step)
        self.jsonl = open(self.path, "a")

    def close(self) -> None:
        """Flush and close the event file and ``metrics.jsonl``."""
        if self.enabled:
            self.tb.flush()
            self.tb.close()
            self.jsonl.close()


class TrainLog:
    """The train steps' metrics, fetched and written every ``log_every`` steps.

    Steps return device scalars; they wait in ``pending`` (no host sync per step) until
    :meth:`flush`, which fetches them at once, refuses a non-finite loss, writes one
    ``train`` row per ``log_every`` steps (means, plus ``steps_per_s``,
    ``images_per_s`` and ``epoch``) and logs a progress line with an ETA. Time spent on
    evaluations and checkpoints (:meth:`exclude`) does not count in the rate; the ETA
    adds the evaluations still to come at their mean duration.

    Args:
      writer: the run's :class:`MetricWriter`.
      total_steps, steps_per_epoch, log_every, batch_size: the run's.
      evals_left: ``step -> number of evaluations after step`` (for the ETA).
      eval_seconds: the durations of the evaluations so far (a list that grows).
      last_good: ``() -> str`` naming the last good checkpoint (for the NaN error).
      show_bar: also rewrite one progress line on stderr (a terminal).
    """

    def __init__(self, writer: MetricWriter, *, total_steps: int, steps_per_epoch: int,
                 log_every: int, batch_size: int, evals_left, eval_seconds: list,
                 last_good, show_bar: bool = False):
        self.writer, self.total, self.spe = writer, total_steps, steps_per_epoch
        self.every, self.batch_size = log_every, batch_size
        self.evals_left, self.eval_seconds, self.last_good = evals_left, eval_seconds, last_good
        self.show_bar = show_bar
        self.pending: list[tuple[int, Any, int]] = []      # (first step, metrics, steps)
        self.excluded, self.t_last, self.step_last = 0.0, time.perf_counter(), 0

    def start(self, step: int) -> None:
        """Time from now (after compiling): the first rate counts steps only."""
        self.t_last, self.step_last, self.excluded = time.perf_counter(), step, 0.0

    def add(self, step: int, metrics: Any, k: int) -> bool:
        """Record the metrics of steps ``step .. step + k - 1``; True when a log row is due."""
        self.pending.append((step, metrics, k))
        return (step + k) // self.every > step // self.every

    def exclude(self, seconds: float) -> None:
        self.excluded += seconds

    def flush(self, step: int) -> None:
        """Fetch, check and write the pending metrics (``step``: steps done)."""
        if not self.pending:
            return
        got = jax.device_get([m for _, m, _ in self.pending])
        values = []     # one per step: a scanned call's metrics are [k] arrays
        for (s, _, k), v in zip(self.pending, got):
            values += ([(s, v)] if k == 1 else
                       [(s + i, {name: x[i] for name, x in v.items()}) for i in range(k)])
        for s, v in values:      # step s + 1 is the log's numbering (steps done)
            if not np.isfinite(float(v["loss"])):
                raise FloatingPointError(
                    f"non-finite loss {float(v['loss'])} at step {s + 1}/{self.total} "
                    f"(epoch {s // self.spe + 1}); {self.last_good()}")
        now = time.perf_counter()
        train_s = max(now - self.t_last - self.excluded, 1e-9)
        rate = (step - self.step_last) / train_s
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        evals = self.evals_left(step)
        if self.eval_seconds:
            eta += evals * float(np.mean(self.eval_seconds))
        # One row per log interval (a scanned call may hold several), and the rest.
        groups = [[]]
        for s, v in values:
            groups[-1].append(v)
            if (s + 1) % self.every == 0:
                groups.append([])
        end = values[0][0]
        for group in (g for g in groups if g):
            end += len(group)
            mean = {k: float(np.mean([v[k] for v in group])) for k in group[0]}
            mean.update(steps_per_s=rate, images_per_s=rate * self.batch_size,
                        epoch=end / self.spe)
            self.writer.scalars(end, mean, "train")
        eta_note = "" if self.eval_seconds or not evals else " + evaluations"
        msg = (f"step {step}/{self.total} epoch {step / self.spe:.2f} loss {mean['loss']:.4f} "
               f"acc {mean['accuracy']:.3f} lr {mean['lr']:.4g} {rate:.2f} steps/s "
               f"ETA {eta / 60:.1f} min{eta_note}")
        if self.show_bar:
            sys.stderr.write("\r" + msg[:150].ljust(150))
            sys.stderr.flush()
        logging.info(msg)
        self.pending.clear()
        self.t_last, self.step_last, self.excluded = now, step, 0.0
