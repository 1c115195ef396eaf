"""What a workload says of its machine (port, os, root, the pinned host key)
and what a target says of the machine that receives a copy (host, root):
the values each field takes, what an update keeps, and the references."""

from __future__ import annotations

import posixpath
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import migration_core as core
from migration_core.entities import posix_root

from ..ssh_keys import keygen
from .support import FakeClock, build_inventory, field_errors, owned_storage

PINNED = "SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8"


def refused_on(call: Any, *args: Any, **kwargs: Any) -> set[str]:
    with pytest.raises(core.InvalidInput) as refused:
        call(*args, **kwargs)
    return field_errors(refused.value)


# --- port and os ----------------------------------------------------------------


@given(st.one_of(st.integers(-70_000, 70_000), st.booleans(), st.floats(), st.text(max_size=3), st.none()))
def test_a_port_is_an_integer_from_1_to_65535(port: Any) -> None:
    inventory = build_inventory()
    storage, owner = inventory.storage, inventory.owner_id
    valid = isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535
    if valid:
        assert core.update_workload(storage, owner, inventory.workload.id, port=port).port == port
    elif port is not None:  # None leaves it as it is
        assert refused_on(core.update_workload, storage, owner, inventory.workload.id, port=port) == {"port"}
        assert refused_on(
            core.create_workload, storage, owner, ip="10.9.9.9", credentials_id=inventory.credentials.id, port=port
        ) == {"port"}
        assert core.get_workload(storage, owner, inventory.workload.id).port == 22


def test_a_new_workload_has_port_22_no_os_root_slash_and_no_host_key() -> None:
    workload = build_inventory().workload
    assert (workload.port, workload.os, workload.root, workload.host_key) == (22, None, "/", None)


@given(st.one_of(st.sampled_from(["windows", "linux", "Linux", "LINUX", "macos", "", " linux"]), st.text(max_size=8)))
def test_an_os_is_windows_linux_or_unknown(os: str) -> None:
    inventory = build_inventory()
    storage, owner, workload_id = inventory.storage, inventory.owner_id, inventory.workload.id
    if os in ("windows", "linux"):
        assert core.update_workload(storage, owner, workload_id, os=os).os is core.OperatingSystem(os)
        assert core.update_workload(storage, owner, workload_id, os=None).os is None
    else:
        assert refused_on(core.update_workload, storage, owner, workload_id, os=os) == {"os"}
        assert core.get_workload(storage, owner, workload_id).os is None


# --- roots ----------------------------------------------------------------------

segments = st.sampled_from(["", ".", "..", "a", "b c", "ünï", "-x", "$(id)", ";", "a\\b", "..."])


@given(st.lists(segments, max_size=8), st.booleans())
def test_a_root_is_stored_as_an_absolute_path_in_normal_form(parts: list[str], trailing: bool) -> None:
    path = "/" + "/".join(parts) + ("/" if trailing else "")
    root = posix_root(path)
    assert root.startswith("/") and "//" not in root
    assert root == "/" or not root.endswith("/")
    assert not {".", ".."} & set(root.split("/"))
    assert posix_root(root) == root
    # A path with nothing to resolve keeps its names, in order.
    if not {".", ".."} & set(parts):
        assert root == "/" + "/".join(p for p in parts if p)
    # What `..` means is what it means for a path (no machine is asked).
    assert root == "/" + posixpath.normpath(path).lstrip("/")


@given(st.text(max_size=12).filter(lambda text: not text.startswith("/")))
def test_a_root_that_is_not_absolute_is_refused(text: str) -> None:
    inventory = build_inventory()
    assert refused_on(core.update_workload, inventory.storage, 1, inventory.workload.id, root=text) == {"root"}
    assert core.get_workload(inventory.storage, 1, inventory.workload.id).root == "/"


def test_a_root_holding_a_nul_byte_is_refused() -> None:
    inventory = build_inventory()
    assert refused_on(core.update_workload, inventory.storage, 1, inventory.workload.id, root="/mnt/\x00x") == {
        "root"
    }


def test_a_workload_keeps_its_root_normalised() -> None:
    inventory = build_inventory()
    workload = core.update_workload(inventory.storage, 1, inventory.workload.id, root="//mnt/./snap//")
    assert workload.root == "/mnt/snap"
    assert core.get_workload(inventory.storage, 1, workload.id).root == "/mnt/snap"


# --- the pinned host key --------------------------------------------------------


def pin(inventory: Any, key: str = PINNED) -> core.Workload:
    """Pin a host key as the machine use cases do: straight through storage."""
    with inventory.storage.unit_of_work() as uow:
        workload = uow.workloads.get(inventory.owner_id, inventory.workload.id)
        pinned = uow.workloads.update(attrs.evolve(workload, host_key=key))
        uow.commit()
    return pinned


def test_an_update_keeps_the_pinned_host_key_and_the_user_may_only_clear_it() -> None:
    inventory = build_inventory()
    storage, owner, workload_id = inventory.storage, inventory.owner_id, inventory.workload.id
    pin(inventory)
    changed = core.update_workload(storage, owner, workload_id, port=2222, os="linux", root="/srv")
    assert (changed.port, changed.os, changed.root, changed.host_key) == (
        2222, core.OperatingSystem.LINUX, "/srv", PINNED,
    )
    for other in ("SHA256:another", "", 7):
        assert refused_on(core.update_workload, storage, owner, workload_id, host_key=other) == {"host_key"}
    assert core.get_workload(storage, owner, workload_id).host_key == PINNED
    assert core.update_workload(storage, owner, workload_id, host_key=None).host_key is None
    kept = core.get_workload(storage, owner, workload_id)
    assert (kept.port, kept.os, kept.root, kept.host_key) == (2222, core.OperatingSystem.LINUX, "/srv", None)


def test_a_refused_host_key_changes_nothing_else_either() -> None:
    inventory = build_inventory()
    with pytest.raises(core.InvalidInput):
        core.update_workload(inventory.storage, 1, inventory.workload.id, port=2200, host_key="SHA256:x")
    assert core.get_workload(inventory.storage, 1, inventory.workload.id).port == 22


# --- credentials ----------------------------------------------------------------


def test_credentials_keep_their_key_unless_it_is_given_or_removed() -> None:
    key = keygen("ed25519", "-t", "ed25519")
    storage = owned_storage()
    created = core.create_credentials(storage, 1, username="deploy", private_key=key)
    assert created.has_private_key and created.password == ""
    renamed = core.update_credentials(storage, 1, created.id, username="ops")
    assert renamed.private_key == key
    # Taking the key away needs a password in its place.
    assert refused_on(core.update_credentials, storage, 1, created.id, private_key="") == {"password"}
    swapped = core.update_credentials(storage, 1, created.id, password="s3cret", private_key="")
    assert (swapped.password, swapped.has_private_key) == ("s3cret", False)
    assert refused_on(core.update_credentials, storage, 1, created.id, private_key="garbage") == {"private_key"}
    assert core.get_credentials(storage, 1, created.id) == swapped


# --- a target's host ------------------------------------------------------------


def test_a_target_with_a_host_needs_a_root_and_one_without_has_none() -> None:
    inventory = build_inventory()
    storage, owner = inventory.storage, inventory.owner_id
    login, host = inventory.credentials.id, inventory.workload.id

    def create(**fields: Any) -> core.MigrationTarget:
        return core.create_migration_target(storage, owner, cloud_type="aws", cloud_credentials_id=login, **fields)

    target = create(host_id=host, root="/srv/landing/")
    assert (target.host_id, target.root) == (host, "/srv/landing")
    assert refused_on(create, host_id=host) == {"root"}
    assert refused_on(create, root="/srv") == {"root"}
    assert refused_on(create, host_id=host, root="srv") == {"root"}
    assert refused_on(create, host_id=host + 1000, root="/srv") == {"host"}
    listed = core.list_migration_targets(storage, owner, core.ListQuery())
    assert [t.id for t in listed.items] == [inventory.target.id, target.id]


def test_a_host_is_a_workload_of_the_same_owner() -> None:
    storage = owned_storage()
    alice, bob = build_inventory(storage, owner_id=1), build_inventory(storage, owner_id=2, ip="10.0.0.2")
    assert refused_on(
        core.create_migration_target, storage, 1, cloud_type="aws",
        cloud_credentials_id=alice.credentials.id, host_id=bob.workload.id, root="/srv",
    ) == {"host"}
    assert refused_on(
        core.update_migration_target, storage, 1, alice.target.id, host_id=bob.workload.id, root="/srv"
    ) == {"host"}
    assert core.get_migration_target(storage, 1, alice.target.id).host_id is None


def test_an_update_keeps_the_host_and_taking_it_away_takes_its_root() -> None:
    inventory = build_inventory()
    storage, owner, target_id = inventory.storage, inventory.owner_id, inventory.target.id
    hosted = core.update_migration_target(storage, owner, target_id, host_id=inventory.workload.id, root="/srv")
    assert core.update_migration_target(storage, owner, target_id, cloud_type="azure").host_id == hosted.host_id
    assert core.update_migration_target(storage, owner, target_id, root="/data").root == "/data"
    assert refused_on(core.update_migration_target, storage, owner, target_id, root=None) == {"root"}
    assert refused_on(core.update_migration_target, storage, owner, target_id, host_id=None, root="/x") == {"root"}
    simulated = core.update_migration_target(storage, owner, target_id, host_id=None)
    assert (simulated.host_id, simulated.root, simulated.cloud_type) == (None, None, core.CloudType.AZURE)


def test_a_workload_that_is_a_targets_host_cannot_be_deleted() -> None:
    inventory = build_inventory(volumes=())
    storage, owner = inventory.storage, inventory.owner_id
    host = inventory.workload.id
    core.update_migration_target(storage, owner, inventory.target.id, host_id=host, root="/srv")
    with pytest.raises(core.Conflict) as refused:
        core.delete_workload(storage, owner, host)
    assert refused.value.message == f"Workload {host} is still referred to by migration target {inventory.target.id}."
    assert core.get_workload(storage, owner, host) == inventory.workload
    core.update_migration_target(storage, owner, inventory.target.id, host_id=None)
    core.delete_workload(storage, owner, host)
    with pytest.raises(core.NotFound):
        core.get_workload(storage, owner, host)


# --- the inventory ----------------------------------------------------------------


def test_an_import_keeps_a_logins_private_key_even_when_it_copies_the_login() -> None:
    """A row's login shared with something else is copied, not changed in
    place: the copy keeps the key, which the file does not carry."""
    key = keygen("ed25519", "-t", "ed25519")
    storage = owned_storage()
    login = core.create_credentials(storage, 1, username="deploy", private_key=key)
    workload = core.create_workload(storage, 1, ip="10.0.0.1", credentials_id=login.id, os="linux", root="/srv")
    core.create_migration_target(storage, 1, cloud_type="aws", cloud_credentials_id=login.id)
    rows = core.export_inventory(storage, 1)
    assert (rows[0].password, rows[0].port, rows[0].os, rows[0].root) == ("", 22, "linux", "/srv")
    unchanged = core.import_inventory(storage, FakeClock(), 1, rows)
    assert (unchanged.created, unchanged.updated, unchanged.unchanged) == (0, 0, 1)

    report = core.import_inventory(storage, FakeClock(), 1, [attrs.evolve(rows[0], domain="CORP")])
    assert (report.created, report.updated, report.unchanged) == (0, 1, 0)
    moved = core.get_workload(storage, 1, workload.id)
    assert moved.credentials_id != login.id
    copied = core.get_credentials(storage, 1, moved.credentials_id)
    assert (copied.username, copied.domain, copied.private_key, copied.password) == ("deploy", "CORP", key, "")
    assert core.get_credentials(storage, 1, login.id) == login
