"""The run's workdir: checked before anything is written, and locked while a run uses it.

:func:`check_workdir` refuses an empty path, a file, a folder that cannot be written and
the repository's own folders, without creating anything. :class:`WorkdirLock` holds
``workdir/run.lock`` for the whole run: an exclusive ``fcntl`` lock on an open file
(the kernel releases it when the process dies, however it dies, so a lock left by a
killed run is stale by construction and is simply taken over), whose text names the
holder (host, pid, start time) for the message a second run gets.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket

from absl import logging

LOCK_NAME = "run.lock"


class WorkdirBusy(ValueError):
    """Another live process holds the workdir's lock (a user error: exit 2)."""


def check_workdir(workdir: str | os.PathLike | None) -> str:
    """The absolute path of a usable workdir; creates nothing.

    Raises:
      ValueError: an empty path, an existing file, an unwritable folder (or parent), or
        a folder that is not a run's and holds a source tree (the repository root).
    """
    if workdir is None or not str(os.fspath(workdir)).strip():
        raise ValueError("--workdir is empty: give the folder for this run's checkpoints "
                         "and results (e.g. --workdir=runs/my_run)")
    path = os.path.abspath(os.path.expanduser(os.fspath(workdir)))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--workdir={os.fspath(workdir)!r} is a file, not a folder")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--workdir={os.fspath(workdir)!r} cannot be written ({existing!r} "
                         "is not writable by this user)")
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "config.json")):
        taken = [n for n in (".git", "pyproject.toml", "setup.py") if
                 os.path.exists(os.path.join(path, n))]
        if taken:
            raise ValueError(f"--workdir={os.fspath(workdir)!r} holds a source tree "
                             f"({taken[0]}), not a run: give a folder of its own "
                             "(e.g. --workdir=runs/my_run)")
    return path


def _describe(holder: str) -> str:
    try:
        h = json.loads(holder)
        return f"pid {h['pid']} on host {h['host']} (since {h['started']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


class WorkdirLock:
    """``with WorkdirLock(workdir): ...``: exclusive use of ``workdir`` by this process.

    Raises:
      WorkdirBusy: another live process holds it; the message names its pid and host.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:     # retry if the file we locked was unlinked by a releasing holder
            fd = self._lock_file()
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        # Ours. Text left there is a stale holder's: its death released the lock.
        stale = os.pread(fd, 4096, 0).decode(errors="replace")
        if stale.strip():
            logging.warning("taking over the stale lock of %s, which is no longer running "
                            "(%s)", _describe(stale), self.path)
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def _lock_file(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise WorkdirBusy(
                    f"{os.path.dirname(self.path)!r} is in use by a running training "
                    f"({_describe(holder)}; lock file {self.path}): wait for it, stop it, "
                    "or use another --workdir") from None
            raise
        return fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)      # while still holding it: nobody takes a dead file
        except FileNotFoundError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
