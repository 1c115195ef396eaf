"""The file locks that tell SQLite instances apart: a dead instance's file is
removed by the next one that takes its own lock, a live one's never, not even
when the two happen at the same moment."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
from pathlib import Path

from adapters.sqlite import FileLockWitness


def test_an_instance_taking_its_lock_removes_the_files_of_dead_ones_only(tmp_path: Path) -> None:
    folder = tmp_path / "db.instances"
    folder.mkdir()
    (folder / "dead1.lock").touch()  # left by an instance that was killed
    (folder / "dead2.lock").touch()
    # A live instance in another process holds its lock until told to stop.
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys; d = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(d, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
         str(folder / "alive.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        witness = FileLockWitness(folder)
        witness.hold("new")
        assert sorted(path.name for path in folder.iterdir()) == ["alive.lock", "new.lock"]
        assert witness.held(["alive", "new", "dead1"]) == {"alive", "new"}
    finally:
        holder.communicate("")
    witness.release("new")
    assert sorted(path.name for path in folder.iterdir()) == ["alive.lock"]


def test_locks_taken_while_others_remove_left_behind_files_all_stay_visible(tmp_path: Path) -> None:
    """Many instances start at once, each removing the files of the ones it
    thinks dead; every one that got its lock is seen alive by a newcomer. A
    removal that took a file between its creation and its lock would leave an
    instance holding a lock nobody can see."""
    folder = tmp_path / "db.instances"
    folder.mkdir()
    witnesses = [FileLockWitness(folder) for _ in range(24)]
    for index in range(0, 24, 3):  # some files left by the dead, to be removed meanwhile
        (folder / f"gone{index}.lock").touch()
    start = threading.Barrier(len(witnesses))
    errors: list[BaseException] = []

    def take(index: int) -> None:
        try:
            start.wait()
            for round_ in range(20):
                witnesses[index].hold(f"i{index}r{round_}")
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=take, args=(index,)) for index in range(len(witnesses))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    held = {f"i{index}r{round_}" for index in range(len(witnesses)) for round_ in range(20)}
    assert FileLockWitness(folder).held(held) == held
    assert not list(folder.glob("gone*.lock"))
    for name in held:  # and each still holds the very file its name leads to
        descriptor = os.open(folder / f"{name}.lock", os.O_RDONLY)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
                raise AssertionError(f"{name}'s file is not locked")
            except BlockingIOError:
                pass
        finally:
            os.close(descriptor)
