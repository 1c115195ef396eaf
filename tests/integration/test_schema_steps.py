"""The schema's upgrade steps, on each SQL dialect: a database left at any
earlier version and opened by this release ends with exactly the schema a
fresh database gets; instances that open one database at once all succeed."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from adapters.sql.schema import EVENT_KINDS, LATEST_VERSION, POSTGRES, SQLITE, upgrade
from entrypoints.bootstrap import open_storage
from migration_core import EventKind

from .storages import SQL_STORAGES, storage_url

SECRET = b"schema-suite-secret-key-32-bytes!"


def test_the_schema_admits_exactly_the_cores_event_kinds() -> None:
    """The schema's CHECK is written out, as a step must stay as it was
    released: a kind added to the core needs a step that admits it."""
    assert EVENT_KINDS == tuple(kind.value for kind in EventKind)


def describe(url: str) -> dict[str, Any]:
    """The schema as the database itself reports it, in a comparable form."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url[len("sqlite:///") :]) as db:
            tables = [r[0] for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name <> 'sqlite_sequence'"
            )]
            schema: dict[str, Any] = {
                "version": db.execute("PRAGMA user_version").fetchone()[0],
                "triggers": sorted(r[0] for r in db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger'"
                )),
            }
            for table in tables:
                indexes = db.execute(f"PRAGMA index_list({table})").fetchall()
                schema[table] = {
                    "columns": db.execute(f"PRAGMA table_info({table})").fetchall(),
                    "foreign_keys": sorted(db.execute(f"PRAGMA foreign_key_list({table})").fetchall()),
                    "indexes": sorted(
                        (name, unique, origin, partial,
                         tuple(r[2] for r in db.execute(f"PRAGMA index_info({name})")))
                        for _seq, name, unique, origin, partial in indexes
                    ),
                }
        db.close()
        return schema
    with psycopg.connect(url) as db:
        return {
            "version": db.execute("SELECT version FROM schema_version").fetchall(),
            "columns": db.execute(
                "SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity"
                " FROM information_schema.columns WHERE table_schema = 'public'"
                " ORDER BY table_name, column_name"
            ).fetchall(),
            "constraints": db.execute(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
                " FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2"
            ).fetchall(),
            "indexes": db.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
            ).fetchall(),
        }


def leave_at_version(url: str, version: int) -> None:
    """A database as a release that knew `version` steps left it."""
    if url.startswith("sqlite:///"):
        db = sqlite3.connect(url[len("sqlite:///") :], isolation_level=None)
        db.execute("BEGIN")
        upgrade(db.execute, SQLITE, 0, version)
        db.execute(f"PRAGMA user_version = {version}")
        db.execute("COMMIT")
        db.close()
        return
    with psycopg.connect(url) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        upgrade(db.execute, POSTGRES, 0, version)
        db.execute("INSERT INTO schema_version (version) VALUES (%s)", [version])


@pytest.mark.parametrize("kind", SQL_STORAGES)
@pytest.mark.parametrize("version", range(1, LATEST_VERSION))
def test_a_database_upgraded_from_an_earlier_version_equals_a_fresh_one(
    kind: str, version: int, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    fresh = storage_url(kind, request, tmp_path / "fresh")
    (tmp_path / "fresh").mkdir()
    open_storage(fresh, SECRET).close()

    if kind == "sqlite":
        old = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        server = request.getfixturevalue("postgres_server")
        old = server.url(server.create_database())
    leave_at_version(old, version)
    assert describe(old) != describe(fresh)
    open_storage(old, SECRET).close()
    assert describe(old) == describe(fresh)


@pytest.mark.parametrize("kind", SQL_STORAGES)
def test_instances_opening_a_new_database_at_once_all_succeed(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = storage_url(kind, request, tmp_path)
    barrier = threading.Barrier(6)
    failures: list[BaseException] = []

    def open_one() -> None:
        barrier.wait(timeout=30)
        try:
            open_storage(url, SECRET).close()
        except BaseException as error:  # noqa: BLE001 - every outcome is counted
            failures.append(error)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    assert describe(url)["version"] in (LATEST_VERSION, [(LATEST_VERSION,)])


# Every (owner_id, id) key that a composite foreign key refers to.
REFERRED = ["credentials", "mount_points", "workloads", "migration_targets", "migrations", "waves"]


@pytest.mark.parametrize("table", REFERRED)
def test_a_foreign_key_check_planned_on_an_empty_table_looks_up_its_key(table: str, postgres_url: str) -> None:
    """PostgreSQL keeps the plan of a foreign key's check made while the table
    was empty: that plan must find the row by its whole key, not read every
    row of the owner (which made a large import slower with every row)."""
    open_storage(postgres_url, SECRET).close()
    with psycopg.connect(postgres_url) as db:
        db.execute("SET plan_cache_mode = force_generic_plan")
        db.execute(
            f"PREPARE check_key (bigint, bigint) AS"
            f" SELECT 1 FROM ONLY {table} x WHERE owner_id = $1 AND id = $2 FOR KEY SHARE OF x"
        )
        plan = "\n".join(row[0] for row in db.execute("EXPLAIN EXECUTE check_key (1, 1)"))
    assert "Index Cond: ((owner_id = $1) AND (id = $2))" in plan, plan
    assert "Filter" not in plan, plan
