"""In-memory storage: a shipped adapter and the unit tests' fake.

One lock serialises units of work, so it is safe from many threads; each unit
keeps an undo log and rolls its changes back unless committed. It enforces the
same constraints as the SQLite schema (unique ip per owner, a mount point in one
workload, one running migration per target, unique usernames, references that
must exist and that block deletes), so the two behave alike."""

from __future__ import annotations

import enum
import itertools
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

import attrs

from migration_core import (
    Conflict,
    Credentials,
    ListQuery,
    Migration,
    MigrationState,
    MigrationTarget,
    MountPoint,
    NotFound,
    User,
    Workload,
)

E = TypeVar("E", Credentials, MountPoint, Workload, MigrationTarget, Migration)

# (referring table, field, referred table): the foreign keys of the model.
REFERENCES = [
    ("workloads", "credentials_id", "credentials"),
    ("workloads", "mount_point_ids", "mount_points"),
    ("migration_targets", "cloud_credentials_id", "credentials"),
    ("migrations", "source_id", "workloads"),
    ("migrations", "migration_target_id", "migration_targets"),
    ("migrations", "selected_mount_point_ids", "mount_points"),
]


def _ids_in(entity: object, field: str) -> Sequence[int]:
    value = getattr(entity, field)
    return value if isinstance(value, tuple) else (value,)


def _plain(value: object) -> object:
    return value.value if isinstance(value, enum.Enum) else value


class _Tables:
    def __init__(self) -> None:
        self.rows: dict[str, dict[int, Any]] = {
            name: {}
            for name in (
                "users",
                "credentials",
                "mount_points",
                "workloads",
                "migration_targets",
                "migrations",
            )
        }
        self.ids = {name: itertools.count(1) for name in self.rows}


class MemoryStorage:
    reads_never_wait = False  # a read waits for the lock a writing unit holds

    def __init__(self) -> None:
        self._tables = _Tables()
        self._lock = threading.RLock()

    def unit_of_work(self, *, write: bool = True) -> MemoryUnitOfWork:
        return MemoryUnitOfWork(self._tables, self._lock)

    def check(self) -> None:
        """Memory always answers."""

    def close(self) -> None:
        """Nothing to release."""


class MemoryUnitOfWork:
    def __init__(self, tables: _Tables, lock: threading.RLock) -> None:
        self._tables = tables
        self._lock = lock
        self._undo: list[tuple[str, int, Any]] = []
        self._committed = False
        self.users = _Users(self)
        self.credentials: _Repository[Credentials] = _Repository(self, "credentials")
        self.mount_points: _Repository[MountPoint] = _Repository(self, "mount_points")
        self.workloads = _Workloads(self, "workloads")
        self.migration_targets: _Repository[MigrationTarget] = _Repository(self, "migration_targets")
        self.migrations = _Migrations(self, "migrations")

    def __enter__(self) -> MemoryUnitOfWork:
        self._lock.acquire()
        self._undo.clear()
        self._committed = False
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if not self._committed:
                for table, row_id, previous in reversed(self._undo):
                    if previous is None:
                        self._tables.rows[table].pop(row_id, None)
                    else:
                        self._tables.rows[table][row_id] = previous
            self._undo.clear()
        finally:
            self._lock.release()

    def commit(self) -> None:
        self._committed = True
        self._undo.clear()

    # -- used by the repositories --

    def table(self, name: str) -> dict[int, Any]:
        return self._tables.rows[name]

    def next_id(self, name: str) -> int:
        return next(self._tables.ids[name])

    def write(self, name: str, row_id: int, row: Any | None) -> None:
        rows = self._tables.rows[name]
        self._undo.append((name, row_id, rows.get(row_id)))
        if row is None:
            del rows[row_id]
        else:
            rows[row_id] = row


class _Users:
    def __init__(self, uow: MemoryUnitOfWork) -> None:
        self._uow = uow

    def add(self, user: User) -> User:
        if self.by_username(user.username) is not None:
            raise Conflict(f"The username {user.username!r} is taken.")
        stored = attrs.evolve(user, id=self._uow.next_id("users"))
        self._uow.write("users", stored.id, stored)
        return stored

    def get(self, user_id: int) -> User:
        user: User | None = self._uow.table("users").get(user_id)
        if user is None:
            raise NotFound(f"User {user_id} not found.")
        return user

    def by_username(self, username: str) -> User | None:
        return next((u for u in self._uow.table("users").values() if u.username == username), None)

    def delete(self, user_id: int) -> None:
        self.get(user_id)
        owned = [
            name
            for name, rows in self._uow._tables.rows.items()
            if name != "users" and any(row.owner_id == user_id for row in rows.values())
        ]
        if owned:
            raise Conflict(f"User {user_id} still owns {', '.join(owned)}.")
        self._uow.write("users", user_id, None)


class _Repository(Generic[E]):
    def __init__(self, uow: MemoryUnitOfWork, name: str) -> None:
        self._uow = uow
        self._name = name

    @property
    def _rows(self) -> dict[int, E]:
        return self._uow.table(self._name)

    def add(self, entity: E) -> E:
        stored = attrs.evolve(entity, id=self._uow.next_id(self._name))
        self._check(stored)
        self._uow.write(self._name, stored.id, stored)
        return stored

    def get(self, owner_id: int, entity_id: int) -> E:
        entity = self._rows.get(entity_id)
        if entity is None or entity.owner_id != owner_id:
            raise NotFound(f"{self._noun} {entity_id} not found.")
        return entity

    def update(self, entity: E) -> E:
        self.get(entity.owner_id, entity.id)
        self._check(entity)
        self._uow.write(self._name, entity.id, entity)
        return entity

    def delete(self, owner_id: int, entity_id: int) -> None:
        self.get(owner_id, entity_id)
        for table, field, referred in REFERENCES:
            if referred == self._name and self._referrers_in(table, field, entity_id):
                raise Conflict(f"{self._noun} {entity_id} is still referred to by {table}.")
        self._uow.write(self._name, entity_id, None)

    def find(self, owner_id: int, query: ListQuery) -> tuple[int, list[E]]:
        matching = [
            entity
            for entity in self._rows.values()
            if entity.owner_id == owner_id
            and all(_plain(getattr(entity, f)) == v for f, v in query.filters.items())
        ]
        matching.sort(key=lambda e: e.id, reverse=query.descending)
        return len(matching), matching[query.offset : query.offset + query.limit]

    def referrers(self, field: str, entity_id: int) -> list[int]:
        return self._referrers_in(self._name, field, entity_id)

    def _referrers_in(self, table: str, field: str, entity_id: int) -> list[int]:
        rows: dict[int, Any] = self._uow.table(table)
        return sorted(i for i, row in rows.items() if entity_id in _ids_in(row, field))

    @property
    def _noun(self) -> str:
        return self._name.replace("_", " ").capitalize()

    def _check(self, entity: E) -> None:
        """The constraints a database would enforce: the owner and every
        referenced row must exist."""
        if entity.owner_id not in self._uow.table("users"):
            raise Conflict(f"{self._noun} refer to a missing user {entity.owner_id}.")
        for table, field, referred in REFERENCES:
            if table != self._name:
                continue
            rows = self._uow.table(referred)
            for ref in _ids_in(entity, field):
                if ref not in rows or rows[ref].owner_id != entity.owner_id:
                    raise Conflict(f"{field} refers to a missing {referred} row {ref}.")


class _Workloads(_Repository[Workload]):
    def _check(self, entity: Workload) -> None:
        super()._check(entity)
        for other in self._rows.values():
            if other.id == entity.id or other.owner_id != entity.owner_id:
                continue
            if other.ip == entity.ip:
                raise Conflict(f"Workload {other.id} already has ip {entity.ip}.")
            shared = set(other.mount_point_ids) & set(entity.mount_point_ids)
            if shared:
                raise Conflict(
                    f"Mount point {min(shared)} already belongs to workload {other.id}."
                )


class _Migrations(_Repository[Migration]):
    def update_if(self, migration: Migration, expected: Sequence[MigrationState]) -> Migration:
        current = self.get(migration.owner_id, migration.id)
        if current.state not in expected:
            raise Conflict(f"Migration {migration.id} is {current.state.value}.")
        return self.update(migration)

    def running(self) -> list[Migration]:
        return [m for m in self._rows.values() if m.state is MigrationState.RUNNING]

    def count_in_state(self, state: MigrationState) -> int:
        return sum(1 for m in self._rows.values() if m.state is state)

    def _check(self, entity: Migration) -> None:
        super()._check(entity)
        if entity.state is MigrationState.RUNNING:
            for other in self._rows.values():
                if (
                    other.id != entity.id
                    and other.state is MigrationState.RUNNING
                    and other.migration_target_id == entity.migration_target_id
                ):
                    raise Conflict(
                        f"Migration target {entity.migration_target_id} is busy"
                        f" with migration {other.id}."
                    )


