"""The register of instances in an SQL database (schema step 4): a row per
instance with its lease, read and written the same way in every dialect; the
dialect supplies the `LockWitness` that tells at once when an instance died."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from datetime import datetime, timezone
from typing import Protocol

from ..instances import Instance
from .tables import chunks, marks
from .unit_of_work import SqlUnit

FORGET_AFTER_SECONDS = 3600.0


class LockWitness(Protocol):
    """A lock an instance holds while it lives, which dies with it."""

    def hold(self, instance_id: str) -> None: ...

    def release(self, instance_id: str) -> None: ...

    def held(self, instance_ids: Collection[str]) -> set[str]:
        """Which of these instances still hold their lock."""
        ...


class SqlInstanceRegistry:
    def __init__(self, unit_of_work: Callable[[], SqlUnit], witness: LockWitness) -> None:
        self._unit_of_work = unit_of_work
        self._witness = witness
        self._lock = threading.Lock()

    def register(self, instance: Instance, now: float) -> None:
        with self._lock:
            self._witness.hold(instance.id)
            self._record(instance, now)
            with self._unit_of_work() as uow:
                # Long gone either way: a run of an instance not found is gone too.
                uow.session.execute(
                    "DELETE FROM instances WHERE lease_until < ?", [now - FORGET_AFTER_SECONDS]
                )
                uow.commit()

    def renew(self, instance: Instance, now: float) -> None:
        with self._lock:
            # A witness lost with a dropped database session is taken again.
            self._witness.hold(instance.id)
            self._record(instance, now)

    def _record(self, instance: Instance, now: float) -> None:
        until = now + instance.lease_seconds
        with self._unit_of_work() as uow:
            renewed = uow.session.execute(
                "UPDATE instances SET lease_until = ? WHERE id = ?", [until, instance.id]
            )
            if renewed.rowcount == 0:
                started = datetime.fromtimestamp(now, timezone.utc).isoformat()
                uow.session.execute(
                    "INSERT INTO instances (id, host, pid, started_at, lease_until)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [instance.id, instance.host, instance.pid, started, until],
                )
            uow.commit()

    def deregister(self, instance: Instance) -> None:
        with self._lock:
            with self._unit_of_work() as uow:
                uow.session.execute("DELETE FROM instances WHERE id = ?", [instance.id])
                uow.commit()
            self._witness.release(instance.id)

    def gone(self, candidates: Collection[str | None], now: float) -> set[str | None]:
        named = sorted(c for c in candidates if c is not None)
        leased = set()
        with self._unit_of_work() as uow:
            for chunk in chunks(named):
                leased |= {
                    row[0]
                    for row in uow.session.execute(
                        f"SELECT id FROM instances WHERE id IN ({marks(len(chunk))})"
                        " AND lease_until >= ?",
                        [*chunk, now],
                    )
                }
        alive = self._witness.held(leased) if leased else set()
        return {c for c in candidates if c not in alive}

    def live(self, now: float) -> int:
        with self._unit_of_work() as uow:
            ids = [
                row[0]
                for row in uow.session.execute(
                    "SELECT id FROM instances WHERE lease_until >= ?", [now]
                )
            ]
        return len(self._witness.held(ids))
