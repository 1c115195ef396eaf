"""The host's side of a copy, run here by the same POSIX shell a host has:
the swap waits for another swap of the same place that is still going (its
lock names a live process), takes over a lock its holder left by dying, and
leaves the place's own time as the source's; the check's one command per
machine hashes the files asked, then lists the tree."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from pathlib import Path

from adapters.volume_place import HASHES_THEN_LIST, LIST, SWAP, journal_tar, nul_list, parse_listing, split_hashes
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


def test_the_check_hashes_the_files_asked_then_lists_the_tree_whatever_their_names(tmp_path: Path) -> None:
    """Names a machine may hold (a newline, a leading dash, a backslash, a
    quote) stay data; a file asked for but not there has no hash; with no
    file asked, the listing alone. A missing tree exits 3, as LIST does."""
    names = [b"./plain", b"./-dash", b"./new\nline", b"./back\\slash", b"./it's"]
    for name in names:
        (tmp_path / os.fsdecode(name)).write_bytes(name * 3)

    def check(files: list[bytes]) -> tuple[dict[bytes, bytes], bytes]:
        ran = subprocess.run(["sh", "-c", HASHES_THEN_LIST, "sh", str(tmp_path)], input=nul_list(files),
                             capture_output=True, check=True)
        return split_hashes(ran.stdout)

    hashes, listed = check([*names, b"./not there"])
    assert hashes == {name: hashlib.sha256(name * 3).hexdigest().encode() for name in names}
    assert parse_listing(listed) == _listing(tmp_path)
    assert check([]) == ({}, subprocess.run(["sh", "-c", LIST, "sh", str(tmp_path)], capture_output=True).stdout)
    missing = subprocess.run(["sh", "-c", HASHES_THEN_LIST, "sh", str(tmp_path / "gone")], input=b"")
    assert missing.returncode == 3
