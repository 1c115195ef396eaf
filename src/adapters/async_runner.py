"""The asyncio runner: carries out the simulated copies of many migrations in
one event loop without per-migration tasks, as one service instance among
those sharing the storage (`adapters.instances`).

One ticker task wakes when a run has something to report: each run reports
its elapsed time (monotonic) at each hundredth of its copy (a tick at least)
and at its end, so a tick costs what the runs due cost, not what every run
costs (10,000 may be running). The reports go to the core in one
`advance_runs` transaction, which records what changed; runs whose duration
has elapsed are completed in the same job. Storage is synchronous, so every storage call runs
in the runner's own one-thread executor: the event loop never waits on it, the
ticker's writes are serialised, and HTTP requests using the loop's default
executor never queue behind the ticker (nor the ticker behind them).

Instances: `start` registers this instance and marks interrupted the runs of
instances that are gone (never those of a live one); the ticker renews the
lease three times a lease period and looks for runs of gone instances once a
lease period, so a run whose instance vanished is interrupted within two lease
periods; `stop` marks only this instance's own runs interrupted.

Threading: `launch` and `cancel` are called from worker threads (the core calls
them after committing a start or a cancel). The table of active runs is guarded
by `_table_lock`, held only for dictionary operations, so the loop never waits
on a transaction. `_carry_lock` is held by the executor around each storage
write on behalf of runs, and by `cancel`/`launch` while they mark a run
stopped: once `cancel` returns, no write for the stopped run can still be in
flight, so a run cancelled and started again at once is never completed (or
advanced) by its predecessor's pending work.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import attrs

from migration_core import (
    Clock,
    CopyFailed,
    CopyHandle,
    CopyJob,
    CopyProgress,
    DomainError,
    Elapsed,
    Machines,
    Migration,
    NotFound,
    Report,
    RunRef,
    Storage,
    advance_runs,
    complete_run,
    copy_job,
    fail_run,
    mark_interrupted,
)

from .instances import Instance, InstanceRegistry, MemoryRegistry

log = logging.getLogger(__name__)

T = TypeVar("T")

# A completion that keeps failing is retried on this many ticks, then the run
# is failed so that it can be run again.
COMPLETION_ATTEMPTS = 3


@attrs.define(eq=False)
class _Run:
    """One run being carried out. Compared by identity: a migration run again
    after a cancel is a new `_Run`, even with the same RunRef."""

    ref: RunRef
    started: float  # monotonic
    stopped: bool = False  # set under _carry_lock
    failed_completions: int = 0
    # A real copy: what carries it, and its latest report not yet written.
    copy: CopyHandle | None = None
    report: CopyProgress | None = None


@attrs.frozen
class _Outcome:
    """What one executor job learnt about the runs it wrote for."""

    ended: list[_Run]  # completed, failed, or no longer running in storage
    untried: list[_Run]  # due, but the time budget ran out before their turn
    unrecorded: bool = False  # the progress could not be written (storage failed)

    @property
    def unfinished(self) -> bool:
        return bool(self.untried)


class AsyncRunner:
    """Satisfies `migration_core.Runner`. Use `await start()` once in the loop
    that will carry the runs, and `await stop()` before the loop ends."""

    def __init__(
        self,
        storage: Storage,
        clock: Clock,
        duration: float,
        *,
        tick: float = 0.5,
        monotonic: Callable[[], float] = time.monotonic,
        completion_budget: float | None = None,
        registry: InstanceRegistry | None = None,
        instance: Instance | None = None,
        machines: Machines | None = None,
    ) -> None:
        if duration < 0:
            raise ValueError(f"duration must be >= 0 seconds, not {duration}")
        if not 0 < tick <= 1:
            raise ValueError(f"tick must be in (0, 1] seconds, not {tick}")
        self._storage = storage
        self._clock = clock
        self._duration = duration
        # Carries the real copies (runs into a target with a host); without
        # it every run is simulated.
        self._machines = machines
        self._real: set[_Run] = set()  # real runs with a report to write
        self._waiters = ThreadPoolExecutor(max_workers=8, thread_name_prefix="copy-waiter")
        self._tick = tick
        self._monotonic = monotonic
        # Completions in one job stop after this long, so progress of the other
        # runs is still written about once a tick during a burst of completions.
        self._completion_budget = tick / 2 if completion_budget is None else completion_budget
        self._registry: InstanceRegistry = registry or MemoryRegistry()
        self._instance = instance or Instance.this_process(lease_seconds=15.0)
        self._renewed_at = 0.0  # monotonic
        self._scanned_at = 0.0  # monotonic
        self._runs: dict[int, _Run] = {}
        # When each run next has something to report, earliest first: a tick
        # touches the runs that are due, not every run (10,000 may be running).
        self._due: list[tuple[float, int, _Run]] = []
        self._order = itertools.count()
        self._retry: list[_Run] = []  # what storage refused: tried again at the next tick
        self._table_lock = threading.Lock()
        self._carry_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._wake: asyncio.Event | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._accepting = False

    # -- lifecycle (on the event loop) ------------------------------------

    @property
    def instance_id(self) -> str:
        return self._instance.id

    async def start(self) -> None:
        """Register this instance, mark the runs of instances that are gone as
        interrupted, then start carrying out new runs."""
        if self._loop is not None:
            raise RuntimeError("the runner is already started")
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="migration-runner")
        try:
            await self._in_executor(self._keep_lease, True)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor, self._loop = None, None
            raise
        self._wake = asyncio.Event()
        self._ticker = asyncio.create_task(self._tick_forever(), name="migration-runner-ticker")
        with self._table_lock:
            self._accepting = True

    async def stop(self) -> int:
        """Stop the ticker and mark every run this instance still carries as
        interrupted, so it can be run again; how many were."""
        with self._table_lock:
            self._accepting = False
            left = list(self._runs.values())
            self._runs.clear()
            for run in left:
                run.stopped = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._executor is None:
            return 0
        copies = [run.copy for run in left if run.copy is not None]
        if copies:
            assert self._loop is not None
            await asyncio.gather(*(self._loop.run_in_executor(self._waiters, copy.cancel) for copy in copies))
        # Queued behind any job the ticker left running: the executor has one thread.
        interrupted = await self._in_executor(self._leave, left)
        self._executor.shutdown(wait=True)
        self._executor = None
        self._loop = None
        self._waiters.shutdown(wait=False)
        return interrupted

    # -- the Runner port (any thread) -------------------------------------

    def launch(self, migration: Migration) -> None:
        if migration.snapshot is None:
            raise ValueError(f"migration {migration.id} was started without its snapshot")
        job = copy_job(self._storage, migration)
        if job is not None:
            self._launch_real(migration, job)
            return
        run = _Run(RunRef.of(migration), self._monotonic())
        loop = self._take(run, simulated=True)
        if self._duration < self._tick:
            # Due before the next regular tick: let the ticker plan its sleep again.
            # A loop closed meanwhile was stopped, and stop() interrupted this run.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake_ticker)

    def _take(self, run: _Run, *, simulated: bool) -> asyncio.AbstractEventLoop:
        """Carry `run` from now on (a previous run of its migration stops); the
        runner's loop. A simulated run is planned on the ticker's schedule."""
        with self._carry_lock, self._table_lock:
            if not self._accepting or self._loop is None:
                raise RuntimeError("the migration runner is not running")
            previous = self._runs.get(run.ref.migration_id)
            if previous is not None:
                previous.stopped = True
            self._runs[run.ref.migration_id] = run
            if simulated:
                self._plan(run, run.started)
            return self._loop

    def _launch_real(self, migration: Migration, job: CopyJob) -> None:
        if self._machines is None:
            raise RuntimeError("this runner reaches no real machines")
        run = _Run(RunRef.of(migration), self._monotonic())
        loop = self._take(run, simulated=False)
        run.copy = self._machines.start_copy(job, lambda progress: self._on_report(run, progress))
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._carry_real(run)))

    def _on_report(self, run: _Run, progress: CopyProgress) -> None:
        """A real copy's report (from the driver's thread), written at the next tick."""
        with self._table_lock:
            run.report = progress
            self._real.add(run)

    async def _carry_real(self, run: _Run) -> None:
        """Wait for a real copy to end, then record its end (on the runner's executor)."""
        assert self._loop is not None and run.copy is not None
        failure: str | None = None
        try:
            await self._loop.run_in_executor(self._waiters, run.copy.wait)
        except CopyFailed as failed:
            failure = failed.message
        except Exception as exc:  # the copy's own fault, said as it is
            log.exception("the copy of migration %d failed", run.ref.migration_id)
            failure = f"The copy failed: {exc}"
        if self._executor is None:
            return
        try:
            await self._in_executor(self._end_real, run, failure)
        except Exception:
            log.exception("could not record the end of migration %d", run.ref.migration_id)
        self._forget([run])

    def _end_real(self, run: _Run, failure: str | None) -> None:
        with self._carry_lock:
            if run.stopped:
                return  # cancelled, or this instance is stopping: recorded elsewhere
            with self._table_lock:
                report, run.report = run.report, None
                self._real.discard(run)
            try:
                # What was verified in place is recorded first: a re-run starts after it.
                if report is not None:
                    advance_runs(self._storage, self._clock, {run.ref: report})
                if failure is not None:
                    fail_run(self._storage, self._clock, run.ref, failure)
                else:
                    complete_run(self._storage, self._clock, run.ref)
            except NotFound:
                pass

    def cancel(self, migration_id: int) -> None:
        with self._carry_lock, self._table_lock:
            run = self._runs.pop(migration_id, None)
            if run is not None:
                run.stopped = True
        if run is not None and run.copy is not None:
            run.copy.cancel()  # its remote processes stop and its staging goes

    @property
    def active(self) -> frozenset[int]:
        """Ids of the migrations being carried out."""
        with self._table_lock:
            return frozenset(self._runs)

    # -- the ticker (on the event loop) -----------------------------------

    def _wake_ticker(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _tick_forever(self) -> None:
        assert self._loop is not None and self._wake is not None
        while True:
            next_tick = self._loop.time() + self._tick
            try:
                unfinished = await self._step()
            except Exception:
                log.exception("the migration runner's tick failed; retrying at the next tick")
                await asyncio.sleep(self._tick)
                continue
            if unfinished:
                await asyncio.sleep(0)  # completions left over: go on, but let others run
                continue
            await self._sleep_until(next_tick)

    async def _sleep_until(self, next_tick: float) -> None:
        """Sleep until the next tick, or until the earliest run is due if that
        is sooner. A launch wakes this to plan again; it never forces a step."""
        assert self._loop is not None and self._wake is not None
        while True:
            delay = next_tick - self._loop.time()
            earliest = self._earliest_due()
            if earliest is not None:
                delay = min(delay, earliest - self._monotonic())
            if delay <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _earliest_due(self) -> float | None:
        """When the first run has something to report."""
        with self._table_lock:
            return self._due[0][0] if self._due else None

    def _plan(self, run: _Run, now: float, *, retry: bool = False) -> None:
        """When `run` next reports (under _table_lock): at the next step of its
        progress (a hundredth of the copy, a tick at least), or at its end.
        What storage refused is tried again at the next regular tick."""
        if retry:
            self._retry.append(run)
            return
        step = max(self._tick, self._duration / 100)
        due = run.started + (math.floor((now - run.started) / step) + 1) * step
        heapq.heappush(self._due, (min(due, run.started + self._duration), next(self._order), run))

    async def _step(self) -> bool:
        """Keep the lease, write the progress of the runs that have something to
        report and complete the due ones. True when due runs were left for an
        immediate next step."""
        now = self._monotonic()
        if now - self._renewed_at >= self._instance.lease_seconds / 3:
            try:
                await self._in_executor(self._keep_lease, False)
            except Exception:
                log.exception("could not renew this instance's lease; retrying at the next tick")
        due: list[_Run] = []
        progress: dict[_Run, Report] = {}
        with self._table_lock:
            for run in self._real:
                if not run.stopped and run.report is not None:
                    progress[run] = run.report
            self._real.clear()
            ready, self._retry = self._retry, []
            while self._due and self._due[0][0] <= now:
                ready.append(heapq.heappop(self._due)[2])
            for run in dict.fromkeys(ready):
                if run.stopped or self._runs.get(run.ref.migration_id) is not run:
                    continue
                if run.copy is not None:
                    if run.report is not None:
                        progress[run] = run.report  # refused before: written again
                    continue
                if now - run.started >= self._duration:
                    due.append(run)
                else:
                    progress[run] = Elapsed(now - run.started, self._duration)
        if not due and not progress:
            return False
        outcome = await self._in_executor(self._persist, progress, due)
        self._forget(outcome.ended)
        ended = set(outcome.ended)
        with self._table_lock:
            for run in progress:
                if run in ended:
                    continue
                if run.copy is not None:
                    if outcome.unrecorded:
                        self._retry.append(run)
                    continue
                # Progress storage refused is written again at the next tick.
                self._plan(run, now, retry=outcome.unrecorded)
            for run in due:
                if run not in ended:
                    self._plan(run, now, retry=run not in outcome.untried)
        return outcome.unfinished

    def _forget(self, ended: Iterable[_Run]) -> None:
        """Drop runs that ended; a real copy whose run ended elsewhere (a cancel
        through another instance) is stopped."""
        stopping = []
        with self._table_lock:
            for run in ended:
                if run.copy is not None and not run.stopped:
                    stopping.append(run.copy)
                run.stopped = True
                if self._runs.get(run.ref.migration_id) is run:
                    del self._runs[run.ref.migration_id]
        if stopping and self._loop is not None:
            for copy in stopping:
                self._loop.run_in_executor(self._waiters, copy.cancel)

    # -- storage work (in the executor) -----------------------------------

    async def _in_executor(self, call: Callable[..., T], *args: object) -> T:
        assert self._loop is not None and self._executor is not None
        return await self._loop.run_in_executor(self._executor, call, *args)

    def _persist(self, progress: dict[_Run, Report], due: Sequence[_Run]) -> _Outcome:
        ended: list[_Run] = []
        unrecorded = False
        if progress:
            try:
                ended.extend(self._advance(progress))
            except Exception:
                log.exception("could not record the progress of %d run(s)", len(progress))
                unrecorded = True
        deadline = time.monotonic() + self._completion_budget
        for tried, run in enumerate(due, start=1):
            if self._complete(run):
                ended.append(run)
            if tried < len(due) and time.monotonic() >= deadline:
                return _Outcome(ended, untried=list(due[tried:]), unrecorded=unrecorded)
        return _Outcome(ended, untried=[], unrecorded=unrecorded)

    def _advance(self, progress: dict[_Run, Report]) -> list[_Run]:
        """Runs that ended in storage (cancelled elsewhere, interrupted, gone)."""
        with self._carry_lock:
            carried = {run: report for run, report in progress.items() if not run.stopped}
            by_ref = {run.ref: report for run, report in carried.items()}
            try:
                still_running = advance_runs(self._storage, self._clock, by_ref)
            except DomainError:
                # One run's migration is gone; write the others one by one.
                still_running = set()
                for ref, report in by_ref.items():
                    with contextlib.suppress(NotFound):
                        still_running |= advance_runs(self._storage, self._clock, {ref: report})
        return [run for run in carried if run.ref not in still_running]

    def _complete(self, run: _Run) -> bool:
        """Complete one due run; True when it is over (whatever the reason)."""
        with self._carry_lock:
            if run.stopped:
                return True
            try:
                complete_run(self._storage, self._clock, run.ref)
                return True
            except NotFound:
                return True
            except Exception as exc:
                run.failed_completions += 1
                if run.failed_completions < COMPLETION_ATTEMPTS:
                    log.warning(
                        "could not complete migration %d (attempt %d): %s",
                        run.ref.migration_id,
                        run.failed_completions,
                        exc,
                    )
                    return False
                log.exception("giving up completing migration %d", run.ref.migration_id)
                try:
                    fail_run(
                        self._storage,
                        self._clock,
                        run.ref,
                        f"The copy could not be completed: {exc}",
                    )
                except NotFound:
                    pass
                except Exception:
                    log.exception("could not fail migration %d either", run.ref.migration_id)
                    return False
                return True

    def _keep_lease(self, starting: bool) -> None:
        """Register or renew this instance; once a lease period (and at start),
        mark interrupted the runs of instances that are gone."""
        now = self._monotonic()
        wall = self._clock.now().timestamp()
        if starting:
            self._registry.register(self._instance, wall)
        else:
            self._registry.renew(self._instance, wall)
        self._renewed_at = now
        if starting or now - self._scanned_at >= self._instance.lease_seconds:
            self._scanned_at = now
            self._interrupt_orphans(wall)

    def _interrupt_orphans(self, wall: float) -> None:
        with self._storage.unit_of_work(write=False) as uow:
            carrying = uow.migrations.running_instances() - {self._instance.id}
        gone = self._registry.gone(carrying, wall) if carrying else set()
        if not gone:
            return
        with self._carry_lock:
            interrupted = mark_interrupted(self._storage, self._clock, gone)
        if interrupted:
            log.warning(
                "marked %d migration(s) of instances that are gone as interrupted: %s",
                len(interrupted),
                ", ".join(map(str, interrupted)),
            )

    def _leave(self, runs: Sequence[_Run]) -> int:
        """Mark this instance's runs interrupted (those carried, and any other
        storage says it carries), then leave the register."""
        interrupted = 0
        try:
            interrupted = len(mark_interrupted(self._storage, self._clock, {self._instance.id}))
        except Exception:
            # Left `running`: the other instances, or the next start, mark them.
            log.exception("could not mark %d run(s) of this instance interrupted", len(runs))
        try:
            self._registry.deregister(self._instance)
        except Exception:
            log.exception("could not leave the register of instances")
        return interrupted
