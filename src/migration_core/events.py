"""The history of a migration. Each use case that changes a
migration appends its events in the same unit of work as the change, after
its other writes: storage that must make concurrent writers take event ids
in turn (PostgreSQL) then holds that turn only until the commit."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from .entities import Event, EventKind, Migration
from .ports import ListQuery, Page, Storage, UnitOfWork


def event(
    migration: Migration, kind: EventKind, at: datetime, *, actor: int | None = None, **detail: Any
) -> Event:
    return Event(migration.owner_id, migration.id, kind, at, detail, actor)


def acting(owner_id: int, actor: int | None) -> int:
    """Who asked for a change: `actor`, or else the owner, for whom every call acts."""
    return owner_id if actor is None else actor


def append(uow: UnitOfWork, events: Iterable[Event]) -> None:
    for each in events:
        uow.events.append(each)


def list_events(storage: Storage, owner_id: int, migration_id: int, query: ListQuery) -> Page[Event]:
    """The events of one of the owner's migrations, oldest first unless the
    query says otherwise; NotFound for a migration that is not the owner's."""
    with storage.unit_of_work(write=False) as uow:
        uow.migrations.get(owner_id, migration_id)
        count, items = uow.events.find(owner_id, migration_id, query)
    return Page(count, items)


def events_after(storage: Storage, owner_id: int | None, event_id: int, limit: int) -> list[Event]:
    """Events with ids above `event_id`, oldest first: the owner's, or every
    owner's when `owner_id` is None (a stream's poller sorts them out)."""
    with storage.unit_of_work(write=False) as uow:
        return uow.events.after(owner_id, event_id, limit)


def last_event_id(storage: Storage) -> int:
    with storage.unit_of_work(write=False) as uow:
        return uow.events.last_id()
