"""Host memory: run the CLI with glibc's malloc backed by transparent huge pages.

XLA:CPU allocates a program's temporaries (~0.5 GB for a RIDE-3 ResNet-32 step at batch
128) and Eigen's convolution scratch (~75 MB a call) with ``malloc``. glibc serves blocks
over 32 MB with a fresh ``mmap`` and gives them back with ``munmap`` on ``free``, so every
train step touches ~550 MB of new 4 KiB pages: ~140,000 page faults and ~0.5 s of kernel
time a step on the 2-core CI machine (measured; BENCHMARKS.md, "Fusion barriers and
the host allocator").
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35) makes malloc ask for
transparent huge pages, which cuts the faults ~500-fold; it cannot be turned on in a
running process, so :func:`reexec_with_hugepage_malloc` restarts the interpreter once,
before anything is imported, with the tunable added to the environment.

Nothing changes numerically. Set ``RIDE_JAX_MALLOC=system`` to keep the process as it
was started (or set ``GLIBC_TUNABLES`` yourself: a value that already names
``glibc.malloc.hugetlb`` is left alone).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "RIDE_JAX_MALLOC"           # 'system': never re-exec
_MARK = "RIDE_JAX_MALLOC_REEXEC"      # set in the child: re-exec at most once
THP_PATH = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, int] | None:
    lib, version = platform.libc_ver()
    if lib != "glibc":
        return None
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def _thp_mode(path: str = THP_PATH) -> str | None:
    """The selected mode of ``enabled`` (``always``, ``madvise``, ``never``), or None."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def hugepage_environ(environ: Mapping[str, str], *, system: str | None = None,
                     glibc: tuple[int, int] | None = None,
                     thp_mode: str | None = None) -> dict[str, str] | None:
    """The environment to re-exec with, or None where a re-exec would not help.

    None when: ``RIDE_JAX_MALLOC=system``; already re-executed; not Linux; not glibc
    >= 2.35; transparent huge pages ``never`` or unknown; ``GLIBC_TUNABLES`` already
    sets ``glibc.malloc.hugetlb``. ``system``, ``glibc``, ``thp_mode`` default to this
    machine's (arguments for tests).
    """
    tunables = environ.get("GLIBC_TUNABLES", "")
    if (environ.get(OPT_OUT, "") == "system" or environ.get(_MARK)
            or "glibc.malloc.hugetlb" in tunables):
        return None                       # decided by the environment: no machine probing
    system = platform.system() if system is None else system
    glibc = _glibc_version() if glibc is None else glibc
    thp_mode = _thp_mode() if thp_mode is None else thp_mode
    if system != "Linux" or glibc is None or glibc < (2, 35):
        return None
    if thp_mode not in ("always", "madvise"):
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
    env[_MARK] = "1"
    return env


def reexec_with_hugepage_malloc() -> None:
    """Replaces this process by the same command with huge-page malloc, if that helps.

    Call it first thing in a ``__main__`` block (before JAX allocates anything); it
    returns without doing anything where :func:`hugepage_environ` says None, and if
    ``RIDE_JAX_MALLOC`` is anything but ``''``, ``'hugepages'`` or ``'system'`` it
    raises ValueError naming the choices.
    """
    choice = os.environ.get(OPT_OUT, "")
    if choice not in ("", "hugepages", "system"):
        raise ValueError(f"{OPT_OUT}={choice!r}: choose 'hugepages' (default) or 'system'")
    env = hugepage_environ(os.environ)
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, *sys.orig_argv[1:]]
    os.execve(sys.executable, argv, env)
