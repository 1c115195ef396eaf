"""Running a migration (README, "Running a migration"), through HTTP with the real asyncio
runner: a run reaches success with the exact target VM, every refusal is a 409
naming its reason, cancel and retry work, progress only grows and reaches 100
exactly at success, concurrent starts start a migration once, and a thousand
runs started at once all finish exactly once.

Copies last about a second (or a minute, when a test needs a run that stays
running); every wait is bounded by PATIENCE, never an expectation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

import migration_core as core
from adapters.async_runner import AsyncRunner
from adapters.instances import Instance, InstanceRegistry
from adapters.passwords import ScryptHasher
from entrypoints.bootstrap import ServiceRunner, Services, Settings, bootstrap
from entrypoints.http import create_app
from migration_core import Clock, Copier, Storage

from .http_client import PASSWORD, TEST_KEY, User

API = "/api/v1"
QUICK = 1.0  # seconds of a copy meant to finish
# Seconds of a copy meant to finish, but only after twenty requests racing to
# start it have all been answered, however loaded the machine.
RACE = 5.0
SLOW = 60.0  # seconds of a copy meant to be still running when the test ends
TICK = 0.05
PATIENCE = 20.0

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


def _quick_runner(
    storage: Storage, clock: Clock, copier: Copier, registry: InstanceRegistry, instance: Instance
) -> ServiceRunner:
    return AsyncRunner(storage, clock, copier, tick=TICK, registry=registry, instance=instance)


def make_services(run_seconds: float, storage: str = "memory://", **settings: Any) -> Services:
    return bootstrap(
        Settings(storage=storage, run_seconds=run_seconds, secret_key=TEST_KEY, **settings),
        hasher=ScryptHasher(n=2**4),
        make_runner=_quick_runner,
    )


@pytest.fixture
def make_client(aiohttp_client: Any) -> MakeClient:
    """A test client of the app whose copies take `run_seconds`."""

    async def make(run_seconds: float, storage: str = "memory://") -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = await aiohttp_client(create_app(make_services(run_seconds, storage)))
        return client

    return make


@pytest.fixture
async def quick(make_client: MakeClient) -> User:
    """A user of an app whose copies take QUICK seconds."""
    return await User(await make_client(QUICK), "quick").sign_up()


@pytest.fixture
async def slow(make_client: MakeClient) -> User:
    """A user of an app whose copies outlast the test."""
    return await User(await make_client(SLOW), "slow").sign_up()


def migration_path(migration_id: int, action: str = "") -> str:
    return f"{API}/migrations/{migration_id}/" + (f"{action}/" if action else "")


async def state_of(user: User, migration_id: int) -> dict[str, Any]:
    """The state answer without its bytes and volumes (test_http_events.py checks those)."""
    answer = await user.call("GET", migration_path(migration_id, "state"), 200)
    assert set(answer) == STATE_FIELDS | {"bytes_total", "bytes_copied", "eta", "volumes", "phase", "queue_position"}
    return {field: answer[field] for field in STATE_FIELDS}


STATE_FIELDS = {"state", "progress", "error", "finished"}


async def refused(user: User, method: str, path: str, **kwargs: Any) -> str:
    """The detail of a 409 answer."""
    body = await user.call(method, path, 409, **kwargs)
    assert set(body) == {"detail"} and body["detail"], body
    return body["detail"]  # type: ignore[no-any-return]


async def finished(user: User, migration_id: int) -> dict[str, Any]:
    """The migration once its run is over (bounded wait)."""
    async with asyncio.timeout(PATIENCE):
        while not (await state_of(user, migration_id))["finished"]:
            await asyncio.sleep(TICK)
    return await user.call("GET", migration_path(migration_id), 200)  # type: ignore[no-any-return]


async def inventory(user: User, ip: str, volumes: list[tuple[str, int]]) -> dict[str, Any]:
    """Credentials, mount points (by name) and a workload holding them, in order."""
    credentials = await user.credentials(f"admin-{ip}", domain="CORP")
    mount_points = {name: (await user.mount_point(name, size))["id"] for name, size in volumes}
    workload = await user.workload(ip, credentials["id"], list(mount_points.values()))
    return {"credentials": credentials, "mount_points": mount_points, "workload": workload["id"]}


# --- success and the target VM -------------------------------------------------


async def test_run_answers_202_at_once_then_success_leaves_only_the_selected_volumes_in_source_order(
    quick: User,
) -> None:
    source = await inventory(quick, "10.1.0.1", [("D:\\", 2000), ("C:\\", 1000), ("E:\\", 500), ("/var", 7)])
    volumes = source["mount_points"]
    target = await quick.target(source["credentials"]["id"])
    # Selected in another order than the source's: the target keeps the source's.
    migration = await quick.migration(source["workload"], target["id"], [volumes["E:\\"], volumes["C:\\"]])

    running = await quick.call("POST", migration_path(migration["id"], "run"), 202)
    assert running["state"] == "running" and running["progress"] == 0
    assert running["error"] is None and running["finished_at"] is None
    assert (await quick.call("GET", f"{API}/migration_targets/{target['id']}/", 200))["target_vm"] is None

    done = await finished(quick, migration["id"])
    assert (done["state"], done["progress"], done["error"]) == ("success", 100, None)
    assert done["started_at"] == running["started_at"]
    assert datetime.fromisoformat(done["finished_at"]) >= datetime.fromisoformat(done["started_at"])
    target_vm = (await quick.call("GET", f"{API}/migration_targets/{target['id']}/", 200))["target_vm"]
    assert target_vm == {
        "ip": "10.1.0.1",
        "credentials": {"username": "admin-10.1.0.1", "domain": "CORP"},
        "storage": [{"name": "C:\\", "size": 1000}, {"name": "E:\\", "size": 500}],
    }


async def test_with_a_copy_of_zero_seconds_run_still_answers_the_migration_as_started(
    make_client: MakeClient,
) -> None:
    """The copy may be over before the answer is written; the 202 still shows
    the migration as it started, never a later state."""
    user = await User(await make_client(0), "instant").sign_up()
    for host in range(1, 21):
        plan = await user.plan(ip=f"10.0.1.{host}")
        running = await user.call("POST", migration_path(plan["migration"], "run"), 202)
        assert (running["state"], running["progress"], running["finished_at"]) == ("running", 0, None)
        assert (await finished(user, plan["migration"]))["state"] == "success"


async def test_a_later_success_replaces_the_target_vm_and_a_run_in_progress_leaves_it_untouched(
    quick: User,
) -> None:
    first = await inventory(quick, "10.1.0.1", [("C:\\", 100), ("D:\\", 200)])
    second = await inventory(quick, "10.1.0.2", [("/boot", 5), ("c:", 300)])
    target = await quick.target(first["credentials"]["id"], "azure")
    target_path = f"{API}/migration_targets/{target['id']}/"
    earlier = await quick.migration(first["workload"], target["id"], list(first["mount_points"].values()))
    await quick.call("POST", migration_path(earlier["id"], "run"), 202)
    assert (await finished(quick, earlier["id"]))["state"] == "success"
    earlier_vm = (await quick.call("GET", target_path, 200))["target_vm"]
    assert [volume["name"] for volume in earlier_vm["storage"]] == ["C:\\", "D:\\"]

    later = await quick.migration(second["workload"], target["id"], [second["mount_points"]["c:"]])
    await quick.call("POST", migration_path(later["id"], "run"), 202)
    assert (await quick.call("GET", target_path, 200))["target_vm"] == earlier_vm
    assert (await finished(quick, later["id"]))["state"] == "success"
    assert (await quick.call("GET", target_path, 200))["target_vm"] == {
        "ip": "10.1.0.2",
        "credentials": {"username": "admin-10.1.0.2", "domain": "CORP"},
        "storage": [{"name": "c:", "size": 300}],
    }


async def test_progress_only_grows_stays_below_100_while_running_and_is_100_exactly_at_success(
    make_client: MakeClient,
) -> None:
    user = await User(await make_client(1.5), "poller").sign_up()
    source = await inventory(user, "10.2.0.1", [("C:\\", 3000), ("D:\\", 1000)])
    target = await user.target(source["credentials"]["id"])
    migration = await user.migration(source["workload"], target["id"], list(source["mount_points"].values()))
    await user.call("POST", migration_path(migration["id"], "run"), 202)

    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(PATIENCE):
        while not seen or not seen[-1]["finished"]:
            seen.append(await state_of(user, migration["id"]))
            await asyncio.sleep(0.02)

    assert all(set(state) == STATE_FIELDS for state in seen)
    progress = [state["progress"] for state in seen]
    assert progress == sorted(progress), f"progress went down: {progress}"
    *during, last = seen
    assert last == {"state": "success", "progress": 100, "error": None, "finished": True}
    assert all(s["state"] == "running" and not s["finished"] and s["error"] is None for s in during)
    assert all(0 <= s["progress"] < 100 for s in during)
    # Persisted while running, not only at the end.
    assert any(0 < s["progress"] < 100 for s in during), progress


# --- refusals ------------------------------------------------------------------


async def test_run_of_a_running_migration_is_refused_as_already_running(slow: User) -> None:
    plan = await slow.plan()
    running = await slow.call("POST", migration_path(plan["migration"], "run"), 202)
    assert "already running" in await refused(slow, "POST", migration_path(plan["migration"], "run"))
    after = await slow.call("GET", migration_path(plan["migration"]), 200)
    assert after["state"] == "running" and after["started_at"] == running["started_at"]


async def test_run_of_a_succeeded_migration_is_refused_as_already_succeeded(quick: User) -> None:
    plan = await quick.plan()
    await quick.call("POST", migration_path(plan["migration"], "run"), 202)
    done = await finished(quick, plan["migration"])
    assert done["state"] == "success"
    assert "already succeeded" in await refused(quick, "POST", migration_path(plan["migration"], "run"))
    assert await quick.call("GET", migration_path(plan["migration"]), 200) == done


async def test_run_without_volume_c_is_refused_and_leaves_the_state_unchanged(slow: User) -> None:
    source = await inventory(slow, "10.3.0.1", [("C:\\", 10), ("D:\\", 10), ("C:\\data", 10)])
    volumes = source["mount_points"]
    target = await slow.target(source["credentials"]["id"])
    migration = await slow.migration(source["workload"], target["id"], [volumes["D:\\"], volumes["C:\\data"]])
    detail = await refused(slow, "POST", migration_path(migration["id"], "run"))
    assert "C:\\" in detail and "selected" in detail
    assert await state_of(slow, migration["id"]) == {
        "state": "not_started", "progress": 0, "error": None, "finished": False,
    }


@pytest.mark.parametrize("spelling", ["C:\\", "c:", "c:/", "C:/", "c:\\"])
async def test_every_spelling_of_volume_c_may_run(slow: User, spelling: str) -> None:
    source = await inventory(slow, "10.3.0.2", [(spelling, 10), ("D:\\", 10)])
    target = await slow.target(source["credentials"]["id"])
    migration = await slow.migration(source["workload"], target["id"], [source["mount_points"][spelling]])
    assert (await slow.call("POST", migration_path(migration["id"], "run"), 202))["state"] == "running"


async def test_run_is_refused_when_the_selection_left_the_source_since_the_migration_was_made(
    slow: User,
) -> None:
    source = await inventory(slow, "10.3.0.3", [("C:\\", 10), ("D:\\", 10)])
    volumes = source["mount_points"]
    target = await slow.target(source["credentials"]["id"])
    migration = await slow.migration(source["workload"], target["id"], [volumes["C:\\"], volumes["D:\\"]])
    await slow.call("PATCH", f"{API}/work_loads/{source['workload']}/", 200, json={"storage": [volumes["C:\\"]]})

    detail = await refused(slow, "POST", migration_path(migration["id"], "run"))
    gone, workload = volumes["D:\\"], source["workload"]
    assert detail == f"Selected mount point {gone} is no longer in the storage of workload {workload}."
    assert (await state_of(slow, migration["id"]))["state"] == "not_started"

    # Once the volume is back in the source, the same migration runs.
    await slow.call(
        "PUT", f"{API}/work_loads/{source['workload']}/", 200,
        json={"credentials": source["credentials"]["id"], "storage": [volumes["D:\\"], volumes["C:\\"]]},
    )
    await slow.call("POST", migration_path(migration["id"], "run"), 202)


async def test_run_is_refused_while_another_migration_runs_into_the_same_target(slow: User) -> None:
    first = await inventory(slow, "10.3.0.4", [("C:\\", 10)])
    second = await inventory(slow, "10.3.0.5", [("C:\\", 10)])
    target = await slow.target(first["credentials"]["id"])
    other_target = await slow.target(first["credentials"]["id"], "vsphere")
    running = await slow.migration(first["workload"], target["id"], list(first["mount_points"].values()))
    waiting = await slow.migration(second["workload"], target["id"], list(second["mount_points"].values()))
    elsewhere = await slow.migration(second["workload"], other_target["id"], list(second["mount_points"].values()))
    await slow.call("POST", migration_path(running["id"], "run"), 202)

    detail = await refused(slow, "POST", migration_path(waiting["id"], "run"))
    assert "busy" in detail and str(target["id"]) in detail and str(running["id"]) in detail
    assert (await state_of(slow, waiting["id"]))["state"] == "not_started"
    # Another target is free, and the first one is once its migration stops.
    await slow.call("POST", migration_path(elsewhere["id"], "run"), 202)
    await slow.call("POST", migration_path(running["id"], "cancel"), 200)
    await slow.call("POST", migration_path(waiting["id"], "run"), 202)


async def test_a_running_migration_cannot_be_replaced_patched_or_deleted(slow: User) -> None:
    plan = await slow.plan()
    path = migration_path(plan["migration"])
    c, d = plan["mount_points"]
    before = await slow.call("POST", migration_path(plan["migration"], "run"), 202)
    replace = {"source": plan["workload"], "migration_target": plan["target"], "selected_mount_points": [c]}
    for method, body in [("PUT", replace), ("PATCH", {"selected_mount_points": [c]}), ("DELETE", None)]:
        detail = await refused(slow, method, path, **({"json": body} if body else {}))
        assert "running" in detail, (method, detail)
    after = await slow.call("GET", path, 200)
    assert after == {**before, "progress": after["progress"]}

    await slow.call("POST", migration_path(plan["migration"], "cancel"), 200)
    assert (await slow.call("PATCH", path, 200, json={"selected_mount_points": [c]}))["selected_mount_points"] == [c]
    await slow.call("DELETE", path, 204)


# --- cancel and retry ----------------------------------------------------------


async def test_cancel_stops_the_run_at_once_and_nothing_reaches_the_target(quick: User) -> None:
    plan = await quick.plan()
    await quick.call("POST", migration_path(plan["migration"], "run"), 202)
    cancelled = await quick.call("POST", migration_path(plan["migration"], "cancel"), 200)
    assert (cancelled["state"], cancelled["error"]) == ("error", "cancelled")
    assert cancelled["finished_at"] is not None and cancelled["progress"] < 100
    assert await state_of(quick, plan["migration"]) == {
        "state": "error", "progress": cancelled["progress"], "error": "cancelled", "finished": True,
    }

    # Well past the copy's duration, the cancelled run has not completed.
    await asyncio.sleep(QUICK + 5 * TICK)
    assert await quick.call("GET", migration_path(plan["migration"]), 200) == cancelled
    assert (await quick.call("GET", f"{API}/migration_targets/{plan['target']}/", 200))["target_vm"] is None


async def test_cancel_is_refused_unless_the_migration_is_running(quick: User) -> None:
    plan = await quick.plan()
    path = migration_path(plan["migration"], "cancel")
    assert "not running" in await refused(quick, "POST", path)
    await quick.call("POST", migration_path(plan["migration"], "run"), 202)
    await quick.call("POST", path, 200)
    assert "not running" in await refused(quick, "POST", path)
    await quick.call("POST", migration_path(plan["migration"], "run"), 202)
    assert (await finished(quick, plan["migration"]))["state"] == "success"
    assert "not running" in await refused(quick, "POST", path)
    assert (await state_of(quick, plan["migration"]))["state"] == "success"


async def test_a_cancelled_migration_runs_again_to_success(quick: User) -> None:
    plan = await quick.plan()
    first = await quick.call("POST", migration_path(plan["migration"], "run"), 202)
    await quick.call("POST", migration_path(plan["migration"], "cancel"), 200)

    retried = await quick.call("POST", migration_path(plan["migration"], "run"), 202)
    assert (retried["state"], retried["progress"], retried["error"], retried["finished_at"]) == (
        "running", 0, None, None,
    )
    assert datetime.fromisoformat(retried["started_at"]) >= datetime.fromisoformat(first["started_at"])
    done = await finished(quick, plan["migration"])
    assert (done["state"], done["progress"], done["error"]) == ("success", 100, None)
    assert done["started_at"] == retried["started_at"]
    target_vm = (await quick.call("GET", f"{API}/migration_targets/{plan['target']}/", 200))["target_vm"]
    assert [volume["name"] for volume in target_vm["storage"]] == ["C:\\", "D:\\"]


async def test_a_migration_interrupted_by_a_stopped_service_runs_again_to_success(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """The service stopping (its app cleaned up) leaves the run `error` /
    `interrupted`; the next service on the same database retries it."""
    database = f"sqlite:///{tmp_path / 'db.sqlite'}"
    first = await aiohttp_client(create_app(make_services(SLOW, database)))
    user = await User(first, "carol").sign_up()
    plan = await user.plan()
    await user.call("POST", migration_path(plan["migration"], "run"), 202)
    await first.close()

    user.client = await aiohttp_client(create_app(make_services(QUICK, database)))
    assert await state_of(user, plan["migration"]) == {
        "state": "error", "progress": 0, "error": "interrupted", "finished": True,
    }
    await user.call("POST", migration_path(plan["migration"], "run"), 202)
    done = await finished(user, plan["migration"])
    assert (done["state"], done["error"]) == ("success", None)


# --- concurrency ---------------------------------------------------------------


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
async def test_twenty_concurrent_run_requests_start_the_migration_once(
    make_client: MakeClient, tmp_path: Path, storage: str
) -> None:
    url = "memory://" if storage == "memory" else f"sqlite:///{tmp_path / 'db.sqlite'}"
    user = await User(await make_client(RACE, url), "racer").sign_up()
    plan = await user.plan()
    path = migration_path(plan["migration"], "run")

    answers = await asyncio.gather(*(user.request("POST", path) for _ in range(20)))
    statuses = sorted(answer.status for answer in answers)
    assert statuses == [202] + [409] * 19, statuses
    [started] = [await a.json() for a in answers if a.status == 202]
    for answer in answers:
        if answer.status == 409:
            assert "running" in (await answer.json())["detail"]

    done = await finished(user, plan["migration"])
    assert (done["state"], done["started_at"]) == ("success", started["started_at"])


async def test_a_thousand_migrations_started_at_once_all_succeed_exactly_once(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """Each migration has its own target, so all may run at once. Setup uses
    the core directly; the runs are started through HTTP in concurrent batches."""
    count, batch = 1000, 100
    services = make_services(QUICK, f"sqlite:///{tmp_path / 'db.sqlite'}")
    client = await aiohttp_client(create_app(services))
    registered = await client.post(f"{API}/auth/", json={"username": "many", "password": PASSWORD})
    assert registered.status == 201, await registered.text()
    owner: int = (await registered.json())["id"]
    user = User(client, "many")
    tokens = await client.post(f"{API}/token/", json={"username": "many", "password": PASSWORD})
    user.access = (await tokens.json())["access"]
    storage = services.storage

    def setup() -> list[int]:
        credentials = core.create_credentials(storage, owner, username="admin", password="x")
        c = core.create_mount_point(storage, owner, name="C:\\", size=10)
        d = core.create_mount_point(storage, owner, name="D:\\", size=30)
        source = core.create_workload(
            storage, owner, ip="10.9.0.1", credentials_id=credentials.id, mount_point_ids=[c.id, d.id]
        )
        ids = []
        for _ in range(count):
            target = core.create_migration_target(
                storage, owner, cloud_type="aws", cloud_credentials_id=credentials.id
            )
            ids.append(
                core.create_migration(
                    storage, owner, clock=services.clock, source_id=source.id, migration_target_id=target.id,
                    selected_mount_point_ids=[c.id, d.id],
                ).id
            )
        return ids

    ids = await asyncio.to_thread(setup)
    started: dict[int, str] = {}
    for first in range(0, count, batch):
        chunk = ids[first : first + batch]
        answers = await asyncio.gather(
            *(user.call("POST", migration_path(i, "run"), 202) for i in chunk)
        )
        started.update((body["id"], body["started_at"]) for body in answers)
    assert sorted(started) == sorted(ids)
    # The API answers while the runs go on.
    assert (await client.get("/health")).status == 200

    async with asyncio.timeout(PATIENCE + 10):
        while (await user.call("GET", f"{API}/migrations/?state=success&limit=1", 200))["count"] < count:
            await asyncio.sleep(0.2)

    migrations = (await user.call("GET", f"{API}/migrations/?limit=1000", 200))["results"]
    assert len(migrations) == count
    assert all(
        (m["state"], m["progress"], m["error"]) == ("success", 100, None) for m in migrations
    )
    # Started once: the start time is still the one the 202 answered.
    assert {m["id"]: m["started_at"] for m in migrations} == started
    assert all(datetime.fromisoformat(m["finished_at"]) >= datetime.fromisoformat(m["started_at"]) for m in migrations)
    targets = (await user.call("GET", f"{API}/migration_targets/?limit=1000", 200))["results"]
    assert len(targets) == count
    assert all(t["target_vm"] and [v["name"] for v in t["target_vm"]["storage"]] == ["C:\\", "D:\\"] for t in targets)
