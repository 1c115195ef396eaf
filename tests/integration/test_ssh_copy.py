"""The real copy through the SSH driver against a real OpenSSH server: two
machines played by two directories (at 127.0.0.1 and 127.0.0.2), compared by
the test's own walk and hashes, and the faults a copy must survive."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import migration_core as core
from adapters.carrying import CopyRouter
from adapters.clock import SystemClock
from adapters.memory import MemoryStorage
from adapters.passwords import ScryptHasher
from adapters.runners import BlockingRunner
from adapters.simulated_copy import SimulatedCopy
from adapters.ssh import SshMachines
from migration_core.machines import CopyFailed, CopyJob, CopyProgress, MachineAddress, VolumeToCopy

from ..sshd_fixtures import Machine
from ..sshd_server import SshServer

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]
OWNER = 1
MIGRATION = 7


def _address(machine: Machine, root: Path) -> MachineAddress:
    return MachineAddress(machine.ip, machine.port, machine.username, "", machine.private_key, str(root), None)


def _job(source: Machine, host: Machine, target: Path, volumes: list[str], others: list[str]) -> CopyJob:
    return CopyJob(
        owner_id=OWNER,
        migration_id=MIGRATION,
        source=_address(source, source.root),
        host=_address(host, target),
        volumes=tuple(VolumeToCopy(name, 1000) for name in volumes),
        first=0,
        source_volumes=tuple(volumes + others),
    )


def _tree(root: Path, leave_out: tuple[str, ...] = ()) -> dict[str, tuple[object, ...]]:
    """Every entry below root: type, mode, size, contents' hash or link target, mtime."""
    found: dict[str, tuple[object, ...]] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            relative = str(path.relative_to(root))
            if relative.startswith(leave_out):
                continue
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                found[relative] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[relative] = ("dir", stat.S_IMODE(info.st_mode))
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                found[relative] = ("file", stat.S_IMODE(info.st_mode), info.st_size, digest, int(info.st_mtime))
        dirs[:] = [d for d in dirs if not str((Path(directory) / d).relative_to(root)).startswith(leave_out)]
    return found


def _own(place: Path) -> tuple[bytes, ...]:
    """The copy's own entries at a place (new copies, journals), by name."""
    names = os.listdir(os.fsencode(place)) if place.is_dir() else []
    return tuple(name for name in names if name.startswith((b".migration-incoming-", b".migration-swap-")))


def _leftovers(*places: Path) -> list[str]:
    return [f"{place}/{os.fsdecode(name)}" for place in places for name in _own(place)]


def _source_tree(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc" / "empty").write_bytes(b"")
    (root / "etc" / "one").write_bytes(b"1")
    (root / "etc" / "hostname").write_text("source\n")
    os.chmod(root / "etc" / "hostname", 0o640)
    (root / "bin").mkdir()
    (root / "bin" / "big").write_bytes(os.urandom(3 * 2**20 + 17))  # larger than one chunk
    os.chmod(root / "bin" / "big", 0o755)
    (root / "deep" / "er" / "est").mkdir(parents=True)
    (root / "deep" / "er" / "est" / "leaf").write_text("leaf")
    (root / "link").symlink_to("etc/hostname")
    os.utime(root / "etc" / "one", (1_000_000_000, 1_000_000_000))
    (root / "data").mkdir()  # a nested volume: copied on its own
    (root / "data" / "rows").write_bytes(os.urandom(70_000))
    (root / "srv").mkdir()  # a sibling volume not selected: never copied
    (root / "srv" / "secret").write_text("not selected")


class _Copy:
    """A copy as its runner sees it: each report it tells of, and its end."""

    def __init__(
        self, machines: SshMachines, job: CopyJob, on_report: Callable[[CopyProgress], None] = lambda _p: None
    ) -> None:
        self.reports: list[CopyProgress] = []
        self._on_report = on_report
        self._started = threading.Event()
        self._news = threading.Event()
        self.handle = machines.start_copy(job, self._changed)
        self._started.set()

    def _changed(self) -> None:
        self._started.wait()
        progress = self.handle.progress()
        if progress is not None and (not self.reports or self.reports[-1] is not progress):
            self.reports.append(progress)
            self._on_report(progress)
        self._news.set()

    def cancel(self) -> None:
        self.handle.cancel()

    def wait(self, timeout: float = 120.0) -> None:
        """Until the copy ends; CopyFailed with its words when it failed."""
        deadline = time.monotonic() + timeout
        while (end := self.handle.ended()) is None:
            assert time.monotonic() < deadline, "the copy did not end"
            self._news.wait(0.5)
            self._news.clear()
        if end.failure is not None:
            raise CopyFailed(end.failure)


def _copy(machines: SshMachines, job: CopyJob) -> list[CopyProgress]:
    copy = _Copy(machines, job)
    copy.wait()
    return copy.reports


def test_a_tree_is_copied_exactly_each_volume_on_its_own(
    make_machine: object, machines: SshMachines, tmp_path: Path
) -> None:
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")  # type: ignore[operator]
    _source_tree(source.root)
    target = host.root / "landing"

    reports = _copy(machines, _job(source, host, target, ["/", "/data"], ["/srv"]))

    expected = _tree(source.root, leave_out=("srv/", "data/"))
    copied = _tree(target, leave_out=("srv/", "data/"))
    del expected["srv"]
    assert copied == expected
    assert _tree(source.root / "data") == _tree(target / "data")
    assert not (target / "srv").exists()
    assert _leftovers(target, target / "data") == []
    last = reports[-1]
    assert last.volumes == 2 and [d.index for d in last.done] == [0, 1]
    files_in_root = sum(1 for v in expected.values() if v[0] == "file")
    bytes_in_root = sum(int(v[2]) for v in expected.values() if v[0] == "file")  # type: ignore[call-overload]
    assert (last.done[0].files, last.done[0].bytes) == (files_in_root, bytes_in_root)
    assert (last.done[1].files, last.done[1].bytes) == (1, 70_000)
    partials = [r.partial for r in reports if r.volumes == 0]
    assert partials == sorted(partials)  # bytes only grow while a volume passes


def test_a_file_changed_on_the_host_before_verification_fails_and_moves_nothing(
    make_machine: object, machines: SshMachines
) -> None:
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")  # type: ignore[operator]
    _source_tree(source.root)
    target = host.root / "landing"

    async def tamper(index: int, staged: str) -> None:
        (Path(staged) / "etc" / "hostname").write_text("changed on the host\n")

    machines.after_stream = tamper
    with pytest.raises(CopyFailed, match=r"Verification failed for volume /: 1 file\(s\) differ .*'./etc/hostname'"):
        _copy(machines, _job(source, host, target, ["/"], ["/data", "/srv"]))
    assert not target.exists() or list(target.iterdir()) == []


def test_previous_contents_are_replaced_only_by_a_verified_copy(make_machine: object, machines: SshMachines) -> None:
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")  # type: ignore[operator]
    _source_tree(source.root)
    target = host.root / "landing"
    (target / "etc").mkdir(parents=True)
    (target / "etc" / "hostname").write_text("old host\n")

    async def tamper(index: int, staged: str) -> None:
        (Path(staged) / "etc" / "one").write_bytes(b"2")

    machines.after_stream = tamper
    with pytest.raises(CopyFailed):
        _copy(machines, _job(source, host, target, ["/"], ["/data", "/srv"]))
    assert (target / "etc" / "hostname").read_text() == "old host\n"
    assert _leftovers(target) == []

    machines.after_stream = None
    _copy(machines, _job(source, host, target, ["/"], ["/data", "/srv"]))
    assert (target / "etc" / "hostname").read_text() == "source\n"


def test_no_space_left_on_the_host_fails_in_words_and_leaves_no_staging(
    make_machine: object, machines: SshMachines
) -> None:
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")  # type: ignore[operator]
    _source_tree(source.root)
    target = host.root / "small"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)], check=True)
    try:
        with pytest.raises(CopyFailed, match="No space left on the host under"):
            _copy(machines, _job(source, host, target, ["/"], ["/data", "/srv"]))
        assert list(target.iterdir()) == []
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_a_source_file_the_login_may_not_read_fails_naming_the_path(
    sshd: SshServer, make_machine: object, machines: SshMachines, tmp_path: Path
) -> None:
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")  # type: ignore[operator]
    user = source.add_password_user()
    tree = Path(
        subprocess.run(["mktemp", "-d", "-p", "/tmp"], check=True, capture_output=True, text=True).stdout.strip()
    )
    try:
        os.chmod(tree, 0o755)
        (tree / "open").write_text("anyone")
        (tree / "closed").write_text("root only")
        os.chmod(tree / "closed", 0o600)
        target = Path(
            subprocess.run(["mktemp", "-d", "-p", "/tmp"], check=True, capture_output=True, text=True).stdout.strip()
        )
        subprocess.run(["chown", user.name, str(target)], check=True)
        login = MachineAddress("127.0.0.1", source.port, user.name, user.password, "", str(tree), None)
        job = CopyJob(
            OWNER,
            MIGRATION,
            login,
            MachineAddress("127.0.0.2", host.port, user.name, user.password, "", str(target), None),
            (VolumeToCopy("/", 10),),
            0,
            ("/",),
        )
        with pytest.raises(CopyFailed, match=r"Permission denied: .*closed"):
            _Copy(machines, job).wait()
        assert list(target.iterdir()) == []
    finally:
        subprocess.run(["rm", "-rf", str(tree), str(target)], check=False)


def _remote(*roots: Path) -> list[str]:
    """The processes sshd runs below these trees for the copy (tar, find, sha256sum)."""
    listing = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if any(str(root) in line for root in roots)]


def test_cancel_mid_copy_stops_the_remote_processes_and_removes_the_staging(
    make_machine: object, machines: SshMachines
) -> None:
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")  # type: ignore[operator]
    (source.root / "huge").write_bytes(os.urandom(2**20) * 256)  # 256 MiB: long enough to stop midway
    target = host.root / "landing"
    passing = threading.Event()

    def report(progress: CopyProgress) -> None:
        if progress.partial > 0:
            passing.set()

    copy = _Copy(machines, _job(source, host, target, ["/"], []), report)
    assert passing.wait(30), "no byte passed"
    assert _remote(source.root, host.root)  # the two tars
    copy.cancel()

    with pytest.raises(CopyFailed, match="cancelled"):
        copy.wait()
    assert _leftovers(target) == []
    assert _remote(source.root, host.root) == []
    assert not (target / "huge").exists()


def test_sshd_killed_mid_copy_fails_as_a_vanished_machine(
    sshd: SshServer, make_machine: object, machines: SshMachines
) -> None:
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")  # type: ignore[operator]
    (source.root / "huge").write_bytes(os.urandom(2**20) * 256)
    target = host.root / "landing"
    passing = threading.Event()
    copy = _Copy(machines, _job(source, host, target, ["/"], []), lambda p: passing.set() if p.partial else None)
    assert passing.wait(30)
    sshd.kill()

    with pytest.raises(CopyFailed, match=r"vanished mid-copy"):
        copy.wait()
    assert not (target / "huge").exists()
    sshd.start()


HOSTILE = ["sp ace", "it's", 'quo"te', "semi;colon", "$(touch CANARY)", "`touch CANARY`", "new\nline", "-leading"]


def test_hostile_names_are_copied_exactly_and_never_run(make_machine: object, machines: SshMachines) -> None:
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")  # type: ignore[operator]
    for name in HOSTILE:
        (source.root / name).mkdir()
        (source.root / name / name).write_text(name)
    raw = os.fsencode(source.root) + b"/not-utf8-\xff\xfe"
    with open(raw, "wb") as file:
        file.write(b"bytes")
    volume = "/" + HOSTILE[4]  # a volume whose name is a command substitution
    target = host.root / "landing"

    _copy(machines, _job(source, host, target, ["/", volume], []))

    assert _tree(source.root) == _tree(target)
    with open(os.fsencode(target) + b"/not-utf8-\xff\xfe", "rb") as file:
        assert file.read() == b"bytes"
    for place in (source.root, host.root, target, Path.home(), Path("/")):
        assert not (place / "CANARY").exists()


def test_an_embedding_program_s_blocking_runner_carries_a_real_copy(
    make_machine: object, machines: SshMachines
) -> None:
    """README, "Embedding the core": `BlockingRunner` with `CopyRouter(SimulatedCopy(0), machines)`
    copies a run into a target with a host for real, and `run_migration` returns it verified."""
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")  # type: ignore[operator]
    _source_tree(source.root)
    storage, clock = MemoryStorage(), SystemClock()
    owner = core.register_user(storage, ScryptHasher(n=2**4), "embedder", "long enough").id
    login = core.create_credentials(storage, owner, username=source.username, private_key=source.private_key)
    system = core.create_mount_point(storage, owner, name="/", size=1)
    workload = core.create_workload(
        storage, owner, ip=source.ip, port=source.port, credentials_id=login.id,
        mount_point_ids=[system.id], os="linux", root=str(source.root),
    )
    receiver = core.create_workload(storage, owner, ip=host.ip, port=host.port, credentials_id=login.id, os="linux")
    landing = host.root / "landing"
    target = core.create_migration_target(
        storage, owner, cloud_type="vsphere", cloud_credentials_id=login.id, host_id=receiver.id, root=str(landing)
    )
    migration = core.create_migration(
        storage, owner, clock=clock, source_id=workload.id, migration_target_id=target.id,
        selected_mount_point_ids=[system.id],
    )

    runner = BlockingRunner(storage, clock, CopyRouter(SimulatedCopy(0), machines))
    done = core.run_migration(storage, clock, runner, owner, migration.id)

    assert (done.state, done.progress, done.error) == (core.MigrationState.SUCCESS, 100, None)
    assert _tree(landing) == _tree(source.root)
    copied = core.list_events(storage, owner, migration.id, core.ListQuery(filters={"kind": "volume_copied"})).items
    assert [event.detail["verified"] for event in copied] == [True]
