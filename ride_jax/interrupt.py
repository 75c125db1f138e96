"""SIGTERM / Ctrl-C: stop within seconds, whatever the trainer is doing, losing nothing.

``with GracefulStop() as stop:`` installs handlers for SIGTERM and SIGINT
that only set ``stop.signum``; the trainer polls :attr:`GracefulStop.requested` after
every train step and every evaluation batch, then saves a checkpoint and returns.

A Python signal handler runs only when the main thread executes Python code, not while
it is inside a long native call (XLA compiling a step). So the signal is also written
to a pipe (``signal.set_wakeup_fd``) that a watchdog thread reads at once. If the main
thread has not reached a poll ``grace`` seconds later and nothing is unsaved
(``stop.clean``: the trainer sets it while its state equals the last checkpoint or the
initial state, e.g. while compiling before the first step), the watchdog runs the
:meth:`GracefulStop.at_forced_exit` callbacks (flush logs, release the workdir lock) and exits the process with status 0.
With unsaved progress it waits for the main thread, whose next poll saves. A second
signal while the first is pending exits at once (status 130) without saving:
``stop.last_saved`` names the checkpoint that stays.

Several processes (``synchronized=True``, under ``jax.distributed``): every process
must stop at the same step, whichever of them got the signal. SIGTERM is then left to
JAX's preemption notifier (the coordination service tells every process), a Ctrl-C is
turned into a SIGTERM to the process itself, and :meth:`GracefulStop.poll`, called
after every train step with the run's call count, turns true on every process at the
same call (``multihost_utils.reached_preemption_sync_point``: the largest call any
process has reached, plus one). The watchdog is not used: a process may not leave
while the others wait for it in a collective.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Callable

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_NUMBERS = frozenset(int(s) for s in SIGNALS)


class GracefulStop:
    """See the module docstring. ``grace``: seconds the main thread gets to reach a poll."""

    def __init__(self, grace: float = 2.0, synchronized: bool = False):
        self.grace = grace
        self.synchronized = synchronized
        self._at_exit: list[Callable[[], None]] = []
        self.signum: int | None = None
        self.clean = True            # nothing trained since the last save / the start
        self.last_saved: int | None = None
        self.acknowledged = False    # the main thread is stopping
        self._old: dict = {}
        self._pipe: tuple[int, int] | None = None
        self._old_wakeup = -1
        self._count = 0
        self._lock = threading.Lock()

    @property
    def requested(self) -> bool:
        """Whether a stop was requested (the trainer then saves and returns)."""
        return self.signum is not None

    def poll(self, call: int) -> bool:
        """Whether to stop after train call ``call`` (0, 1, ... in this run). Several
        processes: true on all of them at the same call (see the module docstring)."""
        if self.synchronized and self.signum is None:
            from jax.experimental import multihost_utils
            if multihost_utils.reached_preemption_sync_point(call):
                self.signum = int(signal.SIGTERM)
        return self.requested

    def at_forced_exit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` (flush a log, release a lock) before a watchdog exit, newest first."""
        self._at_exit.append(fn)

    def acknowledge(self) -> None:
        """Called by the main thread when it starts stopping (the watchdog stands down)."""
        self.acknowledged = True

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is not threading.main_thread():
            return self                  # handlers can only be set in the main thread
        if self.synchronized:            # SIGTERM: JAX's preemption notifier
            self._old[signal.SIGINT] = signal.signal(
                signal.SIGINT, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
            return self
        for sig in SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._pipe = (r, w)
        try:
            self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except ValueError:
            self._old_wakeup = None
        threading.Thread(target=self._watch, name="ride_jax-stop-watchdog",
                         daemon=True).start()
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum

    def _watch(self) -> None:
        r = self._pipe[0]
        first_at = None
        while True:
            try:
                data = os.read(r, 64)
            except OSError:
                return
            if not data:                 # write end closed: the context has exited
                os.close(r)
                return
            got = sum(1 for b in data if b in _NUMBERS)
            if not got:
                continue
            with self._lock:
                self._count += got
                count = self._count
            if count >= 2 and first_at is not None:
                self._exit(130, "a second signal: stopped at once without saving")
            first_at = first_at or time.monotonic()
            threading.Thread(target=self._deadline, args=(first_at,), daemon=True).start()

    def _deadline(self, first_at: float) -> None:
        while time.monotonic() - first_at < self.grace:
            time.sleep(0.05)
        while not self.acknowledged:
            if self.clean:
                self._exit(0, "interrupted while compiling, before any unsaved step")
            time.sleep(0.1)

    def _exit(self, code: int, why: str) -> None:
        saved = ("no checkpoint yet" if self.last_saved is None
                 else f"the last checkpoint is step {self.last_saved}")
        msg = f"{why}; {saved}"
        try:
            for fn in reversed(self._at_exit):
                try:
                    fn()
                except Exception:   # noqa: BLE001 - exiting anyway; the rest still run
                    pass
        finally:
            sys.stderr.write(f"interrupted: {msg}\n")
            sys.stderr.flush()
            os._exit(code)

    def __exit__(self, *exc) -> None:
        self.acknowledged = True         # the main thread is past every poll: stand down
        if self._pipe is None:
            for sig, old in self._old.items():
                signal.signal(sig, old)
            return
        if self._old_wakeup is not None:
            signal.set_wakeup_fd(self._old_wakeup)
        for sig, old in self._old.items():
            signal.signal(sig, old)
        os.close(self._pipe[1])          # ends the watchdog's read
        self._pipe = None
