"""`--workers N`: N service processes on one port. The kernel spreads new
connections over the processes that bound the port with SO_REUSEPORT; each
process is an instance of its own (it registers in storage and carries the runs
it starts), so a worker that dies takes only its own runs with it, and the
others mark them interrupted.

This process only supervises: it starts the workers with the same settings,
forwards SIGTERM and SIGINT to them, restarts a worker that dies while the
service is up, and stops when they have all stopped."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping

from .settings import SETTINGS, Settings

log = logging.getLogger(__name__)

# Set for a worker by its supervisor: bind the port with SO_REUSEPORT.
WORKER_VARIABLE = "MIGRATION_WORKER"
RESTART_DELAY_SECONDS = 1.0
STOP_GRACE_SECONDS = 20.0


def worker_environment(settings: Settings, environ: Mapping[str, str], index: int) -> dict[str, str]:
    """The environment of worker `index`: every setting as the supervisor
    resolved it (flags included), one worker each."""
    values = {
        setting.variable: _as_text(getattr(settings, setting.name))
        for setting in SETTINGS
        if getattr(settings, setting.name, None) is not None
    }
    values["MIGRATION_WORKERS"] = "1"
    values[WORKER_VARIABLE] = str(index)
    return {**environ, **values}


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):  # the allowed networks
        return ",".join(map(str, value))
    return str(value)


class Supervisor:
    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        self._settings = settings
        self._environ = environ
        self._workers: dict[int, subprocess.Popen[bytes]] = {}
        self._stopping = threading.Event()

    def _start(self, index: int) -> None:
        self._workers[index] = subprocess.Popen(
            [sys.executable, "-m", "entrypoints", "serve"],
            env=worker_environment(self._settings, self._environ, index),
            preexec_fn=functools.partial(_end_with_parent, os.getpid()),
        )

    def _stop(self, signum: int, _frame: object) -> None:
        self._stopping.set()
        for worker in self._workers.values():
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        for index in range(self._settings.workers):
            self._start(index)
        log.info(
            "%d workers serving on http://%s:%d (Ctrl+C to stop)",
            self._settings.workers, self._settings.host, self._settings.port,
        )
        failures = 0
        while self._workers:
            for index, worker in list(self._workers.items()):
                code = worker.poll()
                if code is None:
                    continue
                del self._workers[index]
                if self._stopping.is_set():
                    continue
                if code != 0:
                    failures += 1
                log.warning("worker %d (pid %d) exited with %s; starting it again", index, worker.pid, code)
                if failures > 3 * self._settings.workers:
                    log.error("workers keep failing; stopping")
                    self._stop(signal.SIGTERM, None)
                    continue
                time.sleep(RESTART_DELAY_SECONDS)
                self._start(index)
            if self._stopping.is_set():
                self._wait_for_workers()
            time.sleep(0.1)
        return 1 if failures and not self._stopping.is_set() else 0

    def _wait_for_workers(self) -> None:
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for index, worker in list(self._workers.items()):
            try:
                worker.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) did not stop in time; killing it", index, worker.pid)
                worker.kill()
                worker.wait()
            del self._workers[index]


_PR_SET_PDEATHSIG = 1


def _end_with_parent(parent: int) -> None:
    """In a new worker, before it runs: the kernel sends it SIGTERM when the
    supervisor dies, however it dies (SIGKILL included), so no worker goes
    on serving alone. Linux only; elsewhere a killed supervisor leaves them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request was made
        os._exit(1)


def is_worker() -> bool:
    return WORKER_VARIABLE in os.environ
