"""Rules one object holds alone: addresses, cloud types, required fields."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

import migration_core as core

from .support import build_inventory, field_errors

CLOUD_TYPES = {"aws", "azure", "vsphere", "vcloud"}


def _parses_as_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip())
    except ValueError:
        return False
    return True


@st.composite
def ip_spellings(draw: st.DrawFn) -> tuple[str, str]:
    """(a spelling of an address, its canonical form)."""
    address = draw(st.ip_addresses())
    canonical = str(address)
    if address.version == 6:
        spelling = draw(st.sampled_from([canonical, address.exploded, canonical.upper()]))
        spelling = spelling if draw(st.booleans()) else address.exploded.upper()
    else:
        spelling = canonical
    padding = draw(st.sampled_from(["", " ", "\t"]))
    return padding + spelling + padding, canonical


not_ips = st.one_of(
    st.text(max_size=45),
    st.sampled_from(
        ["", "256.1.1.1", "1.2.3", "1.2.3.4.5", "01.2.3.4", "1.2.3.4/24", "::g", "1:2:3:4:5:6:7:8:9",
         "localhost", "10.0.0.1:80", "[::1]", "fe80::1%eth0 x"]
    ),
    st.ip_addresses(v=4).map(lambda a: str(a) + ".0"),
    st.ip_addresses(v=6).map(lambda a: str(a) + ":::"),
).filter(lambda text: not _parses_as_ip(text))


@given(ip_spellings())
def test_a_workload_stores_its_ip_in_canonical_form(spelled: tuple[str, str]) -> None:
    spelling, canonical = spelled
    inventory = build_inventory(ip=spelling)
    assert inventory.workload.ip == canonical
    stored = core.get_workload(inventory.storage, inventory.owner_id, inventory.workload.id)
    assert stored.ip == canonical


@given(not_ips)
def test_a_workload_refuses_what_is_not_an_ipv4_or_ipv6_address(text: str) -> None:
    inventory = build_inventory()
    with pytest.raises(core.InvalidInput) as refused:
        core.create_workload(
            inventory.storage, inventory.owner_id, ip=text, credentials_id=inventory.credentials.id
        )
    assert field_errors(refused.value) == {"ip"}
    listed = core.list_workloads(inventory.storage, inventory.owner_id, core.ListQuery())
    assert [w.id for w in listed.items] == [inventory.workload.id]


@given(st.sampled_from(sorted(CLOUD_TYPES)))
def test_each_of_the_four_cloud_types_is_accepted(cloud_type: str) -> None:
    inventory = build_inventory(cloud_type=cloud_type)
    stored = core.get_migration_target(inventory.storage, inventory.owner_id, inventory.target.id)
    assert stored.cloud_type.value == cloud_type
    assert stored.target_vm is None


other_cloud_types = st.one_of(
    st.text(max_size=12),
    st.sampled_from(sorted(CLOUD_TYPES)).map(str.upper),
    st.sampled_from(sorted(CLOUD_TYPES)).map(lambda t: f" {t}"),
    st.sampled_from(["gcp", "openstack", "vmware", "AWS", "Azure"]),
).filter(lambda t: t not in CLOUD_TYPES)


@given(other_cloud_types, st.booleans())
def test_no_other_cloud_type_is_accepted(cloud_type: str, on_update: bool) -> None:
    inventory = build_inventory()
    with pytest.raises(core.InvalidInput) as refused:
        if on_update:
            core.update_migration_target(
                inventory.storage, inventory.owner_id, inventory.target.id, cloud_type=cloud_type
            )
        else:
            core.create_migration_target(
                inventory.storage,
                inventory.owner_id,
                cloud_type=cloud_type,
                cloud_credentials_id=inventory.credentials.id,
            )
    assert field_errors(refused.value) == {"cloud_type"}
    listed = core.list_migration_targets(inventory.storage, inventory.owner_id, core.ListQuery())
    assert listed.items == [inventory.target]


@given(
    username=st.text(max_size=5),
    password=st.text(max_size=5),
    domain=st.one_of(st.text(max_size=5), st.none()),
)
def test_credentials_need_a_username_and_a_password(
    username: str, password: str, domain: str | None
) -> None:
    storage = build_inventory().storage
    fields = {"username": username, "password": password}
    if domain is not None:
        fields["domain"] = domain
    missing = {name for name in ("username", "password") if not fields[name]}
    if missing:
        with pytest.raises(core.InvalidInput) as refused:
            core.create_credentials(storage, 1, **fields)
        assert field_errors(refused.value) <= missing
    else:
        created = core.create_credentials(storage, 1, **fields)
        assert (created.username, created.password, created.domain) == (
            username,
            password,
            domain or "",
        )


@given(name=st.text(max_size=5), size=st.one_of(st.integers(), st.floats(), st.booleans()))
def test_a_mount_point_needs_a_name_and_a_whole_size_of_zero_or_more(
    name: str, size: object
) -> None:
    storage = build_inventory().storage
    valid_size = isinstance(size, int) and not isinstance(size, bool) and size >= 0
    if name and valid_size:
        created = core.create_mount_point(storage, 1, name=name, size=size)
        assert (created.name, created.size) == (name, size)
    else:
        broken = {"name"} if not name else set()
        broken |= set() if valid_size else {"size"}
        with pytest.raises(core.InvalidInput) as refused:
            core.create_mount_point(storage, 1, name=name, size=size)
        assert field_errors(refused.value) <= broken
