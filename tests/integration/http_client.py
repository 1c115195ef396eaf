"""Shared pieces of the HTTP contract tests: an app on in-memory storage with a
cheap hasher and a clock the test moves, and a client that speaks for one user
and checks that no answer ever carries a credentials password."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from adapters.passwords import ScryptHasher
from entrypoints.bootstrap import Services, Settings, bootstrap
from entrypoints.http import create_app

TEST_KEY = "k" * 32
PASSWORD = "a long enough password"

# Every credentials password the tests send contains this marker, so one
# substring check on every answer catches any leak.
SECRET_MARKER = "pw-SECRET"


class MovableClock:
    def __init__(self) -> None:
        self.moment = datetime(2030, 1, 1, tzinfo=timezone.utc)

    def now(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


def make_services(*, run_seconds: float = 60, clock: MovableClock | None = None, **settings: Any) -> Services:
    return bootstrap(
        Settings(**{"storage": "memory://", "run_seconds": run_seconds, "secret_key": TEST_KEY, **settings}),
        hasher=ScryptHasher(n=2**4),
        clock=clock,
    )


def make_app(**kwargs: Any) -> web.Application:
    return create_app(make_services(**kwargs))


class User:
    """A client acting as one registered, logged-in user."""

    def __init__(self, client: TestClient[Any, Any], username: str) -> None:
        self.client = client
        self.username = username
        self.access = ""
        self.refresh = ""

    async def sign_up(self) -> User:
        answer = await self.client.post("/api/v1/auth/", json={"username": self.username, "password": PASSWORD})
        assert answer.status == 201, await answer.text()
        answer = await self.client.post("/api/v1/token/", json={"username": self.username, "password": PASSWORD})
        assert answer.status == 200, await answer.text()
        tokens = await answer.json()
        self.access, self.refresh = tokens["access"], tokens["refresh"]
        return self

    async def request(self, method: str, path: str, **kwargs: Any) -> ClientResponse:
        headers = {"Authorization": f"Bearer {self.access}", **kwargs.pop("headers", {})}
        answer = await self.client.request(method, path, headers=headers, **kwargs)
        text = await answer.text()
        assert SECRET_MARKER not in text, f"{method} {path} answered a credentials password"
        return answer

    async def call(self, method: str, path: str, expect: int, **kwargs: Any) -> Any:
        """The JSON answer of a request that must answer `expect`."""
        answer = await self.request(method, path, **kwargs)
        assert answer.status == expect, f"{method} {path}: {answer.status} {await answer.text()}"
        return await answer.json() if answer.status != 204 else None

    # -- a small inventory --------------------------------------------------

    async def credentials(self, username: str = "administrator", **extra: Any) -> dict[str, Any]:
        body = {"username": username, "password": f"{SECRET_MARKER}-{username}", **extra}
        return await self.call("POST", "/api/v1/credentials/", 201, json=body)  # type: ignore[no-any-return]

    async def mount_point(self, name: str = "C:\\", size: int = 1024) -> dict[str, Any]:
        return await self.call("POST", "/api/v1/mount_points/", 201, json={"name": name, "size": size})  # type: ignore[no-any-return]

    async def workload(self, ip: str, credentials: int, storage: list[int]) -> dict[str, Any]:
        body = {"ip": ip, "credentials": credentials, "storage": storage}
        return await self.call("POST", "/api/v1/work_loads/", 201, json=body)  # type: ignore[no-any-return]

    async def target(self, credentials: int, cloud_type: str = "aws") -> dict[str, Any]:
        body = {"cloud_type": cloud_type, "cloud_credentials": credentials}
        return await self.call("POST", "/api/v1/migration_targets/", 201, json=body)  # type: ignore[no-any-return]

    async def migration(self, source: int, target: int, selected: list[int]) -> dict[str, Any]:
        body = {"source": source, "migration_target": target, "selected_mount_points": selected}
        return await self.call("POST", "/api/v1/migrations/", 201, json=body)  # type: ignore[no-any-return]

    async def plan(self, ip: str = "10.0.0.1", volumes: tuple[str, ...] = ("C:\\", "D:\\")) -> dict[str, Any]:
        """Credentials, mount points, a workload, a target and a migration of
        every volume; their ids by kind."""
        credentials = await self.credentials()
        mount_points = [(await self.mount_point(name, 1000 * (i + 1)))["id"] for i, name in enumerate(volumes)]
        workload = await self.workload(ip, credentials["id"], mount_points)
        target = await self.target(credentials["id"])
        migration = await self.migration(workload["id"], target["id"], mount_points)
        return {
            "credentials": credentials["id"],
            "mount_points": mount_points,
            "workload": workload["id"],
            "target": target["id"],
            "migration": migration["id"],
        }

    async def wait_until_finished(self, migration_id: int) -> dict[str, Any]:
        """The state of a migration once it has finished (bounded: 10 s)."""
        for _ in range(200):
            state = await self.call("GET", f"/api/v1/migrations/{migration_id}/state/", 200)
            if state["finished"]:
                return state  # type: ignore[no-any-return]
            await asyncio.sleep(0.05)
        raise AssertionError(f"migration {migration_id} did not finish: {state}")
