"""The repository contract, run against every storage adapter: what the
in-memory storage does, SQLite and PostgreSQL do too, so the unit tests' fake
cannot drift from the real things."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest

import migration_core as core
from adapters.memory import MemoryStorage
from adapters.sql.errors import StorageFailure
from migration_core import (
    Conflict,
    CopyMark,
    Credentials,
    Event,
    EventKind,
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
from migration_core.machines import CopyJob, CopyProgress
from migration_core.ports import Instance
from migration_core.runs import RunRef, advance_runs, complete_run, fail_run

from ..ssh_keys import keygen
from .storages import ALL_STORAGES, open_storage

SECRET = b"contract-suite-secret-key-32-byte"
STARTED = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=timezone.utc)


@pytest.fixture(params=ALL_STORAGES)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    store = open_storage(request.param, request, tmp_path, SECRET)
    yield store
    store.close()


def test_each_storage_has_the_abilities_its_port_declares(storage: Storage) -> None:
    """What the composition root asks of any storage: its register of
    instances, whether reads wait, and where writes best run."""
    instance = Instance.this_process(lease_seconds=30.0)
    registry = storage.instance_registry()
    registry.register(instance, now=1000.0)
    assert registry.gone([instance.id, "never-registered", None], now=1001.0) == {"never-registered", None}
    registry.deregister(instance)
    assert registry.gone([instance.id], now=1001.0) == {instance.id}
    assert isinstance(storage.reads_never_wait, bool)
    executor = storage.write_executor()
    if executor is not None:
        try:
            assert executor.submit(lambda: 6 * 7).result(timeout=10) == 42
        finally:
            executor.shutdown()


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


# --- what reaching real machines needs ------------------------------------------------

PINNED = "SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8"


@attrs.frozen
class Machines:
    """Alice's key login, a Linux host using it, and a target landing on that host."""

    keyed: Credentials
    host: Workload
    target: MigrationTarget


@pytest.fixture
def machines(world: World) -> Machines:
    key = keygen("ed25519", "-t", "ed25519")
    with world.storage.unit_of_work() as uow:
        keyed = uow.credentials.add(Credentials(world.alice, "deploy", "", private_key=key))
        host = uow.workloads.add(
            Workload(
                world.alice, "127.0.0.2", keyed.id, (), port=2222, os="linux", root="/srv/host", host_key=PINNED
            )
        )
        target = uow.migration_targets.add(
            MigrationTarget(world.alice, "vsphere", keyed.id, host_id=host.id, root="/landing")
        )
        uow.commit()
    return Machines(keyed, host, target)


def test_the_fields_of_real_machines_read_back_as_written(world: World, machines: Machines) -> None:
    keyed = read(world.storage, "credentials", world.alice, machines.keyed.id)
    assert keyed == machines.keyed
    assert (keyed.password, keyed.private_key) == ("", keygen("ed25519", "-t", "ed25519"))
    assert read(world.storage, "workloads", world.alice, machines.host.id) == machines.host
    assert read(world.storage, "migration_targets", world.alice, machines.target.id) == machines.target
    # What was written before these fields existed reads with their defaults.
    plain = read(world.storage, "workloads", world.alice, world.workload.id)
    assert (plain.port, plain.os, plain.root, plain.host_key) == (22, None, "/", None)
    assert read(world.storage, "credentials", world.alice, world.credentials.id).private_key == ""
    target = read(world.storage, "migration_targets", world.alice, world.target.id)
    assert (target.host_id, target.root) == (None, None)


def test_updates_replace_the_fields_of_real_machines(world: World, machines: Machines) -> None:
    password_only = attrs.evolve(machines.keyed, password="n3w", private_key="")
    forgotten = attrs.evolve(machines.host, port=22, os=None, root="/", host_key=None)
    simulated = attrs.evolve(machines.target, host_id=None, root=None)
    keyed = attrs.evolve(world.credentials, private_key=keygen("rsa-pem", "-t", "rsa", "-b", "2048", "-m", "PEM"))
    with world.storage.unit_of_work() as uow:
        uow.credentials.update(password_only)
        uow.credentials.update(keyed)
        uow.workloads.update(forgotten)
        uow.migration_targets.update(simulated)
        uow.commit()
    assert read(world.storage, "credentials", world.alice, machines.keyed.id) == password_only
    assert read(world.storage, "credentials", world.alice, world.credentials.id) == keyed
    assert read(world.storage, "workloads", world.alice, machines.host.id) == forgotten
    assert read(world.storage, "migration_targets", world.alice, machines.target.id) == simulated


def test_a_workload_that_is_a_targets_host_cannot_be_deleted(world: World, machines: Machines) -> None:
    with world.storage.unit_of_work() as uow:
        assert uow.migration_targets.referrers("host_id", machines.host.id) == [machines.target.id]
        assert uow.migration_targets.referrers("host_id", world.workload.id) == []
        with pytest.raises(Conflict) as refused:
            uow.workloads.delete(world.alice, machines.host.id)
        uow.commit()
    # Every storage says it in the same words.
    assert refused.value.message == f"Workload {machines.host.id} is still referred to by migration_targets."
    assert read(world.storage, "workloads", world.alice, machines.host.id) == machines.host
    with world.storage.unit_of_work() as uow:
        uow.migration_targets.update(attrs.evolve(machines.target, host_id=None, root=None))
        uow.workloads.delete(world.alice, machines.host.id)
        uow.commit()
    assert find(world.storage, "workloads", world.alice, filters={"ip": "127.0.0.2"}) == (0, [])


@pytest.mark.parametrize("whose", ["missing", "bobs"])
@pytest.mark.parametrize("write", ["add", "update"])
def test_a_host_is_an_existing_workload_of_the_same_owner(
    world: World, machines: Machines, whose: str, write: str
) -> None:
    with world.storage.unit_of_work() as uow:
        bobs = uow.workloads.add(Workload(world.bob, "10.0.0.1", world.bobs_credentials.id))
        uow.commit()
    host = bobs.id if whose == "bobs" else bobs.id + 1000
    with world.storage.unit_of_work() as uow:
        with pytest.raises(Conflict) as refused:
            if write == "add":
                uow.migration_targets.add(
                    MigrationTarget(world.alice, "aws", world.credentials.id, host_id=host, root="/x")
                )
            else:
                uow.migration_targets.update(attrs.evolve(machines.target, host_id=host))
        uow.commit()
    assert refused.value.message == f"host_id refers to a missing workloads row {host}."
    assert find(world.storage, "migration_targets", world.alice)[1] == [world.target, machines.target]


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


def test_what_a_unit_wrote_reads_back_as_it_is_now_after_nested_units_undone(world: World) -> None:
    storage = world.storage
    with storage.unit_of_work() as outer:
        added = outer.mount_points.add(MountPoint(world.alice, "E:\\", 1))
        with storage.unit_of_work() as inner:
            inner.mount_points.update(attrs.evolve(added, size=5))
            assert inner.mount_points.get(world.alice, added.id).size == 5
            # left without commit: the change is undone
        assert outer.mount_points.get(world.alice, added.id) == added
        changed = outer.credentials.update(attrs.evolve(world.credentials, password="new"))
        gone = outer.mount_points.add(MountPoint(world.alice, "F:\\", 2))
        with storage.unit_of_work() as inner:
            inner.mount_points.delete(world.alice, gone.id)
            inner.commit()
        with pytest.raises(NotFound):
            outer.mount_points.get(world.alice, gone.id)
        assert outer.credentials.get(world.alice, changed.id) == changed
        with pytest.raises(NotFound):
            outer.credentials.get(world.bob, changed.id)
        outer.commit()
    assert read(storage, "credentials", world.alice, world.credentials.id).password == "new"


def test_a_row_a_unit_inserted_is_referred_to_once_the_unit_lists_it(world: World) -> None:
    with world.storage.unit_of_work() as uow:
        new = uow.mount_points.add(MountPoint(world.alice, "E:\\", 1))
        other = uow.mount_points.add(MountPoint(world.alice, "F:\\", 1))
        assert uow.workloads.referrers("mount_point_ids", new.id) == []
        workload = uow.workloads.add(Workload(world.alice, "10.0.0.9", world.credentials.id, (new.id,)))
        assert uow.workloads.referrers("mount_point_ids", new.id) == [workload.id]
        uow.workloads.update(attrs.evolve(world.workload, mount_point_ids=(*world.workload.mount_point_ids, other.id)))
        assert uow.workloads.referrers("mount_point_ids", other.id) == [world.workload.id]
        migration = uow.migrations.add(Migration(world.alice, workload.id, world.target.id, (new.id,)))
        assert uow.migrations.referrers("selected_mount_point_ids", new.id) == [migration.id]
        wave = uow.waves.add(Wave(world.alice, "w", (migration.id,)))
        assert uow.waves.referrers("migration_ids", migration.id) == [wave.id]


def _volume_names(world: World) -> list[str]:
    with world.storage.unit_of_work(write=False) as uow:
        _, found = uow.mount_points.find(world.alice, ListQuery(limit=100))
    return sorted(mp.name for mp in found)


def test_a_unit_that_need_not_undo_nested_ones_alone_keeps_what_they_commit(world: World) -> None:
    storage = world.storage
    with storage.unit_of_work(undo_nested=False) as outer:
        outer.mount_points.add(MountPoint(world.alice, "E:\\", 1))
        with storage.unit_of_work() as inner:
            inner.mount_points.add(MountPoint(world.alice, "F:\\", 2))
            inner.commit()
        with storage.unit_of_work() as inner:
            assert inner.mount_points.find(world.alice, ListQuery(filters={"name": "F:\\"}))[0] == 1
            inner.commit()
        outer.commit()
    assert _volume_names(world) == ["C:\\", "D:\\", "E:\\", "F:\\"]


@pytest.mark.parametrize("where", ["a refused write", "a failed nested unit", "a nested unit left"])
def test_a_failure_in_a_unit_that_need_not_undo_alone_never_leaves_a_part_written(world: World, where: str) -> None:
    """Either the failed part alone is undone (the unit commits the rest), or
    the unit refuses to commit: never is a part to be undone kept. Storage
    that did not undo it alone may tell the failure only as its own."""
    storage = world.storage
    clash = Workload(world.alice, world.workload.ip, world.credentials.id)  # storage refuses the ip
    committed = False
    with storage.unit_of_work(undo_nested=False) as outer:
        outer.mount_points.add(MountPoint(world.alice, "E:\\", 1))
        if where == "a refused write":
            with pytest.raises((Conflict, StorageFailure)):
                outer.workloads.add(clash)
        else:
            with pytest.raises((Conflict, StorageFailure)) if where == "a failed nested unit" else nullcontext():
                with storage.unit_of_work() as inner:
                    inner.mount_points.add(MountPoint(world.alice, "F:\\", 2))
                    if where == "a failed nested unit":
                        inner.workloads.add(clash)
                    # left without commit: to be undone
        try:
            outer.commit()
            committed = True
        except StorageFailure:
            pass
    assert committed == isinstance(storage, MemoryStorage)
    assert _volume_names(world) == (["C:\\", "D:\\", "E:\\"] if committed else ["C:\\", "D:\\"])


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
# --- events --------------------------------------------------------------------------


def moment(seconds: float) -> datetime:
    return STARTED + timedelta(seconds=seconds)


def append(storage: Storage, *events: Event) -> list[Event]:
    with storage.unit_of_work() as uow:
        stored = [uow.events.append(event) for event in events]
        uow.commit()
    return stored


def events_of(storage: Storage, owner: int, migration_id: int, **query: Any) -> tuple[int, list[Event]]:
    with storage.unit_of_work(write=False) as uow:
        return uow.events.find(owner, migration_id, ListQuery(**query))


def after(storage: Storage, owner: int | None, event_id: int, limit: int = 1000) -> list[Event]:
    with storage.unit_of_work(write=False) as uow:
        return uow.events.after(owner, event_id, limit)


def last_id(storage: Storage) -> int:
    with storage.unit_of_work(write=False) as uow:
        return uow.events.last_id()


def bobs_migration(world: World) -> Migration:
    with world.storage.unit_of_work() as uow:
        volume = uow.mount_points.add(MountPoint(world.bob, "C:\\", 1))
        workload = uow.workloads.add(Workload(world.bob, "10.0.0.1", world.bobs_credentials.id, (volume.id,)))
        target = uow.migration_targets.add(MigrationTarget(world.bob, "aws", world.bobs_credentials.id))
        migration = uow.migrations.add(Migration(world.bob, workload.id, target.id, (volume.id,)))
        uow.commit()
    return migration


def test_events_read_back_as_appended_oldest_first(world: World) -> None:
    m = world.migration.id
    detail = {"reason": "disk C:\\ is unreadable: ünïcode ✓", "nested": {"list": [1, None, True]}, "big": 2**62}
    stored = append(
        world.storage,
        Event(world.alice, m, EventKind.CREATED, moment(0), {"source": world.workload.id}, world.alice),
        Event(world.alice, m, EventKind.FAILED, moment(1.5), detail),
    )
    assert 0 < stored[0].id < stored[1].id
    assert stored[1] == Event(world.alice, m, EventKind.FAILED, moment(1.5), detail, None, stored[1].id)
    assert events_of(world.storage, world.alice, m) == (2, stored)
    assert events_of(world.storage, world.alice, m, descending=True) == (2, stored[::-1])
    assert events_of(world.storage, world.alice, m)[1][0].at.utcoffset() == timedelta(0)


def test_events_are_paged_and_filtered_by_kind_within_their_migration(world: World) -> None:
    m = world.migration.id
    kinds = [EventKind.RUN_REQUESTED, EventKind.STARTED, EventKind.VOLUME_COPIED] * 4
    stored = append(world.storage, *(Event(world.alice, m, kind, moment(i)) for i, kind in enumerate(kinds)))
    copied = [e for e in stored if e.kind is EventKind.VOLUME_COPIED]
    assert events_of(world.storage, world.alice, m, limit=5, offset=10) == (12, stored[10:])
    assert events_of(world.storage, world.alice, m, limit=2, offset=1, descending=True) == (12, stored[::-1][1:3])
    assert events_of(world.storage, world.alice, m, filters={"kind": "volume_copied"}) == (4, copied)
    assert events_of(world.storage, world.alice, m, filters={"kind": "volume_copied"}, limit=1, offset=3) == (
        4,
        copied[3:],
    )
    assert events_of(world.storage, world.alice, m, filters={"kind": "failed"}) == (0, [])
    assert events_of(world.storage, world.alice, m, filters={"kind": 3}) == (0, [])
    # Another owner, or another migration, sees none of them.
    assert events_of(world.storage, world.bob, m) == (0, [])
    assert events_of(world.storage, world.alice, m + 1000) == (0, [])


def test_after_reads_the_events_after_an_id_of_one_owner_or_of_every_owner(world: World) -> None:
    assert last_id(world.storage) == 0 and after(world.storage, None, 0) == []
    bobs = bobs_migration(world)
    stored = append(
        world.storage,
        *(
            Event(owner, migration, EventKind.STARTED, moment(i))
            for i, (owner, migration) in enumerate([(world.alice, world.migration.id), (world.bob, bobs.id)] * 3)
        ),
    )
    alices = [e for e in stored if e.owner_id == world.alice]
    assert after(world.storage, None, 0) == stored
    assert after(world.storage, None, stored[1].id, limit=2) == stored[2:4]
    assert after(world.storage, world.alice, 0) == alices
    assert after(world.storage, world.alice, alices[0].id, limit=1) == alices[1:2]
    assert after(world.storage, world.bob, stored[-1].id) == []
    assert last_id(world.storage) == stored[-1].id


def test_an_event_of_a_missing_or_anothers_migration_is_refused_and_leaves_nothing(world: World) -> None:
    with world.storage.unit_of_work() as uow:
        with pytest.raises(Conflict, match="refers to a missing migrations row"):
            uow.events.append(Event(world.bob, world.migration.id, EventKind.CREATED, moment(0)))
        with pytest.raises(Conflict, match="refers to a missing migrations row"):
            uow.events.append(Event(world.alice, world.migration.id + 1000, EventKind.CREATED, moment(0)))
        uow.commit()
    assert after(world.storage, None, 0) == []
    assert events_of(world.storage, world.alice, world.migration.id) == (0, [])


def test_events_go_with_their_migration(world: World) -> None:
    with world.storage.unit_of_work() as uow:
        second = uow.migrations.add(Migration(world.alice, world.workload.id, world.target.id, (world.c_drive.id,)))
        uow.commit()
    stored = append(
        world.storage,
        *(
            Event(world.alice, m, EventKind.CREATED, moment(0))
            for m in (world.migration.id, second.id, world.migration.id)
        ),
    )
    with world.storage.unit_of_work() as uow:
        uow.migrations.delete(world.alice, world.migration.id)
        uow.commit()
    assert after(world.storage, None, 0) == [stored[1]]
    assert events_of(world.storage, world.alice, world.migration.id) == (0, [])
    # What is left can still go: the owner's last objects, then the owner.
    with world.storage.unit_of_work() as uow:
        uow.migrations.delete(world.alice, second.id)
        uow.commit()
    assert after(world.storage, None, 0) == []


def test_a_change_and_its_event_roll_back_together(world: World) -> None:
    changed = attrs.evolve(world.migration, progress=5)
    event = Event(world.alice, world.migration.id, EventKind.UPDATED, moment(0))
    with world.storage.unit_of_work() as uow:
        uow.migrations.update(changed)
        uow.events.append(event)
    with pytest.raises(RuntimeError):
        with world.storage.unit_of_work() as uow:
            uow.migrations.update(changed)
            uow.events.append(event)
            raise RuntimeError("the use case failed")
    assert read(world.storage, "migrations", world.alice, world.migration.id) == world.migration
    assert after(world.storage, None, 0) == []


def test_the_copy_of_a_run_round_trips(world: World) -> None:
    copying = attrs.evolve(
        world.migration,
        state=MigrationState.RUNNING,
        progress=30,
        started_at=STARTED,
        snapshot=snapshot(),
        copied=CopyMark((world.c_drive.id, world.d_drive.id), 1, 2**62, moment(60)),
    )
    with world.storage.unit_of_work() as uow:
        uow.migrations.update(copying)
        uow.commit()
    assert read(world.storage, "migrations", world.alice, world.migration.id) == copying


def test_event_ids_become_visible_in_order(world: World) -> None:
    """Writers commit a moment after appending; a reader that walks `after`
    from the last id it saw must miss none of them."""
    writers, each = 4, 8
    done = threading.Event()
    seen: list[int] = []
    failures: list[BaseException] = []

    def write() -> None:
        try:
            for i in range(each):
                with world.storage.unit_of_work() as uow:
                    uow.events.append(Event(world.alice, world.migration.id, EventKind.STARTED, moment(i)))
                    time.sleep(0.002)
                    uow.commit()
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    def poll() -> None:
        while True:
            finished = done.is_set()
            seen.extend(e.id for e in after(world.storage, None, seen[-1] if seen else 0))
            if finished:
                return
            time.sleep(0.0005)

    threads = [threading.Thread(target=write) for _ in range(writers)]
    reader = threading.Thread(target=poll)
    reader.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    reader.join()
    assert failures == []
    assert seen == [e.id for e in after(world.storage, None, 0)]
    assert len(seen) == writers * each


# --- the events of each use case, on this storage -----------------------------------

OTHER_USER = 4242  # who asks, when not the owner: an event records whoever it is


@attrs.define
class Run:
    """One user's migration of C:\\ (100 bytes) and D:\\ (300 bytes) into a
    target, driven through the core's use cases."""

    storage: Storage
    owner: int
    migration: int
    target: int
    c_drive: int
    d_drive: int
    clock: Any = attrs.field(factory=lambda: _Clock())
    runner: Any = attrs.field(factory=lambda: _Runner())

    @property
    def ref(self) -> RunRef:
        return RunRef(self.owner, self.migration)

    def history(self) -> list[tuple[str, int | None, dict[str, Any]]]:
        page = core.list_events(self.storage, self.owner, self.migration, ListQuery(limit=1000))
        return [(e.kind.value, e.actor, e.detail) for e in page.items]

    def state(self) -> Migration:
        return core.get_migration(self.storage, self.owner, self.migration)


class _Clock:
    def __init__(self) -> None:
        self.moment = STARTED

    def now(self) -> datetime:
        self.moment += timedelta(seconds=1)
        return self.moment


class _Runner:
    instance_id = "instance-a"

    def launch(self, job: CopyJob) -> None:
        """The test plays the copy's part."""

    def cancel(self, migration_id: int) -> None:
        """Nothing to stop."""

    def queued(self) -> None:
        pass


@pytest.fixture
def run(storage: Storage) -> Run:
    with storage.unit_of_work() as uow:
        owner = uow.users.add(User("carol", "hash")).id
        uow.commit()
    credentials = core.create_credentials(storage, owner, username="admin", password="pw")
    c = core.create_mount_point(storage, owner, name="C:\\", size=100)
    d = core.create_mount_point(storage, owner, name="D:\\", size=300)
    workload = core.create_workload(
        storage, owner, ip="10.1.1.1", credentials_id=credentials.id, mount_point_ids=[c.id, d.id]
    )
    target = core.create_migration_target(storage, owner, cloud_type="aws", cloud_credentials_id=credentials.id)
    migration = core.create_migration(
        storage, owner, clock=_Clock(), source_id=workload.id, migration_target_id=target.id,
        selected_mount_point_ids=[d.id, c.id],
    )
    return Run(storage, owner, migration.id, target.id, c.id, d.id)


def _volume(run: Run, which: str) -> tuple[str, None, dict[str, Any]]:
    mount_point, size = (run.c_drive, 100) if which == "C:\\" else (run.d_drive, 300)
    return ("volume_copied", None, {"mount_point": mount_point, "name": which, "size": size})


START_STATES = ["not_started", "running", "success", "failed", "cancelled", "interrupted"]
RUN_ACTIONS = ["run", "cancel", "complete", "fail", "advance", "interrupt", "edit"]


def _bring(run: Run, start: str) -> None:
    if start == "not_started":
        return
    core.launch_run(run.storage, run.clock, run.runner, run.owner, run.migration)
    advance_runs(run.storage, run.clock, {run.ref: CopyProgress(0, 80)})  # 80 bytes: C:\ not done
    if start == "success":
        complete_run(run.storage, run.clock, run.ref)
    elif start == "failed":
        fail_run(run.storage, run.clock, run.ref, "network down")
    elif start == "cancelled":
        core.cancel_run(run.storage, run.clock, run.runner, run.owner, run.migration)
    elif start == "interrupted":
        core.mark_interrupted(run.storage, run.clock, {"instance-a"})


def _act(run: Run, action: str) -> None:
    s, clock = run.storage, run.clock
    if action == "run":
        core.launch_run(s, clock, run.runner, run.owner, run.migration, actor=OTHER_USER)
    elif action == "cancel":
        core.cancel_run(s, clock, run.runner, run.owner, run.migration, actor=OTHER_USER)
    elif action == "complete":
        complete_run(s, clock, run.ref)
    elif action == "fail":
        fail_run(s, clock, run.ref, "disk unreadable")
    elif action == "advance":
        advance_runs(s, clock, {run.ref: CopyProgress(1, 140)})  # 240 bytes: C:\ done
    elif action == "interrupt":
        core.mark_interrupted(s, clock)
    else:
        core.update_migration(
            s, run.owner, run.migration, clock=clock, selected_mount_point_ids=[run.c_drive], actor=OTHER_USER
        )


def _expected_events(run: Run, start: str, action: str) -> list[tuple[str, int | None, dict[str, Any]]]:
    running = start == "running"
    if action == "run":
        started = ("started", None, {"instance": "instance-a", "volumes": 2, "bytes_total": 400})
        return [("run_requested", OTHER_USER, {}), started] if start not in ("running", "success") else []
    if action == "edit":
        return [] if running else [("updated", OTHER_USER, {"selected_mount_points": [run.c_drive]})]
    if not running:
        return []
    return {
        "cancel": [("cancelled", OTHER_USER, {})],
        "complete": [_volume(run, "C:\\"), _volume(run, "D:\\"), ("succeeded", None, {"migration_target": run.target})],
        "fail": [("failed", None, {"reason": "disk unreadable"})],
        "advance": [_volume(run, "C:\\")],
        "interrupt": [("interrupted", None, {"instance": "instance-a"})],
    }[action]


@pytest.mark.parametrize("start", START_STATES)
@pytest.mark.parametrize("action", RUN_ACTIONS)
def test_each_transition_writes_exactly_its_events_in_order(run: Run, start: str, action: str) -> None:
    _bring(run, start)
    before = run.history()
    try:
        _act(run, action)
    except Conflict:
        pass
    assert run.history() == before + _expected_events(run, start, action)


def test_creating_a_migration_records_who_and_what(run: Run) -> None:
    assert run.history() == [
        ("created", run.owner, {"source": run.state().source_id, "migration_target": run.target,
                                "selected_mount_points": [run.d_drive, run.c_drive]}),
    ]


def test_a_retried_migration_keeps_the_history_of_its_earlier_runs(run: Run) -> None:
    core.launch_run(run.storage, run.clock, run.runner, run.owner, run.migration)
    core.cancel_run(run.storage, run.clock, run.runner, run.owner, run.migration)
    core.launch_run(run.storage, run.clock, run.runner, run.owner, run.migration)
    core.mark_interrupted(run.storage, run.clock)
    core.launch_run(run.storage, run.clock, run.runner, run.owner, run.migration)
    complete_run(run.storage, run.clock, run.ref)
    assert [kind for kind, _, _ in run.history()] == [
        "created",
        "run_requested", "started", "cancelled",
        "run_requested", "started", "interrupted",
        "run_requested", "started", "volume_copied", "volume_copied", "succeeded",
    ]
    times = [e.at for e in core.list_events(run.storage, run.owner, run.migration, ListQuery()).items]
    assert times == sorted(times)


def test_deleting_a_migration_deletes_its_history(run: Run) -> None:
    core.launch_run(run.storage, run.clock, run.runner, run.owner, run.migration)
    fail_run(run.storage, run.clock, run.ref, "disk unreadable")
    assert len(run.history()) == 4
    core.delete_migration(run.storage, run.owner, run.migration)
    assert core.events_after(run.storage, run.owner, 0, 100) == []
    with pytest.raises(NotFound):
        run.history()


class _CommitFails:
    """Storage whose writing units commit `commits` times, then fail at commit
    as a lost connection or a full disk would make them."""

    def __init__(self, inner: Storage, commits: int) -> None:
        self.inner = inner
        self.commits = commits

    def unit_of_work(self, *, write: bool = True, undo_nested: bool = True) -> Any:
        return _FailingUnit(self, self.inner.unit_of_work(write=write, undo_nested=undo_nested))

    def check(self) -> None:
        self.inner.check()

    def close(self) -> None:
        self.inner.close()


class _FailingUnit:
    def __init__(self, storage: _CommitFails, inner: Any) -> None:
        self._storage = storage
        self._inner = inner

    def __enter__(self) -> _FailingUnit:
        self._inner.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._inner.__exit__(*exc_info)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def commit(self) -> None:
        if self._storage.commits <= 0:
            raise RuntimeError("the commit failed")
        self._storage.commits -= 1
        self._inner.commit()


@pytest.mark.parametrize("commits", [0, 1])
@pytest.mark.parametrize(
    ("start", "action"),
    [("not_started", "run"), ("not_started", "edit"), ("running", "advance"), ("running", "complete"),
     ("running", "fail"), ("running", "cancel"), ("running", "interrupt"), ("create", "create")],
)
def test_a_change_and_its_events_are_written_all_or_nothing(run: Run, start: str, action: str, commits: int) -> None:
    """A use case whose first commit fails leaves neither its change nor its
    events; one whose second would fail has written both at once."""
    if start != "create":
        _bring(run, start)

    def seen() -> tuple[list[Migration], list[Event]]:
        everything = core.list_migrations(run.storage, run.owner, ListQuery()).items
        return list(everything), core.events_after(run.storage, None, 0, 1000)

    before = seen()
    failing = attrs.evolve(run, storage=_CommitFails(run.storage, commits))
    try:
        if action == "create":
            core.create_migration(
                failing.storage, run.owner, clock=run.clock, source_id=run.state().source_id,
                migration_target_id=run.target, selected_mount_point_ids=[run.c_drive],
            )
        else:
            _act(failing, action)
    except RuntimeError as failure:
        assert commits == 0, failure
    migrations, events = seen()
    assert (migrations == before[0]) == (events == before[1]) == (commits == 0)


def test_failed_logins_older_than_the_window_go_whoever_they_were_for(storage: Storage) -> None:
    """Failures of a name never tried again go too: they cannot pile up."""
    with storage.unit_of_work() as uow:
        for name, at in [("ann", 10.0), ("bob", 20.0), ("ann", 70.0), ("gone", 5.0)]:
            uow.login_failures.add(name, at)
        uow.commit()
    with storage.unit_of_work() as uow:
        uow.login_failures.forget(20.0)
        uow.commit()
    with storage.unit_of_work(write=False) as uow:
        kept = {name: uow.login_failures.since(name, 0.0) for name in ("ann", "bob", "gone")}
    assert kept == {"ann": [70.0], "bob": [], "gone": []}


# --- read models -------------------------------------------------------------------


def test_credentials_summaries_show_what_the_credentials_show(world: World) -> None:
    key = keygen("summary", "-t", "ed25519")
    with world.storage.unit_of_work() as uow:
        keyed = uow.credentials.add(Credentials(world.alice, "deploy", "", "", key))
        uow.commit()
    alices = [world.credentials, keyed]
    for credentials in alices:
        summary = read(world.storage, "credentials_summaries", world.alice, credentials.id)
        assert summary == core.CredentialsSummary.of(credentials)
        assert summary.has_private_key is bool(credentials.private_key)
    assert find(world.storage, "credentials_summaries", world.alice) == (
        2, [core.CredentialsSummary.of(c) for c in alices]
    )
    assert find(world.storage, "credentials_summaries", world.alice, filters={"username": "deploy"},
                descending=True) == (1, [core.CredentialsSummary.of(keyed)])
    assert find(world.storage, "credentials_summaries", world.alice, limit=1, offset=1, descending=True) == (
        2, [core.CredentialsSummary.of(world.credentials)]
    )
    with pytest.raises(NotFound):
        read(world.storage, "credentials_summaries", world.bob, world.credentials.id)


def test_a_credentials_summary_in_a_writing_unit_sees_its_writes(world: World) -> None:
    with world.storage.unit_of_work() as uow:
        changed = uow.credentials.update(attrs.evolve(world.credentials, username="renamed"))
        assert uow.credentials_summaries.get(world.alice, changed.id) == core.CredentialsSummary.of(changed)
        uow.commit()
