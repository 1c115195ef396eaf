"""What every runner does with its copies, simulated or real: it picks the
copier of a run's target, records where the copies are, and records their
end, trying again when storage fails to, then failing the run so that it can
be run again."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping

from migration_core import Clock, Copier, DomainError, NotFound, Storage
from migration_core.machines import CopyEnd, CopyHandle, CopyJob, CopyProgress, SwapGate, VolumeCopied
from migration_core.runs import RunRef, advance_runs, end_copy, enter_swap, fail_run, leave_swap

log = logging.getLogger(__name__)

# An end that storage keeps refusing to record is tried this many times, then
# the run is failed with the reason.
END_ATTEMPTS = 3


class Carrier:
    def __init__(self, storage: Storage, clock: Clock) -> None:
        self._storage = storage
        self._clock = clock

    def record(self, reports: Mapping[RunRef, CopyProgress]) -> set[RunRef]:
        """Record the reports in one transaction; the runs still running (the
        others were cancelled, interrupted or deleted: their copy should stop)."""
        try:
            return advance_runs(self._storage, self._clock, reports)
        except DomainError:
            if len(reports) == 1:
                return set()
        # One run's migration is gone; write the others one by one.
        still_running: set[RunRef] = set()
        for ref, report in reports.items():
            with contextlib.suppress(NotFound):
                still_running |= advance_runs(self._storage, self._clock, {ref: report})
        return still_running

    def end(self, ref: RunRef, end: CopyEnd, last: CopyProgress | None, attempt: int) -> bool:
        """Record how a copy ended, with its last report (what a real copy
        verified in place is kept for a re-run); True once the run is over,
        False when storage failed and the end is to be tried again."""
        try:
            end_copy(self._storage, self._clock, ref, end, last)
            return True
        except NotFound:
            return True
        except Exception as exc:
            if attempt < END_ATTEMPTS:
                log.warning("could not record the end of migration %d (attempt %d): %s", ref.migration_id, attempt, exc)
                return False
            log.exception("giving up recording the end of migration %d", ref.migration_id)
            try:
                fail_run(self._storage, self._clock, ref, f"The copy could not be completed: {exc}")
            except NotFound:
                pass
            except Exception:
                log.exception("could not fail migration %d either", ref.migration_id)
                return False
            return True


class StorageSwapGate:
    """Satisfies `migration_core.machines.SwapGate` for one run carried by
    the instance `instance_id`: storage says whether the run is still its
    own before each swap, and holds a cancel back until the swap is over."""

    def __init__(self, storage: Storage, clock: Clock, ref: RunRef, instance_id: str | None) -> None:
        self._storage = storage
        self._clock = clock
        self._ref = ref
        self._instance_id = instance_id

    def enter(self, index: int) -> bool:
        return enter_swap(self._storage, self._ref, self._instance_id)

    def leave(self, index: int, done: VolumeCopied | None = None) -> None:
        leave_swap(self._storage, self._clock, self._ref, done)


class CopyRouter:
    """Satisfies `migration_core.Copier`: a run into a target with a host is
    copied for real by `machines`, any other by `simulated`."""

    def __init__(self, simulated: Copier, machines: Copier | None = None) -> None:
        self._simulated = simulated
        self._machines = machines

    def start_copy(self, job: CopyJob, changed: Callable[[], None], gate: SwapGate | None = None) -> CopyHandle:
        if job.host is None:
            return self._simulated.start_copy(job, changed)
        if self._machines is None:
            raise RuntimeError("this runner reaches no real machines")
        return self._machines.start_copy(job, changed, gate)
