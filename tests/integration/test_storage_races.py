"""Races on one SQL database (an SQLite file, a PostgreSQL database), with real
threads released together by a barrier: the constraints and write transactions
decide, so exactly one contender wins and nobody sees a lock error. On SQLite
the writes of one database are serialised, so the core's own checks already
decide there; on PostgreSQL they run at once, and the constraints decide."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import migration_core as core
from adapters.clock import SystemClock
from migration_core import Storage
from migration_core.runs import start_run

from .storages import SQL_STORAGES, open_storage

SECRET = b"race-suite-secret-key-of-32-bytes"


@pytest.fixture(params=SQL_STORAGES)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    store = open_storage(request.param, request, tmp_path, SECRET, connections=16)
    yield store
    store.close()


@pytest.fixture
def owner(storage: Storage) -> int:
    with storage.unit_of_work() as uow:
        user = uow.users.add(core.User("racer", "not-a-real-hash"))
        uow.commit()
    return user.id


def race(contenders: int, attempt: Callable[[], Any]) -> tuple[list[Any], list[BaseException]]:
    """Run `attempt` in `contenders` threads at once; its results, and its errors."""
    barrier = threading.Barrier(contenders)
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def contender() -> None:
        barrier.wait(timeout=30)
        try:
            outcome = attempt()
        except BaseException as exc:  # noqa: BLE001 - every outcome is counted
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=contender) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a contender hung"
    return results, errors


def test_of_16_workloads_with_one_ip_exactly_one_is_created(
    storage: Storage, owner: int
) -> None:
    credentials = core.create_credentials(storage, owner, username="admin", password="pw")

    created, errors = race(
        16,
        lambda: core.create_workload(
            storage, owner, ip="192.168.10.20", credentials_id=credentials.id
        ),
    )

    assert len(created) == 1
    assert len(errors) == 15 and all(isinstance(e, core.Conflict) for e in errors), errors
    page = core.list_workloads(storage, owner, core.ListQuery())
    assert page.count == 1 and page.items == created


def test_of_8_starts_of_one_migration_exactly_one_starts_it(
    storage: Storage, owner: int
) -> None:
    credentials = core.create_credentials(storage, owner, username="admin", password="pw")
    system = core.create_mount_point(storage, owner, name="C:\\", size=10)
    workload = core.create_workload(
        storage, owner, ip="10.0.0.1", credentials_id=credentials.id, mount_point_ids=[system.id]
    )
    target = core.create_migration_target(
        storage, owner, cloud_type="aws", cloud_credentials_id=credentials.id
    )
    migration = core.create_migration(
        storage,
        owner,
        clock=SystemClock(),
        source_id=workload.id,
        migration_target_id=target.id,
        selected_mount_point_ids=[system.id],
    )

    started, errors = race(8, lambda: start_run(storage, SystemClock(), owner, migration.id))

    assert len(started) == 1 and started[0].state is core.MigrationState.RUNNING
    assert len(errors) == 7 and all(isinstance(e, core.Conflict) for e in errors), errors
    assert core.get_migration(storage, owner, migration.id) == started[0]


def test_concurrent_read_modify_writes_all_succeed(storage: Storage, owner: int) -> None:
    """Each update reads, then writes. Write units take the write lock when they
    begin, so none fails with a lock error for having started as a reader."""
    credentials = core.create_credentials(storage, owner, username="admin", password="pw")
    rounds = 5

    def edit_and_list() -> int:
        for i in range(rounds):
            core.update_credentials(storage, owner, credentials.id, domain=f"d{i}")
            core.list_credentials(storage, owner, core.ListQuery())
        return rounds

    done, errors = race(8, edit_and_list)

    assert errors == [] and sum(done) == 8 * rounds
