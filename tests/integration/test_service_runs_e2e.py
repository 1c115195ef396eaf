"""The real service as a subprocess on a loopback port: a run cut short by
SIGKILL or SIGTERM is `error` / `interrupted` once the service is back, and
runs again to success. The access token issued before stays valid across the
restarts, since the secret key is kept beside the database. Every wait is
bounded."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .service_process import PATIENCE, ServiceProcess

LONG_RUN = "30"  # seconds of a copy that is cut short
SHORT_RUN = "1"  # seconds of the copy run again after the restart


class Service(ServiceProcess):
    """One `serve` process on an SQLite file in a directory, keeping its
    secret key beside it; started again on the same database (and a new
    port) as often as a test asks."""

    def __init__(self, directory: Path) -> None:
        self.database = directory / "db.sqlite"
        super().__init__(f"sqlite:///{self.database}", directory, "serve", secret_key=None)
        self.access = ""

    def start(self, run_seconds: str) -> None:
        super().start("--run-seconds", run_seconds)

    def answer(self, method: str, path: str, expect: int, body: Any = None, *, token: bool = True) -> Any:
        return self.ok(method, path, body, self.access if token else None, status=expect)

    # -- a user and a migration -------------------------------------------

    def sign_up(self) -> None:
        account = {"username": "operator", "password": "a long enough password"}
        self.answer("POST", "/api/v1/auth/", 201, account, token=False)
        self.access = self.answer("POST", "/api/v1/token/", 200, account, token=False)["access"]

    def migration(self) -> dict[str, int]:
        """A workload of C:\\ and D:\\ (both selected) and its migration."""
        credentials = self.answer("POST", "/api/v1/credentials/", 201, {"username": "admin", "password": "secret"})
        volumes = [
            self.answer("POST", "/api/v1/mount_points/", 201, {"name": name, "size": size})["id"]
            for name, size in [("C:\\", 4000), ("D:\\", 1000)]
        ]
        workload = self.answer(
            "POST", "/api/v1/work_loads/", 201,
            {"ip": "192.0.2.10", "credentials": credentials["id"], "storage": volumes},
        )
        target = self.answer(
            "POST", "/api/v1/migration_targets/", 201,
            {"cloud_type": "vsphere", "cloud_credentials": credentials["id"]},
        )
        migration = self.answer(
            "POST", "/api/v1/migrations/", 201,
            {"source": workload["id"], "migration_target": target["id"], "selected_mount_points": volumes},
        )
        return {"migration": migration["id"], "target": target["id"]}

    def state(self, migration_id: int) -> dict[str, Any]:
        return self.answer("GET", f"/api/v1/migrations/{migration_id}/state/", 200)  # type: ignore[no-any-return]

    def wait_for(self, migration_id: int, done: Any) -> dict[str, Any]:
        deadline = time.monotonic() + PATIENCE
        while not done(state := self.state(migration_id)):
            assert time.monotonic() < deadline, f"migration {migration_id} stuck at {state}"
            time.sleep(0.1)
        return state


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    found = Service(tmp_path)
    yield found
    found.kill()


def stored_run(database: Path, migration_id: int) -> tuple[str, str | None]:
    """State and error of a migration as the database file holds them."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        row = db.execute("SELECT state, error FROM migrations WHERE id = ?", [migration_id]).fetchone()
    return row[0], row[1]


def run_again_to_success(service: Service, ids: dict[str, int]) -> None:
    rerun = service.answer("POST", f"/api/v1/migrations/{ids['migration']}/run/", 202)
    assert (rerun["state"], rerun["progress"], rerun["error"]) == ("running", 0, None)
    final = service.wait_for(ids["migration"], lambda state: state["finished"])
    assert {field: final[field] for field in ("state", "progress", "error", "finished")} == {
        "state": "success", "progress": 100, "error": None, "finished": True,
    }
    assert [volume["copied"] for volume in final["volumes"]] == [4000, 1000]
    target = service.answer("GET", f"/api/v1/migration_targets/{ids['target']}/", 200)
    assert target["target_vm"] == {
        "ip": "192.0.2.10",
        "credentials": {"username": "admin", "domain": ""},
        "storage": [{"name": "C:\\", "size": 4000}, {"name": "D:\\", "size": 1000}],
    }


def test_a_run_cut_short_by_sigkill_is_interrupted_after_the_restart_and_runs_again(
    service: Service,
) -> None:
    service.start(LONG_RUN)
    service.sign_up()
    ids = service.migration()
    assert service.answer("POST", f"/api/v1/migrations/{ids['migration']}/run/", 202)["state"] == "running"
    # Progress is persisted while the copy runs, so the next process sees it.
    before = service.wait_for(ids["migration"], lambda state: state["progress"] > 0)
    service.stop(signal.SIGKILL)
    assert stored_run(service.database, ids["migration"]) == ("running", None)

    service.start(SHORT_RUN)
    after = service.state(ids["migration"])
    assert (after["state"], after["error"], after["finished"]) == ("error", "interrupted", True)
    # What was copied stays as last recorded.
    assert after["progress"] == 100 * after["bytes_copied"] // after["bytes_total"]
    assert before["progress"] <= after["progress"] < 100
    target = service.answer("GET", f"/api/v1/migration_targets/{ids['target']}/", 200)
    assert target["target_vm"] is None
    run_again_to_success(service, ids)


def test_sigterm_during_a_run_exits_cleanly_marking_it_interrupted_and_it_runs_again(
    service: Service,
) -> None:
    service.start(LONG_RUN)
    service.sign_up()
    ids = service.migration()
    service.answer("POST", f"/api/v1/migrations/{ids['migration']}/run/", 202)

    assert service.stop(signal.SIGTERM) == 0, service.log()
    # Marked by the stopping service itself, before any restart, and said in one line.
    assert stored_run(service.database, ids["migration"]) == ("error", "interrupted")
    assert "Service stopped; it interrupted 1 running migration." in service.log()

    service.start(SHORT_RUN)
    after = service.state(ids["migration"])
    assert (after["state"], after["error"], after["finished"]) == ("error", "interrupted", True)
    target = service.answer("GET", f"/api/v1/migration_targets/{ids['target']}/", 200)
    assert target["target_vm"] is None
    run_again_to_success(service, ids)
    assert service.stop(signal.SIGTERM) == 0, service.log()
    assert "Service stopped; it interrupted 0 running migrations." in service.log()
