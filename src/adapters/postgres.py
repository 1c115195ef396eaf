"""PostgreSQL storage: for several instances of the service on several machines
sharing one database, through psycopg 3 and a connection pool.

The mapping of entities to rows, the statements, the schema steps and the
refusals are shared with SQLite (`adapters.sql`); this module keeps
PostgreSQL's connections, transactions, placeholders and the translation of
psycopg's errors. No psycopg exception leaves it: a broken constraint becomes
the core's `Conflict` (in the words of `adapters.refusals`), any other failure
`StorageFailure`.

Every call is a network round trip: none of it may run on an event loop, and
`reads_never_wait` is False.

Transactions
------------
Connections are in autocommit mode and each unit of work says BEGIN, COMMIT
and ROLLBACK itself, as on SQLite. A writing unit runs at READ COMMITTED: the
rules that span rows are constraints (unique ip, one running migration per
target, ...), and a compare-and-set such as `update_if` re-reads the row it
waits for. A read-only unit is REPEATABLE READ, READ ONLY: a count and its
page come from one snapshot. A unit entered inside another on the same thread
uses the outer one's connection, as a savepoint.

A read-only unit's BEGIN is not sent alone: it goes with the unit's first
statement in one round trip (psycopg's pipeline mode), and a read unit that
ran no statement sends nothing at all. A read of one statement is then two
round trips (BEGIN with the SELECT, then ROLLBACK), where it was three.

READ COMMITTED alone would let two read-modify-writes of one row (two
PATCHes, a cancel and the runner's progress) each write back what it read,
the later undoing the earlier. So in a writing unit a read of an entity to
write back (`Repository.get`) locks that row `FOR NO KEY UPDATE` until the
commit: the other waits, then reads the change. What a use case only looks
at (`Repository.peek`: a run's source, volumes and login), lists and counts
lock nothing, nor do read-only units: a wave run holding shared rows would
otherwise wait in a cycle with single runs. Migrations are taken in id order
(the runner's tick, interruptions, wave runs); the rare remaining cycle is a
deadlock PostgreSQL breaks, answered as a Conflict.

Schema upgrades hold a transaction-level advisory lock, so instances that
start together upgrade one after another. Each live instance holds a
session-level advisory lock on a connection of its own: when its process or
its connection dies, PostgreSQL drops the lock and the others know at once."""

from __future__ import annotations

import functools
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import ConnectionPool, PoolTimeout

from .secrets import SecretBox
from .sql.codec import Codec
from .sql.errors import StorageFailure, driver_errors
from .sql.instances import SqlInstanceRegistry
from .sql.schema import POSTGRES, upgrade
from .sql.unit_of_work import SqlUnitOfWork, savepoint_on

__all__ = ["PostgresStorage", "StorageFailure"]

POOL_TIMEOUT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 10
# Advisory lock keys are (class, object) pairs of int4; this class is ours.
_LOCK_CLASS = 0x4D47  # "MG"
_UPGRADE_LOCK = 1


def _driver_errors() -> AbstractContextManager[None]:
    return driver_errors(
        psycopg.IntegrityError,
        (psycopg.Error, PoolTimeout),
        # Deadlocks and serialisation failures: the database refused this transaction.
        clashes=(psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure),
    )


@functools.lru_cache(maxsize=1024)
def _placeholders(sql: str) -> str:
    """The mapping's `?` as psycopg's `%s` (no statement holds a literal ? or %)."""
    return sql.replace("?", "%s")


class PostgresStorage:
    """Satisfies `migration_core.Storage`."""

    reads_never_wait = False  # every read is a round trip: never on an event loop

    def __init__(
        self, url: str, secret_key: bytes, *, min_connections: int = 2, max_connections: int = 16
    ) -> None:
        self.url = url
        self._codec = Codec(SecretBox(secret_key))
        self._local = threading.local()  # the connection of this thread's open unit
        with _driver_errors():
            # One plain connection first: a server that refuses is said at once,
            # where the pool would keep trying for its whole timeout.
            psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_SECONDS).close()
            self._pool = ConnectionPool(
                url,
                min_size=min_connections,
                max_size=max(min_connections, max_connections),
                kwargs={"autocommit": True},
                timeout=POOL_TIMEOUT_SECONDS,
                open=False,
                name="migration-storage",
            )
            self._pool.open(wait=True, timeout=POOL_TIMEOUT_SECONDS)
        try:
            self._prepare()
        except BaseException:
            self._pool.close()
            raise

    def _prepare(self) -> None:
        """Bring the database to the latest schema and check the secret key."""
        with self.unit_of_work() as uow:
            with _driver_errors():
                uow.execute("SELECT pg_advisory_xact_lock(?, ?)", [_LOCK_CLASS, _UPGRADE_LOCK])
                uow.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                row = uow.execute("SELECT version FROM schema_version").fetchone()
                current = 0 if row is None else int(row[0])
                applied = upgrade(lambda sql: uow.execute(sql), POSTGRES, current)
                if row is None:
                    uow.execute("INSERT INTO schema_version (version) VALUES (?)", [current])
                if applied:
                    uow.execute("UPDATE schema_version SET version = ?", [applied[-1]])
            self._codec.check_key(uow, "The database")
            uow.commit()

    def unit_of_work(self, *, write: bool = True, undo_nested: bool = True) -> PostgresUnitOfWork:
        return PostgresUnitOfWork(self, self._codec, write=write, undo_nested=undo_nested)

    def check(self) -> None:
        with self.unit_of_work(write=False) as uow:
            uow.execute("SELECT 1").fetchone()

    def instance_registry(self) -> SqlInstanceRegistry:
        """Instances sharing this database: rows in it, and advisory locks."""
        return SqlInstanceRegistry(self.unit_of_work, AdvisoryLockWitness(self.url))

    def write_executor(self) -> None:
        return None

    def close(self) -> None:
        self._pool.close()

    # -- connections of units --

    def acquire(self) -> tuple[psycopg.Connection[Any], bool]:
        """This thread's open connection, or one from the pool; and whether it
        came from the pool (then the unit gives it back when it ends)."""
        held: psycopg.Connection[Any] | None = getattr(self._local, "connection", None)
        if held is not None:
            return held, False
        with _driver_errors():
            connection = self._pool.getconn()
        self._local.connection = connection
        return connection, True

    def give_back(self, connection: psycopg.Connection[Any]) -> None:
        self._local.connection = None
        self._local.pending_begin = None
        self._pool.putconn(connection)

    # -- a read unit's BEGIN, sent with its first statement --

    def pending_begin(self) -> str | None:
        """The BEGIN this thread's connection has yet to send, if any."""
        pending: str | None = getattr(self._local, "pending_begin", None)
        return pending

    def defer_begin(self, begin: str | None) -> None:
        self._local.pending_begin = begin


class PostgresUnitOfWork(SqlUnitOfWork):
    """One transaction; also the `Session` its repositories run statements through."""

    dialect = POSTGRES
    _storage: PostgresStorage

    def __init__(self, storage: PostgresStorage, codec: Codec, *, write: bool, undo_nested: bool = True) -> None:
        super().__init__(storage, codec, write=write, undo_nested=undo_nested)
        self._connection: psycopg.Connection[Any] | None = None
        self._pooled = False

    @property
    def connection(self) -> psycopg.Connection[Any]:
        if self._connection is None:
            raise RuntimeError("Use the unit of work inside a `with` block.")
        return self._connection

    def __enter__(self) -> PostgresUnitOfWork:
        connection, pooled = self._storage.acquire()
        storage = self._storage
        transactions = self._nested_transactions(
            functools.partial(self._transaction_statement, connection),
            lambda: storage.pending_begin() is not None
            or connection.info.transaction_status != pq.TransactionStatus.IDLE,
        )
        try:
            with _driver_errors():
                transactions.begin(
                    "BEGIN" if self._write else "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
                )
        except BaseException:
            if pooled:
                self._storage.give_back(connection)
            raise
        self._connection, self._pooled, self._transactions = connection, pooled, transactions
        self._entered()
        return self

    def _driver_errors(self) -> AbstractContextManager[None]:
        return _driver_errors()

    def _transaction_statement(self, connection: psycopg.Connection[Any], sql: str) -> None:
        """BEGIN, SAVEPOINT, COMMIT and the like. A read unit's BEGIN waits for
        its first statement; ending a transaction that never began is nothing."""
        storage = self._storage
        if not self._write and sql.startswith("BEGIN"):
            storage.defer_begin(sql)
        elif (pending := storage.pending_begin()) is None:
            connection.execute(sql)
        elif sql in ("COMMIT", "ROLLBACK"):
            storage.defer_begin(None)
        else:
            storage.defer_begin(None)
            connection.execute(pending)
            connection.execute(sql)

    def _release(self) -> None:
        connection, self._connection = self._connection, None
        if self._pooled and connection is not None:
            self._storage.give_back(connection)

    # -- the Session of the shared repositories --

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        connection = self.connection
        with _driver_errors():
            pending = self._storage.pending_begin()
            if pending is None:
                return connection.execute(_placeholders(sql), parameters)
            self._storage.defer_begin(None)
            with connection.pipeline():  # one round trip for both; results at its end
                connection.execute(pending)
                return connection.execute(_placeholders(sql), parameters)

    def insert(self, sql: str, parameters: Sequence[Any]) -> int:
        row = self.execute(f"{sql} RETURNING id", parameters).fetchone()
        assert row is not None
        return int(row[0])

    @contextmanager
    def _savepoint(self) -> Iterator[None]:
        statement = functools.partial(self._transaction_statement, self.connection)
        with _driver_errors(), savepoint_on(statement, f"write_{id(self)}"):
            yield


def _lock_key(instance_id: str) -> int:
    """An int4 for the instance's advisory lock, from its (hexadecimal) id."""
    return int(instance_id[:7], 16)


class AdvisoryLockWitness:
    """A session-level advisory lock per live instance, held on a connection of
    its own: PostgreSQL drops it when that session ends, however it ends."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._connection: psycopg.Connection[Any] | None = None
        self._held: set[str] = set()

    def _session(self) -> psycopg.Connection[Any]:
        connection = self._connection
        if connection is not None and not connection.closed:
            try:
                connection.execute("SELECT 1")
                return connection
            except psycopg.Error:
                connection.close()
        # A new session holds no lock yet: every lock is taken again.
        self._connection = psycopg.connect(self._url, autocommit=True)
        self._held.clear()
        return self._connection

    def hold(self, instance_id: str) -> None:
        with _driver_errors():
            session = self._session()
            if instance_id in self._held:
                return
            taken = session.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", [_LOCK_CLASS, _lock_key(instance_id)]
            ).fetchone()
        if not (taken and taken[0]):
            raise StorageFailure(f"The lock of instance {instance_id} is held by another session.")
        self._held.add(instance_id)

    def release(self, instance_id: str) -> None:
        if instance_id not in self._held or self._connection is None:
            return
        self._held.discard(instance_id)
        with _driver_errors():
            self._connection.execute(
                "SELECT pg_advisory_unlock(%s, %s)", [_LOCK_CLASS, _lock_key(instance_id)]
            )
            if not self._held:
                self._connection.close()
                self._connection = None

    def held(self, instance_ids: Collection[str]) -> set[str]:
        if not instance_ids:
            return set()
        with _driver_errors(), psycopg.connect(self._url, autocommit=True) as connection:
            locked = {
                row[0]
                for row in connection.execute(
                    "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory'"
                    " AND classid::bigint = %s AND objsubid = 2 AND granted",
                    [_LOCK_CLASS],
                )
            }
        return {i for i in instance_ids if _lock_key(i) in locked}
