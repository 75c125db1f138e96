"""Orbax checkpoints of the train state (and the config beside it), in one place.

Saves are asynchronous; ``restore`` takes an abstract state carrying the CURRENT
shardings, so a run saved on 8 devices resumes on 1 (or the other way round).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """``workdir/checkpoints``: periodic saves, keep the last ``keep``, resume the latest."""

    def __init__(self, workdir: str, keep: int = 3, asynchronous: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=asynchronous)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "config"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, config: dict, *, force: bool = False) -> bool:
        """Start an asynchronous save of ``state`` and ``config`` (a JSON-able dict)."""
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config)), force=force)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """``(state, config)`` of ``step`` (default the latest), placed as ``abstract_state``.

        Args:
          abstract_state: pytree of ``jax.ShapeDtypeStruct`` with the shardings wanted.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory!r}")
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), config=ocp.args.JsonRestore()))
        return out.state, out.config

    def read(self, step: int | None = None) -> tuple[Any, dict]:
        """``(state, config)`` of ``step`` as saved, without a target (inspection, tests).

        Arrays come back on the default device; use :meth:`restore` to place them.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory!r}")
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # "no target given": intended here
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(), config=ocp.args.JsonRestore()))
        return out.state, out.config

    def wait(self) -> None:
        """Block until pending saves are on disk (their errors surface here)."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def abstract_like(state: Any, sharding: Any) -> Any:
    """``jax.ShapeDtypeStruct`` tree of ``state`` (arrays or structs) with ``sharding``."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        state)
