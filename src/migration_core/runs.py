"""The life of a migration run. The core decides every change of state and
writes its events with it; what carries a run (a runner, with the copier of
the run's target) only reports where the copy is, in bytes (`advance_runs`),
and its end (`complete_run`, `fail_run`)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

import attrs

from .copying import RunState, percent, run_state
from .entities import (
    CopyMark,
    Event,
    EventKind,
    MachineCheck,
    Migration,
    MigrationState,
    MigrationTarget,
    Mode,
    OperatingSystem,
    Phase,
    TargetVm,
    Volume,
    Workload,
    system_volume,
    volume_key,
)
from .errors import Conflict, NotFound
from .events import acting, append, event
from .inventory import get_migration, replan_cutover
from .machines import (
    CopyEnd,
    CopyJob,
    CopyKind,
    CopyProgress,
    MachineAddress,
    VolumeCopied,
    VolumeToCopy,
    remember_contact,
)
from .ports import Clock, Runner, Storage, UnitOfWork

CANCELLED = "cancelled"
INTERRUPTED = "interrupted"

RUNNING = MigrationState.RUNNING
STARTABLE = (MigrationState.NOT_STARTED, MigrationState.ERROR)


@attrs.frozen
class RunRef:
    """Which run a runner is carrying out."""

    owner_id: int
    migration_id: int

    @classmethod
    def of(cls, migration: Migration) -> RunRef:
        return cls(migration.owner_id, migration.id)

    @classmethod
    def of_job(cls, job: CopyJob) -> RunRef:
        return cls(job.owner_id, job.migration_id)


def _volumes_copied(
    migration: Migration, first: int, end: int, at: datetime, real: CopyProgress | None = None
) -> list[Event]:
    """`volume_copied` for the volumes first..end-1 of the run's snapshot;
    with a real copy's report, what passed of each and its verification."""
    mark, snapshot = migration.copied, migration.snapshot
    if mark is None or snapshot is None:
        return []
    passed = {} if real is None else {done.index: done for done in real.done}
    events = []
    for index in range(first, end):
        detail: dict[str, Any] = {
            "mount_point": mark.mount_point_ids[index],
            "name": snapshot.storage[index].name,
            "size": snapshot.storage[index].size,
        }
        if index in passed:
            done = passed[index]
            detail.update(
                bytes=done.bytes, files=done.files, linked=done.linked, dropped=done.dropped, verified=True
            )
        events.append(event(migration, EventKind.VOLUME_COPIED, at, **detail))
    return events


def _host(uow: UnitOfWork, owner_id: int, target: MigrationTarget, source: Workload) -> MachineAddress | None:
    """Where a run into `target` copies for real (its host, at the target's
    root), after the checks only a real copy needs; None for a simulated copy."""
    if target.host_id is None:
        return None
    assert target.root is not None, "a target with a host has a root"
    host = uow.workloads.peek(owner_id, target.host_id)
    for role, machine in (("source", source), ("host", host)):
        if machine.os is OperatingSystem.WINDOWS:
            raise Conflict(
                f"Only Linux machines are copied for real: the {role}, workload {machine.id}, runs windows."
            )
    login = uow.credentials.peek(owner_id, host.credentials_id)
    return attrs.evolve(MachineAddress.of(host, login), root=target.root)


def _resumed_at(migration: Migration, mount_point_ids: list[int]) -> int:
    """How many volumes a real re-run may leave as they are: those its last
    run verified in place, when it copied the same volumes."""
    mark, snapshot = migration.copied, migration.snapshot
    if migration.state is not MigrationState.ERROR or mark is None or snapshot is None:
        return 0
    return mark.volumes if list(mark.mount_point_ids) == mount_point_ids else 0


def _start(
    uow: UnitOfWork,
    clock: Clock,
    owner_id: int,
    migration_id: int,
    instance_id: str | None,
    actor: int,
) -> tuple[Migration, CopyJob]:
    """Start a run (storage refuses it while the target is busy); the
    migration as stored and what its copier is to copy."""
    migration = uow.migrations.get(owner_id, migration_id)
    migration.ensure_startable()
    source = uow.workloads.peek(owner_id, migration.source_id)
    gone = [i for i in migration.selected_mount_point_ids if i not in source.mount_point_ids]
    if gone:
        which = (
            f"mount point {gone[0]} is"
            if len(gone) == 1
            else f"mount points {', '.join(map(str, gone))} are"
        )
        raise Conflict(f"Selected {which} no longer in the storage of workload {source.id}.")
    selected = [
        uow.mount_points.peek(owner_id, i)
        for i in source.mount_point_ids
        if i in migration.selected_mount_point_ids
    ]
    system = system_volume(source.os)
    if not any(volume_key(mp.name) == volume_key(system) for mp in selected):
        raise Conflict(f"A migration may not run unless volume {system} is selected.")
    credentials = uow.credentials.peek(owner_id, source.credentials_id)
    target = uow.migration_targets.peek(owner_id, migration.migration_target_id)
    host = _host(uow, owner_id, target, source)
    volumes = [Volume(mp.name, mp.size) for mp in selected]
    ids = [mp.id for mp in selected]
    # A real re-run keeps the volumes its last run verified in place.
    resumed = 0 if host is None else _resumed_at(migration, ids)
    if resumed:
        assert migration.snapshot is not None
        volumes[:resumed] = migration.snapshot.storage[:resumed]
    sizes = [volume.size for volume in volumes]
    now = clock.now()
    started = uow.migrations.update_if(
        migration.start(
            at=now,
            snapshot=TargetVm(source.ip, credentials.login, tuple(volumes)),
            mark=CopyMark(tuple(ids), resumed, 0),
            instance_id=instance_id,
            progress=percent(sizes, resumed, 0),
            # A real copy waits for a copy slot, which any instance may give it.
            queued=host is not None,
        ),
        expected=STARTABLE,
    )
    events = [
        event(started, EventKind.RUN_REQUESTED, now, actor=actor),
        event(
            started,
            EventKind.STARTED,
            now,
            instance=started.instance_id,
            volumes=len(sizes),
            bytes_total=sum(sizes),
            **({"resumed_at_volume": resumed} if resumed else {}),
        ),
    ]
    if started.phase is Phase.QUEUED:
        events.append(event(started, EventKind.QUEUED, now, position=uow.migrations.queue_position(started)))
    append(uow, events)
    return started, _job_of(uow, started)


def _job_of(uow: UnitOfWork, migration: Migration) -> CopyJob:
    """What a run started as `migration` is to copy, with the logins as they
    are now (decrypted by storage as they are read: never kept in the queue)."""
    owner_id = migration.owner_id
    snapshot, mark = migration.snapshot, migration.copied
    assert snapshot is not None and mark is not None, "a started run has its snapshot and mark"
    source = uow.workloads.peek(owner_id, migration.source_id)
    credentials = uow.credentials.peek(owner_id, source.credentials_id)
    target = uow.migration_targets.peek(owner_id, migration.migration_target_id)
    host = _host(uow, owner_id, target, source)
    return CopyJob(
        owner_id=owner_id,
        migration_id=migration.id,
        source=MachineAddress.of(source, credentials),
        host=host,
        volumes=tuple(VolumeToCopy(volume.name, volume.size) for volume in snapshot.storage),
        first=mark.volumes,
        # A real copy leaves the source's other volumes out of each one.
        source_volumes=()
        if host is None
        else tuple(uow.mount_points.peek(owner_id, i).name for i in source.mount_point_ids),
        source_id=source.id,
        host_id=target.host_id,
        kind=_kind_of(migration),
        syncs=0 if migration.replication is None else migration.replication.syncs,
        pre_cutover=migration.pre_cutover,
        post_cutover=migration.post_cutover,
    )


def _kind_of(migration: Migration) -> CopyKind:
    if migration.mode is Mode.COLD:
        return CopyKind.RUN
    return CopyKind.CUTOVER if migration.phase is Phase.CUTTING_OVER else CopyKind.SYNC


def start_run(
    storage: Storage,
    clock: Clock,
    owner_id: int,
    migration_id: int,
    *,
    instance_id: str | None = None,
    actor: int | None = None,
) -> Migration:
    """Move a migration to `running`, carried by the instance `instance_id`,
    or raise Conflict saying why it may not. Storage makes the move a
    compare-and-set, so of concurrent starts one wins. `actor` is the user
    who asked (by default the owner, for whom every call acts)."""
    return _started(storage, clock, owner_id, migration_id, instance_id, actor)[0]


def _started(
    storage: Storage, clock: Clock, owner_id: int, migration_id: int, instance_id: str | None, actor: int | None
) -> tuple[Migration, CopyJob]:
    with storage.unit_of_work() as uow:
        started = _start(uow, clock, owner_id, migration_id, instance_id, acting(owner_id, actor))
        uow.commit()
    return started


def launch_run(
    storage: Storage,
    clock: Clock,
    runner: Runner,
    owner_id: int,
    migration_id: int,
    *,
    actor: int | None = None,
) -> Migration:
    """Start a run and hand it to the runner; the migration as started (state
    `running`), whatever a background runner has done with it since."""
    started, job = _started(storage, clock, owner_id, migration_id, runner.instance_id, actor)
    give_to_runner(storage, clock, runner, job)
    return started


def give_to_runner(storage: Storage, clock: Clock, runner: Runner, job: CopyJob) -> None:
    """Give a run just started (and committed) to the runner; when the runner
    cannot take it, the run fails with the reason, and the error goes on."""
    try:
        runner.launch(job)
    except Exception as exc:
        # Not a copy's end: the run fails even while queued (its copy waits
        # for this runner), as the caller hears.
        with storage.unit_of_work() as uow:
            failed = _finish(
                uow, clock, RunRef.of_job(job), error=f"The copy could not start: {exc}", kind=EventKind.FAILED,
                by_copy=False,
            )
            if failed is not None:
                append(uow, failed[1])
            uow.commit()
        raise


def run_migration(
    storage: Storage,
    clock: Clock,
    runner: Runner,
    owner_id: int,
    migration_id: int,
    *,
    actor: int | None = None,
) -> Migration:
    """Start a run and hand it to the runner. A blocking runner returns when the
    copy is over; the migration returned is the one read after `launch`."""
    launch_run(storage, clock, runner, owner_id, migration_id, actor=actor)
    return get_migration(storage, owner_id, migration_id)


def take_copies(
    storage: Storage,
    instance_id: str | None,
    *,
    room: int,
    carrying: Collection[int] = (),
    per_machine: int = 4,
    only: RunRef | None = None,
    simulated: bool = False,
    clock: Clock | None = None,
) -> list[CopyJob]:
    """Take up to `room` queued copies for the instance `instance_id`, the
    one asked for first each time, passing over those that would make a
    machine (a workload, as source or host) carry more than `per_machine`
    copies of this instance; `carrying` lists the machines of the copies it
    carries already, once per copy. Each take is its own transaction (the
    row is locked while taken: two instances never take the same copy).
    `only` takes that run's copy alone, if still queued. With `simulated`,
    the copies into targets without a host (a warm migration's simulated
    syncs), which take no slot. A sync or cutover taken writes `sync_started`."""
    load = Counter(carrying)
    jobs: list[CopyJob] = []
    while len(jobs) < room:
        with storage.unit_of_work() as uow:
            if only is None:
                busy = {machine for machine, copies in load.items() if copies >= per_machine}
                queued = uow.migrations.next_queued(busy, simulated=simulated)
            else:
                queued = uow.migrations.get(only.owner_id, only.migration_id)
                if not queued.waiting_for_a_slot:
                    break
            if queued is None:
                break
            now = None if clock is None else clock.now()
            taken = uow.migrations.update_if(queued.take(instance_id, now), expected=(RUNNING,))
            if taken.mode is Mode.WARM and now is not None:
                append(uow, [event(
                    taken, EventKind.SYNC_STARTED, now, instance=instance_id,
                    sync=(taken.replication.syncs if taken.replication else 0) + 1,
                    cutover=taken.phase is Phase.CUTTING_OVER,
                )])
            job = _job_of(uow, taken)
            uow.commit()
        jobs.append(job)
        load.update(machine for machine in (job.source_id, job.host_id) if machine is not None)
        if only is not None:
            break
    return jobs


def queue_due(storage: Storage, clock: Clock) -> int:
    """Queue the syncs and cutovers of warm migrations whose time has come
    (any instance may ask; each due copy is queued once: the row is locked
    and its phase checked again). How many were queued."""
    with storage.unit_of_work(write=False) as uow:
        due = uow.migrations.due(clock.now())
    queued = 0
    for owner_id, migration_id in due:
        with storage.unit_of_work() as uow:
            migration = uow.migrations.get(owner_id, migration_id)
            now = clock.now()
            if migration.state is not RUNNING or not migration.sync_due(now):
                continue
            waiting = migration.cutover_if_due(now)
            if not waiting.waiting_for_a_slot:
                waiting = migration.queue_sync(now)
            stored = uow.migrations.update_if(waiting, expected=(RUNNING,))
            append(uow, [event(stored, EventKind.QUEUED, now, position=uow.migrations.queue_position(stored))])
            uow.commit()
            queued += 1
    return queued


def request_sync(
    storage: Storage, clock: Clock, runner: Runner, owner_id: int, migration_id: int, *, actor: int | None = None
) -> Migration:
    """A warm migration's sync, now (SPEC 2.9): queued for a slot. Conflict
    when it is not a running warm migration, or a sync is under way or queued."""
    with storage.unit_of_work() as uow:
        now = clock.now()
        migration = uow.migrations.get(owner_id, migration_id)
        stored = uow.migrations.update_if(migration.queue_sync(now), expected=(RUNNING,))
        append(uow, [event(
            stored, EventKind.QUEUED, now, actor=acting(owner_id, actor),
            position=uow.migrations.queue_position(stored),
        )])
        uow.commit()
    runner.queued()
    return stored


def plan_cutover(
    storage: Storage,
    clock: Clock,
    runner: Runner,
    owner_id: int,
    migration_id: int,
    at: datetime | None,
    *,
    actor: int | None = None,
) -> Migration:
    """Cut a running warm migration over at `at` (None: now): due, it is
    queued (before any sync), or waits for the end of a sync under way.
    Conflict when it is not a running warm migration or already cutting over."""
    with storage.unit_of_work() as uow:
        now = clock.now()
        migration = uow.migrations.get(owner_id, migration_id)
        stored = replan_cutover(uow, migration, now if at is None else at, now, acting(owner_id, actor))
        uow.commit()
    runner.queued()
    return stored


def enter_swap(storage: Storage, ref: RunRef, instance_id: str | None) -> bool:
    """The carrier `instance_id` is about to move a verified volume into
    place: True when it may (a cancel then waits for `leave_swap`), False
    when the run was cancelled or interrupted meanwhile (no swap then)."""
    try:
        with storage.unit_of_work() as uow:
            migration = uow.migrations.get(ref.owner_id, ref.migration_id)
            if not migration.carried_by(instance_id):
                return False
            uow.migrations.update_if(migration.enter_swap(instance_id), expected=(RUNNING,))
            uow.commit()
    except NotFound:
        return False
    return True


def leave_swap(storage: Storage, clock: Clock, ref: RunRef, done: VolumeCopied | None = None) -> None:
    """The swap `enter_swap` allowed is over: a cancel may go on. A volume
    `done` (now in place) is recorded as copied in the same transaction, with
    its `volume_copied` event: a cancel that waited for the swap sees it."""
    try:
        with storage.unit_of_work() as uow:
            migration = uow.migrations.get(ref.owner_id, ref.migration_id)
            if not migration.swapping:
                return
            now = clock.now()
            left = migration.leave_swap()
            events: list[Event] = []
            report = None if done is None else CopyProgress(done.index + 1, done=(done,))
            advanced = None if report is None else _advanced(left, report, now)
            if advanced is not None:
                assert left.copied is not None and advanced.copied is not None
                events = _volumes_copied(advanced, left.copied.volumes, advanced.copied.volumes, now, report)
                left = advanced
            uow.migrations.update_if(left, expected=(RUNNING,))
            append(uow, events)
            uow.commit()
    except NotFound:
        pass


def _advanced(migration: Migration, report: CopyProgress, now: datetime) -> Migration | None:
    """The migration with its copy where `report` puts it, or None when the
    report brings nothing new: what is recorded only grows. A volume a real
    copy verified takes the size that passed, a volume that outgrows its
    estimate shows the bytes passed as its size, and the end is estimated
    from the rate seen."""
    mark, snapshot, started_at = migration.copied, migration.snapshot, migration.started_at
    if mark is None or snapshot is None or started_at is None:
        return None
    storage = list(snapshot.storage)
    for done in report.done:
        if mark.volumes <= done.index < report.volumes:
            storage[done.index] = attrs.evolve(storage[done.index], size=done.bytes)
    volumes, partial = min(report.volumes, len(storage)), report.partial
    if volumes == len(storage):
        partial = 0
    else:
        size = storage[volumes].size if report.planned is None else report.planned
        storage[volumes] = attrs.evolve(storage[volumes], size=max(size, partial))
    if (report.volumes, report.partial) <= (mark.volumes, mark.partial) and tuple(storage) == snapshot.storage:
        return None
    sizes = [volume.size for volume in storage]
    copied = sum(sizes[:volumes]) + (partial if volumes < len(sizes) else 0)
    elapsed = (now - started_at).total_seconds()
    eta = mark.eta
    if copied > 0 and elapsed > 0:
        eta = now + timedelta(seconds=elapsed * (sum(sizes) - copied) / copied)
    return migration.advance(
        storage=tuple(storage),
        mark=attrs.evolve(
            mark, volumes=volumes, partial=partial, files=report.files if volumes < len(storage) else None, eta=eta
        ),
        progress=percent(sizes, volumes, partial),
    )


def advance_runs(storage: Storage, clock: Clock, reports: Mapping[RunRef, CopyProgress]) -> set[RunRef]:
    """Record how far many runs have copied, in one transaction, with a
    `volume_copied` event for each volume completed since the last record.
    Returns the runs that are still running; the others were cancelled or
    interrupted and their copy should stop."""
    still_running: set[RunRef] = set()
    with storage.unit_of_work() as uow:
        now = clock.now()
        events: list[Event] = []
        # In id order, as `mark_interrupted` takes them: storage may lock each
        # run it reads until the commit, and locks taken in one order cannot deadlock.
        for ref, report in sorted(reports.items(), key=lambda item: item[0].migration_id):
            migration = uow.migrations.get(ref.owner_id, ref.migration_id)
            if migration.state is not RUNNING or migration.phase is Phase.QUEUED:
                continue  # ended, or run again and queued: not this copy's any more
            still_running.add(ref)
            advanced = _advanced(migration, report, now)
            if advanced is None:
                continue
            stored = uow.migrations.update_if(advanced, expected=(RUNNING,))
            assert migration.copied is not None and stored.copied is not None
            events += _volumes_copied(stored, migration.copied.volumes, stored.copied.volumes, now, report)
        append(uow, events)
        uow.commit()
    return still_running


def _finish(
    uow: UnitOfWork,
    clock: Clock,
    ref: RunRef,
    *,
    error: str | None,
    kind: EventKind,
    actor: int | None = None,
    last: CopyProgress | None = None,
    by_copy: bool = True,
    end: CopyEnd | None = None,
) -> tuple[Migration, list[Event]] | None:
    """End a running run (None when it is not running), with the copy's
    `last` report recorded first; the migration as stored and its events,
    which the caller appends after its other writes. A copy's end (its
    success or failure, `by_copy`) does not end a run queued again since; a
    failed launch (not `by_copy`) fails the run, queued or not."""
    migration = uow.migrations.get(ref.owner_id, ref.migration_id)
    if migration.state is not RUNNING:
        return None
    copy_end = kind in (EventKind.SUCCEEDED, EventKind.FAILED)
    if by_copy and copy_end and (migration.waiting_for_a_slot or migration.phase is Phase.IN_SYNC):
        return None  # queued again since, or between syncs: not this copy's run any more
    now = clock.now()
    syncing = migration.mode is Mode.WARM and migration.phase in (Phase.SYNCING, Phase.CUTTING_OVER)
    if syncing and (copy_end or kind is EventKind.INTERRUPTED):
        return _end_sync(uow, migration, now, error, last, end or CopyEnd(error))
    events: list[Event] = []
    advanced = None if last is None else _advanced(migration, last, now)
    if advanced is not None:
        assert migration.copied is not None and advanced.copied is not None
        events += _volumes_copied(advanced, migration.copied.volumes, advanced.copied.volumes, now, last)
        migration = advanced
    mark = migration.copied
    if error is None:
        assert migration.snapshot is not None, "a running migration has its snapshot"
        target = uow.migration_targets.get(ref.owner_id, migration.migration_target_id)
        uow.migration_targets.update(attrs.evolve(target, target_vm=_as_left(migration.snapshot, last)))
        finished = migration.succeed(now)
    else:
        # What was copied stays as last recorded, at most a report behind the stop.
        finished = migration.fail(now, error)
    stored = uow.migrations.update_if(finished, expected=(RUNNING,))
    if error is None and mark is not None:
        events += _volumes_copied(stored, mark.volumes, len(mark.mount_point_ids), now)
    detail: dict[EventKind, dict[str, object]] = {
        EventKind.SUCCEEDED: {"migration_target": migration.migration_target_id},
        EventKind.FAILED: {"reason": error},
        EventKind.CANCELLED: {},
        EventKind.INTERRUPTED: {"instance": migration.instance_id},
    }
    events.append(event(stored, kind, now, actor=actor, **detail[kind]))
    return stored, events


def _as_left(snapshot: TargetVm, last: CopyProgress | None) -> TargetVm:
    """The target VM a run leaves: its volumes as the copies in place hold
    them (a volume sent in part holds more than the run sent)."""
    held = {done.index: done.held for done in (() if last is None else last.done) if done.held is not None}
    if not held:
        return snapshot
    storage = tuple(
        attrs.evolve(volume, size=held.get(index, volume.size)) for index, volume in enumerate(snapshot.storage)
    )
    return attrs.evolve(snapshot, storage=storage)


def _end_sync(
    uow: UnitOfWork,
    migration: Migration,
    now: datetime,
    error: str | None,
    last: CopyProgress | None,
    end: CopyEnd,
) -> tuple[Migration, list[Event]]:
    """The end of a warm migration's sync or cutover (SPEC 2.9): its hooks'
    events, then `synced` and in sync until the next; the cutover's success
    as a cold run's; a failure (or an interruption) as `sync_failed`, in sync
    as before, unless it was the third in a row."""
    events = [
        event(migration, EventKind.HOOK_RAN, now, hook=hook.hook, exit_status=hook.exit_status, output=hook.output)
        for hook in end.hooks
    ]
    cutover = migration.phase is Phase.CUTTING_OVER
    if error is not None:
        ended = uow.migrations.update_if(migration.sync_failed(now, error), expected=(RUNNING,))
        events.append(event(ended, EventKind.SYNC_FAILED, now, reason=error, cutover=cutover))
        if ended.state is not RUNNING:
            events.append(event(ended, EventKind.FAILED, now, reason=error))
        return ended, events
    replication = migration.replication
    began = None if replication is None else replication.sync_started_at
    done = () if last is None else last.done
    events.append(event(
        migration, EventKind.SYNCED, now,
        bytes=sum(volume.bytes for volume in done),
        files=sum(volume.files for volume in done),
        removed=sum(volume.dropped for volume in done),
        changed=end.changing,
        seconds=None if began is None else round((now - began).total_seconds(), 3),
        cutover=cutover,
    ))
    if cutover:
        assert migration.snapshot is not None, "a running migration has its snapshot"
        target = uow.migration_targets.get(migration.owner_id, migration.migration_target_id)
        uow.migration_targets.update(attrs.evolve(target, target_vm=_as_left(migration.snapshot, last)))
        ended = uow.migrations.update_if(migration.sync_succeeded(now).succeed(now), expected=(RUNNING,))
        events.append(event(ended, EventKind.SUCCEEDED, now, migration_target=migration.migration_target_id))
        return ended, events
    ended = uow.migrations.update_if(migration.sync_succeeded(now), expected=(RUNNING,))
    if ended.waiting_for_a_slot:  # its cutover was due: queued at once
        events.append(event(ended, EventKind.QUEUED, now, position=uow.migrations.queue_position(ended)))
    return ended, events


def _finish_one(
    storage: Storage,
    clock: Clock,
    ref: RunRef,
    *,
    error: str | None,
    kind: EventKind,
    last: CopyProgress | None,
    end: CopyEnd | None = None,
) -> Migration | None:
    with storage.unit_of_work() as uow:
        finished = _finish(uow, clock, ref, error=error, kind=kind, last=last, end=end)
        if finished is not None:
            append(uow, finished[1])
            _pin_keys_met(uow, finished[0], {} if end is None else end.host_keys, clock.now())
        uow.commit()
    return None if finished is None else finished[0]


def _pin_keys_met(uow: UnitOfWork, migration: Migration, met: Mapping[str, str], at: datetime) -> None:
    """The whole host keys a copy met (by side: `source`, `host`), pinned as
    a check pins them: at first contact, or completing a pin held as a
    fingerprint alone (the copy was let in, so the key matched the pin); the
    login is each machine's last check."""
    target = uow.migration_targets.peek(migration.owner_id, migration.migration_target_id)
    for side, workload_id in (("source", migration.source_id), ("host", target.host_id)):
        key = met.get(side)
        if key is None or workload_id is None:
            continue
        workload = uow.workloads.peek(migration.owner_id, workload_id)
        logged_in = MachineCheck(at, True, f"Logged in by a copy of migration {migration.id} (the {side}).")
        remember_contact(uow, workload, logged_in, key)


def complete_run(
    storage: Storage,
    clock: Clock,
    ref: RunRef,
    last: CopyProgress | None = None,
    host_keys: Mapping[str, str] | None = None,
) -> Migration | None:
    """The copy is over: replace the target's VM with the snapshot, in the same
    transaction as the move to `success` (and the copy's `last` report, and
    the pins of the `host_keys` it met). None when the run had already ended."""
    return _finish_one(
        storage, clock, ref, error=None, kind=EventKind.SUCCEEDED, last=last, end=CopyEnd(host_keys=host_keys or {})
    )


def fail_run(
    storage: Storage,
    clock: Clock,
    ref: RunRef,
    error: str,
    last: CopyProgress | None = None,
    host_keys: Mapping[str, str] | None = None,
) -> Migration | None:
    """The copy failed; the target is left as it was, and what the copy's
    `last` report says was verified in place is kept. None when already ended."""
    return _finish_one(
        storage, clock, ref, error=error, kind=EventKind.FAILED, last=last,
        end=CopyEnd(error, host_keys=host_keys or {}),
    )


def end_copy(storage: Storage, clock: Clock, ref: RunRef, end: CopyEnd, last: CopyProgress | None) -> Migration | None:
    """Record how a copy ended, with its last report: a cold run's end, or a
    warm migration's sync or cutover (with its hooks). None when the run is
    no longer this copy's."""
    kind = EventKind.SUCCEEDED if end.failure is None else EventKind.FAILED
    return _finish_one(storage, clock, ref, error=end.failure, kind=kind, last=last, end=end)


def cancel_run(
    storage: Storage,
    clock: Clock,
    runner: Runner,
    owner_id: int,
    migration_id: int,
    *,
    actor: int | None = None,
) -> Migration:
    """Cancel a running migration; `actor` is the user who asked (by default
    the owner). A copy moving a volume into place is waited for: once the
    cancel is answered, no copy of the run reaches its place."""
    cancelled = cancel_when_no_swap(storage, clock, owner_id, migration_id, acting(owner_id, actor))
    runner.cancel(migration_id)
    return cancelled


class SwapUnderWay(Conflict):
    """The run's carrier is moving a verified volume into place."""


# How long a cancel waits for a swap under way (renames: it takes moments),
# and how often it looks again.
SWAP_WAIT_SECONDS = 120.0
_SWAP_POLL_SECONDS = 0.05


def cancel_when_no_swap(storage: Storage, clock: Clock, owner_id: int, migration_id: int, actor: int) -> Migration:
    """`_cancel` in a transaction of its own, waiting while a swap is under way."""
    deadline = time.monotonic() + SWAP_WAIT_SECONDS
    while True:
        try:
            with storage.unit_of_work() as uow:
                cancelled = _cancel(uow, clock, owner_id, migration_id, actor)
                uow.commit()
            return cancelled
        except SwapUnderWay:
            if time.monotonic() >= deadline:
                raise Conflict(
                    f"Migration {migration_id} is moving a verified volume into place and has not finished"
                    f" in {SWAP_WAIT_SECONDS:g} s; try the cancel again."
                ) from None
            time.sleep(_SWAP_POLL_SECONDS)


def _cancel(uow: UnitOfWork, clock: Clock, owner_id: int, migration_id: int, actor: int) -> Migration:
    """Move a running migration to `error` / `cancelled`, with its event; the
    caller tells the runner once this is committed. SwapUnderWay while its
    carrier moves a volume into place (the row read is locked: the carrier's
    `enter_swap` and this take turns)."""
    migration = uow.migrations.get(owner_id, migration_id)
    if migration.state is not RUNNING:
        raise Conflict(f"Migration {migration_id} is not running.")
    if migration.swapping:
        raise SwapUnderWay(f"Migration {migration_id} is moving a verified volume into place.")
    mark = migration.copied
    if (
        migration.mode is Mode.COLD
        and mark is not None
        and mark.volumes >= len(mark.mount_point_ids) > 0
        and uow.migration_targets.peek(owner_id, migration.migration_target_id).host_id is not None
    ):
        raise Conflict(
            f"Migration {migration_id} has moved every volume into place and is finishing as a success;"
            " it cannot be cancelled any more."
        )
    finished = _finish(
        uow, clock, RunRef(owner_id, migration_id), error=CANCELLED, kind=EventKind.CANCELLED, actor=actor
    )
    assert finished is not None
    append(uow, finished[1])
    return finished[0]


def mark_interrupted(
    storage: Storage, clock: Clock, instance_ids: Collection[str | None] | None = None
) -> list[int]:
    """Runs left `running` by an instance that stopped or crashed (by any,
    when `instance_ids` is None) become `error` / `interrupted`, so they can
    be run again; their ids."""
    with storage.unit_of_work() as uow:
        ended = [
            finished
            for migration in uow.migrations.running(instance_ids)
            # A queued copy belongs to no instance: it waits for the next one
            # with room; a warm migration between syncs is held by none.
            if not migration.waiting_for_a_slot
            and migration.phase is not Phase.IN_SYNC
            and (
                finished := _finish(
                    uow, clock, RunRef.of(migration), error=INTERRUPTED, kind=EventKind.INTERRUPTED
                )
            )
            is not None
        ]
        append(uow, [each for _, events in ended for each in events])
        uow.commit()
    return [migration.id for migration, _ in ended]


def get_run_state(storage: Storage, owner_id: int, migration_id: int) -> RunState:
    """What a migration's run has copied, volume by volume, and when it should
    end (`state_of_run`)."""
    with storage.unit_of_work(write=False) as uow:
        return state_of_run(uow, uow.migrations.get(owner_id, migration_id))


def state_of_run(uow: UnitOfWork, migration: Migration) -> RunState:
    """A migration's run as recorded; without a recorded run, its selected
    volumes as they are now, in the source's order (any no longer in the
    source after them): the plan a run would copy."""
    if migration.snapshot is not None and migration.copied is not None:
        return run_state(migration, queue_position=uow.migrations.queue_position(migration))
    owner_id = migration.owner_id
    source = uow.workloads.get(owner_id, migration.source_id)
    selected = migration.selected_mount_point_ids
    ordered = [i for i in source.mount_point_ids if i in selected]
    ordered += [i for i in selected if i not in ordered]
    plan = []
    for mount_point_id in ordered:
        mount_point = uow.mount_points.get(owner_id, mount_point_id)
        plan.append((mount_point_id, Volume(mount_point.name, mount_point.size)))
    return run_state(migration, plan)


def running_states(storage: Storage, owner_ids: Collection[int]) -> list[tuple[int, RunState]]:
    """The state of every running migration of these owners, with its owner,
    in id order: what a live view shows of runs in progress."""
    with storage.unit_of_work(write=False) as uow:
        return [(m.owner_id, run_state(m)) for m in uow.migrations.running() if m.owner_id in owner_ids]
