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
import time
from typing import Any

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
