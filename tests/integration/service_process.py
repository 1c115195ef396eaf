"""A real `serve` process on a free loopback port, as tests of whole processes
need it: started on any storage URL, called over HTTP, stopped by any signal.
Every wait is bounded. The process is forked from one that has imported the
service already (service_forks.py); it runs the command line's `main` all the
same."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..ports import reserved_port
from .service_forks import ForkedProcess, service_forks

PATIENCE = 30.0  # seconds: a bound on every wait, never an expectation
STARTS = 5  # attempts at a start whose port someone else took all the same
SECRET_KEY = "multi-instance-tests-secret-key-0123456789"
# scrypt's lowest work factor (README, "Configuration"): a test signs up and
# logs in again and again, at a tenth of a CPU-second each by default.
PASSWORD_COST = "10"

T = TypeVar("T")


def wait_for(
    what: str,
    check: Callable[[], T | None],
    patience: float = PATIENCE,
    every: float = 0.05,
    longest: float | None = None,
) -> T:
    """Poll `check` every `every` seconds until it returns something other than
    None or False. With `longest`, the pause grows by half at each look up to
    that: for a state that stays once reached (an end), so that a long wait
    costs the service a few looks a second, not twenty."""
    deadline = time.monotonic() + patience
    pause = every
    while True:
        found = check()
        if found is not None and found is not False:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(pause)
        if longest is not None:
            pause = min(pause * 1.5, longest)


class ServiceProcess:
    """One `serve` process on `storage`; it can be started again (on a new
    port) as often as a test asks. Its output goes to a log file per start.
    Every instance shares one secret key, given in the environment; with
    `secret_key=None` the service keeps its own beside an SQLite database.
    With `password_cost=None` it hashes passwords at its default cost."""

    def __init__(
        self, storage: str, directory: Path, name: str, *args: str, secret_key: str | None = SECRET_KEY,
        password_cost: str | None = PASSWORD_COST,
    ) -> None:
        self.storage = storage
        self.secret_key = secret_key
        self.password_cost = password_cost
        self.directory = directory
        self.name = name
        self.args = list(args)
        self.process: ForkedProcess | None = None
        self.port = 0
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.name}-{self.starts}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, *args: str) -> ServiceProcess:
        assert self.process is None or self.process.poll() is not None
        for _ in range(STARTS):
            with reserved_port() as port:
                self.port = port
                self.starts += 1
                self._spawn(args)
                if wait_for(f"{self.name} to answer /health:\n{self.log()}", self._healthy_or_ended) == "healthy":
                    return self
            if "the port is already in use" not in self.log():
                break
        raise AssertionError(f"{self.name} ended early:\n{self.log()}")

    def _spawn(self, args: Sequence[str]) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATION_")}
        if self.secret_key is not None:
            environ["MIGRATION_SECRET_KEY"] = self.secret_key
        if self.password_cost is not None:
            environ["MIGRATION_PASSWORD_COST"] = self.password_cost
        argv = [
            "serve",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--storage", self.storage,
            *self.args,
            *args,
        ]
        self.process = service_forks().spawn(argv, environ, self.log_path)

    def _healthy_or_ended(self) -> str | None:
        assert self.process is not None
        if self.process.poll() is not None:
            return "ended"
        try:
            return "healthy" if self.call("GET", "/health")[0] == 200 else None
        except OSError:
            return None

    def stop(self, how: signal.Signals = signal.SIGTERM) -> int:
        """Send `how` and wait for the process to end; its exit code."""
        assert self.process is not None
        self.process.send_signal(how)
        try:
            return self.process.wait(timeout=PATIENCE)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def call(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{path}", data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=PATIENCE) as answer:
                raw = answer.read()
                return answer.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def ok(self, method: str, path: str, body: Any = None, token: str | None = None, status: int = 200) -> Any:
        got, answer = self.call(method, path, body, token)
        assert got == status, (method, path, got, answer)
        return answer


def sign_up(service: ServiceProcess, username: str, password: str = "long enough") -> str:
    """Register `username` and return an access token."""
    service.ok("POST", "/api/v1/auth/", {"username": username, "password": password}, status=201)
    return str(service.ok("POST", "/api/v1/token/", {"username": username, "password": password})["access"])


def plan_migration(service: ServiceProcess, token: str, ip: str, volumes: Sequence[str] = ("C:\\", "D:\\")) -> int:
    """A workload with `volumes`, a target, and a migration of them all; its id."""
    credentials = service.ok("POST", "/api/v1/credentials/", {"username": "admin", "password": "pw"}, token, 201)
    mount_points = [
        service.ok("POST", "/api/v1/mount_points/", {"name": name, "size": 1000}, token, 201)["id"]
        for name in volumes
    ]
    workload = service.ok(
        "POST", "/api/v1/work_loads/",
        {"ip": ip, "credentials": credentials["id"], "storage": mount_points}, token, 201,
    )
    target = service.ok(
        "POST", "/api/v1/migration_targets/",
        {"cloud_type": "aws", "cloud_credentials": credentials["id"]}, token, 201,
    )
    migration = service.ok(
        "POST", "/api/v1/migrations/",
        {"source": workload["id"], "migration_target": target["id"], "selected_mount_points": mount_points},
        token, 201,
    )
    return int(migration["id"])
