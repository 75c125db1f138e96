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
"""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from ride_jax.config_checks import check_value

ITEMS = ("state", "config", "integrity")
DAMAGED_DIR = "damaged_checkpoints"


class NonFiniteState(FloatingPointError):
    """The state holds NaN or infinite values: it is not written."""


class NoIntactCheckpoint(ValueError):
    """Every checkpoint of a workdir is damaged (a user-facing error: exit 2)."""


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


class Checkpointer:
    """``workdir/checkpoints``: periodic saves, keep the last ``keep``, resume the latest."""

    def __init__(self, workdir: str, keep: int = 3, asynchronous: bool = True):
        check_value("keep_checkpoints", keep)      # 0 would delete every checkpoint
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        self._keep, self._async = keep, asynchronous
        self.manager = self._manager()

    def _manager(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(max_to_keep=self._keep, create=True,
                                               enable_async_checkpointing=self._async)
        return ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, config: dict, *, force: bool = False) -> bool:
        """Start an asynchronous save of ``state`` and ``config`` (a JSON-able dict).

        Raises:
          NonFiniteState: a value of ``state`` is NaN or infinite (nothing is written).
        """
        digest, bad = state_digest(state)
        if bad:
            raise NonFiniteState(f"the state after step {step} holds non-finite values "
                                 f"(in {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
                                 "; it was not saved")
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config),
            integrity=ocp.args.JsonSave({"sha256": digest})), force=force)

    def _restore(self, step: int, state_args) -> tuple[Any, dict]:
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
                args = (ocp.args.StandardRestore() if abstract_state is None else
                        ocp.args.StandardRestore(abstract_state))
                state, config = self._restore(step, args)
            except Exception as e:   # noqa: BLE001 - any failure to read back is damage
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
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
        return self._restore(step, ocp.args.StandardRestore())

    def wait(self) -> None:
        """Block until pending saves are on disk (their errors surface here)."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def abstract_like(state: Any, sharding: Any) -> Any:
    """``jax.ShapeDtypeStruct`` tree of ``state`` (arrays or structs) with ``sharding``."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        state)
