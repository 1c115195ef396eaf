"""The repositories of the entity kinds: statements made from each table's
description (`tables`), rows read back into entities, and, when the database
refuses a write, the reason, in the words of `adapters.refusals`."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import datetime
from typing import Any, Generic, TypeVar

import attrs

from migration_core import (
    Conflict,
    Credentials,
    CredentialsSummary,
    ListQuery,
    Migration,
    MigrationState,
    MigrationTarget,
    MountPoint,
    Phase,
    Wave,
    Workload,
)

from .. import refusals
from .codec import Codec, iso_utc
from .errors import ConstraintViolation, translated
from .session import Session
from .tables import KINDS, LISTED, EntityTable, chunks, marks

E = TypeVar("E", Credentials, CredentialsSummary, MountPoint, Workload, MigrationTarget, Migration, Wave)


class Repository(Generic[E]):
    def __init__(self, session: Session, kind: EntityTable) -> None:
        self._session = session
        self._kind = kind
        self._select, self._insert, self._update = kind.statements
        # Where the dialect reads a list with its row: one round trip, not two.
        self._list_in_row = kind.list_field is not None and bool(session.dialect.list_in_row)
        if self._list_in_row:
            self._select = kind.select(session.dialect.list_in_row)
        # An entity with no list and nothing derived is all in its own row, so
        # what this transaction wrote of it is what a read would give back.
        self._remembers = kind.list_field is None and not kind.derived

    def _remember(self, entity: E) -> None:
        if self._remembers:
            self._session.transaction_writes().entities[self._kind.table, entity.id] = entity

    # -- the port --

    @translated
    def add(self, entity: E) -> E:
        with self._guarded(entity):
            new_id = self._session.insert(self._insert, self._values(entity))
            stored = attrs.evolve(entity, id=new_id)
            self._write_list(stored, replace=False)
        if self._kind.table in LISTED:
            self._session.transaction_writes().new.add((self._kind.table, new_id))
        self._remember(stored)
        return stored

    def get(self, owner_id: int, entity_id: int) -> E:
        # A writing use case reads an entity to write it back: the row stays
        # locked until its commit (its list too: every writer takes the row
        # first). Lists and counts lock nothing.
        return self._read(owner_id, entity_id, self._session.lock_read_rows)

    def peek(self, owner_id: int, entity_id: int) -> E:
        return self._read(owner_id, entity_id, "")

    def _read(self, owner_id: int, entity_id: int, lock: str) -> E:
        # What this transaction wrote is locked by its own write already. (Only
        # a kind that remembers reads it back: a summary shares its table.)
        known: E | None = (
            self._session.transaction_writes().entities.get((self._kind.table, entity_id)) if self._remembers else None
        )
        if known is not None and known.owner_id == owner_id:
            return known
        row = self._session.execute(
            f"{self._select} WHERE id = ? AND owner_id = ?{lock}", [entity_id, owner_id]
        ).fetchone()
        if row is None:
            raise refusals.not_found(self._kind.table, entity_id)
        return self._entities([row])[0]

    @translated
    def update(self, entity: E) -> E:
        self._store(entity, self._update, [entity.id, entity.owner_id], self._missing)
        self._remember(entity)
        return entity

    @translated
    def delete(self, owner_id: int, entity_id: int) -> None:
        self.get(owner_id, entity_id)
        self._session.transaction_writes().entities.pop((self._kind.table, entity_id), None)
        try:
            with self._session.savepoint():
                self._session.execute(f"DELETE FROM {self._kind.table} WHERE id = ?", [entity_id])
        except ConstraintViolation:
            raise self._why_referenced(entity_id) from None

    def find(self, owner_id: int, query: ListQuery) -> tuple[int, list[E]]:
        where: str | None
        params: list[Any]
        where, params = self._where(owner_id, query)
        if where is None:
            return 0, []
        count = self._count(owner_id, where, params, query)
        if count == 0 or query.limit <= 0 or query.offset >= count:
            return count, []
        # A deep page is walked to from whichever end of the index is nearer:
        # the last page costs what the first does (the middle one, the most).
        descending = query.descending
        skip, take = query.offset, query.limit
        from_end = count - query.offset - query.limit
        if from_end < query.offset:
            descending = not descending
            skip, take = max(from_end, 0), min(query.limit, count - query.offset)
        # The page's ids come from the (owner_id, ...) index alone, so skipping
        # index entries never reads the rows themselves.
        rows = self._session.execute(
            f"{self._select} WHERE id IN ("
            f" SELECT id FROM {self._kind.table} WHERE {where}"
            f" ORDER BY id {'DESC' if descending else 'ASC'} LIMIT ? OFFSET ?"
            f") ORDER BY id {'DESC' if query.descending else 'ASC'}",
            [*params, take, skip],
        ).fetchall()
        return count, self._entities(rows)

    def _count(self, owner_id: int, where: str, params: list[Any], query: ListQuery) -> int:
        if query.filters or not self._session.dialect.keeps_counts:
            (count,) = self._session.execute(
                f"SELECT count(*) FROM {self._kind.table} WHERE {where}", params
            ).fetchone()
        else:
            found = self._session.execute(
                "SELECT rows FROM owned_counts WHERE table_name = ? AND owner_id = ?",
                [self._kind.table, owner_id],
            ).fetchone()
            count = found[0] if found else 0
        return int(count)

    def referrers(self, field: str, entity_id: int) -> list[int]:
        listed = self._kind.list_field
        if listed is not None and field == listed.field:
            written = self._session.transaction_writes()
            if (listed.referred, entity_id) in written.new and (listed.table, entity_id) not in written.listed:
                return []  # a row this transaction inserted and listed nowhere
            sql = (
                f"SELECT {listed.parent_column} FROM {listed.table}"
                f" WHERE {listed.item_column} = ? ORDER BY {listed.parent_column}"
            )
        elif field in self._kind.columns and field in self._kind.int_columns:
            sql = f"SELECT id FROM {self._kind.table} WHERE {field} = ? ORDER BY id"
        else:
            raise ValueError(f"{self._kind.table} has no reference field {field!r}.")
        return [row[0] for row in self._session.execute(sql, [entity_id])]

    # -- writing --

    def _values(self, entity: E) -> list[Any]:
        kind = self._kind
        codec = self._session.codec
        row = codec.row(entity)
        for secret in kind.secrets:
            row[secret.column] = secret.seal(codec.box, row[secret.column])
        for column in kind.json_columns:
            if row[column] is not None:
                row[column] = json.dumps(row[column])
        return [row[column] for column in kind.columns]

    def _store(
        self, entity: E, sql: str, extra: list[Any], missed: Callable[[E], Exception]
    ) -> None:
        """Run an UPDATE of `entity` (`extra` are the WHERE parameters). When it
        matches no row, raise what `missed` says; a broken constraint is a Conflict."""
        with self._guarded(entity):
            cursor = self._session.execute(sql, [*self._values(entity), *extra])
            if cursor.rowcount == 0:
                raise missed(entity)
            self._write_list(entity, replace=True)

    def _missing(self, entity: E) -> Exception:
        return refusals.not_found(self._kind.table, entity.id)

    def _write_list(self, entity: E, *, replace: bool) -> None:
        listed = self._kind.list_field
        if listed is None:
            return
        if replace:
            self._session.execute(
                f"DELETE FROM {listed.table} WHERE {listed.parent_column} = ?", [entity.id]
            )
        ids: tuple[int, ...] = getattr(entity, listed.field)
        self._session.transaction_writes().listed.update((listed.table, i) for i in ids)
        items = [(entity.id, position, entity.owner_id, i) for position, i in enumerate(ids)]
        # One statement per chunk: a round trip each, where a driver's
        # executemany may cost several.
        for part in chunks(items):
            self._session.execute(
                f"INSERT INTO {listed.table}"
                f" ({listed.parent_column}, position, owner_id, {listed.item_column})"
                f" VALUES {', '.join(['(?, ?, ?, ?)'] * len(part))}",
                [value for item in part for value in item],
            )

    @contextmanager
    def _guarded(self, entity: E) -> Iterator[None]:
        """All of one write, or none of it: a refused write leaves nothing
        behind, even when the caller goes on and commits."""
        one_statement = self._kind.list_field is None and self._session.dialect.statements_undo_alone
        try:
            with nullcontext() if one_statement else self._session.savepoint():
                yield
        except ConstraintViolation as exc:
            raise self._why_refused(entity) or Conflict(f"{exc}.") from None

    # -- reading --

    def _where(self, owner_id: int, query: ListQuery) -> tuple[str | None, list[Any]]:
        """SQL conditions for an owner's rows matching the filters; None when a
        filter value cannot match (the wrong type: as in memory, 1 is not "1")."""
        conditions: list[str] = ["owner_id = ?"]
        params: list[Any] = [owner_id]
        derived = {d.field: d for d in self._kind.derived}
        for field, value in query.filters.items():
            if field in derived:
                if not isinstance(value, int):
                    return None, []
                conditions.append(derived[field].condition)
                params.append(value)
            elif field == "id" or (
                field in self._kind.columns and field not in self._kind.unfilterable
            ):
                is_int = field == "id" or field in self._kind.int_columns
                if isinstance(value, int) != is_int:
                    return None, []
                conditions.append(f"{field} = ?")
                params.append(value)
            else:
                raise ValueError(f"{self._kind.table} cannot be filtered by {field!r}.")
        return " AND ".join(conditions), params

    def _entities(self, rows: Sequence[Sequence[Any]]) -> list[E]:
        kind: EntityTable = self._kind
        codec: Codec = self._session.codec
        if kind.positional:
            return self._plain_entities(rows)
        lists = {} if self._list_in_row else self._lists([row[0] for row in rows])
        entities = []
        names = ("id", *kind.columns, *(d.field for d in kind.derived))
        for row in rows:
            values = dict(zip(names, row))
            for secret in kind.secrets:
                values[secret.column] = secret.open(codec.box, values[secret.column])
            for column in kind.json_columns:
                if values[column] is not None:
                    values[column] = json.loads(values[column])
            if kind.list_field is not None:
                values[kind.list_field.field] = row[-1] if self._list_in_row else lists.get(values["id"], [])
            entities.append(kind.entity(**values) if kind.plain else codec.entity(values, kind.entity))
        return entities

    def _plain_entities(self, rows: Sequence[Sequence[Any]]) -> list[E]:
        """Rows whose columns are the entity's fields in order, id last."""
        kind: EntityTable = self._kind
        entity = kind.entity
        if not kind.secrets:
            return [entity(*row[1:], row[0]) for row in rows]
        secrets = [(kind.columns.index(secret.column), secret) for secret in kind.secrets]
        box = self._session.codec.box
        entities = []
        for row in rows:
            values = list(row[1:])
            for at, secret in secrets:
                values[at] = secret.open(box, values[at])
            entities.append(entity(*values, row[0]))
        return entities

    def _lists(self, parent_ids: Sequence[int]) -> dict[int, list[int]]:
        listed = self._kind.list_field
        lists: dict[int, list[int]] = {}
        if listed is None:
            return lists
        for chunk in chunks(parent_ids):
            for parent_id, item in self._session.execute(
                f"SELECT {listed.parent_column}, {listed.item_column} FROM {listed.table}"
                f" WHERE {listed.parent_column} IN ({marks(len(chunk))})"
                f" ORDER BY {listed.parent_column}, position",
                chunk,
            ):
                lists.setdefault(parent_id, []).append(item)
        return lists

    # -- explaining refusals, in the words every storage says (adapters.refusals) --

    def _exists(self, table: str, owner_id: int, row_id: int) -> bool:
        return (
            self._session.execute(
                f"SELECT 1 FROM {table} WHERE id = ? AND owner_id = ?", [row_id, owner_id]
            ).fetchone()
            is not None
        )

    def _why_refused(self, entity: E) -> Conflict | None:
        """Which constraint a refused add or update broke, checked in this
        order: the owner, then references, then uniqueness."""
        kind = self._kind
        owner = self._session.execute("SELECT 1 FROM users WHERE id = ?", [entity.owner_id])
        if owner.fetchone() is None:
            return refusals.missing_owner(entity.owner_id)
        for field, referred in kind.references:
            ref = getattr(entity, field)
            if ref is not None and not self._exists(referred, entity.owner_id, ref):
                return refusals.missing_reference(field, referred, ref)
        if kind.list_field is not None:
            for ref in getattr(entity, kind.list_field.field):
                if not self._exists(kind.list_field.referred, entity.owner_id, ref):
                    return refusals.missing_reference(
                        kind.list_field.field, kind.list_field.referred, ref
                    )
        return self._why_unique(entity)

    def _why_unique(self, entity: E) -> Conflict | None:
        return None

    def _held_elsewhere(self, entity: E) -> tuple[int, int] | None:
        """(item, other row) for the first item of the entity's list that the
        list of another row holds already, where an item may be in one list."""
        listed = self._kind.list_field
        assert listed is not None
        item, parent = listed.item_column, listed.parent_column
        ids: tuple[int, ...] = getattr(entity, listed.field)
        part: Sequence[int]
        for part in chunks(ids):
            holder = self._session.execute(
                f"SELECT {item}, {parent} FROM {listed.table}"
                f" WHERE {item} IN ({marks(len(part))}) AND {parent} <> ?"
                f" ORDER BY {parent}, {item} LIMIT 1",
                [*part, entity.id],
            ).fetchone()
            if holder is not None:
                return int(holder[0]), int(holder[1])
        return None

    def _why_referenced(self, entity_id: int) -> Conflict:
        for kind in KINDS:
            for field, referred in kind.references:
                if referred == self._kind.table and self._session.execute(
                    f"SELECT 1 FROM {kind.table} WHERE {field} = ? LIMIT 1", [entity_id]
                ).fetchone():
                    return refusals.still_referred(self._kind.table, entity_id, kind.table)
            listed = kind.list_field
            if listed is not None and listed.referred == self._kind.table:
                if self._session.execute(
                    f"SELECT 1 FROM {listed.table} WHERE {listed.item_column} = ? LIMIT 1",
                    [entity_id],
                ).fetchone():
                    return refusals.still_referred(self._kind.table, entity_id, kind.table)
        return Conflict(f"{refusals.NOUNS[self._kind.table]} {entity_id} is still referred to.")


class Workloads(Repository[Workload]):
    def _why_unique(self, entity: Workload) -> Conflict | None:
        same_ip = self._session.execute(
            "SELECT id FROM workloads WHERE owner_id = ? AND ip = ? AND id <> ?",
            [entity.owner_id, entity.ip, entity.id],
        ).fetchone()
        if same_ip is not None:
            return refusals.ip_taken(same_ip[0], entity.ip)
        held = self._held_elsewhere(entity)
        return None if held is None else refusals.mount_point_taken(*held)


class Migrations(Repository[Migration]):
    @translated
    def update_if(self, migration: Migration, expected: Sequence[MigrationState]) -> Migration:
        states = [MigrationState(state).value for state in expected]
        self._store(
            migration,
            f"{self._update} AND state IN ({marks(len(states))})",
            [migration.id, migration.owner_id, *states],
            self._not_in_state,
        )
        return migration

    def running(self, instance_ids: Collection[str | None] | None = None) -> list[Migration]:
        rows = self._session.execute(
            f"{self._select} WHERE state = ? ORDER BY id", [MigrationState.RUNNING.value]
        ).fetchall()
        found = self._entities(rows)
        if instance_ids is None:
            return found
        return [m for m in found if m.instance_id in instance_ids]

    def count_in_state(self, state: MigrationState) -> int:
        row = self._session.execute("SELECT count(*) FROM migrations WHERE state = ?", [state.value]).fetchone()
        return int(row[0])

    def running_instances(self) -> set[str | None]:
        rows = self._session.execute(
            "SELECT DISTINCT instance_id FROM migrations WHERE state = ? AND queued_at IS NULL"
            " AND (phase IS NULL OR phase <> ?)",
            [MigrationState.RUNNING.value, Phase.IN_SYNC.value],
        )
        return {row[0] for row in rows}

    # A copy waits for a slot: a run's or a sync's `queued`, a cutover with no
    # carrier yet; cutovers first, then the oldest request.
    _WAITING = "m.queued_at IS NOT NULL"
    _FIRST = "CASE WHEN m.phase = 'cutting_over' THEN 0 ELSE 1 END, m.queued_at, m.id"

    def any_queued(self) -> bool:
        row = self._session.execute(f"SELECT 1 FROM migrations m WHERE {self._WAITING} LIMIT 1")
        return row.fetchone() is not None

    def next_queued(self, busy_machines: Collection[int], *, simulated: bool = False) -> Migration | None:
        busy = [] if simulated else sorted(busy_machines)
        where = " AND t.host_id IS NULL" if simulated else " AND t.host_id IS NOT NULL"
        if busy:
            where += f" AND m.source_id NOT IN ({marks(len(busy))}) AND t.host_id NOT IN ({marks(len(busy))})"
        row = self._session.execute(
            "SELECT m.id, m.owner_id FROM migrations m"
            " JOIN migration_targets t ON t.id = m.migration_target_id"
            f" WHERE {self._WAITING}{where} ORDER BY {self._FIRST} LIMIT 1{self._session.dialect.skip_locked}",
            [*busy, *busy],
        ).fetchone()
        return None if row is None else self.get(int(row[1]), int(row[0]))

    def queue_position(self, migration: Migration) -> int | None:
        if not migration.waiting_for_a_slot or migration.queued_at is None:
            return None
        first = migration.phase is Phase.CUTTING_OVER
        at = iso_utc(migration.queued_at)
        ahead = "m.phase = 'cutting_over'" if not first else "FALSE"
        row = self._session.execute(
            f"SELECT count(*) FROM migrations m WHERE {self._WAITING} AND ({ahead}"
            " OR (m.phase = 'cutting_over') = ? AND (m.queued_at < ? OR m.queued_at = ? AND m.id <= ?))",
            [first, at, at, migration.id],
        ).fetchone()
        return int(row[0])

    def due(self, now: datetime) -> list[tuple[int, int]]:
        at = iso_utc(now)
        rows = self._session.execute(
            "SELECT owner_id, id FROM migrations WHERE phase = ?"
            " AND (next_sync_at <= ? OR cutover_at <= ?) ORDER BY id",
            [Phase.IN_SYNC.value, at, at],
        ).fetchall()
        return [(int(owner), int(row_id)) for owner, row_id in rows]

    def _not_in_state(self, migration: Migration) -> Exception:
        row = self._session.execute(
            "SELECT state FROM migrations WHERE id = ? AND owner_id = ?",
            [migration.id, migration.owner_id],
        ).fetchone()
        if row is None:
            return self._missing(migration)
        return refusals.not_in_state(migration.id, row[0])

    def _why_unique(self, entity: Migration) -> Conflict | None:
        if entity.state is not MigrationState.RUNNING:
            return None
        busy = self._session.execute(
            "SELECT id FROM migrations WHERE migration_target_id = ? AND state = ? AND id <> ?",
            [entity.migration_target_id, MigrationState.RUNNING.value, entity.id],
        ).fetchone()
        if busy is None:
            return None
        return refusals.target_busy(entity.migration_target_id, busy[0])


class Waves(Repository[Wave]):
    def _why_unique(self, entity: Wave) -> Conflict | None:
        same_name = self._session.execute(
            "SELECT id FROM waves WHERE owner_id = ? AND name = ? AND id <> ?",
            [entity.owner_id, entity.name, entity.id],
        ).fetchone()
        if same_name is not None:
            return refusals.name_taken("waves", same_name[0], entity.name)
        held = self._held_elsewhere(entity)
        return None if held is None else refusals.migration_in_wave(*held)
