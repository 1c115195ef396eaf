"""The byte model of a run: the selected volumes are copied one
after another, in the source's order, at one byte rate.

A run's position is an exact fraction of its time, so the model is exact
integer arithmetic: `copied` never decreases, never exceeds a volume's size,
and the bytes copied are the sum of the volumes' `copied`. Progress is
`floor(100 * bytes_copied / bytes_total)`, and 100 only at the end.

Volumes of 0 bytes: when some volume has bytes, an empty one takes no time
and is copied as soon as the copy reaches it (those before the first byte at
the very start). When every volume is empty, each takes an equal share of the
time, and progress counts those shares. An empty volume's `copied` is 0
either way; whether it is done shows in the count of volumes copied (and in
its `volume_copied` event)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import attrs

from .entities import CopyMark, Migration, MigrationState, Volume


@attrs.frozen
class Elapsed:
    """What a runner reports of a run's copy: `seconds` of its `duration`
    have passed (the simulated copy goes at one rate for `duration`)."""

    seconds: float
    duration: float


@attrs.frozen
class Position:
    """Where a copy is: the first `volumes` are copied, and `partial` bytes of
    the next one; `progress` is the percentage, 100 only when complete."""

    volumes: int
    partial: int
    progress: int


def _fraction(elapsed: float, duration: float) -> tuple[int, int]:
    """elapsed / duration, exactly, as (numerator, denominator) within 0..1."""
    if duration <= 0 or elapsed >= duration:
        return 1, 1
    if elapsed <= 0:
        return 0, 1
    a, b = elapsed.as_integer_ratio()
    c, d = duration.as_integer_ratio()
    return a * d, b * c


def position_at(sizes: Sequence[int], elapsed: float, duration: float) -> Position:
    """The position of a copy of volumes of `sizes` after `elapsed` of `duration` seconds."""
    numerator, denominator = _fraction(elapsed, duration)
    total = sum(sizes)
    if total == 0:
        # Equal shares of the time; nothing to count in bytes.
        return Position(len(sizes) * numerator // denominator, 0, 100 * numerator // denominator)
    done = total * numerator // denominator
    volumes, end = 0, 0
    for size in sizes:
        if end + size > done:
            break
        end += size
        volumes += 1
    return Position(volumes, done - end, 100 * done // total)


def copy_progress(volumes: Sequence[Volume], elapsed: float, duration: float) -> int:
    """Percent of the selected bytes copied after `elapsed` of `duration`
    seconds: 100 only once the whole duration has passed."""
    return position_at([v.size for v in volumes], elapsed, duration).progress


def copied_bytes(sizes: Sequence[int], volumes: int, partial: int) -> list[int]:
    """Each volume's copied bytes when the first `volumes` are copied and
    `partial` bytes of the next one."""
    return [
        size if index < volumes else min(partial, size) if index == volumes else 0
        for index, size in enumerate(sizes)
    ]


@attrs.frozen
class VolumeState:
    mount_point_id: int
    name: str
    size: int
    copied: int


@attrs.frozen
class RunState:
    """What a migration's run has copied and when it should end."""

    migration_id: int
    state: MigrationState
    progress: int
    error: str | None
    eta: datetime | None
    volumes: tuple[VolumeState, ...]

    @property
    def finished(self) -> bool:
        return self.state.finished

    @property
    def bytes_total(self) -> int:
        return sum(volume.size for volume in self.volumes)

    @property
    def bytes_copied(self) -> int:
        return sum(volume.copied for volume in self.volumes)


def run_state(migration: Migration, plan: Sequence[tuple[int, Volume]] = ()) -> RunState:
    """The state of a migration's run, from what storage recorded: the
    snapshot's volumes and the copy's mark. A migration without them (never
    run, edited since, or run by a release that kept no mark) shows `plan`,
    its selected volumes as they are now, at the position its progress says."""
    snapshot, mark = migration.snapshot, migration.copied
    if snapshot is not None and mark is not None:
        pairs = list(zip(mark.mount_point_ids, snapshot.storage))
    else:
        pairs = list(plan)
    sizes = [volume.size for _, volume in pairs]
    if migration.state is MigrationState.SUCCESS:
        volumes, partial = len(sizes), 0
    elif snapshot is not None and mark is not None:
        volumes, partial = mark.volumes, mark.partial
    else:
        at = position_at(sizes, migration.progress, 100)
        volumes, partial = at.volumes, at.partial
    copied = copied_bytes(sizes, volumes, partial)
    running = migration.state is MigrationState.RUNNING
    return RunState(
        migration_id=migration.id,
        state=migration.state,
        progress=migration.progress,
        error=migration.error,
        eta=mark.eta if running and mark is not None else None,
        volumes=tuple(
            VolumeState(mount_point_id, volume.name, volume.size, done)
            for (mount_point_id, volume), done in zip(pairs, copied)
        ),
    )


def fresh_mark(mount_point_ids: Sequence[int], sizes: Sequence[int]) -> CopyMark:
    """The mark of a run that has just started: empty volumes before the
    first byte are already copied."""
    at = position_at(sizes, 0.0, 1.0)
    return CopyMark(tuple(mount_point_ids), at.volumes, at.partial)
