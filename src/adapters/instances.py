"""Service instances sharing one storage: each registers itself with an id and
keeps renewing a lease while it lives, so that the others can tell when it is
gone and mark the runs it was carrying interrupted.

An instance is gone when storage does not hold it, when its lease has lapsed,
or, at once, when the lock it holds while alive has died with its process or
its database session (the `witness` of each storage: an OS file lock beside an
SQLite file, a session-level advisory lock in PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Collection

from migration_core.ports import Instance, InstanceRegistry

__all__ = ["Instance", "InstanceRegistry", "MemoryRegistry"]  # the port's types, with memory's register


class MemoryRegistry:
    """The register of in-memory storage, which one process alone can use:
    an instance lives from `register` to `deregister`."""

    def __init__(self) -> None:
        self._leases: dict[str, float] = {}
        self._lock = threading.Lock()

    def register(self, instance: Instance, now: float) -> None:
        with self._lock:
            self._leases[instance.id] = now + instance.lease_seconds

    def renew(self, instance: Instance, now: float) -> None:
        self.register(instance, now)

    def deregister(self, instance: Instance) -> None:
        with self._lock:
            self._leases.pop(instance.id, None)

    def gone(self, candidates: Collection[str | None], now: float) -> set[str | None]:
        with self._lock:
            return {c for c in candidates if c is None or self._leases.get(c, -1.0) < now}

    def live(self, now: float) -> int:
        with self._lock:
            return sum(1 for until in self._leases.values() if until >= now)
