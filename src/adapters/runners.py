"""The blocking runner: carries a migration's copy out in the calling thread,
for programs that embed the core. The service uses the asyncio runner instead."""

from __future__ import annotations

import time
from collections.abc import Callable

from migration_core import Clock, Elapsed, Migration, RunRef, Storage, advance_runs, complete_run


class BlockingRunner:
    instance_id: str | None = None  # no service instance: the calling program carries the run

    def __init__(
        self,
        storage: Storage,
        clock: Clock,
        duration: float,
        *,
        tick: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._duration = duration
        self._tick = tick
        self._sleep = sleep
        self._monotonic = monotonic

    def launch(self, migration: Migration) -> None:
        ref = RunRef.of(migration)
        started = self._monotonic()
        while (elapsed := self._monotonic() - started) < self._duration:
            self._sleep(min(self._tick, self._duration - elapsed))
            report = Elapsed(self._monotonic() - started, self._duration)
            if not advance_runs(self._storage, self._clock, {ref: report}):
                return  # cancelled meanwhile
        complete_run(self._storage, self._clock, ref)

    def cancel(self, migration_id: int) -> None:
        """Nothing to stop: a blocking run sees the cancel at its next tick."""
