"""Warm migrations (SPEC 2.9) through HTTP, into targets without a host (the
simulated copy: no machine is reached): a warm run's first sync, syncs now
and by schedule, cutovers now, at a time, withdrawn and waiting for a sync,
cancels, failed syncs, what may be edited while it runs, the validation of
its fields and a wave's cutover; then real `serve` processes killed between
and during syncs, and two instances on one PostgreSQL database serving the
same due syncs.

The in-process apps run the real asyncio runner with a short tick; a
simulated first sync takes the app's run seconds and each later one (and the
cutover) a tenth. Every wait is on a condition, bounded by PATIENCE."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp.test_utils import TestClient

from adapters.async_runner import AsyncRunner
from adapters.instances import Instance, InstanceRegistry
from adapters.passwords import ScryptHasher
from entrypoints.bootstrap import ServiceRunner, Services, Settings, bootstrap, configured_storage
from entrypoints.http import create_app
from migration_core import Clock, Copier, Storage
from migration_core.entities import MigrationState, Phase
from migration_core.machines import CopyEnd, CopyJob, CopyProgress, SwapGate

from .http_client import PASSWORD, TEST_KEY, User
from .service_process import SECRET_KEY, ServiceProcess, plan_migration, sign_up, wait_for

API = "/api/v1"
TICK = 0.05
PATIENCE = 20.0
QUICK = 0.5  # a first sync's seconds (later syncs and the cutover: a tenth)
STEADY = 2.0  # a first sync long enough to act on while it goes on
SLOW = 60.0  # a first sync that outlasts the test
HOUR = 3600  # an interval no test waits for

MakeClient = Callable[..., Awaitable["Warm"]]


# --- the apps -------------------------------------------------------------------


class FailingCopier:
    """The service's copier, whose copies end failing with `reason` while it
    is set (they take their simulated time all the same)."""

    def __init__(self, inner: Copier) -> None:
        self.inner = inner
        self.reason: str | None = None

    def start_copy(self, job: CopyJob, changed: Callable[[], None], gate: SwapGate | None = None) -> Any:
        return _Failing(self, self.inner.start_copy(job, changed, gate))


@attrs.define
class _Failing:
    copier: FailingCopier
    inner: Any

    def progress(self) -> CopyProgress | None:
        return self.inner.progress()  # type: ignore[no-any-return]

    def ended(self) -> CopyEnd | None:
        end = self.inner.ended()
        if end is None or self.copier.reason is None:
            return end  # type: ignore[no-any-return]
        return CopyEnd(self.copier.reason)

    def next_due(self) -> float | None:
        return self.inner.next_due()  # type: ignore[no-any-return]

    def cancel(self) -> None:
        self.inner.cancel()


class IdleRunner:
    """A runner that takes no queued copy: what is queued stays queued."""

    instance_id = "idle"
    active: frozenset[int] = frozenset()

    def launch(self, job: CopyJob) -> None:
        pass

    def cancel(self, migration_id: int) -> None:
        pass

    def queued(self) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> int:
        return 0


@attrs.define
class Warm:
    """A signed-up user of an app, with its services (to reach storage)."""

    user: User
    services: Services
    copier: FailingCopier | None
    id: int

    async def plan(self, ip: str, mode: str = "warm", **fields: Any) -> dict[str, Any]:
        """A source of C:\\ and D:\\, a target without a host and a migration of both."""
        credentials = await self.user.credentials(f"admin-{ip}")
        volumes = [(await self.user.mount_point(name, size))["id"] for name, size in (("C:\\", 3000), ("D:\\", 1000))]
        workload = await self.user.workload(ip, credentials["id"], volumes)
        target = await self.user.target(credentials["id"])
        body = {
            "source": workload["id"], "migration_target": target["id"], "selected_mount_points": volumes,
            "mode": mode, **fields,
        }
        migration = await self.user.call("POST", f"{API}/migrations/", 201, json=body)
        return {"migration": migration["id"], "target": target["id"], "answer": migration}

    async def call(self, method: str, path: str, expect: int, **kwargs: Any) -> Any:
        return await self.user.call(method, path, expect, **kwargs)

    async def state(self, migration_id: int) -> dict[str, Any]:
        return await self.call("GET", path(migration_id, "state"), 200)  # type: ignore[no-any-return]

    async def until(self, migration_id: int, what: Callable[[dict[str, Any]], bool], seen: list[str] | None = None
                    ) -> dict[str, Any]:
        """The state once `what` holds of it (bounded); the phases met on the way go to `seen`."""
        async with asyncio.timeout(PATIENCE):
            while True:
                state = await self.state(migration_id)
                if seen is not None and (not seen or seen[-1] != state["phase"]):
                    seen.append(state["phase"])
                if what(state):
                    return state
                await asyncio.sleep(TICK / 2)

    async def events(self, migration_id: int, *kinds: str) -> list[dict[str, Any]]:
        answer = await self.call("GET", path(migration_id, "events") + "?limit=1000", 200)
        return [event for event in answer["results"] if not kinds or event["kind"] in kinds]

    async def run_until_in_sync(self, migration_id: int, syncs: int = 1) -> dict[str, Any]:
        await self.call("POST", path(migration_id, "run"), 202)
        return await self.until(migration_id, lambda s: s["phase"] == "in_sync" and s["syncs"] >= syncs)

    def due_now(self, migration_id: int) -> None:
        """Make the next sync due now, as an interval gone by would (see `due_in_the_past`)."""
        due_in_the_past(self.services.storage, self.id, migration_id)


def due_in_the_past(storage: Storage, owner_id: int, migration_id: int) -> bool:
    """Move a migration's next sync into the past, as if its interval had gone
    by: 60 s is the shortest interval (SPEC 2.1), longer than a test may wait.
    The row is read locked, and only a migration between syncs is touched,
    as the service's own scheduler would find it. Whether it was."""
    with storage.unit_of_work() as uow:
        migration = uow.migrations.get(owner_id, migration_id)
        if migration.state is not MigrationState.RUNNING or migration.phase is not Phase.IN_SYNC:
            return False
        past = datetime.now(timezone.utc) - timedelta(seconds=1)
        uow.migrations.update_if(attrs.evolve(migration, next_sync_at=past), expected=(MigrationState.RUNNING,))
        uow.commit()
    return True


def path(migration_id: int, action: str = "") -> str:
    return f"{API}/migrations/{migration_id}/" + (f"{action}/" if action else "")


def at(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat()


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.fixture
def make_client(aiohttp_client: Any) -> MakeClient:
    """A signed-up user of an app whose first syncs take `run_seconds`; with
    `failing`, its copier can be told to fail; with `idle`, nothing queued is taken."""

    async def make(
        run_seconds: float, *, failing: bool = False, idle: bool = False, **settings: Any
    ) -> Warm:
        wrapped: list[FailingCopier] = []

        def runner(
            storage: Storage, clock: Clock, copier: Copier, registry: InstanceRegistry, instance: Instance
        ) -> ServiceRunner:
            if idle:
                return IdleRunner()
            if failing:
                copier = FailingCopier(copier)
                wrapped.append(copier)
            return AsyncRunner(storage, clock, copier, tick=TICK, registry=registry, instance=instance)

        services = bootstrap(
            Settings(storage="memory://", run_seconds=run_seconds, secret_key=TEST_KEY, **settings),
            hasher=ScryptHasher(n=2**4),
            make_runner=runner,
        )
        client: TestClient[Any, Any] = await aiohttp_client(create_app(services))
        answer = await client.post("/api/v1/auth/", json={"username": "warm", "password": PASSWORD})
        owner = (await answer.json())["id"]
        user = User(client, "warm")
        tokens = await (await client.post("/api/v1/token/", json={"username": "warm", "password": PASSWORD})).json()
        user.access = tokens["access"]
        return Warm(user, services, wrapped[0] if wrapped else None, owner)

    return make


# --- the first sync, syncs now and by schedule --------------------------------------


async def test_a_warm_run_queues_its_first_sync_which_copies_then_holds_it_in_sync_until_the_next(
    make_client: MakeClient,
) -> None:
    warm = await make_client(QUICK)
    plan = await warm.plan("10.0.0.1", sync_interval=600)
    assert (plan["answer"]["mode"], plan["answer"]["sync_interval"]) == ("warm", 600)
    before = await warm.state(plan["migration"])
    assert (before["syncs"], before["next_sync_at"], before["last_synced_at"]) == (0, None, None)

    running = await warm.call("POST", path(plan["migration"], "run"), 202)
    assert (running["state"], running["phase"]) == ("running", "queued")
    seen = ["queued"]
    state = await warm.until(plan["migration"], lambda s: s["phase"] == "in_sync", seen)

    assert seen == ["queued", "syncing", "in_sync"], seen
    assert (state["state"], state["syncs"], state["last_sync_error"], state["cutover_at"]) == (
        "running", 1, None, None
    )
    synced = await warm.events(plan["migration"], "synced")
    assert len(synced) == 1 and synced[0]["detail"]["cutover"] is False
    seconds = synced[0]["detail"]["seconds"]
    assert QUICK <= seconds < QUICK + 5, seconds
    assert state["last_sync_seconds"] == pytest.approx(seconds, abs=0.01)
    assert when(state["next_sync_at"]) == when(state["last_synced_at"]) + timedelta(seconds=600)
    assert when(state["last_synced_at"]) == when(synced[0]["at"])
    kinds = [event["kind"] for event in await warm.events(plan["migration"]) if event["kind"] != "volume_copied"]
    assert kinds == ["created", "run_requested", "started", "queued", "sync_started", "synced"]
    # Not a cold run's end: no target VM until the cutover.
    target = await warm.call("GET", f"{API}/migration_targets/{plan['target']}/", 200)
    assert target["target_vm"] is None
    assert (await warm.call("GET", path(plan["migration"]), 200))["progress"] < 100


async def test_sync_now_queues_the_next_at_once_and_is_refused_while_one_is_under_way(
    make_client: MakeClient,
) -> None:
    warm = await make_client(STEADY)
    plan = await warm.plan("10.0.0.1", sync_interval=HOUR)
    migration = plan["migration"]
    refusal = await warm.call("POST", path(migration, "sync"), 409)
    assert "not a running warm migration" in refusal["detail"]

    await warm.call("POST", path(migration, "run"), 202)
    await warm.until(migration, lambda s: s["phase"] == "syncing")
    refusal = await warm.call("POST", path(migration, "sync"), 409)
    assert "under way or queued" in refusal["detail"]
    first = await warm.until(migration, lambda s: s["phase"] == "in_sync")

    queued = await warm.call("POST", path(migration, "sync"), 202)
    assert (queued["state"], queued["phase"]) == ("running", "queued")
    second = await warm.until(migration, lambda s: s["syncs"] == 2 and s["phase"] == "in_sync")
    assert when(second["last_synced_at"]) > when(first["last_synced_at"])
    assert when(second["next_sync_at"]) == when(second["last_synced_at"]) + timedelta(seconds=HOUR)
    # A later sync takes a tenth of the first.
    assert second["last_sync_seconds"] < first["last_sync_seconds"]
    queued_events = await warm.events(migration, "queued")
    assert [event["actor"] for event in queued_events] == [None, warm.id]
    started = await warm.events(migration, "sync_started")
    assert [event["detail"]["sync"] for event in started] == [1, 2]


async def test_sync_now_is_refused_while_a_sync_is_queued_and_for_a_cold_or_ended_migration(
    make_client: MakeClient,
) -> None:
    idle = await make_client(QUICK, idle=True)
    plan = await idle.plan("10.0.0.1")
    await idle.call("POST", path(plan["migration"], "run"), 202)
    assert (await idle.state(plan["migration"]))["phase"] == "queued"
    refusal = await idle.call("POST", path(plan["migration"], "sync"), 409)
    assert "under way or queued (queued)" in refusal["detail"]

    warm = await make_client(SLOW)
    cold = await warm.plan("10.0.0.2", mode="cold")
    assert "sync_interval" in cold["answer"]
    await warm.call("POST", path(cold["migration"], "run"), 202)
    assert "not a running warm migration" in (await warm.call("POST", path(cold["migration"], "sync"), 409))["detail"]
    assert "not a running warm migration" in (
        await warm.call("POST", path(cold["migration"], "cutover"), 409, json={})
    )["detail"]
    assert (await warm.state(cold["migration"]))["phase"] == "copying"
    assert "syncs" not in await warm.state(cold["migration"])
    ended = await warm.plan("10.0.0.3")
    await warm.call("POST", path(ended["migration"], "run"), 202)
    await warm.call("POST", path(ended["migration"], "cancel"), 200)
    await warm.call("POST", path(ended["migration"], "sync"), 409)
    await warm.call("POST", path(ended["migration"], "cutover"), 409, json={})


async def test_a_sync_whose_time_has_come_starts_by_itself(make_client: MakeClient) -> None:
    warm = await make_client(QUICK)
    plan = await warm.plan("10.0.0.1", sync_interval=60)
    migration = plan["migration"]
    first = await warm.run_until_in_sync(migration)
    assert when(first["next_sync_at"]) == when(first["last_synced_at"]) + timedelta(seconds=60)

    # 60 s is the shortest interval: instead of waiting it out, the next sync
    # is made due now in storage, as the scheduler of any instance finds it.
    assert due_in_the_past(warm.services.storage, warm.id, migration)
    second = await warm.until(migration, lambda s: s["syncs"] == 2 and s["phase"] == "in_sync")
    assert when(second["next_sync_at"]) == when(second["last_synced_at"]) + timedelta(seconds=60)
    queued = await warm.events(migration, "queued")
    assert len(queued) == 2 and queued[1]["actor"] is None
    assert len(await warm.events(migration, "sync_started")) == 2


# --- cutovers ---------------------------------------------------------------------


async def test_cutover_now_makes_the_final_sync_and_succeeds_as_a_cold_run_with_its_hooks_recorded_as_not_run(
    make_client: MakeClient,
) -> None:
    warm = await make_client(QUICK)
    plan = await warm.plan(
        "10.0.0.1", sync_interval=HOUR, pre_cutover="systemctl stop app", post_cutover="systemctl start app"
    )
    migration = plan["migration"]
    await warm.run_until_in_sync(migration)

    cutting = await warm.call("POST", path(migration, "cutover"), 202, json={})
    assert (cutting["state"], cutting["phase"]) == ("running", "cutting_over")
    assert cutting["cutover_at"] is not None
    await warm.call("POST", path(migration, "cutover"), 409, json={})
    await warm.call("POST", path(migration, "sync"), 409)
    done = await warm.until(migration, lambda s: s["finished"])

    assert (done["state"], done["progress"], done["error"], done["phase"]) == ("success", 100, None, None)
    assert done["syncs"] == 2  # the first sync and the cutover's
    target = await warm.call("GET", f"{API}/migration_targets/{plan['target']}/", 200)
    assert [volume["name"] for volume in target["target_vm"]["storage"]] == ["C:\\", "D:\\"]
    events = await warm.events(migration)
    kinds = [event["kind"] for event in events]
    kinds = [kind for kind in kinds if kind != "volume_copied"]
    assert kinds[kinds.index("cutover_requested"):] == [
        "cutover_requested", "queued", "sync_started", "hook_ran", "hook_ran", "synced", "succeeded",
    ], kinds
    requested = next(event for event in events if event["kind"] == "cutover_requested")
    assert requested["actor"] == warm.id
    hooks = [event["detail"] for event in events if event["kind"] == "hook_ran"]
    assert [(hook["hook"], hook["exit_status"]) for hook in hooks] == [("pre_cutover", None), ("post_cutover", None)]
    assert all("Not run" in hook["output"] for hook in hooks)
    final = [event for event in events if event["kind"] == "sync_started"][-1]
    assert final["detail"]["cutover"] is True
    await warm.call("POST", path(migration, "run"), 409)


async def test_a_cutover_without_hooks_records_none(make_client: MakeClient) -> None:
    warm = await make_client(QUICK)
    plan = await warm.plan("10.0.0.1", sync_interval=HOUR)
    await warm.run_until_in_sync(plan["migration"])
    await warm.call("POST", path(plan["migration"], "cutover"), 202, json={})
    assert (await warm.until(plan["migration"], lambda s: s["finished"]))["state"] == "success"
    assert await warm.events(plan["migration"], "hook_ran") == []


async def test_a_cutover_at_a_time_happens_by_itself_then_and_a_patch_to_null_withdraws_another(
    make_client: MakeClient,
) -> None:
    warm = await make_client(QUICK)
    planned = await warm.plan("10.0.0.1", sync_interval=HOUR)
    withdrawn = await warm.plan("10.0.0.2", sync_interval=HOUR)
    for plan in (planned, withdrawn):
        await warm.run_until_in_sync(plan["migration"])

    soon = at(1.5)
    answer = await warm.call("POST", path(planned["migration"], "cutover"), 202, json={"at": soon})
    assert (answer["phase"], when(answer["cutover_at"])) == ("in_sync", when(soon))
    assert when((await warm.state(planned["migration"]))["cutover_at"]) == when(soon)
    answer = await warm.call("POST", path(withdrawn["migration"], "cutover"), 202, json={"at": soon})
    patched = await warm.call("PATCH", path(withdrawn["migration"]), 200, json={"cutover_at": None})
    assert (patched["cutover_at"], patched["state"], patched["phase"]) == (None, "running", "in_sync")

    done = await warm.until(planned["migration"], lambda s: s["finished"])
    assert done["state"] == "success"
    succeeded = (await warm.events(planned["migration"], "succeeded"))[0]
    assert when(succeeded["at"]) >= when(soon)
    # The withdrawn one's time has passed too: it still replicates.
    kept = await warm.state(withdrawn["migration"])
    assert (kept["state"], kept["phase"], kept["cutover_at"], kept["syncs"]) == ("running", "in_sync", None, 1)
    requests = await warm.events(withdrawn["migration"], "cutover_requested")
    assert [event["detail"]["cutover_at"] is None for event in requests] == [False, True]

    # A PATCH plans one as the POST does.
    again = await warm.call("PATCH", path(withdrawn["migration"]), 200, json={"cutover_at": at(0.2)})
    assert again["cutover_at"] is not None
    assert (await warm.until(withdrawn["migration"], lambda s: s["finished"]))["state"] == "success"


async def test_a_cutover_asked_for_during_a_sync_waits_for_its_end(make_client: MakeClient) -> None:
    warm = await make_client(STEADY)
    plan = await warm.plan("10.0.0.1", sync_interval=HOUR)
    migration = plan["migration"]
    await warm.call("POST", path(migration, "run"), 202)
    await warm.until(migration, lambda s: s["phase"] == "syncing")

    answer = await warm.call("POST", path(migration, "cutover"), 202, json={})
    assert answer["phase"] == "syncing" and answer["cutover_at"] is not None
    done = await warm.until(migration, lambda s: s["finished"])

    assert done["state"] == "success"
    started = await warm.events(migration, "sync_started", "synced")
    assert [(event["kind"], event["detail"]["cutover"]) for event in started] == [
        ("sync_started", False), ("synced", False), ("sync_started", True), ("synced", True),
    ]
    # The first sync ran its whole time: the cutover did not cut it short.
    assert started[1]["detail"]["seconds"] >= STEADY


async def test_a_cutover_that_fails_leaves_the_migration_replicating_with_the_reason(
    make_client: MakeClient,
) -> None:
    warm = await make_client(QUICK, failing=True)
    assert warm.copier is not None
    plan = await warm.plan("10.0.0.1", sync_interval=HOUR)
    migration = plan["migration"]
    await warm.run_until_in_sync(migration)

    warm.copier.reason = "The source was not quiesced: /var/log/app.log changed."
    await warm.call("POST", path(migration, "cutover"), 202, json={})
    state = await warm.until(migration, lambda s: s["last_sync_error"] is not None)
    assert (state["state"], state["phase"], state["cutover_at"], state["syncs"]) == ("running", "in_sync", None, 1)
    assert state["last_sync_error"] == warm.copier.reason
    failed = await warm.events(migration, "sync_failed")
    assert [event["detail"]["cutover"] for event in failed] == [True]

    warm.copier.reason = None
    await warm.call("POST", path(migration, "cutover"), 202, json={})
    assert (await warm.until(migration, lambda s: s["finished"]))["state"] == "success"


async def test_a_cutover_time_that_passed_while_it_was_not_running_does_not_cut_a_rerun_over(
    make_client: MakeClient,
) -> None:
    """Cancelled before its planned cutover, then run again after that time:
    the new run replicates; it does not cut over as soon as its first sync ends."""
    warm = await make_client(QUICK)
    plan = await warm.plan("10.0.0.1", sync_interval=HOUR)
    migration = plan["migration"]
    await warm.run_until_in_sync(migration)
    soon = at(0.5)
    await warm.call("POST", path(migration, "cutover"), 202, json={"at": soon})
    await warm.call("POST", path(migration, "cancel"), 200)
    async with asyncio.timeout(PATIENCE):
        while datetime.now(timezone.utc) <= when(soon):
            await asyncio.sleep(TICK)

    await warm.call("POST", path(migration, "run"), 202)
    state = await warm.until(migration, lambda s: s["phase"] == "in_sync" or s["finished"])
    assert (state["state"], state["phase"], state["syncs"], state["cutover_at"]) == ("running", "in_sync", 1, None)


# --- cancel and failures -----------------------------------------------------------


async def test_cancel_stops_a_warm_migration_between_syncs_and_during_one(make_client: MakeClient) -> None:
    warm = await make_client(SLOW)
    syncing = await warm.plan("10.0.0.1", sync_interval=HOUR)
    await warm.call("POST", path(syncing["migration"], "run"), 202)
    await warm.until(syncing["migration"], lambda s: s["phase"] == "syncing")
    cancelled = await warm.call("POST", path(syncing["migration"], "cancel"), 200)
    assert (cancelled["state"], cancelled["error"], cancelled["phase"]) == ("error", "cancelled", None)

    quick = await make_client(QUICK)
    between = await quick.plan("10.0.0.2", sync_interval=60)
    await quick.run_until_in_sync(between["migration"])
    cancelled = await quick.call("POST", path(between["migration"], "cancel"), 200)
    assert (cancelled["state"], cancelled["error"], cancelled["phase"]) == ("error", "cancelled", None)
    # Its next sync, due now, never comes: nothing is queued for it.
    assert not due_in_the_past(quick.services.storage, quick.id, between["migration"])
    assert quick.services.runner.active == frozenset()
    state = await quick.state(between["migration"])
    assert (state["state"], state["next_sync_at"], state["syncs"]) == ("error", None, 1)
    assert [event["kind"] for event in await quick.events(between["migration"])][-1] == "cancelled"
    await quick.call("POST", path(between["migration"], "cancel"), 409)
    assert warm.services.runner.active == frozenset()


async def test_three_failed_syncs_in_a_row_end_the_replication_with_the_last_reason(
    make_client: MakeClient,
) -> None:
    warm = await make_client(0.2, failing=True)
    assert warm.copier is not None
    plan = await warm.plan("10.0.0.1", sync_interval=HOUR)
    migration = plan["migration"]
    warm.copier.reason = "No space left on the host."
    await warm.call("POST", path(migration, "run"), 202)

    first = await warm.until(migration, lambda s: s["last_sync_error"] is not None)
    assert (first["state"], first["phase"], first["syncs"]) == ("running", "in_sync", 0)
    assert first["last_sync_error"] == "No space left on the host."
    assert when(first["next_sync_at"]) > datetime.now(timezone.utc) + timedelta(seconds=HOUR - 60)
    # A success in between starts the count again.
    warm.copier.reason = None
    await warm.call("POST", path(migration, "sync"), 202)
    await warm.until(migration, lambda s: s["syncs"] == 1 and s["phase"] == "in_sync")
    for attempt, reason in enumerate(("Host unreachable.", "Host unreachable.", "Still unreachable."), 1):
        warm.copier.reason = reason
        await warm.call("POST", path(migration, "sync"), 202)
        state = await warm.until(
            migration, lambda s: s["phase"] not in ("queued", "syncing")
        )
        failures = await warm.events(migration, "sync_failed")
        assert len(failures) == 1 + attempt, failures
        if attempt < 3:
            assert (state["state"], state["phase"], state["last_sync_error"]) == ("running", "in_sync", reason)

    ended = await warm.call("GET", path(migration), 200)
    assert (ended["state"], ended["error"], ended["phase"]) == ("error", "Still unreachable.", None)
    kinds = [event["kind"] for event in await warm.events(migration)]
    assert kinds[-2:] == ["sync_failed", "failed"]
    assert [event["detail"]["reason"] for event in await warm.events(migration, "failed")] == ["Still unreachable."]


# --- editing and validation ----------------------------------------------------------


async def test_a_running_warm_migration_keeps_its_mode_interval_and_hooks_but_takes_a_cutover_time(
    make_client: MakeClient,
) -> None:
    warm = await make_client(QUICK)
    plan = await warm.plan("10.0.0.1", sync_interval=HOUR, pre_cutover="sync")
    migration = plan["migration"]
    await warm.run_until_in_sync(migration)
    for change in (
        {"mode": "cold"}, {"sync_interval": 120}, {"pre_cutover": "true"}, {"post_cutover": "true"},
        {"pre_cutover": None}, {"cutover_at": at(HOUR), "sync_interval": 120},
    ):
        refusal = await warm.call("PATCH", path(migration), 409, json=change)
        assert "running" in refusal["detail"], (change, refusal)
    later = at(HOUR)
    answer = await warm.call("PATCH", path(migration), 200, json={"cutover_at": later})
    assert (when(answer["cutover_at"]), answer["sync_interval"], answer["pre_cutover"]) == (when(later), HOUR, "sync")
    # An edit that leaves those fields as they are is no edit of them: the cutover time goes through.
    again = await warm.call("PATCH", path(migration), 200, json={"mode": "warm", "cutover_at": None})
    assert (again["state"], again["cutover_at"]) == ("running", None)
    # Without a cutover time, it is an edit of a running migration, as for a cold one.
    await warm.call("PATCH", path(migration), 409, json={"mode": "warm", "sync_interval": HOUR})
    assert (await warm.state(migration))["phase"] == "in_sync"


async def test_mode_interval_and_hooks_are_validated_naming_the_field(make_client: MakeClient) -> None:
    warm = await make_client(QUICK, sync_interval=120)
    plan = await warm.plan("10.0.0.1")
    assert plan["answer"]["sync_interval"] == 120  # MIGRATION_SYNC_INTERVAL
    cold = await warm.plan("10.0.0.2", mode="cold")
    assert (cold["answer"]["mode"], cold["answer"]["pre_cutover"], cold["answer"]["cutover_at"]) == ("cold", None, None)
    migration = plan["migration"]
    for field, value in (
        ("mode", "lukewarm"), ("mode", None), ("sync_interval", 59), ("sync_interval", 604801),
        ("sync_interval", "often"), ("pre_cutover", "x" * 4097), ("post_cutover", "y" * 4097),
        ("pre_cutover", ""), ("cutover_at", "tomorrow"),
    ):
        answer = await warm.call("PATCH", path(migration), 400, json={field: value})
        assert list(answer["errors"]) == [field], (field, value, answer)
    for edge in ({"sync_interval": 60}, {"sync_interval": 604800}, {"pre_cutover": "z" * 4096}):
        edited = await warm.call("PATCH", path(migration), 200, json=edge)
        assert all(edited[field] == value for field, value in edge.items())
    answer = await warm.call("POST", path(migration, "cutover"), 400, json={"at": "soon"})
    assert list(answer["errors"]) == ["at"]


async def test_a_change_of_mode_is_an_update_naming_the_new_mode_either_way(make_client: MakeClient) -> None:
    warm = await make_client(QUICK)
    plan = await warm.plan("10.0.0.1", mode="cold")
    migration = plan["migration"]
    await warm.call("PATCH", path(migration), 200, json={"mode": "warm", "sync_interval": 300})
    await warm.call("PATCH", path(migration), 200, json={"mode": "cold"})
    updates = [event["detail"] for event in await warm.events(migration, "updated")]
    assert [update.get("mode") for update in updates] == ["warm", "cold"], updates
    assert updates[0]["sync_interval"] == 300


# --- waves --------------------------------------------------------------------------


async def test_a_wave_cutover_cuts_over_its_running_warm_members_and_refuses_the_others(
    make_client: MakeClient,
) -> None:
    warm = await make_client(QUICK)
    members = [await warm.plan(f"10.0.0.{i}", sync_interval=HOUR) for i in (1, 2)]
    resting = await warm.plan("10.0.0.3")
    cold = await warm.plan("10.0.0.4", mode="cold")
    ids = [plan["migration"] for plan in (*members, resting, cold)]
    wave = await warm.call("POST", f"{API}/waves/", 201, json={"name": "w1", "migrations": ids})
    for plan in members:
        await warm.run_until_in_sync(plan["migration"])

    answer = await warm.call("POST", f"{API}/waves/{wave['id']}/cutover/", 202, json={})
    assert answer["cutting_over"] == ids[:2]
    assert [refusal["migration"] for refusal in answer["refused"]] == ids[2:]
    assert all("not a running warm migration" in refusal["detail"] for refusal in answer["refused"])
    for migration in ids[:2]:
        assert (await warm.until(migration, lambda s: s["finished"]))["state"] == "success"
    for migration in ids[2:]:
        assert (await warm.state(migration))["state"] == "not_started"
    answer = await warm.call("POST", f"{API}/waves/{wave['id']}/cutover/", 400, json={"at": "never"})
    assert list(answer["errors"]) == ["at"]


async def test_a_wave_cutover_at_a_time_plans_each_member(make_client: MakeClient) -> None:
    warm = await make_client(QUICK)
    plan = await warm.plan("10.0.0.1", sync_interval=HOUR)
    wave = await warm.call("POST", f"{API}/waves/", 201, json={"name": "w1", "migrations": [plan["migration"]]})
    await warm.run_until_in_sync(plan["migration"])
    later = at(HOUR)
    answer = await warm.call("POST", f"{API}/waves/{wave['id']}/cutover/", 202, json={"at": later})
    assert (answer["cutting_over"], answer["refused"]) == ([plan["migration"]], [])
    state = await warm.state(plan["migration"])
    assert (state["phase"], when(state["cutover_at"])) == ("in_sync", when(later))


# --- whole processes ------------------------------------------------------------------


def _state(service: ServiceProcess, token: str, migration_id: int) -> dict[str, Any]:
    return service.ok("GET", path(migration_id, "state"), token=token)  # type: ignore[no-any-return]


def _events(service: ServiceProcess, token: str, migration_id: int, kind: str) -> list[dict[str, Any]]:
    answer = service.ok("GET", path(migration_id, "events") + f"?kind={kind}&limit=1000", token=token)
    return answer["results"]  # type: ignore[no-any-return]


def _warm(service: ServiceProcess, token: str, ip: str) -> int:
    migration = plan_migration(service, token, ip)
    service.ok("PATCH", path(migration), {"mode": "warm", "sync_interval": HOUR}, token)
    return migration


def test_a_service_killed_between_syncs_and_during_one_leaves_the_replication_going(tmp_path: Path) -> None:
    """Kill -9 and a restart: between syncs nothing is interrupted; during a
    sync that sync alone fails (`interrupted`), never the migration."""
    service = ServiceProcess(f"sqlite:///{tmp_path / 'warm.db'}", tmp_path, "warm", "--run-seconds", "2",
                             "--lease-seconds", "1")
    try:
        service.start()
        token = sign_up(service, "alice")
        migration = _warm(service, token, "10.0.0.1")
        service.ok("POST", path(migration, "run"), token=token, status=202)
        wait_for("the first sync", lambda: _state(service, token, migration)["phase"] == "syncing")

        service.stop(signal.SIGKILL)
        service.start()
        state = wait_for(
            "the interrupted sync", lambda: (s := _state(service, token, migration))["last_sync_error"] and s
        )
        assert (state["state"], state["phase"], state["syncs"], state["last_sync_error"]) == (
            "running", "in_sync", 0, "interrupted"
        )
        failed = _events(service, token, migration, "sync_failed")
        assert [event["detail"]["reason"] for event in failed] == ["interrupted"]
        assert _events(service, token, migration, "interrupted") == []

        service.ok("POST", path(migration, "sync"), token=token, status=202)
        wait_for("a sync after the restart", lambda: _state(service, token, migration)["syncs"] == 1)
        service.stop(signal.SIGKILL)
        service.start()
        state = _state(service, token, migration)
        assert (state["state"], state["phase"], state["syncs"]) == ("running", "in_sync", 1)
        service.ok("POST", path(migration, "sync"), token=token, status=202)
        wait_for("a sync after the second restart", lambda: _state(service, token, migration)["syncs"] == 2)
        assert len(_events(service, token, migration, "sync_failed")) == 1
        assert _events(service, token, migration, "failed") == []
    finally:
        service.kill()


@pytest.fixture
def pair(postgres_url: str, tmp_path: Path) -> Iterator[tuple[ServiceProcess, ServiceProcess, str]]:
    a = ServiceProcess(postgres_url, tmp_path, "a", "--run-seconds", "1", "--access-log", "off")
    b = ServiceProcess(postgres_url, tmp_path, "b", "--run-seconds", "1", "--access-log", "off")
    try:
        yield a, b, postgres_url
    finally:
        a.kill()
        b.kill()


def test_two_instances_on_postgresql_run_each_due_sync_once(
    pair: tuple[ServiceProcess, ServiceProcess, str],
) -> None:
    a, b, url = pair
    a.start()
    b.start()
    token = sign_up(a, "alice")
    migrations = [_warm(a, token, f"10.0.1.{i}") for i in range(1, 9)]
    for i, migration in enumerate(migrations):
        (a if i % 2 else b).ok("POST", path(migration, "run"), token=token, status=202)
    storage = configured_storage(Settings(storage=url, secret_key=SECRET_KEY))
    owner = storage_owner(storage, migrations[0])
    try:
        rounds = 3  # the first sync, then two due at once for both instances
        for round_ in range(1, rounds + 1):
            wait_for(f"sync {round_} of every migration", lambda syncs=round_: all(
                (s := _state(b, token, m))["syncs"] == syncs and s["phase"] == "in_sync" for m in migrations
            ))
            if round_ < rounds:
                # Due now, for both instances at once (see `due_in_the_past`).
                assert all(due_in_the_past(storage, owner, m) for m in migrations)
    finally:
        storage.close()
    instances = set()
    for migration in migrations:
        started = _events(a, token, migration, "sync_started")
        assert [event["detail"]["sync"] for event in started] == list(range(1, rounds + 1)), started
        assert len(_events(a, token, migration, "queued")) == rounds
        assert len(_events(a, token, migration, "synced")) == rounds
        instances |= {event["detail"]["instance"] for event in started}
    assert len(instances) == 2, instances  # both served the queue


def storage_owner(storage: Storage, migration_id: int) -> int:
    with storage.unit_of_work(write=False) as uow:
        return next(m.owner_id for m in uow.migrations.running() if m.id == migration_id)
