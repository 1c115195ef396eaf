"""What a successful run leaves in its target, and what a failed one does not."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

import migration_core as core
from migration_core.runs import RunRef, complete_run, fail_run

from .support import (
    FakeClock,
    Inventory,
    ManualRunner,
    Volume,
    build_inventory,
    stems,
    volume_identity,
)


@st.composite
def sources(draw: st.DrawFn) -> list[Volume]:
    """A workload's volumes in storage order: distinct, `C:\\` among them."""
    others = draw(
        st.lists(stems.filter(lambda s: volume_identity(s) != "c:"), max_size=5,
                 unique_by=volume_identity)
    )
    names = list(others)
    names.insert(draw(st.integers(0, len(names))), draw(st.sampled_from(["C:\\", "c:", "C:/"])))
    return [Volume(n, draw(st.integers(0, 10**12))) for n in names]


@st.composite
def selected_in_any_order(draw: st.DrawFn, volumes: list[Volume]) -> list[str]:
    """Some volumes, `C:\\` always, listed in an order of their own."""
    system = next(v.name for v in volumes if volume_identity(v.name) == "c:")
    extra = draw(st.lists(st.sampled_from([v.name for v in volumes]), unique=True))
    return draw(st.permutations(sorted({system, *extra})))


def _run_to_success(inventory: Inventory, selected: list[str]) -> core.Migration:
    clock = FakeClock()
    migration = inventory.migration(inventory.ids_named(*selected))
    core.run_migration(inventory.storage, clock, ManualRunner(), inventory.owner_id, migration.id)
    finished = complete_run(inventory.storage, clock, RunRef.of(migration))
    assert finished is not None and finished.state is core.MigrationState.SUCCESS
    return finished


@given(sources(), st.ip_addresses(), st.data())
def test_success_copies_the_source_with_only_the_selected_volumes_in_source_order(
    volumes: list[Volume],
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    data: st.DataObject,
) -> None:
    inventory = build_inventory(volumes=volumes, ip=address.exploded)
    selected = data.draw(selected_in_any_order(volumes))
    _run_to_success(inventory, selected)
    target = core.get_migration_target(inventory.storage, inventory.owner_id, inventory.target.id)
    assert target.target_vm is not None
    assert target.target_vm.ip == str(address)
    assert target.target_vm.credentials == core.Login("admin", "s3cret!", "corp")
    assert [(v.name, v.size) for v in target.target_vm.storage] == [
        (v.name, v.size) for v in volumes if v.name in selected
    ]


@given(sources(), st.data())
def test_a_later_success_replaces_the_target_vm_instead_of_merging(
    volumes: list[Volume], data: st.DataObject
) -> None:
    inventory = build_inventory(volumes=volumes)
    first = data.draw(selected_in_any_order(volumes))
    second = data.draw(selected_in_any_order(volumes))
    _run_to_success(inventory, first)
    _run_to_success(inventory, second)
    target = core.get_migration_target(inventory.storage, inventory.owner_id, inventory.target.id)
    assert target.target_vm is not None
    assert [v.name for v in target.target_vm.storage] == [
        v.name for v in volumes if v.name in second
    ]


@given(st.sampled_from(["fail", "cancel", "interrupt"]), st.booleans())
def test_a_run_that_does_not_succeed_leaves_the_target_as_it_was(
    ending: str, had_a_vm: bool
) -> None:
    inventory = build_inventory()
    storage, owner = inventory.storage, inventory.owner_id
    if had_a_vm:
        _run_to_success(inventory, ["C:\\"])
    before = core.get_migration_target(storage, owner, inventory.target.id)
    clock, runner = FakeClock(), ManualRunner()
    migration = core.run_migration(storage, clock, runner, owner, inventory.migration().id)
    if ending == "fail":
        fail_run(storage, clock, RunRef.of(migration), "network down")
    elif ending == "cancel":
        core.cancel_run(storage, clock, runner, owner, migration.id)
    else:
        core.mark_interrupted(storage, clock)
    assert core.get_migration(storage, owner, migration.id).state is core.MigrationState.ERROR
    assert core.get_migration_target(storage, owner, inventory.target.id) == before


@given(st.integers(0, 10**6), st.text(min_size=1, max_size=5))
def test_success_copies_the_source_as_it_was_when_the_run_started(
    new_size: int, new_name: str
) -> None:
    inventory = build_inventory(volumes=[Volume("C:\\", 1), Volume("D:\\", 2)])
    storage, owner = inventory.storage, inventory.owner_id
    clock = FakeClock()
    migration = core.run_migration(storage, clock, ManualRunner(), owner, inventory.migration().id)
    d_drive = inventory.mount_points[1]
    core.update_mount_point(storage, owner, d_drive.id, name="D:\\" + new_name, size=new_size)
    core.update_credentials(storage, owner, inventory.credentials.id, password="changed-later")
    complete_run(storage, clock, RunRef.of(migration))
    vm = core.get_migration_target(storage, owner, inventory.target.id).target_vm
    assert vm is not None
    assert [(v.name, v.size) for v in vm.storage] == [("C:\\", 1), ("D:\\", 2)]
    assert vm.credentials.password == "s3cret!"
