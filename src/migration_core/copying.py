"""The byte model of a run: the selected volumes are copied one after
another, in the source's order. A copier reports where its copy is in bytes
(`CopyProgress`); the core records only what grows: `copied` never
decreases, never exceeds a volume's size, and the bytes copied are the sum of
the volumes' `copied`. Progress is `floor(100 * bytes_copied / bytes_total)`,
below 100 until success (`shown_progress`).

Volumes of 0 bytes: when every volume is empty, progress counts the volumes
done. An empty volume's `copied` is 0 either way; whether it is done shows in
the count of volumes copied (and in its `volume_copied` event)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from fractions import Fraction

import attrs

from .entities import Migration, MigrationState, Mode, Phase, Replication, Volume


@attrs.frozen
class Position:
    """Where a copy is: the first `volumes` are copied, and `partial` bytes of
    the next one; `progress` is the percentage, 100 only when complete."""

    volumes: int
    partial: int
    progress: int


def position_of(sizes: Sequence[int], done: Fraction) -> Position:
    """Where a copy of volumes of `sizes` is when the fraction `done` (0..1)
    of it has passed: of its bytes, or when every volume is empty, of its
    volumes taken in equal shares."""
    done = min(max(done, Fraction(0)), Fraction(1))
    total = sum(sizes)
    if total == 0:
        return Position(int(len(sizes) * done), 0, int(100 * done))
    passed = int(total * done)
    volumes, end = 0, 0
    for size in sizes:
        if end + size > passed:
            break
        end += size
        volumes += 1
    return Position(volumes, passed - end, 100 * passed // total)


def shown_progress(done: int, total: int, *, succeeded: bool = False) -> int:
    """floor(100 * done / total), as a run's or a wave's progress shows it:
    below 100 until success, which alone reaches it."""
    progress = 100 * done // total
    return progress if succeeded else min(99, progress)


def percent(sizes: Sequence[int], volumes: int, partial: int) -> int:
    """The progress of a running copy with the first `volumes` done and
    `partial` bytes of the next: of its bytes, or of its volumes when every
    size is 0."""
    total = sum(sizes)
    if total == 0:
        return shown_progress(volumes, max(1, len(sizes)))
    done = sum(sizes[:volumes]) + (min(partial, sizes[volumes]) if volumes < len(sizes) else 0)
    return shown_progress(done, total)


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
    # Of the volume a real run is copying, the files passed so far; else None.
    files: int | None = None


@attrs.frozen
class WarmState:
    """What a warm migration's state adds (SPEC 2.9)."""

    syncs: int
    last_synced_at: datetime | None
    last_sync_seconds: float | None
    next_sync_at: datetime | None
    cutover_at: datetime | None
    last_sync_error: str | None


def warm_state(migration: Migration) -> WarmState | None:
    if migration.mode is not Mode.WARM:
        return None
    replication = migration.replication or Replication()
    running = migration.state is MigrationState.RUNNING
    return WarmState(
        syncs=replication.syncs,
        last_synced_at=replication.last_synced_at,
        last_sync_seconds=replication.last_sync_seconds,
        next_sync_at=migration.next_sync_at if running else None,
        cutover_at=migration.cutover_at,
        last_sync_error=replication.last_sync_error,
    )


@attrs.frozen
class RunState:
    """What a migration's run has copied and when it should end."""

    migration_id: int
    state: MigrationState
    progress: int
    error: str | None
    eta: datetime | None
    volumes: tuple[VolumeState, ...]
    phase: Phase | None = None
    queue_position: int | None = None  # 1 is next; None unless queued
    # A warm migration's syncs (None for a cold one).
    warm: WarmState | None = None

    @property
    def finished(self) -> bool:
        return self.state.finished

    @property
    def bytes_total(self) -> int:
        return sum(volume.size for volume in self.volumes)

    @property
    def bytes_copied(self) -> int:
        return sum(volume.copied for volume in self.volumes)


def run_state(
    migration: Migration, plan: Sequence[tuple[int, Volume]] = (), queue_position: int | None = None
) -> RunState:
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
        at = position_of(sizes, Fraction(migration.progress, 100))
        volumes, partial = at.volumes, at.partial
    copied = copied_bytes(sizes, volumes, partial)
    running = migration.state is MigrationState.RUNNING
    return RunState(
        migration_id=migration.id,
        state=migration.state,
        progress=migration.progress,
        error=migration.error,
        eta=mark.eta if running and mark is not None else None,
        phase=migration.phase if running else None,
        queue_position=queue_position if migration.waiting_for_a_slot else None,
        warm=warm_state(migration),
        volumes=tuple(
            VolumeState(
                mount_point_id,
                volume.name,
                volume.size,
                done,
                mark.files if running and mark is not None and index == mark.volumes else None,
            )
            for index, ((mount_point_id, volume), done) in enumerate(zip(pairs, copied))
        ),
    )
