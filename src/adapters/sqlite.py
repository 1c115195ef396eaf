"""SQLite storage: the embedded default, one database file through sqlite-utils.

Threading model
---------------
Each thread gets its own connection to the file, opened lazily the first time
that thread starts a unit of work; a connection is never shared between
threads, and many threads use one `SqliteStorage` at once. The aiohttp service
runs reads on the event loop's own thread (`reads_never_wait`: a WAL read never
waits for a writer, and the composition root takes the hint), resource writes on the group-commit thread
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

The mapping of entities to rows, the statements and the refusals are shared
with PostgreSQL (`adapters.sql`); this module keeps SQLite's connections,
transactions and the translation of sqlite3's errors. Rules that span rows are
constraints of the schema (`adapters.sql.schema`); a broken one is reported as
the core's `Conflict`, in the words of `adapters.refusals`. No sqlite3 exception
leaves this module: other database failures become `StorageFailure`.

Credentials passwords, and the login kept inside a target VM or a migration's
snapshot, are encrypted at rest (`SecretBox`). WAL mode with `synchronous=FULL`:
a committed transaction survives a crash of the process or of the machine."""


from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from .secrets import SecretBox
from .sql.codec import Codec
from .sql.errors import ConstraintViolation, StorageFailure, driver_errors
from .sql.instances import SqlInstanceRegistry
from .sql.schema import SQLITE
from .sql.schema import upgrade as upgrade_steps
from .sql.unit_of_work import SqlUnitOfWork, savepoint_on
from .sqlite_group_commit import GroupCommitExecutor

__all__ = ["SqliteStorage", "SqliteUnitOfWork", "StorageFailure", "upgrade"]

BUSY_TIMEOUT_SECONDS = 10.0


def _driver_errors() -> AbstractContextManager[None]:
    return driver_errors(sqlite3.IntegrityError, (sqlite3.Error,))


def schema_version(db: Database) -> int:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    assert isinstance(version, int)
    return version


def upgrade(db: Database, to_version: int | None = None) -> list[int]:
    """Apply the missing schema steps (up to `to_version`, default all) inside
    the caller's transaction; the step numbers applied."""
    current = schema_version(db)
    applied = (
        upgrade_steps(db.execute, SQLITE, current)
        if to_version is None
        else upgrade_steps(db.execute, SQLITE, current, to_version)
    )
    if applied:
        # PRAGMA takes no parameters; the value is our own integer.
        db.execute(f"PRAGMA user_version = {int(applied[-1])}")
    return applied


class SqliteStorage:
    """Satisfies `migration_core.Storage`. A read-only unit never waits for a
    writer (WAL snapshots), so a caller may run short reads on an event loop."""

    reads_never_wait = True

    def __init__(
        self, path: Path, secret_key: bytes, *, busy_timeout: float = BUSY_TIMEOUT_SECONDS
    ) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._codec = Codec(SecretBox(secret_key))
        self._local = threading.local()
        self._connections: weakref.WeakSet[_ThreadConnection] = weakref.WeakSet()
        self._registry_lock = threading.Lock()
        self.write_lock = threading.Lock()  # one writing unit of this process at a time
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._prepare()

    def _prepare(self) -> None:
        """Bring the file to the latest schema and check the secret key, once.
        BEGIN IMMEDIATE makes processes that start together upgrade in turn."""
        self._enable_wal()
        with self.unit_of_work() as uow:
            with _driver_errors():
                upgrade(uow.db)
            self._codec.check_key(uow, str(self.path))
            uow.commit()

    def _enable_wal(self) -> None:
        """Switch the file to WAL once. The switch takes no busy timeout: when
        processes open a new file at once, it is tried again until one won."""
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                with _driver_errors():
                    db = self.database()
                    if db.journal_mode != "wal":
                        db.enable_wal()
                return
            except StorageFailure:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

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

    def unit_of_work(self, *, write: bool = True, undo_nested: bool = True) -> SqliteUnitOfWork:
        return SqliteUnitOfWork(self, self._codec, write=write, undo_nested=undo_nested)

    def check(self) -> None:
        with _driver_errors():
            self.database().execute("SELECT count(*) FROM sqlite_master").fetchone()

    def instance_registry(self) -> SqlInstanceRegistry:
        """Instances sharing this file: rows in it, and file locks beside it."""
        witness = FileLockWitness(self.path.with_name(self.path.name + ".instances"))
        return SqlInstanceRegistry(self.unit_of_work, witness)

    def write_executor(self) -> GroupCommitExecutor:
        """Writes of many callers committed together (`sqlite_group_commit`)."""
        return GroupCommitExecutor(self)

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


class SqliteUnitOfWork(SqlUnitOfWork):
    """One transaction on this thread's connection; also the `Session` its
    repositories run their statements through."""

    dialect = SQLITE
    _storage: SqliteStorage

    def __init__(self, storage: SqliteStorage, codec: Codec, *, write: bool, undo_nested: bool = True) -> None:
        super().__init__(storage, codec, write=write, undo_nested=undo_nested)
        self._db: Database | None = None
        self._holds_write_lock = False

    @property
    def db(self) -> Database:
        if self._db is None:
            raise RuntimeError("Use the unit of work inside a `with` block.")
        return self._db

    def __enter__(self) -> SqliteUnitOfWork:
        db = self._storage.database()
        conn = db.conn
        transactions = self._nested_transactions(conn.execute, lambda: conn.in_transaction)
        with _driver_errors():
            if self._write and not conn.in_transaction:
                self._storage.write_lock.acquire()
                self._holds_write_lock = True
            try:
                transactions.begin("BEGIN IMMEDIATE" if self._write else "BEGIN")
            except BaseException:
                self._release_write_lock()
                raise
        self._db, self._transactions = db, transactions
        self._entered()
        return self

    def _driver_errors(self) -> AbstractContextManager[None]:
        return _driver_errors()

    def _release(self) -> None:
        self._db = None
        self._release_write_lock()

    def _release_write_lock(self) -> None:
        if self._holds_write_lock:
            self._holds_write_lock = False
            self._storage.write_lock.release()

    # -- the Session of the shared repositories --

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            return self.db.conn.execute(sql, parameters)
        except sqlite3.IntegrityError as exc:
            raise ConstraintViolation(str(exc)) from exc
        except sqlite3.Error as exc:
            raise StorageFailure(f"The database failed: {exc}") from exc

    def insert(self, sql: str, parameters: Sequence[Any]) -> int:
        row_id = self.execute(sql, parameters).lastrowid
        assert row_id is not None
        return row_id

    def _savepoint(self) -> Any:
        return _translated_savepoint(self.db.conn.execute, f"write_{id(self)}")


@contextmanager
def _translated_savepoint(execute: Callable[[str], object], name: str) -> Iterator[None]:
    with _driver_errors(), savepoint_on(execute, name):
        yield


class FileLockWitness:
    """OS file locks in a folder beside the database: the kernel drops a
    process's locks when it ends, however it ends, so the others can tell at
    once that it is gone. Each instance locks a file named by its id.

    An instance that dies leaves its file behind, unlocked. Taking its own
    lock, an instance removes those files, each only while it holds that
    file's lock itself; the one taking a lock checks, once it holds it, that
    the name still leads to the file it locked (else it was just removed, and
    it starts again): so a removal never takes a live instance's file."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._held: dict[str, int] = {}
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, instance_id: str) -> Path:
        if not instance_id.isalnum():
            raise ValueError(f"not an instance id: {instance_id!r}")
        return self._folder / f"{instance_id}.lock"

    def hold(self, instance_id: str) -> None:
        if instance_id in self._held:
            return
        path = self._path(instance_id)
        # Another instance removing left-behind files may hold this new file's
        # lock for a moment; the id is ours alone, so nothing else holds it long.
        deadline = time.monotonic() + 1.0
        while True:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.001)
                continue
            except BaseException:
                os.close(descriptor)
                raise
            if _names(path, descriptor):
                break
            os.close(descriptor)
        self._held[instance_id] = descriptor
        self._remove_left_behind()

    def _remove_left_behind(self) -> None:
        """Remove the files of instances that ended without removing theirs."""
        mine = {self._path(instance_id) for instance_id in self._held}
        for path in self._folder.glob("*.lock"):
            if path in mine:
                continue
            try:
                descriptor = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # removed meanwhile
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _names(path, descriptor):
                    path.unlink()
            except OSError:
                pass  # held: its instance lives
            finally:
                os.close(descriptor)

    def release(self, instance_id: str) -> None:
        descriptor = self._held.pop(instance_id, None)
        if descriptor is not None:
            self._path(instance_id).unlink(missing_ok=True)
            os.close(descriptor)

    def held(self, instance_ids: Collection[str]) -> set[str]:
        return {i for i in instance_ids if i in self._held or self._locked_elsewhere(i)}

    def _locked_elsewhere(self, instance_id: str) -> bool:
        try:
            descriptor = os.open(self._path(instance_id), os.O_RDONLY)
        except (FileNotFoundError, ValueError):
            return False
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(descriptor)  # closing drops a lock this check may have taken
        return False


def _names(path: Path, descriptor: int) -> bool:
    """Whether `path` still leads to the open file `descriptor`."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (found.st_dev, found.st_ino) == (opened.st_dev, opened.st_ino)
