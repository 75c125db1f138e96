"""Command-line entry point.

    python -m ride_jax.main --config=configs/fashion_mnist_lt.py:smoke --workdir=runs/fm_smoke
    python -m ride_jax.main --config=configs/cifar100_lt.py:ratio=50 --workdir=runs/c100 \\
        --config.optim.lr=0.05

``--config`` is a recipe file with optional ``:args`` (see each file's docstring);
``--config.key=value`` overrides a field (a typo is an error listing the valid keys).
Rerunning the same command resumes from the newest checkpoint in ``--workdir``. The
logic lives in :func:`ride_jax.train.train_and_evaluate`, importable from notebooks.

Exit status: 0 finished, stopped at ``max_steps`` or interrupted by SIGTERM/Ctrl-C
(checkpoint saved); 2 a user mistake (one ``error:`` line, nothing written); 3 a
non-finite loss or state (the last good checkpoint is named); 130 a second Ctrl-C.
"""

from __future__ import annotations

import json
import os
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


def _user_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _config_args(argv: list[str]) -> tuple[str | None, list[str]]:
    """``(--config value, [dotted keys of --config.KEY overrides])`` found in ``argv``."""
    path, keys = None, []
    for i in range(1, len(argv)):
        arg = argv[i]
        if arg == "--":
            break
        if not arg.startswith("-"):
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if name == "config":
            path = value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
        elif name.startswith("config."):
            keys.append(name[len("config."):])
    return path, keys


def _has_key(config, key: str) -> bool:
    node = config
    for part in key.split("."):
        try:
            if part not in node:
                return False
        except TypeError:
            return False
        node = node[part]
    return True


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with every user mistake as one ``error:`` line and exit 2.

    The recipe and the ``--config.KEY`` names are checked first (ml_collections reports
    a bad recipe argument or a misspelt key as a traceback): an unknown key lists the
    valid keys of its section.
    """
    from ride_jax import config_checks, configlib
    path, keys = _config_args(argv)
    if path:
        try:
            config = configlib.load(path)
        except USER_ERRORS as e:
            _user_error(f"--config={path}: {e}")
        for key in keys:
            if not _has_key(config, key) and not key.startswith("dataset.args."):
                _user_error(config_checks.unknown_key(key))
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _user_error(str(e).strip().splitlines()[0])
    except USER_ERRORS + (AttributeError, KeyError) as e:
        _user_error(str(e).strip().splitlines()[0] if str(e).strip() else repr(e))


def distributed_args(env) -> dict:
    """``jax.distributed.initialize``'s arguments: the process id and count that
    ``python -m ride_jax.launch`` sets (``RIDE_JAX_PROCESS_ID``,
    ``RIDE_JAX_NUM_PROCESSES``; JAX itself reads ``JAX_COORDINATOR_ADDRESS``), or none:
    JAX then detects SLURM, Open MPI or Cloud TPU."""
    from ride_jax.launch import NUM_PROCESSES_ENV, PROCESS_ID_ENV
    if PROCESS_ID_ENV not in env:
        return {}
    return {"process_id": int(env[PROCESS_ID_ENV]),
            "num_processes": int(env[NUM_PROCESSES_ENV])}


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        _user_error(f"unexpected arguments: {argv[1:]} (options are --config=..., "
                    "--workdir=... and --config.KEY=VALUE)")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    config = _CONFIG.value
    from ride_jax import config_checks, configlib
    try:   # before jax starts or anything is written
        config_checks.check_config(config)
        from ride_jax.workdir import check_workdir
        workdir = check_workdir(_WORKDIR.value)
    except USER_ERRORS as e:
        _user_error(str(e))
    import jax  # after flag parsing, so --help is fast
    if config.distributed:
        joining = distributed_args(os.environ)
        if joining.get("process_id", 0) > 0:
            logging.set_verbosity(logging.WARNING)     # as below, from the start
        try:
            jax.distributed.initialize(**joining)
        except (ValueError, RuntimeError) as e:
            _user_error(f"--config.distributed=True: jax.distributed could not start "
                        f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})")
    main_process = jax.process_index() == 0
    if not main_process:     # one log: the first process's (errors still show)
        logging.set_verbosity(logging.WARNING)
    from ride_jax.train import train_and_evaluate
    logging.info("%s", configlib.summary(config, workdir))
    try:
        result = train_and_evaluate(config, workdir)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    last = result["last"] or {}
    summary = {k: last.get(k) for k in ("accuracy", "many", "medium", "few")
               if last.get(k) is not None}
    if main_process:
        print(f"{result['status']} at step {result['step']}; last evaluation: "
              f"{json.dumps(summary)}; results in {workdir}/results.json")
    return 0


def run() -> None:
    try:   # restart once with huge-page malloc (ride_jax.allocator): fewer page faults
        allocator.reexec_with_hugepage_malloc()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
    except KeyboardInterrupt:     # Ctrl-C before training started: nothing to save
        print("interrupted before training started; nothing was trained", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    run()
