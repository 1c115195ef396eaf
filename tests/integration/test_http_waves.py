"""Waves through HTTP (SPEC 2.6, 3.2): the resource and its membership rules,
a wave of 300 with every refusal reason, cancel, state, and wave runs racing
single runs (each migration starts once)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

import migration_core as core
from adapters.clock import SystemClock
from entrypoints.http import create_app
from migration_core.runs import RunRef, complete_run, start_run

from .http_client import PASSWORD, User
from .storages import ALL_STORAGES, storage_url
from .test_http_runs import SLOW, make_services

API = "/api/v1"
# The runs the fleets below start through the core carry no instance, and a
# runner marks such runs interrupted once a lease period: longer than a test.
LEASE = 3600.0


@pytest.fixture
def make_client(aiohttp_client: Any) -> Callable[..., Awaitable[tuple[TestClient[Any, Any], Any]]]:
    async def make(run_seconds: float, storage: str = "memory://") -> tuple[TestClient[Any, Any], Any]:
        services = make_services(run_seconds, storage, lease_seconds=LEASE)
        return await aiohttp_client(create_app(services)), services

    return make


async def signed_up(client: TestClient[Any, Any], username: str) -> tuple[User, int]:
    answer = await client.post(f"{API}/auth/", json={"username": username, "password": PASSWORD})
    assert answer.status == 201, await answer.text()
    user = User(client, username)
    tokens = await client.post(f"{API}/token/", json={"username": username, "password": PASSWORD})
    user.access = (await tokens.json())["access"]
    return user, (await answer.json())["id"]


# --- the resource --------------------------------------------------------------------


async def test_a_wave_is_replaced_whole_and_a_replacement_taking_a_name_or_a_member_is_refused(
    make_client: Any,
) -> None:
    client, _ = await make_client(SLOW)
    user, _ = await signed_up(client, "replacer")
    first, second = await user.plan("10.0.0.1"), await user.plan("10.0.0.2")
    one = await user.call("POST", f"{API}/waves/", 201, json={"name": "one", "migrations": [first["migration"]]})
    other = await user.call("POST", f"{API}/waves/", 201, json={"name": "other", "migrations": []})

    replaced = await user.call(
        "PUT", f"{API}/waves/{one['id']}/", 200, json={"name": "renamed", "migrations": [second["migration"]]}
    )
    assert replaced == {"id": one["id"], "name": "renamed", "migrations": [second["migration"]]}
    taken = await user.call("PUT", f"{API}/waves/{other['id']}/", 409, json={"name": "renamed", "migrations": []})
    assert taken["detail"] == f"Wave {one['id']} is already named 'renamed'."
    held = await user.call(
        "PUT", f"{API}/waves/{other['id']}/", 409, json={"name": "other", "migrations": [second["migration"]]}
    )
    assert held["detail"] == f"Migration {second['migration']} is already in wave {one['id']} ('renamed')."
    assert (await user.call("GET", f"{API}/waves/{other['id']}/", 200))["migrations"] == []



async def test_a_wave_holds_migrations_which_show_it_and_filter_by_it(make_client: Any) -> None:
    client, _ = await make_client(SLOW)
    user, _ = await signed_up(client, "planner")
    first = await user.plan("10.0.0.1")
    second = await user.plan("10.0.0.2")
    third = await user.plan("10.0.0.3")

    wave = await user.call(
        "POST", f"{API}/waves/", 201, json={"name": "wave 1", "migrations": [second["migration"], first["migration"]]}
    )
    assert wave == {"id": wave["id"], "name": "wave 1", "migrations": [second["migration"], first["migration"]]}
    member = await user.call("GET", f"{API}/migrations/{first['migration']}/", 200)
    assert member["wave"] == wave["id"]
    outside = await user.call("GET", f"{API}/migrations/{third['migration']}/", 200)
    assert outside["wave"] is None
    listed = await user.call("GET", f"{API}/migrations/?wave={wave['id']}", 200)
    assert [m["id"] for m in listed["results"]] == sorted([first["migration"], second["migration"]])
    assert (await user.call("GET", f"{API}/waves/?name=wave%201", 200))["count"] == 1
    assert (await user.call("GET", f"{API}/waves/?name=nope", 200))["count"] == 0
    # A wave is set through the wave: `wave` in a migration's body is read-only.
    body = {
        "source": third["workload"],
        "migration_target": third["target"],
        "selected_mount_points": third["mount_points"],
        "wave": wave["id"],
    }
    assert (await user.call("PUT", f"{API}/migrations/{third['migration']}/", 200, json=body))["wave"] is None

    # Setting the list moves the listed in and takes the others out.
    moved = await user.call(
        "PATCH", f"{API}/waves/{wave['id']}/", 200, json={"migrations": [third["migration"], first["migration"]]}
    )
    assert moved["migrations"] == [third["migration"], first["migration"]]
    assert (await user.call("GET", f"{API}/migrations/{second['migration']}/", 200))["wave"] is None


async def test_membership_and_delete_refusals_name_the_wave(make_client: Any) -> None:
    client, _ = await make_client(SLOW)
    user, _ = await signed_up(client, "planner")
    plan = await user.plan()
    wave = await user.call("POST", f"{API}/waves/", 201, json={"name": "A", "migrations": [plan["migration"]]})

    taken = await user.call("POST", f"{API}/waves/", 409, json={"name": "B", "migrations": [plan["migration"]]})
    assert taken["detail"] == f"Migration {plan['migration']} is already in wave {wave['id']} ('A')."
    named = await user.call("POST", f"{API}/waves/", 409, json={"name": "A"})
    assert named["detail"] == f"Wave {wave['id']} is already named 'A'."
    missing = await user.call("POST", f"{API}/waves/", 400, json={"name": "C", "migrations": [999]})
    assert missing["errors"] == {"migrations": ["Migration 999 does not exist."]}
    assert "name" in (await user.call("POST", f"{API}/waves/", 400, json={"name": ""}))["errors"]

    refused = await user.call("DELETE", f"{API}/migrations/{plan['migration']}/", 409)
    assert refused["detail"] == (
        f"Migration {plan['migration']} is in wave {wave['id']} ('A'); take it out of the wave to delete it."
    )
    # Deleting the wave releases its migrations; then the migration may go.
    await user.call("DELETE", f"{API}/waves/{wave['id']}/", 204)
    assert (await user.call("GET", f"{API}/migrations/{plan['migration']}/", 200))["wave"] is None
    await user.call("DELETE", f"{API}/migrations/{plan['migration']}/", 204)

    other, _ = await signed_up(client, "stranger")
    mine = await user.call("POST", f"{API}/waves/", 201, json={"name": "mine"})
    for path in (f"{API}/waves/{mine['id']}/", f"{API}/waves/{mine['id']}/state/"):
        await other.call("GET", path, 404)
    await other.call("POST", f"{API}/waves/{mine['id']}/run/", 404)


# --- a wave of 300 -------------------------------------------------------------------


def _fleet(storage: core.Storage, owner: int) -> dict[str, list[int]]:
    """300 migrations, each with its own workload and target, by what their run
    would meet: 200 startable, 20 of each refusal reason."""
    login = core.create_credentials(storage, owner, username="admin", password="x")
    groups: dict[str, list[int]] = {kind: [] for kind in ("startable", "running", "succeeded", "no_c", "gone", "busy")}
    sizes = iter(range(1, 10**6))

    def migration(ip: str, *, select_c: bool = True, target: int | None = None) -> tuple[int, int, list[int]]:
        c = core.create_mount_point(storage, owner, name="C:\\", size=1000 + next(sizes))
        d = core.create_mount_point(storage, owner, name="D:\\", size=5000)
        source = core.create_workload(storage, owner, ip=ip, credentials_id=login.id, mount_point_ids=[c.id, d.id])
        if target is None:
            target = core.create_migration_target(
                storage, owner, cloud_type="vsphere", cloud_credentials_id=login.id
            ).id
        made = core.create_migration(
            storage,
            owner,
            clock=SystemClock(),
            source_id=source.id,
            migration_target_id=target,
            selected_mount_point_ids=[c.id, d.id] if select_c else [d.id],
        )
        return made.id, source.id, [c.id, d.id]

    clock = SystemClock()
    for i in range(300):
        kind = "startable" if i < 200 else list(groups)[1 + (i - 200) // 20]
        ip = f"10.20.{i // 256}.{i % 256}"
        if kind == "busy":
            blocker, _, _ = migration(f"10.21.{i // 256}.{i % 256}")
            start_run(storage, clock, owner, blocker)
            target = core.get_migration(storage, owner, blocker).migration_target_id
            made, _, _ = migration(ip, target=target)
        else:
            made, source, volumes = migration(ip, select_c=kind != "no_c")
            if kind == "running":
                start_run(storage, clock, owner, made)
            elif kind == "succeeded":
                start_run(storage, clock, owner, made)
                complete_run(storage, clock, RunRef(owner, made))
            elif kind == "gone":
                core.update_workload(storage, owner, source, mount_point_ids=volumes[:1])
        groups[kind].append(made)
    return groups


@pytest.mark.parametrize("storage", ALL_STORAGES)
async def test_a_wave_of_300_starts_the_startable_and_gives_each_refusal_its_own_reason(
    make_client: Any, tmp_path: Path, storage: str, request: pytest.FixtureRequest
) -> None:
    url = storage_url(storage, request, tmp_path, schema=True)
    client, services = await make_client(SLOW, url)
    user, owner = await signed_up(client, "fleet")
    groups = await asyncio.to_thread(_fleet, services.storage, owner)
    members = [i for ids in groups.values() for i in ids]
    wave = await user.call("POST", f"{API}/waves/", 201, json={"name": "big", "migrations": members})

    outcome = await user.call("POST", f"{API}/waves/{wave['id']}/run/", 202)

    assert outcome["started"] == groups["startable"]
    reasons: dict[int, str] = {r["migration"]: r["detail"] for r in outcome["refused"]}
    assert sorted(reasons) == sorted(i for kind, ids in groups.items() if kind != "startable" for i in ids)
    for migration_id in groups["running"]:
        assert reasons[migration_id] == f"Migration {migration_id} is already running."
    for migration_id in groups["succeeded"]:
        assert reasons[migration_id] == f"Migration {migration_id} has already succeeded."
    for migration_id in groups["no_c"]:
        assert reasons[migration_id] == "A migration may not run unless volume C:\\ is selected."
    for migration_id in groups["gone"]:
        assert reasons[migration_id].startswith("Selected mount point ")
        assert reasons[migration_id].endswith(
            "is no longer in the storage of workload "
            f"{(await user.call('GET', f'{API}/migrations/{migration_id}/', 200))['source']}."
        )
    for migration_id in groups["busy"]:
        assert "is busy with migration" in reasons[migration_id]
    # Each refusal is what the migration's own run answers.
    for migration_id in (groups["running"][0], groups["no_c"][0], groups["busy"][0], groups["gone"][0]):
        own = await user.call("POST", f"{API}/migrations/{migration_id}/run/", 409)
        assert own["detail"] == reasons[migration_id]

    state = await user.call("GET", f"{API}/waves/{wave['id']}/state/", 200)
    assert state["counts"] == {"not_started": 60, "running": 220, "error": 0, "success": 20}
    assert state["finished"] is False
    by_id = {
        m["id"]: m for m in (await user.call("GET", f"{API}/migrations/?wave={wave['id']}&limit=1000", 200))["results"]
    }
    assert len(by_id) == 300
    assert state["bytes_copied"] <= state["bytes_total"]
    assert state["progress"] == 100 * state["bytes_copied"] // state["bytes_total"]
    succeeded_bytes = 0
    for migration_id in groups["succeeded"]:
        target = await user.call("GET", f"{API}/migration_targets/{by_id[migration_id]['migration_target']}/", 200)
        succeeded_bytes += sum(volume["size"] for volume in target["target_vm"]["storage"])
    assert state["bytes_copied"] >= succeeded_bytes

    cancelled = await user.call("POST", f"{API}/waves/{wave['id']}/cancel/", 200)
    assert cancelled == {"cancelled": sorted(groups["startable"] + groups["running"])}
    state = await user.call("GET", f"{API}/waves/{wave['id']}/state/", 200)
    assert state["counts"] == {"not_started": 60, "running": 0, "error": 220, "success": 20}
    assert (await user.call("POST", f"{API}/waves/{wave['id']}/cancel/", 200)) == {"cancelled": []}
    # The busy targets' blockers are not members: they still run.
    assert (await user.call("GET", f"{API}/migrations/?state=running", 200))["count"] == 20


# On PostgreSQL the transactions really interleave (memory and SQLite take them in turn).
@pytest.mark.parametrize("storage", ALL_STORAGES)
async def test_wave_runs_racing_single_runs_start_each_migration_once(
    make_client: Any, tmp_path: Path, storage: str, request: pytest.FixtureRequest
) -> None:
    url = storage_url(storage, request, tmp_path, schema=True)
    client, services = await make_client(SLOW, url)
    user, owner = await signed_up(client, "racer")
    groups = (await asyncio.to_thread(_fleet, services.storage, owner))["startable"][:60]
    wave = await user.call("POST", f"{API}/waves/", 201, json={"name": "race", "migrations": groups})

    wave_runs = [user.request("POST", f"{API}/waves/{wave['id']}/run/") for _ in range(3)]
    single_runs = [user.request("POST", f"{API}/migrations/{i}/run/") for i in groups for _ in range(2)]
    answers = await asyncio.gather(*wave_runs, *single_runs)

    starts: list[int] = []
    for answer in answers[:3]:
        assert answer.status == 202
        body = await answer.json()
        starts += body["started"]
        assert all("running" in r["detail"] for r in body["refused"])
    for answer in answers[3:]:
        assert answer.status in (202, 409)
        if answer.status == 202:
            starts.append((await answer.json())["id"])
    assert sorted(starts) == sorted(groups)  # every one started, none twice
    state = await user.call("GET", f"{API}/waves/{wave['id']}/state/", 200)
    assert state["counts"]["running"] == 60
