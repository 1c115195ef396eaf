"""Waves (SPEC 2.6): named groups of an owner's migrations that run and are
cancelled together, and their state by member and by bytes. A migration is
in one wave at most; deleting a wave leaves its members as they are."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import datetime

import attrs

from .copying import shown_progress
from .entities import Migration, MigrationState, Wave
from .errors import Conflict, NotFound
from .events import acting
from .inventory import _referenced
from .machines import CopyJob
from .passes import items_in_one_unit
from .ports import Clock, ListQuery, Page, Runner, Storage, UnitOfWork
from .runs import (
    SwapUnderWay,
    _cancel,
    _start,
    cancel_when_no_swap,
    give_to_runner,
    plan_cutover,
    state_of_run,
)


@attrs.frozen
class Refusal:
    """A member that may not start, and why (as its own run would say)."""

    migration_id: int
    detail: str


@attrs.frozen
class WaveRun:
    started: tuple[int, ...]
    refused: tuple[Refusal, ...]


@attrs.frozen
class WaveState:
    counts: dict[str, int]  # members by state, every state named
    progress: int  # 0..100, weighted by bytes; 100 once every member succeeded
    bytes_total: int
    bytes_copied: int
    finished: bool  # every member has finished (success or error)


def _check_wave(uow: UnitOfWork, wave: Wave) -> None:
    owner_id = wave.owner_id
    _, same_name = uow.waves.find(owner_id, ListQuery(filters={"name": wave.name}, limit=1))
    if same_name and same_name[0].id != wave.id:
        raise Conflict(f"Wave {same_name[0].id} is already named {wave.name!r}.")
    for migration_id in wave.migration_ids:
        migration = _referenced(uow.migrations, owner_id, migration_id, "migrations", "Migration")
        if migration.wave_id not in (None, wave.id):
            other = uow.waves.get(owner_id, migration.wave_id)
            raise Conflict(
                f"Migration {migration_id} is already in wave {other.id} ({other.name!r})."
            )


def create_wave(
    storage: Storage, owner_id: int, *, name: str, migration_ids: Sequence[int] = ()
) -> Wave:
    wave = Wave(owner_id, name, tuple(migration_ids))
    with storage.unit_of_work() as uow:
        _check_wave(uow, wave)
        stored = uow.waves.add(wave)
        uow.commit()
    return stored


def get_wave(storage: Storage, owner_id: int, wave_id: int) -> Wave:
    with storage.unit_of_work(write=False) as uow:
        return uow.waves.get(owner_id, wave_id)


def list_waves(storage: Storage, owner_id: int, query: ListQuery) -> Page[Wave]:
    with storage.unit_of_work(write=False) as uow:
        count, items = uow.waves.find(owner_id, query)
    return Page(count, items)


def wave_named(storage: Storage, owner_id: int, name: str) -> Wave:
    """The owner's wave of this name (for tools that name one); NotFound otherwise."""
    with storage.unit_of_work(write=False) as uow:
        _, found = uow.waves.find(owner_id, ListQuery(filters={"name": name}, limit=1))
    if not found:
        raise NotFound(f"There is no wave {name!r}.")
    return found[0]


def update_wave(
    storage: Storage,
    owner_id: int,
    wave_id: int,
    *,
    name: str | None = None,
    migration_ids: Sequence[int] | None = None,
) -> Wave:
    """The members become exactly `migration_ids` (those left out leave the
    wave); a migration in another wave is refused, never moved."""
    with storage.unit_of_work() as uow:
        current = uow.waves.get(owner_id, wave_id)
        changed = attrs.evolve(
            current,
            name=current.name if name is None else name,
            migration_ids=current.migration_ids if migration_ids is None else tuple(migration_ids),
        )
        if changed == current:
            return current
        _check_wave(uow, changed)
        stored = uow.waves.update(changed)
        uow.commit()
    return stored


def delete_wave(storage: Storage, owner_id: int, wave_id: int) -> None:
    """The members are released, not deleted."""
    with storage.unit_of_work() as uow:
        uow.waves.delete(owner_id, wave_id)
        uow.commit()


def run_wave(
    storage: Storage, clock: Clock, runner: Runner, owner_id: int, wave_id: int, *, actor: int | None = None
) -> WaveRun:
    """Start every member that may start; for the others, the reason its own
    run would give. The starts commit together, then go to the runner.
    `actor` is the user who asked (by default the owner)."""

    def start(uow: UnitOfWork, careful: bool) -> tuple[list[CopyJob], list[Refusal]]:
        started: list[CopyJob] = []
        refused: list[Refusal] = []
        for migration_id in _members_in_turn(uow, owner_id, wave_id):
            try:
                with storage.unit_of_work() as one:
                    _, job = _start(one, clock, owner_id, migration_id, runner.instance_id, acting(owner_id, actor))
                    started.append(job)
                    one.commit()
            except (Conflict, NotFound) as refusal:
                if not careful:
                    raise
                refused.append(Refusal(migration_id, refusal.message))
        return started, refused

    started, refused = items_in_one_unit(storage, start)
    launched: list[int] = []
    for job in started:
        try:
            give_to_runner(storage, clock, runner, job)
        except Exception as exc:
            refused.append(Refusal(job.migration_id, f"The copy could not start: {exc}"))
        else:
            launched.append(job.migration_id)
    return WaveRun(tuple(launched), tuple(sorted(refused, key=lambda r: r.migration_id)))


@attrs.frozen
class WaveCutover:
    cutting_over: tuple[int, ...]
    refused: tuple[Refusal, ...]


def cutover_wave(
    storage: Storage,
    clock: Clock,
    runner: Runner,
    owner_id: int,
    wave_id: int,
    at: datetime | None = None,
    *,
    actor: int | None = None,
) -> WaveCutover:
    """Cut over each running warm member (now, or at `at`); the others are
    refused with the reason their own cutover would give (SPEC 2.6)."""
    with storage.unit_of_work(write=False) as uow:
        members = _members_in_turn(uow, owner_id, wave_id)
    planned: list[int] = []
    refused: list[Refusal] = []
    for migration_id in members:
        try:
            plan_cutover(storage, clock, runner, owner_id, migration_id, at, actor=actor)
        except (Conflict, NotFound) as refusal:
            refused.append(Refusal(migration_id, refusal.message))
        else:
            planned.append(migration_id)
    return WaveCutover(tuple(planned), tuple(refused))


def cancel_wave(
    storage: Storage, clock: Clock, runner: Runner, owner_id: int, wave_id: int, *, actor: int | None = None
) -> list[int]:
    """Cancel every running member; the ids cancelled (the others are left).
    `actor` is the user who asked (by default the owner)."""
    cancelled: list[int] = []
    swapping: list[int] = []
    with storage.unit_of_work() as uow:
        for migration_id in _members_in_turn(uow, owner_id, wave_id):
            try:
                with storage.unit_of_work() as one:
                    _cancel(one, clock, owner_id, migration_id, acting(owner_id, actor))
                    one.commit()
            except SwapUnderWay:
                swapping.append(migration_id)
                continue
            except Conflict:
                continue  # not running (or it ended meanwhile)
            cancelled.append(migration_id)
        uow.commit()
    # Members moving a volume into place are waited for, one by one, after the others.
    for migration_id in swapping:
        with contextlib.suppress(Conflict):
            cancel_when_no_swap(storage, clock, owner_id, migration_id, acting(owner_id, actor))
            cancelled.append(migration_id)
    for migration_id in cancelled:
        runner.cancel(migration_id)
    return cancelled


def _members_in_turn(uow: UnitOfWork, owner_id: int, wave_id: int) -> list[int]:
    """A wave's members in id order, the order in which the runner's tick and
    the interruption of runs take migrations: storage may hold each member a
    unit reads until its commit, and units taking rows in one order never
    wait for each other in a cycle. The wave itself is only looked at."""
    return sorted(uow.waves.peek(owner_id, wave_id).migration_ids)


def _bytes(uow: UnitOfWork, migration: Migration) -> tuple[int, int]:
    """The bytes a member's run copies and has copied, as its own run state
    says them."""
    state = state_of_run(uow, migration)
    return state.bytes_total, state.bytes_copied


def wave_state(storage: Storage, owner_id: int, wave_id: int) -> WaveState:
    with storage.unit_of_work(write=False) as uow:
        wave = uow.waves.get(owner_id, wave_id)
        members = [uow.migrations.get(owner_id, i) for i in wave.migration_ids]
        measured = [_bytes(uow, m) for m in members]
    counts = {state.value: 0 for state in MigrationState}
    for member in members:
        counts[member.state.value] += 1
    done = [m.state is MigrationState.SUCCESS for m in members]
    shares = [100 if ok else m.progress for m, ok in zip(members, done)]
    copied = [bytes_copied for _, bytes_copied in measured]
    total = sum(bytes_total for bytes_total, _ in measured)
    if not members:
        progress = 0
    elif total:
        progress = shown_progress(sum(copied), total, succeeded=all(done))
    else:  # nothing to copy: each member an equal share
        progress = shown_progress(sum(shares), 100 * len(shares), succeeded=all(done))
    return WaveState(
        counts=counts,
        progress=progress,
        bytes_total=total,
        bytes_copied=sum(copied),
        finished=all(m.state.finished for m in members),
    )
