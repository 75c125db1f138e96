"""Helpers shared by the end-to-end tests (importable: pytest puts tests/ on sys.path)."""

import os
import pathlib
import subprocess
import sys

from ride_jax.configlib import load

ROOT = pathlib.Path(__file__).resolve().parents[1]


def synthetic_config(arg: str = "experts=2", **over):
    """The synthetic smoke recipe (16x16, 159 images, batch 32, 2 epochs of 4 steps with
    ``data.remainder='drop'``) with ``arg`` and dotted overrides (``**{'a.b': v}``)."""
    c = load(ROOT / "configs" / "synthetic_lt.py", "smoke," + arg)
    c.unlock()
    c.data.remainder = "drop"
    for key, value in over.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    c.lock()
    return c


def run_main(workdir, config, extra=(), **kw):
    """``python -m ride_jax.main --config=config --workdir=workdir *extra`` on the CPU."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "ride_jax.main", f"--config={config}",
                           f"--workdir={workdir}", *extra], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900, **kw)
