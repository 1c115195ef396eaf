"""SPEC 2.2, the byte model: the selected volumes are copied one after another,
in the source's order, at one byte rate; `bytes_copied` is the sum of the
volumes' `copied`, progress is the floor of its share and 100 only at success,
and when every volume is empty each takes an equal share of the time."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

import migration_core as core
from adapters.simulated_copy import progress_after
from migration_core.copying import Position, run_state
from migration_core.machines import CopyProgress, VolumeCopied
from migration_core.runs import RunRef, advance_runs, complete_run

from .support import FakeClock, ManualRunner, Volume, build_inventory, position_at

sizes = st.lists(st.integers(0, 10**15), min_size=1, max_size=6)
durations = st.floats(0.001, 1e5, allow_nan=False)


def times(duration: float) -> st.SearchStrategy[list[float]]:
    return st.lists(st.floats(-1.0, duration * 1.5, allow_nan=False), min_size=1, max_size=12)


def copied_at(volume_sizes: list[int], elapsed: float, duration: float) -> list[int]:
    at = position_at(volume_sizes, elapsed, duration)
    volumes = [core.Volume(f"v{i}", size) for i, size in enumerate(volume_sizes)]
    migration = _migration_at(volumes, at)
    return [volume.copied for volume in run_state(migration).volumes]


def _migration_at(volumes: list[core.Volume], at: Position) -> core.Migration:
    """A running migration whose copy is recorded at `at`."""
    ids = tuple(range(1, len(volumes) + 1))
    return core.Migration(
        1,
        1,
        1,
        ids,
        state=core.MigrationState.RUNNING,
        progress=min(99, at.progress),
        snapshot=core.TargetVm("10.0.0.1", core.Login("u", "p"), tuple(volumes)),
        copied=core.CopyMark(ids, at.volumes, at.partial),
    )


@given(sizes, durations, st.data())
def test_copied_never_decreases_and_never_exceeds_the_size(
    volume_sizes: list[int], duration: float, data: st.DataObject
) -> None:
    moments = sorted(data.draw(times(duration)))
    seen = [copied_at(volume_sizes, moment, duration) for moment in moments]
    for earlier, later in zip(seen, seen[1:]):
        assert all(a <= b for a, b in zip(earlier, later)), (earlier, later)
    for copied in seen:
        assert all(0 <= done <= size for done, size in zip(copied, volume_sizes))


@given(sizes, durations, st.data())
def test_volumes_complete_in_source_order(volume_sizes: list[int], duration: float, data: st.DataObject) -> None:
    """Before a volume has any byte copied, every earlier one is complete; after
    one is partly copied, no later one has a byte."""
    elapsed = data.draw(st.floats(-1.0, duration * 1.5, allow_nan=False))
    copied = copied_at(volume_sizes, elapsed, duration)
    at = position_at(volume_sizes, elapsed, duration)
    for index, (done, size) in enumerate(zip(copied, volume_sizes)):
        if done > 0:
            assert copied[:index] == volume_sizes[:index]
        if done < size:
            assert not any(copied[index + 1 :])
    # The volumes counted as copied are a prefix, and complete.
    assert copied[: at.volumes] == volume_sizes[: at.volumes]
    if at.volumes < len(volume_sizes):
        assert copied[at.volumes] == at.partial < max(volume_sizes[at.volumes], 1)


@given(sizes.filter(any), durations, st.data())
def test_the_sum_is_bytes_copied_and_progress_is_the_floor_of_its_share(
    volume_sizes: list[int], duration: float, data: st.DataObject
) -> None:
    elapsed = data.draw(st.floats(-1.0, duration * 1.5, allow_nan=False))
    at = position_at(volume_sizes, elapsed, duration)
    volumes = [core.Volume(f"v{i}", size) for i, size in enumerate(volume_sizes)]
    state = run_state(_migration_at(volumes, at))
    total = sum(volume_sizes)
    assert state.bytes_total == total
    assert state.bytes_copied == sum(volume.copied for volume in state.volumes)
    # One byte rate: the bytes copied are the elapsed share of the total.
    share = min(max(elapsed, 0.0), duration)
    assert state.bytes_copied <= total * share / duration + 1
    assert state.bytes_copied >= total * share / duration - 1 - total * 1e-12
    assert at.progress == 100 * state.bytes_copied // total
    assert (at.progress == 100) == (elapsed >= duration)


@given(st.integers(1, 8), durations, st.data())
def test_all_empty_volumes_share_the_time_equally(count: int, duration: float, data: st.DataObject) -> None:
    elapsed = data.draw(st.floats(0.0, duration, allow_nan=False))
    at = position_at([0] * count, elapsed, duration)
    fraction = elapsed / duration
    if elapsed < duration:
        assert at.volumes == pytest.approx(count * fraction, abs=1)
        assert at.volumes <= count * fraction
        assert at.progress <= 100 * fraction < at.progress + 1 + 1e-9
    else:
        assert (at.volumes, at.progress) == (count, 100)
    assert at.partial == 0
    assert at.progress == 100 * at.volumes // count or at.volumes < count


@given(
    st.lists(st.integers(0, 1000), min_size=1, max_size=5),
    st.lists(st.floats(-5.0, 150.0, allow_nan=False), max_size=15),
)
def test_what_a_run_records_never_goes_down_and_reaches_100_only_at_success(
    volume_sizes: list[int], reports: list[float]
) -> None:
    """Reports in any order, through the use cases: the recorded copy only
    grows, its progress is the floor of its share of the bytes (below 100 while
    running), and success copies every byte."""
    names = ["C:\\", *(f"V{i}:\\" for i in range(1, len(volume_sizes)))]
    inventory = build_inventory(volumes=[Volume(n, s) for n, s in zip(names, volume_sizes)])
    storage, owner = inventory.storage, inventory.owner_id
    clock = FakeClock()
    migration = core.run_migration(storage, clock, ManualRunner(), owner, inventory.migration().id)
    ref = RunRef.of(migration)
    total = sum(volume_sizes)
    previous = core.get_run_state(storage, owner, migration.id)
    for seconds in reports:
        advance_runs(storage, clock, {ref: progress_after(volume_sizes, seconds, 100)})
        state = core.get_run_state(storage, owner, migration.id)
        assert all(a.copied <= b.copied <= b.size for a, b in zip(previous.volumes, state.volumes))
        assert previous.progress <= state.progress <= 99
        if total:
            assert state.progress == min(99, 100 * state.bytes_copied // total)
        previous = state
    complete_run(storage, clock, ref)
    done = core.get_run_state(storage, owner, migration.id)
    assert done.progress == 100 and done.eta is None
    assert [v.copied for v in done.volumes] == volume_sizes


def test_a_planned_volume_shows_what_its_plan_sends_and_the_target_vm_what_the_copies_hold() -> None:
    """SPEC 2.8: once the trees are compared, a volume's size is the bytes its
    plan sends (not the estimate of the whole filesystem), so progress and eta
    tell the truth; once verified in place, the bytes that were sent. The
    target VM a success leaves holds each volume's bytes at its place."""
    inventory = build_inventory(volumes=(Volume("C:\\", 27 * 2**30), Volume("D:\\", 5000)))
    storage, owner, clock = inventory.storage, inventory.owner_id, FakeClock()
    migration = core.run_migration(storage, clock, ManualRunner(), owner, inventory.migration().id)
    ref = RunRef.of(migration)

    def state() -> list[tuple[int, int]]:
        return [(v.size, v.copied) for v in core.get_run_state(storage, owner, migration.id).volumes]

    clock.advance(1)
    advance_runs(storage, clock, {ref: CopyProgress(0, 0, 0, planned=320 * 2**20)})
    assert state() == [(320 * 2**20, 0), (5000, 0)]
    clock.advance(1)
    advance_runs(storage, clock, {ref: CopyProgress(0, 160 * 2**20, 3, planned=320 * 2**20)})
    halfway = core.get_run_state(storage, owner, migration.id)
    assert halfway.progress == 100 * 160 * 2**20 // (320 * 2**20 + 5000)
    assert halfway.eta == clock.now() + timedelta(seconds=2 * (320 * 2**20 + 5000 - 160 * 2**20) / (160 * 2**20))
    # A catch-up pass sends more than planned: the size follows what passes.
    advance_runs(storage, clock, {ref: CopyProgress(0, 330 * 2**20, 4, planned=320 * 2**20)})
    assert state()[0] == (330 * 2**20, 330 * 2**20)
    whole = VolumeCopied(0, bytes=330 * 2**20, files=4, linked=9000, dropped=2, held=27 * 2**30)
    nothing_new = VolumeCopied(1, bytes=0, files=0, linked=12, dropped=0, held=5000)
    advance_runs(storage, clock, {ref: CopyProgress(1, 0, 0, (whole,), planned=0)})
    assert state() == [(330 * 2**20, 330 * 2**20), (0, 0)]
    complete_run(storage, clock, ref, CopyProgress(2, 0, None, (whole, nothing_new)))

    events = core.list_events(storage, owner, migration.id, core.ListQuery(filters={"kind": "volume_copied"}))
    assert [(e.detail["bytes"], e.detail["linked"], e.detail["dropped"]) for e in events.items] == [
        (330 * 2**20, 9000, 2),
        (0, 12, 0),
    ]
    vm = core.get_migration_target(storage, owner, inventory.target.id).target_vm
    assert vm is not None and [volume.size for volume in vm.storage] == [27 * 2**30, 5000]
