"""The state of a run volume by volume, a migration's history, and the live
stream, through real HTTP (a server on a loopback port) with the real asyncio
runner. Every wait is bounded by PATIENCE, never an expectation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientPayloadError, ClientResponse, ClientSession, web
from aiohttp.test_utils import TestClient

import migration_core as core
from adapters.async_runner import AsyncRunner
from adapters.instances import Instance, InstanceRegistry
from adapters.passwords import ScryptHasher
from entrypoints.bootstrap import ServiceRunner, Settings, bootstrap
from entrypoints.http import create_app
from entrypoints.http.app import server_options
from entrypoints.http.requests import SERVICES
from entrypoints.http.stream import BAD_LAST_EVENT_ID, HUB, PAGE, EventHub, StreamOptions
from migration_core import Clock, Copier, Storage

from .http_client import PASSWORD, TEST_KEY, User

API = "/api/v1"
STREAM = f"{API}/events/stream/"
QUICK = 1.0  # seconds of a copy meant to finish
SLOW = 600.0  # seconds of a copy meant to be still running when the test ends
PATIENCE = 20.0
FAST_STREAMS = StreamOptions(keep_alive=0.3, poll=0.02, progress=0.1, write_timeout=0.5)

MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


def _runner(
    storage: Storage, clock: Clock, copier: Copier, registry: InstanceRegistry, instance: Instance
) -> ServiceRunner:
    return AsyncRunner(storage, clock, copier, tick=0.05, registry=registry, instance=instance)


@pytest.fixture
def make_client(aiohttp_client: Any) -> MakeClient:
    async def make(run_seconds: float, storage: str = "memory://", **options: Any) -> TestClient[Any, Any]:
        services = bootstrap(
            Settings(storage=storage, run_seconds=run_seconds, secret_key=TEST_KEY),
            hasher=ScryptHasher(n=2**4),
            make_runner=_runner,
        )
        streams = StreamOptions(**{**_fields(FAST_STREAMS), **options})
        client: TestClient[Any, Any] = await aiohttp_client(create_app(services, streams=streams))
        return client

    return make


def _fields(options: StreamOptions) -> dict[str, Any]:
    return {name: getattr(options, name) for name in ("keep_alive", "poll", "progress", "queue", "write_timeout")}


def path(migration: int, action: str = "") -> str:
    return f"{API}/migrations/{migration}/" + (f"{action}/" if action else "")


async def finished(user: User, migration: int) -> dict[str, Any]:
    async with asyncio.timeout(PATIENCE):
        while not (state := await user.call("GET", path(migration, "state"), 200))["finished"]:
            await asyncio.sleep(0.02)
    return state  # type: ignore[no-any-return]


async def history(user: User, migration: int, query: str = "") -> list[dict[str, Any]]:
    page = await user.call("GET", path(migration, "events") + query, 200)
    return page["results"]  # type: ignore[no-any-return]


async def inventory(user: User, volumes: list[tuple[str, int]], ip: str = "10.0.0.1") -> dict[str, Any]:
    credentials = await user.credentials(f"admin-{ip}")
    ids = [(await user.mount_point(name, size))["id"] for name, size in volumes]
    workload = await user.workload(ip, credentials["id"], ids)
    target = await user.target(credentials["id"])
    return {"mount_points": ids, "workload": workload["id"], "target": target["id"]}


# --- the state of a run, volume by volume ---------------------------------------------


async def test_state_shows_each_volume_in_source_order_before_during_and_after_a_run(make_client: MakeClient) -> None:
    user = await User(await make_client(QUICK), "alice").sign_up()
    plan = await inventory(user, [("D:\\", 3000), ("C:\\", 1000), ("E:\\", 0)])
    d, c, e = plan["mount_points"]
    migration = (await user.migration(plan["workload"], plan["target"], [c, e, d]))["id"]

    planned = await user.call("GET", path(migration, "state"), 200)
    assert planned == {
        "state": "not_started",
        "phase": None,
        "queue_position": None,
        "progress": 0,
        "error": None,
        "finished": False,
        "bytes_total": 4000,
        "bytes_copied": 0,
        "eta": None,
        "volumes": [
            {"mount_point": d, "name": "D:\\", "size": 3000, "copied": 0, "files": None},
            {"mount_point": c, "name": "C:\\", "size": 1000, "copied": 0, "files": None},
            {"mount_point": e, "name": "E:\\", "size": 0, "copied": 0, "files": None},
        ],
    }
    started = await user.call("POST", path(migration, "run"), 202)
    seen = []
    async with asyncio.timeout(PATIENCE):
        while not seen or not seen[-1]["finished"]:
            seen.append(await user.call("GET", path(migration, "state"), 200))
            await asyncio.sleep(0.02)
    *during, done = seen
    for earlier, later in zip(seen, seen[1:]):
        assert all(a["copied"] <= b["copied"] for a, b in zip(earlier["volumes"], later["volumes"]))
    for state in during:
        assert state["bytes_copied"] == sum(v["copied"] for v in state["volumes"])
        assert state["progress"] == min(99, 100 * state["bytes_copied"] // 4000)
        # One after another, in the source's order: C:\ waits for D:\.
        assert state["volumes"][1]["copied"] == 0 or state["volumes"][0]["copied"] == 3000
    running = [s for s in during if s["eta"] is not None]
    assert running, "no state showed an estimated end while running"
    assert all(s["eta"] > started["started_at"] for s in running)
    assert done["state"] == "success" and done["eta"] is None
    assert [v["copied"] for v in done["volumes"]] == [3000, 1000, 0]
    assert (done["bytes_copied"], done["progress"]) == (4000, 100)


async def test_a_cancelled_run_shows_what_was_copied_when_it_stopped(make_client: MakeClient) -> None:
    user = await User(await make_client(2.0), "alice").sign_up()
    plan = await inventory(user, [("C:\\", 1000), ("D:\\", 1000)])
    migration = (await user.migration(plan["workload"], plan["target"], plan["mount_points"]))["id"]
    await user.call("POST", path(migration, "run"), 202)
    async with asyncio.timeout(PATIENCE):
        while (await user.call("GET", path(migration, "state"), 200))["progress"] < 60:
            await asyncio.sleep(0.02)
    await user.call("POST", path(migration, "cancel"), 200)
    stopped = await user.call("GET", path(migration, "state"), 200)
    assert (stopped["state"], stopped["error"], stopped["eta"]) == ("error", "cancelled", None)
    assert stopped["volumes"][0]["copied"] == 1000 and 0 < stopped["volumes"][1]["copied"] < 1000
    assert stopped["progress"] == 100 * stopped["bytes_copied"] // 2000
    assert stopped["progress"] == (await user.call("GET", path(migration), 200))["progress"]


async def test_another_users_state_and_history_are_not_found(make_client: MakeClient) -> None:
    client = await make_client(SLOW)
    alice, bob = await User(client, "alice").sign_up(), await User(client, "bob").sign_up()
    migration = (await alice.plan())["migration"]
    for action in ("state", "events"):
        await bob.call("GET", path(migration, action), 404)
        await alice.call("GET", path(migration + 1000, action), 404)
        await alice.call("GET", path(migration, action), 200)


# --- the history ---------------------------------------------------------------------


async def test_the_history_tells_each_step_with_who_asked_oldest_first(make_client: MakeClient) -> None:
    user = await User(await make_client(QUICK), "alice").sign_up()
    plan = await inventory(user, [("C:\\", 100), ("D:\\", 300)])
    c, d = plan["mount_points"]
    migration = (await user.migration(plan["workload"], plan["target"], [c]))["id"]
    await user.call("PATCH", path(migration), 200, json={"selected_mount_points": [c, d]})
    await user.call("POST", path(migration, "run"), 202)
    await user.call("POST", path(migration, "cancel"), 200)
    await user.call("POST", path(migration, "run"), 202)
    assert (await finished(user, migration))["state"] == "success"

    events = await history(user, migration)
    owner = events[0]["actor"]
    assert isinstance(owner, int)
    assert [(e["kind"], e["actor"]) for e in events] == [
        ("created", owner),
        ("updated", owner),
        ("run_requested", owner),
        ("started", None),
        ("cancelled", owner),
        ("run_requested", owner),
        ("started", None),
        ("volume_copied", None),
        ("volume_copied", None),
        ("succeeded", None),
    ]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert all(e["migration"] == migration for e in events)
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    assert events[0]["detail"] == {
        "source": plan["workload"],
        "migration_target": plan["target"],
        "selected_mount_points": [c],
    }
    assert events[1]["detail"] == {"selected_mount_points": [c, d]}
    assert events[7]["detail"] == {"mount_point": c, "name": "C:\\", "size": 100}
    assert events[8]["detail"] == {"mount_point": d, "name": "D:\\", "size": 300}
    assert events[9]["detail"] == {"migration_target": plan["target"]}


async def test_the_history_is_paged_ordered_and_filtered_by_kind(make_client: MakeClient) -> None:
    user = await User(await make_client(SLOW), "alice").sign_up()
    plan = await user.plan()
    migration = plan["migration"]
    for _ in range(3):
        await user.call("POST", path(migration, "run"), 202)
        await user.call("POST", path(migration, "cancel"), 200)
    everything = await history(user, migration, "?limit=1000")
    assert len(everything) == 1 + 3 * 3

    page = await user.call("GET", path(migration, "events") + "?limit=4&offset=4", 200)
    assert page["count"] == 10 and page["results"] == everything[4:8]
    assert page["next"].endswith("limit=4&offset=8") and page["previous"].endswith("limit=4&offset=0")
    newest = await user.call("GET", path(migration, "events") + "?ordering=-id&limit=2", 200)
    assert newest["results"] == everything[::-1][:2]
    cancelled = await user.call("GET", path(migration, "events") + "?kind=cancelled", 200)
    assert cancelled["count"] == 3 and [e["kind"] for e in cancelled["results"]] == ["cancelled"] * 3
    for bad in ("?kind=exploded", "?limit=1001", "?ordering=at", "?offset=-1"):
        body = await user.call("GET", path(migration, "events") + bad, 400)
        assert body["errors"], bad


async def test_deleting_a_migration_deletes_its_history(make_client: MakeClient) -> None:
    user = await User(await make_client(SLOW), "alice").sign_up()
    migration = (await user.plan())["migration"]
    assert len(await history(user, migration)) == 1
    await user.call("DELETE", path(migration), 204)
    await user.call("GET", path(migration, "events"), 404)


# --- the live stream -----------------------------------------------------------------


class Sse:
    """A reader of one text/event-stream answer: messages as dicts."""

    def __init__(self, response: ClientResponse) -> None:
        self.response = response

    async def next(self) -> dict[str, Any]:
        message: dict[str, Any] = {}
        async with asyncio.timeout(PATIENCE):
            while True:
                line = (await self.response.content.readline()).decode()
                if not line:
                    raise EOFError("the stream ended")
                line = line.rstrip("\n")
                if not line:
                    if message:
                        return message
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "":
                    message["comment"] = value
                elif name == "data":
                    message["data"] = json.loads(value)
                else:
                    message[name] = value

    async def events_until(self, done: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Messages up to and including the first that `done` accepts."""
        seen = []
        while True:
            message = await self.next()
            seen.append(message)
            if done(message):
                return seen

    def close(self) -> None:
        self.response.close()


async def open_stream(user: User, last_event_id: int | str | None = None) -> Sse:
    headers = {"Authorization": f"Bearer {user.access}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    response = await user.client.get(STREAM, headers=headers)
    assert response.status == 200, await response.text()
    assert response.content_type == "text/event-stream"
    return Sse(response)


def events_only(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["data"] for m in messages if "data" in m and m.get("event") != "progress"]


def is_event(kind: str, migration: int | None = None) -> Callable[[dict[str, Any]], bool]:
    def check(message: dict[str, Any]) -> bool:
        data = message.get("data") or {}
        return message.get("event") == kind and (migration is None or data.get("migration") == migration)

    return check


async def test_a_runs_events_arrive_in_order_with_its_progress(make_client: MakeClient) -> None:
    user = await User(await make_client(QUICK), "alice").sign_up()
    stream = await open_stream(user)
    migration = (await user.plan())["migration"]
    await user.call("POST", path(migration, "run"), 202)
    messages = await stream.events_until(is_event("succeeded", migration))
    stream.close()

    assert events_only(messages) == await history(user, migration)
    assert [e["kind"] for e in events_only(messages)] == [
        "created",
        "run_requested",
        "started",
        "volume_copied",
        "volume_copied",
        "succeeded",
    ]
    for message in messages:
        if "data" in message and message["event"] != "progress":
            assert message["id"] == str(message["data"]["id"]) and message["event"] == message["data"]["kind"]
    # Ids never go down, and a progress message's id is the last event's before it.
    ids = [int(m["id"]) for m in messages if "id" in m]
    assert ids == sorted(ids)
    progress = [m["data"] for m in messages if m.get("event") == "progress"]
    assert progress, "no progress message while the run copied"
    assert all(p["migration"] == migration and p["state"] == "running" for p in progress)
    assert [p["progress"] for p in progress] == sorted(p["progress"] for p in progress)
    assert all(p["bytes_copied"] == sum(v["copied"] for v in p["volumes"]) for p in progress)


async def test_reconnecting_with_last_event_id_delivers_exactly_the_missed_events(make_client: MakeClient) -> None:
    user = await User(await make_client(QUICK), "alice").sign_up()
    plan = await user.plan()
    first = await open_stream(user)
    await user.call("POST", path(plan["migration"], "run"), 202)
    received = await first.events_until(is_event("started"))
    last_id = received[-1]["id"]
    first.close()  # the connection drops

    # Meanwhile: the run ends, and a second migration is made and run.
    assert (await finished(user, plan["migration"]))["state"] == "success"
    credentials = await user.credentials("second")
    c = (await user.mount_point("C:\\", 10))["id"]
    workload = await user.workload("10.0.0.2", credentials["id"], [c])
    target = await user.target(credentials["id"])
    second = (await user.migration(workload["id"], target["id"], [c]))["id"]
    missed = [e for e in await history(user, plan["migration"]) + await history(user, second) if e["id"] > int(last_id)]
    assert [e["kind"] for e in missed] == ["volume_copied", "volume_copied", "succeeded", "created"]

    again = await open_stream(user, last_id)
    replayed = await again.events_until(is_event("created", second))
    assert events_only(replayed) == missed
    # Then live, and nothing twice.
    await user.call("POST", path(second, "run"), 202)
    live = await again.events_until(is_event("succeeded", second))
    again.close()
    ids = [e["id"] for e in events_only(replayed + live)]
    assert len(ids) == len(set(ids)) and ids == sorted(ids)
    assert [e["kind"] for e in events_only(live)] == ["run_requested", "started", "volume_copied", "succeeded"]


async def test_a_progress_message_id_resumes_without_losing_or_repeating(make_client: MakeClient) -> None:
    user = await User(await make_client(3.0), "alice").sign_up()
    # Open before the plan, so that the stream surely has the migration's whole
    # history (a stream opened after it may start after its first events).
    first = await open_stream(user)
    migration = (await user.plan())["migration"]
    await user.call("POST", path(migration, "run"), 202)
    messages = await first.events_until(lambda m: m.get("event") == "progress" and m["data"]["progress"] > 0)
    resume_at = messages[-1]["id"]
    first.close()
    again = await open_stream(user, resume_at)
    later = await again.events_until(is_event("succeeded", migration))
    again.close()
    before = {e["id"] for e in events_only(messages)}
    after = [e["id"] for e in events_only(later)]
    assert not before & set(after)
    assert sorted(before | set(after)) == [e["id"] for e in await history(user, migration)]


async def test_a_stream_never_carries_another_users_migrations(make_client: MakeClient) -> None:
    client = await make_client(QUICK)
    alice, bob = await User(client, "alice").sign_up(), await User(client, "bob").sign_up()
    bobs_stream = await open_stream(bob)
    alices_stream = await open_stream(alice)
    migration = (await alice.plan())["migration"]
    await alice.call("POST", path(migration, "run"), 202)
    await alices_stream.events_until(is_event("succeeded", migration))
    alices_stream.close()
    # Bob's own migration is the first thing his stream carries.
    bobs = (await bob.plan(ip="10.0.0.9"))["migration"]
    messages = await bobs_stream.events_until(lambda m: "data" in m)
    bobs_stream.close()
    assert [m.get("event") for m in messages if "data" in m] == ["created"]
    assert messages[-1]["data"]["migration"] == bobs


async def test_a_quiet_stream_gets_a_comment_line_to_keep_it_open(make_client: MakeClient) -> None:
    user = await User(await make_client(SLOW, keep_alive=0.2), "alice").sign_up()
    stream = await open_stream(user)
    assert await stream.next() == {"comment": "keep-alive"}
    assert await stream.next() == {"comment": "keep-alive"}
    stream.close()


async def test_the_stream_needs_a_token_in_the_header_and_a_numeric_last_event_id(make_client: MakeClient) -> None:
    client = await make_client(SLOW)
    user = await User(client, "alice").sign_up()
    answer = await client.get(STREAM)
    assert answer.status == 401 and "detail" in await answer.json()
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    # Empty, not a number, not ASCII digits, signed, a fraction, too large: each a 400 saying what to send.
    for bad in ("", "x1", "\u00b2", "-1", "+1", "1.5", "1e3", "0x10", str(2**63), "9" * 30):
        headers = {"Authorization": f"Bearer {user.access}", "Last-Event-ID": bad}
        answer = await client.get(STREAM, headers=headers)
        assert answer.status == 400, (bad, answer.status)
        assert (await answer.json())["errors"] == {"Last-Event-ID": [BAD_LAST_EVENT_ID]}, bad


async def test_a_client_that_stops_reading_is_dropped_and_the_others_go_on(make_client: MakeClient) -> None:
    """A raw socket that sends its request and never reads: once what the
    service has written for it fills the connection, it is disconnected and
    forgotten, while a reading client receives every event, exactly once and
    in order, and goes on. A reader slower than the burst (a busy machine)
    may be dropped too: as a browser's EventSource does, it then reconnects
    with the id of the last message it got, and misses nothing."""
    # The burst overflows a queue four times over.
    client = await make_client(SLOW, queue=2 * PAGE)
    user = await User(client, "alice").sign_up()
    migration = (await user.plan())["migration"]
    hub = client.app[HUB]
    reader = await open_stream(user)
    silent = socket.socket()
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    silent.connect((client.host, client.port))
    silent.sendall(f"GET {STREAM} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {user.access}\r\n\r\n".encode())
    async with asyncio.timeout(PATIENCE):
        while hub.open_streams < 2:
            await asyncio.sleep(0.01)

    # About 8 MB of events at once, straight into storage as any instance may write them.
    storage = client.app[SERVICES].storage
    owner = (await history(user, migration))[0]["actor"]
    reason = {"reason": "x" * 2000}
    burst: dict[str, int] = {}
    received: list[dict[str, Any]] = []

    async def read_as_a_browser() -> Sse:
        """Up to the burst's last event: the stream it came by."""
        stream = reader
        while not received or received[-1]["id"] != burst.get("last"):
            try:
                received.extend(events_only([await stream.next()]))
            except (EOFError, ClientPayloadError):
                stream.close()
                stream = await open_stream(user, received[-1]["id"] if received else None)
        return stream

    reading = asyncio.create_task(read_as_a_browser())
    with storage.unit_of_work() as uow:
        first = uow.events.append(
            core.Event(owner, migration, core.EventKind.FAILED, datetime.now(timezone.utc), reason)
        )
        for _ in range(3999):
            uow.events.append(core.Event(owner, migration, core.EventKind.FAILED, datetime.now(timezone.utc), reason))
        uow.commit()
    burst["last"] = core.last_event_id(storage)
    live = await reading
    async with asyncio.timeout(PATIENCE):
        while hub.open_streams > 1:  # the reader's, and nothing kept for the silent one
            await asyncio.sleep(0.05)
    # The service ended the silent client's connection: what it holds, then nothing.
    silent.setblocking(False)
    async with asyncio.timeout(PATIENCE):
        with contextlib.suppress(ConnectionResetError):
            while await asyncio.get_running_loop().sock_recv(silent, 65536):
                pass
    silent.close()

    assert [e["id"] for e in received if e["id"] >= first.id] == list(range(first.id, burst["last"] + 1))
    await user.call("POST", path(migration, "run"), 202)
    await live.events_until(is_event("started", migration))
    live.close()


async def test_a_stream_sees_what_another_instance_on_the_same_database_does(
    make_client: MakeClient, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    here = await make_client(QUICK, database)
    there = await make_client(QUICK, database)
    watcher = await User(here, "alice").sign_up()
    actor = User(there, "alice")
    actor.access = watcher.access  # one database, one key: the token is good on both
    stream = await open_stream(watcher)
    migration = (await actor.plan())["migration"]
    await actor.call("POST", path(migration, "run"), 202)
    messages = await stream.events_until(is_event("succeeded", migration))
    stream.close()
    assert [e["kind"] for e in events_only(messages)] == [
        "created",
        "run_requested",
        "started",
        "volume_copied",
        "volume_copied",
        "succeeded",
    ]


async def test_open_streams_end_when_the_service_stops() -> None:
    """Served as `serve` serves it (handlers are not cancelled when a client
    goes): stopping ends the streams at once instead of waiting for them."""
    services = bootstrap(
        Settings(storage="memory://", run_seconds=SLOW, secret_key=TEST_KEY), hasher=ScryptHasher(n=2**4)
    )
    runner = web.AppRunner(create_app(services, streams=StreamOptions(keep_alive=60.0)), **server_options())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}{API}"
    async with ClientSession() as session:
        account = {"username": "alice", "password": PASSWORD}
        assert (await session.post(f"{base}/auth/", json=account)).status == 201
        access = (await (await session.post(f"{base}/token/", json=account)).json())["access"]
        response = await session.get(f"{base}/events/stream/", headers={"Authorization": f"Bearer {access}"})
        assert response.status == 200
        async with asyncio.timeout(10):  # AppRunner would wait 60 s for a handler
            await runner.cleanup()
            assert await response.content.read() == b""


async def test_a_stream_that_joins_while_the_idle_poller_reads_misses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no stream open the poller only keeps its cursor up with storage;
    a stream joining during that read must still get what follows."""
    services = bootstrap(Settings(storage="memory://", secret_key=TEST_KEY), hasher=ScryptHasher(n=2**4))
    storage = services.storage
    with storage.unit_of_work() as uow:
        owner = uow.users.add(core.User("alice", "hash")).id
        uow.commit()
    hub = EventHub(storage, StreamOptions(poll=3600.0))  # rounds driven by the test
    await hub.start()
    reading, release = threading.Event(), threading.Event()
    real = core.last_event_id

    def held(store: Storage) -> int:
        reading.set()
        release.wait(PATIENCE)
        return real(store)

    monkeypatch.setattr(core, "last_event_id", held)
    idle_round = asyncio.create_task(hub.poll())
    assert await asyncio.to_thread(reading.wait, PATIENCE)
    stream = hub.subscribe(owner)
    credentials = core.create_credentials(storage, owner, username="admin", password="pw")
    c = core.create_mount_point(storage, owner, name="C:\\", size=1)
    workload = core.create_workload(
        storage, owner, ip="10.0.0.1", credentials_id=credentials.id, mount_point_ids=[c.id]
    )
    target = core.create_migration_target(storage, owner, cloud_type="aws", cloud_credentials_id=credentials.id)
    migration = core.create_migration(
        storage,
        owner,
        clock=services.clock,
        source_id=workload.id,
        migration_target_id=target.id,
        selected_mount_point_ids=[c.id],
    )
    release.set()
    await idle_round
    monkeypatch.undo()
    await hub.poll()
    queued = stream.queue.get_nowait()
    assert queued is not None
    event_id, message = queued
    assert event_id == 1 and message.startswith(b"id: 1\nevent: created\n")
    assert f'"migration":{migration.id}'.encode() in message
    await hub.stop()
    storage.close()


async def test_progress_of_more_runs_than_a_queue_holds_keeps_the_stream() -> None:
    """Progress is kept per migration, not queued: a user with more runs in
    progress than a stream's queue holds is not dropped, each run's latest
    progress is written once, and its id is that of the last event written
    before it, so resuming from it repeats no event."""
    from adapters.memory import MemoryStorage
    from entrypoints.http.stream import _gather

    hub = EventHub(MemoryStorage(), StreamOptions(queue=10))
    stream = hub.subscribe(7)
    runs = 25  # more than the queue holds

    def states(progress: int) -> list[tuple[int, core.RunState]]:
        return [
            (7, core.RunState(m, core.MigrationState.RUNNING, progress, None, None, ()))
            for m in range(1, runs + 1)
        ]

    hub._fan_out_progress(states(10), {7})
    stream.offer(41, b"id: 41\nevent: started\ndata: {}\n\n")
    hub._fan_out_progress(states(20), {7})  # replaces the messages not yet written
    assert not stream.dropped
    first = stream.queue.get_nowait()
    assert first is not None
    written, ended = _gather(stream, first)
    assert not ended and stream.queue.qsize() <= 1
    messages = written.decode().split("\n\n")[:-1]
    assert messages[0].startswith("id: 41\nevent: started")
    progress = [m for m in messages if "event: progress" in m]
    assert len(progress) == runs
    assert all(m.startswith("id: 41\n") and '"progress":20' in m for m in progress)
