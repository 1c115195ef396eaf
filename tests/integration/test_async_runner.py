"""The asyncio runner against real storage: runs reach success with the exact
target VM, progress only grows, cancel and stop take effect at once, runs left
by a stopped process are interrupted, and a thousand runs at once all finish
exactly once. Time that matters to the copy is a fake monotonic clock moved by
the tests; waits on the real loop are bounded and generous."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest

import migration_core as core
from adapters.async_runner import AsyncRunner
from adapters.memory import MemoryStorage
from adapters.simulated_copy import SimulatedCopy
from migration_core import MigrationState, TargetVm, User, Volume
from migration_core.machines import CopyJob
from migration_core.runs import start_run

T = TypeVar("T")

DURATION = 100.0  # fake seconds
TICK = 0.05  # real seconds between steps
SLOW_TICK = 0.5  # the same, where a test measures the time between steps
PATIENCE = 20.0  # real seconds: a bound on every wait, never an expectation


class SteppingClock:
    """Wall-clock time for timestamps; every reading is a second later, so two
    events never share a timestamp."""

    def __init__(self) -> None:
        self._now = datetime(2024, 1, 1, tzinfo=timezone.utc)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=1)
            return self._now


LAUNCHED_AT = 1000.0  # fake monotonic time until a test moves it


class FakeMonotonic:
    """The runner's notion of elapsed time, moved only by the test."""

    def __init__(self) -> None:
        self.value = LAUNCHED_AT

    def __call__(self) -> float:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += seconds


# --- storage under test, and a wrapper that counts and injects faults ----------


@pytest.fixture(params=["memory", "sqlite"])
def backing(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[core.Storage]:
    if request.param == "memory":
        yield MemoryStorage()
        return
    sqlite = pytest.importorskip("adapters.sqlite")
    storage = sqlite.SqliteStorage(tmp_path / "runner.db", b"k" * 32)
    try:
        yield storage
    finally:
        storage.close()


class WatchedStorage:
    """Delegates to real storage. Counts committed moves to `success` per
    migration, and can refuse every unit of work or every target update."""

    def __init__(self, inner: core.Storage) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.successes: dict[int, int] = {}
        self.unavailable = False
        self.refused = 0
        self.target_update_error: str | None = None
        self.refused_target_updates: list[float] = []  # time.monotonic() of each
        # Called with each progress a committed unit of work wrote, after the commit.
        self.progress_written: Callable[[int], None] | None = None

    def unit_of_work(self, *, write: bool = True, undo_nested: bool = True) -> _WatchedUnitOfWork:
        if self.unavailable:
            with self.lock:
                self.refused += 1
            raise RuntimeError("storage unavailable")
        return _WatchedUnitOfWork(self, self.inner.unit_of_work(write=write, undo_nested=undo_nested))

    def check(self) -> None:
        self.inner.check()

    def close(self) -> None:
        self.inner.close()


class _WatchedUnitOfWork:
    def __init__(self, storage: WatchedStorage, inner: Any) -> None:
        self._storage = storage
        self._inner = inner
        self._succeeded: list[int] = []
        self._progress: list[int] = []

    def __enter__(self) -> _WatchedUnitOfWork:
        self._uow = self._inner.__enter__()
        self._succeeded.clear()
        self._progress.clear()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._inner.__exit__(*exc_info)

    def commit(self) -> None:
        # Counted before the commit lets other readers see the success, so that
        # a test that has seen it finds it counted; taken back if the commit fails.
        self._count_successes(1)
        try:
            self._uow.commit()
        except BaseException:
            self._count_successes(-1)
            raise
        if self._storage.progress_written is not None:
            for progress in self._progress:
                self._storage.progress_written(progress)

    def _count_successes(self, change: int) -> None:
        with self._storage.lock:
            successes = self._storage.successes
            for migration_id in self._succeeded:
                successes[migration_id] = successes.get(migration_id, 0) + change
                if not successes[migration_id]:
                    del successes[migration_id]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._uow, name)

    @property
    def migrations(self) -> Any:
        return _WatchedMigrations(self, self._uow.migrations)

    @property
    def migration_targets(self) -> Any:
        return _WatchedTargets(self._storage, self._uow.migration_targets)


class _WatchedMigrations:
    def __init__(self, uow: _WatchedUnitOfWork, inner: Any) -> None:
        self._uow = uow
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def update_if(self, migration: core.Migration, expected: Any) -> core.Migration:
        stored: core.Migration = self._inner.update_if(migration, expected)
        if migration.state is MigrationState.SUCCESS:
            self._uow._succeeded.append(migration.id)
        self._uow._progress.append(migration.progress)
        return stored


class _WatchedTargets:
    def __init__(self, storage: WatchedStorage, inner: Any) -> None:
        self._storage = storage
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def update(self, target: core.MigrationTarget) -> core.MigrationTarget:
        if self._storage.target_update_error is not None:
            self._storage.refused_target_updates.append(time.monotonic())
            raise RuntimeError(self._storage.target_update_error)
        updated: core.MigrationTarget = self._inner.update(target)
        return updated


@pytest.fixture
def storage(backing: core.Storage) -> WatchedStorage:
    return WatchedStorage(backing)


# --- an inventory to migrate ---------------------------------------------------

SOURCE_VOLUMES = (("C:\\", 100), ("D:\\", 300), ("E:\\", 600))


@attrs.frozen
class Inventory:
    owner_id: int
    credentials: core.Credentials
    mount_points: dict[str, core.MountPoint]
    workload: core.Workload

    def ids(self, *names: str) -> list[int]:
        return [self.mount_points[name].id for name in names]


def build_inventory(storage: core.Storage) -> Inventory:
    with storage.unit_of_work() as uow:
        owner = uow.users.add(User("runner-owner", "not-a-real-hash"))
        uow.commit()
    credentials = core.create_credentials(
        storage, owner.id, username="admin", password="s3cret!", domain="corp"
    )
    mount_points = {
        name: core.create_mount_point(storage, owner.id, name=name, size=size)
        for name, size in SOURCE_VOLUMES
    }
    workload = core.create_workload(
        storage,
        owner.id,
        ip="10.1.2.3",
        credentials_id=credentials.id,
        mount_point_ids=[mp.id for mp in mount_points.values()],
    )
    return Inventory(owner.id, credentials, mount_points, workload)


def new_migration(storage: core.Storage, inv: Inventory, *selected: str) -> core.Migration:
    target = core.create_migration_target(
        storage, inv.owner_id, cloud_type="aws", cloud_credentials_id=inv.credentials.id
    )
    return core.create_migration(
        storage,
        inv.owner_id,
        clock=SteppingClock(),
        source_id=inv.workload.id,
        migration_target_id=target.id,
        selected_mount_point_ids=inv.ids(*selected),
    )


# --- helpers -------------------------------------------------------------------


def simulated_runner(
    storage: core.Storage,
    clock: core.Clock,
    duration: float,
    tick: float,
    monotonic: Callable[[], float] = time.monotonic,
) -> AsyncRunner:
    """A runner whose copies are simulated, each `duration` long, reported a tick apart at least."""
    copier = SimulatedCopy(duration, step=tick, monotonic=monotonic)
    return AsyncRunner(storage, clock, copier, tick=tick, monotonic=monotonic)


async def off_loop(call: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(call, *args)


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, patience: float = PATIENCE
) -> None:
    deadline = asyncio.get_running_loop().time() + patience
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        await asyncio.sleep(0.01)


async def _forgotten(runner: AsyncRunner, migration_id: int) -> None:
    """The job that stored a run's end lets the run go a moment after the
    store: a reader can see the end first."""

    async def let_go() -> bool:
        return migration_id not in runner.active

    await eventually(let_go, f"the runner to let migration {migration_id} go")


class Harness:
    def __init__(self, storage: WatchedStorage, inv: Inventory) -> None:
        self.storage = storage
        self.inv = inv
        self.clock = SteppingClock()
        self.time = FakeMonotonic()

    def runner(self, duration: float = DURATION, tick: float = TICK) -> AsyncRunner:
        return simulated_runner(self.storage, self.clock, duration, tick, self.time)

    async def migration(self, *selected: str) -> core.Migration:
        return await off_loop(new_migration, self.storage, self.inv, *selected)

    async def get(self, migration_id: int) -> core.Migration:
        return await off_loop(core.get_migration, self.storage, self.inv.owner_id, migration_id)

    async def target_vm(self, migration: core.Migration) -> TargetVm | None:
        target = await off_loop(
            core.get_migration_target,
            self.storage,
            self.inv.owner_id,
            migration.migration_target_id,
        )
        return target.target_vm

    async def run(self, runner: AsyncRunner, migration_id: int) -> core.Migration:
        return await off_loop(
            core.run_migration, self.storage, self.clock, runner, self.inv.owner_id, migration_id
        )

    async def cancel(self, runner: AsyncRunner, migration_id: int) -> core.Migration:
        return await off_loop(
            core.cancel_run, self.storage, self.clock, runner, self.inv.owner_id, migration_id
        )

    async def until(
        self, migration_id: int, check: Callable[[core.Migration], bool], what: str
    ) -> core.Migration:
        seen: list[core.Migration] = []

        async def reached() -> bool:
            seen[:] = [await self.get(migration_id)]
            return check(seen[0])

        await eventually(reached, f"migration {migration_id} {what}")
        return seen[0]


@pytest.fixture
async def harness(storage: WatchedStorage) -> Harness:
    return Harness(storage, await off_loop(build_inventory, storage))


@pytest.fixture
async def runner(harness: Harness) -> AsyncIterator[AsyncRunner]:
    runner = harness.runner()
    await runner.start()
    yield runner
    await runner.stop()


def succeeded(m: core.Migration) -> bool:
    return m.state is MigrationState.SUCCESS


# --- tests ---------------------------------------------------------------------


async def test_a_run_succeeds_with_the_selected_volumes_in_source_order(
    harness: Harness, runner: AsyncRunner
) -> None:
    """Success replaces the target VM with the source's ip and login and only
    the selected volumes, in source order whatever the selection's order."""
    migration = await harness.migration("C:\\")
    started = await harness.run(runner, migration.id)
    assert started.state is MigrationState.RUNNING
    harness.time.advance(DURATION)
    await harness.until(migration.id, succeeded, "succeeds")
    first_vm = await harness.target_vm(migration)
    assert first_vm is not None and first_vm.storage == (Volume("C:\\", 100),)

    await off_loop(
        lambda: core.update_migration(
            harness.storage,
            harness.inv.owner_id,
            migration.id,
            clock=SteppingClock(),
            selected_mount_point_ids=harness.inv.ids("E:\\", "C:\\"),
        )
    )
    await harness.run(runner, migration.id)
    harness.time.advance(DURATION)
    done = await harness.until(migration.id, succeeded, "succeeds again")
    await _forgotten(runner, migration.id)

    assert (done.progress, done.error, runner.active) == (100, None, frozenset())
    assert done.finished_at is not None
    assert await harness.target_vm(migration) == TargetVm(
        "10.1.2.3",
        core.Login("admin", "s3cret!", "corp"),
        (Volume("C:\\", 100), Volume("E:\\", 600)),
    )
    assert harness.storage.successes == {migration.id: 2}


async def test_the_next_report_is_due_a_step_after_the_last_was_taken_not_after_its_write(
    harness: Harness, runner: AsyncRunner
) -> None:
    """Time that passes while a report is written (a slow write; here the
    fake clock, moved as the write of 10% commits) does not put the next
    report a step past the write's end: at 50% of the copy, 50% is written."""
    migration = await harness.migration("C:\\", "D:\\", "E:\\")

    def move_on(progress: int) -> None:
        if progress == 10:
            harness.time.value = LAUNCHED_AT + 0.5 * DURATION

    harness.storage.progress_written = move_on
    await harness.run(runner, migration.id)
    harness.time.value = LAUNCHED_AT + 0.1 * DURATION
    await harness.until(migration.id, lambda m: m.progress == 50, "at 50%")


async def test_progress_follows_time_never_decreases_and_is_100_only_at_success(
    harness: Harness, runner: AsyncRunner
) -> None:
    """Progress is persisted while the copy runs, grows with elapsed time, and
    reaches 100 exactly when the state becomes success."""
    migration = await harness.migration("C:\\", "D:\\", "E:\\")
    observed: list[core.Migration] = []
    finished = asyncio.Event()

    async def watch() -> None:
        while not finished.is_set():
            observed.append(await harness.get(migration.id))
            await asyncio.sleep(0.005)

    async def watched(percent: int) -> bool:
        return any(m.progress == percent for m in observed)

    watcher = asyncio.create_task(watch())
    await harness.run(runner, migration.id)
    for fraction, percent in [(0.1, 10), (0.5, 50), (0.99, 99)]:
        harness.time.value = LAUNCHED_AT + fraction * DURATION
        # The clock moves on only once the watcher itself read the report,
        # however late its reads come on a busy machine.
        await eventually(lambda p=percent: watched(p), f"the watcher to read {percent}%")
    harness.time.advance(DURATION)
    await harness.until(migration.id, succeeded, "succeeds")
    finished.set()
    await watcher
    observed.append(await harness.get(migration.id))

    progress = [m.progress for m in observed if m.state is not MigrationState.NOT_STARTED]
    assert progress == sorted(progress)
    assert all((m.progress == 100) == succeeded(m) for m in observed)


async def test_cancel_stops_the_run_at_once_and_it_never_completes(
    harness: Harness, runner: AsyncRunner
) -> None:
    """After cancel the runner no longer carries the run, and when its time is
    up it is neither completed nor advanced; the target is left untouched."""
    migration = await harness.migration("C:\\")
    await harness.run(runner, migration.id)
    harness.time.advance(DURATION / 2)
    await harness.until(migration.id, lambda m: m.progress == 50, "at 50%")

    cancelled = await harness.cancel(runner, migration.id)
    assert migration.id not in runner.active
    assert (cancelled.state, cancelled.error) == (MigrationState.ERROR, core.CANCELLED)

    # A later run, due in the same step the cancelled one would have been due.
    other = await harness.migration("C:\\")
    await harness.run(runner, other.id)
    harness.time.advance(DURATION)
    await harness.until(other.id, succeeded, "succeeds")

    after = await harness.get(migration.id)
    assert after == cancelled
    assert await harness.target_vm(migration) is None
    assert migration.id not in harness.storage.successes


async def test_a_run_cancelled_and_run_again_keeps_only_the_new_run_s_time(
    harness: Harness, runner: AsyncRunner
) -> None:
    """The cancelled run's schedule does not leak into the new run: when the
    first run would have been due, the second is only half way."""
    migration = await harness.migration("C:\\")
    await harness.run(runner, migration.id)
    harness.time.advance(DURATION / 2)
    await harness.until(migration.id, lambda m: m.progress == 50, "first run at 50%")
    await harness.cancel(runner, migration.id)

    rerun = await harness.run(runner, migration.id)
    assert (rerun.state, rerun.progress) == (MigrationState.RUNNING, 0)
    harness.time.advance(DURATION / 2)
    await harness.until(migration.id, lambda m: m.progress == 50, "second run at 50%")
    # Give the ticker a few steps in which the first run would have completed.
    for _ in range(5):
        await asyncio.sleep(TICK)
    assert (await harness.get(migration.id)).state is MigrationState.RUNNING

    harness.time.advance(DURATION / 2)
    await harness.until(migration.id, succeeded, "second run succeeds")
    assert harness.storage.successes == {migration.id: 1}


class ElsewhereRunner:
    """Another process's runner: it does not carry this process's runs."""

    instance_id = "elsewhere"

    def launch(self, job: CopyJob) -> None:
        raise AssertionError("runs are launched in this process only")

    def cancel(self, migration_id: int) -> None:
        pass

    def queued(self) -> None:
        pass


async def test_a_run_cancelled_elsewhere_and_run_again_here_restarts_its_copy(
    harness: Harness, runner: AsyncRunner
) -> None:
    """Cancelled by another process, then started again here before this
    runner noticed: the new run starts its copy from the beginning."""
    migration = await harness.migration("C:\\")
    await harness.run(runner, migration.id)
    harness.time.advance(DURATION / 2)
    await harness.until(migration.id, lambda m: m.progress == 50, "first run at 50%")

    await harness.cancel(ElsewhereRunner(), migration.id)  # type: ignore[arg-type]
    await harness.run(runner, migration.id)
    harness.time.advance(DURATION / 2)
    await harness.until(migration.id, lambda m: m.progress == 50, "second run at 50%")
    for _ in range(5):
        await asyncio.sleep(TICK)
    assert (await harness.get(migration.id)).state is MigrationState.RUNNING

    harness.time.advance(DURATION / 2)
    await harness.until(migration.id, succeeded, "second run succeeds")
    assert harness.storage.successes == {migration.id: 1}


async def test_stop_marks_active_runs_interrupted_and_they_can_run_again(
    harness: Harness,
) -> None:
    """stop() leaves no run `running`: each becomes error/interrupted, keeps its
    progress, and runs to success under a new runner."""
    runner = harness.runner()
    await runner.start()
    first, second = await harness.migration("C:\\"), await harness.migration("C:\\", "D:\\")
    await harness.run(runner, first.id)
    await harness.run(runner, second.id)
    harness.time.advance(DURATION / 4)
    await harness.until(second.id, lambda m: m.progress == 25, "at 25%")

    assert await runner.stop() == 2

    for migration in (first, second):
        stopped = await harness.get(migration.id)
        assert (stopped.state, stopped.error) == (MigrationState.ERROR, core.INTERRUPTED)
        assert stopped.finished_at is not None
    assert runner.active == frozenset()

    again = harness.runner()
    await again.start()
    try:
        for migration in (first, second):
            await harness.run(again, migration.id)
        harness.time.advance(DURATION)
        for migration in (first, second):
            await harness.until(migration.id, succeeded, "succeeds after the restart")
    finally:
        await again.stop()
    assert harness.storage.successes == {first.id: 1, second.id: 1}


async def test_a_stopped_runner_refuses_to_launch_and_the_run_fails_readably(
    harness: Harness,
) -> None:
    """A run started while the runner is stopped is not left `running`."""
    runner = harness.runner()
    await runner.start()
    await runner.stop()
    migration = await harness.migration("C:\\")

    with pytest.raises(RuntimeError):
        await harness.run(runner, migration.id)

    failed = await harness.get(migration.id)
    assert failed.state is MigrationState.ERROR
    assert failed.error is not None and failed.error.startswith("The copy could not start")


async def test_start_marks_runs_left_running_as_interrupted(harness: Harness) -> None:
    """A run left `running` by a process that died (started without a runner
    here) is interrupted when a runner starts, and can then succeed."""
    migration = await harness.migration("C:\\")
    left = await off_loop(
        start_run, harness.storage, harness.clock, harness.inv.owner_id, migration.id
    )
    assert left.state is MigrationState.RUNNING

    runner = harness.runner()
    await runner.start()
    try:
        interrupted = await harness.get(migration.id)
        assert (interrupted.state, interrupted.error) == (MigrationState.ERROR, core.INTERRUPTED)
        assert runner.active == frozenset()

        await harness.run(runner, migration.id)
        harness.time.advance(DURATION)
        await harness.until(migration.id, succeeded, "succeeds")
    finally:
        await runner.stop()


async def test_a_start_that_cannot_reach_storage_can_be_tried_again(
    harness: Harness,
) -> None:
    """A failed start leaves the runner stopped, not half started."""
    migration = await harness.migration("C:\\")
    await off_loop(
        start_run, harness.storage, harness.clock, harness.inv.owner_id, migration.id
    )
    runner = harness.runner()
    harness.storage.unavailable = True
    with pytest.raises(RuntimeError, match="storage unavailable"):
        await runner.start()
    harness.storage.unavailable = False

    await runner.start()
    try:
        interrupted = await harness.get(migration.id)
        assert (interrupted.state, interrupted.error) == (MigrationState.ERROR, core.INTERRUPTED)
    finally:
        await runner.stop()


async def test_a_zero_duration_run_succeeds(harness: Harness) -> None:
    """With no copy time at all the run still goes through the core to success."""
    runner = simulated_runner(harness.storage, harness.clock, 0, tick=1.0)
    await runner.start()
    try:
        migration = await harness.migration("C:\\", "D:\\")
        await harness.run(runner, migration.id)
        done = await harness.until(migration.id, succeeded, "succeeds")
    finally:
        await runner.stop()
    assert done.progress == 100
    vm = await harness.target_vm(migration)
    assert vm is not None and [v.name for v in vm.storage] == ["C:\\", "D:\\"]


async def test_a_storage_outage_does_not_stop_the_ticker(
    harness: Harness, runner: AsyncRunner
) -> None:
    """Ticks that fail on storage are retried; once storage is back the run's
    progress is written and it completes."""
    migration = await harness.migration("C:\\")
    await harness.run(runner, migration.id)
    harness.storage.unavailable = True
    harness.time.advance(DURATION / 2)

    async def ticks_refused() -> bool:
        return harness.storage.refused >= 3

    await eventually(ticks_refused, "three ticks refused by storage")
    harness.storage.unavailable = False
    await harness.until(migration.id, lambda m: m.progress == 50, "at 50% after the outage")
    harness.time.advance(DURATION)
    await harness.until(migration.id, succeeded, "succeeds after the outage")


@pytest.fixture
async def slow_ticking_runner(harness: Harness) -> AsyncIterator[AsyncRunner]:
    """Ticks of SLOW_TICK: each attempt's time is taken in the runner's thread,
    which a loaded machine may start late (under the whole suite, once over
    100 ms late for one attempt and not the next); a quarter of a tick leaves
    375 ms for that, and stays far above a busy loop's gaps of a few ms."""
    runner = harness.runner(tick=SLOW_TICK)
    await runner.start()
    yield runner
    await runner.stop()


async def test_a_completion_that_keeps_failing_fails_the_run_readably(
    harness: Harness, slow_ticking_runner: AsyncRunner
) -> None:
    """When the target cannot be written, completion is retried at later ticks
    (not in a busy loop), then the run ends in error with a message a person
    can read; the target keeps its old VM, and the run can be run again."""
    runner = slow_ticking_runner
    migration = await harness.migration("C:\\")
    await harness.run(runner, migration.id)
    harness.storage.target_update_error = "the target cloud refused the disk"
    harness.time.advance(DURATION)

    failed = await harness.until(
        migration.id, lambda m: m.state is MigrationState.ERROR, "fails"
    )
    assert failed.error == "The copy could not be completed: the target cloud refused the disk"
    attempts = harness.storage.refused_target_updates
    assert len(attempts) >= 2
    assert all(later - earlier >= SLOW_TICK / 4 for earlier, later in zip(attempts, attempts[1:]))
    assert failed.progress < 100
    assert await harness.target_vm(migration) is None
    await _forgotten(runner, migration.id)

    harness.storage.target_update_error = None
    await harness.run(runner, migration.id)
    harness.time.advance(DURATION)
    await harness.until(migration.id, succeeded, "succeeds on retry")


async def test_a_thousand_runs_at_once_all_succeed_exactly_once(harness: Harness) -> None:
    """1,000 migrations, each into its own target, started concurrently from
    worker threads with a short real duration: every one reaches success, none
    is lost, none is completed twice, and each target holds its copy."""
    count = 1000
    inv = harness.inv

    def create_all() -> list[core.Migration]:
        return [new_migration(harness.storage, inv, "C:\\", "E:\\") for _ in range(count)]

    migrations = await off_loop(create_all)
    runner = simulated_runner(harness.storage, harness.clock, 1.0, tick=0.2)
    await runner.start()
    try:
        loop = asyncio.get_running_loop()
        started = await asyncio.gather(
            *(
                loop.run_in_executor(
                    None,
                    core.run_migration,
                    harness.storage,
                    harness.clock,
                    runner,
                    inv.owner_id,
                    m.id,
                )
                for m in migrations
            )
        )
        assert {m.state for m in started} <= {MigrationState.RUNNING, MigrationState.SUCCESS}

        async def all_done() -> bool:
            page = await off_loop(
                core.list_migrations,
                harness.storage,
                inv.owner_id,
                core.ListQuery(filters={"state": MigrationState.SUCCESS.value}, limit=1),
            )
            return page.count == count

        await eventually(all_done, f"{count} migrations succeed", patience=120)

        async def all_forgotten() -> bool:
            return runner.active == frozenset()  # once the job that recorded the last end is back

        await eventually(all_forgotten, "the runner carries none")
    finally:
        await runner.stop()

    assert harness.storage.successes == {m.id: 1 for m in migrations}

    def targets() -> list[TargetVm | None]:
        return [
            core.get_migration_target(
                harness.storage, inv.owner_id, m.migration_target_id
            ).target_vm
            for m in migrations
        ]

    expected = TargetVm("10.1.2.3", core.Login("admin", "s3cret!", "corp"),
                        (Volume("C:\\", 100), Volume("E:\\", 600)))
    assert set(await off_loop(targets)) == {expected}
