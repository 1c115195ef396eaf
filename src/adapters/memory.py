"""In-memory storage: a shipped adapter and the unit tests' fake.

One lock serialises units of work, so it is safe from many threads; each unit
keeps an undo log and rolls its changes back unless committed. It enforces the
same constraints as the SQL schema (unique ip per owner, a mount point in one
workload, a migration in one wave, unique wave names per owner, one running
migration per target, unique usernames, references that must exist and that
block deletes), and refuses in the same words
(`refusals`), so they behave alike. A unit entered inside another on the same
thread is a savepoint of it, as in SQL: when the outer unit rolls back, what
the inner one committed goes too."""

from __future__ import annotations

import enum
import itertools
import threading
from collections.abc import Collection, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, TypeVar

import attrs

from migration_core import (
    Credentials,
    CredentialsSummary,
    Event,
    ListQuery,
    Migration,
    MigrationState,
    MigrationTarget,
    MountPoint,
    Phase,
    User,
    Wave,
    Workload,
)

from . import refusals
from .instances import MemoryRegistry

E = TypeVar("E", Credentials, MountPoint, Workload, MigrationTarget, Migration, Wave)

# (referring table, field, referred table): the foreign keys of the model.
REFERENCES = [
    ("workloads", "credentials_id", "credentials"),
    ("workloads", "mount_point_ids", "mount_points"),
    ("migration_targets", "cloud_credentials_id", "credentials"),
    ("migration_targets", "host_id", "workloads"),
    ("migrations", "source_id", "workloads"),
    ("migrations", "migration_target_id", "migration_targets"),
    ("migrations", "selected_mount_point_ids", "mount_points"),
    ("waves", "migration_ids", "migrations"),
]


def _ids_in(entity: object, field: str) -> Sequence[int]:
    value = getattr(entity, field)
    if value is None:  # an optional reference, unset
        return ()
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
                "waves",
                "wave_members",  # migration id -> _Membership: the waves' lists, inverted
                "events",
                "login_failures",
            )
        }
        self.ids = {name: itertools.count(1) for name in self.rows}


class MemoryStorage:
    def __init__(self) -> None:
        self._tables = _Tables()
        self._lock = threading.RLock()
        self._open = threading.local()  # this thread's units, outermost first
        self._registry = MemoryRegistry()

    def unit_of_work(self, *, write: bool = True, undo_nested: bool = True) -> MemoryUnitOfWork:
        # Undoing a nested unit alone costs memory nothing: it always is.
        return MemoryUnitOfWork(self._tables, self._lock, self._open)

    reads_never_wait = False  # a unit holds the one lock, reading or not

    def instance_registry(self) -> MemoryRegistry:
        return self._registry

    def write_executor(self) -> None:
        return None

    def check(self) -> None:
        """Memory always answers."""

    def close(self) -> None:
        """Nothing to release."""


class MemoryUnitOfWork:
    def __init__(self, tables: _Tables, lock: threading.RLock, open_units: threading.local) -> None:
        self._tables = tables
        self._lock = lock
        self._open_units = open_units
        self._undo: list[tuple[str, int, Any]] = []
        self._committed = False
        self.users = _Users(self)
        self.credentials: _Repository[Credentials] = _Repository(self, "credentials")
        self.credentials_summaries = _CredentialsSummaries(self.credentials)
        self.mount_points: _Repository[MountPoint] = _Repository(self, "mount_points")
        self.workloads = _Workloads(self, "workloads")
        self.migration_targets: _Repository[MigrationTarget] = _Repository(self, "migration_targets")
        self.migrations = _Migrations(self, "migrations")
        self.waves = _Waves(self, "waves")
        self.events = _Events(self)
        self.login_failures = _LoginFailures(self)

    def __enter__(self) -> MemoryUnitOfWork:
        self._lock.acquire()
        self._undo.clear()
        self._committed = False
        self._stack.append(self)
        return self

    @property
    def _stack(self) -> list[MemoryUnitOfWork]:
        stack: list[MemoryUnitOfWork] | None = getattr(self._open_units, "stack", None)
        if stack is None:
            stack = self._open_units.stack = []
        return stack

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
            self._stack.pop()
            self._lock.release()

    def commit(self) -> None:
        self._committed = True
        stack = self._stack
        if len(stack) > 1:
            # A savepoint released: its changes become the outer unit's to undo.
            stack[-2]._undo.extend(self._undo)
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
            raise refusals.username_taken(user.username)
        stored = attrs.evolve(user, id=self._uow.next_id("users"))
        self._uow.write("users", stored.id, stored)
        return stored

    def get(self, user_id: int) -> User:
        user: User | None = self._uow.table("users").get(user_id)
        if user is None:
            raise refusals.not_found("users", user_id)
        return user

    def by_username(self, username: str) -> User | None:
        return next((u for u in self._uow.table("users").values() if u.username == username), None)

    def delete(self, user_id: int) -> None:
        self.get(user_id)
        owned = [
            name
            for name, rows in self._uow._tables.rows.items()
            if name not in ("users", "login_failures")
            and any(row.owner_id == user_id for row in rows.values())
        ]
        if owned:
            raise refusals.still_owns(user_id, owned)
        self._uow.write("users", user_id, None)


class _CredentialsSummaries:
    """Summaries of what the credentials repository holds (memory seals nothing)."""

    def __init__(self, credentials: _Repository[Credentials]) -> None:
        self._credentials = credentials

    def get(self, owner_id: int, entity_id: int) -> CredentialsSummary:
        return CredentialsSummary.of(self._credentials.get(owner_id, entity_id))

    def find(self, owner_id: int, query: ListQuery) -> tuple[int, list[CredentialsSummary]]:
        count, found = self._credentials.find(owner_id, query)
        return count, [CredentialsSummary.of(credentials) for credentials in found]


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
        self._written(None, stored)
        return stored

    def get(self, owner_id: int, entity_id: int) -> E:
        entity = self._rows.get(entity_id)
        if entity is None or entity.owner_id != owner_id:
            raise refusals.not_found(self._name, entity_id)
        return self._view(entity)

    def peek(self, owner_id: int, entity_id: int) -> E:
        return self.get(owner_id, entity_id)  # writers take turns: nothing to hold

    def update(self, entity: E) -> E:
        before = self.get(entity.owner_id, entity.id)
        self._check(entity)
        self._uow.write(self._name, entity.id, entity)
        self._written(before, entity)
        return entity

    def delete(self, owner_id: int, entity_id: int) -> None:
        before = self.get(owner_id, entity_id)
        for table, field, referred in REFERENCES:
            if referred == self._name and self._referrers_in(table, field, entity_id):
                raise refusals.still_referred(self._name, entity_id, table)
        self._uow.write(self._name, entity_id, None)
        self._written(before, None)

    def find(self, owner_id: int, query: ListQuery) -> tuple[int, list[E]]:
        matching = [
            entity
            for entity in map(self._view, self._rows.values())
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

    def _view(self, entity: E) -> E:
        """The entity as read: with what storage derives from other rows."""
        return entity

    def _written(self, before: E | None, after: E | None) -> None:
        """Keep what is derived from this row in step with it."""

    def _check(self, entity: E) -> None:
        """The constraints a database would enforce: the owner and every
        referenced row must exist."""
        if entity.owner_id not in self._uow.table("users"):
            raise refusals.missing_owner(entity.owner_id)
        for table, field, referred in REFERENCES:
            if table != self._name:
                continue
            rows = self._uow.table(referred)
            for ref in _ids_in(entity, field):
                if ref not in rows or rows[ref].owner_id != entity.owner_id:
                    raise refusals.missing_reference(field, referred, ref)


class _Workloads(_Repository[Workload]):
    def _check(self, entity: Workload) -> None:
        super()._check(entity)
        for other in self._rows.values():
            if other.id == entity.id or other.owner_id != entity.owner_id:
                continue
            if other.ip == entity.ip:
                raise refusals.ip_taken(other.id, entity.ip)
            shared = set(other.mount_point_ids) & set(entity.mount_point_ids)
            if shared:
                raise refusals.mount_point_taken(min(shared), other.id)


def _carried(migration: Migration) -> bool:
    """Held by an instance: neither waiting for a slot nor between syncs."""
    return not migration.waiting_for_a_slot and migration.phase is not Phase.IN_SYNC


class _Migrations(_Repository[Migration]):
    def update_if(self, migration: Migration, expected: Sequence[MigrationState]) -> Migration:
        current = self.get(migration.owner_id, migration.id)
        if current.state not in expected:
            raise refusals.not_in_state(migration.id, current.state.value)
        return self.update(migration)

    def running(self, instance_ids: Collection[str | None] | None = None) -> list[Migration]:
        return [
            self._view(m)
            for m in sorted(self._rows.values(), key=lambda m: m.id)
            if m.state is MigrationState.RUNNING
            and (instance_ids is None or m.instance_id in instance_ids)
        ]

    def running_instances(self) -> set[str | None]:
        return {m.instance_id for m in self.running() if _carried(m)}

    def any_queued(self) -> bool:
        return any(m.waiting_for_a_slot for m in self._rows.values())

    def _queue(self) -> list[Migration]:
        waiting = [m for m in self._rows.values() if m.waiting_for_a_slot]
        return sorted(waiting, key=lambda m: (m.phase is not Phase.CUTTING_OVER, m.queued_at, m.id))

    def next_queued(self, busy_machines: Collection[int], *, simulated: bool = False) -> Migration | None:
        targets: dict[int, MigrationTarget] = self._uow.table("migration_targets")
        for migration in self._queue():
            host_id = targets[migration.migration_target_id].host_id
            if (host_id is None) != simulated:
                continue
            if simulated or migration.source_id not in busy_machines and host_id not in busy_machines:
                return self._view(migration)
        return None

    def queue_position(self, migration: Migration) -> int | None:
        ids = [m.id for m in self._queue()]
        return ids.index(migration.id) + 1 if migration.id in ids else None

    def due(self, now: datetime) -> list[tuple[int, int]]:
        return [(m.owner_id, m.id) for m in self.running() if m.sync_due(now)]

    def count_in_state(self, state: MigrationState) -> int:
        return sum(1 for m in self._rows.values() if m.state is state)
    def delete(self, owner_id: int, entity_id: int) -> None:
        super().delete(owner_id, entity_id)
        events: dict[int, Event] = self._uow.table("events")
        for event_id in [i for i, e in events.items() if e.migration_id == entity_id]:
            self._uow.write("events", event_id, None)

    def _check(self, entity: Migration) -> None:
        super()._check(entity)
        if entity.state is MigrationState.RUNNING:
            for other in self._rows.values():
                if (
                    other.id != entity.id
                    and other.state is MigrationState.RUNNING
                    and other.migration_target_id == entity.migration_target_id
                ):
                    raise refusals.target_busy(entity.migration_target_id, other.id)

    def _view(self, entity: Migration) -> Migration:
        membership: _Membership | None = self._uow.table("wave_members").get(entity.id)
        wave_id = None if membership is None else membership.wave_id
        return entity if entity.wave_id == wave_id else attrs.evolve(entity, wave_id=wave_id)


@attrs.frozen
class _Membership:
    owner_id: int
    wave_id: int


class _Waves(_Repository[Wave]):
    def _check(self, entity: Wave) -> None:
        super()._check(entity)
        for other in self._rows.values():
            if other.id != entity.id and other.owner_id == entity.owner_id and other.name == entity.name:
                raise refusals.name_taken("waves", other.id, entity.name)
        members: dict[int, _Membership] = self._uow.table("wave_members")
        for migration_id in entity.migration_ids:
            held = members.get(migration_id)
            if held is not None and held.wave_id != entity.id:
                raise refusals.migration_in_wave(migration_id, held.wave_id)

    def _written(self, before: Wave | None, after: Wave | None) -> None:
        if before is not None:
            for migration_id in before.migration_ids:
                self._uow.write("wave_members", migration_id, None)
        if after is not None:
            for migration_id in after.migration_ids:
                self._uow.write("wave_members", migration_id, _Membership(after.owner_id, after.id))
class _Events:
    """Ids are taken under the storage's lock, so they become visible in order."""

    def __init__(self, uow: MemoryUnitOfWork) -> None:
        self._uow = uow

    @property
    def _rows(self) -> dict[int, Event]:
        return self._uow.table("events")

    def append(self, event: Event) -> Event:
        migration = self._uow.table("migrations").get(event.migration_id)
        if migration is None or migration.owner_id != event.owner_id:
            raise refusals.missing_reference("migration_id", "migrations", event.migration_id)
        stored = attrs.evolve(event, id=self._uow.next_id("events"))
        self._uow.write("events", stored.id, stored)
        return stored

    def find(self, owner_id: int, migration_id: int, query: ListQuery) -> tuple[int, list[Event]]:
        matching = [
            event
            for event in self._rows.values()
            if event.owner_id == owner_id
            and event.migration_id == migration_id
            and all(_plain(getattr(event, f)) == v for f, v in query.filters.items())
        ]
        matching.sort(key=lambda e: e.id, reverse=query.descending)
        return len(matching), matching[query.offset : query.offset + query.limit]

    def after(self, owner_id: int | None, event_id: int, limit: int) -> list[Event]:
        rows = self._rows
        newer = (rows[i] for i in sorted(i for i in rows if i > event_id))
        return list(itertools.islice((e for e in newer if owner_id in (None, e.owner_id)), limit))

    def last_id(self) -> int:
        return max(self._rows, default=0)


class _LoginFailures:
    def __init__(self, uow: MemoryUnitOfWork) -> None:
        self._uow = uow

    def add(self, username: str, at: float) -> None:
        self._uow.write("login_failures", self._uow.next_id("login_failures"), (username, at))

    def since(self, username: str, moment: float) -> list[float]:
        rows: dict[int, tuple[str, float]] = self._uow.table("login_failures")
        return sorted(at for name, at in rows.values() if name == username and at > moment)

    def forget(self, before: float) -> None:
        rows: dict[int, tuple[str, float]] = self._uow.table("login_failures")
        for row_id in [i for i, (_name, at) in rows.items() if at <= before]:
            self._uow.write("login_failures", row_id, None)
