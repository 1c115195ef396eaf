"""The real service as a user runs it: `python -m entrypoints serve` on a free
loopback port with an SQLite file. Register, log in, create one object of each
kind, stop it with SIGTERM, start it again: the objects are there and the same
access token still works. The password is hashed at the default cost."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from .service_process import ServiceProcess


def _created(answer: tuple[int, Any]) -> dict[str, Any]:
    status, body = answer
    assert status == 201, body
    return body  # type: ignore[no-any-return]


def test_objects_and_tokens_survive_a_restart(fresh_service: ServiceProcess, tmp_path: Path) -> None:
    fresh_service.start()
    assert fresh_service.call("POST", "/api/v1/auth/", {"username": "alice", "password": "long enough"})[0] == 201
    status, tokens = fresh_service.call("POST", "/api/v1/token/", {"username": "alice", "password": "long enough"})
    assert status == 200
    access = tokens["access"]

    login = {"username": "admin", "password": "pw-SECRET"}
    credentials = _created(fresh_service.call("POST", "/api/v1/credentials/", login, access))
    mount_point = _created(fresh_service.call("POST", "/api/v1/mount_points/", {"name": "C:\\", "size": 1024}, access))
    workload = _created(fresh_service.call(
        "POST", "/api/v1/work_loads/",
        {"ip": "192.0.2.10", "credentials": credentials["id"], "storage": [mount_point["id"]]}, access,
    ))
    target = _created(fresh_service.call(
        "POST", "/api/v1/migration_targets/", {"cloud_type": "vsphere", "cloud_credentials": credentials["id"]}, access
    ))
    migration = _created(fresh_service.call(
        "POST", "/api/v1/migrations/",
        {"source": workload["id"], "migration_target": target["id"], "selected_mount_points": [mount_point["id"]]},
        access,
    ))

    code, output = fresh_service.stop(), fresh_service.log()
    assert code == 0, output
    assert "Traceback" not in output
    assert "pw-SECRET" not in output and access not in output
    assert (tmp_path / "data" / "secret.key").exists()
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "migration.db")) as database:
        (stored,) = database.execute("SELECT password_hash FROM users WHERE username = 'alice'").fetchone()
    assert stored.startswith("scrypt$32768$8$1$")  # MIGRATION_PASSWORD_COST's default, 15

    fresh_service.start()
    for path, expected in [
        (f"/api/v1/credentials/{credentials['id']}/", credentials),
        (f"/api/v1/mount_points/{mount_point['id']}/", mount_point),
        (f"/api/v1/work_loads/{workload['id']}/", workload),
        (f"/api/v1/migration_targets/{target['id']}/", target),
        (f"/api/v1/migrations/{migration['id']}/", migration),
    ]:
        assert fresh_service.call("GET", path, token=access) == (200, expected), path
    status, listed = fresh_service.call("GET", "/api/v1/work_loads?ip=192.0.2.10", token=access)
    assert (status, listed["count"]) == (200, 1)
    assert fresh_service.stop() == 0, fresh_service.log()
