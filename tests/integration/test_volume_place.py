"""The host's side of a copy, run here by the same POSIX shell a host has:
the swap waits for another swap of the same place that is still going (its
lock names a live process), takes over a lock its holder left by dying, and
leaves the place's own time as the source's."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from adapters.volume_place import LIST, SWAP, journal_tar, parse_listing
from migration_core.sync_plan import Entry, plan_volume


def _listing(directory: Path) -> dict[bytes, Entry]:
    listed = subprocess.run(["sh", "-c", LIST, "sh", str(directory)], capture_output=True, check=True)
    return parse_listing(listed.stdout)


def test_a_swap_waits_for_a_live_lock_takes_a_dead_ones_and_keeps_the_source_s_time(tmp_path: Path) -> None:
    source, place = tmp_path / "source", tmp_path / "place"
    for tree in (source, place):
        tree.mkdir()
    (place / "kept").write_text("old")
    (place / "gone").write_text("old")
    (source / "kept").write_text("new contents")
    (source / "added").write_text("added")
    os.utime(source, (1_000_000_000, 1_000_000_000))
    incoming = place / ".migration-incoming-7"
    journal = place / ".migration-swap-7"
    incoming.mkdir()
    for name in ("kept", "added"):
        (incoming / name).write_bytes((source / name).read_bytes())
    theirs, ours = _listing(source), _listing(place)
    plan = plan_volume(theirs, ours, owners=False)
    journal.mkdir()
    written = journal_tar(plan, theirs, ours, owners=False)
    subprocess.run(["tar", "-C", str(journal), "-xf", "-"], input=written, check=True)
    holder = subprocess.Popen(["sleep", "60"])
    lock = place / ".migration-swap-7.lock"
    lock.mkdir()
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    (lock / "owner").write_text(f"{boot} {holder.pid}\n")  # as a swap names itself
    try:
        swap = subprocess.Popen(["sh", "-c", SWAP, "sh", str(place), str(incoming), str(journal)])
        # While the holder lives, nothing moves (however long the test looks).
        with contextlib.suppress(subprocess.TimeoutExpired):
            swap.wait(timeout=2)
        assert swap.poll() is None and (place / "kept").read_text() == "old"
    finally:
        holder.kill()
        holder.wait()
    assert swap.wait(timeout=30) == 0
    assert sorted(os.listdir(place)) == ["added", "kept"]
    assert (place / "kept").read_text() == "new contents"
    assert not lock.exists() and os.stat(place).st_mtime == 1_000_000_000
