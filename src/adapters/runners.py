"""The blocking runner: carries a migration's copy out in the calling thread,
for programs that embed the core. The service uses the asyncio runner instead;
both record a copy's news through `carrying.Carrier`. A real run is queued
in storage as the service's are (SPEC 2.10): this runner takes that copy
itself at once (a worker of one slot that claims its own copy); should a
service instance sharing the storage have taken it first, it waits for
that instance to end the run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from migration_core import Clock, Copier, Storage
from migration_core.entities import MigrationState
from migration_core.machines import CopyJob
from migration_core.runs import RunRef, take_copies

from .carrying import Carrier, StorageSwapGate


class BlockingRunner:
    """Satisfies `migration_core.Runner`: `launch` returns when the copy is over.
    `copier` carries the bytes (`SimulatedCopy` for targets without a host,
    `CopyRouter` for both kinds)."""

    instance_id: str | None = None  # no service instance: the calling program carries the run

    def __init__(
        self,
        storage: Storage,
        clock: Clock,
        copier: Copier,
        *,
        tick: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._carrier = Carrier(storage, clock)
        self._copier = copier
        self._tick = tick
        self._monotonic = monotonic

    def launch(self, job: CopyJob) -> None:
        ref = RunRef.of_job(job)
        gate = None
        if job.host is not None:
            taken = take_copies(self._storage, self.instance_id, room=1, only=ref)
            if not taken:
                self._wait_for_end(ref)
                return
            job, gate = taken[0], StorageSwapGate(self._storage, self._clock, ref, self.instance_id)
        news = threading.Event()
        copy = self._copier.start_copy(job, news.set, gate)
        attempt = 0
        while True:
            news.clear()
            end, progress = copy.ended(), copy.progress()
            if end is not None:
                attempt += 1
                if self._carrier.end(ref, end, progress, attempt):
                    return
            elif progress is not None and not self._carrier.record({ref: progress}):
                copy.cancel()  # cancelled meanwhile
                return
            due = copy.next_due()
            wait = self._tick if due is None else min(self._tick, due - self._monotonic())
            if wait > 0:
                news.wait(wait)

    def _wait_for_end(self, ref: RunRef) -> None:
        """The run's copy was taken by another worker: return once the run is over."""
        while True:
            with self._storage.unit_of_work(write=False) as uow:
                if uow.migrations.peek(ref.owner_id, ref.migration_id).state is not MigrationState.RUNNING:
                    return
            time.sleep(self._tick)

    def queued(self) -> None:
        """Nothing takes queued copies here: a warm migration's syncs need a
        service instance (or a program that takes them with `take_copies`)."""

    def cancel(self, migration_id: int) -> None:
        """Nothing to stop from here: a blocking run sees the cancel at its next report."""
