"""The life of a migration run. The core decides every change of state; a
runner adapter only reports time passing (`advance_runs`) and the end of the
copy (`complete_run`, `fail_run`)."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import attrs

from .entities import SYSTEM_VOLUME, Migration, MigrationState, TargetVm, Volume, volume_key
from .errors import Conflict
from .inventory import get_migration
from .ports import Clock, ListQuery, Runner, Storage, UnitOfWork

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


def copy_progress(volumes: Sequence[Volume], elapsed: float, duration: float) -> int:
    """Percent of the selected bytes copied after `elapsed` of `duration` seconds.

    Volumes are copied one after another at one byte rate, so each takes a share
    of the time in proportion to its size (equal shares when all are empty).
    The result stops at 99 until the copy is complete: only success reaches 100.
    """
    if duration <= 0 or elapsed >= duration:
        return 100
    weights = [v.size for v in volumes] if any(v.size for v in volumes) else [1] * len(volumes)
    total = sum(weights) or 1
    budget = max(elapsed, 0.0) / duration * total
    copied = 0.0
    for weight in weights:
        step = min(weight, budget - copied)
        if step <= 0:
            break
        copied += step
    return min(99, math.floor(100 * copied / total))


def _start(
    uow: UnitOfWork, clock: Clock, owner_id: int, migration_id: int, instance_id: str | None
) -> Migration:
    migration = uow.migrations.get(owner_id, migration_id)
    if migration.state is RUNNING:
        raise Conflict(f"Migration {migration_id} is already running.")
    if migration.state is MigrationState.SUCCESS:
        raise Conflict(f"Migration {migration_id} has already succeeded.")
    source = uow.workloads.get(owner_id, migration.source_id)
    gone = [i for i in migration.selected_mount_point_ids if i not in source.mount_point_ids]
    if gone:
        which = (
            f"mount point {gone[0]} is"
            if len(gone) == 1
            else f"mount points {', '.join(map(str, gone))} are"
        )
        raise Conflict(f"Selected {which} no longer in the storage of workload {source.id}.")
    selected = [
        uow.mount_points.get(owner_id, i)
        for i in source.mount_point_ids
        if i in migration.selected_mount_point_ids
    ]
    if not any(volume_key(mp.name) == SYSTEM_VOLUME for mp in selected):
        raise Conflict("A migration may not run unless volume C:\\ is selected.")
    _, busy = uow.migrations.find(
        owner_id,
        ListQuery(
            filters={"migration_target_id": migration.migration_target_id, "state": RUNNING.value},
            limit=1,
        ),
    )
    if busy:
        raise Conflict(
            f"Migration target {migration.migration_target_id} is busy with migration {busy[0].id}."
        )
    credentials = uow.credentials.get(owner_id, source.credentials_id)
    snapshot = TargetVm(
        source.ip, credentials.login, tuple(Volume(mp.name, mp.size) for mp in selected)
    )
    started = attrs.evolve(
        migration,
        state=RUNNING,
        progress=0,
        error=None,
        started_at=clock.now(),
        finished_at=None,
        snapshot=snapshot,
        instance_id=instance_id,
    )
    return uow.migrations.update_if(started, expected=STARTABLE)


def start_run(
    storage: Storage,
    clock: Clock,
    owner_id: int,
    migration_id: int,
    *,
    instance_id: str | None = None,
) -> Migration:
    """Move a migration to `running`, carried by the instance `instance_id`,
    or raise Conflict saying why it may not. Storage makes the move a
    compare-and-set, so of concurrent starts one wins."""
    with storage.unit_of_work() as uow:
        started = _start(uow, clock, owner_id, migration_id, instance_id)
        uow.commit()
    return started


def launch_run(
    storage: Storage, clock: Clock, runner: Runner, owner_id: int, migration_id: int
) -> Migration:
    """Start a run and hand it to the runner; the migration as started (state
    `running`), whatever a background runner has done with it since."""
    started = start_run(storage, clock, owner_id, migration_id, instance_id=runner.instance_id)
    hand_over(storage, clock, runner, started)
    return started


def hand_over(storage: Storage, clock: Clock, runner: Runner, started: Migration) -> None:
    """Give a run just started (and committed) to the runner; when the runner
    cannot take it, the run fails with the reason, and the error goes on."""
    try:
        runner.launch(started)
    except Exception as exc:
        fail_run(storage, clock, RunRef.of(started), f"The copy could not start: {exc}")
        raise


def run_migration(
    storage: Storage, clock: Clock, runner: Runner, owner_id: int, migration_id: int
) -> Migration:
    """Start a run and hand it to the runner. A blocking runner returns when the
    copy is over; the migration returned is the one read after `launch`."""
    launch_run(storage, clock, runner, owner_id, migration_id)
    return get_migration(storage, owner_id, migration_id)


def advance_runs(storage: Storage, progress: Mapping[RunRef, int]) -> set[RunRef]:
    """Record progress of many runs in one transaction (it never goes down, and
    stays below 100 until success). Returns the runs that are still running;
    the others were cancelled or interrupted and their copy should stop."""
    still_running: set[RunRef] = set()
    with storage.unit_of_work() as uow:
        for ref, percent in progress.items():
            migration = uow.migrations.get(ref.owner_id, ref.migration_id)
            if migration.state is not RUNNING:
                continue
            still_running.add(ref)
            percent = min(99, percent)
            if percent > migration.progress:
                uow.migrations.update_if(
                    attrs.evolve(migration, progress=percent), expected=(RUNNING,)
                )
        uow.commit()
    return still_running


def _finish(
    uow: UnitOfWork, clock: Clock, ref: RunRef, *, error: str | None
) -> Migration | None:
    migration = uow.migrations.get(ref.owner_id, ref.migration_id)
    if migration.state is not RUNNING:
        return None
    if error is None:
        assert migration.snapshot is not None, "a running migration has its snapshot"
        target = uow.migration_targets.get(ref.owner_id, migration.migration_target_id)
        uow.migration_targets.update(attrs.evolve(target, target_vm=migration.snapshot))
        finished = attrs.evolve(
            migration,
            state=MigrationState.SUCCESS,
            progress=100,
            error=None,
            finished_at=clock.now(),
        )
    else:
        finished = attrs.evolve(
            migration, state=MigrationState.ERROR, error=error, finished_at=clock.now()
        )
    return uow.migrations.update_if(finished, expected=(RUNNING,))


def complete_run(storage: Storage, clock: Clock, ref: RunRef) -> Migration | None:
    """The copy is over: replace the target's VM with the snapshot, in the same
    transaction as the move to `success`. None when the run had already ended."""
    with storage.unit_of_work() as uow:
        finished = _finish(uow, clock, ref, error=None)
        uow.commit()
    return finished


def fail_run(storage: Storage, clock: Clock, ref: RunRef, error: str) -> Migration | None:
    """The copy failed; the target is left as it was. None when already ended."""
    with storage.unit_of_work() as uow:
        finished = _finish(uow, clock, ref, error=error)
        uow.commit()
    return finished


def cancel_run(
    storage: Storage, clock: Clock, runner: Runner, owner_id: int, migration_id: int
) -> Migration:
    with storage.unit_of_work() as uow:
        cancelled = _cancel(uow, clock, owner_id, migration_id)
        uow.commit()
    runner.cancel(migration_id)
    return cancelled


def _cancel(uow: UnitOfWork, clock: Clock, owner_id: int, migration_id: int) -> Migration:
    """Move a running migration to `error` / `cancelled`; the caller tells the
    runner once this is committed."""
    migration = uow.migrations.get(owner_id, migration_id)
    if migration.state is not RUNNING:
        raise Conflict(f"Migration {migration_id} is not running.")
    cancelled = _finish(uow, clock, RunRef(owner_id, migration_id), error=CANCELLED)
    assert cancelled is not None
    return cancelled


def mark_interrupted(
    storage: Storage, clock: Clock, instance_ids: Collection[str | None] | None = None
) -> list[int]:
    """Runs left `running` by an instance that stopped or crashed (by any,
    when `instance_ids` is None) become `error` / `interrupted`, so they can
    be run again; their ids."""
    with storage.unit_of_work() as uow:
        interrupted = [
            migration.id
            for migration in uow.migrations.running(instance_ids)
            if _finish(uow, clock, RunRef.of(migration), error=INTERRUPTED) is not None
        ]
        uow.commit()
    return interrupted
