"""Readiness over HTTP and on the command line (SPEC 2.11, 3.2): a
migration's and a wave's pre-flight, the discovery of many workloads, and
what the lists keep of them, against the real sshd of tests/sshd_server.py."""

from __future__ import annotations

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

API = "/api/v1"
COLD_CHECKS = [
    "source_login", "source_os", "source_tools", "host_tools", "volumes", "host_login", "host_root",
    "host_space", "system_volume", "target_free",
]


async def _user(aiohttp_client: Any, **settings: Any) -> User:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(make_services(**settings)))
    return await User(client, "alice").sign_up()


async def _real_plan(alice: User, source: Machine, host_ip: str, host_port: int, **migration: Any) -> dict[str, int]:
    """A source machine with `/` and `/var` selected, a host at `host_ip`
    with its root not there yet, and a migration between them."""
    (source.root / "var").mkdir()
    (source.root / "etc").mkdir()
    (source.root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    login = await alice.call(
        "POST", f"{API}/credentials/", 201, json={"username": source.username, "private_key": source.private_key}
    )
    volumes = [(await alice.mount_point(name, 1))["id"] for name in ("/", "/var")]
    workload = await alice.call("POST", f"{API}/work_loads/", 201, json={
        "ip": source.ip, "port": source.port, "credentials": login["id"], "storage": volumes,
        "root": str(source.root), "os": "linux",
    })
    host = await alice.call("POST", f"{API}/work_loads/", 201, json={
        "ip": host_ip, "port": host_port, "credentials": login["id"], "storage": [],
    })
    target = await alice.call("POST", f"{API}/migration_targets/", 201, json={
        "cloud_type": "aws", "cloud_credentials": login["id"], "host": host["id"],
        "root": str(source.root.parent / "landing" / "vm"),
    })
    made = await alice.call("POST", f"{API}/migrations/", 201, json={
        "source": workload["id"], "migration_target": target["id"], "selected_mount_points": volumes, **migration,
    })
    return {"source": workload["id"], "host": host["id"], "target": target["id"], "migration": made["id"]}


async def test_a_ready_migration_answers_each_check_and_the_lists_keep_what_was_found(
    aiohttp_client: Any, make_machine: Callable[[str], Machine]
) -> None:
    alice = await _user(aiohttp_client)
    source = make_machine("127.0.0.1")
    plan = await _real_plan(alice, source, "127.0.0.2", source.port)
    migration = plan["migration"]

    answer = await alice.call("POST", f"{API}/migrations/{migration}/preflight", 200)

    assert set(answer) == {"ready", "checks"}
    assert answer["ready"] is True, answer
    assert [c["check"] for c in answer["checks"]] == COLD_CHECKS
    assert all(set(c) == {"check", "ok", "message"} and c["ok"] and c["message"] for c in answer["checks"])
    assert not (source.root.parent / "landing").exists()  # nothing written, not even the root
    stored = await alice.call("GET", f"{API}/migrations/{migration}/", 200)
    assert stored["readiness"]["ready"] is True and stored["readiness"]["failed"] == []
    listed = await alice.call("GET", f"{API}/work_loads/", 200)
    checks = {w["id"]: w["last_check"] for w in listed["results"]}
    assert checks[plan["source"]]["ok"] and checks[plan["host"]]["ok"]
    assert "readiness check" in checks[plan["source"]]["message"]
    events = await alice.call("GET", f"{API}/migrations/{migration}/events/?kind=preflight", 200)
    assert [e["detail"] for e in events["results"]] == [{"ready": True, "failed": []}]


async def test_a_wave_counts_the_ready_and_lists_each_migration_s_checks(
    aiohttp_client: Any, make_machine: Callable[[str], Machine]
) -> None:
    alice = await _user(aiohttp_client)
    source = make_machine("127.0.0.1")
    plan = await _real_plan(alice, source, "127.0.0.2", source.port)
    # A simulated migration of the same source, without `/`: not ready, and it reaches no machine.
    volumes = (await alice.call("GET", f"{API}/work_loads/{plan['source']}/", 200))["storage"]
    login = (await alice.call("GET", f"{API}/credentials/", 200))["results"][0]["id"]
    simulated_target = await alice.call(
        "POST", f"{API}/migration_targets/", 201, json={"cloud_type": "azure", "cloud_credentials": login}
    )
    lacking = await alice.call("POST", f"{API}/migrations/", 201, json={
        "source": plan["source"], "migration_target": simulated_target["id"], "selected_mount_points": volumes[1:],
    })
    wave = await alice.call(
        "POST", f"{API}/waves/", 201, json={"name": "first", "migrations": [plan["migration"], lacking["id"]]}
    )

    answer = await alice.call("POST", f"{API}/waves/{wave['id']}/preflight/", 200)

    assert (answer["ready"], answer["not_ready"]) == (1, 1)
    by_id = {m["migration"]: m for m in answer["migrations"]}
    assert by_id[plan["migration"]]["ready"] is True
    assert [c["check"] for c in by_id[plan["migration"]]["checks"]] == COLD_CHECKS
    simulated = by_id[lacking["id"]]
    assert simulated["ready"] is False
    assert [(c["check"], c["ok"]) for c in simulated["checks"]] == [("system_volume", False), ("target_free", True)]
    assert "/ is not selected" in simulated["checks"][0]["message"]
    listed = await alice.call("GET", f"{API}/migrations/?wave={wave['id']}", 200)
    assert {m["id"]: m["readiness"]["failed"] for m in listed["results"]} == {
        plan["migration"]: [], lacking["id"]: ["system_volume"],
    }


async def test_an_address_outside_the_allowed_networks_is_409_alone_and_a_failed_login_in_a_wave(
    aiohttp_client: Any, make_machine: Callable[[str], Machine], witness_listener: Callable[[str], Witness]
) -> None:
    witness = witness_listener("127.0.0.9")
    networks = Settings.parse({"allowed_networks": "127.0.0.1/32", "secret_key": TEST_KEY}).allowed_networks
    alice = await _user(aiohttp_client, allowed_networks=networks)
    source = make_machine("127.0.0.1")
    plan = await _real_plan(alice, source, "127.0.0.9", witness.port)

    refused = await alice.call("POST", f"{API}/migrations/{plan['migration']}/preflight/", 409)
    wave = await alice.call("POST", f"{API}/waves/", 201, json={"name": "w", "migrations": [plan["migration"]]})
    answer = await alice.call("POST", f"{API}/waves/{wave['id']}/preflight/", 200)

    assert "MIGRATION_ALLOWED_NETWORKS" in refused["detail"]
    checks = {c["check"]: c for c in answer["migrations"][0]["checks"]}
    assert checks["source_login"]["ok"] is True
    assert checks["host_login"]["ok"] is False and "MIGRATION_ALLOWED_NETWORKS" in checks["host_login"]["message"]
    assert checks["host_root"]["message"].startswith("Not checked")
    assert witness.attempts() == []


async def test_many_workloads_are_discovered_at_once_by_id_or_by_wave(
    aiohttp_client: Any, make_machine: Callable[[str], Machine], closed_port: int
) -> None:
    alice = await _user(aiohttp_client)
    source = make_machine("127.0.0.1")
    plan = await _real_plan(alice, source, "127.0.0.2", source.port)
    login = (await alice.call("GET", f"{API}/credentials/", 200))["results"][0]["id"]
    gone = await alice.call(
        "POST", f"{API}/work_loads/", 201,
        json={"ip": "127.0.0.3", "port": closed_port, "credentials": login, "storage": []},
    )
    before = await alice.call("GET", f"{API}/work_loads/{plan['source']}/", 200)

    dry = await alice.call(
        "POST", f"{API}/inventory/discover/?dry_run=true", 200, json={"workloads": [gone["id"], plan["source"]]}
    )
    unchanged = await alice.call("GET", f"{API}/work_loads/{plan['source']}/", 200)
    wave = await alice.call("POST", f"{API}/waves/", 201, json={"name": "w", "migrations": [plan["migration"]]})
    by_wave = await alice.call("POST", f"{API}/inventory/discover/", 200, json={"wave": wave["id"]})
    after = await alice.call("GET", f"{API}/work_loads/{plan['source']}/", 200)

    assert [r["workload"] for r in dry["results"]] == [gone["id"], plan["source"]]
    refused, found = dry["results"]
    assert refused["ok"] is False and "Connection refused" in refused["message"]
    assert found["ok"] is True and set(found) == {"workload", "ok", "message", "added", "updated", "unchanged"}
    assert unchanged == before
    assert [r["workload"] for r in by_wave["results"]] == [plan["source"]] and by_wave["results"][0]["ok"]
    assert after["last_check"]["ok"] is True and "discovery" in after["last_check"]["message"]
    for body, field in (
        ({}, "_schema"), ({"workloads": [plan["source"]], "wave": wave["id"]}, "_schema"),
        ({"workloads": [999999]}, "workloads"), ({"wave": 999999}, "wave"), ({"workloads": []}, "workloads"),
    ):
        bad = await alice.call("POST", f"{API}/inventory/discover/", 400, json=body)
        assert field in bad["errors"], (body, bad)


def test_the_command_line_prints_a_table_and_exits_0_only_when_all_are_ready(
    tmp_path: Path, make_machine: Callable[[str], Machine]
) -> None:
    source = make_machine("127.0.0.1")
    (source.root / "var").mkdir()
    database = f"sqlite:///{tmp_path / 'cli.db'}"
    service = ServiceProcess(database, tmp_path, "cli").start()
    try:
        token = sign_up(service, "carol")
        login = service.ok(
            "POST", f"{API}/credentials/", {"username": source.username, "private_key": source.private_key}, token, 201
        )
        volumes = [service.ok("POST", f"{API}/mount_points/", {"name": n, "size": 1}, token, 201)["id"]
                   for n in ("/", "/var")]
        workload = service.ok("POST", f"{API}/work_loads/", {
            "ip": source.ip, "port": source.port, "credentials": login["id"], "storage": volumes,
            "root": str(source.root), "os": "linux",
        }, token, 201)
        host = service.ok("POST", f"{API}/work_loads/", {
            "ip": "127.0.0.2", "port": source.port, "credentials": login["id"], "storage": [],
        }, token, 201)
        target = service.ok("POST", f"{API}/migration_targets/", {
            "cloud_type": "aws", "cloud_credentials": login["id"], "host": host["id"], "root": str(tmp_path / "vm"),
        }, token, 201)
        ready = service.ok("POST", f"{API}/migrations/", {
            "source": workload["id"], "migration_target": target["id"], "selected_mount_points": volumes,
        }, token, 201)
        lacking = service.ok("POST", f"{API}/migrations/", {
            "source": workload["id"], "migration_target": target["id"], "selected_mount_points": volumes[1:],
        }, token, 201)
        service.ok("POST", f"{API}/waves/", {"name": "wave one", "migrations": [ready["id"], lacking["id"]]},
                   token, 201)
    finally:
        service.stop()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "entrypoints", "preflight", *args, "--user", "carol", "--storage", database]
        environment = {"MIGRATION_SECRET_KEY": service.secret_key or "", "PATH": "/usr/bin:/bin"}
        return subprocess.run(command, capture_output=True, text=True, timeout=60, env=environment)

    wave = cli("--wave", "wave one")
    one = cli("--migration", str(ready["id"]))
    missing = cli("--wave", "no such wave")

    assert wave.returncode == 1, wave.stderr
    lines = wave.stdout.splitlines()
    assert lines[0].split()[:4] == ["MIGRATION", "CHECK", "RESULT", "MESSAGE"]
    failed = [line.split()[:3] for line in lines[1:-1] if "FAILED" in line.split()[:3]]
    assert failed == [[str(lacking["id"]), "system_volume", "FAILED"]]
    assert lines[-1] == "1 of 2 ready" and "1 of 2 migration(s) not ready" in wave.stderr
    assert one.returncode == 0 and one.stdout.splitlines()[-1] == "1 of 1 ready", one.stdout + one.stderr
    assert missing.returncode == 2 and "no wave 'no such wave'" in missing.stderr
