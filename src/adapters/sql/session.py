"""What the repositories need of one open transaction of a dialect: its
statements (written with `?`), its savepoints, the writes kept for its commit,
and what it wrote already."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import attrs

from .codec import Codec
from .schema import Dialect


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Session(Protocol):
    """One open transaction of a dialect, as the repositories use it."""

    codec: Codec
    dialect: Dialect  # what it keeps (counts), how statements fail, how events take turns

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor: ...

    def insert(self, sql: str, parameters: Sequence[Any]) -> int:
        """Run an INSERT of one row; its new id."""
        ...

    def savepoint(self) -> AbstractContextManager[None]:
        """A nested transaction: what fails inside it is undone, and the
        failure (a ConstraintViolation, say) goes on to the caller."""
        ...

    def defer_to_commit(self, write: Callable[[Session], object]) -> bool:
        """Keep `write` for the outermost transaction's commit, where it gets
        that transaction's session (True), or leave it to the caller to make
        now (False)."""
        ...

    @property
    def lock_read_rows(self) -> str:
        """What ends a SELECT of a row the caller may write back: the
        dialect's lock in a writing unit, nothing in one that only reads."""
        ...

    def take_event_turn(self) -> None:
        """Take the dialect's turn for appending events, once a transaction."""
        ...

    def transaction_writes(self) -> Written:
        """What this transaction wrote."""
        ...


@attrs.define
class Written:
    """What a transaction wrote that no other can change before it ends (rows
    it locked, rows it alone sees), so it need not ask the database again."""

    entities: dict[tuple[str, int], Any] = attrs.field(factory=dict)  # by (table, id), as stored
    new: set[tuple[str, int]] = attrs.field(factory=set)  # (table, id) of rows it inserted, of LISTED tables
    # (list table, item) of every item it put in a list: only this
    # transaction can list a row it inserted.
    listed: set[tuple[str, int]] = attrs.field(factory=set)

    def forget(self) -> None:
        """After a part was undone: what it wrote may be gone, or back as it
        was (`listed` may only grow: it makes reads ask)."""
        self.entities.clear()
        self.new.clear()
