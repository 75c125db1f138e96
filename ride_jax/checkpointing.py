"""Orbax checkpoints of the train state (and the config beside it), in one place.

Saves are asynchronous; ``restore`` takes an abstract state carrying the CURRENT
shardings, so a run saved on 8 devices resumes on 1 (or the other way round).

Integrity: a checkpoint is written only if every floating value of the state is finite
(:class:`NonFiniteState` otherwise), and holds a third item, ``integrity``: the SHA-256
of the state's values as saved (:func:`state_digest`). :meth:`Checkpointer.restore_intact`
restores the newest checkpoint whose files read back and whose values hash to that
digest; a damaged newer one (truncated, deleted or overwritten file, missing item) is
moved aside to ``workdir/damaged_checkpoints/`` with a one-line warning, never deleted.
Orbax alone does not catch every overwritten byte (a corrupted compressed chunk can
decode to other numbers without an error), hence the digest.

Preservation (like the official RIDE trainers' ``model_best.pth`` beside the latest):
the newest ``keep`` checkpoints AND the best one by evaluation accuracy are kept. A
save may carry ``metrics`` (``{'accuracy': 0.41, ...}``); Orbax writes them into the
step's own ``metrics`` item and reads them back when a manager opens the folder, so a
restarted process knows the best step. Retention is Orbax's own
``AnyPreservationPolicy([LatestN(keep), BestN(n=1)])``: a best older than the newest
``keep`` survives; when a better one is saved, the old best goes unless it is among the
newest ``keep``. A checkpoint saved without metrics (mid-epoch, at an interruption) is
never the best but counts for the newest ``keep``. :func:`load_run` reads a run's
newest intact, best or a given checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging as _pylogging
import math
import os
import re
import shutil
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from absl import logging

from ride_jax.config_checks import check_value

ITEMS = ("state", "config", "integrity")
DAMAGED_DIR = "damaged_checkpoints"
BEST_METRIC = "accuracy"          # higher is better (``best_mode='max'``)
WHICH = ("latest", "best")        # besides a step number: see check_which


def _late_read_report(exc: BaseException | None) -> bool:
    """The report of a read that outlived a failed restore: ``RuntimeError: Event loop
    is closed`` (TensorStore's completion callback finds Orbax's loop closed), or an
    Orbax read error nobody awaited any more."""
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return True
    return isinstance(exc, Exception) and str(exc).startswith(
        "Encountered error while reading array index")


class _NoLateReads(_pylogging.Filter):
    """Drops asyncio's ``Task exception was never retrieved`` for such a read."""

    def filter(self, record) -> bool:
        if record.name != "asyncio" or "never retrieved" not in record.getMessage():
            return True
        return not (record.exc_info and _late_read_report(record.exc_info[1]))


def quiet_late_read_reports(unraisablehook=None):
    """Install (and return) a ``sys.unraisablehook`` that drops late-read reports.

    When the restore of a damaged checkpoint fails, Orbax closes its event loop while
    TensorStore reads of that checkpoint are still in flight; their completion
    callbacks then raise ``RuntimeError: Event loop is closed`` on TensorStore's threads,
    which Python reports through ``sys.unraisablehook`` (a bare traceback each), and
    asyncio logs the reads' own errors as never retrieved. The failure itself is
    already handled (a warning and a fallback, or one ``error:`` line): these reports
    come after it, and a command line would print a dozen tracebacks below its error.
    Every other unraisable report goes to ``unraisablehook`` (default: the current one).
    Every restore calls this first (the reports can come before the failure is caught);
    without ``unraisablehook``, a hook it installed already is kept, not wrapped again.
    """
    import sys
    aio = _pylogging.getLogger("asyncio")
    if not any(isinstance(f, _NoLateReads) for f in aio.filters):
        aio.addFilter(_NoLateReads())
    if unraisablehook is None and getattr(sys.unraisablehook, "_drops_late_reads", False):
        return sys.unraisablehook
    hook = unraisablehook or sys.unraisablehook

    def quiet(report):
        if not _late_read_report(report.exc_value):
            hook(report)
    quiet._drops_late_reads = True
    sys.unraisablehook = quiet
    return quiet


class NonFiniteState(FloatingPointError):
    """The state holds NaN or infinite values: it is not written."""


class NoIntactCheckpoint(ValueError):
    """Every checkpoint of a workdir is damaged, or the one asked for is (a user-facing
    error: exit 2)."""


class _SaveWithoutMetrics(_pylogging.Filter):
    """Drops Orbax's warning on every save without metrics once ``best_fn`` is set: such
    saves (mid-epoch, at an interruption) are intended here."""

    def filter(self, record: _pylogging.LogRecord) -> bool:
        return not str(record.msg).startswith("Requested `tracked_metric`; did not provide")


if not any(isinstance(f, _SaveWithoutMetrics) for f in _pylogging.getLogger("absl").filters):
    _pylogging.getLogger("absl").addFilter(_SaveWithoutMetrics())


def _one_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def _path_name(path) -> str:
    """``'opt_state/0/trace/...'``: one spelling for a path whether its nodes are
    dicts, tuples or NamedTuples (a checkpoint read without a target gives dicts)."""
    out = []
    for p in path:
        for attr in ("key", "name", "idx"):
            if hasattr(p, attr):
                out.append(str(getattr(p, attr)))
                break
        else:
            out.append(str(p))
    return "/".join(out)


def state_digest(state: Any) -> tuple[str, list[str]]:
    """``(sha256 hex of the values, paths of leaves holding NaN/inf)`` of a state pytree.

    The digest covers every leaf's path, dtype, shape and bytes (host copies), in path
    order, so a restored state hashes the same only if it holds the very values saved,
    whichever container types it was restored into.
    """
    h = hashlib.sha256()
    bad = []
    leaves = sorted(((_path_name(p), x) for p, x in jax.tree_util.tree_leaves_with_path(state)),
                    key=lambda t: t[0])
    for name, leaf in leaves:
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype,
                                                                  jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = leaf.addressable_data(0)       # the state is replicated: one copy
        a = np.asarray(jax.device_get(leaf))
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
        if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a)):
            bad.append(name)
        elif a.dtype.kind == "V" and not np.all(np.isfinite(a.astype(np.float32))):
            bad.append(name)           # bfloat16 reads as a void dtype in some numpys
    return h.hexdigest(), bad


def _best_metric(metrics: Any) -> float:
    """The value ranking checkpoints (Orbax's ``best_fn``): their accuracy."""
    return float(metrics[BEST_METRIC])


def _json_metrics(step: int, metrics: Any) -> dict:
    """``metrics`` as a JSON dict whose accuracy is a finite number; ValueError if not."""
    if not isinstance(metrics, Mapping) or BEST_METRIC not in metrics:
        raise ValueError(f"metrics of step {step} must be a dict with {BEST_METRIC!r} "
                         f"(or None), not {metrics!r}")
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (jax.Array, np.ndarray, np.generic)) and np.ndim(v) == 0:
            v = np.asarray(jax.device_get(v)).item()
        out[str(k)] = v
    acc = out[BEST_METRIC]
    if (isinstance(acc, bool) or not isinstance(acc, (int, float))
            or not math.isfinite(acc)):
        raise ValueError(f"metrics[{BEST_METRIC!r}] of step {step} must be a finite "
                         f"number, not {acc!r}")
    try:
        json.dumps(out)
    except TypeError as e:
        raise ValueError(f"metrics of step {step} are not JSON-able: {e}") from None
    return out


class _Manager(ocp.CheckpointManager):
    """A CheckpointManager for which an unreadable ``metrics`` item (a damaged file, or
    one without a finite accuracy) means "saved without metrics", with a warning, instead
    of an error that would stop the folder from opening at all (and so stop
    :meth:`Checkpointer.restore_intact` from reaching the intact checkpoints)."""

    def metrics(self, step: int) -> dict | None:
        try:
            m = super().metrics(step)
        except Exception as e:   # noqa: BLE001 - a damaged file: treated as no metrics
            logging.warning("the metrics of checkpoint step %d in %s are unreadable (%s: "
                            "%s); it is treated as saved without metrics", step,
                            self.directory, type(e).__name__, _one_line(e))
            return None
        if m is None:
            return None
        try:
            return _json_metrics(step, m)
        except ValueError as e:
            logging.warning("the metrics of checkpoint step %d in %s are invalid (%s); it "
                            "is treated as saved without metrics", step, self.directory,
                            _one_line(e))
            return None


class Checkpointer:
    """``workdir/checkpoints``: periodic saves; keep the newest ``keep`` and the best one
    (highest accuracy among those saved with metrics); resume the newest intact one."""

    def __init__(self, workdir: str, keep: int = 3, asynchronous: bool = True):
        check_value("keep_checkpoints", keep)      # 0 would delete every checkpoint
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        self._keep, self._async = keep, asynchronous
        self.manager = self._manager()

    def _manager(self) -> ocp.CheckpointManager:
        # ``best_fn`` makes Orbax write and read each save's metrics (and rank them in
        # ``best_step``); ``preservation_policy`` alone decides what is deleted: any step
        # among the newest ``keep`` or the best one (``max_to_keep`` must stay None).
        policy = ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(n=self._keep),
            ocp.checkpoint_managers.BestN(get_metric_fn=_best_metric, reverse=False, n=1,
                                          keep_checkpoints_without_metrics=False)])
        options = ocp.CheckpointManagerOptions(
            create=True, enable_async_checkpointing=self._async, best_fn=_best_metric,
            best_mode="max", preservation_policy=policy)
        return _Manager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def best_step(self) -> int | None:
        """The step of highest accuracy among checkpoints saved with metrics (the newest
        of equal ones); None when none has metrics (e.g. runs from before best tracking)."""
        return self.manager.best_step()

    def metrics(self, step: int) -> dict | None:
        """The metrics saved with ``step`` (None if it was saved without)."""
        return self.manager.metrics(step)

    def save(self, step: int, state: Any, config: dict, *, metrics: dict | None = None,
             force: bool = False) -> bool:
        """Start an asynchronous save of ``state`` and ``config`` (a JSON-able dict).

        Args:
          metrics: ``{'accuracy': float, ...}`` of an evaluation of this state (JSON-able
            scalars), kept with the checkpoint to rank it; None: never the best (it
            still counts among the newest ``keep``).

        Raises:
          NonFiniteState: a value of ``state`` is NaN or infinite (nothing is written).
          ValueError: ``metrics`` lacks a finite ``accuracy`` (nothing is written).
        """
        if metrics is not None:
            metrics = _json_metrics(step, metrics)
        digest, bad = state_digest(state)
        if bad:
            raise NonFiniteState(f"the state after step {step} holds non-finite values "
                                 f"(in {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
                                 "; it was not saved")
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config),
            integrity=ocp.args.JsonSave({"sha256": digest})), metrics=metrics,
            force=force)

    def _restore(self, step: int, state_args) -> tuple[Any, dict]:
        quiet_late_read_reports()    # a damaged checkpoint's late reads print nothing
        items = dict(state=state_args, config=ocp.args.JsonRestore())
        checked = os.path.isdir(os.path.join(self.directory, str(step), "integrity"))
        if checked:             # checkpoints written before the digest have none
            items["integrity"] = ocp.args.JsonRestore()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # "no target given" (read): intended
            out = self.manager.restore(step, args=ocp.args.Composite(**items))
        digest, bad = state_digest(out.state)
        if bad:
            raise NonFiniteState(f"it holds non-finite values (in {bad[0]})")
        if checked and out.integrity.get("sha256") != digest:
            raise ValueError("its values differ from the ones saved (SHA-256 mismatch)")
        return out.state, out.config

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """``(state, config)`` of ``step`` (default the latest), placed as ``abstract_state``.

        Args:
          abstract_state: pytree of ``jax.ShapeDtypeStruct`` with the shardings wanted.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory!r}")
        return self._restore(step, ocp.args.StandardRestore(abstract_state))

    def restore_intact(self, abstract_state: Any = None, *, quarantine: bool = True
                       ) -> tuple[Any, dict, int] | None:
        """``(state, config, step)`` of the newest intact checkpoint; None if there is none.

        Args:
          abstract_state: as :meth:`restore`; None reads the arrays as saved.
          quarantine: move damaged checkpoints newer than the one restored to
            ``workdir/damaged_checkpoints/`` (so later saves of those steps succeed);
            False leaves every file where it is (reading another run).

        Raises:
          NoIntactCheckpoint: there are checkpoints, and every one is damaged (nothing
            is moved then).
        """
        damaged = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                args = (self.as_saved(step) if abstract_state is None else
                        ocp.args.StandardRestore(abstract_state))
                state, config = self._restore(step, args)
            except Exception as e:   # noqa: BLE001 - any failure to read back is damage
                reason = _one_line(e)
                damaged.append(step)
                logging.warning("checkpoint step %d in %s is damaged (%s: %s); trying an "
                                "older one", step, self.directory, type(e).__name__, reason)
                continue
            if damaged and quarantine:
                self._quarantine(damaged)
            return state, config, step
        if damaged:
            raise NoIntactCheckpoint(
                f"no intact checkpoint in {self.directory}: steps {sorted(damaged)} are all "
                "damaged (see the warnings above); move that folder away to start over")
        return None

    def _quarantine(self, steps: list[int]) -> None:
        dest_root = os.path.join(self.workdir, DAMAGED_DIR)
        os.makedirs(dest_root, exist_ok=True)
        self.manager.close()
        for step in steps:
            dest = os.path.join(dest_root, str(step))
            k = 1
            while os.path.exists(dest):
                dest, k = os.path.join(dest_root, f"{step}.{k}"), k + 1
            shutil.move(os.path.join(self.directory, str(step)), dest)
            logging.warning("moved the damaged checkpoint step %d to %s", step, dest)
        self.manager = self._manager()

    def read(self, step: int | None = None) -> tuple[Any, dict]:
        """``(state, config)`` of ``step`` as saved, without a target (inspection, tests).

        Arrays come back on the default device; use :meth:`restore` to place them.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory!r}")
        return self._restore(step, self.as_saved(step))

    def as_saved(self, step: int):
        """Restore arguments that read ``step``'s arrays as saved, whole, on this
        process's first device, whatever the devices and processes that wrote them (a
        target-less restore refuses another topology)."""
        meta = ocp.StandardCheckpointHandler().metadata(
            epath.Path(self.directory) / str(step) / "state")
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype,
                                                             sharding=device),
                              getattr(meta, "tree", meta))
        return ocp.args.StandardRestore(target)

    def wait(self) -> None:
        """Block until pending saves are on disk (their errors surface here)."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def abstract_like(state: Any, sharding: Any) -> Any:
    """``jax.ShapeDtypeStruct`` tree of ``state`` (arrays or structs) with ``sharding``."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        state)


def check_which(value: Any, name: str = "which") -> str | int:
    """``'latest'``, ``'best'`` or a step (int) from ``value``, without touching disk.

    Args:
      value: ``'latest'``, ``'best'``, a step as an integer >= 0 or a string of digits.
      name: how the error names the value (e.g. a config key).

    Raises:
      ValueError: (one line) any other value, listing the valid choices.
    """
    if isinstance(value, str):
        v = value.strip()
        if v in WHICH:
            return v
        if re.fullmatch(r"[0-9]+", v):
            return int(v)
    elif (isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
          and value >= 0):
        return int(value)
    raise ValueError(f"{name}={value!r} is invalid: expected 'latest' (the newest intact "
                     "checkpoint), 'best' (the highest evaluation accuracy) or a step "
                     "number (an integer >= 0)")


def load_run(workdir: str, which: str | int = "latest") -> tuple[dict, dict, dict | None]:
    """``(config, variables, dataset_info)`` of a checkpoint of a run, read-only.

    Args:
      workdir: a run's workdir (or its ``checkpoints`` folder).
      which: ``'latest'``: the newest intact checkpoint (damaged newer ones are skipped
        with a warning, not moved); ``'best'``: the one of highest evaluation accuracy;
        or a step number (int or a string of digits). See :func:`check_which`.

    Returns:
      The run's config (JSON dict), ``{'params', 'batch_stats'}`` as host arrays and its
      ``dataset.json`` (None if absent).

    Raises:
      FileNotFoundError: the workdir holds no checkpoint.
      ValueError: (one line) a bad ``which``; a step that is not there (the available
        ones are listed); ``'best'`` when no checkpoint has metrics.
      NoIntactCheckpoint: every checkpoint is damaged, or the one asked for is.
    """
    which = check_which(which)
    workdir = os.path.abspath(workdir)
    if os.path.basename(workdir) == "checkpoints":
        workdir = os.path.dirname(workdir)
    ckdir = os.path.join(workdir, "checkpoints")
    found = None
    if os.path.isdir(ckdir) and os.listdir(ckdir):   # (Checkpointer would create ckdir)
        ckpt = Checkpointer(workdir, asynchronous=False)
        try:
            found = _load(ckpt, which)
        finally:
            ckpt.close()
    if found is None:
        raise FileNotFoundError(f"{workdir!r} holds no checkpoint: give the workdir of a "
                                "finished run (its checkpoints/ folder is read)")
    state, cfg, step = found
    info = None
    if os.path.exists(os.path.join(workdir, "dataset.json")):
        with open(os.path.join(workdir, "dataset.json")) as f:
            info = json.load(f)
    logging.info("loaded step %d (%s) of %s", step, which, workdir)
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    return cfg, jax.device_get(variables), info


def _load(ckpt: Checkpointer, which: str | int) -> tuple[Any, dict, int] | None:
    if which == "latest":     # another run's folder: damaged ones are skipped, not moved
        return ckpt.restore_intact(quarantine=False)
    steps = ckpt.all_steps()
    if not steps:
        return None
    if which == "best":
        step = ckpt.best_step()
        if step is None:
            raise ValueError(f"no checkpoint in {ckpt.directory} has evaluation metrics "
                             "(saved before best tracking, or never evaluated), so none "
                             f"is the best: use 'latest' or a step of {steps}")
        what = f"the best checkpoint, step {step}"
    else:
        if which not in steps:
            raise ValueError(f"no checkpoint of step {which} in {ckpt.directory}: the "
                             f"available steps are {steps}")
        step, what = which, f"checkpoint step {which}"
    try:
        state, config = ckpt._restore(step, ckpt.as_saved(step))
    except Exception as e:   # noqa: BLE001 - any failure to read back is damage
        raise NoIntactCheckpoint(f"{what} in {ckpt.directory} is damaged ("
                                 f"{type(e).__name__}: {_one_line(e)}); use 'latest' or "
                                 f"another of the steps {steps}") from None
    return state, config, step
