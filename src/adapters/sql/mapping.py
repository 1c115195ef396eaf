"""The relational mapping shared by the SQL adapters: which table holds which
entity, how entities become rows and back, the statements, the repositories and
the words of every refusal. A dialect adapter (`adapters.sqlite`,
`adapters.postgres`) supplies only a `Session`: its connection, its
transactions, its placeholders and the translation of its driver's errors into
`ConstraintViolation` and `StorageFailure`. Statements here use `?`."""

from __future__ import annotations

import enum
import functools
import json
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, cast

import attrs
import cattrs

from migration_core import (
    CloudType,
    Conflict,
    Credentials,
    CredentialsSummary,
    Event,
    EventKind,
    ListQuery,
    Login,
    Migration,
    MigrationState,
    MigrationTarget,
    MountPoint,
    OperatingSystem,
    User,
    Wave,
    Workload,
)

from .. import refusals
from ..secrets import SecretBox, SecretError
from .schema import Dialect

P = ParamSpec("P")
R = TypeVar("R")
E = TypeVar("E", Credentials, CredentialsSummary, MountPoint, Workload, MigrationTarget, Migration, Wave)

_PASSWORD = b"credentials.password"
_PRIVATE_KEY = b"credentials.private_key"
_LOGIN_PASSWORD = b"login.password"
_KEY_CHECK = b"settings.key_check"
_KEY_CHECK_TEXT = "the secret key this database was written with"

# SQLite allows at most 32766 bound parameters per statement; PostgreSQL 65535.
_IN_CHUNK = 500


class StorageFailure(RuntimeError):
    """The database could not do what was asked: locked too long, unreachable,
    closed, or out of space. Not the caller's fault; worth retrying later."""


class ConstraintViolation(Exception):
    """A statement broke a constraint of the schema. Raised by a session in
    place of its driver's integrity error; never leaves the SQL adapters."""


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


@contextmanager
def driver_errors(
    integrity: type[Exception], failures: tuple[type[Exception], ...], clashes: tuple[type[Exception], ...] = ()
) -> Iterator[None]:
    """A driver's errors in the adapters' terms: a broken constraint (the
    driver's `integrity` error), a clash with a concurrent transaction that
    the database resolved by refusing this one (`clashes`: a deadlock, a
    serialisation failure), and any other failure of the database."""
    try:
        yield
    except integrity as exc:
        raise ConstraintViolation(str(exc)) from exc
    except clashes as exc:
        raise Conflict(
            "The change clashed with another made at the same time; nothing was written. Try again."
        ) from exc
    except failures as exc:
        raise StorageFailure(f"The database failed: {exc}") from exc


def translated(method: Callable[P, R]) -> Callable[P, R]:
    """A constraint a repository has not explained is still a Conflict."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except ConstraintViolation as exc:
            raise Conflict("The change conflicts with data already stored.") from exc

    return wrapper


# --- entities <-> rows ------------------------------------------------------------


def _iso_utc(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("Storage keeps timezone-aware datetimes only.")
    return moment.astimezone(timezone.utc).isoformat()


def _enum_value(member: enum.Enum) -> Any:
    return member.value


class Codec:
    """cattrs at the storage edge: entities to column values and back. Enums are
    stored as their values, datetimes as ISO 8601 UTC text, a target VM as JSON
    whose login password is sealed."""

    def __init__(self, box: SecretBox) -> None:
        self.box = box
        converter = cattrs.Converter()
        # str-based enums would otherwise pass through as enum members.
        for kind in (CloudType, MigrationState, OperatingSystem):
            converter.register_unstructure_hook(kind, _enum_value)
        converter.register_unstructure_hook(datetime, _iso_utc)
        converter.register_structure_hook(datetime, lambda text, _: datetime.fromisoformat(text))
        converter.register_unstructure_hook(Login, self._seal_login)
        converter.register_structure_hook(Login, self._open_login)
        self.converter = converter

    def _seal_login(self, login: Login) -> dict[str, str]:
        return {
            "username": login.username,
            "sealed_password": self.box.seal_text(login.password, _LOGIN_PASSWORD),
            "domain": login.domain,
        }

    def _open_login(self, value: Any, _type: Any) -> Login:
        password = self.box.open_text(value["sealed_password"], _LOGIN_PASSWORD)
        return Login(value["username"], password, value["domain"])

    def row(self, entity: Any) -> dict[str, Any]:
        values: dict[str, Any] = self.converter.unstructure(entity)
        return values

    def entity(self, values: dict[str, Any], kind: type[R]) -> R:
        return self.converter.structure(values, kind)

    def check_key(self, session: Session, where: str) -> None:
        """Remember a sealed sentence on first use; later, refuse a key that
        cannot open it: such a key could not read a stored password."""
        row = session.execute("SELECT value FROM settings WHERE name = 'key_check'").fetchone()
        if row is None:
            session.execute(
                "INSERT INTO settings (name, value) VALUES ('key_check', ?)",
                [self.box.seal(_KEY_CHECK_TEXT, _KEY_CHECK)],
            )
            return
        try:
            self.box.open(bytes(row[0]), _KEY_CHECK)
        except SecretError:
            raise SecretError(
                f"{where} was written with another secret key; its encrypted"
                " credentials cannot be read with this one."
            ) from None


@attrs.frozen
class Secret:
    """A text column sealed with SecretBox, bound to `context`. An optional
    one keeps "" (none) as NULL: nothing to seal, nothing to open."""

    column: str
    context: bytes
    optional: bool = False

    def seal(self, box: SecretBox, value: str) -> bytes | None:
        return None if self.optional and not value else box.seal(value, self.context)

    def open(self, box: SecretBox, stored: Any) -> str:
        return "" if stored is None else box.open(bytes(stored), self.context)


@attrs.frozen
class ListField:
    """A tuple-of-ids field kept in a join table, in the order given."""

    field: str
    table: str
    parent_column: str
    referred: str  # the table the ids point into
    item_column: str = "mount_point_id"


@attrs.frozen
class DerivedField:
    """A field read from another table, never written with the entity: a
    migration's wave is the wave whose list holds it."""

    field: str
    select: str  # its value, as an expression over the kind's row
    condition: str  # a filter on it, with one `?`


@attrs.frozen
class EntityTable:
    table: str
    entity: type[Any]
    columns: tuple[str, ...]  # stored columns besides id, as named in the entity
    int_columns: frozenset[str]
    references: tuple[tuple[str, str], ...]  # (field, referred table) of scalar fields
    list_field: ListField | None = None
    secrets: tuple[Secret, ...] = ()
    json_columns: tuple[str, ...] = ()  # attrs values (a TargetVm, a CopyMark), as JSON
    unfilterable: frozenset[str] = frozenset()
    derived: tuple[DerivedField, ...] = ()
    # Every column is a str or int the entity takes as it is: rows become
    # entities by a plain call, without the converter's per-field dispatch
    # (the cost that dominated a 100-row page; see docs/benchmarks.md).
    plain: bool = False

    def select(self, list_in_row: str = "") -> str:
        """The SELECT of the kind; with its list last, by `list_in_row` (a
        dialect's template), when given."""
        read = [*self.columns, *(f"{d.select} AS {d.field}" for d in self.derived)]
        if list_in_row and (listed := self.list_field) is not None:
            read.append(
                list_in_row.format(
                    item=listed.item_column, table=listed.table, parent=listed.parent_column, of=self.table
                )
            )
        return f"SELECT id, {', '.join(read)} FROM {self.table}"

    @functools.cached_property
    def positional(self) -> bool:
        """Whether a row (id first, then the columns and what is derived) is
        the entity's fields in order with id last: then it becomes one by a
        positional call."""
        fields = tuple(field.name for field in attrs.fields(self.entity))
        derived = tuple(d.field for d in self.derived)
        return self.plain and not self.list_field and fields == (*self.columns, *derived, "id")

    @functools.cached_property
    def statements(self) -> tuple[str, str, str]:
        """SELECT, INSERT and UPDATE of the kind."""
        marks = ", ".join("?" * len(self.columns))
        return (
            self.select(),
            f"INSERT INTO {self.table} ({', '.join(self.columns)}) VALUES ({marks})",
            f"UPDATE {self.table} SET {', '.join(f'{c} = ?' for c in self.columns)}"
            " WHERE id = ? AND owner_id = ?",
        )


CREDENTIALS = EntityTable(
    "credentials",
    Credentials,
    ("owner_id", "username", "password", "domain", "private_key"),
    frozenset({"owner_id"}),
    (),
    secrets=(Secret("password", _PASSWORD), Secret("private_key", _PRIVATE_KEY, optional=True)),
    unfilterable=frozenset({"password", "private_key"}),
    plain=True,
)
# Credentials as answers show them: read from the same rows, nothing opened.
CREDENTIALS_SUMMARIES = EntityTable(
    "credentials",
    CredentialsSummary,
    ("owner_id", "username", "domain"),
    frozenset({"owner_id"}),
    (),
    derived=(
        DerivedField(
            "has_private_key",
            "private_key IS NOT NULL",
            "CASE WHEN private_key IS NULL THEN 0 ELSE 1 END = ?",
        ),
    ),
    plain=True,
)
MOUNT_POINTS = EntityTable(
    "mount_points",
    MountPoint,
    ("owner_id", "name", "size"),
    frozenset({"owner_id", "size"}),
    (),
    plain=True,
)
WORKLOADS = EntityTable(
    "workloads",
    Workload,
    ("owner_id", "ip", "credentials_id", "port", "os", "root", "host_key"),
    frozenset({"owner_id", "credentials_id", "port"}),
    (("credentials_id", "credentials"),),
    ListField("mount_point_ids", "workload_mount_points", "workload_id", "mount_points"),
    plain=True,
)
MIGRATION_TARGETS = EntityTable(
    "migration_targets",
    MigrationTarget,
    ("owner_id", "cloud_type", "cloud_credentials_id", "target_vm", "host_id", "root"),
    frozenset({"owner_id", "cloud_credentials_id", "host_id"}),
    (("cloud_credentials_id", "credentials"), ("host_id", "workloads")),
    json_columns=("target_vm",),
    unfilterable=frozenset({"target_vm"}),
)
MIGRATIONS = EntityTable(
    "migrations",
    Migration,
    (
        "owner_id",
        "source_id",
        "migration_target_id",
        "state",
        "progress",
        "error",
        "started_at",
        "finished_at",
        "snapshot",
        "instance_id",
        "copied",
    ),
    frozenset({"owner_id", "source_id", "migration_target_id", "progress"}),
    (("source_id", "workloads"), ("migration_target_id", "migration_targets")),
    ListField("selected_mount_point_ids", "migration_mount_points", "migration_id", "mount_points"),
    json_columns=("snapshot", "copied"),
    unfilterable=frozenset({"snapshot", "started_at", "finished_at", "instance_id", "copied"}),
    derived=(
        DerivedField(
            "wave_id",
            "(SELECT wave_id FROM wave_migrations WHERE migration_id = migrations.id)",
            "id IN (SELECT migration_id FROM wave_migrations WHERE wave_id = ?)",
        ),
    ),
)
WAVES = EntityTable(
    "waves",
    Wave,
    ("owner_id", "name"),
    frozenset({"owner_id"}),
    (),
    ListField("migration_ids", "wave_migrations", "wave_id", "migrations", "migration_id"),
    plain=True,
)
KINDS = (CREDENTIALS, MOUNT_POINTS, WORKLOADS, MIGRATION_TARGETS, MIGRATIONS, WAVES)
LISTED = frozenset(kind.list_field.referred for kind in KINDS if kind.list_field is not None)


def chunks(ids: Sequence[R]) -> Iterator[Sequence[R]]:
    for start in range(0, len(ids), _IN_CHUNK):
        yield ids[start : start + _IN_CHUNK]


def marks(count: int) -> str:
    return ", ".join("?" * count)


# --- the unit of work -------------------------------------------------------------


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


# --- repositories -----------------------------------------------------------------


class Users:
    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, user: User) -> User:
        try:
            with self._session.savepoint():
                new_id = self._session.insert(
                    "INSERT INTO users (username, password_hash) VALUES (?, ?)",
                    [user.username, user.password_hash],
                )
        except ConstraintViolation:
            raise refusals.username_taken(user.username) from None
        return attrs.evolve(user, id=new_id)

    def get(self, user_id: int) -> User:
        row = self._session.execute(
            "SELECT username, password_hash, id FROM users WHERE id = ?", [user_id]
        ).fetchone()
        if row is None:
            raise refusals.not_found("users", user_id)
        return User(*row)

    def by_username(self, username: str) -> User | None:
        row = self._session.execute(
            "SELECT username, password_hash, id FROM users WHERE username = ?", [username]
        ).fetchone()
        return None if row is None else User(*row)

    def delete(self, user_id: int) -> None:
        self.get(user_id)
        try:
            with self._session.savepoint():
                self._session.execute("DELETE FROM users WHERE id = ?", [user_id])
        except ConstraintViolation:
            owned = [
                kind.table
                for kind in KINDS
                if self._session.execute(
                    f"SELECT 1 FROM {kind.table} WHERE owner_id = ? LIMIT 1", [user_id]
                ).fetchone()
            ]
            raise refusals.still_owns(user_id, owned) from None


class LoginFailures:
    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, username: str, at: float) -> None:
        self._session.execute(
            "INSERT INTO login_failures (username, failed_at) VALUES (?, ?)", [username, at]
        )

    def since(self, username: str, moment: float) -> list[float]:
        rows = self._session.execute(
            "SELECT failed_at FROM login_failures WHERE username = ? AND failed_at > ?"
            " ORDER BY failed_at",
            [username, moment],
        )
        return [float(row[0]) for row in rows]

    def forget(self, before: float) -> None:
        self._session.execute("DELETE FROM login_failures WHERE failed_at <= ?", [before])


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
                    _iso_utc(event.at),
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

    # -- explaining refusals, in the in-memory storage's words --

    def _exists(self, table: str, owner_id: int, row_id: int) -> bool:
        return (
            self._session.execute(
                f"SELECT 1 FROM {table} WHERE id = ? AND owner_id = ?", [row_id, owner_id]
            ).fetchone()
            is not None
        )

    def _why_refused(self, entity: E) -> Conflict | None:
        """Which constraint a refused add or update broke, checked in the order
        the in-memory storage checks them."""
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
            "SELECT DISTINCT instance_id FROM migrations WHERE state = ?",
            [MigrationState.RUNNING.value],
        )
        return {row[0] for row in rows}

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
