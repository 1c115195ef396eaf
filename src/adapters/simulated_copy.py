"""The simulated copy: the copier of a target without a host (SPEC 2.2). Its
bytes pass at one rate for `duration` seconds, the selected volumes one
after another; nothing is read or written anywhere. It keeps no thread: a
copy is where the time since its start puts it, read when its runner asks
(at `next_due`: each hundredth of the copy, `step` apart at least, and its
end). For demos, tests of the orchestration, and the behaviour the API was
first specified with."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from fractions import Fraction

from migration_core.copying import position_of
from migration_core.machines import CopyEnd, CopyJob, CopyProgress, SwapGate


def time_share(elapsed: float, duration: float) -> Fraction:
    """elapsed / duration, exactly, within 0..1."""
    if duration <= 0 or elapsed >= duration:
        return Fraction(1)
    if elapsed <= 0:
        return Fraction(0)
    return Fraction(elapsed) / Fraction(duration)


def progress_after(sizes: Sequence[int], elapsed: float, duration: float) -> CopyProgress:
    """Where a simulated copy of volumes of `sizes` is after `elapsed` of its
    `duration` seconds: an empty volume takes no time when others have bytes."""
    at = position_of(sizes, time_share(elapsed, duration))
    return CopyProgress(at.volumes, at.partial)


class SimulatedCopy:
    """Satisfies `migration_core.Copier` for targets without a host."""

    def __init__(
        self, duration: float, *, step: float = 0.05, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        if duration < 0:
            raise ValueError(f"duration must be >= 0 seconds, not {duration}")
        self.duration = duration
        # A copy reports at each hundredth of its duration, no more often than this.
        self.step = max(step, duration / 100)
        self._monotonic = monotonic

    def start_copy(
        self, job: CopyJob, changed: Callable[[], None], gate: SwapGate | None = None
    ) -> _SimulatedHandle:
        return _SimulatedHandle(self, [volume.estimate for volume in job.volumes], self._monotonic())

    def now(self) -> float:
        return self._monotonic()


class _SimulatedHandle:
    def __init__(self, copier: SimulatedCopy, sizes: list[int], started: float) -> None:
        self._copier = copier
        self._sizes = sizes
        self._started = started
        # The end as one instant: `now - started >= duration` may never hold
        # at `now == started + duration`, by rounding.
        self._ends = started + copier.duration

    def _elapsed(self) -> float:
        now = self._copier.now()
        return self._copier.duration if now >= self._ends else now - self._started

    def progress(self) -> CopyProgress:
        return progress_after(self._sizes, self._elapsed(), self._copier.duration)

    def ended(self) -> CopyEnd | None:
        return CopyEnd() if self._copier.now() >= self._ends else None

    def next_due(self) -> float:
        steps = math.floor(max(0.0, self._elapsed()) / self._copier.step) + 1
        return min(self._started + steps * self._copier.step, self._ends)

    def cancel(self) -> None:
        """Nothing runs: a cancelled copy is simply no longer asked."""
