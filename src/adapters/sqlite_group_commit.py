"""Group commit: write use cases from many requests share one SQLite transaction.

With `synchronous=FULL` every commit waits for the disk (about 0.3 ms here), and
a writer that has the file's lock must win the GIL back after each wait; one
commit per request made the commit the limit of writes. This executor runs the
write use cases it is given on one thread, in order, taking whatever has queued
up (at most `max_batch`) into one transaction: each use case's unit of work
becomes a savepoint of it, so a use case that fails rolls back alone, and one
commit makes the whole batch durable. No caller hears of success before that
commit; if the commit itself fails, every use case of the batch fails with it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from contextlib import AbstractContextManager
from typing import Any, ParamSpec, Protocol, TypeVar

from sqlite_utils import Database

from .sql.errors import StorageFailure

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger(__name__)

_Job = tuple[Future[Any], Callable[[], Any]]


class _Batching(Protocol):
    """What a batch needs of the SQLite storage (`SqliteStorage`): one unit
    of work, and the connection it writes through."""

    def unit_of_work(self) -> AbstractContextManager[Any]: ...

    def database(self) -> Database: ...


class GroupCommitExecutor(Executor):
    def __init__(self, storage: _Batching, *, max_batch: int = 64) -> None:
        self._storage = storage
        self._max_batch = max_batch
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._shutdown = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="sqlite-group-commit", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("The write executor is shut down.")
            self._jobs.put((future, lambda: fn(*args, **kwargs)))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if not self._shutdown:
                self._shutdown = True
                self._jobs.put(None)  # what was queued before still runs
        if wait:
            self._thread.join()

    def _work(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._jobs.put(None)  # finish this batch, then stop
                    break
                batch.append(job)
            self._run([job for job in batch if job[0].set_running_or_notify_cancel()])

    def _run(self, batch: list[_Job]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            with self._storage.unit_of_work() as batch_unit:
                connection = self._storage.database().conn
                for _future, call in batch:
                    if not connection.in_transaction:
                        # A failure the database could not confine to a
                        # savepoint ended the transaction: nothing of it stands.
                        raise StorageFailure("The batch's transaction was aborted.")
                    try:
                        outcomes.append((True, call()))
                    except BaseException as error:  # the caller gets it, as from any executor
                        outcomes.append((False, error))
                batch_unit.commit()
        except BaseException as error:
            log.error("A batch of %d writes failed to commit: %s", len(batch), error)
            for future, _call in batch:
                future.set_exception(error)
            return
        for (future, _call), (succeeded, value) in zip(batch, outcomes):
            if succeeded:
                future.set_result(value)
            else:
                future.set_exception(value)
