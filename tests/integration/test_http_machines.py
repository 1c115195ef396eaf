"""The machine actions over HTTP and on the command line (SPEC 2.7, 3.2),
against the real sshd of tests/sshd_server.py."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from entrypoints.http import create_app
from entrypoints.settings import Settings

from ..sshd_fixtures import Machine, Witness
from .http_client import TEST_KEY, User, make_services
from .service_process import ServiceProcess, sign_up

MakeClient = Callable[..., Any]


async def _user(aiohttp_client: Any, **settings: Any) -> User:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(make_services(**settings)))
    return await User(client, "alice").sign_up()


async def _workload(alice: User, ip: str, port: int, **credentials: str) -> int:
    login = await alice.call("POST", "/api/v1/credentials/", 201, json=credentials)
    workload = await alice.call(
        "POST", "/api/v1/work_loads/", 201, json={"ip": ip, "port": port, "credentials": login["id"], "storage": []}
    )
    return int(workload["id"])


async def test_check_and_discover_answer_in_words_and_a_dry_run_writes_nothing(
    aiohttp_client: Any, machine: Machine
) -> None:
    alice = await _user(aiohttp_client)
    workload = await _workload(
        alice, "127.0.0.1", machine.port, username=machine.username, private_key=machine.private_key
    )
    await alice.call("PATCH", f"/api/v1/work_loads/{workload}/", 200, json={"root": str(machine.root)})

    checked = await alice.call("POST", f"/api/v1/work_loads/{workload}/check", 200)
    dry = await alice.call("POST", f"/api/v1/work_loads/{workload}/discover/?dry_run=true", 200)
    unchanged = await alice.call("GET", f"/api/v1/work_loads/{workload}/", 200)
    found = await alice.call("POST", f"/api/v1/work_loads/{workload}/discover/", 200)
    after = await alice.call("GET", f"/api/v1/work_loads/{workload}/", 200)

    assert set(checked) == {"ok", "message", "os", "hostname", "kernel", "tools", "host_key"}
    assert checked["ok"] and checked["os"] == "linux" and checked["host_key"] == machine.host_key_fingerprint
    assert checked["tools"] == {"tar": True, "sha256sum": True}
    assert set(dry) == {"ok", "message", "added", "updated", "unchanged"}
    assert [v["name"] for v in dry["added"]] == ["/"] and unchanged["storage"] == []
    assert found["added"] == [{"name": "/", "size": found["added"][0]["size"]}] and len(after["storage"]) == 1
    assert after["host_key"] == machine.host_key_fingerprint and after["os"] == "linux"


async def test_an_unreachable_machine_is_ok_false_and_a_windows_discovery_is_409(
    aiohttp_client: Any, closed_port: int
) -> None:
    alice = await _user(aiohttp_client)
    workload = await _workload(alice, "127.0.0.1", closed_port, username="root", password="pw")

    checked = await alice.call("POST", f"/api/v1/work_loads/{workload}/check/", 200)
    await alice.call("PATCH", f"/api/v1/work_loads/{workload}/", 200, json={"os": "windows"})
    refused = await alice.call("POST", f"/api/v1/work_loads/{workload}/discover/", 409)

    assert checked["ok"] is False and "Connection refused" in checked["message"]
    assert checked["hostname"] is None and checked["tools"] == {"tar": False, "sha256sum": False}
    assert "runs windows" in refused["detail"]


async def test_an_address_outside_the_allowed_networks_is_409_naming_the_setting_and_sends_nothing(
    aiohttp_client: Any, witness_listener: Callable[[str], Witness]
) -> None:
    witness = witness_listener("127.0.0.9")
    networks = Settings.parse({"allowed_networks": "127.0.0.1/32", "secret_key": TEST_KEY}).allowed_networks
    alice = await _user(aiohttp_client, allowed_networks=networks)
    workload = await _workload(alice, "127.0.0.9", witness.port, username="root", password="pw")

    for action in ("check", "discover"):
        refused = await alice.call("POST", f"/api/v1/work_loads/{workload}/{action}/", 409)
        assert "MIGRATION_ALLOWED_NETWORKS" in refused["detail"]
    assert witness.attempts() == []


def test_the_command_line_says_the_same_words(tmp_path: Path, machine: Machine, closed_port: int) -> None:
    database = f"sqlite:///{tmp_path / 'cli.db'}"
    service = ServiceProcess(database, tmp_path, "cli").start()
    try:
        token = sign_up(service, "carol")
        login = service.ok(
            "POST",
            "/api/v1/credentials/",
            {"username": machine.username, "private_key": machine.private_key},
            token,
            201,
        )
        for ip, port in (("127.0.0.1", machine.port), ("127.0.0.2", closed_port)):
            service.ok(
                "POST",
                "/api/v1/work_loads/",
                {
                    "ip": ip,
                    "port": port,
                    "credentials": login["id"],
                    "storage": [],
                    "root": str(machine.root),
                },
                token,
                201,
            )
    finally:
        service.stop()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "entrypoints", *args, "--user", "carol", "--storage", database]
        environment = {"MIGRATION_SECRET_KEY": service.secret_key or "", "PATH": "/usr/bin:/bin"}
        return subprocess.run(command, capture_output=True, text=True, timeout=60, env=environment)

    checked = cli("check", "127.0.0.1")
    dry = cli("discover", "--dry-run", "127.0.0.1")
    refused = cli("check", "127.0.0.2")
    outside = cli("check", "127.0.0.1", "--allowed-networks", "10.0.0.0/8")

    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["host_key"] == machine.host_key_fingerprint
    assert dry.returncode == 0 and [v["name"] for v in json.loads(dry.stdout)["added"]] == ["/"]
    assert refused.returncode == 1 and "Connection refused at 127.0.0.2" in refused.stderr
    assert json.loads(refused.stdout)["ok"] is False
    assert outside.returncode == 2 and "MIGRATION_ALLOWED_NETWORKS" in outside.stderr
