"""Start several local processes of ``ride_jax.main`` that train one run together.

    python -m ride_jax.launch --processes 2 --devices-per-process 4 -- \\
        --config=configs/synthetic_lt.py:smoke --workdir=runs/two_procs

Each process runs ``python -m ride_jax.main <the flags after -->
--config.distributed=True``; they join through ``jax.distributed`` on localhost (a free
port, or ``--port``; CPU collectives: gloo) and form one mesh of every process's
devices. ``--devices-per-process K`` gives each process K CPU devices
(``--xla_force_host_platform_device_count``, ``JAX_PLATFORMS=cpu``): multi-process
training on one machine without accelerators, as the tests run it.
``--gpus-per-process G`` gives process i the GPUs ``i*G .. i*G+G-1`` of the machine
(``JAX_LOCAL_DEVICE_IDS``; not tested here: no GPU). With neither, each process sees
all of the machine's devices (one process per host is then the usual choice).

Signals: a SIGTERM or Ctrl-C to the launcher is sent on to every process as SIGTERM;
they stop together at the same step, save one checkpoint and exit 0 (the run resumes
when the command is run again, with any number of processes). A second signal kills
them. A process that fails makes the launcher stop the others. The exit status is the
first non-zero status of a process, else 0.

On a cluster, start ``python -m ride_jax.main ... --config.distributed=True`` once per
host with the cluster's own launcher instead (``README.md``, "Several processes"):
``jax.distributed.initialize()`` finds SLURM, Open MPI and Cloud TPU by itself.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence

# What ride_jax.main reads to join (ride_jax.main.distributed_args); the coordinator
# address is JAX's own variable.
PROCESS_ID_ENV = "RIDE_JAX_PROCESS_ID"
NUM_PROCESSES_ENV = "RIDE_JAX_NUM_PROCESSES"
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
# How long the others get to exit after one process failed, before they are killed.
FAIL_GRACE_S = 30.0


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    if "--" not in argv:
        _error("expected the flags of ride_jax.main after '--' (python -m ride_jax.launch "
               "--processes N -- --config=... --workdir=...)")
    cut = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m ride_jax.launch", add_help=True)
    parser.add_argument("--processes", required=True, help="number of processes (>= 1)")
    parser.add_argument("--devices-per-process", default=None,
                        help="CPU devices per process (>= 1); default: the machine's devices")
    parser.add_argument("--gpus-per-process", default=None,
                        help="GPUs per process (>= 1): process i gets GPUs i*G .. i*G+G-1")
    parser.add_argument("--port", default=None, help="coordinator port (default: a free one)")

    parser.error = lambda message: _error(message)           # one line, exit 2
    args = parser.parse_args(argv[:cut])
    main_flags = argv[cut + 1:]
    args.processes = _positive("--processes", args.processes)
    if args.devices_per_process is not None:
        args.devices_per_process = _positive("--devices-per-process", args.devices_per_process)
    if args.gpus_per_process is not None:
        args.gpus_per_process = _positive("--gpus-per-process", args.gpus_per_process)
        if args.devices_per_process is not None:
            _error("--gpus-per-process and --devices-per-process (CPU devices) exclude "
                   "each other")
    if args.port is not None:
        port = _positive("--port", args.port)
        if port > 65535:
            _error(f"--port={args.port} is invalid: expected 1..65535")
        args.port = port
    if not main_flags:
        _error("no flags for ride_jax.main after '--' (--config=... --workdir=...)")
    return args, main_flags


def _positive(name: str, value: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(value).strip() != str(n):
        _error(f"{name}={value} is invalid: expected an integer >= 1")
    return n


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def process_env(base: dict, index: int, processes: int, port: int,
                devices_per_process: int | None, gpus_per_process: int | None = None) -> dict:
    """The environment of process ``index``: how it joins, and its CPU devices or its
    GPUs (``JAX_LOCAL_DEVICE_IDS``, which ``jax.distributed.initialize`` reads)."""
    env = dict(base, **{PROCESS_ID_ENV: str(index), NUM_PROCESSES_ENV: str(processes),
                        COORDINATOR_ENV: f"localhost:{port}"})
    if gpus_per_process is not None:
        first = index * gpus_per_process
        env["JAX_LOCAL_DEVICE_IDS"] = ",".join(
            str(g) for g in range(first, first + gpus_per_process))
    if devices_per_process is not None:
        flags = [f for f in env.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
        env["XLA_FLAGS"] = " ".join(flags)
        env["JAX_PLATFORMS"] = "cpu"
    return env


def _pump(stream, out, prefix: str) -> None:
    for line in iter(stream.readline, ""):
        out.write(prefix + line)
        out.flush()
    stream.close()


def main(argv: Sequence[str] | None = None) -> int:
    args, main_flags = _parse(sys.argv[1:] if argv is None else argv)
    port = args.port or _free_port()
    cmd = [sys.executable, "-m", "ride_jax.main", *main_flags, "--config.distributed=True"]
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    signals = {"count": 0}

    def forward(signum, frame) -> None:
        signals["count"] += 1
        for p in procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM if signals["count"] == 1 else signal.SIGKILL)
                except ProcessLookupError:
                    pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for i in range(args.processes):
            env = process_env(os.environ, i, args.processes, port, args.devices_per_process,
                              args.gpus_per_process)
            # Own session: a terminal's Ctrl-C reaches the launcher, which sends it on once.
            p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, bufsize=1, start_new_session=True)
            procs.append(p)
            prefix = f"[{i}] " if args.processes > 1 else ""
            for stream, out in ((p.stdout, sys.stdout), (p.stderr, sys.stderr)):
                t = threading.Thread(target=_pump, args=(stream, out, prefix), daemon=True)
                t.start()
                pumps.append(t)
        first_failure, failed_at = None, None
        while any(p.poll() is None for p in procs):
            for p in procs:
                rc = p.poll()
                if rc not in (None, 0) and first_failure is None:
                    first_failure, failed_at = rc, time.monotonic()
                    for q in procs:       # the others would wait for it forever
                        if q.poll() is None:
                            q.send_signal(signal.SIGTERM)
            if failed_at is not None and time.monotonic() - failed_at > FAIL_GRACE_S:
                for q in procs:
                    if q.poll() is None:
                        q.kill()
            time.sleep(0.05)
        for t in pumps:
            t.join(timeout=5)
        codes = [p.returncode for p in procs]
        if first_failure is not None:
            return first_failure if first_failure > 0 else 128 - first_failure
        bad = [c for c in codes if c != 0]
        return (bad[0] if bad[0] > 0 else 128 - bad[0]) if bad else 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for p in procs:
            if p.poll() is None:
                p.kill()


if __name__ == "__main__":
    sys.exit(main())
