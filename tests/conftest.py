"""Makes the checkout importable (``import ride_jax``) without installing it, and shares
one persistent XLA compilation cache between the tests of a session and the
subprocesses they start (the end-to-end runs compile the same train steps)."""

import os
import pathlib
import sys
import tempfile

_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="ride_jax_xla_cache_")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
