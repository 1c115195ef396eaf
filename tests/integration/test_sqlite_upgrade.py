"""Upgrades: a database written at an earlier schema version opens in this
release with its data intact and the later steps applied; one written by a
newer release is refused rather than misread."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlite_utils import Database

import migration_core as core
from adapters.clock import SystemClock
from adapters.secrets import SecretBox
from adapters.sql.schema import FILTER_INDEXES, LATEST_VERSION, SchemaTooNew
from adapters.sqlite import SqliteStorage, upgrade
from migration_core.runs import RunRef, complete_run, start_run

SECRET = b"upgrade-suite-secret-key-32-bytes"


def index_names(db: Database) -> set[str]:
    return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


def write_version_1(path: Path) -> None:
    """A file as the first release left it: step 1 only, with an inventory."""
    db = Database(path)
    db.enable_wal()
    db.execute("BEGIN")
    upgrade(db, to_version=1)
    sealed = SecretBox(SECRET).seal("old-password", b"credentials.password")
    db.execute("INSERT INTO users (id, username, password_hash) VALUES (1, 'veteran', 'h')")
    db.execute(
        "INSERT INTO credentials (id, owner_id, username, password, domain)"
        " VALUES (1, 1, 'admin', ?, 'corp')",
        [sealed],
    )
    db.execute("INSERT INTO mount_points (id, owner_id, name, size) VALUES (1, 1, 'C:\\', 10)")
    db.execute("INSERT INTO mount_points (id, owner_id, name, size) VALUES (2, 1, 'D:\\', 20)")
    db.execute("INSERT INTO workloads (id, owner_id, ip, credentials_id) VALUES (1, 1, '10.0.0.1', 1)")
    db.execute(
        "INSERT INTO workload_mount_points (workload_id, position, owner_id, mount_point_id)"
        " VALUES (1, 0, 1, 1), (1, 1, 1, 2)"
    )
    db.execute(
        "INSERT INTO migration_targets (id, owner_id, cloud_type, cloud_credentials_id)"
        " VALUES (1, 1, 'azure', 1)"
    )
    db.execute(
        "INSERT INTO migrations (id, owner_id, source_id, migration_target_id, state, progress)"
        " VALUES (1, 1, 1, 1, 'not_started', 0)"
    )
    db.execute(
        "INSERT INTO migration_mount_points (migration_id, position, owner_id, mount_point_id)"
        " VALUES (1, 0, 1, 1)"
    )
    db.execute("COMMIT")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert not index_names(db) & {f"{t}_by_{c}" for t, c in FILTER_INDEXES}
    db.close()


def test_a_version_1_database_opens_upgraded_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    write_version_1(path)

    storage = SqliteStorage(path, SECRET)
    try:
        credentials = core.get_credentials(storage, 1, 1)
        assert (credentials.username, credentials.password, credentials.domain) == (
            "admin",
            "old-password",
            "corp",
        )
        workload = core.get_workload(storage, 1, 1)
        assert workload.mount_point_ids == (1, 2)
        # Step 8's fields, as the workload and its login had them before: none.
        assert (workload.port, workload.os, workload.root, workload.host_key) == (22, None, "/", None)
        assert not credentials.has_private_key
        target = core.get_migration_target(storage, 1, 1)
        assert (target.host_id, target.root) == (None, None)
        assert core.get_migration_target(storage, 1, 1).cloud_type is core.CloudType.AZURE
        page = core.list_migrations(storage, 1, core.ListQuery(filters={"state": "not_started"}))
        assert [m.id for m in page.items] == [1]

        # Unfiltered counts come from the counts the upgrade filled in.
        everything = core.ListQuery(limit=1000)
        assert core.list_mount_points(storage, 1, everything).count == 2
        assert core.list_credentials(storage, 1, everything).count == 1

        # It works, not merely reads: new objects, and a run to success.
        added = core.create_mount_point(storage, 1, name="E:\\", size=5)
        assert added.id == 3
        assert core.list_mount_points(storage, 1, everything).count == 3
        clock = SystemClock()
        start_run(storage, clock, 1, 1)
        finished = complete_run(storage, clock, RunRef(1, 1))
        assert finished is not None and finished.state is core.MigrationState.SUCCESS
    finally:
        storage.close()

    db = Database(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION == 10
    assert {f"{t}_by_{c}" for t, c in FILTER_INDEXES} <= index_names(db)
    plan = " ".join(
        str(row[-1])
        for row in db.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM migrations WHERE owner_id = 1 AND state = 'error'"
            " ORDER BY id"
        )
    )
    assert "migrations_by_state" in plan
    db.close()


def test_a_new_database_is_created_at_the_latest_version(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dirs" / "new.db"
    SqliteStorage(path, SECRET).close()
    db = Database(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
    assert db.journal_mode == "wal"
    db.close()


def test_a_database_from_a_newer_release_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    SqliteStorage(path, SECRET).close()
    db = Database(path)
    db.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    before = db.execute("SELECT name FROM sqlite_master ORDER BY name").fetchall()
    db.close()

    with pytest.raises(SchemaTooNew, match="newer release"):
        SqliteStorage(path, SECRET)

    db = Database(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION + 1
    assert db.execute("SELECT name FROM sqlite_master ORDER BY name").fetchall() == before
    db.close()
