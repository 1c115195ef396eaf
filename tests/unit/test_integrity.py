"""Nothing referenced can be deleted; the refusal names what still
refers to it, and nothing changes. Unreferenced objects delete cleanly."""

from __future__ import annotations

import re
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import migration_core as core
from adapters.memory import MemoryStorage

from .support import FakeClock, owned_storage

OWNER = 1
DRIVES = ["C:\\", "D:\\", "E:\\", "/var", "/home"]


@attrs.frozen
class Plan:
    """A random inventory: which credentials each workload and target uses, which
    workload holds each mount point, and what each migration refers to."""

    credentials: int
    mount_point_holder: list[int | None]  # workload index per mount point
    workload_credentials: list[int]
    target_credentials: list[int]
    migrations: list[tuple[int, int, list[int]]]  # (workload, target, selected mount points)
    dropped_after: list[int]  # mount points later taken out of their workload


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    credentials = draw(st.integers(1, 3))
    workloads = draw(st.integers(0, 3))
    targets = draw(st.integers(0, 2))
    holders = draw(
        st.lists(st.none() | st.integers(0, workloads - 1) if workloads else st.none(),
                 min_size=len(DRIVES), max_size=len(DRIVES))
    )
    workload_credentials = draw(st.lists(st.integers(0, credentials - 1), min_size=workloads,
                                         max_size=workloads))
    target_credentials = draw(st.lists(st.integers(0, credentials - 1), min_size=targets,
                                       max_size=targets))
    sources = [w for w in range(workloads) if w in holders]
    migrations = []
    if sources and targets:
        for _ in range(draw(st.integers(0, 3))):
            source = draw(st.sampled_from(sources))
            held = [m for m, holder in enumerate(holders) if holder == source]
            selected = draw(st.lists(st.sampled_from(held), min_size=1, unique=True))
            migrations.append((source, draw(st.integers(0, targets - 1)), selected))
    selected_anywhere = sorted({m for _, _, selected in migrations for m in selected})
    dropped = draw(st.lists(st.sampled_from(selected_anywhere), unique=True)) if selected_anywhere else []
    return Plan(credentials, holders, workload_credentials, target_credentials, migrations, dropped)


@attrs.define
class Built:
    ids: dict[str, list[int]]
    # (kind, id) -> [(referring kind, referring id)], as the plan says
    referrers: dict[tuple[str, int], list[tuple[str, int]]]


def _build(storage: MemoryStorage, plan: Plan) -> Built:
    refs: dict[tuple[str, int], list[tuple[str, int]]] = {}

    def refer(kind: str, entity_id: int, by: tuple[str, int]) -> None:
        refs.setdefault((kind, entity_id), [])
        if by not in refs[(kind, entity_id)]:
            refs[(kind, entity_id)].append(by)

    credentials = [
        core.create_credentials(storage, OWNER, username=f"user{i}", password="pw").id
        for i in range(plan.credentials)
    ]
    mount_points = [
        core.create_mount_point(storage, OWNER, name=name, size=1).id for name in DRIVES
    ]
    storages: list[list[int]] = [[] for _ in plan.workload_credentials]
    for mount_point, holder in enumerate(plan.mount_point_holder):
        if holder is not None:
            storages[holder].append(mount_points[mount_point])
    workloads = []
    for index, credentials_index in enumerate(plan.workload_credentials):
        workload = core.create_workload(
            storage, OWNER, ip=f"10.0.0.{index + 1}",
            credentials_id=credentials[credentials_index], mount_point_ids=storages[index],
        )
        workloads.append(workload.id)
        refer("credentials", credentials[credentials_index], ("workload", workload.id))
    targets = []
    for credentials_index in plan.target_credentials:
        target = core.create_migration_target(
            storage, OWNER, cloud_type="aws", cloud_credentials_id=credentials[credentials_index]
        )
        targets.append(target.id)
        refer("credentials", credentials[credentials_index], ("migration target", target.id))
    migrations = []
    for source, target_index, selected in plan.migrations:
        migration = core.create_migration(
            storage, OWNER, clock=FakeClock(), source_id=workloads[source],
            migration_target_id=targets[target_index],
            selected_mount_point_ids=[mount_points[m] for m in selected],
        )
        migrations.append(migration.id)
        refer("workload", workloads[source], ("migration", migration.id))
        refer("migration target", targets[target_index], ("migration", migration.id))
        for m in selected:
            refer("mount point", mount_points[m], ("migration", migration.id))
    for m in plan.dropped_after:
        holder = plan.mount_point_holder[m]
        assert holder is not None
        storages[holder].remove(mount_points[m])
        core.update_workload(storage, OWNER, workloads[holder], mount_point_ids=storages[holder])
    for holder, held in enumerate(storages):
        for mount_point in held:
            refer("mount point", mount_point, ("workload", workloads[holder]))
    ids = {
        "credentials": credentials,
        "mount point": mount_points,
        "workload": workloads,
        "migration target": targets,
        "migration": migrations,
    }
    return Built(ids, refs)


DELETE = {
    "credentials": core.delete_credentials,
    "mount point": core.delete_mount_point,
    "workload": core.delete_workload,
    "migration target": core.delete_migration_target,
    "migration": core.delete_migration,
}
GET = {
    "credentials": core.get_credentials,
    "mount point": core.get_mount_point,
    "workload": core.get_workload,
    "migration target": core.get_migration_target,
    "migration": core.get_migration,
}


def _snapshot(storage: MemoryStorage, built: Built) -> dict[tuple[str, int], Any]:
    return {
        (kind, i): GET[kind](storage, OWNER, i) for kind, ids in built.ids.items() for i in ids
    }


def _named_referrers(message: str) -> set[tuple[str, int]]:
    """(noun, id) pairs a refusal names, e.g. "workloads 3, 4; migration 7"."""
    named = set()
    for noun, numbers in re.findall(r"(migration targets?|workloads?|migrations?) ([\d, ]*\d)",
                                    message):
        for number in numbers.split(","):
            named.add((noun.rstrip("s"), int(number)))
    return named


@given(plans(), st.sampled_from(list(DELETE)), st.integers(0, 4))
def test_a_referenced_object_is_never_deleted_and_the_refusal_names_its_referrers(
    plan: Plan, kind: str, index: int
) -> None:
    storage = owned_storage()
    built = _build(storage, plan)
    if not built.ids[kind]:
        return
    victim = built.ids[kind][index % len(built.ids[kind])]
    referrers = built.referrers.get((kind, victim), [])
    before = _snapshot(storage, built)
    if referrers:
        with pytest.raises(core.Conflict) as refused:
            DELETE[kind](storage, OWNER, victim)
        assert _named_referrers(refused.value.message) == set(referrers)
        assert _snapshot(storage, built) == before
    else:
        DELETE[kind](storage, OWNER, victim)
        with pytest.raises(core.NotFound):
            GET[kind](storage, OWNER, victim)
        del before[(kind, victim)]
        remaining = attrs.evolve(
            built, ids={k: [i for i in v if (k, i) != (kind, victim)] for k, v in built.ids.items()}
        )
        assert _snapshot(storage, remaining) == before


@given(plans())
def test_everything_deletes_once_its_referrers_are_gone(plan: Plan) -> None:
    """Deleting in reverse order of reference always succeeds and empties the owner."""
    storage = owned_storage()
    built = _build(storage, plan)
    for kind in ["migration", "migration target", "workload", "mount point", "credentials"]:
        for entity_id in built.ids[kind]:
            DELETE[kind](storage, OWNER, entity_id)
    assert core.list_credentials(storage, OWNER, core.ListQuery()).count == 0
    assert core.list_mount_points(storage, OWNER, core.ListQuery()).count == 0


SIX_REFERENCES = [
    "workload.credentials",
    "migration_target.cloud_credentials",
    "workload.storage",
    "migration.source",
    "migration.migration_target",
    "migration.selected_mount_points",
]


@given(st.sampled_from(SIX_REFERENCES))
def test_each_kind_of_reference_blocks_the_delete_of_what_it_points_at(reference: str) -> None:
    """Each reference alone, so every one is exercised on every run."""
    storage = owned_storage()
    credentials = [
        core.create_credentials(storage, OWNER, username=f"u{i}", password="pw").id
        for i in range(2)
    ]
    system, data = (
        core.create_mount_point(storage, OWNER, name=name, size=1).id for name in DRIVES[:2]
    )
    workload = core.create_workload(
        storage, OWNER, ip="10.0.0.1", credentials_id=credentials[0],
        mount_point_ids=[system, data],
    ).id
    target = core.create_migration_target(
        storage, OWNER, cloud_type="aws", cloud_credentials_id=credentials[1]
    ).id
    migration = core.create_migration(
        storage, OWNER, clock=FakeClock(), source_id=workload, migration_target_id=target,
        selected_mount_point_ids=[system, data],
    ).id
    if reference == "migration.selected_mount_points":
        core.update_workload(storage, OWNER, workload, mount_point_ids=[system])
    victim, referrer = {
        "workload.credentials": (("credentials", credentials[0]), ("workload", workload)),
        "migration_target.cloud_credentials": (
            ("credentials", credentials[1]), ("migration target", target)
        ),
        "workload.storage": (("mount point", system), ("workload", workload)),
        "migration.source": (("workload", workload), ("migration", migration)),
        "migration.migration_target": (("migration target", target), ("migration", migration)),
        "migration.selected_mount_points": (("mount point", data), ("migration", migration)),
    }[reference]
    kind, victim_id = victim
    before = GET[kind](storage, OWNER, victim_id)
    with pytest.raises(core.Conflict) as refused:
        DELETE[kind](storage, OWNER, victim_id)
    assert referrer in _named_referrers(refused.value.message)
    assert GET[kind](storage, OWNER, victim_id) == before
