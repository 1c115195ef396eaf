"""SQLite storage: the embedded default, one database file through sqlite-utils.

Threading model
---------------
Each thread gets its own connection to the file, opened lazily the first time
that thread starts a unit of work; a connection is never shared between
threads, and many threads use one `SqliteStorage` at once. The aiohttp service
runs reads on the event loop's own thread (`reads_never_wait`: a WAL read never
waits for a writer), resource writes on the group-commit thread
(`sqlite_group_commit`), and other use cases in worker threads. `close()`
closes every connection still open; a connection of a thread that has ended is
closed when that thread goes away.
A unit of work belongs to the thread that entered it.

Transactions
------------
One unit of work is one transaction. A write unit starts with `BEGIN IMMEDIATE`:
it takes the database's write lock up front, waiting up to the busy timeout for
it. A deferred `BEGIN` (what sqlite-utils' `db.atomic()` issues) would start as
a reader and try to upgrade at its first write; under WAL that upgrade fails at
once with SQLITE_BUSY when another writer committed meanwhile, whatever the
busy timeout. Writers of one process first queue on a Python lock, so only one
of them at a time contends for the file: SQLite's busy handler waits by
sleeping in growing steps (up to 100 ms), which under contention turned a
1 ms commit into a tail of over a second; the lock hands over at once. Other
processes still meet the busy timeout. Read-only units use a deferred `BEGIN`: they see one consistent
snapshot and never block writers. Leaving the unit without `commit()` rolls back.
A unit entered inside another on the same thread becomes a savepoint of it.

Rules that span rows are constraints of the schema (see `sqlite_schema`); a
broken one is reported as the core's `Conflict`, with the same messages as the
in-memory storage. No sqlite3 exception leaves this module: other database
failures become `StorageFailure`.

Credentials passwords, and the login kept inside a target VM or a migration's
snapshot, are encrypted at rest (`SecretBox`). WAL mode with `synchronous=FULL`:
a committed transaction survives a crash of the process or of the machine."""

from __future__ import annotations

import enum
import functools
import json
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, ParamSpec, TypeVar

import attrs
import cattrs
from sqlite_utils import Database

from migration_core import (
    CloudType,
    Conflict,
    Credentials,
    ListQuery,
    Login,
    Migration,
    MigrationState,
    MigrationTarget,
    MountPoint,
    NotFound,
    User,
    Workload,
)

from .secrets import SecretBox, SecretError
from .sqlite_schema import upgrade

P = ParamSpec("P")
R = TypeVar("R")
E = TypeVar("E", Credentials, MountPoint, Workload, MigrationTarget, Migration)

BUSY_TIMEOUT_SECONDS = 10.0

_PASSWORD = b"credentials.password"
_LOGIN_PASSWORD = b"login.password"
_KEY_CHECK = b"settings.key_check"
_KEY_CHECK_TEXT = "the secret key this database was written with"

# SQLite allows at most 32766 bound parameters per statement.
_IN_CHUNK = 500


class StorageFailure(RuntimeError):
    """The database could not do what was asked: locked too long, unreadable,
    closed, or out of space. Not the caller's fault; worth retrying later."""


def _translated(method: Callable[P, R]) -> Callable[P, R]:
    """sqlite3 errors that a repository has not explained become core errors."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except sqlite3.IntegrityError as exc:
            raise Conflict("The change conflicts with data already stored.") from exc
        except sqlite3.Error as exc:
            raise StorageFailure(f"The database failed: {exc}") from exc

    return wrapper


# --- entities <-> rows ------------------------------------------------------------


def _iso_utc(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("Storage keeps timezone-aware datetimes only.")
    return moment.astimezone(timezone.utc).isoformat()


class _Codec:
    """cattrs at the storage edge: entities to column values and back. Enums are
    stored as their values, datetimes as ISO 8601 UTC text, a target VM as JSON
    whose login password is sealed."""

    def __init__(self, box: SecretBox) -> None:
        self.box = box
        converter = cattrs.Converter()
        # str-based enums would otherwise pass through as enum members.
        for kind in (CloudType, MigrationState):
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


def _enum_value(member: enum.Enum) -> Any:
    return member.value


@attrs.frozen
class _ListField:
    """A tuple-of-ids field kept in a join table, in the order given."""

    field: str
    table: str
    parent_column: str
    referred: str  # the table the ids point into


@attrs.frozen
class _Kind:
    table: str
    entity: type[Any]
    noun: str
    columns: tuple[str, ...]  # stored columns besides id, as named in the entity
    int_columns: frozenset[str]
    references: tuple[tuple[str, str], ...]  # (field, referred table) of scalar fields
    list_field: _ListField | None = None
    secret_column: str | None = None  # sealed with SecretBox
    json_column: str | None = None  # a TargetVm, as JSON
    unfilterable: frozenset[str] = frozenset()
    # Every column is a str or int the entity takes as it is: rows become
    # entities by a plain call, without the converter's per-field dispatch
    # (the cost that dominated a 100-row page; see docs/benchmarks.md).
    plain: bool = False


CREDENTIALS = _Kind(
    "credentials",
    Credentials,
    "Credentials",
    ("owner_id", "username", "password", "domain"),
    frozenset({"owner_id"}),
    (),
    secret_column="password",
    unfilterable=frozenset({"password"}),
    plain=True,
)
MOUNT_POINTS = _Kind(
    "mount_points",
    MountPoint,
    "Mount points",
    ("owner_id", "name", "size"),
    frozenset({"owner_id", "size"}),
    (),
    plain=True,
)
WORKLOADS = _Kind(
    "workloads",
    Workload,
    "Workloads",
    ("owner_id", "ip", "credentials_id"),
    frozenset({"owner_id", "credentials_id"}),
    (("credentials_id", "credentials"),),
    _ListField("mount_point_ids", "workload_mount_points", "workload_id", "mount_points"),
    plain=True,
)
MIGRATION_TARGETS = _Kind(
    "migration_targets",
    MigrationTarget,
    "Migration targets",
    ("owner_id", "cloud_type", "cloud_credentials_id", "target_vm"),
    frozenset({"owner_id", "cloud_credentials_id"}),
    (("cloud_credentials_id", "credentials"),),
    json_column="target_vm",
    unfilterable=frozenset({"target_vm"}),
)
MIGRATIONS = _Kind(
    "migrations",
    Migration,
    "Migrations",
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
    ),
    frozenset({"owner_id", "source_id", "migration_target_id", "progress"}),
    (("source_id", "workloads"), ("migration_target_id", "migration_targets")),
    _ListField("selected_mount_point_ids", "migration_mount_points", "migration_id", "mount_points"),
    json_column="snapshot",
    unfilterable=frozenset({"snapshot", "started_at", "finished_at"}),
)
KINDS = (CREDENTIALS, MOUNT_POINTS, WORKLOADS, MIGRATION_TARGETS, MIGRATIONS)


def _chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), _IN_CHUNK):
        yield ids[start : start + _IN_CHUNK]


def _marks(count: int) -> str:
    return ", ".join("?" * count)


# --- storage ----------------------------------------------------------------------


class SqliteStorage:
    reads_never_wait = True  # WAL: a read is a snapshot no writer blocks

    def __init__(
        self, path: Path, secret_key: bytes, *, busy_timeout: float = BUSY_TIMEOUT_SECONDS
    ) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._codec = _Codec(SecretBox(secret_key))
        self._local = threading.local()
        self._connections: weakref.WeakSet[_ThreadConnection] = weakref.WeakSet()
        self._registry_lock = threading.Lock()
        self.write_lock = threading.Lock()  # one writing unit of this process at a time
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._prepare()

    @_translated
    def _prepare(self) -> None:
        """Bring the file to the latest schema and check the secret key, once."""
        db = self._connect()
        try:
            db.enable_wal()
            db.execute("BEGIN IMMEDIATE")
            try:
                upgrade(db)
                self._check_key(db)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.close()

    def _check_key(self, db: Database) -> None:
        box = self._codec.box
        row = db.execute("SELECT value FROM settings WHERE name = 'key_check'").fetchone()
        if row is None:
            db.execute(
                "INSERT INTO settings (name, value) VALUES ('key_check', ?)",
                [box.seal(_KEY_CHECK_TEXT, _KEY_CHECK)],
            )
            return
        try:
            box.open(row[0], _KEY_CHECK)
        except SecretError:
            raise SecretError(
                f"{self.path} was written with another secret key; its encrypted"
                " credentials cannot be read with this one."
            ) from None

    def _connect(self) -> Database:
        # isolation_level=None: the module opens no transactions behind our back;
        # each one is begun explicitly below.
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,  # only so close() may close it from another thread
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        return Database(conn, execute_plugins=False)

    def database(self) -> Database:
        """This thread's connection, opened on first use."""
        if self._closed:
            raise StorageFailure("The storage is closed.")
        held: _ThreadConnection | None = getattr(self._local, "connection", None)
        if held is None:
            held = _ThreadConnection(self._connect())
            self._local.connection = held
            with self._registry_lock:
                self._connections.add(held)
        return held.db

    def unit_of_work(self, *, write: bool = True) -> SqliteUnitOfWork:
        return SqliteUnitOfWork(self, self._codec, write=write)

    @_translated
    def check(self) -> None:
        self.database().execute("SELECT count(*) FROM sqlite_master").fetchone()

    def close(self) -> None:
        self._closed = True
        with self._registry_lock:
            open_now = list(self._connections)
            self._connections.clear()
        for held in open_now:
            held.close()


class _ThreadConnection:
    """One thread's connection. The thread's locals hold the only strong
    reference, so the connection closes as soon as its thread ends."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def close(self) -> None:
        self.db.close()

    def __del__(self) -> None:
        self.db.close()


class SqliteUnitOfWork:
    def __init__(self, storage: SqliteStorage, codec: _Codec, *, write: bool) -> None:
        self._storage = storage
        self._codec = codec
        self._write = write
        self._db: Database | None = None
        self._savepoint: str | None = None
        self._committed = False
        self._holds_write_lock = False

    # Repositories are made on first use: most units touch one or two of them.
    @functools.cached_property
    def users(self) -> _Users:
        return _Users(self)

    @functools.cached_property
    def credentials(self) -> _Repository[Credentials]:
        return _Repository(self, CREDENTIALS)

    @functools.cached_property
    def mount_points(self) -> _Repository[MountPoint]:
        return _Repository(self, MOUNT_POINTS)

    @functools.cached_property
    def workloads(self) -> _Workloads:
        return _Workloads(self, WORKLOADS)

    @functools.cached_property
    def migration_targets(self) -> _Repository[MigrationTarget]:
        return _Repository(self, MIGRATION_TARGETS)

    @functools.cached_property
    def migrations(self) -> _Migrations:
        return _Migrations(self, MIGRATIONS)

    @property
    def db(self) -> Database:
        if self._db is None:
            raise RuntimeError("Use the unit of work inside a `with` block.")
        return self._db

    @property
    def codec(self) -> _Codec:
        return self._codec

    @_translated
    def __enter__(self) -> SqliteUnitOfWork:
        db = self._storage.database()
        if db.conn.in_transaction:
            self._savepoint = f"unit_{id(self)}"
            db.conn.execute(f"SAVEPOINT {self._savepoint}")
        elif self._write:
            self._storage.write_lock.acquire()
            try:
                db.conn.execute("BEGIN IMMEDIATE")
            except BaseException:
                self._storage.write_lock.release()
                raise
            self._holds_write_lock = True
        else:
            db.conn.execute("BEGIN")
        self._db = db
        self._committed = False
        return self

    @_translated
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        db, self._db = self.db, None
        try:
            if self._committed:
                return
            if self._savepoint is not None:
                if db.conn.in_transaction:
                    db.conn.execute(f"ROLLBACK TO {self._savepoint}")
                    db.conn.execute(f"RELEASE {self._savepoint}")
            elif db.conn.in_transaction:
                db.conn.execute("ROLLBACK")
        finally:
            if self._holds_write_lock:
                self._holds_write_lock = False
                self._storage.write_lock.release()

    @_translated
    def commit(self) -> None:
        if self._savepoint is not None:
            self.db.conn.execute(f"RELEASE {self._savepoint}")
        elif self.db.conn.in_transaction:
            self.db.conn.execute("COMMIT")
        self._committed = True

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.db.conn.execute(sql, parameters)


# --- repositories -----------------------------------------------------------------


class _Users:
    def __init__(self, uow: SqliteUnitOfWork) -> None:
        self._uow = uow

    @_translated
    def add(self, user: User) -> User:
        try:
            cursor = self._uow.execute(
                "INSERT INTO users (username, password_hash) VALUES (?, ?)",
                [user.username, user.password_hash],
            )
        except sqlite3.IntegrityError:
            raise Conflict(f"The username {user.username!r} is taken.") from None
        assert cursor.lastrowid is not None
        return attrs.evolve(user, id=cursor.lastrowid)

    @_translated
    def get(self, user_id: int) -> User:
        row = self._uow.execute(
            "SELECT username, password_hash, id FROM users WHERE id = ?", [user_id]
        ).fetchone()
        if row is None:
            raise NotFound(f"User {user_id} not found.")
        return User(*row)

    @_translated
    def by_username(self, username: str) -> User | None:
        row = self._uow.execute(
            "SELECT username, password_hash, id FROM users WHERE username = ?", [username]
        ).fetchone()
        return None if row is None else User(*row)

    @_translated
    def delete(self, user_id: int) -> None:
        self.get(user_id)
        try:
            self._uow.execute("DELETE FROM users WHERE id = ?", [user_id])
        except sqlite3.IntegrityError:
            owned = [
                kind.table
                for kind in KINDS
                if self._uow.execute(
                    f"SELECT 1 FROM {kind.table} WHERE owner_id = ? LIMIT 1", [user_id]
                ).fetchone()
            ]
            raise Conflict(f"User {user_id} still owns {', '.join(owned)}.") from None


@functools.cache
def _statements(kind: _Kind) -> tuple[str, str, str]:
    """SELECT, INSERT and UPDATE of a kind, built once."""
    return (
        f"SELECT id, {', '.join(kind.columns)} FROM {kind.table}",
        f"INSERT INTO {kind.table} ({', '.join(kind.columns)}) VALUES ({_marks(len(kind.columns))})",
        f"UPDATE {kind.table} SET {', '.join(f'{c} = ?' for c in kind.columns)}"
        " WHERE id = ? AND owner_id = ?",
    )


class _Repository(Generic[E]):
    def __init__(self, uow: SqliteUnitOfWork, kind: _Kind) -> None:
        self._uow = uow
        self._kind = kind
        self._select, self._insert, self._update = _statements(kind)

    # -- the port --

    @_translated
    def add(self, entity: E) -> E:
        with self._guarded(entity):
            cursor = self._uow.execute(self._insert, self._values(entity))
            assert cursor.lastrowid is not None
            stored = attrs.evolve(entity, id=cursor.lastrowid)
            self._write_list(stored, replace=False)
        return stored

    @_translated
    def get(self, owner_id: int, entity_id: int) -> E:
        row = self._uow.execute(
            f"{self._select} WHERE id = ? AND owner_id = ?", [entity_id, owner_id]
        ).fetchone()
        if row is None:
            raise NotFound(f"{self._noun} {entity_id} not found.")
        return self._entities([row])[0]

    @_translated
    def update(self, entity: E) -> E:
        self._store(entity, self._update, [entity.id, entity.owner_id], self._missing)
        return entity

    @_translated
    def delete(self, owner_id: int, entity_id: int) -> None:
        self.get(owner_id, entity_id)
        try:
            self._uow.execute(f"DELETE FROM {self._kind.table} WHERE id = ?", [entity_id])
        except sqlite3.IntegrityError:
            raise Conflict(self._why_referenced(entity_id)) from None

    @_translated
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
        rows = self._uow.execute(
            f"{self._select} WHERE id IN ("
            f" SELECT id FROM {self._kind.table} WHERE {where}"
            f" ORDER BY id {'DESC' if descending else 'ASC'} LIMIT ? OFFSET ?"
            f") ORDER BY id {'DESC' if query.descending else 'ASC'}",
            [*params, take, skip],
        ).fetchall()
        return count, self._entities(rows)

    def _count(self, owner_id: int, where: str, params: list[Any], query: ListQuery) -> int:
        if query.filters:
            (count,) = self._uow.execute(
                f"SELECT count(*) FROM {self._kind.table} WHERE {where}", params
            ).fetchone()
        else:
            found = self._uow.execute(
                "SELECT rows FROM owned_counts WHERE table_name = ? AND owner_id = ?",
                [self._kind.table, owner_id],
            ).fetchone()
            count = found[0] if found else 0
        assert isinstance(count, int)
        return count

    @_translated
    def referrers(self, field: str, entity_id: int) -> list[int]:
        listed = self._kind.list_field
        if listed is not None and field == listed.field:
            sql = (
                f"SELECT {listed.parent_column} FROM {listed.table}"
                f" WHERE mount_point_id = ? ORDER BY {listed.parent_column}"
            )
        elif field in self._kind.columns and field in self._kind.int_columns:
            sql = f"SELECT id FROM {self._kind.table} WHERE {field} = ? ORDER BY id"
        else:
            raise ValueError(f"{self._kind.table} has no reference field {field!r}.")
        return [row[0] for row in self._uow.execute(sql, [entity_id])]

    # -- writing --

    def _values(self, entity: E) -> list[Any]:
        kind: _Kind = self._kind
        codec: _Codec = self._uow.codec
        row = codec.row(entity)
        if kind.secret_column is not None:
            row[kind.secret_column] = codec.box.seal(row[kind.secret_column], _PASSWORD)
        if kind.json_column is not None and row[kind.json_column] is not None:
            row[kind.json_column] = json.dumps(row[kind.json_column])
        return [row[column] for column in kind.columns]

    def _store(
        self, entity: E, sql: str, extra: list[Any], missed: Callable[[E], Exception]
    ) -> None:
        """Run an UPDATE of `entity` (`extra` are the WHERE parameters). When it
        matches no row, raise what `missed` says; a broken constraint is a Conflict."""
        with self._guarded(entity):
            cursor = self._uow.execute(sql, [*self._values(entity), *extra])
            if cursor.rowcount == 0:
                raise missed(entity)
            self._write_list(entity, replace=True)

    def _missing(self, entity: E) -> Exception:
        return NotFound(f"{self._noun} {entity.id} not found.")

    def _write_list(self, entity: E, *, replace: bool) -> None:
        listed = self._kind.list_field
        if listed is None:
            return
        if replace:
            self._uow.execute(
                f"DELETE FROM {listed.table} WHERE {listed.parent_column} = ?", [entity.id]
            )
        ids: tuple[int, ...] = getattr(entity, listed.field)
        if ids:
            self._uow.db.conn.executemany(
                f"INSERT INTO {listed.table}"
                f" ({listed.parent_column}, position, owner_id, mount_point_id)"
                " VALUES (?, ?, ?, ?)",
                [(entity.id, position, entity.owner_id, i) for position, i in enumerate(ids)],
            )

    @contextmanager
    def _guarded(self, entity: E) -> Iterator[None]:
        """All of one write, or none of it: a refused write leaves nothing
        behind, even when the caller goes on and commits."""
        try:
            with self._uow.db.atomic():
                yield
        except sqlite3.IntegrityError as exc:
            raise Conflict(self._why_refused(entity) or f"{exc}.") from None

    # -- reading --

    def _where(self, owner_id: int, query: ListQuery) -> tuple[str | None, list[Any]]:
        """SQL conditions for an owner's rows matching the filters; None when a
        filter value cannot match (the wrong type: as in memory, 1 is not "1")."""
        conditions: list[str] = ["owner_id = ?"]
        params: list[Any] = [owner_id]
        for field, value in query.filters.items():
            if field == "id" or (
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
        kind: _Kind = self._kind
        codec: _Codec = self._uow.codec
        lists = self._lists([row[0] for row in rows])
        entities = []
        names = ("id", *kind.columns)
        for row in rows:
            values = dict(zip(names, row))
            if kind.secret_column is not None:
                values[kind.secret_column] = codec.box.open(values[kind.secret_column], _PASSWORD)
            if kind.json_column is not None and values[kind.json_column] is not None:
                values[kind.json_column] = json.loads(values[kind.json_column])
            if kind.list_field is not None:
                values[kind.list_field.field] = lists.get(values["id"], [])
            entities.append(kind.entity(**values) if kind.plain else codec.entity(values, kind.entity))
        return entities

    def _lists(self, parent_ids: Sequence[int]) -> dict[int, list[int]]:
        listed = self._kind.list_field
        lists: dict[int, list[int]] = {}
        if listed is None:
            return lists
        for chunk in _chunks(parent_ids):
            for parent_id, item in self._uow.execute(
                f"SELECT {listed.parent_column}, mount_point_id FROM {listed.table}"
                f" WHERE {listed.parent_column} IN ({_marks(len(chunk))})"
                f" ORDER BY {listed.parent_column}, position",
                chunk,
            ):
                lists.setdefault(parent_id, []).append(item)
        return lists

    # -- explaining refusals, in the in-memory storage's words --

    @property
    def _noun(self) -> str:
        return self._kind.noun

    def _exists(self, table: str, owner_id: int, row_id: int) -> bool:
        return (
            self._uow.execute(
                f"SELECT 1 FROM {table} WHERE id = ? AND owner_id = ?", [row_id, owner_id]
            ).fetchone()
            is not None
        )

    def _why_refused(self, entity: E) -> str | None:
        """Which constraint a refused add or update broke, checked in the order
        the in-memory storage checks them."""
        kind = self._kind
        owner = self._uow.execute("SELECT 1 FROM users WHERE id = ?", [entity.owner_id])
        if owner.fetchone() is None:
            return f"owner_id refers to a missing users row {entity.owner_id}."
        for field, referred in kind.references:
            ref = getattr(entity, field)
            if not self._exists(referred, entity.owner_id, ref):
                return f"{field} refers to a missing {referred} row {ref}."
        if kind.list_field is not None:
            for ref in getattr(entity, kind.list_field.field):
                if not self._exists(kind.list_field.referred, entity.owner_id, ref):
                    return (
                        f"{kind.list_field.field} refers to a missing"
                        f" {kind.list_field.referred} row {ref}."
                    )
        return self._why_unique(entity)

    def _why_unique(self, entity: E) -> str | None:
        return None

    def _why_referenced(self, entity_id: int) -> str:
        for kind in KINDS:
            for field, referred in kind.references:
                if referred == self._kind.table and self._uow.execute(
                    f"SELECT 1 FROM {kind.table} WHERE {field} = ? LIMIT 1", [entity_id]
                ).fetchone():
                    return f"{self._noun} {entity_id} is still referred to by {kind.table}."
            listed = kind.list_field
            if listed is not None and listed.referred == self._kind.table:
                if self._uow.execute(
                    f"SELECT 1 FROM {listed.table} WHERE mount_point_id = ? LIMIT 1", [entity_id]
                ).fetchone():
                    return f"{self._noun} {entity_id} is still referred to by {kind.table}."
        return f"{self._noun} {entity_id} is still referred to."


class _Workloads(_Repository[Workload]):
    def _why_unique(self, entity: Workload) -> str | None:
        same_ip = self._uow.execute(
            "SELECT id FROM workloads WHERE owner_id = ? AND ip = ? AND id <> ?",
            [entity.owner_id, entity.ip, entity.id],
        ).fetchone()
        if same_ip is not None:
            return f"Workload {same_ip[0]} already has ip {entity.ip}."
        for chunk in _chunks(entity.mount_point_ids):
            holder = self._uow.execute(
                "SELECT mount_point_id, workload_id FROM workload_mount_points"
                f" WHERE mount_point_id IN ({_marks(len(chunk))}) AND workload_id <> ?"
                " ORDER BY workload_id, mount_point_id LIMIT 1",
                [*chunk, entity.id],
            ).fetchone()
            if holder is not None:
                return f"Mount point {holder[0]} already belongs to workload {holder[1]}."
        return None


class _Migrations(_Repository[Migration]):
    @_translated
    def update_if(self, migration: Migration, expected: Sequence[MigrationState]) -> Migration:
        states = [MigrationState(state).value for state in expected]
        self._store(
            migration,
            f"{self._update} AND state IN ({_marks(len(states))})",
            [migration.id, migration.owner_id, *states],
            self._not_in_state,
        )
        return migration

    @_translated
    def running(self) -> list[Migration]:
        rows = self._uow.execute(
            f"{self._select} WHERE state = ? ORDER BY id", [MigrationState.RUNNING.value]
        ).fetchall()
        return self._entities(rows)

    @_translated
    def count_in_state(self, state: MigrationState) -> int:
        # Answered from the (owner_id, state) index alone.
        row = self._uow.execute("SELECT count(*) FROM migrations WHERE state = ?", [state.value]).fetchone()
        return int(row[0])

    def _not_in_state(self, migration: Migration) -> Exception:
        row = self._uow.execute(
            "SELECT state FROM migrations WHERE id = ? AND owner_id = ?",
            [migration.id, migration.owner_id],
        ).fetchone()
        if row is None:
            return self._missing(migration)
        return Conflict(f"Migration {migration.id} is {row[0]}.")

    def _why_unique(self, entity: Migration) -> str | None:
        if entity.state is not MigrationState.RUNNING:
            return None
        busy = self._uow.execute(
            "SELECT id FROM migrations WHERE migration_target_id = ? AND state = ? AND id <> ?",
            [entity.migration_target_id, MigrationState.RUNNING.value, entity.id],
        ).fetchone()
        if busy is None:
            return None
        return f"Migration target {entity.migration_target_id} is busy with migration {busy[0]}."
