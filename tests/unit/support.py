"""Fakes and builders shared by the unit properties: a controllable clock, a
runner that leaves the copy to the test, and a small inventory to run."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

import attrs
from hypothesis import strategies as st

import migration_core as core
from adapters.memory import MemoryStorage
from adapters.simulated_copy import progress_after, time_share
from migration_core.copying import Position, position_of
from migration_core.machines import CopyJob, CopyProgress
from migration_core.runs import RunRef

EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self, start: datetime = EPOCH) -> None:
        self.current = start

    def now(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


def position_at(sizes: Sequence[int], elapsed: float, duration: float) -> Position:
    """Where the simulated copy of volumes of `sizes` is after `elapsed` of its `duration` seconds."""
    return position_of(sizes, time_share(elapsed, duration))


def elapsed(storage: core.Storage, ref: RunRef, seconds: float, duration: float = 100) -> CopyProgress:
    """What the simulated copy of a run reports after `seconds` of its `duration`."""
    snapshot = core.get_migration(storage, ref.owner_id, ref.migration_id).snapshot
    sizes = [] if snapshot is None else [volume.size for volume in snapshot.storage]
    return progress_after(sizes, seconds, duration)


class ManualRunner:
    """Leaves a started run `running`; the test plays the copy's part."""

    instance_id = "manual"

    def __init__(self) -> None:
        self.launched: list[int] = []
        self.cancelled: list[int] = []

    def launch(self, job: CopyJob) -> None:
        self.launched.append(job.migration_id)

    def cancel(self, migration_id: int) -> None:
        self.cancelled.append(migration_id)

    def queued(self) -> None:
        pass


@attrs.frozen
class Volume:
    name: str
    size: int


@attrs.define
class Inventory:
    """One owner's credentials, a workload holding `mount_points` in order, and a target."""

    storage: MemoryStorage
    owner_id: int
    credentials: core.Credentials
    mount_points: list[core.MountPoint]
    workload: core.Workload
    target: core.MigrationTarget

    def ids_named(self, *names: str) -> list[int]:
        by_name = {mp.name: mp.id for mp in self.mount_points}
        return [by_name[name] for name in names]

    def migration(self, selected: Sequence[int] | None = None) -> core.Migration:
        return core.create_migration(
            self.storage,
            self.owner_id,
            clock=FakeClock(),
            source_id=self.workload.id,
            migration_target_id=self.target.id,
            selected_mount_point_ids=[mp.id for mp in self.mount_points]
            if selected is None
            else selected,
        )


OWNERS = 5


def owned_storage(owners: int = OWNERS) -> MemoryStorage:
    """In-memory storage with users 1 to `owners`, the owners tests act for:
    like SQLite, it refuses objects of an owner who is not a user."""
    storage = MemoryStorage()
    with storage.unit_of_work() as uow:
        for number in range(1, owners + 1):
            uow.users.add(core.User(f"owner{number}", "not-a-real-hash"))
        uow.commit()
    return storage


def build_inventory(
    storage: MemoryStorage | None = None,
    *,
    owner_id: int = 1,
    volumes: Sequence[Volume] = (Volume("C:\\", 100), Volume("D:\\", 300)),
    ip: str = "10.0.0.1",
    cloud_type: str = "aws",
) -> Inventory:
    storage = owned_storage() if storage is None else storage
    credentials = core.create_credentials(
        storage, owner_id, username="admin", password="s3cret!", domain="corp"
    )
    mount_points = [
        core.create_mount_point(storage, owner_id, name=v.name, size=v.size) for v in volumes
    ]
    workload = core.create_workload(
        storage,
        owner_id,
        ip=ip,
        credentials_id=credentials.id,
        mount_point_ids=[mp.id for mp in mount_points],
    )
    target = core.create_migration_target(
        storage, owner_id, cloud_type=cloud_type, cloud_credentials_id=credentials.id
    )
    return Inventory(storage, owner_id, credentials, mount_points, workload, target)


def field_errors(error: core.InvalidInput) -> set[str]:
    return set(error.errors)


# --- volume names ----------------------------------------------------------------

SEPARATORS = "\\/"
# ASCII only: its case mapping is one-to-one, so "same ignoring case" is plain
# `lower()` and the test's notion of a volume does not borrow the core's.
STEM_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:._-" + SEPARATORS


def volume_identity(name: str) -> str:
    """The test's own reading of the volume rule: case and trailing separators do not count."""
    return name.rstrip(SEPARATORS).lower()


stems = st.text(STEM_CHARS, min_size=1, max_size=8).filter(lambda s: s[-1] not in SEPARATORS)


@st.composite
def spellings(draw: st.DrawFn, stem: str) -> str:
    """Another way to write the volume `stem`: any case, any trailing separators."""
    cased = "".join(draw(st.sampled_from([c.lower(), c.upper()])) for c in stem)
    return cased + draw(st.text(SEPARATORS, max_size=3))


system_volume_spellings = spellings("c:")

