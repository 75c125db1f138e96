"""Command-line entry point.

    python -m ride_jax.main --config=configs/fashion_mnist_lt.py:smoke --workdir=runs/fm_smoke
    python -m ride_jax.main --config=configs/cifar100_lt.py:ratio=50 --workdir=runs/c100 \\
        --config.optim.lr=0.05

``--config`` is a recipe file with optional ``:args`` (see each file's docstring);
``--config.key=value`` overrides a field (a typo is an error listing the valid keys).
Rerunning the same command resumes from the newest checkpoint in ``--workdir``. The
logic lives in :func:`ride_jax.train.train_and_evaluate`, importable from notebooks.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ride_jax import allocator

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Recipe file, configs/<name>.py[:args].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Folder for checkpoints, metrics and results (resumed if it "
                               "holds a run).")
flags.mark_flags_as_required(["config", "workdir"])

# A user mistake (bad value, missing data, other config in the workdir) is reported as
# one message, without a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, TypeError, NotImplementedError)


class _QuietLibraries:
    """Keep library chatter (Orbax's per-save INFO lines) out of the run's log."""

    def filter(self, record) -> bool:
        return record.levelno >= 30 or "/orbax/" not in record.pathname


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    config = _CONFIG.value
    import jax  # after flag parsing, so --help is fast
    if config.distributed:
        jax.distributed.initialize()
    from ride_jax.train import train_and_evaluate
    logging.info("config:\n%s", config)
    try:
        result = train_and_evaluate(config, _WORKDIR.value)
    except USER_ERRORS as e:
        logging.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    last = result["last"] or {}
    summary = {k: last.get(k) for k in ("accuracy", "many", "medium", "few")}
    print(f"{result['status']} at step {result['step']}; last evaluation: {json.dumps(summary)}"
          f"; results in {_WORKDIR.value}/results.json")
    return 0


def run() -> None:
    try:   # restart once with huge-page malloc (ride_jax.allocator): fewer page faults
        allocator.reexec_with_hugepage_malloc()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
