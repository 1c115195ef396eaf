"""Lost updates: two use cases that each read a row and write it back, in
units of work on two threads, interleaved in the order that loses a write
where nothing stops it. The first reads and holds its unit open just before
it writes; the second reads the same row, changes another field and commits
(or waits for the first, as storage must make it); then the first writes and
commits. Every storage must keep both changes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
import pytest

import migration_core as core
from adapters.clock import SystemClock
from adapters.postgres import PostgresStorage
from migration_core import Storage
from migration_core.machines import CopyJob, CopyProgress
from migration_core.runs import RunRef, advance_runs, start_run

from .storages import ALL_STORAGES, open_storage

SECRET = b"lost-update-suite-secret-of-32-bytes"
PATIENCE = 30.0  # seconds a step may take before the test says it hung


@pytest.fixture(params=ALL_STORAGES)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    store = open_storage(request.param, request, tmp_path, SECRET, connections=4)
    yield store
    store.close()


@pytest.fixture
def owner(storage: Storage) -> int:
    with storage.unit_of_work() as uow:
        user = uow.users.add(core.User("writer", "not-a-real-hash"))
        uow.commit()
    return user.id


WRITES = ("update", "update_if")


class Watched:
    """A storage as one use case sees it: its write units say when one has
    asked to begin and when it has begun, and run `pause` once, before the use
    case's first call of one of `pause_before` on an entity repository (by
    default, once it has read what it needs and is about to write)."""

    def __init__(
        self, storage: Storage, pause: Callable[[], None] = lambda: None, pause_before: tuple[str, ...] = WRITES
    ) -> None:
        self.storage = storage
        self.pause, self.pause_before = pause, pause_before
        self.asked, self.begun, self.paused = threading.Event(), threading.Event(), threading.Event()

    def unit_of_work(self, *, write: bool = True) -> Any:
        unit = self.storage.unit_of_work(write=write)
        return _WatchedUnit(unit, self) if write else unit


class _WatchedUnit:
    def __init__(self, unit: Any, watched: Watched) -> None:
        self._unit, self._watched = unit, watched

    def __enter__(self) -> _WatchedUnit:
        self._watched.asked.set()
        self._unit.__enter__()
        self._watched.begun.set()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._unit.__exit__(kind, exc, tb)

    def commit(self) -> None:
        self._unit.commit()

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._unit, name)
        return _WatchedRepository(found, self._watched) if hasattr(found, "update") else found


class _WatchedRepository:
    def __init__(self, repository: Any, watched: Watched) -> None:
        self._repository, self._watched = repository, watched

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._repository, name)
        if name not in self._watched.pause_before or self._watched.paused.is_set():
            return found
        self._watched.paused.set()
        self._watched.pause()
        return found


def _waits_for_the_first(storage: Storage, second: Watched) -> Callable[[], bool]:
    """Whether the second use case is held back by the first one's open unit:
    on PostgreSQL a session waits for a lock; SQLite and the in-memory storage
    let one write unit in at a time, so the second has asked and not begun."""
    if not isinstance(storage, PostgresStorage):
        return lambda: second.asked.is_set() and not second.begun.is_set()
    url = storage.url

    def waiting() -> bool:
        with psycopg.connect(url, autocommit=True) as connection:
            row = connection.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
        return row is not None and row[0] > 0

    return waiting


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def interleave(
    storage: Storage,
    first: Callable[[Storage], Any],
    second: Callable[[Storage], Any],
    first_pauses_before: tuple[str, ...] = WRITES,
) -> tuple[Any, Any]:
    """Run `first` until it is about to write (or to call another of
    `first_pauses_before`), then `second` on another thread until it has
    finished or waits for `first`; then let `first` go on and finish. Both
    results (an error is raised)."""
    outcomes: dict[str, Any] = {}
    later = Watched(storage)

    def run(name: str, use_case: Callable[[Storage], Any], sees: Storage) -> None:
        try:
            outcomes[name] = use_case(sees)
        except BaseException as exc:  # noqa: BLE001 - raised again on the test's thread
            outcomes[name] = exc

    second_thread = threading.Thread(target=run, args=("second", second, later))
    held_back = _waits_for_the_first(storage, later)

    def let_the_second_go() -> None:
        second_thread.start()
        _until(
            lambda: not second_thread.is_alive() or held_back(),
            "the second use case finished or waited for the first",
        )

    first_thread = threading.Thread(
        target=run, args=("first", first, Watched(storage, let_the_second_go, first_pauses_before))
    )
    first_thread.start()
    first_thread.join(PATIENCE)
    second_thread.join(PATIENCE)
    assert not first_thread.is_alive() and not second_thread.is_alive(), "a use case hung"
    for outcome in outcomes.values():
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes["first"], outcomes["second"]


def test_two_patches_of_one_workload_keep_both_fields(storage: Storage, owner: int) -> None:
    old_login = core.create_credentials(storage, owner, username="admin", password="pw")
    new_login = core.create_credentials(storage, owner, username="root", password="pw2")
    system = core.create_mount_point(storage, owner, name="C:\\", size=10)
    data = core.create_mount_point(storage, owner, name="D:\\", size=20)
    workload = core.create_workload(
        storage, owner, ip="10.0.0.1", credentials_id=old_login.id, mount_point_ids=[system.id]
    )

    interleave(
        storage,
        lambda s: core.update_workload(s, owner, workload.id, credentials_id=new_login.id),
        lambda s: core.update_workload(s, owner, workload.id, mount_point_ids=[system.id, data.id]),
    )

    stored = core.get_workload(storage, owner, workload.id)
    assert (stored.credentials_id, stored.mount_point_ids) == (new_login.id, (system.id, data.id))


def test_two_patches_of_one_target_keep_both_fields(storage: Storage, owner: int) -> None:
    old_login = core.create_credentials(storage, owner, username="admin", password="pw")
    new_login = core.create_credentials(storage, owner, username="root", password="pw2")
    target = core.create_migration_target(storage, owner, cloud_type="aws", cloud_credentials_id=old_login.id)

    interleave(
        storage,
        lambda s: core.update_migration_target(s, owner, target.id, cloud_credentials_id=new_login.id),
        lambda s: core.update_migration_target(s, owner, target.id, cloud_type="azure"),
    )

    stored = core.get_migration_target(storage, owner, target.id)
    assert (stored.cloud_type, stored.cloud_credentials_id) == (core.CloudType.AZURE, new_login.id)


def test_an_import_keeps_a_patch_made_after_it_matched_the_workload(storage: Storage, owner: int) -> None:
    """The import finds the row's workload by ip (a list, which locks nothing)
    and only then reads what it rewrites: a PATCH between the two stays."""
    old_login = core.create_credentials(storage, owner, username="admin", password="pw")
    new_login = core.create_credentials(storage, owner, username="root", password="pw2")
    system = core.create_mount_point(storage, owner, name="C:\\", size=10)
    workload = core.create_workload(
        storage, owner, ip="10.0.0.3", credentials_id=old_login.id, mount_point_ids=[system.id]
    )
    row = core.InventoryRow(2, "10.0.0.3", volumes=(("C:\\", 10), ("D:\\", 20)))

    interleave(
        storage,
        lambda s: core.import_inventory(s, SystemClock(), owner, [row]),
        lambda s: core.update_workload(s, owner, workload.id, credentials_id=new_login.id),
        first_pauses_before=("get",),
    )

    stored = core.get_workload(storage, owner, workload.id)
    volumes = [core.get_mount_point(storage, owner, i).name for i in stored.mount_point_ids]
    assert (stored.credentials_id, volumes) == (new_login.id, ["C:\\", "D:\\"])


class _Runner:
    instance_id = None

    def launch(self, job: CopyJob) -> None:
        """The test reports the copy itself."""

    def cancel(self, migration_id: int) -> None:
        """Nothing to stop."""

    def queued(self) -> None:
        pass


def test_a_cancel_keeps_the_progress_a_concurrent_report_recorded(storage: Storage, owner: int) -> None:
    """The runner records a volume copied while the run is being cancelled:
    either the report comes first and the cancel keeps what it recorded, or
    the cancel comes first and the report finds the run over."""
    clock = SystemClock()
    login = core.create_credentials(storage, owner, username="admin", password="pw")
    volumes = [core.create_mount_point(storage, owner, name=n, size=50) for n in ("C:\\", "D:\\")]
    workload = core.create_workload(
        storage, owner, ip="10.0.0.2", credentials_id=login.id, mount_point_ids=[v.id for v in volumes]
    )
    target = core.create_migration_target(storage, owner, cloud_type="aws", cloud_credentials_id=login.id)
    migration = core.create_migration(
        storage, owner, clock=clock, source_id=workload.id, migration_target_id=target.id,
        selected_mount_point_ids=[v.id for v in volumes],
    )
    run = RunRef.of(start_run(storage, clock, owner, migration.id))
    halfway_and_more = {run: CopyProgress(volumes=1, partial=10)}  # 60 of 100 bytes

    _, still_running = interleave(
        storage,
        lambda s: core.cancel_run(s, clock, _Runner(), owner, migration.id),
        lambda s: advance_runs(s, clock, halfway_and_more),
    )

    stored = core.get_migration(storage, owner, migration.id)
    events = core.list_events(storage, owner, migration.id, core.ListQuery(limit=100)).items
    copied = [e for e in events if e.kind is core.EventKind.VOLUME_COPIED]
    assert (stored.state, stored.error) == (core.MigrationState.ERROR, "cancelled")
    assert stored.copied is not None
    # A report that found the run still running recorded C:\ copied, at 60%: that stays.
    expected = (60, 1, 1) if still_running == {run} else (0, 0, 0)
    assert (stored.progress, stored.copied.volumes, len(copied)) == expected


def test_a_wave_run_and_a_single_run_sharing_a_login_both_go_through(storage: Storage, owner: int) -> None:
    """A single run holds its migration and reads the login its workload
    shares with another wave member; meanwhile the wave run, having started
    that other member, comes to the single run's migration. Only what a run
    writes back is held, so neither waits for the other in a cycle (which
    PostgreSQL would break by refusing one of them)."""
    clock = SystemClock()
    login = core.create_credentials(storage, owner, username="admin", password="pw")
    members = []
    for ip in ("10.0.1.1", "10.0.1.2"):
        system = core.create_mount_point(storage, owner, name="C:\\", size=10)
        workload = core.create_workload(storage, owner, ip=ip, credentials_id=login.id, mount_point_ids=[system.id])
        target = core.create_migration_target(storage, owner, cloud_type="aws", cloud_credentials_id=login.id)
        members.append(core.create_migration(
            storage, owner, clock=clock, source_id=workload.id, migration_target_id=target.id,
            selected_mount_point_ids=[system.id],
        ).id)
    wave = core.create_wave(storage, owner, name="first", migration_ids=members)

    single, wave_run = interleave(
        storage,
        lambda s: start_run(s, clock, owner, members[1]),
        lambda s: core.run_wave(s, clock, _Runner(), owner, wave.id),
        first_pauses_before=("peek",),  # holding its migration, before it reads the login
    )

    assert single.state is core.MigrationState.RUNNING
    assert wave_run.started == (members[0],)
    assert [(r.migration_id, "already running" in r.detail) for r in wave_run.refused] == [(members[1], True)]


def test_two_changes_waiting_for_each_other_on_postgresql_end_in_one_refusal_that_wrote_nothing(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Each change renames one login, then reads the other's to write it back:
    each waits for the other. PostgreSQL breaks the cycle; the change it
    refuses is a Conflict (409) and none of it stays, the other commits."""
    storage = open_storage("postgresql", request, tmp_path, SECRET, connections=4)
    try:
        with storage.unit_of_work() as uow:
            owner = uow.users.add(core.User("writer", "not-a-real-hash")).id
            uow.commit()
        logins = [core.create_credentials(storage, owner, username=f"login{i}", password="pw") for i in (0, 1)]
        both_renamed = threading.Barrier(2, timeout=PATIENCE)
        outcomes: dict[int, BaseException | None] = {}

        def change(mine: int) -> None:
            try:
                with storage.unit_of_work() as uow:
                    own = uow.credentials.get(owner, logins[mine].id)
                    uow.credentials.update(core.Credentials(owner, f"renamed{mine}", "pw", "", id=own.id))
                    both_renamed.wait()
                    uow.credentials.get(owner, logins[1 - mine].id)
                    uow.commit()
                outcomes[mine] = None
            except BaseException as error:  # noqa: BLE001 - judged below
                outcomes[mine] = error

        threads = [threading.Thread(target=change, args=(i,)) for i in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(PATIENCE)
        assert not any(thread.is_alive() for thread in threads), "the cycle was not broken"
        refused = [i for i, error in outcomes.items() if error is not None]
        assert len(refused) == 1, outcomes
        error = outcomes[refused[0]]
        assert isinstance(error, core.Conflict) and "nothing was written" in error.message
        names = {core.get_credentials(storage, owner, login.id).username for login in logins}
        committed = 1 - refused[0]
        assert names == {f"renamed{committed}", f"login{refused[0]}"}
    finally:
        storage.close()
