"""A copy onto a place that already holds one sends only what differs (SPEC
2.8), tested for real: the source and the host are directories behind the
session's OpenSSH server, and the test compares the trees with its own walk
(names as bytes, every entry's type, mode, owner, size, contents, link target
and time)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from adapters.ssh import SshMachines
from migration_core.machines import CopyFailed, CopyJob, CopyProgress, VolumeToCopy

from ..sshd_fixtures import STOCK_PATH, Machine, key_with_path
from ..sshd_server import SshServer
from .service_process import PATIENCE, ServiceProcess, wait_for
from .test_real_runs_e2e import RealPlan
from .test_ssh_copy import MIGRATION, OWNER, _address, _Copy, _leftovers, _own, _source_tree

Tree = dict[bytes, tuple[Any, ...]]


def _job(source: Machine, root: Path, host: Machine, target: Path, volumes: list[str], every: list[str]) -> CopyJob:
    """A copy of `volumes` of the source whose tree is `root`; `every` is all the source's volumes."""
    return CopyJob(
        owner_id=OWNER,
        migration_id=MIGRATION,
        source=_address(source, root),
        host=_address(host, target),
        volumes=tuple(VolumeToCopy(name, 1000) for name in volumes),
        first=0,
        source_volumes=tuple(every),
    )


def _copy(machines: SshMachines, job: CopyJob) -> list[CopyProgress]:
    copy = _Copy(machines, job)
    copy.wait()
    return copy.reports


def _path(root: bytes, relative: bytes) -> bytes:
    return root if relative == b"." else root + b"/" + relative


def _walk(root: Path | bytes, leave_out: tuple[bytes, ...] = ()) -> Tree:
    """Every entry below `root` by its path relative to it: type, mode, owner,
    time, and a file's size and SHA-256 or a link's target. `.` itself too,
    but not its time: a copy's own entries come and go in its place (and a
    nested volume's place is made in its parent's) after the swap set it."""
    top = os.fsencode(root)
    found: Tree = {}

    def visit(relative: bytes) -> None:
        path = _path(top, relative)
        info = os.lstat(path)
        common = (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, info.st_mtime_ns)
        if stat.S_ISDIR(info.st_mode):
            found[relative] = ("dir", *common[:3], None if relative == b"." else common[3])
            for name in sorted(os.listdir(path)):
                child = name if relative == b"." else relative + b"/" + name
                if child not in leave_out:
                    visit(child)
        elif stat.S_ISLNK(info.st_mode):
            found[relative] = ("link", os.readlink(path), *common)
        elif stat.S_ISREG(info.st_mode):
            with open(path, "rb") as file:
                digest = hashlib.sha256(file.read()).hexdigest()
            found[relative] = ("file", info.st_size, digest, *common)
        else:
            found[relative] = ("other", stat.S_IFMT(info.st_mode), *common)

    visit(b".")
    return found


def _inodes(root: Path | bytes) -> dict[bytes, tuple[int, int, int]]:
    """Each entry's inode, device and change time: what any write, link or rename moves."""
    top = os.fsencode(root)
    found = {}
    for relative in _walk(top):
        info = os.lstat(_path(top, relative))
        found[relative] = (info.st_ino, info.st_dev, info.st_ctime_ns)
    return found


# -- the trees and the changes hypothesis draws ---------------------------------

NAMES = (b"a", b"b c", b"it's", b'q"t', b"new\nline", b"-lead", b"\xff\xfe", b"$(touch x)")
# A sibling, the link's own directory or its parent: a directory replaced by
# such a link must not lead a removal or a chmod elsewhere. Never a real
# absolute path: on the host it would be the test machine's own.
LINK_TARGETS = (b"a", b".", b"..", b"b c", b"missing", b"/nowhere/at all", b"new\nline/a")
FILE_MODES = (0o644, 0o600, 0o755, 0o4750)
DIR_MODES = (0o755, 0o700, 0o750, 0o1777)
ROOT = (0, 0)
OWNERS = (ROOT, (1234, 5678))
NESTED = "/it's nested"  # a volume below "/": the second copy takes "/" alone

contents = st.builds(lambda chunk, times: chunk * times, st.binary(max_size=24), st.sampled_from((1, 1, 1, 12_000)))
files = st.tuples(st.just("f"), contents, st.sampled_from(FILE_MODES), st.sampled_from(OWNERS))
links = st.tuples(st.just("l"), st.sampled_from(LINK_TARGETS), st.sampled_from(OWNERS))


def _dirs(children: st.SearchStrategy[tuple[Any, ...]]) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.tuples(
        st.just("d"), st.dictionaries(st.sampled_from(NAMES), children, max_size=4),
        st.sampled_from(DIR_MODES), st.sampled_from(OWNERS),
    )


trees = _dirs(st.recursive(files | links, _dirs, max_leaves=10))
OPS = (
    "add", "add_dir", "same_size_and_time", "resize", "rename", "remove", "mode", "owner", "retarget",
    "to_dir", "to_file", "to_link", "dir_time",
)
changes = st.lists(
    st.tuples(st.sampled_from(OPS), st.integers(0, 999), st.integers(0, 999), contents), min_size=1, max_size=8
)


class Source:
    """A source tree on disk and what the test did to it: each inode it wrote,
    moved, or changed the metadata of after the first copy (`touched`)."""

    def __init__(self, root: bytes) -> None:
        self.root = root
        self.touched: set[int] = set()
        self._clock = 1_600_000_000 * 10**9

    def full(self, relative: bytes) -> bytes:
        return _path(self.root, relative)

    def write(self, relative: bytes, data: bytes, mode: int = 0o644) -> None:
        path = self.full(relative)
        with open(path, "wb") as file:
            file.write(data)
        os.chmod(path, mode)
        # Each file a time of its own: files alike in size, time and mode but
        # not in contents, swapped by renaming their directories, would pass
        # a comparison of metadata unseen (so does rsync's).
        self._clock += 1_000_003
        os.utime(path, ns=(self._clock, self._clock))

    def make(self, relative: bytes, node: tuple[Any, ...]) -> None:
        path = self.full(relative)
        kind = node[0]
        if kind == "f":
            self.write(relative, node[1], node[2])
        elif kind == "l":
            os.symlink(node[1], path)
        else:
            if relative != b".":
                os.mkdir(path)
            for name, child in node[1].items():
                self.make(name if relative == b"." else relative + b"/" + name, child)
            os.chmod(path, node[2])
        os.lchown(path, *node[-1])
        if kind == "f":
            os.chmod(path, node[2])  # chown clears setuid

    def entries(self, leave_out: bytes) -> list[bytes]:
        return sorted(p for p in _walk(self.root, (leave_out,)) if p != b".")

    def note(self, relative: bytes) -> None:
        self.touched.add(os.lstat(self.full(relative)).st_ino)

    def remove(self, relative: bytes) -> None:
        path = self.full(relative)
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)

    def change(self, op: str, i: int, j: int, data: bytes, leave_out: bytes) -> None:
        entries = self.entries(leave_out)
        kinds = {p: os.lstat(self.full(p)).st_mode for p in entries}
        dirs = [b"."] + [p for p in entries if stat.S_ISDIR(kinds[p])]
        regular = [p for p in entries if stat.S_ISREG(kinds[p])]

        def pick(among: list[bytes]) -> bytes | None:
            return among[i % len(among)] if among else None

        def fresh(directory: bytes, mark: bytes) -> bytes:
            name = NAMES[j % len(NAMES)] + mark
            while os.path.lexists(self.full(name if directory == b"." else directory + b"/" + name)):
                name += b"+"
            return name if directory == b"." else directory + b"/" + name

        if op in ("add", "add_dir"):
            path = fresh(dirs[i % len(dirs)], b"")
            if op == "add":
                self.write(path, data)
            else:
                os.mkdir(self.full(path))  # an empty directory
            self.note(path)
        elif op == "same_size_and_time" and (path := pick([p for p in regular if os.lstat(self.full(p)).st_size])):
            before = os.lstat(self.full(path))
            with open(self.full(path), "r+b") as file:
                flipped = bytes(byte ^ 0xFF for byte in file.read())
                file.seek(0)
                file.write(flipped)
            assert os.lstat(self.full(path)).st_size == before.st_size
            os.utime(self.full(path), ns=(before.st_atime_ns, before.st_mtime_ns))
            self.note(path)
        elif op == "resize" and (path := pick(regular)):
            with open(self.full(path), "ab") as file:
                file.write(data + b"!")
            self.note(path)
        elif op == "rename" and (path := pick(entries)):
            into = dirs[j % len(dirs)]
            if into != path and not into.startswith(path + b"/"):
                moved = fresh(into, b"~")
                os.rename(self.full(path), self.full(moved))
                self.note(moved)
        elif op == "remove" and (path := pick(entries)):
            self.remove(path)
        elif op == "mode" and (path := pick([b".", *(p for p in entries if not stat.S_ISLNK(kinds[p]))])):
            modes = FILE_MODES if stat.S_ISREG(os.lstat(self.full(path)).st_mode) else DIR_MODES
            os.chmod(self.full(path), modes[j % len(modes)])
            self.note(path)
        elif op == "owner" and (path := pick([b".", *entries])):
            info = os.lstat(self.full(path))
            owner = next(o for o in OWNERS if o != (info.st_uid, info.st_gid))
            os.lchown(self.full(path), *owner)
            if stat.S_ISREG(info.st_mode):
                os.chmod(self.full(path), stat.S_IMODE(info.st_mode))
            self.note(path)
        elif op == "retarget" and (path := pick([p for p in entries if stat.S_ISLNK(kinds[p])])):
            target = LINK_TARGETS[j % len(LINK_TARGETS)]
            if target == os.readlink(self.full(path)):
                target += b"2"
            os.unlink(self.full(path))
            os.symlink(target, self.full(path))
            self.note(path)
        elif op == "to_dir" and (path := pick([p for p in entries if not stat.S_ISDIR(kinds[p])])):
            self.remove(path)
            os.mkdir(self.full(path))
            self.write(path + b"/" + NAMES[j % len(NAMES)], data)
            self.note(path + b"/" + NAMES[j % len(NAMES)])
        elif op == "to_file" and (path := pick([p for p in entries if stat.S_ISDIR(kinds[p])])):
            self.remove(path)
            self.write(path, data)
            self.note(path)
        elif op == "to_link" and (path := pick(entries)):
            self.remove(path)
            os.symlink(LINK_TARGETS[j % len(LINK_TARGETS)], self.full(path))
            self.note(path)
        elif op == "dir_time":
            os.utime(self.full(dirs[i % len(dirs)]), ns=(0, 1_500_000_000 * 10**9 + j))


def _metadata(entry: tuple[Any, ...]) -> tuple[Any, ...]:
    """An entry as a comparison of metadata sees it: a file's contents aside."""
    return (*entry[:2], *entry[3:]) if entry[0] == "file" else entry


def _sent(before: Tree, after: Tree, touched: set[int], root: bytes) -> Tree:
    """What a copy must send, by the test's own account: every entry but a
    directory that is new, differs in its metadata, or that the test touched."""
    return {
        path: entry for path, entry in after.items()
        if entry[0] != "dir" and (
            path not in before or _metadata(before[path]) != _metadata(entry)
            or os.lstat(_path(root, path)).st_ino in touched
        )
    }


@pytest.fixture
def pair(make_machine: Callable[[str], Machine]) -> tuple[Machine, Machine]:
    """The source and the host; each example of a property makes its own trees below theirs."""
    return make_machine("127.0.0.1"), make_machine("127.0.0.2")


@settings(
    # Two real copies over SSH an example, so a fixed few, under every
    # profile: the plan itself is drawn by the hundred, without machines, in
    # tests/unit/test_sync_plan.py; here the drawn trees meet the real tools.
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(tree=trees, steps=changes)
# Always, whatever else is drawn: new contents of the same size and time, and
# a directory become a link to its sibling (its contents go, not the sibling's).
@example(
    tree=("d", {b"a": ("f", b"contents", 0o644, ROOT)}, 0o755, ROOT), steps=[("same_size_and_time", 0, 0, b"")]
)
@example(
    tree=("d", {name: ("d", {b"x": ("f", name, 0o600, ROOT)}, 0o700, ROOT) for name in (b"b c", b"d")}, 0o755, ROOT),
    steps=[("to_link", 2, 3, b"")],  # ./d becomes a link to "b c"
)
def test_a_second_copy_sends_what_changed_and_the_place_equals_the_source(
    pair: tuple[Machine, Machine], machines: SshMachines, tree: tuple[Any, ...],
    steps: list[tuple[str, int, int, bytes]],
) -> None:
    """A tree is copied, changed, copied again: the place then equals the
    source, the second copy sent exactly the entries that are new or that
    the test touched and linked the rest, and the nested volume's place
    (not selected the second time) is left as it was, to its inodes."""
    source_machine, host = pair
    root = Path(tempfile.mkdtemp(dir=source_machine.root))
    target = Path(tempfile.mkdtemp(dir=host.root)) / "landing"
    try:
        source = Source(os.fsencode(root))
        source.make(b".", tree)
        nested = os.fsencode(NESTED[1:])
        os.mkdir(source.full(nested))
        source.write(nested + b"/rows", b"rows of the nested volume")
        every = ["/", NESTED]

        _copy(machines, _job(source_machine, root, host, target, every, every))
        assert _walk(target, (nested,)) == _walk(root, (nested,))
        assert _walk(target / NESTED[1:]) == _walk(root / NESTED[1:])
        before, nested_before = _walk(root, (nested,)), (_walk(target / NESTED[1:]), _inodes(target / NESTED[1:]))

        for op, i, j, data in steps:
            source.change(op, i, j, data, nested)
        source.write(nested + b"/rows", b"changed, but not copied: its volume is not selected")
        after = _walk(root, (nested,))
        reports = _copy(machines, _job(source_machine, root, host, target, ["/"], every))

        assert _walk(target, (nested,)) == after
        assert (_walk(target / NESTED[1:]), _inodes(target / NESTED[1:])) == nested_before
        assert _leftovers(target, target / NESTED[1:]) == []
        sent = _sent(before, after, source.touched, source.root)
        done = reports[-1].done[0]
        files = {p: e for p, e in sent.items() if e[0] == "file"}
        assert (done.files, done.bytes) == (len(files), sum(e[1] for e in files.values())), sorted(sent)
        assert done.linked == sum(1 for e in after.values() if e[0] != "dir") - len(sent)
        assert done.dropped == len(before.keys() - after.keys())
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(target.parent, ignore_errors=True)


def test_a_parent_volume_s_copy_never_touches_a_nested_volume_s_place(
    make_machine: Callable[[str], Machine], machines: SshMachines
) -> None:
    """The parent's copy leaves the nested place out of its listing, its
    links and its drops, whatever changed in the nested volume meanwhile."""
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    _source_tree(source.root)
    target = host.root / "landing"
    every = ["/", "/data", "/srv"]
    _copy(machines, _job(source, source.root, host, target, ["/", "/data"], every))
    held = _walk(target / "data"), _inodes(target / "data")
    # The nested volume changes, its mount point too, and the parent around it.
    (source.root / "data" / "rows").write_bytes(b"new rows")
    (source.root / "data" / "more").write_text("more rows")
    os.chmod(source.root / "data", 0o700)
    (source.root / "etc" / "hostname").write_text("changed\n")
    (source.root / "datum").write_text("beside the nested place")
    shutil.rmtree(source.root / "deep")

    reports = _copy(machines, _job(source, source.root, host, target, ["/"], every))

    assert (_walk(target / "data"), _inodes(target / "data")) == held  # not even linked
    assert _walk(target, (b"data",)) == _walk(source.root, (b"data", b"srv"))
    assert _leftovers(target, target / "data") == []
    done = reports[-1].done[0]
    assert (done.files, done.bytes, done.dropped) == (2, len("changed\n") + len("beside the nested place"), 4)


def test_a_directory_replaced_by_a_link_leaves_with_what_it_held_and_nothing_else(
    make_machine: Callable[[str], Machine], machines: SshMachines
) -> None:
    """The swap removes what the source no longer has by its path, and sets
    directories' modes: neither may pass through the link that now stands
    where a directory was."""
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    for name in ("d", "e", "loop"):
        (source.root / name).mkdir()
        (source.root / name / "x").write_text(f"x of {name}")
    (source.root / "loop" / "loop").write_text("loop")
    os.chmod(source.root / "e" / "x", 0o600)
    os.chmod(source.root / "e", 0o700)
    target = host.root / "landing"
    _copy(machines, _job(source, source.root, host, target, ["/"], ["/"]))

    shutil.rmtree(source.root / "d")
    (source.root / "d").symlink_to("e")
    shutil.rmtree(source.root / "loop")
    (source.root / "loop").symlink_to(".")
    _copy(machines, _job(source, source.root, host, target, ["/"], ["/"]))

    assert _walk(target) == _walk(source.root)
    assert (target / "e" / "x").read_text() == "x of e"


def test_a_file_that_keeps_changing_fails_a_cold_run_in_words_and_the_place_stays_as_it_was(
    make_machine: Callable[[str], Machine], machines: SshMachines
) -> None:
    """A writer appends every 10 ms through the catch-up passes: the copy
    fails saying which file and what would help, and the copy in place from
    before is as it was, file for file and inode for inode."""
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    _source_tree(source.root)
    log = source.root / "var" / "log"
    log.parent.mkdir()
    log.write_bytes(b"the first line\n")
    target = host.root / "landing"
    job = _job(source, source.root, host, target, ["/"], ["/", "/data", "/srv"])
    _copy(machines, job)
    held = _walk(target), {path: inode[:2] for path, inode in _inodes(target).items()}
    stop = threading.Event()

    def append() -> None:
        with open(log, "ab") as file:
            while not stop.wait(0.01):
                file.write(b"one more line\n")
                file.flush()

    writer = threading.Thread(target=append)
    writer.start()
    try:
        with pytest.raises(CopyFailed) as failed:
            _copy(machines, job)
    finally:
        stop.set()
        writer.join()

    message = failed.value.message
    assert "1 file(s) of volume / kept changing" in message and "after 3 catch-up passes" in message, message
    assert "the first './var/log'" in message and "The copy in place is untouched" in message, message
    assert "Stop what writes them" in message and "snapshot" in message and "pre_cutover" in message, message
    assert (_walk(target), {path: inode[:2] for path, inode in _inodes(target).items()}) == held
    assert _leftovers(target) == []


def test_a_file_rewritten_once_mid_copy_is_sent_again_and_the_copy_is_whole(
    make_machine: Callable[[str], Machine], machines: SshMachines
) -> None:
    """Rewritten after the first stream, before its check: one catch-up pass
    sends it again, and the volume's report counts it twice."""
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    _source_tree(source.root)
    target = host.root / "landing"
    leave_out = (b"data", b"srv")
    files = [entry for entry in _walk(source.root, leave_out).values() if entry[0] == "file"]
    rewritten = b"rewritten once while the copy ran\n"

    async def rewrite(index: int, incoming: str) -> None:
        (source.root / "etc" / "hostname").write_bytes(rewritten)

    machines.after_stream = rewrite
    reports = _copy(machines, _job(source, source.root, host, target, ["/"], ["/", "/data", "/srv"]))

    assert _walk(target) == _walk(source.root, leave_out)
    assert (target / "etc" / "hostname").read_bytes() == rewritten
    done = reports[-1].done[0]
    assert (done.files, done.bytes) == (len(files) + 1, sum(entry[1] for entry in files) + len(rewritten))
    assert _leftovers(target) == []


def test_a_filesystem_the_host_mounts_below_a_place_is_left_alone(
    make_machine: Callable[[str], Machine], machines: SshMachines
) -> None:
    """A filesystem mounted on the host below the place, that the source does
    not have, is neither dropped nor emptied by the copy (nor by the next)."""
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    (source.root / "etc").mkdir()
    (source.root / "etc" / "motd").write_text("hello\n")
    target = host.root / "landing"
    mounted = target / "scratch"
    mounted.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mounted)], check=True)
    try:
        (mounted / "host's own").write_text("not the source's")
        job = _job(source, source.root, host, target, ["/"], ["/"])
        _copy(machines, job)
        (source.root / "etc" / "motd").write_text("hello again\n")
        _copy(machines, job)
        assert (mounted / "host's own").read_text() == "not the source's"
        assert (target / "etc" / "motd").read_text() == "hello again\n"
        assert _leftovers(target) == []
    finally:
        subprocess.run(["umount", str(mounted)], check=True)


def test_a_place_on_a_filesystem_of_its_own_receives_its_volume_by_rename(
    make_machine: Callable[[str], Machine], machines: SshMachines
) -> None:
    """The new copy is assembled on the place's own filesystem (a tmpfs the
    test mounts): what is in place afterwards is the very inode written into
    the new copy (renamed, never copied), or the one in place before (linked)."""
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    _source_tree(source.root)
    target = host.root / "landing"
    place = target / "data"
    place.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(place)], check=True)
    try:
        device = os.stat(place).st_dev
        assert device != os.stat(target).st_dev
        incoming: dict[bytes, tuple[int, int]] = {}

        async def note(index: int, new_copy: str) -> None:
            if index == 1:
                incoming.update((path, inode[:2]) for path, inode in _inodes(new_copy).items() if path != b".")

        machines.after_stream = note
        job = _job(source, source.root, host, target, ["/", "/data"], ["/", "/data", "/srv"])
        _copy(machines, job)
        assert incoming[b"rows"] == (os.lstat(place / "rows").st_ino, device)

        # Again with a new file: the file that did not change is the one in place, linked.
        (source.root / "data" / "more").write_bytes(b"more rows\n" * 100)
        kept = os.lstat(place / "rows").st_ino
        incoming.clear()
        reports = _copy(machines, job)

        assert incoming[b"rows"] == (kept, device) == (os.lstat(place / "rows").st_ino, device)
        assert incoming[b"more"] == (os.lstat(place / "more").st_ino, device)
        assert _walk(place) == _walk(source.root / "data")
        assert _leftovers(target, place) == []
        assert (reports[-1].done[1].files, reports[-1].done[1].linked) == (1, 1)
    finally:
        subprocess.run(["umount", str(place)], check=True)


# -- a service killed at each step of a volume's copy ---------------------------


# How the service's local clients begin: OpenSSH's ssh, or what starts it.
_CLIENTS = (b"ssh\0", b"nice\0", b"setpriv\0")


class _Step:
    """The remote processes of a volume's copy, as the host and the source
    (this test's sshd) run them: a step is found in the act and stopped
    (SIGSTOP to its process group), so that the service is caught there."""

    def __init__(self, source: Path, landing: Path, sshd: int, holding: Path) -> None:
        self._roots = (os.fsencode(source), os.fsencode(landing))
        self._landing = landing
        self._sshd = sshd
        # How the held listing's find shows (see _holding_listings): its script, then find's arguments.
        self._held_find = os.fsencode(holding / "find") + b"\0.\0-xdev\0"
        self._big = 0  # the inode of the copy in place's big file, until the swap moves the new one in

    def _processes(self, step: str | None = None) -> Iterator[int]:
        """The processes at work below the two trees (those of `step` alone,
        on a machine: not the service's own `ssh` clients, whose arguments
        carry the remote command), arguments first (the quickest to read,
        and a step takes milliseconds). A step is sought among sshd's
        descendants, while the service lives; the end, in all of /proc:
        what a dead connection leaves is no longer sshd's."""
        for entry in (os.listdir("/proc") if step is None else _below(self._sshd)):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as file:
                    args = file.read()
                if step is not None and (args.startswith(_CLIENTS) or not self._is(step, args)):
                    continue
                directory = os.readlink(f"/proc/{entry}/cwd".encode())
            except OSError:
                continue  # ended meanwhile, or a zombie
            if any(root in args or directory.startswith(root) for root in self._roots):
                yield int(entry)

    def _is(self, step: str, args: bytes) -> bool:
        if step == "listing":  # the source's find that holds itself (_holding_listings)
            return self._held_find in args
        if step == "stream":
            return args.startswith(b"tar\0") and b"\0-cpf\0" in args
        if step == "hashing":
            return args.startswith(b"sha256sum\0")
        # The swap's shells, once its first entry has moved in: midway.
        return b"mv -Tf" in args and os.lstat(self._landing / "big").st_ino != self._big

    def catch(self, step: str) -> int:
        """Wait for `step` to run; stop its process group, and return the group."""
        self._big = os.lstat(self._landing / "big").st_ino
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            for pid in self._processes(step):
                if step == "listing" and not _stopped(pid):
                    continue  # not held yet
                with contextlib.suppress(ProcessLookupError):  # too late: the next one
                    group = os.getpgid(pid)
                    os.killpg(group, signal.SIGSTOP)
                    return group
            # A look at sshd's few descendants takes a fraction of a millisecond:
            # one every millisecond or so, leaving the cores to the copy.
            time.sleep(0.001)
        raise AssertionError(f"no {step} seen within {PATIENCE}s")

    def ended(self) -> bool:
        return not any(True for _ in self._processes())


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().rpartition(b")")[2].split()[0] == b"T"
    except (OSError, IndexError):
        return False


def _below(pid: int) -> Iterator[str]:
    """The processes under `pid`, through each one's list of children (of its
    main thread: sshd and what it runs fork from theirs): a few dozen files
    to read where all of /proc is hundreds."""
    todo = [str(pid)]
    while todo:
        parent = todo.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as file:
                children = file.read().split()
        except OSError:
            continue  # ended meanwhile
        todo.extend(children)
        yield from children


def _holding_listings(sshd: SshServer, directory: Path, source: Path) -> tuple[str, Path]:
    """A key whose logins find `find` first in `directory`: a script that, run
    below `source` once the file it names is there, takes it away and stops
    itself (SIGSTOP) before it becomes the stock find. The source's next
    listing is then held for the test to catch, as no look at /proc on a
    loaded machine could be sure to catch a listing of milliseconds. The
    key, and the file that holds the next listing."""
    directory.mkdir()
    hold = directory / "hold the next listing"
    stock = shutil.which("find", path=STOCK_PATH)
    assert stock is not None, "this machine has no find"
    below = shlex.quote(str(source))
    (directory / "find").write_text(
        "#!/bin/sh\n"
        f'case $PWD/ in {below}/*) rm -- {shlex.quote(str(hold))} 2>/dev/null && kill -STOP $$;; esac\n'
        f'exec {shlex.quote(stock)} "$@"\n'
    )
    os.chmod(directory / "find", 0o755)
    return key_with_path(sshd, f"{directory}:{STOCK_PATH}"), hold


def _many_files(root: Path, count: int) -> None:
    (root / "many").mkdir()
    for number in range(count):
        (root / "many" / f"file {number}").write_bytes(b"%d\n" % number)


def _changes(root: Path) -> int:
    """Changes that each step of the next copy has work with (one big file
    sent and hashed, hundreds of files moved in one by one, some dropped);
    the bytes of the files changed."""
    written = [os.urandom(2**20) * 24, b"new"]
    (root / "big").write_bytes(written[0])
    (root / "new").mkdir()
    (root / "new" / "file").write_bytes(written[1])
    for number in range(0, 600, 2):
        written.append(b"changed %d\n" % number)
        (root / "many" / f"file {number}").write_bytes(written[-1])
    for number in range(1, 200, 2):
        (root / "many" / f"file {number}").unlink()
    return sum(len(data) for data in written)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess(f"sqlite:///{tmp_path / 'service.db'}", tmp_path, "service", "--access-log", "off")
    yield process.start()
    process.kill()


@pytest.mark.parametrize("step", ["listing", "stream", "hashing", "swap", "swap, and the host with it"])
def test_a_service_killed_at_each_step_leaves_the_old_copy_or_the_new_and_the_rerun_is_whole(
    step: str, service: ServiceProcess, sshd: SshServer, make_machine: Callable[[str], Machine]
) -> None:
    """SIGKILL of the service while a step of the second copy onto a place
    runs: the place holds the old copy whole (before the swap) or the new
    one (the swap goes on alone; a host that died with it leaves a journal
    the next run carries out first), and the re-run makes it whole."""
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    holding = source.root.parent / "holding"
    hold = None
    if step == "listing":
        key, hold = _holding_listings(sshd, holding, source.root)
        source = attrs.evolve(source, private_key=key)  # the host's login too: the plan's one key
    _many_files(source.root, 2000)
    (source.root / "big").write_bytes(os.urandom(2**20))
    plan = RealPlan(service, source, host, ["/"])
    plan.ok("POST", f"/api/v1/migrations/{plan.migration}/run/", status=202)
    assert plan.until(lambda s: s["finished"])["state"] == "success"
    old = _walk(plan.landing)
    # Another migration of the source onto the same place: it finds the first one's copy there.
    plan.migration = plan.ok("POST", "/api/v1/migrations/", {
        "source": plan.source, "migration_target": plan.target, "selected_mount_points": plan.mount_points,
    }, 201)["id"]
    run = f"/api/v1/migrations/{plan.migration}/run/"
    changed = _changes(source.root)
    new = _walk(source.root)
    remote = _Step(source.root, plan.landing, sshd.pid, holding)
    if hold is not None:
        hold.touch()

    plan.ok("POST", run, status=202)
    group = remote.catch(step.split(",")[0])
    service.stop(signal.SIGKILL)
    if step == "swap, and the host with it":
        # The host went down mid-swap: the place holds part of the new copy,
        # and the journal tells the next run how to finish it.
        os.killpg(group, signal.SIGKILL)
        wait_for("the swap to end", remote.ended)
        now = _walk(plan.landing, _own(plan.landing))
        assert old != now != new
        assert os.path.isdir(plan.landing / f".migration-swap-{plan.migration}")
    elif step == "swap":
        # The swap goes on without the service, to its end.
        os.killpg(group, signal.SIGCONT)
        wait_for("the swap to end", remote.ended)
        assert _walk(plan.landing) == new
    else:
        assert _walk(plan.landing, _own(plan.landing)) == old  # at the instant of the kill
        # What the dead service left running ends, and has written nowhere but its new copy.
        os.killpg(group, signal.SIGCONT)
        wait_for("the killed service's remote processes to end", remote.ended)
        assert _walk(plan.landing, _own(plan.landing)) == old

    service.start()
    after = plan.state()
    assert (after["state"], after["error"]) == ("error", "interrupted")
    plan.ok("POST", run, status=202)
    done = plan.until(lambda s: s["finished"])

    assert (done["state"], done["error"]) == ("success", None), done
    assert _walk(plan.landing) == _walk(source.root) == new
    assert _leftovers(plan.landing) == []
    rerun = plan.events("volume_copied")[-1]["detail"]
    if step.startswith("swap"):
        assert rerun["bytes"] == 0, rerun  # the swap finished, by itself or by the next run first
    else:
        assert rerun["bytes"] == changed, rerun  # what differs from the old copy, all of it
