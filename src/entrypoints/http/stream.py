"""The live stream: Server-Sent Events of the user's migrations.

One poller per app reads what storage holds, so a stream shows what any
instance sharing the database did: every `poll` seconds it fetches the events
after the last id it has seen (of every owner, one query), and every
`progress` seconds the state of the running migrations of the owners with a
stream open. Storage is read on a thread of the poller's own, never on the
event loop, and not at all while no stream is open. The poller fans each
message out to the queues of the streams of its owner; a stream's handler
writes its queue to the client.

Message ids: an event's message has the event's id. A progress message
(`event: progress`) has the id of the last event the stream has been given,
so that `Last-Event-ID` always means "every event of mine up to here has
arrived": a client that reconnects with it gets exactly the events it missed
(read from storage), then the live ones, none twice. Event ids become visible
in order (the storage port promises it), so the poller's cursor never passes
an event that has yet to appear.

A client that stops reading is dropped: its queue is bounded, and a write
that cannot finish within `write_timeout` ends the connection; either way
nothing more is kept for it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import attrs
import orjson
from aiohttp import web
from aiohttp_apigami import docs

import migration_core as core
from migration_core import Event, InvalidInput, RunState, Storage

from . import views
from .openapi import answers
from .requests import USER
from .routes import Route
from .schemas import MAX_ID

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

STREAM_PATH = "/api/v1/events/stream/"
PAGE = 500  # events read from storage at once
BATCH_BYTES = 64 * 1024  # what a stream's writer gathers for one write


@attrs.frozen
class StreamOptions:
    keep_alive: float = 15.0  # seconds of silence before a comment line
    poll: float = 0.25  # seconds between reads of new events
    progress: float = 1.0  # seconds between reads of progress: at most one message a second per migration
    queue: int = 1000  # events a stream may have waiting before it is dropped
    write_timeout: float = 10.0  # seconds a write may take before the stream is dropped


# A queued item: an event's id and message; (0, b"") wakes the handler for progress.
Queued = tuple[int, bytes]
PROGRESS_WAITS: Queued = (0, b"")


class Stream:
    """One client's stream: its owner, its queue of events, the latest
    progress of each of its runs not yet written, and the id of the last
    event it has been given (or was told the client has).

    Events wait in a bounded queue: a client that does not read them is
    dropped. Progress is not queued but kept per migration, the newer message
    replacing the older, so a user with thousands of runs costs a message per
    run at most, however slowly the client reads."""

    def __init__(self, owner_id: int, start: int, seen: int | None, limit: int) -> None:
        self.owner_id = owner_id
        self.start = start  # the poller's cursor when it joined: later events come by the queue
        self.seen = seen  # the client's Last-Event-ID: it has every event up to there
        self.last_id = start if seen is None else max(start, seen)
        self.written = self.last_id  # the last event id the client has been sent
        self.fresh = True  # owes the client the progress of the runs in progress
        self.dropped = False
        self.queue: asyncio.Queue[Queued | None] = asyncio.Queue(limit)
        self.progress: dict[int, bytes] = {}  # migration id -> its latest progress message

    def offer(self, event_id: int, message: bytes) -> None:
        if self.dropped:
            return
        try:
            self.queue.put_nowait((event_id, message))
        except asyncio.QueueFull:
            self.end(dropped=True)

    def offer_progress(self, migration_id: int, body: bytes) -> None:
        if self.dropped:
            return
        if not self.progress:
            self.offer(*PROGRESS_WAITS)
        self.progress[migration_id] = body

    def end(self, *, dropped: bool = False) -> None:
        """Stop the stream: what waits is let go, and its handler returns."""
        self.dropped = self.dropped or dropped
        self.progress.clear()
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


def event_message(event: Event) -> bytes:
    data = orjson.dumps(views.event_view(event))
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.id, event.kind.value.encode(), data)


def progress_body(state: RunState) -> bytes:
    """A progress message without its id line: the id of the last event the
    stream has written before it, known when it is written."""
    data = orjson.dumps({"migration": state.migration_id, **views.run_state_view(state)})
    return b"event: progress\ndata: %s\n\n" % data


KEEP_ALIVE = b": keep-alive\n\n"


class EventHub:
    """The app's one poller, and the streams it feeds."""

    def __init__(self, storage: Storage, options: StreamOptions) -> None:
        self.options = options
        self._storage = storage
        self._streams: dict[int, set[Stream]] = {}
        self._cursor = 0  # every event up to this id has been fanned out
        self._sent: dict[int, int] = {}  # migration id -> the progress last sent
        self._progressed = 0.0  # monotonic time of the last progress read
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="event-stream")
        self._cursor = await self.read(core.last_event_id, self._storage)
        self._task = asyncio.create_task(self._poll_forever(), name="event-stream-poller")

    async def stop(self) -> None:
        self.end_streams()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def end_streams(self) -> None:
        for streams in self._streams.values():
            for stream in streams:
                stream.end()

    @property
    def open_streams(self) -> int:
        return sum(len(streams) for streams in self._streams.values())

    def subscribe(self, owner_id: int, seen: int | None = None) -> Stream:
        """A new stream of the owner's messages from now on; with `seen`, the
        client has every event up to that id (see `missed`)."""
        stream = Stream(owner_id, self._cursor, seen, self.options.queue)
        self._streams.setdefault(owner_id, set()).add(stream)
        return stream

    def unsubscribe(self, stream: Stream) -> None:
        streams = self._streams.get(stream.owner_id, set())
        streams.discard(stream)
        if not streams:
            self._streams.pop(stream.owner_id, None)

    async def read(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A storage read on the poller's thread, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: function(*args, **kwargs))

    async def missed(self, stream: Stream) -> AsyncIterator[Event]:
        """The owner's events the client has not seen, up to where the stream's
        queue begins."""
        after = stream.start if stream.seen is None else stream.seen
        while after < stream.start:
            page = await self.read(core.events_after, self._storage, stream.owner_id, after, PAGE)
            for event in page:
                if event.id > stream.start:
                    return
                yield event
            if len(page) < PAGE:
                return
            after = page[-1].id

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.options.poll)
            try:
                await self.poll()
            except Exception:
                if not self._failing:
                    log.exception("the event stream cannot read storage; trying again meanwhile")
                self._failing = True
            else:
                if self._failing:
                    log.warning("the event stream reads storage again")
                self._failing = False

    async def poll(self) -> None:
        """One round: new events to their streams, and progress when due."""
        if not self._streams:
            # Nobody listens: only keep up, so that a new stream starts from now;
            # unless one joined meanwhile, which must get what came after its start.
            latest = await self.read(core.last_event_id, self._storage)
            if not self._streams:
                self._cursor = latest
                self._sent.clear()
            return
        while True:
            events = await self.read(core.events_after, self._storage, None, self._cursor, PAGE)
            for event in events:
                message = event_message(event)
                for stream in self._streams.get(event.owner_id, ()):
                    if event.id > stream.last_id:
                        stream.offer(event.id, message)
                        stream.last_id = event.id
                self._cursor = event.id
            if len(events) < PAGE:
                break
        now = time.monotonic()
        if now - self._progressed >= self.options.progress:
            self._progressed = now
            owners = set(self._streams)
            states = await self.read(core.running_states, self._storage, owners)
            self._fan_out_progress(states, owners)

    def _fan_out_progress(self, states: list[tuple[int, RunState]], owners: set[int]) -> None:
        sent: dict[int, int] = {}
        for owner_id, state in states:
            changed = self._sent.get(state.migration_id) != state.progress
            sent[state.migration_id] = state.progress
            body: bytes | None = None
            for stream in self._streams.get(owner_id, ()):
                if changed or stream.fresh:
                    body = body or progress_body(state)
                    stream.offer_progress(state.migration_id, body)
        for owner_id in owners:
            for stream in self._streams.get(owner_id, ()):
                stream.fresh = False
        self._sent = sent


HUB = web.AppKey("event_hub", EventHub)


_ID_DIGITS = re.compile(r"[0-9]{1,19}")
BAD_LAST_EVENT_ID = (
    "Send the id of the last message received (a whole number from 0 to 2**63-1), or no Last-Event-ID at all."
)


def _last_event_id(request: web.Request) -> int | None:
    """The id the client says it has every event up to; None without the
    header. Any other value (empty too) is refused: guessing what it means
    could skip events or send them twice."""
    value = request.headers.get("Last-Event-ID")
    if value is None:
        return None
    if not _ID_DIGITS.fullmatch(value) or int(value) > MAX_ID:
        raise InvalidInput({"Last-Event-ID": [BAD_LAST_EVENT_ID]})
    return int(value)


@docs(
    tags=["events"],
    summary="The live stream of your migrations' events and progress",
    description="Server-Sent Events (`text/event-stream`), for as long as the connection"
    " stays open. Each event of your migrations (as in a migration's history) is a"
    " message named by its kind, whose data is the event (`MigrationEvent`) and whose id is"
    " the event's. While migrations run, `event: progress` messages carry their state"
    " (`MigrationRunState` plus `migration`, its id): at most one a second per migration,"
    " when its progress changes, and once for each run in progress when the stream opens;"
    " their id is that of the last event sent before them. Reconnect with"
    " `Last-Event-ID: <the last id received>` to get exactly the events missed meanwhile."
    " A comment line (`: keep-alive`) comes after 15 seconds without a message. Events of"
    " every instance sharing the database arrive, within a fraction of a second. A client"
    " that stops reading is disconnected.",
    operation_id="streamEvents",
    parameters=[
        {
            "in": "header",
            "name": "Last-Event-ID",
            "required": False,
            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID},
            "description": "The id of the last message received on an earlier connection. Any other"
            " value, an empty one included, is refused with 400; leave the header out to start afresh.",
        }
    ],
    responses={
        200: {
            "description": "The stream: `id:`, `event:` and `data:` (JSON) lines per message.",
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string"},
                    "example": 'id: 42\nevent: volume_copied\ndata: {"id":42,"migration":7,'
                    '"at":"2030-01-01T00:00:10+00:00","kind":"volume_copied","detail":{"mount_point"'
                    ':3,"name":"C:\\\\","size":1024},"actor":null}\n\n',
                }
            },
        },
        **answers({}, 400, 401),
    },
)
async def event_stream(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    stream = hub.subscribe(request[USER].id, _last_event_id(request))
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    try:
        await response.prepare(request)
        async for event in hub.missed(stream):
            await _write(hub, response, event_message(event))
        while True:
            try:
                async with asyncio.timeout(hub.options.keep_alive):
                    item = await stream.queue.get()
            except TimeoutError:
                await _write(hub, response, KEEP_ALIVE)
                continue
            if item is None:
                break
            gathered, ended = _gather(stream, item)
            await _write(hub, response, gathered)
            if ended:
                break
    except (ConnectionError, TimeoutError):
        stream.dropped = True
    finally:
        hub.unsubscribe(stream)
    if stream.dropped and request.transport is not None:
        # Nothing more reaches a client that does not read: aiohttp would otherwise
        # wait on it to finish the response.
        request.transport.abort()
    return response


def _gather(stream: Stream, first: Queued) -> tuple[bytes, bool]:
    """`first` and the events waiting behind it, then the progress waiting,
    for one write (one system call keeps the loop free), and whether the
    stream ended behind them. A progress message has the id of the last
    event written before it, so resuming from it repeats no event."""
    parts: list[bytes] = []
    size, item, ended = 0, first, False
    while True:
        event_id, message = item
        if message:
            parts.append(message)
            size += len(message)
            stream.written = max(stream.written, event_id)
        if size >= BATCH_BYTES or stream.queue.empty():
            break
        following = stream.queue.get_nowait()
        if following is None:
            ended = True
            break
        item = following
    waiting, stream.progress = stream.progress, {}
    parts.extend(b"id: %d\n" % stream.written + body for body in waiting.values())
    return b"".join(parts), ended


async def _write(hub: EventHub, response: web.StreamResponse, message: bytes) -> None:
    async with asyncio.timeout(hub.options.write_timeout):
        await response.write(message)


def routes() -> list[Route]:
    return [Route("GET", STREAM_PATH, event_stream)]


async def hub_lifetime(app: web.Application) -> AsyncIterator[None]:
    """The poller starts with the app and stops before storage closes."""
    hub = app[HUB]
    await hub.start()
    try:
        yield
    finally:
        await hub.stop()


async def end_streams(app: web.Application) -> None:
    """On shutdown, before the server waits for handlers: streams end at once."""
    app[HUB].end_streams()
