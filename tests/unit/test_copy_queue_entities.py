"""A migration's phase and swap flag, as its methods change them (SPEC 2.10):
each change guards the state it starts from."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from migration_core import Conflict, Login, Migration, MigrationState, Phase, TargetVm, Volume
from migration_core.entities import CopyMark

AT = datetime(2024, 1, 1, tzinfo=timezone.utc)
SNAPSHOT = TargetVm("10.0.0.1", Login("root", "pw", ""), (Volume("/", 10),))


def started(*, queued: bool, instance_id: str | None = "starter") -> Migration:
    migration = Migration(1, 2, 3, (4,), id=5)
    return migration.start(at=AT, snapshot=SNAPSHOT, mark=CopyMark((4,)), instance_id=instance_id, queued=queued)


def test_a_queued_start_belongs_to_no_instance_until_taken() -> None:
    queued = started(queued=True)
    assert (queued.state, queued.phase, queued.instance_id, queued.swapping) == (
        MigrationState.RUNNING, Phase.QUEUED, None, False
    )
    assert not queued.carried_by(None) and not queued.carried_by("starter")

    taken = queued.take("taker")
    assert (taken.phase, taken.instance_id) == (Phase.COPYING, "taker")
    assert taken.carried_by("taker") and not taken.carried_by("starter")
    with pytest.raises(Conflict):
        taken.take("another")


def test_a_start_at_once_copies_under_its_instance() -> None:
    running = started(queued=False)
    assert (running.phase, running.instance_id) == (Phase.COPYING, "starter")
    assert running.carried_by("starter")
    with pytest.raises(Conflict):
        running.take("another")


def test_only_the_carrier_enters_a_swap_and_an_end_clears_phase_and_swap() -> None:
    with pytest.raises(Conflict):
        started(queued=True).enter_swap(None)
    running = started(queued=False)
    with pytest.raises(Conflict):
        running.enter_swap("another")
    swapping = running.enter_swap("starter")
    assert swapping.swapping and not swapping.leave_swap().swapping

    failed = swapping.fail(AT, "cancelled")
    assert (failed.state, failed.phase, failed.swapping) == (MigrationState.ERROR, None, False)
    assert not failed.carried_by("starter")
    with pytest.raises(Conflict):
        failed.take("taker")
    assert (swapping.succeed(AT).phase, swapping.succeed(AT).swapping) == (None, False)

    again = failed.start(at=AT, snapshot=SNAPSHOT, mark=CopyMark((4,)), instance_id="x", queued=True)
    assert (again.phase, again.instance_id, again.swapping) == (Phase.QUEUED, None, False)
