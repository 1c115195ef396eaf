"""Group commit: write use cases queued together share one transaction, yet
each succeeds or fails on its own, as if it had committed alone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import migration_core as core
from adapters.sqlite import SqliteStorage
from adapters.sqlite_group_commit import GroupCommitExecutor

SECRET = b"group-commit-secret-key-32-bytes!"


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SqliteStorage]:
    store = SqliteStorage(tmp_path / "batch.db", SECRET)
    yield store
    store.close()


@pytest.fixture
def owner(storage: SqliteStorage) -> int:
    with storage.unit_of_work() as uow:
        user = uow.users.add(core.User("writer", "not-a-real-hash"))
        uow.commit()
    return user.id


def usernames(storage: SqliteStorage, owner: int) -> list[str]:
    page = core.list_credentials(storage, owner, core.ListQuery(limit=1000))
    return [c.username for c in page.items]


def test_a_failing_use_case_rolls_back_alone_within_a_shared_batch(storage: SqliteStorage, owner: int) -> None:
    executor = GroupCommitExecutor(storage)
    gate = threading.Event()
    try:
        # The first job holds the writer, so the next ones queue into one batch.
        blocker = executor.submit(gate.wait, 30)

        def half_written_then_broken() -> None:
            with storage.unit_of_work() as uow:
                uow.credentials.add(core.Credentials(owner, "half-written", "pw"))
                raise RuntimeError("the use case broke mid-way")

        before = executor.submit(core.create_credentials, storage, owner, username="before", password="pw")
        broken = executor.submit(half_written_then_broken)
        refused = executor.submit(core.create_workload, storage, owner, ip="10.0.0.1", credentials_id=10**6)
        after = executor.submit(core.create_credentials, storage, owner, username="after", password="pw")
        gate.set()
        assert blocker.result(timeout=30) is True
        assert before.result(timeout=30).username == "before"
        with pytest.raises(RuntimeError, match="mid-way"):
            broken.result(timeout=30)
        with pytest.raises(core.InvalidInput):
            refused.result(timeout=30)
        assert after.result(timeout=30).username == "after"
    finally:
        executor.shutdown()
    assert usernames(storage, owner) == ["before", "after"]


def test_every_write_from_many_threads_is_stored_once(storage: SqliteStorage, owner: int) -> None:
    executor = GroupCommitExecutor(storage, max_batch=16)
    try:
        futures = [
            executor.submit(core.create_credentials, storage, owner, username=f"user{i}", password="pw")
            for i in range(300)
        ]
        created = [future.result(timeout=60) for future in futures]
    finally:
        executor.shutdown()
    assert sorted(c.username for c in created) == sorted(f"user{i}" for i in range(300))
    assert sorted(usernames(storage, owner)) == sorted(f"user{i}" for i in range(300))
    assert len({c.id for c in created}) == 300


def test_unique_ip_still_holds_when_contenders_share_a_batch(storage: SqliteStorage, owner: int) -> None:
    login = core.create_credentials(storage, owner, username="admin", password="pw")
    executor = GroupCommitExecutor(storage)
    gate = threading.Event()
    try:
        executor.submit(gate.wait, 30)
        contenders = [
            executor.submit(core.create_workload, storage, owner, ip="10.1.1.1", credentials_id=login.id)
            for _ in range(16)
        ]
        gate.set()
        outcomes = [future.exception(timeout=30) for future in contenders]
    finally:
        executor.shutdown()
    assert sum(outcome is None for outcome in outcomes) == 1
    assert all(isinstance(outcome, core.Conflict) for outcome in outcomes if outcome is not None)


def test_a_shut_down_executor_finishes_its_queue_and_takes_no_more(storage: SqliteStorage, owner: int) -> None:
    executor = GroupCommitExecutor(storage)
    queued = [
        executor.submit(core.create_credentials, storage, owner, username=f"late{i}", password="pw")
        for i in range(20)
    ]
    executor.shutdown()
    assert all(future.done() and future.exception() is None for future in queued)
    with pytest.raises(RuntimeError):
        executor.submit(core.create_credentials, storage, owner, username="too-late", password="pw")
