"""Warm migrations' copies (SPEC 2.9) through the SSH driver against the real
OpenSSH server: syncs while a writer keeps changing the source, syncs after
changes of every kind, and cutovers with hooks that really stop that writer
(or do not), run on the machine each belongs to. Two machines are played by
two directories (the source at 127.0.0.1, the host at 127.0.0.2); each copy is
a hand-made CopyJob of its kind given to `SshMachines.start_copy`."""

from __future__ import annotations

import ipaddress
import logging
import os
import shlex
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from adapters import ssh_copy
from adapters.ssh import SshMachines
from migration_core.machines import (
    HOOK_OUTPUT_BYTES,
    CopyEnd,
    CopyJob,
    CopyKind,
    HookRun,
    MachineAddress,
    VolumeToCopy,
)

from ..sshd_fixtures import Machine
from .real_plans import tree

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]
MIGRATION = 11


@pytest.fixture
def pair(make_machine: Callable[[str], Machine]) -> tuple[Machine, Machine]:
    """The source (127.0.0.1) with a small tree, and the host (127.0.0.2)."""
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    root = source.root
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("source\n")
    (root / "etc" / "motd").write_text("welcome\n")
    (root / "var" / "lib").mkdir(parents=True)
    (root / "var" / "lib" / "rows").write_bytes(os.urandom(200_000))
    (root / "var" / "log").mkdir()
    (root / "var" / "log" / "app.log").write_text("first line\n")
    (root / "old").write_text("to be removed")
    (root / "name").write_text("to be renamed")
    (root / "script").write_text("#!/bin/sh\n")
    os.chmod(root / "script", 0o644)
    (root / "current").symlink_to("etc/hostname")
    return source, host


def _address(machine: Machine, root: Path) -> MachineAddress:
    return MachineAddress(machine.ip, machine.port, machine.username, "", machine.private_key, str(root), None)


def _job(
    source: Machine, host: Machine, kind: CopyKind, *, pre: str | None = None, post: str | None = None,
    volumes: tuple[str, ...] = ("/",),
) -> CopyJob:
    return CopyJob(
        owner_id=1,
        migration_id=MIGRATION,
        source=_address(source, source.root),
        host=_address(host, _place(host)),
        volumes=tuple(VolumeToCopy(name, 1000) for name in volumes),
        first=0,
        source_volumes=volumes,
        kind=kind,
        pre_cutover=pre,
        post_cutover=post,
    )


def _place(host: Machine) -> Path:
    return host.root / "landing"


def _carry(machines: SshMachines, job: CopyJob, timeout: float = 60.0) -> CopyEnd:
    """The end of a copy carried to it."""
    news = threading.Event()
    handle = machines.start_copy(job, news.set)
    deadline = time.monotonic() + timeout
    while (end := handle.ended()) is None:
        assert time.monotonic() < deadline, "the copy did not end"
        news.wait(0.5)
        news.clear()
    return end


def _synced(machines: SshMachines, source: Machine, host: Machine) -> CopyEnd:
    end = _carry(machines, _job(source, host, CopyKind.SYNC))
    assert end.failure is None, end.failure
    return end


def _leftovers(place: Path) -> list[str]:
    """The copy's own entries at a place (new copies, journals)."""
    return [name for name in os.listdir(place) if name.startswith((".migration-incoming-", ".migration-swap-"))]


class Writer:
    """A thread that appends to a file until told to stop: by `stop()`, or by
    a stop file appearing (then it says it has stopped in `stopped_file`,
    which a pre_cutover hook waits for)."""

    def __init__(self, path: Path, control: Path) -> None:
        self.path = path
        self.stop_file = control / f"stop-{path.name}"
        self.stopped_file = control / f"stopped-{path.name}"
        self.writes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, name=f"writer-{path.name}", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        while not self._stop.is_set() and not self.stop_file.exists():
            with open(self.path, "ab") as file:
                file.write(b"%d appended while the source runs\n" % self.writes)
            self.writes += 1
            self._stop.wait(0.002)
        self.stopped_file.touch()

    def wrote(self, at_least: int) -> None:
        """Wait until it has appended `at_least` times."""
        deadline = time.monotonic() + 10
        while self.writes < at_least:
            assert time.monotonic() < deadline, "the writer does not write"
            self._stop.wait(0.01)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def writers(tmp_path: Path) -> Iterator[Callable[[Path], Writer]]:
    control = tmp_path / "control"
    control.mkdir()
    started: list[Writer] = []

    def start(path: Path) -> Writer:
        writer = Writer(path, control)
        started.append(writer)
        writer.wrote(3)
        return writer

    try:
        yield start
    finally:
        for writer in started:
            writer.stop()


def _stops(writer: Writer, *, echo: str = "quiesced") -> str:
    """A pre_cutover command that really stops `writer`: it asks it to stop
    and waits until it says it has."""
    stop, stopped = shlex.quote(str(writer.stop_file)), shlex.quote(str(writer.stopped_file))
    return f"touch {stop} && while [ ! -e {stopped} ]; do sleep 0.05; done; echo {echo}"


def test_a_sync_while_a_file_is_written_keeps_its_verified_version_and_says_so(
    pair: tuple[Machine, Machine], machines: SshMachines, writers: Callable[[Path], Writer]
) -> None:
    source, host = pair
    place = _place(host)
    first = _synced(machines, source, host)
    assert first.changing == 0 and first.hooks == ()
    verified = (place / "var/log/app.log").read_bytes()
    verified_inode = (place / "var/log/app.log").stat().st_ino
    (source.root / "etc" / "motd").write_text("changed before the sync\n")
    (source.root / "new").mkdir()
    log_writer = writers(source.root / "var/log/app.log")
    fresh_writer = writers(source.root / "new" / "fresh.log")  # new since the last sync

    end = _synced(machines, source, host)

    assert log_writer.alive() and fresh_writer.alive(), "the writers wrote all through the sync"
    assert end.changing == 2
    # The file still written keeps the version the last verified sync put in place, that very file.
    assert (place / "var/log/app.log").read_bytes() == verified
    assert (place / "var/log/app.log").stat().st_ino == verified_inode
    # The one new since the last sync is left out; its directory is not.
    assert (place / "new").is_dir() and not (place / "new" / "fresh.log").exists()
    # Everything else is the source as it is.
    still_written = ("var/log/app.log", "new/fresh.log")
    expected = {path: entry for path, entry in tree(source.root).items() if path not in still_written}
    assert {path: entry for path, entry in tree(place).items() if path not in still_written} == expected
    assert (place / "etc" / "motd").read_text() == "changed before the sync\n"
    assert _leftovers(place) == []

    # Once the writers stop, the next sync sends what they wrote.
    log_writer.stop()
    fresh_writer.stop()
    last = _synced(machines, source, host)
    assert last.changing == 0
    assert tree(place) == tree(source.root)


def test_a_sync_after_changes_of_every_kind_leaves_the_source_s_tree_in_place(
    pair: tuple[Machine, Machine], machines: SshMachines
) -> None:
    source, host = pair
    root = source.root
    _synced(machines, source, host)
    (root / "added").write_text("new since the last sync")
    (root / "etc" / "hostname").write_text("changed\n")
    (root / "name").rename(root / "renamed")
    (root / "old").unlink()
    os.chmod(root / "script", 0o755)
    (root / "current").unlink()
    (root / "current").symlink_to("etc/motd")
    (root / "var" / "lib").rename(root / "var" / "library")  # a directory renamed
    (root / "etc" / "motd").unlink()
    (root / "etc" / "motd").mkdir()  # a file become a directory
    (root / "etc" / "motd" / "inside").write_text("in a directory now")

    end = _synced(machines, source, host)

    assert end.changing == 0
    place = _place(host)
    assert tree(place) == tree(root)
    assert os.readlink(place / "current") == "etc/motd"
    assert stat.S_IMODE((place / "script").stat().st_mode) == 0o755
    assert not (place / "old").exists() and not (place / "name").exists()
    assert _leftovers(place) == []


def test_a_cutover_whose_pre_cutover_stops_the_writer_lands_the_source_exactly(
    pair: tuple[Machine, Machine], machines: SshMachines, writers: Callable[[Path], Writer]
) -> None:
    source, host = pair
    place = _place(host)
    writer = writers(source.root / "var/log/app.log")
    volumes = ("/", "/var/log")  # each verified beside its place, then both swapped
    assert _carry(machines, _job(source, host, CopyKind.SYNC, volumes=volumes)).changing == 1
    # The hook on the host runs after the swaps: it reads what the final sync put in place.
    post = f"echo post; cat -- {shlex.quote(str(place / 'var/log/app.log'))} | wc -l"

    end = _carry(machines, _job(source, host, CopyKind.CUTOVER, pre=_stops(writer), post=post, volumes=volumes))

    assert end.failure is None, end.failure
    assert not writer.alive()
    assert tree(place) == tree(source.root)
    lines = len((source.root / "var/log/app.log").read_bytes().splitlines())
    assert end.hooks == (HookRun("pre_cutover", 0, "quiesced\n"), HookRun("post_cutover", 0, f"post\n{lines}\n"))
    assert end.changing == 0
    assert _leftovers(place) == []


def test_a_cutover_whose_pre_cutover_leaves_the_writer_running_fails_and_swaps_nothing(
    pair: tuple[Machine, Machine], machines: SshMachines, writers: Callable[[Path], Writer], tmp_path: Path
) -> None:
    source, host = pair
    place = _place(host)
    volumes = ("/", "/var/log")  # the first verified before the second fails: not swapped either
    assert _carry(machines, _job(source, host, CopyKind.SYNC, volumes=volumes)).failure is None
    (source.root / "etc" / "hostname").write_text("changed for the cutover\n")
    before = tree(place)
    writer = writers(source.root / "var/log/app.log")
    ran_after = tmp_path / "post-ran"

    end = _carry(machines, _job(
        source, host, CopyKind.CUTOVER, pre="echo not stopping anything", post=f"touch {shlex.quote(str(ran_after))}",
        volumes=volumes,
    ))

    assert writer.alive()
    assert end.failure == (
        "The source was not quiesced: 1 file(s) of volume /var/log changed during the cutover's final sync, the"
        " first 'app.log'. The copy in place is the last verified sync."
    )
    assert tree(place) == before  # not even the file that changed before the cutover
    assert _leftovers(place) == []
    assert end.hooks == (HookRun("pre_cutover", 0, "not stopping anything\n"),)
    assert not ran_after.exists()


def test_one_change_during_the_cutover_s_final_sync_fails_it_with_no_catch_up(
    pair: tuple[Machine, Machine], machines: SshMachines
) -> None:
    source, host = pair
    place = _place(host)
    _synced(machines, source, host)
    (source.root / "etc" / "hostname").write_text("changed for the cutover\n")
    before = tree(place)

    async def once(index: int, incoming: str) -> None:
        # After the final sync's stream, before its check: one write, never again (a sync would catch up).
        (source.root / "etc" / "motd").write_text("written once during the cutover\n")

    machines.after_stream = once
    end = _carry(machines, _job(source, host, CopyKind.CUTOVER))

    assert end.failure is not None
    assert end.failure.startswith("The source was not quiesced: 1 file(s) of volume / changed during the cutover's"
                                  " final sync, the first 'etc/motd'.")
    assert tree(place) == before
    assert _leftovers(place) == []


def test_a_pre_cutover_that_exits_1_fails_before_anything_is_sent(
    pair: tuple[Machine, Machine], machines: SshMachines, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source, host = pair
    place = _place(host)
    _synced(machines, source, host)
    (source.root / "etc" / "hostname").write_text("changed for the cutover\n")
    (source.root / "added").write_text("new")
    before = tree(place)
    ran_after = tmp_path / "post-ran"
    pre = "echo stopping the app; echo 'app-7f3e refuses to stop' >&2; exit 1"

    with caplog.at_level(logging.INFO):
        end = _carry(machines, _job(
            source, host, CopyKind.CUTOVER, pre=pre, post=f"touch {shlex.quote(str(ran_after))}"
        ))

    assert end.failure == "pre_cutover exited 1: app-7f3e refuses to stop"
    assert end.hooks == (HookRun("pre_cutover", 1, "stopping the app\napp-7f3e refuses to stop\n"),)
    assert tree(place) == before
    assert _leftovers(place) == []
    assert not ran_after.exists()
    # The copy's log line says the hook failed, never what it printed.
    assert "pre_cutover exited 1" in caplog.text
    assert "app-7f3e" not in caplog.text and "stopping the app" not in caplog.text


def test_a_failing_post_cutover_fails_the_cutover_with_the_verified_final_sync_in_place(
    pair: tuple[Machine, Machine], machines: SshMachines
) -> None:
    source, host = pair
    place = _place(host)
    _synced(machines, source, host)
    (source.root / "etc" / "hostname").write_text("changed for the cutover\n")

    end = _carry(machines, _job(
        source, host, CopyKind.CUTOVER, pre="echo ok", post="echo starting; echo 'no such service' >&2; exit 3"
    ))

    assert end.failure == "post_cutover exited 3: no such service"
    assert end.hooks == (
        HookRun("pre_cutover", 0, "ok\n"), HookRun("post_cutover", 3, "starting\nno such service\n"),
    )
    assert tree(place) == tree(source.root)
    assert (place / "etc" / "hostname").read_text() == "changed for the cutover\n"
    assert _leftovers(place) == []


def test_a_hook_s_output_is_cut_to_its_last_4_kib(pair: tuple[Machine, Machine], machines: SshMachines) -> None:
    source, host = pair
    pre = 'i=0; while [ "$i" -lt 1500 ]; do echo "line $i"; echo "err $i" >&2; i=$((i + 1)); done'
    whole = "".join(f"line {i}\nerr {i}\n" for i in range(1500))
    assert len(whole.encode()) > 4 * HOOK_OUTPUT_BYTES

    end = _carry(machines, _job(source, host, CopyKind.CUTOVER, pre=pre))

    assert end.failure is None, end.failure
    assert end.hooks == (HookRun("pre_cutover", 0, whole[-HOOK_OUTPUT_BYTES:]),)
    assert tree(_place(host)) == tree(source.root)


def _remote_processes(marker: str) -> list[str]:
    listing = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if marker in line]


def test_a_hook_past_its_bound_is_killed_with_its_children_and_fails_the_cutover(
    pair: tuple[Machine, Machine], machines: SshMachines, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, host = pair
    place = _place(host)
    monkeypatch.setattr(ssh_copy, "HOOK_SECONDS", 1)
    pre = "echo waiting; sleep 41.75 & sleep 41.75; echo never"

    started = time.monotonic()
    end = _carry(machines, _job(source, host, CopyKind.CUTOVER, pre=pre))

    assert time.monotonic() - started < 20, "the hook outlived its bound"
    assert end.failure == "pre_cutover was stopped at its bound of 1 s: waiting"
    assert end.hooks == (HookRun("pre_cutover", None, "waiting\n"),)
    assert _remote_processes("sleep 41.75") == []  # the whole process group went
    assert not place.exists()


def test_hostile_hooks_run_as_the_one_command_they_are_on_their_own_machine(
    pair: tuple[Machine, Machine], machines: SshMachines, tmp_path: Path
) -> None:
    source, host = pair
    work = tmp_path / "hook's work"
    work.mkdir()
    hostile = (
        f"cd -- {shlex.quote(str(work))} && printf '[%s]' \"it's\" 'say \"hi\"' \"$(printf sub)\""
        " '$(touch CANARY)' `printf tick`; echo; touch 'semi;colon' && echo \"$SSH_CONNECTION\" | cut -d' ' -f3"
    )

    end = _carry(machines, _job(source, host, CopyKind.CUTOVER, pre=hostile, post=hostile))

    assert end.failure is None, end.failure
    said = "[it's][say \"hi\"][sub][$(touch CANARY)][tick]\n"
    # sshd's SSH_CONNECTION names the address the session came in on: each hook ran on its own machine.
    assert end.hooks == (
        HookRun("pre_cutover", 0, said + "127.0.0.1\n"), HookRun("post_cutover", 0, said + "127.0.0.2\n"),
    )
    assert sorted(os.listdir(work)) == ["semi;colon"]
    for where in (source.root, host.root, _place(host), Path.home(), Path("/")):
        assert not (where / "CANARY").exists()
