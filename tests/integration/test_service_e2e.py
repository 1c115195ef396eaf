"""The real service as a user runs it: `python -m entrypoints serve` on a free
loopback port with an SQLite file. Register, log in, create one object of each
kind, stop it with SIGTERM, start it again: the objects are there and the same
access token still works."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Service:
    def __init__(self, database: Path, port: int, *flags: str) -> None:
        self.database = database
        self.port = port
        self.flags = flags or ("--run-seconds", "0")
        self.process: subprocess.Popen[str] | None = None

    def start(self, *flags: str) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATION_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "entrypoints", "serve", "--port", str(self.port),
             "--storage", f"sqlite:///{self.database}", *self.flags, *flags],
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the service exited at start: {self.process.communicate()[0]}")
            try:
                if self.call("GET", "/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("the service did not answer /health in time")

    def stop(self) -> tuple[int, str]:
        """SIGTERM, then the exit code and everything the service printed."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            output, _ = self.process.communicate(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
            raise AssertionError(f"the service ignored SIGTERM: {output}") from None
        return self.process.returncode, output

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                raw = answer.read()
                return answer.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")


@contextlib.contextmanager
def running_service(directory: Path) -> Iterator[Service]:
    """A service on a free port with its data under `directory`, killed at the
    end if a test left it running."""
    running = Service(directory / "data" / "migration.db", _free_port())
    try:
        yield running
    finally:
        if running.process is not None and running.process.poll() is None:
            running.process.kill()
            running.process.communicate()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    with running_service(tmp_path) as running:
        yield running


def _created(answer: tuple[int, Any]) -> dict[str, Any]:
    status, body = answer
    assert status == 201, body
    return body  # type: ignore[no-any-return]


def test_objects_and_tokens_survive_a_restart(service: Service) -> None:
    service.start()
    assert service.call("POST", "/api/v1/auth/", {"username": "alice", "password": "long enough"})[0] == 201
    status, tokens = service.call("POST", "/api/v1/token/", {"username": "alice", "password": "long enough"})
    assert status == 200
    access = tokens["access"]

    login = {"username": "admin", "password": "pw-SECRET"}
    credentials = _created(service.call("POST", "/api/v1/credentials/", login, access))
    mount_point = _created(service.call("POST", "/api/v1/mount_points/", {"name": "C:\\", "size": 1024}, access))
    workload = _created(service.call(
        "POST", "/api/v1/work_loads/",
        {"ip": "192.0.2.10", "credentials": credentials["id"], "storage": [mount_point["id"]]}, access,
    ))
    target = _created(service.call(
        "POST", "/api/v1/migration_targets/", {"cloud_type": "vsphere", "cloud_credentials": credentials["id"]}, access
    ))
    migration = _created(service.call(
        "POST", "/api/v1/migrations/",
        {"source": workload["id"], "migration_target": target["id"], "selected_mount_points": [mount_point["id"]]},
        access,
    ))

    code, output = service.stop()
    assert code == 0, output
    assert "Traceback" not in output
    assert "pw-SECRET" not in output and access not in output
    assert (service.database.parent / "secret.key").exists()

    service.start()
    for path, expected in [
        (f"/api/v1/credentials/{credentials['id']}/", credentials),
        (f"/api/v1/mount_points/{mount_point['id']}/", mount_point),
        (f"/api/v1/work_loads/{workload['id']}/", workload),
        (f"/api/v1/migration_targets/{target['id']}/", target),
        (f"/api/v1/migrations/{migration['id']}/", migration),
    ]:
        assert service.call("GET", path, token=access) == (200, expected), path
    status, listed = service.call("GET", "/api/v1/work_loads?ip=192.0.2.10", token=access)
    assert (status, listed["count"]) == (200, 1)
    code, output = service.stop()
    assert code == 0, output
