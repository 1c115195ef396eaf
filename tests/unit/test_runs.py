"""The life of a run (README, "Running a migration"). Random sequences of every operation that can
touch a migration's state are checked against a model of the allowed moves."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

import migration_core as core
from migration_core.runs import RunRef, advance_runs, complete_run, fail_run

from .support import FakeClock, ManualRunner, Volume, build_inventory, elapsed, position_at

State = core.MigrationState
NOT_STARTED, RUNNING, ERROR, SUCCESS = State.NOT_STARTED, State.RUNNING, State.ERROR, State.SUCCESS


@attrs.define
class Expected:
    state: core.MigrationState = NOT_STARTED
    progress: int = 0
    error: str | None = None


# Runs are drawn more often than the rest, so sequences reach `running` and
# spend time there.
operations = st.one_of(
    st.tuples(st.just("run"), st.integers(0, 1)),
    st.tuples(st.just("run"), st.integers(0, 1)),
    st.tuples(st.just("advance"), st.integers(0, 1), st.integers(-5, 150)),
    st.tuples(st.just("cancel"), st.integers(0, 1)),
    st.tuples(st.just("complete"), st.integers(0, 1)),
    st.tuples(st.just("fail"), st.integers(0, 1)),
    st.tuples(st.just("advance"), st.integers(0, 1), st.integers(-5, 150)),
    st.tuples(st.just("edit"), st.integers(0, 1)),
    st.tuples(st.just("interrupt")),
)


@given(st.lists(operations, max_size=40))
def test_a_migration_moves_only_along_the_allowed_transitions(
    steps: list[tuple[Any, ...]],
) -> None:
    """Two migrations into one target; each operation either makes exactly the
    move the rules of a run allow, or is refused (Conflict) / ignored and changes nothing."""
    inventory = build_inventory(volumes=[Volume("C:\\", 10), Volume("D:\\", 30)])
    storage, owner = inventory.storage, inventory.owner_id
    clock, runner = FakeClock(), ManualRunner()
    migrations = [inventory.migration(), inventory.migration()]
    ids = [m.id for m in migrations]
    model = [Expected(), Expected()]
    everything = [mp.id for mp in inventory.mount_points]
    system_only = inventory.ids_named("C:\\")

    for step in steps:
        clock.advance(1)
        name = step[0]
        before = [core.get_migration(storage, owner, i) for i in ids]
        if name == "interrupt":
            expected_ids = [i for i, m in zip(ids, model) if m.state is RUNNING]
            assert core.mark_interrupted(storage, clock) == expected_ids
            for m in model:
                if m.state is RUNNING:
                    m.state, m.error = ERROR, core.INTERRUPTED
        else:
            index = step[1]
            mine, other = model[index], model[1 - index]
            event(f"{name} from {mine.state.value}")
            ref = RunRef(owner, ids[index])
            if name == "run":
                allowed = mine.state in (NOT_STARTED, ERROR) and other.state is not RUNNING
                if allowed:
                    core.run_migration(storage, clock, runner, owner, ids[index])
                    mine.state, mine.progress, mine.error = RUNNING, 0, None
                else:
                    with pytest.raises(core.Conflict):
                        core.run_migration(storage, clock, runner, owner, ids[index])
            elif name == "cancel":
                if mine.state is RUNNING:
                    core.cancel_run(storage, clock, runner, owner, ids[index])
                    mine.state, mine.error = ERROR, core.CANCELLED
                else:
                    with pytest.raises(core.Conflict):
                        core.cancel_run(storage, clock, runner, owner, ids[index])
            elif name in ("complete", "fail"):
                finished = (
                    complete_run(storage, clock, ref)
                    if name == "complete"
                    else fail_run(storage, clock, ref, "disk unreadable")
                )
                assert (finished is not None) == (mine.state is RUNNING)
                if mine.state is RUNNING and name == "complete":
                    mine.state, mine.progress = SUCCESS, 100
                elif mine.state is RUNNING:
                    mine.state, mine.error = ERROR, "disk unreadable"
            elif name == "advance":
                still = advance_runs(storage, clock, {ref: elapsed(storage, ref, step[2])})
                assert still == ({ref} if mine.state is RUNNING else set())
                if mine.state is RUNNING:
                    volumes = core.get_migration(storage, owner, ids[index]).snapshot.storage
                    percent = position_at([v.size for v in volumes], step[2], 100).progress
                    mine.progress = max(mine.progress, min(99, percent))
            elif name == "edit":
                # Switch between two valid selections, so each edit is a change.
                current = list(before[index].selected_mount_point_ids)
                selection = system_only if current == everything else everything
                if mine.state is RUNNING:
                    with pytest.raises(core.Conflict):
                        core.update_migration(
                            storage, owner, ids[index], clock=clock, selected_mount_point_ids=selection
                        )
                else:
                    core.update_migration(
                        storage, owner, ids[index], clock=clock, selected_mount_point_ids=selection
                    )
                    mine.state, mine.progress, mine.error = NOT_STARTED, 0, None

        for migration_id, expected, previous in zip(ids, model, before):
            actual = core.get_migration(storage, owner, migration_id)
            assert (actual.state, actual.progress, actual.error) == (
                expected.state,
                expected.progress,
                expected.error,
            ), step
            assert (actual.progress == 100) == (actual.state is SUCCESS)
            assert (actual.finished_at is not None) == actual.state.finished
            if name not in ("edit", "run") and actual.state is previous.state:
                assert actual.progress >= previous.progress


@given(st.sampled_from(["complete", "fail", "cancel", "interrupt"]), st.booleans())
def test_editing_a_finished_migration_makes_it_a_new_plan_not_started(
    ending: str, change_target: bool
) -> None:
    inventory = build_inventory()
    storage, owner = inventory.storage, inventory.owner_id
    clock, runner = FakeClock(), ManualRunner()
    migration = core.run_migration(storage, clock, runner, owner, inventory.migration().id)
    ref = RunRef.of(migration)
    {
        "complete": lambda: complete_run(storage, clock, ref),
        "fail": lambda: fail_run(storage, clock, ref, "disk unreadable"),
        "cancel": lambda: core.cancel_run(storage, clock, runner, owner, migration.id),
        "interrupt": lambda: core.mark_interrupted(storage, clock),
    }[ending]()
    assert core.get_migration(storage, owner, migration.id).state.finished
    if change_target:
        other = core.create_migration_target(
            storage, owner, cloud_type="vsphere", cloud_credentials_id=inventory.credentials.id
        )
        edited = core.update_migration(
            storage, owner, migration.id, clock=clock, migration_target_id=other.id
        )
    else:
        edited = core.update_migration(
            storage, owner, migration.id, clock=clock, selected_mount_point_ids=inventory.ids_named("C:\\")
        )
    stored = core.get_migration(storage, owner, migration.id)
    assert stored == edited
    assert (stored.state, stored.progress, stored.error) == (NOT_STARTED, 0, None)
    assert (stored.started_at, stored.finished_at) == (None, None)
    assert core.run_migration(storage, clock, runner, owner, migration.id).state is RUNNING


@given(st.sampled_from(["run", "cancel", "delete", "edit"]))
def test_a_running_migration_cannot_be_run_edited_or_deleted(action: str) -> None:
    inventory = build_inventory()
    storage, owner = inventory.storage, inventory.owner_id
    migration = inventory.migration()
    clock, runner = FakeClock(), ManualRunner()
    running = core.run_migration(storage, clock, runner, owner, migration.id)
    if action == "cancel":
        # The one thing a running migration allows besides finishing.
        assert core.cancel_run(storage, clock, runner, owner, migration.id).state is ERROR
        assert runner.cancelled == [migration.id]
        return
    with pytest.raises(core.Conflict):
        if action == "run":
            core.run_migration(storage, clock, runner, owner, migration.id)
        elif action == "delete":
            core.delete_migration(storage, owner, migration.id)
        else:
            core.update_migration(
                storage, owner, migration.id, clock=clock, selected_mount_point_ids=inventory.ids_named("C:\\")
            )
    assert core.get_migration(storage, owner, migration.id) == running


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=6), st.floats(0.001, 1e4), st.data())
def test_copy_progress_never_goes_down_and_reaches_100_only_at_the_end(
    sizes: list[int], duration: float, data: st.DataObject
) -> None:
    times = sorted(data.draw(st.lists(st.floats(-1.0, duration * 2), min_size=2, max_size=10)))
    progress = [position_at(sizes, t, duration).progress for t in times]
    assert progress == sorted(progress)
    for moment, percent in zip(times, progress):
        assert 0 <= percent <= 100
        assert (percent == 100) == (moment >= duration)
    assert position_at(sizes, 0.0, duration).progress == 0


@given(st.lists(st.integers(1, 1000), min_size=2, max_size=5), st.data())
def test_copy_progress_is_weighted_by_size(sizes: list[int], data: st.DataObject) -> None:
    """When the time of the first k volumes has passed, their share of the bytes is
    copied (one byte a second, so the times are exact)."""
    k = data.draw(st.integers(1, len(sizes) - 1))
    progress = position_at(sizes, float(sum(sizes[:k])), float(sum(sizes))).progress
    assert progress == 100 * sum(sizes[:k]) // sum(sizes)
    assert progress <= 99


@given(st.lists(st.integers(-10, 200), max_size=12))
def test_recorded_progress_never_goes_down_and_stays_below_100_until_success(
    reports: list[int],
) -> None:
    inventory = build_inventory()
    storage, owner = inventory.storage, inventory.owner_id
    clock = FakeClock()
    migration = core.run_migration(storage, clock, ManualRunner(), owner, inventory.migration().id)
    ref = RunRef.of(migration)
    seen = [0]
    for report in reports:
        advance_runs(storage, clock, {ref: elapsed(storage, ref, report)})
        seen.append(core.get_migration(storage, owner, migration.id).progress)
    assert seen == sorted(seen)
    # C:\ and D:\ hold 400 bytes: each percent of the time is four bytes.
    assert max(seen) == max([0, *(min(99, max(r, 0)) for r in reports)])
    complete_run(storage, clock, ref)
    assert core.get_migration(storage, owner, migration.id).progress == 100


STARTS = ["not_started", "running", "success", "failed", "cancelled", "interrupted", "target_busy"]
ACTIONS = ["run", "cancel", "complete", "fail", "advance", "interrupt", "edit", "delete"]
# What each action makes of a migration in each state: (state, error) after it,
# "refused" (Conflict, nothing changes), or "same" (ignored, nothing changes).
STARTABLE_FROM = {"not_started", "failed", "cancelled", "interrupted"}


def _expected(start: str, action: str) -> tuple[core.MigrationState, str | None] | str | None:
    running = start == "running"
    if action == "run":
        return (RUNNING, None) if start in STARTABLE_FROM else "refused"
    if action == "cancel":
        return (ERROR, core.CANCELLED) if running else "refused"
    if action in ("complete", "fail", "advance", "interrupt"):
        if not running:
            return "same"
        return {
            "complete": (SUCCESS, None),
            "fail": (ERROR, "disk unreadable"),
            "advance": (RUNNING, None),
            "interrupt": (ERROR, core.INTERRUPTED),
        }[action]
    if action == "edit":
        return "refused" if running else (NOT_STARTED, None)
    return "refused" if running else None  # delete: gone


@given(st.sampled_from(STARTS), st.sampled_from(ACTIONS))
def test_each_action_from_each_state_makes_exactly_the_allowed_move(
    start: str, action: str
) -> None:
    """What each action makes of a migration in each state (`_expected`): one cell per example."""
    inventory = build_inventory()
    storage, owner = inventory.storage, inventory.owner_id
    clock, runner = FakeClock(), ManualRunner()
    migration, rival = inventory.migration(), inventory.migration()
    ref = RunRef.of(migration)
    if start == "target_busy":
        core.run_migration(storage, clock, runner, owner, rival.id)
    elif start != "not_started":
        core.run_migration(storage, clock, runner, owner, migration.id)
        advance_runs(storage, clock, {ref: elapsed(storage, ref, 30)})
        if start == "success":
            complete_run(storage, clock, ref)
        elif start == "failed":
            fail_run(storage, clock, ref, "network down")
        elif start == "cancelled":
            core.cancel_run(storage, clock, runner, owner, migration.id)
        elif start == "interrupted":
            core.mark_interrupted(storage, clock)
    before = core.get_migration(storage, owner, migration.id)
    clock.advance(5)

    def act() -> object:
        if action == "run":
            return core.run_migration(storage, clock, runner, owner, migration.id)
        if action == "cancel":
            return core.cancel_run(storage, clock, runner, owner, migration.id)
        if action == "complete":
            return complete_run(storage, clock, ref)
        if action == "fail":
            return fail_run(storage, clock, ref, "disk unreadable")
        if action == "advance":
            return advance_runs(storage, clock, {ref: elapsed(storage, ref, 60)})
        if action == "interrupt":
            return core.mark_interrupted(storage, clock)
        if action == "edit":
            return core.update_migration(
                storage, owner, migration.id, clock=clock, selected_mount_point_ids=inventory.ids_named("C:\\")
            )
        return core.delete_migration(storage, owner, migration.id)

    expected = _expected(start, action)
    if expected == "refused":
        with pytest.raises(core.Conflict):
            act()
    else:
        act()
    if expected is None:
        with pytest.raises(core.NotFound):
            core.get_migration(storage, owner, migration.id)
        return
    after = core.get_migration(storage, owner, migration.id)
    if expected in ("refused", "same"):
        assert after == before
        return
    assert isinstance(expected, tuple)
    assert (after.state, after.error) == expected
    assert after.progress == {NOT_STARTED: 0, SUCCESS: 100}.get(
        after.state, 60 if action == "advance" else 0 if action == "run" else before.progress
    )
    assert (after.finished_at == clock.now()) == after.state.finished
    assert (after.started_at == clock.now()) == (action == "run")


def test_where_a_target_copies_to_cannot_change_while_a_run_copies_into_it() -> None:
    """Host and root stay as the running copy started with them; its other fields may change."""
    inventory = build_inventory()
    storage, owner, target = inventory.storage, inventory.owner_id, inventory.target.id
    migration = inventory.migration()
    core.run_migration(storage, FakeClock(), ManualRunner(), owner, migration.id)
    with pytest.raises(core.Conflict, match=rf"^Migration target {target} is busy with migration {migration.id}\.$"):
        core.update_migration_target(storage, owner, target, host_id=inventory.workload.id, root="/srv")
    assert core.update_migration_target(storage, owner, target, cloud_type="azure").host_id is None
    fail_run(storage, FakeClock(), RunRef.of(migration), "stopped")
    moved = core.update_migration_target(storage, owner, target, host_id=inventory.workload.id, root="/srv")
    assert (moved.host_id, moved.root) == (inventory.workload.id, "/srv")
