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
from migration_core.machines import CopyEnd, CopyJob, CopyKind, CopyProgress, HookRun, SwapGate


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
        # A copy reports at each hundredth of its duration, no more often than `min_step`.
        self.min_step = step
        self.step = max(step, duration / 100)
        self._monotonic = monotonic

    def start_copy(
        self, job: CopyJob, changed: Callable[[], None], gate: SwapGate | None = None
    ) -> _SimulatedHandle:
        # A warm migration's first sync takes the whole time; later syncs and
        # the cutover a tenth of it (SPEC 2.9). Hooks need a machine: not run.
        later = job.kind is CopyKind.CUTOVER or job.kind is CopyKind.SYNC and job.syncs > 0
        duration = self.duration / 10 if later else self.duration
        hooks = tuple(
            HookRun(name, None, "Not run: the target has no host, so the copy is simulated.")
            for name, command in (("pre_cutover", job.pre_cutover), ("post_cutover", job.post_cutover))
            if job.kind is CopyKind.CUTOVER and command is not None
        )
        return _SimulatedHandle(self, [volume.estimate for volume in job.volumes], self._monotonic(), duration, hooks)

    def now(self) -> float:
        return self._monotonic()


class _SimulatedHandle:
    def __init__(
        self,
        copier: SimulatedCopy,
        sizes: list[int],
        started: float,
        duration: float,
        hooks: tuple[HookRun, ...] = (),
    ) -> None:
        self._copier = copier
        self._sizes = sizes
        self._started = started
        self._duration = duration
        self._step = max(copier.min_step, duration / 100)
        self._hooks = hooks
        # The end as one instant: `now - started >= duration` may never hold
        # at `now == started + duration`, by rounding.
        self._ends = started + duration

    def _elapsed(self) -> float:
        now = self._copier.now()
        return self._duration if now >= self._ends else now - self._started

    def progress(self) -> CopyProgress:
        return progress_after(self._sizes, self._elapsed(), self._duration)

    def ended(self) -> CopyEnd | None:
        return CopyEnd(hooks=self._hooks) if self._copier.now() >= self._ends else None

    def next_due(self) -> float:
        steps = math.floor(max(0.0, self._elapsed()) / self._step) + 1
        return min(self._started + steps * self._step, self._ends)

    def cancel(self) -> None:
        """Nothing runs: a cancelled copy is simply no longer asked."""
