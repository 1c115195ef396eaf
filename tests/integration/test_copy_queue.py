"""The durable copy queue (SPEC 2.10) against real storage: memory, SQLite
and PostgreSQL. Real runs (targets with a host) are queued in the
migrations' rows and taken oldest first, a bounded number per instance and per
machine; two takers never take one copy; a queued copy belongs to no
instance; a swap entered holds a cancel back and a cancel answered first
refuses the swap; the asyncio runner copies at most `max_copies` at once,
stops a copy cancelled through another instance, and leaves what it did not
take to the next instance; the blocking runner takes its own copy.

No machine is contacted: the copy is `FakeCopier`'s, a handle that waits
until the test releases it, reports, and passes the swap gate around a
pretend swap of each volume, recording what it did. Every wait is on a
condition, bounded by PATIENCE (a bound, never an expectation)."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg
import pytest

import migration_core as core
from adapters.async_runner import AsyncRunner
from adapters.carrying import StorageSwapGate
from adapters.clock import SystemClock
from adapters.instances import Instance
from adapters.runners import BlockingRunner
from adapters.secrets import SecretBox
from adapters.sqlite import SqliteStorage
from entrypoints.bootstrap import open_storage as open_url
from migration_core import MigrationState, Phase, Storage, User
from migration_core import runs as core_runs
from migration_core.machines import CopyEnd, CopyJob, CopyProgress, SwapGate, VolumeCopied
from migration_core.runs import RunRef, enter_swap, leave_swap, start_run, take_copies

from .storages import ALL_STORAGES, SQL_STORAGES, open_storage
from .test_async_runner import ElsewhereRunner, SteppingClock
from .test_schema_steps import leave_at_version

SECRET = b"copy-queue-suite-secret-of-32-by"
PATIENCE = 20.0  # real seconds: a bound on every wait, never an expectation
TICK = 0.05  # the asyncio runner's tick in these tests


def wait_for(check: Callable[[], bool], what: str, patience: float = PATIENCE) -> None:
    deadline = time.monotonic() + patience
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(0.005)


async def eventually(check: Callable[[], bool], what: str, patience: float = PATIENCE) -> None:
    """`wait_for` on the event loop: `check` runs in a thread (it may read storage)."""
    deadline = time.monotonic() + patience
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        await asyncio.sleep(0.01)


# --- a copier that contacts no machine ------------------------------------------


class FakeCopy:
    """One pretend real copy: it reports a first byte, waits until the test
    releases it (or it is cancelled), then for each volume passes the gate,
    "swaps" it and leaves the gate; it records what it did."""

    def __init__(
        self, copier: FakeCopier, job: CopyJob, changed: Callable[[], None], gate: SwapGate | None
    ) -> None:
        self.job = job
        self.gate = gate
        self._copier = copier
        self._changed = changed
        self.released = threading.Event()
        self.cancelled = threading.Event()
        # Cleared by a test: a cancelled copy then winds down (as a real one
        # stops its remote processes) until the test sets it.
        self.wound_down = threading.Event()
        self.wound_down.set()
        self._wake = threading.Event()
        self.swapped: list[int] = []
        self.refused: int | None = None  # the volume whose swap the gate refused
        self._lock = threading.Lock()
        self._progress: CopyProgress | None = None
        self._end: CopyEnd | None = None
        self._thread = threading.Thread(target=self._copy, name=f"fake-copy-{job.migration_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def release(self) -> None:
        self.released.set()
        self._wake.set()

    def _copy(self) -> None:
        try:
            self._report(CopyProgress(self.job.first, partial=1))
            if not self._wake.wait(PATIENCE):
                self._finish(CopyEnd("the test never released this copy"))
                return
            if self.cancelled.is_set():
                self.wound_down.wait(PATIENCE)
                self._finish(CopyEnd("cancelled"))
                return
            done: list[VolumeCopied] = []
            for index in range(self.job.first, len(self.job.volumes)):
                if self.gate is not None and not self.gate.enter(index):
                    self.refused = index
                    self._finish(CopyEnd("the run ended before the swap"))
                    return
                try:
                    self.swapped.append(index)
                finally:
                    if self.gate is not None:
                        self.gate.leave(index)
                done.append(VolumeCopied(index, self.job.volumes[index].estimate, 1))
                self._report(CopyProgress(index + 1, done=tuple(done)))
            self._finish(CopyEnd())
        except BaseException as exc:  # noqa: BLE001 - a failing fake says so as its end
            self._finish(CopyEnd(f"the fake copy failed: {exc!r}"))

    def _report(self, progress: CopyProgress) -> None:
        with self._lock:
            self._progress = progress
        self._changed()

    def _finish(self, end: CopyEnd) -> None:
        with self._lock:
            if self._end is not None:
                return
            self._end = end
        self._copier.ended(self)
        self._changed()

    # -- CopyHandle --

    def progress(self) -> CopyProgress | None:
        with self._lock:
            return self._progress

    def ended(self) -> CopyEnd | None:
        with self._lock:
            return self._end

    def next_due(self) -> float | None:
        return None  # it always calls `changed`

    def cancel(self) -> None:
        self.cancelled.set()
        self._wake.set()
        self._thread.join(PATIENCE)


class FakeCopier:
    """Satisfies `migration_core.Copier` for real jobs only: counts the copies
    running at once and keeps every copy it started."""

    def __init__(self, *, auto_release: bool = False) -> None:
        self._auto_release = auto_release
        self._lock = threading.Lock()
        self.copies: list[FakeCopy] = []
        self.running = 0
        self.most = 0  # the most copies running at once

    def start_copy(self, job: CopyJob, changed: Callable[[], None], gate: SwapGate | None = None) -> FakeCopy:
        assert job.host is not None, "only real jobs reach the fake copier"
        copy = FakeCopy(self, job, changed, gate)
        with self._lock:
            self.copies.append(copy)
            self.running += 1
            self.most = max(self.most, self.running)
        if self._auto_release:
            copy.release()
        copy.start()
        return copy

    def ended(self, _copy: FakeCopy) -> None:
        with self._lock:
            self.running -= 1

    def of(self, migration_id: int) -> list[FakeCopy]:
        with self._lock:
            return [copy for copy in self.copies if copy.job.migration_id == migration_id]

    def started(self) -> list[int]:
        with self._lock:
            return [copy.job.migration_id for copy in self.copies]

    def has_started(self, count: int) -> Callable[[], bool]:
        return lambda: len(self.started()) == count

    def live(self) -> list[FakeCopy]:
        with self._lock:
            return [copy for copy in self.copies if copy.ended() is None]


# --- an inventory of real machines (never contacted) ----------------------------


class Fleet:
    """One owner's Linux machines: hosts to copy onto, and a source per migration."""

    _ips = itertools.count(1)

    def __init__(self, storage: Storage, hosts: int = 1) -> None:
        self.storage = storage
        with storage.unit_of_work() as uow:
            self.owner_id = uow.users.add(User("queue-owner", "not-a-real-hash")).id
            uow.commit()
        self.credentials = core.create_credentials(storage, self.owner_id, username="root", password="pw")
        self.hosts = [self.workload() for _ in range(hosts)]

    def workload(self, *volumes: tuple[str, int]) -> core.Workload:
        number = next(self._ips)
        mount_points = [
            core.create_mount_point(self.storage, self.owner_id, name=name, size=size) for name, size in volumes
        ]
        return core.create_workload(
            self.storage,
            self.owner_id,
            ip=f"10.{number // 60000 % 250}.{number // 250 % 240}.{number % 250 + 1}",
            credentials_id=self.credentials.id,
            mount_point_ids=[mp.id for mp in mount_points],
            os="linux",
        )

    def source(self) -> core.Workload:
        return self.workload(("/", 1000), ("/srv", 500))

    def migration(self, source: core.Workload | None = None, host: core.Workload | None = None) -> core.Migration:
        """A real migration (its target has a host) of every volume of `source` (by default a new one)."""
        source = source or self.source()
        host = host or self.hosts[0]
        target = core.create_migration_target(
            self.storage,
            self.owner_id,
            cloud_type="vsphere",
            cloud_credentials_id=self.credentials.id,
            host_id=host.id,
            root="/landing",
        )
        return core.create_migration(
            self.storage,
            self.owner_id,
            clock=SteppingClock(),
            source_id=source.id,
            migration_target_id=target.id,
            selected_mount_point_ids=list(source.mount_point_ids),
        )

    def get(self, migration_id: int) -> core.Migration:
        return core.get_migration(self.storage, self.owner_id, migration_id)

    def ref(self, migration: core.Migration) -> RunRef:
        return RunRef(self.owner_id, migration.id)

    def queued(self, count: int, clock: core.Clock) -> list[core.Migration]:
        """`count` real runs started (queued) in this order."""
        return [
            start_run(self.storage, clock, self.owner_id, self.migration().id, instance_id="starter")
            for _ in range(count)
        ]


@pytest.fixture(params=ALL_STORAGES)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    store = open_storage(kind, request, tmp_path, SECRET, connections=4)
    yield store
    store.close()


@pytest.fixture
def fleet(storage: Storage) -> Fleet:
    return Fleet(storage, hosts=2)


# --- 1. order, slots, positions, machines ----------------------------------------


def test_the_oldest_copies_are_taken_first_and_the_rest_answer_their_place(fleet: Fleet) -> None:
    clock = SteppingClock()
    started = fleet.queued(6, clock)
    for position, migration in enumerate(started, start=1):
        assert (migration.state, migration.phase, migration.instance_id) == (MigrationState.RUNNING, Phase.QUEUED, None)
        state = core.get_run_state(fleet.storage, fleet.owner_id, migration.id)
        assert (state.phase, state.queue_position) == (Phase.QUEUED, position)
        queued = core.list_events(fleet.storage, fleet.owner_id, migration.id, core.ListQuery()).items[-1]
        assert (queued.kind, queued.detail) == (core.EventKind.QUEUED, {"position": position})

    jobs = take_copies(fleet.storage, "here", room=2)

    assert [job.migration_id for job in jobs] == [m.id for m in started[:2]]
    assert all(job.host is not None and job.host_id == fleet.hosts[0].id for job in jobs)
    for migration in started[:2]:
        taken = fleet.get(migration.id)
        assert (taken.phase, taken.instance_id) == (Phase.COPYING, "here")
        assert taken.carried_by("here") and not taken.carried_by("elsewhere")
        state = core.get_run_state(fleet.storage, fleet.owner_id, migration.id)
        assert (state.phase, state.queue_position) == (Phase.COPYING, None)
    positions = [
        core.get_run_state(fleet.storage, fleet.owner_id, migration.id).queue_position for migration in started[2:]
    ]
    assert positions == [1, 2, 3, 4]
    assert [fleet.get(m.id).phase for m in started[2:]] == [Phase.QUEUED] * 4


def test_a_copy_that_would_crowd_a_machine_is_passed_over_for_one_that_would_not(fleet: Fleet) -> None:
    """per_machine=1: after the oldest copy (source s1, host h1), one from s1
    and one onto h1 wait while a younger one touching neither is taken."""
    clock = SteppingClock()
    h1, h2 = fleet.hosts
    s1, s2, s3 = fleet.source(), fleet.source(), fleet.source()
    planned = [
        fleet.migration(s1, h1),  # taken first
        fleet.migration(s1, h2),  # shares the source
        fleet.migration(s2, h1),  # shares the host
        fleet.migration(s3, h2),  # touches neither
    ]
    started = [start_run(fleet.storage, clock, fleet.owner_id, m.id) for m in planned]

    jobs = take_copies(fleet.storage, "here", room=3, per_machine=1)

    assert [job.migration_id for job in jobs] == [started[0].id, started[3].id]
    assert [(job.source_id, job.host_id) for job in jobs] == [(s1.id, h1.id), (s3.id, h2.id)]
    assert [fleet.get(m.id).phase for m in started] == [Phase.COPYING, Phase.QUEUED, Phase.QUEUED, Phase.COPYING]
    # What an instance already carries counts too: with s1 and h1 busy, nothing fits.
    assert take_copies(fleet.storage, "other", room=2, carrying=[s1.id, h1.id, s3.id, h2.id], per_machine=1) == []
    # Room per machine for two: both waiting copies are taken, oldest first.
    again = take_copies(fleet.storage, "other", room=2, carrying=[s1.id, h1.id], per_machine=2)
    assert [job.migration_id for job in again] == [started[1].id, started[2].id]
    assert core.get_run_state(fleet.storage, fleet.owner_id, started[1].id).queue_position is None


def test_only_takes_that_run_s_copy_alone(fleet: Fleet) -> None:
    clock = SteppingClock()
    first, second = fleet.queued(2, clock)
    jobs = take_copies(fleet.storage, "here", room=1, only=fleet.ref(second))
    assert [job.migration_id for job in jobs] == [second.id]
    assert take_copies(fleet.storage, "there", room=1, only=fleet.ref(second)) == []
    assert fleet.get(first.id).phase is Phase.QUEUED


def test_a_queued_run_cancelled_leaves_the_queue_and_the_others_move_up(fleet: Fleet) -> None:
    clock = SteppingClock()
    first, second, third = fleet.queued(3, clock)
    cancelled = cancel_elsewhere(fleet, clock, fleet.ref(second))
    assert (cancelled.state, cancelled.error, cancelled.phase) == (MigrationState.ERROR, core.CANCELLED, None)
    assert [core.get_run_state(fleet.storage, fleet.owner_id, m.id).queue_position for m in (first, third)] == [1, 2]
    assert [job.migration_id for job in take_copies(fleet.storage, "here", room=3)] == [first.id, third.id]


def test_an_old_copy_s_end_does_not_end_its_run_queued_again(fleet: Fleet) -> None:
    """Taken, cancelled elsewhere and run again (queued) before the old copy
    reports: its reports and its end are not the new run's."""
    clock = SteppingClock()
    ref = taken_run(fleet, clock, "old-carrier")
    cancel_elsewhere(fleet, clock, ref)
    start_run(fleet.storage, clock, fleet.owner_id, ref.migration_id)

    assert core_runs.advance_runs(fleet.storage, clock, {ref: CopyProgress(1, partial=5)}) == set()
    assert core_runs.complete_run(fleet.storage, clock, ref, CopyProgress(2)) is None
    assert core_runs.fail_run(fleet.storage, clock, ref, "the old copy failed", CopyProgress(1)) is None
    again = fleet.get(ref.migration_id)
    assert (again.state, again.phase, again.progress) == (MigrationState.RUNNING, Phase.QUEUED, 0)


def test_a_real_run_the_runner_cannot_take_fails_saying_why(fleet: Fleet) -> None:
    """As a simulated run does: the caller hears why, and the run is not left
    running (queued for good, where nobody may come to take it)."""
    clock = SteppingClock()
    stopped = AsyncRunner(fleet.storage, clock, FakeCopier())  # never started
    migration = fleet.migration()
    with pytest.raises(RuntimeError, match="not running"):
        core.run_migration(fleet.storage, clock, stopped, fleet.owner_id, migration.id)
    failed = fleet.get(migration.id)
    assert (failed.state, failed.phase) == (MigrationState.ERROR, None)
    assert failed.error is not None and failed.error.startswith("The copy could not start")
    with fleet.storage.unit_of_work(write=False) as uow:
        assert not uow.migrations.any_queued()


# --- 2. two takers at once --------------------------------------------------------

QUEUED_AT_ONCE = 40
TAKERS = 8


def test_takers_at_once_never_take_one_copy_twice(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """8 threads, as two instances (on SQLite two storages on one file; on
    PostgreSQL a pool of several connections each), take one copy at a time
    until the queue is empty: each of 40 copies is taken exactly once, by
    the instance storage then says carries it, and no taker waits for good."""
    first = open_storage(kind, request, tmp_path, SECRET, connections=TAKERS)
    second = first if kind == "memory" else open_storage(kind, request, tmp_path, SECRET, connections=TAKERS)
    try:
        fleet = Fleet(first)
        started = fleet.queued(QUEUED_AT_ONCE, SystemClock())
        barrier = threading.Barrier(TAKERS)
        taken: dict[str, list[int]] = {}
        failures: list[BaseException] = []

        def take(number: int) -> None:
            name = f"taker-{number}"
            store = first if number % 2 == 0 else second
            mine: list[int] = []
            try:
                barrier.wait(PATIENCE)
                while jobs := take_copies(store, name, room=1):
                    mine += [job.migration_id for job in jobs]
            except BaseException as exc:  # noqa: BLE001 - every outcome is counted
                failures.append(exc)
            taken[name] = mine

        threads = [threading.Thread(target=take, args=(number,)) for number in range(TAKERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(PATIENCE * 2)
        assert not any(thread.is_alive() for thread in threads), "a taker never came back"
        assert failures == []

        every = sorted(i for ids in taken.values() for i in ids)
        assert every == sorted(m.id for m in started)
        for name, ids in taken.items():
            for migration_id in ids:
                migration = fleet.get(migration_id)
                assert (migration.phase, migration.instance_id) == (Phase.COPYING, name)
        with first.unit_of_work(write=False) as uow:
            assert not uow.migrations.any_queued()
    finally:
        if second is not first:
            second.close()
        first.close()


# --- 3. a queued copy belongs to no instance ----------------------------------------


def test_an_instance_gone_leaves_queued_copies_queued_and_its_own_interrupted(fleet: Fleet) -> None:
    clock = SteppingClock()
    started = fleet.queued(4, clock)
    [gone_job] = take_copies(fleet.storage, "gone", room=1)
    [alive_job] = take_copies(fleet.storage, "alive", room=1)

    interrupted = core.mark_interrupted(fleet.storage, clock, {None, "gone"})

    assert interrupted == [gone_job.migration_id]
    gone = fleet.get(gone_job.migration_id)
    assert (gone.state, gone.error, gone.phase) == (MigrationState.ERROR, core.INTERRUPTED, None)
    alive = fleet.get(alive_job.migration_id)
    assert (alive.state, alive.phase, alive.instance_id) == (MigrationState.RUNNING, Phase.COPYING, "alive")
    waiting = [fleet.get(m.id) for m in started[2:]]
    assert [(m.state, m.phase, m.instance_id) for m in waiting] == [(MigrationState.RUNNING, Phase.QUEUED, None)] * 2
    positions = [core.get_run_state(fleet.storage, fleet.owner_id, m.id).queue_position for m in waiting]
    assert positions == [1, 2]
    # Even when every instance is named (or none), a queued copy waits on.
    assert core.mark_interrupted(fleet.storage, clock) == [alive_job.migration_id]
    assert [fleet.get(m.id).phase for m in waiting] == [Phase.QUEUED] * 2
    # The interrupted one may run again: it is queued behind the others.
    again = start_run(fleet.storage, clock, fleet.owner_id, gone.id)
    assert again.phase is Phase.QUEUED
    assert core.get_run_state(fleet.storage, fleet.owner_id, gone.id).queue_position == 3


# --- 4. the swap gate and cancel --------------------------------------------------


def taken_run(fleet: Fleet, clock: core.Clock, instance_id: str) -> RunRef:
    migration = fleet.migration()
    start_run(fleet.storage, clock, fleet.owner_id, migration.id)
    assert take_copies(fleet.storage, instance_id, room=1, only=fleet.ref(migration))
    return fleet.ref(migration)


def cancel_elsewhere(fleet: Fleet, clock: core.Clock, ref: RunRef) -> core.Migration:
    return core.cancel_run(fleet.storage, clock, ElsewhereRunner(), fleet.owner_id, ref.migration_id)


def test_a_swap_under_way_holds_a_cancel_until_it_is_over(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = SteppingClock()
    ref = taken_run(fleet, clock, "carrier")
    assert enter_swap(fleet.storage, ref, "carrier")
    assert fleet.get(ref.migration_id).swapping

    held = 0
    real_cancel = core_runs._cancel

    def counted(*args: object, **kwargs: object) -> core.Migration:
        nonlocal held
        try:
            return real_cancel(*args, **kwargs)  # type: ignore[arg-type]
        except core_runs.SwapUnderWay:
            held += 1
            raise

    monkeypatch.setattr(core_runs, "_cancel", counted)
    answers: list[core.Migration] = []
    canceller = threading.Thread(target=lambda: answers.append(cancel_elsewhere(fleet, clock, ref)))
    canceller.start()
    wait_for(lambda: held >= 3, "the cancel to meet the swap three times")

    during = fleet.get(ref.migration_id)
    assert (during.state, during.swapping, answers) == (MigrationState.RUNNING, True, [])
    leave_swap(fleet.storage, SteppingClock(), ref)
    canceller.join(PATIENCE)
    assert not canceller.is_alive()
    assert [(m.state, m.error, m.swapping) for m in answers] == [(MigrationState.ERROR, core.CANCELLED, False)]
    # No later volume passes the gate.
    assert not enter_swap(fleet.storage, ref, "carrier")


def test_a_cancel_answered_first_refuses_every_later_swap(fleet: Fleet) -> None:
    clock = SteppingClock()
    ref = taken_run(fleet, clock, "carrier")
    cancelled = cancel_elsewhere(fleet, clock, ref)
    assert (cancelled.state, cancelled.error) == (MigrationState.ERROR, core.CANCELLED)
    assert not enter_swap(fleet.storage, ref, "carrier")
    assert not fleet.get(ref.migration_id).swapping
    leave_swap(fleet.storage, SteppingClock(), ref)  # harmless


def test_only_the_carrier_may_swap_and_a_queued_copy_may_not(fleet: Fleet) -> None:
    clock = SteppingClock()
    ref = taken_run(fleet, clock, "carrier")
    assert not enter_swap(fleet.storage, ref, "another")
    [queued] = fleet.queued(1, clock)
    assert not enter_swap(fleet.storage, fleet.ref(queued), None)
    assert not fleet.get(queued.id).swapping


def test_a_fake_copy_cancelled_before_its_swap_never_swaps(fleet: Fleet) -> None:
    """The gate as a copy meets it: storage's gate refuses the first volume."""
    clock = SteppingClock()
    migration = fleet.migration()
    start_run(fleet.storage, clock, fleet.owner_id, migration.id)
    [job] = take_copies(fleet.storage, "carrier", room=1)
    copier = FakeCopier()
    copy = copier.start_copy(job, lambda: None, StorageSwapGate(fleet.storage, clock, fleet.ref(migration), "carrier"))
    cancel_elsewhere(fleet, clock, fleet.ref(migration))
    copy.release()
    wait_for(lambda: copy.ended() is not None, "the copy to end")
    assert (copy.swapped, copy.refused) == ([], 0)


RACES = 25


def race_once(fleet: Fleet, clock: core.Clock, ref: RunRef, hold: float) -> list[str]:
    """A carrier's swap (held `hold` seconds) and a cancel from another
    thread, at once; what happened, in the order it happened."""
    barrier = threading.Barrier(2)
    order: list[str] = []
    lock = threading.Lock()
    failures: list[BaseException] = []

    def swap() -> None:
        try:
            barrier.wait(PATIENCE)
            if not enter_swap(fleet.storage, ref, "carrier"):
                with lock:
                    order.append("refused")
                return
            with lock:
                order.append("swapped")
            time.sleep(hold)  # a rename takes a moment
            leave_swap(fleet.storage, SteppingClock(), ref)
        except BaseException as exc:  # noqa: BLE001 - every outcome is counted
            failures.append(exc)

    def cancel() -> None:
        try:
            barrier.wait(PATIENCE)
            answered = cancel_elsewhere(fleet, clock, ref)
            assert (answered.state, answered.error) == (MigrationState.ERROR, core.CANCELLED)
            with lock:
                order.append("cancelled")
        except BaseException as exc:  # noqa: BLE001 - every outcome is counted
            failures.append(exc)

    threads = [threading.Thread(target=swap), threading.Thread(target=cancel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE)
    assert failures == [] and not any(thread.is_alive() for thread in threads)
    return order


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_a_swap_and_a_cancel_at_once_never_both_happen_out_of_turn(fleet: Fleet) -> None:
    """Many races of a carrier's swap against a cancel from another thread:
    either the swap ended before the cancel was answered, or the swap was
    refused; never a cancel answered and a swap after it."""
    clock = SystemClock()
    migration = fleet.migration()
    ref = fleet.ref(migration)
    for race in range(RACES):
        start_run(fleet.storage, clock, fleet.owner_id, migration.id)
        assert take_copies(fleet.storage, "carrier", room=1, only=ref)
        order = race_once(fleet, clock, ref, hold=0.001 * (race % 3))
        assert order in (["swapped", "cancelled"], ["cancelled", "refused"], ["refused", "cancelled"]), order
        assert not fleet.get(migration.id).swapping


# --- 5. the asyncio runner -----------------------------------------------------------


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "queue.db"


@pytest.fixture
def sqlite_storage(sqlite_path: Path) -> Iterator[SqliteStorage]:
    store = SqliteStorage(sqlite_path, SECRET)
    yield store
    store.close()


def runner_on(storage: SqliteStorage, copier: FakeCopier, clock: core.Clock, max_copies: int = 2) -> AsyncRunner:
    return AsyncRunner(
        storage,
        clock,
        copier,
        tick=TICK,
        registry=storage.instance_registry(),
        instance=Instance.this_process(lease_seconds=15.0),
        max_copies=max_copies,
    )


@pytest.fixture
async def copier_and_runner(sqlite_storage: SqliteStorage) -> AsyncIterator[tuple[FakeCopier, AsyncRunner]]:
    copier = FakeCopier()
    runner = runner_on(sqlite_storage, copier, SystemClock())
    await runner.start()
    try:
        yield copier, runner
    finally:
        for copy in copier.live():
            copy.release()
        await runner.stop()


async def test_the_runner_copies_at_most_max_copies_at_once_and_all_succeed(
    sqlite_storage: SqliteStorage, copier_and_runner: tuple[FakeCopier, AsyncRunner]
) -> None:
    copier, runner = copier_and_runner
    clock = SystemClock()
    fleet = await asyncio.to_thread(Fleet, sqlite_storage, 2)
    migrations = [await asyncio.to_thread(fleet.migration) for _ in range(6)]
    for migration in migrations:
        started = await asyncio.to_thread(
            core.run_migration, sqlite_storage, clock, runner, fleet.owner_id, migration.id
        )
        assert started.state is MigrationState.RUNNING

    for wave in range(3):
        await eventually(copier.has_started(2 * (wave + 1)), f"copies of wave {wave} to start")
        live = copier.live()
        assert len(live) == 2
        assert {copy.job.migration_id for copy in live} == {m.id for m in migrations[2 * wave : 2 * wave + 2]}
        waiting = migrations[2 * wave + 2 :]
        states = [core.get_run_state(sqlite_storage, fleet.owner_id, m.id) for m in waiting]
        assert [(s.phase, s.queue_position) for s in states] == [
            (Phase.QUEUED, position) for position in range(1, len(waiting) + 1)
        ]
        for copy in live:
            copy.release()

    await eventually(
        lambda: all(fleet.get(m.id).state is MigrationState.SUCCESS for m in migrations), "every run to succeed"
    )
    assert copier.most == 2
    assert sorted(copier.started()) == sorted(m.id for m in migrations)
    assert all(copy.swapped == [0, 1] and copy.gate is not None for copy in copier.copies)
    done = fleet.get(migrations[0].id)
    assert (done.progress, done.phase, done.instance_id) == (100, None, runner.instance_id)
    # The runner forgets a run just after its end is committed.
    await eventually(lambda: runner.active == frozenset(), "the runner to let go of every run")


async def test_a_cancel_elsewhere_stops_the_copy_and_a_stop_leaves_the_queue_to_the_next_instance(
    sqlite_path: Path, sqlite_storage: SqliteStorage
) -> None:
    clock = SystemClock()
    copier = FakeCopier()
    runner = runner_on(sqlite_storage, copier, clock)
    await runner.start()
    fleet = await asyncio.to_thread(Fleet, sqlite_storage, 1)
    migrations = [await asyncio.to_thread(fleet.migration) for _ in range(5)]
    try:
        for migration in migrations:
            await asyncio.to_thread(core.run_migration, sqlite_storage, clock, runner, fleet.owner_id, migration.id)
        await eventually(copier.has_started(2), "two copies to start")
        first, second = migrations[:2]
        assert set(copier.started()) == {first.id, second.id}

        # Cancelled through another instance: the copy here stops within about a tick.
        [cancelled_copy] = copier.of(first.id)
        cancelled_copy.wound_down.clear()
        answered = await asyncio.to_thread(cancel_elsewhere, fleet, clock, fleet.ref(first))
        assert (answered.state, answered.error) == (MigrationState.ERROR, core.CANCELLED)
        await eventually(cancelled_copy.cancelled.is_set, "the cancelled copy to be stopped")
        # While it winds down it holds its slot: no third copy over ten ticks.
        await asyncio.sleep(10 * TICK)
        assert len(copier.started()) == 2
        cancelled_copy.wound_down.set()
        await eventually(lambda: cancelled_copy.ended() is not None, "the cancelled copy to end")
        assert cancelled_copy.swapped == []
        # Its slot goes to the oldest queued copy.
        await eventually(copier.has_started(3), "the next copy to start")
        assert copier.started()[2] == migrations[2].id
        # The cancelled copy held its slot until it had stopped.
        assert copier.most == 2
        after = await asyncio.to_thread(fleet.get, first.id)
        assert (after.state, after.error) == (MigrationState.ERROR, core.CANCELLED)
    finally:
        assert await runner.stop() == 2

    carried = [await asyncio.to_thread(fleet.get, m.id) for m in (second, migrations[2])]
    assert [(m.state, m.error) for m in carried] == [(MigrationState.ERROR, core.INTERRUPTED)] * 2
    assert all(copy.ended() is not None and copy.swapped == [] for copy in copier.copies)
    waiting = [await asyncio.to_thread(fleet.get, m.id) for m in migrations[3:]]
    assert [(m.state, m.phase, m.instance_id) for m in waiting] == [(MigrationState.RUNNING, Phase.QUEUED, None)] * 2

    # Another instance on the same file takes what was left queued.
    other_storage = SqliteStorage(sqlite_path, SECRET)
    other_copier = FakeCopier(auto_release=True)
    other = runner_on(other_storage, other_copier, clock)
    assert other.instance_id != runner.instance_id
    await other.start()
    try:
        await eventually(
            lambda: all(fleet.get(m.id).state is MigrationState.SUCCESS for m in waiting),
            "the queued runs to succeed under the other instance",
        )
    finally:
        await other.stop()
        other_storage.close()
    assert sorted(other_copier.started()) == [m.id for m in waiting]
    assert [fleet.get(m.id).instance_id for m in waiting] == [other.instance_id] * 2
    assert [(m.state, m.error) for m in carried] == [
        (fleet.get(m.id).state, fleet.get(m.id).error) for m in carried
    ]


# --- 6. the blocking runner ------------------------------------------------------------


def test_the_blocking_runner_takes_its_own_copy_and_succeeds(fleet: Fleet) -> None:
    clock = SteppingClock()
    copier = FakeCopier(auto_release=True)
    runner = BlockingRunner(fleet.storage, clock, copier, tick=TICK)
    other = fleet.queued(1, clock)[0]  # older, queued: not this runner's to take
    migration = fleet.migration()

    done = core.run_migration(fleet.storage, clock, runner, fleet.owner_id, migration.id)

    assert (done.state, done.progress, done.phase) == (MigrationState.SUCCESS, 100, None)
    [copy] = copier.copies
    assert (copy.job.migration_id, copy.swapped, copy.gate is not None) == (migration.id, [0, 1], True)
    target = core.get_migration_target(fleet.storage, fleet.owner_id, migration.migration_target_id)
    assert target.target_vm is not None and [v.name for v in target.target_vm.storage] == ["/", "/srv"]
    assert fleet.get(other.id).phase is Phase.QUEUED


# --- 7. the schema step that adds the queue --------------------------------------------

# A database as the release of schema version 8 left it: an owner, a running
# migration carried by an instance, one that never ran, and five events of
# which the newest two were deleted since (the id sequence is past them).
VERSION_8_ROWS = [
    "INSERT INTO users (id, username, password_hash) VALUES (1, 'veteran', 'h')",
    "INSERT INTO credentials (id, owner_id, username, password, domain) VALUES (1, 1, 'root', ?, '')",
    "INSERT INTO mount_points (id, owner_id, name, size) VALUES (1, 1, '/', 10), (2, 1, '/', 20)",
    "INSERT INTO workloads (id, owner_id, ip, credentials_id, os) VALUES (1, 1, '10.0.0.1', 1, 'linux'),"
    " (2, 1, '10.0.0.2', 1, 'linux')",
    "INSERT INTO workload_mount_points (workload_id, position, owner_id, mount_point_id)"
    " VALUES (1, 0, 1, 1), (2, 0, 1, 2)",
    "INSERT INTO migration_targets (id, owner_id, cloud_type, cloud_credentials_id)"
    " VALUES (1, 1, 'aws', 1), (2, 1, 'aws', 1)",
    "INSERT INTO migrations (id, owner_id, source_id, migration_target_id, state, progress, started_at, instance_id)"
    " VALUES (1, 1, 1, 1, 'running', 40, '2024-01-01T00:00:00+00:00', 'old-instance')",
    "INSERT INTO migrations (id, owner_id, source_id, migration_target_id, state, progress)"
    " VALUES (2, 1, 2, 2, 'not_started', 0)",
    "INSERT INTO migration_mount_points (migration_id, position, owner_id, mount_point_id)"
    " VALUES (1, 0, 1, 1), (2, 0, 1, 2)",
    *[
        "INSERT INTO events (owner_id, migration_id, at, kind, detail)"
        f" VALUES (1, {migration_id}, '2024-01-01T00:00:0{n}+00:00', '{kind}', '{{\"n\": {n}}}')"
        for n, (migration_id, kind) in enumerate(
            [(1, "created"), (2, "created"), (1, "run_requested"), (1, "started"), (2, "updated")], start=1
        )
    ],
    "DELETE FROM events WHERE id > 3",
]


def write_version_8(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'version-8.db'}"
    else:
        server = request.getfixturevalue("postgres_server")
        url = server.url(server.create_database())
    leave_at_version(url, 8)
    sealed = SecretBox(SECRET).seal("pw", b"credentials.password")
    if kind == "sqlite":
        db = sqlite3.connect(url[len("sqlite:///") :])
        with db:
            for statement in VERSION_8_ROWS:
                db.execute(statement, [sealed] if "?" in statement else [])
        db.close()
    else:
        with psycopg.connect(url) as pg:
            for statement in VERSION_8_ROWS:
                pg.execute(statement.replace("?", "%s"), [sealed] if "?" in statement else [])
    return url


@pytest.mark.parametrize("sql", SQL_STORAGES)
def test_the_queue_s_schema_step_keeps_events_their_ids_and_a_running_run_copying(
    sql: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = write_version_8(sql, request, tmp_path)
    storage = open_url(url, SECRET)
    try:
        running, never = core.get_migration(storage, 1, 1), core.get_migration(storage, 1, 2)
        assert (running.state, running.phase, running.instance_id, running.swapping) == (
            MigrationState.RUNNING, Phase.COPYING, "old-instance", False
        )
        assert (never.phase, never.swapping) == (None, False)
        kept = core.list_events(storage, 1, 1, core.ListQuery()).items
        assert [(e.id, e.kind.value, e.detail) for e in kept] == [
            (1, "created", {"n": 1}), (3, "run_requested", {"n": 3})
        ]

        with storage.unit_of_work() as uow:
            appended = uow.events.append(
                core.Event(1, 2, core.EventKind.QUEUED, SteppingClock().now(), {"position": 1})
            )
            uow.commit()
        assert appended.id > 5  # above every id ever given, deleted or not
        assert [e.kind for e in core.list_events(storage, 1, 2, core.ListQuery()).items] == [
            core.EventKind.CREATED, core.EventKind.QUEUED
        ]
        # The upgraded running run is its old instance's, as before: interrupted with it.
        assert core.mark_interrupted(storage, SteppingClock(), {"old-instance"}) == [1]
    finally:
        storage.close()
