"""SPEC 2.6: waves group an owner's migrations; running one starts each member
by the rules of a single run and reports each refusal in that run's words;
its state counts members by state and weighs progress by bytes."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import migration_core as core
from migration_core import Conflict, InvalidInput, MigrationState, NotFound
from migration_core.machines import CopyProgress
from migration_core.runs import RunRef, advance_runs, complete_run, start_run

from .support import FakeClock, ManualRunner, Volume, build_inventory, elapsed, owned_storage


def test_a_wave_is_named_and_its_name_is_unique_per_owner() -> None:
    storage = owned_storage()
    with pytest.raises(InvalidInput) as bad:
        core.create_wave(storage, 1, name="")
    assert set(bad.value.errors) == {"name"}
    first = core.create_wave(storage, 1, name="wave 1")
    with pytest.raises(Conflict, match=f"Wave {first.id} is already named 'wave 1'"):
        core.create_wave(storage, 1, name="wave 1")
    core.create_wave(storage, 2, name="wave 1")  # another owner
    second = core.create_wave(storage, 1, name="wave 2")
    with pytest.raises(Conflict, match="already named"):
        core.update_wave(storage, 1, second.id, name="wave 1")


def test_members_are_set_as_listed_and_a_member_of_another_wave_is_refused_naming_it() -> None:
    inventory = build_inventory()
    one, two, three = (inventory.migration() for _ in range(3))
    first = core.create_wave(inventory.storage, 1, name="first", migration_ids=[two.id, one.id])
    assert first.migration_ids == (two.id, one.id)
    assert core.get_migration(inventory.storage, 1, one.id).wave_id == first.id
    with pytest.raises(Conflict, match=f"Migration {one.id} is already in wave {first.id} \\('first'\\)"):
        core.create_wave(inventory.storage, 1, name="second", migration_ids=[three.id, one.id])
    assert core.list_waves(inventory.storage, 1, core.ListQuery()).count == 1
    # Leaving a member out takes it out of the wave.
    core.update_wave(inventory.storage, 1, first.id, migration_ids=[three.id])
    assert core.get_migration(inventory.storage, 1, one.id).wave_id is None
    assert core.get_migration(inventory.storage, 1, three.id).wave_id == first.id
    with pytest.raises(InvalidInput) as bad:
        core.update_wave(inventory.storage, 1, first.id, migration_ids=[three.id + 100])
    assert bad.value.errors == {"migrations": [f"Migration {three.id + 100} does not exist."]}
    with pytest.raises(InvalidInput) as twice:
        core.update_wave(inventory.storage, 1, first.id, migration_ids=[one.id, one.id])
    assert twice.value.errors == {"migrations": [f"Migration {one.id} is listed more than once."]}


def test_a_member_cannot_be_deleted_and_deleting_the_wave_releases_it() -> None:
    inventory = build_inventory()
    migration = inventory.migration()
    wave = core.create_wave(inventory.storage, 1, name="move group", migration_ids=[migration.id])
    with pytest.raises(Conflict, match=f"in wave {wave.id} \\('move group'\\)"):
        core.delete_migration(inventory.storage, 1, migration.id)
    core.delete_wave(inventory.storage, 1, wave.id)
    assert core.get_migration(inventory.storage, 1, migration.id).wave_id is None
    core.delete_migration(inventory.storage, 1, migration.id)
    with pytest.raises(NotFound):
        core.get_wave(inventory.storage, 1, wave.id)


def _fleet(count: int, *, sizes: tuple[int, int] = (100, 300)) -> tuple[core.Storage, list[int]]:
    """`count` workloads, each with its own target and a migration of both volumes."""
    storage = owned_storage()
    ids = []
    for i in range(count):
        inventory = build_inventory(
            storage, ip=f"10.0.0.{i + 1}", volumes=(Volume("C:\\", sizes[0]), Volume("D:\\", sizes[1]))
        )
        ids.append(inventory.migration().id)
    return storage, ids


def test_running_a_wave_starts_what_may_start_and_says_why_for_the_rest() -> None:
    storage, ids = _fleet(4)
    clock, runner = FakeClock(), ManualRunner()
    core.launch_run(storage, clock, runner, 1, ids[0])  # already running
    done = start_run(storage, clock, 1, ids[1])
    complete_run(storage, clock, RunRef.of(done))  # already succeeded
    wave = core.create_wave(storage, 1, name="w", migration_ids=ids)

    outcome = core.run_wave(storage, clock, runner, 1, wave.id)

    assert outcome.started == tuple(ids[2:])
    assert outcome.refused == (
        core.Refusal(ids[0], f"Migration {ids[0]} is already running."),
        core.Refusal(ids[1], f"Migration {ids[1]} has already succeeded."),
    )
    assert runner.launched == [ids[0], *ids[2:]]
    states = [core.get_migration(storage, 1, i).state for i in ids]
    assert states == [MigrationState.RUNNING, MigrationState.SUCCESS, MigrationState.RUNNING, MigrationState.RUNNING]


def test_members_into_one_target_start_once_the_rest_are_refused_as_busy() -> None:
    inventory = build_inventory()
    first, second = inventory.migration(), inventory.migration()
    wave = core.create_wave(inventory.storage, 1, name="w", migration_ids=[first.id, second.id])
    outcome = core.run_wave(inventory.storage, FakeClock(), ManualRunner(), 1, wave.id)
    assert outcome.started == (first.id,)
    assert outcome.refused == (
        core.Refusal(second.id, f"Migration target {inventory.target.id} is busy with migration {first.id}."),
    )


def test_cancelling_a_wave_cancels_its_running_members_only() -> None:
    storage, ids = _fleet(3)
    clock, runner = FakeClock(), ManualRunner()
    wave = core.create_wave(storage, 1, name="w", migration_ids=ids)
    core.launch_run(storage, clock, runner, 1, ids[0])
    core.launch_run(storage, clock, runner, 1, ids[2])
    assert core.cancel_wave(storage, clock, runner, 1, wave.id) == [ids[0], ids[2]]
    assert runner.cancelled == [ids[0], ids[2]]
    assert [core.get_migration(storage, 1, i).error for i in ids] == ["cancelled", None, "cancelled"]
    assert core.cancel_wave(storage, clock, runner, 1, wave.id) == []


def test_the_state_counts_members_and_weighs_progress_by_bytes() -> None:
    storage, ids = _fleet(2, sizes=(100, 300))  # 400 bytes each
    small = build_inventory(storage, ip="10.9.0.1", volumes=(Volume("C:\\", 200),)).migration()
    clock, runner = FakeClock(), ManualRunner()
    wave = core.create_wave(storage, 1, name="w", migration_ids=[*ids, small.id])
    assert core.wave_state(storage, 1, wave.id) == core.WaveState(
        counts={"not_started": 3, "running": 0, "error": 0, "success": 0},
        progress=0,
        bytes_total=1000,
        bytes_copied=0,
        finished=False,
    )
    core.run_wave(storage, clock, runner, 1, wave.id)
    first = RunRef(1, ids[0])
    advance_runs(storage, clock, {first: elapsed(storage, first, 50)})  # 200 of 400 bytes
    complete_run(storage, clock, RunRef(1, small.id))  # 200 of 200
    state = core.wave_state(storage, 1, wave.id)
    assert (state.bytes_copied, state.progress, state.finished) == (400, 40, False)
    assert state.counts == {"not_started": 0, "running": 2, "error": 0, "success": 1}
    core.cancel_wave(storage, clock, runner, 1, wave.id)
    state = core.wave_state(storage, 1, wave.id)
    assert state.finished and state.counts["error"] == 2 and state.progress == 40


@given(st.lists(st.tuples(st.integers(0, 10**12), st.integers(0, 99)), min_size=1, max_size=6))
def test_wave_progress_is_the_byte_weighted_share_and_below_100_until_every_member_succeeds(
    members: list[tuple[int, int]],
) -> None:
    """Each member (one volume of `size` bytes) `elapsed` percent of the way
    through its copy: the wave counts the bytes its members' runs say."""
    storage = owned_storage()
    clock = FakeClock()
    ids = []
    for i, (size, _progress) in enumerate(members):
        inventory = build_inventory(storage, ip=f"10.1.0.{i + 1}", volumes=(Volume("C:\\", size),))
        ids.append(inventory.migration().id)
    wave = core.create_wave(storage, 1, name="w", migration_ids=ids)
    core.run_wave(storage, clock, ManualRunner(), 1, wave.id)
    advance_runs(
        storage, clock, {RunRef(1, i): elapsed(storage, RunRef(1, i), p) for i, (_s, p) in zip(ids, members)}
    )
    state = core.wave_state(storage, 1, wave.id)
    total = sum(size for size, _ in members)
    copied = sum(core.get_run_state(storage, 1, i).bytes_copied for i in ids)
    assert (state.bytes_total, state.bytes_copied) == (total, copied)
    progress = [core.get_migration(storage, 1, i).progress for i in ids]
    expected = 100 * copied // total if total else sum(progress) // len(progress)
    assert state.progress == min(expected, 99)
    for migration_id in ids:
        complete_run(storage, clock, RunRef(1, migration_id))
    done = core.wave_state(storage, 1, wave.id)
    assert (done.progress, done.bytes_copied, done.finished) == (100, total, True)


def test_a_member_without_a_recorded_run_counts_the_bytes_its_own_run_state_shows() -> None:
    """A run state and a wave read a migration's plan in one way: its selected
    volumes in the source's order, at the position its progress says, also
    when an older release left a snapshot without the copy's mark."""
    inventory = build_inventory(volumes=(Volume("C:\\", 100), Volume("D:\\", 300), Volume("E:\\", 50)))
    never_run = inventory.migration(inventory.ids_named("E:\\", "C:\\"))
    legacy = inventory.migration(inventory.ids_named("D:\\", "C:\\"))
    with inventory.storage.unit_of_work() as uow:
        uow.migrations.update(
            attrs.evolve(
                legacy,
                state=MigrationState.ERROR,
                progress=30,
                snapshot=core.TargetVm("10.0.0.1", core.Login("admin", "s3cret!"), (Volume("C:\\", 100),)),
            )
        )
        uow.commit()
    wave = core.create_wave(inventory.storage, 1, name="w", migration_ids=[never_run.id, legacy.id])
    states = [core.get_run_state(inventory.storage, 1, m.id) for m in (never_run, legacy)]
    assert [v.name for v in states[1].volumes] == ["C:\\", "D:\\"]
    assert states[1].bytes_copied == 120  # 30% of the 400 planned bytes
    state = core.wave_state(inventory.storage, 1, wave.id)
    assert state.bytes_total == sum(s.bytes_total for s in states) == 150 + 400
    assert state.bytes_copied == sum(s.bytes_copied for s in states) == 120


@pytest.mark.parametrize("size", [10_000, 0])
def test_a_wave_and_its_one_member_show_the_same_progress_below_100_until_success(size: int) -> None:
    """One rule says "below 100 until success" for a run and for a wave: a
    member all but done (or, of empty volumes, all copied) shows 99 in both,
    its success 100 in both."""
    inventory = build_inventory(volumes=(Volume("C:\\", size),))
    member = inventory.migration()
    wave = core.create_wave(inventory.storage, 1, name="w", migration_ids=[member.id])
    clock = FakeClock()
    core.run_wave(inventory.storage, clock, ManualRunner(), 1, wave.id)
    ref = RunRef(1, member.id)
    almost = CopyProgress(0, size - 1) if size else CopyProgress(1)
    advance_runs(inventory.storage, clock, {ref: almost})
    assert core.get_migration(inventory.storage, 1, member.id).progress == 99
    assert core.wave_state(inventory.storage, 1, wave.id).progress == 99
    complete_run(inventory.storage, clock, ref)
    assert core.get_migration(inventory.storage, 1, member.id).progress == 100
    assert core.wave_state(inventory.storage, 1, wave.id).progress == 100
