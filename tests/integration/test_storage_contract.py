"""The repository contract, run against every storage adapter: what the
in-memory storage does, SQLite and PostgreSQL do too, so the unit tests' fake
cannot drift from the real things."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest

from migration_core import (
    Conflict,
    Credentials,
    ListQuery,
    Login,
    Migration,
    MigrationState,
    MigrationTarget,
    MountPoint,
    NotFound,
    Storage,
    TargetVm,
    User,
    Volume,
    Wave,
    Workload,
)

from .storages import ALL_STORAGES, open_storage

SECRET = b"contract-suite-secret-key-32-byte"
STARTED = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=timezone.utc)


@pytest.fixture(params=ALL_STORAGES)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    store = open_storage(request.param, request, tmp_path, SECRET)
    yield store
    store.close()


@attrs.define
class World:
    """Two users; alice owns credentials, volumes C:\\ and D:\\ in a workload,
    a target and a migration of that workload; bob owns credentials."""

    storage: Storage
    alice: int
    bob: int
    credentials: Credentials
    c_drive: MountPoint
    d_drive: MountPoint
    workload: Workload
    target: MigrationTarget
    migration: Migration
    bobs_credentials: Credentials


@pytest.fixture
def world(storage: Storage) -> World:
    with storage.unit_of_work() as uow:
        alice = uow.users.add(User("alice", "hash-a")).id
        bob = uow.users.add(User("bob", "hash-b")).id
        credentials = uow.credentials.add(Credentials(alice, "admin", "pa55", "corp"))
        c_drive = uow.mount_points.add(MountPoint(alice, "C:\\", 100))
        d_drive = uow.mount_points.add(MountPoint(alice, "D:\\", 300))
        workload = uow.workloads.add(
            Workload(alice, "10.0.0.1", credentials.id, (d_drive.id, c_drive.id))
        )
        target = uow.migration_targets.add(MigrationTarget(alice, "aws", credentials.id))
        migration = uow.migrations.add(
            Migration(alice, workload.id, target.id, (c_drive.id, d_drive.id))
        )
        bobs = uow.credentials.add(Credentials(bob, "root", "toor"))
        uow.commit()
    return World(
        storage, alice, bob, credentials, c_drive, d_drive, workload, target, migration, bobs
    )


def snapshot() -> TargetVm:
    return TargetVm("10.0.0.1", Login("admin", "pa55", "corp"), (Volume("C:\\", 100),))


def read(storage: Storage, repo: str, owner: int, entity_id: int) -> Any:
    with storage.unit_of_work(write=False) as uow:
        return getattr(uow, repo).get(owner, entity_id)


def find(storage: Storage, repo: str, owner: int, **query: Any) -> tuple[int, list[Any]]:
    with storage.unit_of_work(write=False) as uow:
        result: tuple[int, list[Any]] = getattr(uow, repo).find(owner, ListQuery(**query))
        return result


# --- users -------------------------------------------------------------------------


def test_users_are_found_by_id_and_by_username(storage: Storage) -> None:
    with storage.unit_of_work() as uow:
        added = uow.users.add(User("carol", "scrypt$hash"))
        uow.commit()
    assert added.id > 0
    with storage.unit_of_work(write=False) as uow:
        assert uow.users.get(added.id) == added == User("carol", "scrypt$hash", added.id)
        assert uow.users.by_username("carol") == added
        assert uow.users.by_username("Carol") is None  # usernames compare exactly
        with pytest.raises(NotFound):
            uow.users.get(added.id + 1000)


def test_a_taken_username_is_a_conflict(storage: Storage) -> None:
    with storage.unit_of_work() as uow:
        uow.users.add(User("carol", "h1"))
        with pytest.raises(Conflict, match="carol"):
            uow.users.add(User("carol", "h2"))
        uow.commit()
    with storage.unit_of_work(write=False) as uow:
        assert uow.users.by_username("carol") == User("carol", "h1", 1)


def test_a_user_is_deleted_only_when_owning_nothing(world: World) -> None:
    with world.storage.unit_of_work() as uow:
        with pytest.raises(Conflict, match="owns"):
            uow.users.delete(world.bob)
        uow.credentials.delete(world.bob, world.bobs_credentials.id)
        uow.users.delete(world.bob)
        with pytest.raises(NotFound):
            uow.users.delete(world.bob)
        uow.commit()
    with world.storage.unit_of_work(write=False) as uow:
        with pytest.raises(NotFound):
            uow.users.get(world.bob)
        assert uow.users.by_username("bob") is None


# --- add and get -------------------------------------------------------------------


def test_every_kind_reads_back_as_it_was_added(world: World) -> None:
    assert read(world.storage, "credentials", world.alice, world.credentials.id) == world.credentials
    assert read(world.storage, "mount_points", world.alice, world.c_drive.id) == world.c_drive
    assert read(world.storage, "workloads", world.alice, world.workload.id) == world.workload
    assert read(world.storage, "migration_targets", world.alice, world.target.id) == world.target
    assert read(world.storage, "migrations", world.alice, world.migration.id) == world.migration


def test_list_fields_keep_the_order_given(world: World) -> None:
    stored = read(world.storage, "workloads", world.alice, world.workload.id)
    assert stored.mount_point_ids == (world.d_drive.id, world.c_drive.id)
    stored_migration = read(world.storage, "migrations", world.alice, world.migration.id)
    assert stored_migration.selected_mount_point_ids == (world.c_drive.id, world.d_drive.id)


def test_nested_values_and_times_round_trip(world: World) -> None:
    running = attrs.evolve(
        world.migration,
        state=MigrationState.ERROR,
        progress=42,
        error="the copy failed",
        started_at=STARTED,
        finished_at=STARTED + timedelta(minutes=3),
        snapshot=snapshot(),
    )
    with_vm = attrs.evolve(world.target, target_vm=snapshot())
    with world.storage.unit_of_work() as uow:
        uow.migrations.update(running)
        uow.migration_targets.update(with_vm)
        uow.commit()
    stored = read(world.storage, "migrations", world.alice, world.migration.id)
    assert stored == running
    assert stored.started_at.utcoffset() == timedelta(0)
    assert stored.snapshot.credentials.password == "pa55"
    assert read(world.storage, "migration_targets", world.alice, world.target.id) == with_vm


def test_ids_grow_and_are_never_given_again(world: World) -> None:
    with world.storage.unit_of_work() as uow:
        first = uow.mount_points.add(MountPoint(world.alice, "E:\\", 1))
        uow.mount_points.delete(world.alice, first.id)
        second = uow.mount_points.add(MountPoint(world.alice, "F:\\", 1))
        uow.commit()
    assert world.d_drive.id < first.id < second.id


def test_another_owners_object_is_not_found(world: World) -> None:
    with world.storage.unit_of_work() as uow:
        with pytest.raises(NotFound):
            uow.credentials.get(world.bob, world.credentials.id)
        with pytest.raises(NotFound):
            uow.credentials.update(attrs.evolve(world.credentials, owner_id=world.bob))
        with pytest.raises(NotFound):
            uow.credentials.delete(world.bob, world.credentials.id)
        with pytest.raises(NotFound):
            uow.workloads.get(world.alice, world.workload.id + 1000)
        with pytest.raises(NotFound):
            uow.mount_points.update(attrs.evolve(world.c_drive, id=world.c_drive.id + 1000))
        uow.commit()
    assert read(world.storage, "credentials", world.alice, world.credentials.id) == world.credentials


def test_update_replaces_the_stored_object(world: World) -> None:
    renamed = attrs.evolve(world.credentials, username="administrator", password="n3w")
    moved = attrs.evolve(world.workload, mount_point_ids=(world.c_drive.id,))
    with world.storage.unit_of_work() as uow:
        assert uow.credentials.update(renamed) == renamed
        assert uow.workloads.update(moved) == moved
        uow.commit()
    assert read(world.storage, "credentials", world.alice, world.credentials.id) == renamed
    assert read(world.storage, "workloads", world.alice, world.workload.id) == moved


# --- references and uniqueness -----------------------------------------------------


@pytest.mark.parametrize(
    ("repo", "which"),
    [
        ("credentials", "credentials"),  # by the workload and the target
        ("mount_points", "c_drive"),  # by the workload and the migration
        ("mount_points", "d_drive"),
        ("workloads", "workload"),  # by the migration
        ("migration_targets", "target"),  # by the migration
    ],
)
def test_deleting_a_referenced_object_is_a_conflict(world: World, repo: str, which: str) -> None:
    entity = getattr(world, which)
    with world.storage.unit_of_work() as uow:
        with pytest.raises(Conflict, match="still referred to"):
            getattr(uow, repo).delete(world.alice, entity.id)
        uow.commit()
    assert read(world.storage, repo, world.alice, entity.id) == entity


def test_a_mount_point_selected_by_a_migration_alone_still_cannot_go(world: World) -> None:
    with world.storage.unit_of_work() as uow:
        uow.workloads.update(attrs.evolve(world.workload, mount_point_ids=(world.c_drive.id,)))
        with pytest.raises(Conflict, match="migrations"):
            uow.mount_points.delete(world.alice, world.d_drive.id)
        uow.commit()


def test_objects_go_once_nothing_refers_to_them(world: World) -> None:
    with world.storage.unit_of_work() as uow:
        uow.migrations.delete(world.alice, world.migration.id)
        uow.migration_targets.delete(world.alice, world.target.id)
        uow.workloads.delete(world.alice, world.workload.id)
        uow.mount_points.delete(world.alice, world.c_drive.id)
        uow.credentials.delete(world.alice, world.credentials.id)
        with pytest.raises(NotFound):
            uow.migrations.delete(world.alice, world.migration.id)
        uow.commit()
    assert find(world.storage, "mount_points", world.alice) == (1, [world.d_drive])
    assert find(world.storage, "workloads", world.alice) == (0, [])


def test_one_owner_cannot_have_two_workloads_with_one_ip(world: World) -> None:
    with world.storage.unit_of_work() as uow:
        with pytest.raises(Conflict, match="already has ip 10.0.0.1"):
            uow.workloads.add(Workload(world.alice, "10.0.0.1", world.credentials.id))
        other = uow.workloads.add(Workload(world.alice, "10.0.0.2", world.credentials.id))
        with pytest.raises(Conflict, match="already has ip"):
            uow.workloads.update(attrs.evolve(other, ip="10.0.0.1"))
        # Another owner may use the same address.
        uow.workloads.add(Workload(world.bob, "10.0.0.1", world.bobs_credentials.id))
        uow.commit()
    assert find(world.storage, "workloads", world.alice, filters={"ip": "10.0.0.1"}) == (
        1,
        [world.workload],
    )


def test_a_mount_point_belongs_to_one_workload(world: World) -> None:
    with world.storage.unit_of_work() as uow:
        with pytest.raises(Conflict, match="already belongs to workload"):
            uow.workloads.add(
                Workload(world.alice, "10.0.0.2", world.credentials.id, (world.c_drive.id,))
            )
        other = uow.workloads.add(Workload(world.alice, "10.0.0.3", world.credentials.id))
        with pytest.raises(Conflict, match="already belongs to workload"):
            uow.workloads.update(attrs.evolve(other, mount_point_ids=(world.d_drive.id,)))
        uow.commit()
    assert read(world.storage, "workloads", world.alice, other.id).mount_point_ids == ()


@pytest.mark.parametrize(
    "make",
    [
        lambda w: Workload(w.alice, "10.0.0.9", w.bobs_credentials.id),
        lambda w: Workload(w.alice, "10.0.0.9", w.credentials.id + 1000),
        lambda w: Workload(w.alice, "10.0.0.9", w.credentials.id, (w.c_drive.id + 1000,)),
        lambda w: MigrationTarget(w.alice, "azure", w.bobs_credentials.id),
        lambda w: Migration(w.alice, w.workload.id + 1000, w.target.id, (w.c_drive.id,)),
        lambda w: Migration(w.alice, w.workload.id, w.target.id + 1000, (w.c_drive.id,)),
        lambda w: Migration(w.alice, w.workload.id, w.target.id, (w.c_drive.id + 1000,)),
    ],
    ids=[
        "others-credentials",
        "missing-credentials",
        "missing-mount-point",
        "target-others-credentials",
        "missing-source",
        "missing-target",
        "missing-selection",
    ],
)
def test_a_reference_to_a_missing_or_anothers_object_is_a_conflict(world: World, make: Any) -> None:
    entity = make(world)
    repo = {
        Workload: "workloads",
        MigrationTarget: "migration_targets",
        Migration: "migrations",
    }[type(entity)]
    with world.storage.unit_of_work() as uow:
        with pytest.raises(Conflict, match="refers to a missing"):
            getattr(uow, repo).add(entity)
        uow.commit()
    count, _ = find(world.storage, repo, world.alice)
    assert count == 1


def test_a_refused_write_leaves_nothing_behind_even_when_committed(world: World) -> None:
    with world.storage.unit_of_work() as uow:
        with pytest.raises(Conflict):
            # The row itself is fine; its second mount point is taken.
            uow.workloads.add(
                Workload(
                    world.alice,
                    "10.0.0.5",
                    world.credentials.id,
                    (world.d_drive.id + 1000, world.c_drive.id),
                )
            )
        uow.commit()
    assert find(world.storage, "workloads", world.alice, filters={"ip": "10.0.0.5"}) == (0, [])


def test_only_one_migration_runs_into_a_target(world: World) -> None:
    running = attrs.evolve(
        world.migration, state=MigrationState.RUNNING, started_at=STARTED, snapshot=snapshot()
    )
    with world.storage.unit_of_work() as uow:
        uow.migrations.update(running)
        second = uow.migrations.add(
            Migration(world.alice, world.workload.id, world.target.id, (world.c_drive.id,))
        )
        with pytest.raises(Conflict, match="busy"):
            uow.migrations.update(attrs.evolve(second, state=MigrationState.RUNNING))
        other_target = uow.migration_targets.add(
            MigrationTarget(world.alice, "vcloud", world.credentials.id)
        )
        # Into another target it may run at the same time.
        uow.migrations.update(
            attrs.evolve(
                second, migration_target_id=other_target.id, state=MigrationState.RUNNING
            )
        )
        uow.commit()
    with world.storage.unit_of_work(write=False) as uow:
        assert [m.id for m in uow.migrations.running()] == [world.migration.id, second.id]


def test_running_lists_the_running_migrations_of_every_owner(world: World) -> None:
    with world.storage.unit_of_work() as uow:
        bob = world.bob
        mount_point = uow.mount_points.add(MountPoint(bob, "c:", 5))
        workload = uow.workloads.add(
            Workload(bob, "10.0.0.1", world.bobs_credentials.id, (mount_point.id,))
        )
        target = uow.migration_targets.add(MigrationTarget(bob, "vsphere", world.bobs_credentials.id))
        bobs = uow.migrations.add(
            Migration(bob, workload.id, target.id, (mount_point.id,), state=MigrationState.RUNNING)
        )
        assert uow.migrations.running() == [bobs]
        alices = uow.migrations.update(attrs.evolve(world.migration, state=MigrationState.RUNNING))
        uow.commit()
    with world.storage.unit_of_work(write=False) as uow:
        assert uow.migrations.running() == [alices, bobs]


def test_count_in_state_counts_the_migrations_of_every_owner(world: World) -> None:
    with world.storage.unit_of_work() as uow:
        bob = world.bob
        mount_point = uow.mount_points.add(MountPoint(bob, "c:", 5))
        workload = uow.workloads.add(Workload(bob, "10.0.0.1", world.bobs_credentials.id, (mount_point.id,)))
        target = uow.migration_targets.add(MigrationTarget(bob, "vsphere", world.bobs_credentials.id))
        for state in (MigrationState.ERROR, MigrationState.ERROR, MigrationState.SUCCESS):
            uow.migrations.add(Migration(bob, workload.id, target.id, (mount_point.id,), state=state))
        uow.commit()
    with world.storage.unit_of_work(write=False) as uow:
        counts = {state: uow.migrations.count_in_state(state) for state in MigrationState}
    assert counts == {
        MigrationState.NOT_STARTED: 1,  # alice's
        MigrationState.RUNNING: 0,
        MigrationState.ERROR: 2,
        MigrationState.SUCCESS: 1,
    }


# --- compare-and-set ---------------------------------------------------------------


def test_update_if_stores_only_from_an_expected_state(world: World) -> None:
    started = attrs.evolve(world.migration, state=MigrationState.RUNNING, started_at=STARTED)
    startable = (MigrationState.NOT_STARTED, MigrationState.ERROR)
    with world.storage.unit_of_work() as uow:
        assert uow.migrations.update_if(started, startable) == started
        with pytest.raises(Conflict, match="running"):
            uow.migrations.update_if(attrs.evolve(started, progress=50), startable)
        with pytest.raises(NotFound):
            uow.migrations.update_if(attrs.evolve(started, id=started.id + 1000), startable)
        with pytest.raises(NotFound):
            uow.migrations.update_if(attrs.evolve(started, owner_id=world.bob), startable)
        uow.commit()
    assert read(world.storage, "migrations", world.alice, world.migration.id) == started


# --- transactions ------------------------------------------------------------------


def test_a_unit_of_work_left_without_commit_rolls_back(world: World) -> None:
    with world.storage.unit_of_work() as uow:
        uow.mount_points.add(MountPoint(world.alice, "E:\\", 1))
        uow.credentials.update(attrs.evolve(world.credentials, password="changed"))
        uow.migrations.delete(world.alice, world.migration.id)
    with pytest.raises(RuntimeError):
        with world.storage.unit_of_work() as uow:
            uow.mount_points.add(MountPoint(world.alice, "F:\\", 1))
            raise RuntimeError("the use case failed")
    assert find(world.storage, "mount_points", world.alice)[0] == 2
    assert read(world.storage, "credentials", world.alice, world.credentials.id) == world.credentials
    assert read(world.storage, "migrations", world.alice, world.migration.id) == world.migration


def test_a_unit_inside_another_rolls_back_alone(world: World) -> None:
    with world.storage.unit_of_work() as outer:
        kept = outer.mount_points.add(MountPoint(world.alice, "E:\\", 1))
        with world.storage.unit_of_work() as inner:
            inner.mount_points.add(MountPoint(world.alice, "F:\\", 1))
        with world.storage.unit_of_work() as inner:
            also_kept = inner.mount_points.add(MountPoint(world.alice, "G:\\", 1))
            inner.commit()
        outer.commit()
    assert find(world.storage, "mount_points", world.alice)[1][2:] == [kept, also_kept]


def test_committed_work_is_seen_by_later_units(world: World) -> None:
    with world.storage.unit_of_work() as uow:
        added = uow.mount_points.add(MountPoint(world.alice, "E:\\", 1))
        uow.commit()
    assert read(world.storage, "mount_points", world.alice, added.id) == added


# --- lists ---------------------------------------------------------------------------


@pytest.fixture
def many(world: World) -> list[MountPoint]:
    """Alice's mount points: C:\\, D:\\ and ten more, half named "data"."""
    with world.storage.unit_of_work() as uow:
        for i in range(10):
            uow.mount_points.add(MountPoint(world.alice, "data" if i % 2 else f"v{i}", i))
        uow.mount_points.add(MountPoint(world.bob, "data", 1))
        uow.commit()
    return find(world.storage, "mount_points", world.alice, limit=1000)[1]


def test_find_orders_by_id_either_way(world: World, many: list[MountPoint]) -> None:
    ids = [m.id for m in many]
    assert ids == sorted(ids) and len(ids) == 12
    count, descending = find(world.storage, "mount_points", world.alice, descending=True)
    assert count == 12 and [m.id for m in descending] == ids[::-1]


def test_every_page_either_way_is_a_slice_of_the_whole_list(world: World, many: list[MountPoint]) -> None:
    # Deletes and a rolled-back add must leave the count right too.
    with world.storage.unit_of_work() as uow:
        for gone in (many[3], many[-1]):
            uow.mount_points.delete(world.alice, gone.id)
        uow.commit()
    with world.storage.unit_of_work() as uow:
        uow.mount_points.add(MountPoint(world.alice, "never", 1))  # rolled back
    ids = [m.id for m in many if m not in (many[3], many[-1])]
    for descending in (False, True):
        ordered = ids[::-1] if descending else ids
        for filters in ({}, {"name": "data"}):
            expected = [
                i for i in ordered if not filters or read(world.storage, "mount_points", world.alice, i).name == "data"
            ]
            for limit in range(1, len(ids) + 2):
                for offset in range(len(ids) + 2):
                    count, page = find(
                        world.storage, "mount_points", world.alice,
                        filters=filters, limit=limit, offset=offset, descending=descending,
                    )
                    assert count == len(expected)
                    assert [m.id for m in page] == expected[offset : offset + limit], (limit, offset, descending)


def test_find_pages(world: World, many: list[MountPoint]) -> None:
    assert find(world.storage, "mount_points", world.alice, limit=5, offset=0) == (12, many[:5])
    assert find(world.storage, "mount_points", world.alice, limit=5, offset=10) == (12, many[10:])
    assert find(world.storage, "mount_points", world.alice, limit=5, offset=12) == (12, [])
    assert find(world.storage, "mount_points", world.alice, limit=3, offset=4, descending=True) == (
        12,
        many[::-1][4:7],
    )


def test_find_filters_by_exact_value_within_the_owner(world: World, many: list[MountPoint]) -> None:
    data = [m for m in many if m.name == "data"]
    assert find(world.storage, "mount_points", world.alice, filters={"name": "data"}) == (5, data)
    assert find(world.storage, "mount_points", world.alice, filters={"name": "DATA"}) == (0, [])
    assert find(
        world.storage, "mount_points", world.alice, filters={"name": "data", "size": 3}
    ) == (1, [m for m in data if m.size == 3])
    assert find(
        world.storage, "mount_points", world.alice, filters={"name": "data"}, limit=2, offset=1
    ) == (5, data[1:3])
    assert find(world.storage, "mount_points", world.bob, filters={"name": "data"})[0] == 1


def test_find_filters_each_kind_by_its_list_filters(world: World) -> None:
    def count(repo: str, **filters: Any) -> int:
        return find(world.storage, repo, world.alice, filters=filters)[0]

    assert count("credentials", username="admin") == 1
    assert count("credentials", username="root") == 0  # bob's
    assert count("credentials", domain="corp") == 1
    assert count("credentials", domain="") == 0
    assert count("workloads", ip="10.0.0.1") == 1
    assert count("migration_targets", cloud_type="aws") == 1
    assert count("migration_targets", cloud_type="azure") == 0
    assert count("migrations", state="not_started") == 1
    assert count("migrations", state="running") == 0
    assert count("migrations", source_id=world.workload.id) == 1
    assert count("migrations", migration_target_id=world.target.id) == 1
    assert count("migrations", migration_target_id=world.target.id + 1000) == 0


def test_a_filter_value_of_the_wrong_type_matches_nothing(world: World) -> None:
    assert find(world.storage, "migrations", world.alice, filters={"source_id": str(world.workload.id)}) == (0, [])
    assert find(world.storage, "mount_points", world.alice, filters={"size": "100"}) == (0, [])


def test_referrers_name_the_objects_that_point_at_one(world: World) -> None:
    with world.storage.unit_of_work() as uow:
        second = uow.migrations.add(
            Migration(world.alice, world.workload.id, world.target.id, (world.d_drive.id,))
        )
        assert uow.workloads.referrers("credentials_id", world.credentials.id) == [world.workload.id]
        assert uow.migration_targets.referrers("cloud_credentials_id", world.credentials.id) == [
            world.target.id
        ]
        assert uow.workloads.referrers("mount_point_ids", world.c_drive.id) == [world.workload.id]
        assert uow.migrations.referrers("source_id", world.workload.id) == [world.migration.id, second.id]
        assert uow.migrations.referrers("migration_target_id", world.target.id) == [
            world.migration.id,
            second.id,
        ]
        assert uow.migrations.referrers("selected_mount_point_ids", world.c_drive.id) == [
            world.migration.id
        ]
        assert uow.migrations.referrers("selected_mount_point_ids", world.d_drive.id) == [
            world.migration.id,
            second.id,
        ]
        assert uow.workloads.referrers("credentials_id", world.bobs_credentials.id) == []


def test_an_owner_must_be_a_user(storage: Storage) -> None:
    with storage.unit_of_work() as uow:
        with pytest.raises(Conflict) as refused:
            uow.credentials.add(Credentials(424242, "admin", "pw"))
    # Every storage says it in the same words.
    assert refused.value.message == "owner_id refers to a missing users row 424242."
    with storage.unit_of_work(write=False) as uow:
        assert uow.credentials.find(424242, ListQuery()) == (0, [])


def test_a_unit_inside_another_is_undone_with_it(world: World) -> None:
    """A nested unit is a savepoint of the outer one: what it committed goes
    when the outer unit rolls back, and stays when the outer one commits."""
    storage = world.storage
    with storage.unit_of_work() as outer:
        outer.mount_points.add(MountPoint(world.alice, "E:\\", 1))
        with storage.unit_of_work() as inner:
            inner.mount_points.add(MountPoint(world.alice, "F:\\", 2))
            inner.commit()
        # leaving without commit: the outer unit rolls back
    with storage.unit_of_work() as outer:
        with storage.unit_of_work() as inner:
            inner.mount_points.add(MountPoint(world.alice, "G:\\", 3))
            inner.commit()
        with storage.unit_of_work() as inner:
            inner.mount_points.add(MountPoint(world.alice, "H:\\", 4))
            # leaving without commit: this inner unit alone is undone
        outer.commit()
    with storage.unit_of_work(write=False) as uow:
        _, found = uow.mount_points.find(world.alice, ListQuery(limit=100))
    assert sorted(mp.name for mp in found) == ["C:\\", "D:\\", "G:\\"]
# --- waves ---------------------------------------------------------------------------


def _second_migration(world: World) -> Migration:
    with world.storage.unit_of_work() as uow:
        second = uow.migrations.add(
            Migration(world.alice, world.workload.id, world.target.id, (world.d_drive.id,))
        )
        uow.commit()
    return second


def test_a_wave_keeps_its_members_in_order_and_each_member_reads_its_wave(world: World) -> None:
    second = _second_migration(world)
    with world.storage.unit_of_work() as uow:
        wave = uow.waves.add(Wave(world.alice, "first wave", (second.id, world.migration.id)))
        empty = uow.waves.add(Wave(world.alice, "later"))
        uow.commit()
    assert read(world.storage, "waves", world.alice, wave.id) == wave
    assert wave.migration_ids == (second.id, world.migration.id)
    assert read(world.storage, "migrations", world.alice, second.id).wave_id == wave.id
    assert find(world.storage, "migrations", world.alice, filters={"wave_id": wave.id}) == (
        2,
        [attrs.evolve(world.migration, wave_id=wave.id), attrs.evolve(second, wave_id=wave.id)],
    )
    assert find(world.storage, "migrations", world.alice, filters={"wave_id": empty.id}) == (0, [])
    assert find(world.storage, "migrations", world.alice, filters={"wave_id": str(wave.id)}) == (0, [])
    assert find(world.storage, "waves", world.alice, filters={"name": "later"}) == (1, [empty])
    assert find(world.storage, "waves", world.alice) == (2, [wave, empty])
    assert find(world.storage, "waves", world.bob) == (0, [])


def test_wave_names_are_unique_per_owner(world: World) -> None:
    with world.storage.unit_of_work() as uow:
        first = uow.waves.add(Wave(world.alice, "wave 1"))
        with pytest.raises(Conflict, match="already named 'wave 1'"):
            uow.waves.add(Wave(world.alice, "wave 1"))
        other = uow.waves.add(Wave(world.alice, "wave 2"))
        with pytest.raises(Conflict, match="already named"):
            uow.waves.update(attrs.evolve(other, name="wave 1"))
        uow.waves.add(Wave(world.bob, "wave 1"))  # another owner's name space
        uow.commit()
    assert find(world.storage, "waves", world.alice) == (2, [first, other])


def test_a_migration_is_in_one_wave_at_most(world: World) -> None:
    second = _second_migration(world)
    with world.storage.unit_of_work() as uow:
        first = uow.waves.add(Wave(world.alice, "one", (world.migration.id,)))
        with pytest.raises(Conflict, match=f"Migration {world.migration.id} is already in wave {first.id}"):
            uow.waves.add(Wave(world.alice, "two", (second.id, world.migration.id)))
        other = uow.waves.add(Wave(world.alice, "three", (second.id,)))
        with pytest.raises(Conflict, match="already in wave"):
            uow.waves.update(attrs.evolve(other, migration_ids=(second.id, world.migration.id)))
        uow.commit()
    # The refused writes left nothing behind.
    assert find(world.storage, "waves", world.alice, filters={"name": "two"}) == (0, [])
    assert read(world.storage, "waves", world.alice, other.id).migration_ids == (second.id,)
    assert read(world.storage, "migrations", world.alice, world.migration.id).wave_id == first.id


def test_a_wave_holds_only_its_owners_existing_migrations(world: World) -> None:
    with world.storage.unit_of_work() as uow:
        with pytest.raises(Conflict, match="refers to a missing"):
            uow.waves.add(Wave(world.alice, "w", (world.migration.id + 1000,)))
        with pytest.raises(Conflict, match="refers to a missing"):
            uow.waves.add(Wave(world.bob, "w", (world.migration.id,)))
        uow.commit()
    assert find(world.storage, "waves", world.alice)[0] == find(world.storage, "waves", world.bob)[0] == 0


def test_writing_a_migration_never_changes_its_wave(world: World) -> None:
    with world.storage.unit_of_work() as uow:
        wave = uow.waves.add(Wave(world.alice, "w", (world.migration.id,)))
        uow.migrations.update(attrs.evolve(world.migration, progress=5, wave_id=None))
        uow.migrations.update_if(
            attrs.evolve(world.migration, state=MigrationState.RUNNING, wave_id=None),
            (MigrationState.NOT_STARTED,),
        )
        uow.commit()
    stored = read(world.storage, "migrations", world.alice, world.migration.id)
    assert (stored.state, stored.wave_id) == (MigrationState.RUNNING, wave.id)


def test_a_member_cannot_be_deleted_and_a_deleted_wave_releases_its_members(world: World) -> None:
    with world.storage.unit_of_work() as uow:
        wave = uow.waves.add(Wave(world.alice, "w", (world.migration.id,)))
        with pytest.raises(Conflict, match="still referred to by waves"):
            uow.migrations.delete(world.alice, world.migration.id)
        with pytest.raises(Conflict, match="owns"):
            uow.users.delete(world.alice)
        uow.waves.delete(world.alice, wave.id)
        with pytest.raises(NotFound):
            uow.waves.get(world.alice, wave.id)
        uow.commit()
    assert read(world.storage, "migrations", world.alice, world.migration.id) == world.migration
    assert find(world.storage, "waves", world.alice) == (0, [])
    with world.storage.unit_of_work() as uow:
        uow.migrations.delete(world.alice, world.migration.id)
        uow.commit()


def test_a_rolled_back_wave_leaves_no_members(world: World) -> None:
    with world.storage.unit_of_work() as uow:
        uow.waves.add(Wave(world.alice, "w", (world.migration.id,)))
    assert read(world.storage, "migrations", world.alice, world.migration.id).wave_id is None
    with world.storage.unit_of_work() as uow:
        again = uow.waves.add(Wave(world.alice, "w", (world.migration.id,)))
        uow.commit()
    assert read(world.storage, "migrations", world.alice, world.migration.id).wave_id == again.id
