"""What a migration may select, and the system-volume rule at run time: `C:\\`,
or `/` for a source whose os is linux."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import migration_core as core
from migration_core.entities import volume_key

from .support import (
    FakeClock,
    ManualRunner,
    Volume,
    build_inventory,
    field_errors,
    spellings,
    stems,
    system_volume_spellings,
    volume_identity,
)

SOURCE = [Volume("C:\\", 10), Volume("D:\\", 20), Volume("/var", 30), Volume("E:", 0)]


@given(st.lists(st.integers(0, 6), max_size=7), st.booleans())
def test_a_selection_is_non_empty_without_duplicates_and_within_the_source(
    positions: list[int], on_update: bool
) -> None:
    inventory = build_inventory(volumes=SOURCE)
    storage, owner = inventory.storage, inventory.owner_id
    outside = [core.create_mount_point(storage, owner, name=n, size=1) for n in ("F:\\", "G:\\")]
    pool = [mp.id for mp in inventory.mount_points] + [mp.id for mp in outside] + [9999]
    selected = [pool[p] for p in positions]
    valid = bool(selected) and len(set(selected)) == len(selected) and all(p < 4 for p in positions)

    def attempt() -> core.Migration:
        if not on_update:
            return inventory.migration(selected)
        existing = inventory.migration(inventory.ids_named("C:\\"))
        return core.update_migration(
            storage, owner, existing.id, clock=FakeClock(), selected_mount_point_ids=selected
        )

    if valid:
        assert attempt().selected_mount_point_ids == tuple(selected)
    else:
        with pytest.raises(core.InvalidInput) as refused:
            attempt()
        assert field_errors(refused.value) == {"selected_mount_points"}
        migrations = core.list_migrations(storage, owner, core.ListQuery()).items
        assert [m.selected_mount_point_ids for m in migrations] == (
            [tuple(inventory.ids_named("C:\\"))] if on_update else []
        )


@st.composite
def sources(draw: st.DrawFn) -> list[str]:
    """Mount point names of one workload (distinct volumes), maybe with a `C:\\`."""
    names = draw(
        st.lists(stems, min_size=1, max_size=5, unique_by=volume_identity).map(
            lambda found: [n for n in found if volume_identity(n) != "c:"]
        )
    )
    if draw(st.booleans()) or not names:
        system = draw(system_volume_spellings)
        names.insert(draw(st.integers(0, len(names))), system)
    return names


@given(sources(), st.sampled_from([None, "windows"]), st.data())
def test_a_migration_runs_only_when_volume_c_is_selected(
    names: list[str], os: str | None, data: st.DataObject
) -> None:
    """Of a windows source, or one whose os is unknown."""
    inventory = build_inventory(volumes=[Volume(n, 1) for n in names])
    storage, owner = inventory.storage, inventory.owner_id
    core.update_workload(storage, owner, inventory.workload.id, os=os)
    chosen = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
    migration = inventory.migration(inventory.ids_named(*chosen))
    runner = ManualRunner()
    if any(volume_identity(n) == "c:" for n in chosen):
        started = core.run_migration(storage, FakeClock(), runner, owner, migration.id)
        assert started.state is core.MigrationState.RUNNING
        assert runner.launched == [migration.id]
    else:
        with pytest.raises(core.Conflict) as refused:
            core.run_migration(storage, FakeClock(), runner, owner, migration.id)
        assert "C:\\" in refused.value.message
        assert core.get_migration(storage, owner, migration.id) == migration
        assert runner.launched == []


@given(sources(), st.booleans(), st.data())
def test_a_linux_source_runs_only_when_volume_root_is_selected(
    names: list[str], with_root: bool, data: st.DataObject
) -> None:
    names = [*names, "/"] if with_root else names  # beside C:\\ maybe: that one does not count
    inventory = build_inventory(volumes=[Volume(n, 1) for n in names])
    storage, owner = inventory.storage, inventory.owner_id
    core.update_workload(storage, owner, inventory.workload.id, os="linux")
    chosen = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
    migration = inventory.migration(inventory.ids_named(*chosen))
    runner = ManualRunner()
    if "/" in chosen:
        started = core.run_migration(storage, FakeClock(), runner, owner, migration.id)
        assert started.state is core.MigrationState.RUNNING
    else:
        with pytest.raises(core.Conflict) as refused:
            core.run_migration(storage, FakeClock(), runner, owner, migration.id)
        assert refused.value.message == "A migration may not run unless volume / is selected."
        assert core.get_migration(storage, owner, migration.id) == migration
        assert runner.launched == []


@given(system_volume_spellings, stems)
def test_volume_c_is_matched_in_every_spelling_and_nothing_else_is(
    system: str, other: str
) -> None:
    assert volume_key(system) == volume_key("C:\\")
    if volume_identity(other) != "c:":
        assert volume_key(other) != volume_key("C:\\")


@given(stems, stems, st.data())
def test_volume_keys_agree_with_case_and_trailing_separators(
    first: str, second: str, data: st.DataObject
) -> None:
    spelled = data.draw(spellings(first))
    assert volume_key(spelled) == volume_key(first)
    same = volume_identity(first) == volume_identity(second)
    assert (volume_key(first) == volume_key(second)) == same


@given(st.integers(0, 2))
def test_at_start_the_selection_is_checked_again_against_the_source(dropped: int) -> None:
    """A selected mount point taken out of the source since: the run is refused."""
    inventory = build_inventory(volumes=SOURCE[:3])
    storage, owner = inventory.storage, inventory.owner_id
    migration = inventory.migration()
    kept = [mp.id for i, mp in enumerate(inventory.mount_points) if i != dropped]
    core.update_workload(storage, owner, inventory.workload.id, mount_point_ids=kept)
    with pytest.raises(core.Conflict) as refused:
        core.run_migration(storage, FakeClock(), ManualRunner(), owner, migration.id)
    assert str(inventory.mount_points[dropped].id) in refused.value.message
    assert core.get_migration(storage, owner, migration.id) == migration
