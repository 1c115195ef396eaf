"""Every storage adapter, opened fresh for one test by name: the suites that
hold for all of them are parametrized over these names."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.memory import MemoryStorage
from adapters.postgres import PostgresStorage
from adapters.sqlite import SqliteStorage
from migration_core import Storage

SQL_STORAGES = ["sqlite", "postgresql"]
ALL_STORAGES = ["memory", *SQL_STORAGES]


def storage_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path, *, schema: bool = False) -> str:
    """Where a storage of `kind` lives for this test: a fresh, empty one, or
    with `schema` one that holds the latest schema and no row (on PostgreSQL a
    copy of a template, for a test of what is stored, not of the schema's steps)."""
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'storage.db'}"
    return str(request.getfixturevalue("postgres_schema_url" if schema else "postgres_url"))


def open_storage(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, secret: bytes, *, connections: int = 2
) -> Storage:
    """A fresh storage of `kind`; PostgreSQL's opens `connections` at once, so
    that as many threads really run at the same time."""
    url = storage_url(kind, request, tmp_path, schema=True)
    if kind == "memory":
        return MemoryStorage()
    if kind == "sqlite":
        return SqliteStorage(Path(url[len("sqlite:///") :]), secret)
    return PostgresStorage(url, secret, min_connections=connections)
