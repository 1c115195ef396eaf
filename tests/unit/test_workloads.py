"""Workload rules that span objects: the ip never changes and is unique
per owner, a mount point belongs to one workload, a workload holds each volume once."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

import migration_core as core

from .support import Volume, build_inventory, field_errors, owned_storage, spellings, stems, volume_identity


def _spellings_of(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> st.SearchStrategy[str]:
    forms = {str(address), address.exploded, address.exploded.upper(), str(address).upper()}
    return st.sampled_from(sorted(forms))


@given(st.ip_addresses(), st.ip_addresses(), st.data())
def test_the_ip_of_a_workload_never_changes(
    first: ipaddress.IPv4Address | ipaddress.IPv6Address,
    second: ipaddress.IPv4Address | ipaddress.IPv6Address,
    data: st.DataObject,
) -> None:
    inventory = build_inventory(ip=str(first))
    storage, owner, workload = inventory.storage, inventory.owner_id, inventory.workload
    same = data.draw(_spellings_of(first))
    kept = core.update_workload(storage, owner, workload.id, ip=same)
    assert kept.ip == str(first)
    if second != first:
        with pytest.raises(core.InvalidInput) as refused:
            core.update_workload(storage, owner, workload.id, ip=str(second))
        assert field_errors(refused.value) == {"ip"}
    assert core.get_workload(storage, owner, workload.id).ip == str(first)


@given(st.ip_addresses(), st.data())
def test_two_workloads_of_one_owner_never_share_an_ip(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, data: st.DataObject
) -> None:
    inventory = build_inventory(ip=str(address))
    with pytest.raises(core.Conflict):
        core.create_workload(
            inventory.storage,
            inventory.owner_id,
            ip=data.draw(_spellings_of(address)),
            credentials_id=inventory.credentials.id,
        )
    listed = core.list_workloads(inventory.storage, inventory.owner_id, core.ListQuery())
    assert listed.items == [inventory.workload]


@given(st.ip_addresses(), st.integers(2, 5))
def test_workloads_of_different_owners_may_share_an_ip(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, owners: int
) -> None:
    storage = owned_storage()
    workloads = [
        build_inventory(storage, owner_id=owner, ip=str(address)).workload
        for owner in range(1, owners + 1)
    ]
    assert {w.ip for w in workloads} == {str(address)}
    assert len({w.id for w in workloads}) == owners


@given(st.integers(0, 3), st.booleans())
def test_a_mount_point_belongs_to_at_most_one_workload(index: int, on_update: bool) -> None:
    names = ["C:\\", "D:\\", "E:\\", "/var"]
    inventory = build_inventory(volumes=[Volume(name, 1) for name in names])
    storage, owner = inventory.storage, inventory.owner_id
    taken = inventory.mount_points[index]
    own = core.create_mount_point(storage, owner, name="F:\\", size=1)
    with pytest.raises(core.Conflict):
        if on_update:
            other = core.create_workload(
                storage, owner, ip="10.9.9.9", credentials_id=inventory.credentials.id,
                mount_point_ids=[own.id],
            )
            core.update_workload(storage, owner, other.id, mount_point_ids=[own.id, taken.id])
        else:
            core.create_workload(
                storage, owner, ip="10.9.9.9", credentials_id=inventory.credentials.id,
                mount_point_ids=[own.id, taken.id],
            )
    assert core.get_workload(storage, owner, inventory.workload.id) == inventory.workload
    holders = [
        w for w in core.list_workloads(storage, owner, core.ListQuery()).items
        if taken.id in w.mount_point_ids
    ]
    assert holders == [inventory.workload]


@given(st.lists(stems, min_size=2, max_size=5), st.data())
def test_a_workload_holds_each_volume_once_however_it_is_spelled(
    names: list[str], data: st.DataObject
) -> None:
    """Names that differ only in case or trailing separators are one volume."""
    spelled = [data.draw(spellings(name)) for name in names]
    inventory = build_inventory(volumes=[])
    storage, owner = inventory.storage, inventory.owner_id
    mount_points = [core.create_mount_point(storage, owner, name=n, size=1) for n in spelled]
    distinct = len({volume_identity(n) for n in spelled}) == len(spelled)

    def create() -> core.Workload:
        return core.create_workload(
            storage, owner, ip="10.1.1.1", credentials_id=inventory.credentials.id,
            mount_point_ids=[mp.id for mp in mount_points],
        )

    if distinct:
        assert create().mount_point_ids == tuple(mp.id for mp in mount_points)
    else:
        with pytest.raises(core.InvalidInput) as refused:
            create()
        assert field_errors(refused.value) == {"storage"}
        assert core.list_workloads(storage, owner, core.ListQuery()).count == 1


@given(stems, stems, st.data())
def test_renaming_a_mount_point_cannot_make_its_workload_hold_a_volume_twice(
    kept: str, renamed: str, data: st.DataObject
) -> None:
    inventory = build_inventory(volumes=[])
    storage, owner = inventory.storage, inventory.owner_id
    first = core.create_mount_point(storage, owner, name=kept + "#1", size=1)
    second = core.create_mount_point(storage, owner, name=renamed + "#2", size=1)
    core.create_workload(
        storage, owner, ip="10.1.1.1", credentials_id=inventory.credentials.id,
        mount_point_ids=[first.id, second.id],
    )
    new_name = data.draw(spellings(kept + "#1"))
    with pytest.raises(core.InvalidInput) as refused:
        core.update_mount_point(storage, owner, second.id, name=new_name)
    assert field_errors(refused.value) == {"name"}
    assert core.get_mount_point(storage, owner, second.id) == second
    # Outside a workload the same name is no clash.
    loose = core.create_mount_point(storage, owner, name=renamed, size=1)
    assert core.update_mount_point(storage, owner, loose.id, name=new_name).name == new_name


@given(st.ip_addresses(), st.data())
def test_an_ip_filter_finds_every_spelling_and_refuses_what_is_no_address(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, data: st.DataObject
) -> None:
    inventory = build_inventory(ip=str(address))
    storage, owner = inventory.storage, inventory.owner_id
    spelled = core.ListQuery(filters={"ip": data.draw(_spellings_of(address))})
    assert core.list_workloads(storage, owner, spelled).items == [inventory.workload]
    with pytest.raises(core.InvalidInput) as refused:
        core.list_workloads(storage, owner, core.ListQuery(filters={"ip": f"{address}.9"}))
    assert field_errors(refused.value) == {"ip"}
