"""ride_jax.allocator: the CLI restarts once with huge-page malloc where that helps."""

import os
import subprocess
import sys

import pytest

from ride_jax import allocator

LINUX = dict(system="Linux", glibc=(2, 36), thp_mode="madvise")


def test_adds_the_tunable_and_a_mark():
    env = allocator.hugepage_environ({"PATH": "/bin"}, **LINUX)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert env["PATH"] == "/bin" and env[allocator._MARK] == "1"
    env = allocator.hugepage_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
                                     **LINUX)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert allocator.hugepage_environ({}, system="Linux", glibc=(2, 35),
                                      thp_mode="always") is not None


@pytest.mark.parametrize("environ, machine", [
    ({"RIDE_JAX_MALLOC": "system"}, {}),                        # opted out
    ({allocator._MARK: "1"}, {}),                               # already restarted
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, {}),         # the user's own choice
    ({}, {"system": "Darwin"}),
    ({}, {"glibc": (2, 34)}),                                   # tunable added in 2.35
    ({}, {"thp_mode": "never"}),
    ({}, {"thp_mode": ""}),                                     # unknown (no sysfs file)
])
def test_no_restart_where_it_cannot_help(environ, machine):
    assert allocator.hugepage_environ(environ, **{**LINUX, **machine}) is None


def test_thp_mode_reads_the_selected_entry(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert allocator._thp_mode(str(path)) == "madvise"
    assert allocator._thp_mode(str(tmp_path / "missing")) is None


def _clean_environ():
    """This process's environment without the variables the allocator reads or sets."""
    return {k: v for k, v in os.environ.items()
            if k not in ("GLIBC_TUNABLES", allocator._MARK, allocator.OPT_OUT)}


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**_clean_environ(), **env}, timeout=120)


SCRIPT = ("import os; from ride_jax import allocator; "
          "allocator.reexec_with_hugepage_malloc(); "
          "print(os.environ.get('GLIBC_TUNABLES', '-'), os.environ.get('RIDE_JAX_MALLOC_REEXEC', '-'))")


def test_restart_keeps_the_command_and_happens_once():
    expected = allocator.hugepage_environ(_clean_environ())
    out = _run(SCRIPT)
    assert out.returncode == 0, out.stderr
    if expected is None:      # a machine where it cannot help: the process is left alone
        assert out.stdout.split() == ["-", "-"]
    else:
        assert out.stdout.split() == ["glibc.malloc.hugetlb=1", "1"]
    opted_out = _run(SCRIPT, RIDE_JAX_MALLOC="system")
    assert opted_out.stdout.split() == ["-", "-"]


def test_bad_choice_is_a_clear_cli_error():
    out = subprocess.run([sys.executable, "-m", "ride_jax.main", "--helpshort"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "RIDE_JAX_MALLOC": "tcmalloc"})
    assert out.returncode == 2
    assert "RIDE_JAX_MALLOC='tcmalloc'" in out.stderr and "'system'" in out.stderr
    assert "Traceback" not in out.stderr
