"""Every object has an owner and is invisible to other users, both as
itself and as a reference."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import migration_core as core
from adapters.memory import MemoryStorage

from .support import FakeClock, Inventory, ManualRunner, build_inventory, field_errors, owned_storage

KINDS = ["credentials", "mount_point", "workload", "migration_target", "migration"]

# A harmless change of each kind, as keyword arguments of its update use case.
CHANGES: dict[str, Callable[[Inventory], dict[str, Any]]] = {
    "credentials": lambda inv: {"domain": "elsewhere"},
    "mount_point": lambda inv: {"size": 7},
    "workload": lambda inv: {"mount_point_ids": []},
    "migration_target": lambda inv: {"cloud_type": "azure"},
    "migration": lambda inv: {"selected_mount_point_ids": inv.ids_named("C:\\"), "clock": FakeClock()},
}


def _world(storage: MemoryStorage) -> tuple[Inventory, Inventory, dict[str, int]]:
    """Two owners with the same inventory; the first one's object ids by kind."""
    victim = build_inventory(storage, owner_id=1)
    intruder = build_inventory(storage, owner_id=2)
    migration = victim.migration()
    intruder.migration()
    ids = {
        "credentials": victim.credentials.id,
        "mount_point": victim.mount_points[1].id,
        "workload": victim.workload.id,
        "migration_target": victim.target.id,
        "migration": migration.id,
    }
    return victim, intruder, ids


def _everything(storage: MemoryStorage, owner: int) -> list[list[Any]]:
    query = core.ListQuery(limit=1000)
    return [
        list(core.list_credentials(storage, owner, query).items),
        list(core.list_mount_points(storage, owner, query).items),
        list(core.list_workloads(storage, owner, query).items),
        list(core.list_migration_targets(storage, owner, query).items),
        list(core.list_migrations(storage, owner, query).items),
    ]


@given(st.sampled_from(KINDS), st.sampled_from(["get", "update", "delete"]))
def test_another_owners_object_cannot_be_read_changed_or_deleted(kind: str, action: str) -> None:
    storage = owned_storage()
    victim, intruder, ids = _world(storage)
    before = _everything(storage, victim.owner_id)
    with pytest.raises(core.NotFound):
        if action == "get":
            getattr(core, f"get_{kind}")(storage, intruder.owner_id, ids[kind])
        elif action == "update":
            getattr(core, f"update_{kind}")(
                storage, intruder.owner_id, ids[kind], **CHANGES[kind](intruder)
            )
        else:
            getattr(core, f"delete_{kind}")(storage, intruder.owner_id, ids[kind])
    assert _everything(storage, victim.owner_id) == before
    # The owner still reaches it.
    assert getattr(core, f"get_{kind}")(storage, victim.owner_id, ids[kind]).id == ids[kind]


@given(st.integers(1, 4), st.sampled_from(["username", "name", "ip", "cloud_type", "state"]))
def test_lists_hold_only_the_callers_objects(owners: int, filtered_on: str) -> None:
    storage = owned_storage()
    for owner in range(1, owners + 1):
        build_inventory(storage, owner_id=owner).migration()
    filters = {
        "username": ("credentials", {"username": "admin"}),
        "name": ("mount_points", {"name": "C:\\"}),
        "ip": ("workloads", {"ip": "10.0.0.1"}),
        "cloud_type": ("migration_targets", {"cloud_type": "aws"}),
        "state": ("migrations", {"state": "not_started"}),
    }
    for owner in range(1, owners + 2):
        for kinds in _everything(storage, owner):
            assert {item.owner_id for item in kinds} <= {owner}
        listing, query = filters[filtered_on]
        page = getattr(core, f"list_{listing}")(storage, owner, core.ListQuery(filters=query))
        assert page.count == (1 if owner <= owners else 0)
        assert all(item.owner_id == owner for item in page.items)


@given(st.sampled_from(["run", "cancel"]))
def test_another_owners_migration_cannot_be_run_or_cancelled(action: str) -> None:
    storage = owned_storage()
    victim, intruder, ids = _world(storage)
    clock, runner = FakeClock(), ManualRunner()
    if action == "cancel":
        core.run_migration(storage, clock, runner, victim.owner_id, ids["migration"])
    before = core.get_migration(storage, victim.owner_id, ids["migration"])
    with pytest.raises(core.NotFound):
        if action == "run":
            core.run_migration(storage, clock, runner, intruder.owner_id, ids["migration"])
        else:
            core.cancel_run(storage, clock, runner, intruder.owner_id, ids["migration"])
    assert core.get_migration(storage, victim.owner_id, ids["migration"]) == before


REFERENCES = [
    "workload.credentials",
    "workload.storage",
    "migration_target.cloud_credentials",
    "migration.source",
    "migration.migration_target",
    "migration.selected_mount_points",
]


def _refer(storage: MemoryStorage, me: Inventory, other: Inventory, reference: str, *,
           update: bool) -> None:
    """Create (or update) one of `me`'s objects so that `reference` points at `other`'s."""
    owner = me.owner_id
    kind, field = reference.split(".")
    if kind == "workload":
        spare = core.create_mount_point(storage, owner, name="Z:\\", size=1)
        fields = {"credentials_id": me.credentials.id, "mount_point_ids": [spare.id]}
        fields.update(
            {"credentials_id": other.credentials.id}
            if field == "credentials"
            else {"mount_point_ids": [spare.id, other.mount_points[1].id]}
        )
        if update:
            core.update_workload(storage, owner, me.workload.id, **fields)
        else:
            core.create_workload(storage, owner, ip="192.0.2.9", **fields)
    elif kind == "migration_target":
        if update:
            core.update_migration_target(
                storage, owner, me.target.id, cloud_credentials_id=other.credentials.id
            )
        else:
            core.create_migration_target(
                storage, owner, cloud_type="vcloud", cloud_credentials_id=other.credentials.id
            )
    else:
        fields = {
            "source_id": me.workload.id,
            "migration_target_id": me.target.id,
            "selected_mount_point_ids": me.ids_named("C:\\"),
        }
        if field == "source":
            fields["source_id"] = other.workload.id
        elif field == "migration_target":
            fields["migration_target_id"] = other.target.id
        else:
            fields["selected_mount_point_ids"] = [*me.ids_named("C:\\"), other.mount_points[1].id]
        if update:
            existing = me.migration()
            core.update_migration(storage, owner, existing.id, clock=FakeClock(), **fields)
        else:
            core.create_migration(storage, owner, clock=FakeClock(), **fields)


@given(st.sampled_from(REFERENCES), st.booleans())
def test_a_reference_to_another_owners_object_is_invalid_input_naming_the_field(
    reference: str, update: bool
) -> None:
    storage = owned_storage()
    victim, intruder, _ = _world(storage)
    before = _everything(storage, victim.owner_id)
    with pytest.raises(core.InvalidInput) as refused:
        _refer(storage, intruder, victim, reference, update=update)
    assert field_errors(refused.value) == {reference.split(".")[1]}
    assert _everything(storage, victim.owner_id) == before
