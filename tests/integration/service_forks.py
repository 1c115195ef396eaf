"""Service processes forked from one interpreter that has imported the service
already. A fresh `python -m entrypoints serve` spends nearly a CPU-second
importing its libraries before it answers; a test worker starts dozens of them
on two cores. Each child still runs the command line's own `main` from its
own argv, environment, working directory and log file, and is signalled and
reaped like a `subprocess.Popen` child: only the imports are shared.

The forking process (`python service_forks.py FD`, one per test worker, started
on first use) talks over a socket: one JSON line a request, one a reply, and a
line for each child that ends. It is the children's parent, so it alone reaps
them and signals them; a signal for a child it has reaped is not sent, so a pid
that the system gave again is never hit. It kills its children and ends when
the test worker's end of the socket closes."""

from __future__ import annotations

import atexit
import importlib
import json
import os
import pkgutil
import queue
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PACKAGES = ("migration_core", "adapters", "entrypoints")
NOT_IMPORTED = {"entrypoints.__main__"}  # it runs the command line when imported


def _preload() -> None:
    for name in PACKAGES:
        package = importlib.import_module(name)
        for module in pkgutil.walk_packages(package.__path__, f"{name}."):
            if module.name not in NOT_IMPORTED:
                importlib.import_module(module.name)
    # A fork copies only the thread that forks.
    assert threading.active_count() == 1, threading.enumerate()


def _run_child(request: Mapping[str, Any]) -> int:
    """In the forked child: become `python -m entrypoints ARGV` and return its exit status."""
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    tempfile.tempdir = None  # read from this environment's TMPDIR when asked
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from entrypoints.command import main

    sys.argv = ["entrypoints", *request["argv"]]
    try:
        return int(main() or 0)
    except SystemExit as leaving:
        code = leaving.code
        if code is None or isinstance(code, int):
            return int(code or 0)
        print(code, file=sys.stderr)
        return 1


def _fork(request: Mapping[str, Any], keep_out: Sequence[int]) -> int:
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        for fd in keep_out:
            os.close(fd)
        status = _run_child(request)
    except BaseException:  # noqa: BLE001 - the child must end here, whatever happened
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(status)


def serve_forks(channel: socket.socket) -> None:
    """The forking process's loop: requests in, children out, ends reported."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the test worker decides when this ends
    _preload()
    selector = selectors.DefaultSelector()
    selector.register(channel, selectors.EVENT_READ)
    children: dict[int, int] = {}  # pidfd -> pid
    unread = b""

    def say(message: dict[str, Any]) -> None:
        channel.sendall(json.dumps(message).encode() + b"\n")

    def answer(request: dict[str, Any]) -> None:
        if request["op"] == "spawn":
            pid = _fork(request, [channel.fileno(), selector.fileno(), *children])
            pidfd = os.pidfd_open(pid)
            children[pidfd] = pid
            selector.register(pidfd, selectors.EVENT_READ)
            say({"pid": pid})
        else:
            alive = request["pid"] in children.values()
            if alive:
                os.kill(request["pid"], request["signal"])
            say({"sent": alive})

    try:
        while True:
            for key, _ in selector.select():
                if key.fileobj is channel:
                    received = channel.recv(1 << 16)
                    if not received:
                        return
                    *lines, unread = (unread + received).split(b"\n")
                    for line in lines:
                        answer(json.loads(line))
                else:
                    pidfd = int(key.fd)
                    pid = children.pop(pidfd)
                    selector.unregister(pidfd)
                    os.close(pidfd)
                    _, wait_status = os.waitpid(pid, 0)
                    say({"ended": pid, "status": os.waitstatus_to_exitcode(wait_status)})
    finally:
        for pid in children.values():
            os.kill(pid, signal.SIGKILL)


class ForkedProcess:
    """The part of `subprocess.Popen` that the tests use, for a forked child."""

    def __init__(self, forks: ServiceForks, pid: int) -> None:
        self._forks = forks
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        self.returncode = self._forks.status(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self.returncode = self._forks.wait(self.pid, timeout)
        return self.returncode

    def send_signal(self, how: int) -> None:
        self._forks.signal(self.pid, how)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class ServiceForks:
    """The test worker's end: starts the forking process on first use."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, __file__, str(theirs.fileno())], pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        )
        theirs.close()
        self._channel = ours
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._ended: dict[int, int] = {}
        self._changed = threading.Condition()
        self._asking = threading.Lock()
        threading.Thread(target=self._read, name="service-forks", daemon=True).start()
        atexit.register(self.close)

    def close(self) -> None:
        """End the forking process, and with it every child still running."""
        self._channel.shutdown(socket.SHUT_RDWR)
        self._process.wait(timeout=30)

    def _read(self) -> None:
        for line in self._channel.makefile("r", encoding="utf-8"):
            message = json.loads(line)
            if "ended" in message:
                with self._changed:
                    self._ended[message["ended"]] = message["status"]
                    self._changed.notify_all()
            else:
                self._replies.put(message)
        self._replies.put({"error": "the forking process ended"})

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._asking:
            self._channel.sendall(json.dumps(request).encode() + b"\n")
            reply = self._replies.get(timeout=30)
        assert "error" not in reply, reply
        return reply

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], log: Path) -> ForkedProcess:
        """`python -m entrypoints ARGV` with `env`, its output in `log`."""
        reply = self._ask({"op": "spawn", "argv": list(argv), "env": dict(env), "cwd": os.getcwd(),
                           "log": str(log)})
        return ForkedProcess(self, reply["pid"])

    def signal(self, pid: int, how: int) -> None:
        self._ask({"op": "signal", "pid": pid, "signal": int(how)})

    def status(self, pid: int) -> int | None:
        with self._changed:
            return self._ended.get(pid)

    def wait(self, pid: int, timeout: float | None) -> int:
        with self._changed:
            if not self._changed.wait_for(lambda: pid in self._ended, timeout):
                raise subprocess.TimeoutExpired(f"forked service {pid}", timeout or 0)
            return self._ended[pid]


_forks: ServiceForks | None = None
_starting = threading.Lock()


def service_forks() -> ServiceForks:
    """This test worker's forking process."""
    global _forks
    with _starting:
        if _forks is None:
            _forks = ServiceForks()
        return _forks


if __name__ == "__main__":
    sys.path[0] = os.getcwd()  # as `python -m` has it, not this file's folder
    serve_forks(socket.socket(fileno=int(sys.argv[1])))
