"""The blocking runner: carries a migration's copy out in the calling thread,
for programs that embed the core. The service uses the asyncio runner instead;
both record a copy's news through `carrying.Carrier`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from migration_core import Clock, Copier, Storage
from migration_core.machines import CopyJob
from migration_core.runs import RunRef

from .carrying import Carrier


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
        self._carrier = Carrier(storage, clock)
        self._copier = copier
        self._tick = tick
        self._monotonic = monotonic

    def launch(self, job: CopyJob) -> None:
        ref = RunRef.of_job(job)
        news = threading.Event()
        copy = self._copier.start_copy(job, news.set)
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

    def cancel(self, migration_id: int) -> None:
        """Nothing to stop from here: a blocking run sees the cancel at its next report."""
