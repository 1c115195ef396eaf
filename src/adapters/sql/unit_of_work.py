"""The unit of work every SQL dialect shares: its repositories, made on first
use; its nested units as savepoints; the writes it keeps for its commit; and
its end. A dialect adapter adds its connection, its transactions and the
translation of its driver's errors."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import TracebackType
from typing import Any, Protocol, cast

from migration_core import Credentials, CredentialsSummary, MigrationTarget, MountPoint

from .accounts import LoginFailures, Users
from .codec import Codec
from .entities import Migrations, Repository, Waves, Workloads
from .errors import StorageFailure
from .events import Events
from .schema import Dialect
from .session import Session, Written
from .tables import CREDENTIALS, CREDENTIALS_SUMMARIES, MIGRATION_TARGETS, MIGRATIONS, MOUNT_POINTS, WAVES, WORKLOADS


class SqlUnit(Protocol):
    """A dialect's unit of work, as code beside the repositories uses it."""

    session: Session

    def __enter__(self) -> SqlUnit: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def commit(self) -> None: ...


_open_units = threading.local()  # this thread's units, outermost first


class SqlUnitOfWork:
    """The repositories of one transaction over a dialect's session, made on
    first use: most units touch one or two of them; and the end of the unit,
    the same in every dialect. A dialect enters the unit (setting
    `_transactions`, then calling `_entered`), says how its driver's errors
    translate, and what to release when the unit ends.

    Writes the outermost unit must make last (`later`) wait in it until its
    commit: a unit nested in another (a savepoint) gives them to the
    outermost, and drops those it made when it is undone.

    An outermost unit that need not undo nested units alone (`undo_nested`)
    makes no savepoints for them nor for its writes: on PostgreSQL each is a
    subtransaction, and thousands of them in one transaction slow every
    statement after. A failed write, or a nested unit left without commit,
    then spoils the unit: it will not commit."""

    dialect: Dialect
    _transactions: NestedTransactions | None = None

    def __init__(self, storage: Any, codec: Codec, *, write: bool, undo_nested: bool = True) -> None:
        self._storage = storage
        self.codec = codec
        self._write = write
        self._undo_nested = undo_nested
        self._spoiled = False
        self._has_turn = False  # the outermost unit's: held until its end
        self._written = Written()  # the outermost unit's
        # A dialect's unit is also the session its repositories run statements through.
        self.session = cast(Session, self)
        self._root: SqlUnitOfWork = self
        self._deferred: list[Callable[[Session], object]] = []  # the outermost unit's
        self._deferred_mark = 0

    def _nested_transactions(
        self, execute: Callable[[str], object], in_transaction: Callable[[], bool]
    ) -> NestedTransactions:
        """The unit's transaction on a connection, before `_entered`: a nested
        unit is a savepoint unless the outermost one need not undo it alone."""
        units: list[SqlUnitOfWork] = _open_units.__dict__.setdefault("units", [])
        return NestedTransactions(execute, in_transaction, savepoints=units[0]._undo_nested if units else True)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """The `Session`'s nested transaction: the dialect's savepoint, or none
        where the outermost unit gives up whole (a failure spoils it)."""
        try:
            with self._savepoint() if self._root._undo_nested else nullcontext():
                yield
        except BaseException:
            self._undone()
            raise

    def _savepoint(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    def _undone(self) -> None:
        """A part of the transaction was undone, or should have been."""
        root = self._root
        root._written.forget()
        if not root._undo_nested:
            root._spoiled = True

    def transaction_writes(self) -> Written:
        return self._root._written

    def _entered(self) -> None:
        units: list[SqlUnitOfWork] = _open_units.__dict__.setdefault("units", [])
        self._root = units[0] if units else self
        self._deferred_mark = len(self._root._deferred)
        units.append(self)

    def defer_to_commit(self, write: Callable[[Session], object]) -> bool:
        """Keep `write` for the outermost unit's commit, when this unit is
        nested or writes wait already (they keep their order): it gets that
        unit's session. False when it may run now."""
        if self._root is self and not self._deferred:
            return False
        self._root._deferred.append(write)
        return True

    @property
    def lock_read_rows(self) -> str:
        return self.dialect.lock_read_rows if self._write else ""

    def take_event_turn(self) -> None:
        # Only ever taken outside savepoints (nested units' events wait for
        # the outermost commit), so no rollback to one gives the turn back.
        if self.dialect.events_in_turn and not self._root._has_turn:
            self.session.execute(self.dialect.events_in_turn)
            self._root._has_turn = True

    def _driver_errors(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    def _release(self) -> None:
        """What the dialect lets go of when the unit ends (a lock, a connection)."""

    def commit(self) -> None:
        assert self._transactions is not None, "commit inside the `with` block"
        if self._root is self and self._spoiled:
            raise StorageFailure("Part of the unit failed and was not undone alone; nothing was written.")
        with self._driver_errors():
            if self._root is self:
                waiting, self._deferred = self._deferred, []
                for write in waiting:
                    write(self.session)
            self._transactions.commit()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        transactions, self._transactions = self._transactions, None
        assert transactions is not None
        units: list[SqlUnitOfWork] = _open_units.__dict__.setdefault("units", [])
        if units and units[-1] is self:
            units.pop()
        if not transactions.committed:
            del self._root._deferred[self._deferred_mark :]
            if transactions.nested:
                self._undone()
        try:
            with self._driver_errors():
                transactions.end()
        finally:
            self._release()

    @functools.cached_property
    def users(self) -> Users:
        return Users(self.session)

    @functools.cached_property
    def credentials(self) -> Repository[Credentials]:
        return Repository(self.session, CREDENTIALS)

    @functools.cached_property
    def credentials_summaries(self) -> Repository[CredentialsSummary]:
        return Repository(self.session, CREDENTIALS_SUMMARIES)

    @functools.cached_property
    def mount_points(self) -> Repository[MountPoint]:
        return Repository(self.session, MOUNT_POINTS)

    @functools.cached_property
    def workloads(self) -> Workloads:
        return Workloads(self.session, WORKLOADS)

    @functools.cached_property
    def migration_targets(self) -> Repository[MigrationTarget]:
        return Repository(self.session, MIGRATION_TARGETS)

    @functools.cached_property
    def migrations(self) -> Migrations:
        return Migrations(self.session, MIGRATIONS)

    @functools.cached_property
    def waves(self) -> Waves:
        return Waves(self.session, WAVES)

    @functools.cached_property
    def events(self) -> Events:
        return Events(self.session)

    @functools.cached_property
    def login_failures(self) -> LoginFailures:
        return LoginFailures(self.session)


class NestedTransactions:
    """The life of a unit of work on a connection, for any dialect: the first
    unit on a connection begins a transaction, a unit entered inside it
    becomes a savepoint, and leaving without `commit()` undoes the unit's
    work (and, for the outermost, all of it)."""

    def __init__(
        self, execute: Callable[[str], object], in_transaction: Callable[[], bool], *, savepoints: bool = True
    ) -> None:
        self._execute = execute
        self._in_transaction = in_transaction
        self._savepoints = savepoints
        self.savepoint: str | None = None
        self.joined = False  # nested without a savepoint: only the outer unit undoes it
        self.committed = False

    @property
    def nested(self) -> bool:
        return self.savepoint is not None or self.joined

    def begin(self, begin_statement: str) -> None:
        if not self._in_transaction():
            self._execute(begin_statement)
        elif self._savepoints:
            self.savepoint = f"unit_{id(self)}"
            self._execute(f"SAVEPOINT {self.savepoint}")
        else:
            self.joined = True

    def commit(self) -> None:
        if self.savepoint is not None:
            self._execute(f"RELEASE {self.savepoint}")
        elif self.joined:
            pass
        elif self._in_transaction():
            self._execute("COMMIT")
        self.committed = True

    def end(self) -> None:
        """Leave the unit: undo it unless it was committed (or joined to the outer one)."""
        if self.committed or self.joined or not self._in_transaction():
            return
        if self.savepoint is not None:
            self._execute(f"ROLLBACK TO {self.savepoint}")
            self._execute(f"RELEASE {self.savepoint}")
        else:
            self._execute("ROLLBACK")


@contextmanager
def savepoint_on(execute: Callable[[str], object], name: str) -> Iterator[None]:
    """A savepoint that is rolled back when its block raises."""
    execute(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        execute(f"ROLLBACK TO {name}")
        execute(f"RELEASE {name}")
        raise
    execute(f"RELEASE {name}")
