"""The asyncio runner: carries out the copies of many migrations in one event
loop without per-migration tasks, as one service instance among those sharing
the storage (`adapters.instances`). The bytes are the copier's (simulated or
real, `carrying.CopyRouter`); the runner records what its copies report.

Real copies wait in storage's queue (SPEC 2.10) until an instance with a free
copy slot takes one: this runner takes the oldest it may at each tick (and
at once when a run of its own was queued or a copy of its own ended), at most
`max_copies` at a time and `max_copies_per_machine` touching one machine, so
a wave of a thousand real runs copies a bounded number at once, spread over
every instance. Each tick it also reads whether the runs of its real copies
are still its own: a cancel answered by any instance stops the copy within
a tick, and the copy's swaps pass through storage (`enter_swap`), so a copy
whose run was cancelled never moves a volume into place.

One ticker task wakes when a copy has news: a real copy says so (`changed`),
a simulated one is asked at the moments it names (`next_due`: a hundredth of
its copy, a tick at least, and its end), so a tick costs what the runs with
news cost, not what every run costs (10,000 may be running). The reports go to
the core in one `advance_runs` transaction; copies that ended are recorded in
the same job, each with its last report. Storage is synchronous, so every
storage call runs in the runner's own one-thread executor: the event loop never
waits on it, the ticker's writes are serialised, and HTTP requests using the
loop's default executor never queue behind the ticker (nor the ticker behind
them).

Instances: `start` registers this instance and marks interrupted the runs of
instances that are gone (never those of a live one); the ticker renews the
lease three times a lease period and looks for runs of gone instances once a
lease period, so a run whose instance vanished is interrupted within two lease
periods; `stop` stops this instance's copies and marks its runs interrupted.

Threading: `launch` and `cancel` are called from worker threads (the core calls
them after committing a start or a cancel), `changed` from a copier's. The
table of active runs is guarded by `_table_lock`, held only for dictionary
operations, so the loop never waits on a transaction. `_carry_lock` is held by
the executor around each storage write on behalf of runs, and by
`cancel`/`launch` while they mark a run stopped: once `cancel` returns, no
write for the stopped run can still be in flight, so a run cancelled and
started again at once is never completed (or advanced) by its predecessor's
pending work.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import attrs

from migration_core import Clock, Copier, Storage, mark_interrupted
from migration_core.machines import CopyEnd, CopyHandle, CopyJob, CopyKind, CopyProgress
from migration_core.runs import RunRef, queue_due, take_copies

from .carrying import END_ATTEMPTS, Carrier, StorageSwapGate
from .instances import Instance, InstanceRegistry, MemoryRegistry

log = logging.getLogger(__name__)

T = TypeVar("T")


# Simulated copies (a warm migration's syncs into a target without a host)
# taken at most this many a tick: they take no slot.
SIMULATED_TAKES = 1000


def _machines_of(job: CopyJob) -> tuple[int, ...]:
    """The workloads a real copy touches (its source and host); () for a simulated one."""
    return () if job.host is None else (job.source_id, job.host_id or 0)

@attrs.define(eq=False)
class _Run:
    """One run being carried out. Compared by identity: a migration run again
    after a cancel is a new `_Run`, even with the same RunRef."""

    ref: RunRef
    copy: CopyHandle | None = None  # set once its copier has started it
    stopped: bool = False  # set under _carry_lock
    end_attempts: int = 0
    # The machines (workload ids) a real copy touches, which its slot counts; () when simulated.
    machines: tuple[int, ...] = ()

    @property
    def real(self) -> bool:
        return bool(self.machines)


@attrs.frozen
class _Outcome:
    """What one executor job learnt about the runs it wrote for."""

    ended: list[_Run]  # recorded as ended, or no longer running in storage
    again: list[_Run]  # to be written again: storage refused, or the time budget ran out
    unfinished: bool = False  # ends were left for an immediate next step


class AsyncRunner:
    """Satisfies `migration_core.Runner`. Use `await start()` once in the loop
    that will carry the runs, and `await stop()` before the loop ends."""

    def __init__(
        self,
        storage: Storage,
        clock: Clock,
        copier: Copier,
        *,
        tick: float = 0.5,
        monotonic: Callable[[], float] = time.monotonic,
        completion_budget: float | None = None,
        registry: InstanceRegistry | None = None,
        instance: Instance | None = None,
        max_copies: int = 8,
        max_copies_per_machine: int = 4,
    ) -> None:
        if not 0 < tick <= 1:
            raise ValueError(f"tick must be in (0, 1] seconds, not {tick}")
        if max_copies < 1 or max_copies_per_machine < 1:
            raise ValueError("a runner carries at least one copy at a time, and one per machine")
        self._max_copies = max_copies
        self._max_copies_per_machine = max_copies_per_machine
        # Set when a run was queued or a copy ended here: look at the queue at once.
        self._queue_news = True
        # Real copies told to stop whose stop has not returned yet.
        self._stopping: set[_Run] = set()
        # Set when a copy ended: the ticker steps at once to record it.
        self._ended_news = False
        self._storage = storage
        self._clock = clock
        self._copier = copier
        self._carrier = Carrier(storage, clock)
        # Cancels of real copies wait for their cleanup: off the loop and the executor.
        self._cancels = ThreadPoolExecutor(max_workers=8, thread_name_prefix="copy-cancel")
        self._tick = tick
        self._monotonic = monotonic
        # Ends recorded in one job stop after this long, so progress of the other
        # runs is still written about once a tick during a burst of ends.
        self._completion_budget = tick / 2 if completion_budget is None else completion_budget
        self._registry: InstanceRegistry = registry or MemoryRegistry()
        self._instance = instance or Instance.this_process(lease_seconds=15.0)
        self._renewed_at = 0.0  # monotonic
        self._scanned_at = 0.0  # monotonic
        self._runs: dict[int, _Run] = {}
        # When each copy next has news unasked, earliest first: a tick
        # touches the runs that are due, not every run (10,000 may be running).
        self._due: list[tuple[float, int, _Run]] = []
        self._order = itertools.count()
        self._news: set[_Run] = set()  # copies that said they have news
        self._again: list[_Run] = []  # what storage refused: tried at the next tick
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
        """Stop the ticker and the copies, and mark every run this instance
        still carries as interrupted, so it can be run again; how many were."""
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
            await asyncio.gather(*(self._loop.run_in_executor(self._cancels, copy.cancel) for copy in copies))
        # Queued behind any job the ticker left running: the executor has one thread.
        interrupted = await self._in_executor(self._leave, left)
        self._executor.shutdown(wait=True)
        self._executor = None
        self._loop = None
        self._cancels.shutdown(wait=False)
        return interrupted

    # -- the Runner port (any thread) -------------------------------------

    def launch(self, job: CopyJob) -> None:
        if job.host is not None or job.kind is not CopyKind.RUN:
            # Queued in storage: this instance, or another with room, takes it.
            with self._table_lock:
                if not self._accepting or self._loop is None:
                    raise RuntimeError("the migration runner is not running")
            self.queued()
            return
        self._carry(job)

    def queued(self) -> None:
        with self._table_lock:
            self._queue_news = True
            loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # a loop closed meanwhile: stopped
                loop.call_soon_threadsafe(self._wake_ticker)

    def _carry(self, job: CopyJob) -> None:
        """Start carrying a run's copy: a simulated one just started, or a real one just taken."""
        run = _Run(RunRef.of_job(job), machines=_machines_of(job))
        with self._carry_lock, self._table_lock:
            if not self._accepting or self._loop is None:
                raise RuntimeError("the migration runner is not running")
            loop = self._loop
            previous = self._runs.get(job.migration_id)
            if previous is not None:
                previous.stopped = True
            self._runs[job.migration_id] = run
        gate = StorageSwapGate(self._storage, self._clock, run.ref, self._instance.id) if run.real else None
        try:
            copy = self._copier.start_copy(job, lambda: self._changed(run), gate)
        except BaseException:
            with self._table_lock:
                if self._runs.get(job.migration_id) is run:
                    del self._runs[job.migration_id]
            raise
        with self._table_lock:
            run.copy = copy
            self._plan(run, copy.next_due())
        # Perhaps due before the next regular tick: let the ticker plan its sleep
        # again. A loop closed meanwhile was stopped, and stop() interrupted this run.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wake_ticker)

    def _changed(self, run: _Run) -> None:
        """A copy has news (from its copier's thread): written at the next
        tick; a copy that ended is recorded at once (its slot goes to the
        next copy, and a cutover's downtime ends with it)."""
        with self._table_lock:
            self._news.add(run)
            loop = self._loop
            ended = run.copy is not None and run.copy.ended() is not None
            if ended:
                self._ended_news = True
        if ended and loop is not None:
            with contextlib.suppress(RuntimeError):  # a loop closed meanwhile: stopped
                loop.call_soon_threadsafe(self._wake_ticker)

    def cancel(self, migration_id: int) -> None:
        with self._carry_lock, self._table_lock:
            run = self._runs.pop(migration_id, None)
            if run is not None:
                run.stopped = True
                if run.real:
                    self._stopping.add(run)
        if run is not None and run.copy is not None:
            self._stop_copy(run)

    def _stop_copy(self, run: _Run) -> None:
        """Stop a copy (a real one's remote processes stop and its new copy
        goes); its slot stays taken until it has stopped."""
        try:
            assert run.copy is not None
            run.copy.cancel()
        finally:
            with self._table_lock:
                self._stopping.discard(run)
                self._queue_news = True

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
                await asyncio.sleep(0)  # ends left over: go on, but let others run
                continue
            await self._sleep_until(next_tick)

    async def _sleep_until(self, next_tick: float) -> None:
        """Sleep until the next tick, or until the earliest run is due if that
        is sooner, or until a copy has ended. A launch wakes this to plan again;
        only an ended copy cuts the sleep short."""
        assert self._loop is not None and self._wake is not None
        while True:
            delay = next_tick - self._loop.time()
            earliest = self._earliest_due()
            if earliest is not None:
                delay = min(delay, earliest - self._monotonic())
            with self._table_lock:
                ended, self._ended_news = self._ended_news, False
            if delay <= 0 or ended:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _earliest_due(self) -> float | None:
        """When the first run has something to report."""
        with self._table_lock:
            return self._due[0][0] if self._due else None

    def _plan(self, run: _Run, due: float | None) -> None:
        """When `run` is next asked for news, if its copy names a moment (under _table_lock)."""
        if due is not None:
            heapq.heappush(self._due, (due, next(self._order), run))

    async def _step(self) -> bool:
        """Keep the lease, then write what the copies with news report, and
        their ends. True when ends were left for an immediate next step."""
        now = self._monotonic()
        if now - self._renewed_at >= self._instance.lease_seconds / 3:
            try:
                await self._in_executor(self._keep_lease, False)
            except Exception:
                log.exception("could not renew this instance's lease; retrying at the next tick")
        await self._take_copies()
        await self._stop_copies_ended_elsewhere()
        with self._table_lock:
            ready, self._again = self._again, []
            ready += self._news
            self._news.clear()
            while self._due and self._due[0][0] <= now:
                ready.append(heapq.heappop(self._due)[2])
            ready = [
                run
                for run in dict.fromkeys(ready)
                if not run.stopped and run.copy is not None and self._runs.get(run.ref.migration_id) is run
            ]
        if not ready:
            return False
        reports: dict[_Run, CopyProgress] = {}
        ends: list[tuple[_Run, CopyEnd]] = []
        # The next report is due a step after this one, not after the write:
        # time read once the write is done may already be past its own step.
        dues = {}
        for run in ready:
            assert run.copy is not None
            dues[run] = run.copy.next_due()
            end, progress = run.copy.ended(), run.copy.progress()
            if end is not None:
                ends.append((run, end))
            if progress is not None and end is None:
                reports[run] = progress
        outcome = await self._in_executor(self._persist, reports, ends)
        self._forget(outcome.ended)
        if any(run.real for run in outcome.ended):
            await self._take_copies()  # the slots just freed: not a tick later
        ended, again = set(outcome.ended), set(outcome.again)
        with self._table_lock:
            self._again += [run for run in ready if run in again]
            for run in ready:
                if run not in ended and run not in again:
                    self._plan(run, dues[run])
        return outcome.unfinished

    async def _take_copies(self) -> None:
        """Take queued copies while this instance has free slots."""
        with self._table_lock:
            # A copy still stopping holds its slot and its machines.
            real = [run for run in self._runs.values() if run.real] + list(self._stopping)
            room = self._max_copies - len(real)
            news, self._queue_news = self._queue_news, False
        if not self._accepting:
            return
        carrying = [machine for run in real for machine in run.machines]
        try:
            jobs = await self._in_executor(self._taken, room, carrying, news)
        except Exception:
            log.exception("could not take queued copies; trying again at the next tick")
            return
        for job in jobs:
            try:
                self._carry(job)
            except Exception as exc:
                log.exception("could not start the copy of migration %d", job.migration_id)
                ref = RunRef.of_job(job)
                await self._in_executor(self._carrier.end, ref, CopyEnd(f"The copy could not start: {exc}"), None,
                                        END_ATTEMPTS)

    def _taken(self, room: int, carrying: list[int], news: bool) -> list[CopyJob]:
        """Queue the warm migrations' syncs and cutovers that are due, then
        take what waits: the simulated copies all (they take no slot), the
        real ones while there is room."""
        queue_due(self._storage, self._clock)
        if not news:
            with self._storage.unit_of_work(write=False) as uow:
                if not uow.migrations.any_queued():
                    return []
        simulated = take_copies(
            self._storage, self._instance.id, room=SIMULATED_TAKES, simulated=True, clock=self._clock
        )
        if room <= 0:
            return simulated
        return simulated + take_copies(
            self._storage,
            self._instance.id,
            room=room,
            carrying=carrying,
            per_machine=self._max_copies_per_machine,
            clock=self._clock,
        )

    async def _stop_copies_ended_elsewhere(self) -> None:
        """A real copy whose run is no longer this instance's (cancelled or
        interrupted through any instance) stops now, not at its next report."""
        with self._table_lock:
            real = [run for run in self._runs.values() if run.real and not run.stopped]
        if not real:
            return
        try:
            ours = await self._in_executor(self._still_carried)
        except Exception:
            log.exception("could not read which copies are still this instance's")
            return
        self._forget([run for run in real if run.ref.migration_id not in ours])

    def _still_carried(self) -> set[int]:
        with self._storage.unit_of_work(write=False) as uow:
            return {m.id for m in uow.migrations.running([self._instance.id]) if m.carried_by(self._instance.id)}

    def _forget(self, ended: Iterable[_Run]) -> None:
        """Drop runs that ended; a copy still going whose run ended elsewhere
        (a cancel through another instance) is stopped."""
        stopping = []
        with self._table_lock:
            self._queue_news = self._queue_news or any(run.real for run in ended)
            for run in ended:
                if run.copy is not None and not run.stopped and run.copy.ended() is None:
                    stopping.append(run)
                    if run.real:
                        self._stopping.add(run)
                run.stopped = True
                if self._runs.get(run.ref.migration_id) is run:
                    del self._runs[run.ref.migration_id]
        if stopping and self._loop is not None:
            for run in stopping:
                self._loop.run_in_executor(self._cancels, self._stop_copy, run)

    # -- storage work (in the executor) -----------------------------------

    async def _in_executor(self, call: Callable[..., T], *args: object) -> T:
        assert self._loop is not None and self._executor is not None
        return await self._loop.run_in_executor(self._executor, call, *args)

    def _persist(self, reports: dict[_Run, CopyProgress], ends: Sequence[tuple[_Run, CopyEnd]]) -> _Outcome:
        ended: list[_Run] = []
        again: list[_Run] = []
        if reports:
            try:
                ended += self._advance(reports)
            except Exception:
                log.exception("could not record the progress of %d run(s)", len(reports))
                again += reports
        deadline = time.monotonic() + self._completion_budget
        for tried, (run, end) in enumerate(ends, start=1):
            if self._end(run, end):
                ended.append(run)
            else:
                again.append(run)
            if tried < len(ends) and time.monotonic() >= deadline:
                again += [run for run, _ in ends[tried:]]
                return _Outcome(ended, again, unfinished=True)
        return _Outcome(ended, again)

    def _advance(self, reports: dict[_Run, CopyProgress]) -> list[_Run]:
        """Runs that ended in storage (cancelled elsewhere, interrupted, gone)."""
        with self._carry_lock:
            carried = {run: report for run, report in reports.items() if not run.stopped}
            still_running = self._carrier.record({run.ref: report for run, report in carried.items()})
        return [run for run in carried if run.ref not in still_running]

    def _end(self, run: _Run, end: CopyEnd) -> bool:
        """Record how one copy ended; True when its run is over (whatever the reason)."""
        with self._carry_lock:
            if run.stopped:
                return True  # cancelled, or this instance is stopping: recorded elsewhere
            assert run.copy is not None
            run.end_attempts += 1
            return self._carrier.end(run.ref, end, run.copy.progress(), run.end_attempts)

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
