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


# CI installs every optional dependency (TensorFlow, tfds), the Debian Fashion-MNIST
# package and has ../shared beside the clone: there a skipped test would hide a missing
# check, so under CI=true every skip is reported as a failure. On a user's machine the
# skips stand (each names what is missing).
import pytest  # noqa: E402

_IN_CI = os.environ.get("CI") == "true"


def _fail_skip(report):
    if _IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where nothing may be missing: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.fixture(scope="session")
def ride2_run(tmp_path_factory):
    """A finished stage-1 RIDE-2 run on the synthetic smoke data (2 epochs), shared by the
    stage and analysis tests (one training per session)."""
    from ride_jax.train import train_and_evaluate

    from helpers import synthetic_config
    d = tmp_path_factory.mktemp("ride2")
    assert train_and_evaluate(synthetic_config("experts=2"), str(d))["status"] == "finished"
    return d
