"""The events table: each migration's history, appended in id order and read
by page or after a known id."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import attrs

from migration_core import Event, EventKind, ListQuery

from .. import refusals
from .codec import iso_utc
from .errors import ConstraintViolation
from .session import Session


def _insert_event(session: Session, event: Event) -> Event:
    """Store `event`, taking the dialect's turn first."""
    session.take_event_turn()
    try:
        with session.savepoint():
            new_id = session.insert(
                "INSERT INTO events (owner_id, migration_id, at, kind, detail, actor_id)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    event.owner_id,
                    event.migration_id,
                    iso_utc(event.at),
                    event.kind.value,
                    json.dumps(event.detail),
                    event.actor,
                ],
            )
    except ConstraintViolation:
        raise refusals.missing_reference("migration_id", "migrations", event.migration_id) from None
    return attrs.evolve(event, id=new_id)


class Events:
    """The events table. Appends take the dialect's turn first, so that event
    ids become visible in order (`EventRepository`); the core appends a unit's
    events after its other writes, so the turn is held only to the commit."""

    _SELECT = "SELECT id, owner_id, migration_id, at, kind, detail, actor_id FROM events"
    _FILTERS = frozenset({"kind"})

    def __init__(self, session: Session) -> None:
        self._session = session

    def append(self, event: Event) -> Event:
        """The event as stored. Where appends take turns (PostgreSQL), the
        turn must be a transaction's last lock, or it deadlocks with writers
        waiting for the rows this one holds: an event appended in a nested
        unit (a member of a wave, a row of an import) is stored at the
        outermost commit, and comes back without its id."""
        if self._session.dialect.events_in_turn and self._session.defer_to_commit(lambda s: _insert_event(s, event)):
            return event
        return _insert_event(self._session, event)

    def find(self, owner_id: int, migration_id: int, query: ListQuery) -> tuple[int, list[Event]]:
        conditions = ["owner_id = ?", "migration_id = ?"]
        params: list[Any] = [owner_id, migration_id]
        for field, value in query.filters.items():
            if field not in self._FILTERS:
                raise ValueError(f"events cannot be filtered by {field!r}.")
            if not isinstance(value, str):
                return 0, []
            conditions.append(f"{field} = ?")
            params.append(value)
        where = " AND ".join(conditions)
        (count,) = self._session.execute(f"SELECT count(*) FROM events WHERE {where}", params).fetchone()
        if count == 0 or query.offset >= count:
            return int(count), []
        rows = self._session.execute(
            f"{self._SELECT} WHERE {where} ORDER BY id {'DESC' if query.descending else 'ASC'}"
            " LIMIT ? OFFSET ?",
            [*params, query.limit, query.offset],
        )
        return int(count), [self._event(row) for row in rows]

    def after(self, owner_id: int | None, event_id: int, limit: int) -> list[Event]:
        if owner_id is None:
            where, params = "id > ?", [event_id]
        else:
            where, params = "owner_id = ? AND id > ?", [owner_id, event_id]
        rows = self._session.execute(
            f"{self._SELECT} WHERE {where} ORDER BY id LIMIT ?", [*params, limit]
        )
        return [self._event(row) for row in rows]

    def last_id(self) -> int:
        (found,) = self._session.execute("SELECT max(id) FROM events").fetchone()
        return 0 if found is None else int(found)

    @staticmethod
    def _event(row: Sequence[Any]) -> Event:
        event_id, owner_id, migration_id, at, kind, detail, actor = row
        return Event(
            owner_id,
            migration_id,
            EventKind(kind),
            datetime.fromisoformat(at),
            json.loads(detail),
            actor,
            event_id,
        )
