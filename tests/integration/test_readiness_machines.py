"""Readiness (SPEC 2.11) against real OpenSSH servers (tests/sshd_server.py):
the core's `check_readiness`, `check_wave_readiness` and
`discover_workloads` through the SSH driver, with the in-memory storage.
Machines are directories at 127.0.0.1-3 (the session's sshd) or at
127.0.1.x (a fleet of stock sshd processes); each test breaks one thing for
real (a PATH without a program, a full tmpfs, a file where a volume should
be, a key the server does not know, a directory the login may not write, a
hook sh refuses) and reads the checks' names, flags, order and words."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import attrs
import pytest

import migration_core as core
from adapters.carrying import CopyRouter
from adapters.clock import SystemClock
from adapters.memory import MemoryStorage
from adapters.runners import BlockingRunner
from adapters.simulated_copy import SimulatedCopy
from adapters.ssh import SshMachines
from migration_core.machines import HOST_TOOLS, SOURCE_TOOLS, CopyJob, MachineAddress, Surveyed, SurveyQuestions
from migration_core.readiness import (
    MigrationReadiness,
    WaveReadiness,
    check_readiness,
    check_wave_readiness,
    discover_workloads,
)

from ..ssh_keys import keygen
from ..sshd_fixtures import STOCK_PATH, Machine, Witness, key_with_path
from ..sshd_fleet import SshFleet, fleet_addresses
from ..sshd_server import PATIENCE, SshServer
from .real_plans import tree

OWNER = 1
CLOCK = SystemClock()
# The checks of a real migration, in the order SPEC 2.11 gives them.
ORDER = (
    "source_login", "source_os", "source_tools", "host_tools", "volumes",
    "host_login", "host_root", "host_space", "system_volume", "target_free",
)
WARM_ORDER = (*ORDER, "hooks")
# Where the programs of a stock Debian login are.
KiB, MiB = 2**10, 2**20


# -- storage -------------------------------------------------------------


def _storage() -> MemoryStorage:
    storage = MemoryStorage()
    with storage.unit_of_work() as uow:
        assert uow.users.add(core.User("owner", "not-a-real-hash")).id == OWNER
        uow.commit()
    return storage


def _login(storage: MemoryStorage, machine: Machine, *, private_key: str | None = None) -> int:
    """Credentials for the machine's user with a key (the session's own unless given)."""
    key = machine.private_key if private_key is None else private_key
    return core.create_credentials(storage, OWNER, username=machine.username, private_key=key).id


@attrs.frozen
class Source:
    workload: int
    volumes: dict[str, int]  # mount point id by name, in the source's order

    def ids(self, *names: str) -> list[int]:
        return [self.volumes[name] for name in names]


def _source(
    storage: MemoryStorage,
    ip: str,
    port: int,
    credentials: int,
    root: Path | str,
    volumes: Sequence[str],
    *,
    os_name: str | None = None,
) -> Source:
    """A workload at ip:port whose tree is `root`, holding `volumes` (size 1: a
    readiness check reads the machine, not these)."""
    made = {name: core.create_mount_point(storage, OWNER, name=name, size=1).id for name in volumes}
    workload = core.create_workload(
        storage, OWNER, ip=ip, port=port, credentials_id=credentials, mount_point_ids=list(made.values()),
        root=str(root), os=os_name,
    )
    return Source(workload.id, made)


def _host(storage: MemoryStorage, ip: str, port: int, credentials: int) -> int:
    return core.create_workload(storage, OWNER, ip=ip, port=port, credentials_id=credentials).id


def _target(storage: MemoryStorage, credentials: int, host: int | None = None, root: Path | None = None) -> int:
    return core.create_migration_target(
        storage, OWNER, cloud_type="vsphere", cloud_credentials_id=credentials, host_id=host,
        root=None if root is None else str(root),
    ).id


def _migration(
    storage: MemoryStorage,
    source: Source,
    target: int,
    selected: Sequence[str],
    *,
    mode: str = "cold",
    pre: str | None = None,
    post: str | None = None,
) -> int:
    return core.create_migration(
        storage, OWNER, clock=CLOCK, source_id=source.workload, migration_target_id=target,
        selected_mount_point_ids=source.ids(*selected), mode=mode, pre_cutover=pre, post_cutover=post,
    ).id


@attrs.frozen
class Pair:
    """A source and its host at two addresses of one sshd, and a migration between them."""

    storage: MemoryStorage
    source: Source
    host: int
    target: int
    migration: int


def _pair(
    storage: MemoryStorage,
    source: Machine,
    host: Machine,
    landing: Path,
    volumes: Sequence[str],
    selected: Sequence[str],
    *,
    source_key: str | None = None,
    host_credentials: int | None = None,
) -> Pair:
    source_login = _login(storage, source, private_key=source_key)
    src = _source(storage, source.ip, source.port, source_login, source.root, volumes)
    host_login = _login(storage, host) if host_credentials is None else host_credentials
    host_id = _host(storage, host.ip, host.port, host_login)
    target = _target(storage, source_login, host_id, landing)
    return Pair(storage, src, host_id, target, _migration(storage, src, target, selected))


# -- what the checks answered ----------------------------------------------


def _flags(result: MigrationReadiness) -> list[tuple[str, bool]]:
    return [(check.check.value, check.ok) for check in result.checks]


def _words(result: MigrationReadiness) -> str:
    """Every check's message, for a failing assertion to show."""
    return "\n".join(
        f"{check.check.value}: {'ok' if check.ok else 'FAILED'}: {check.message}" for check in result.checks
    )


def _expect(result: MigrationReadiness, failing: Sequence[str] = (), order: Sequence[str] = ORDER) -> None:
    """The checks are `order`, in that order, and exactly `failing` failed."""
    assert not set(failing) - set(order), failing
    assert _flags(result) == [(name, name not in failing) for name in order], _words(result)
    assert result.ready is (not failing)
    assert result.failed == tuple(name for name in order if name in failing)


def _message(result: MigrationReadiness, name: str) -> str:
    (found,) = [check.message for check in result.checks if check.check.value == name]
    return found


def _size(count: int) -> str:
    """Bytes as the messages write them: 512 B, 12.0 KiB, 1.5 MiB."""
    if count < KiB:
        return f"{count} B"
    amount = float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        amount /= 1024
        if amount < 1024 or unit == "TiB":
            return f"{amount:.1f} {unit}"
    raise AssertionError("unreachable")


def _not_checked(because: str) -> str:
    return f"Not checked: {because}."


# -- the machines' trees, as the test reads them ---------------------------


def _listing(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything at and below `root` (across mounts, links not followed):
    type and mode, size, owner, inode, modification and change times, link
    target. A write of any kind changes at least one of them."""
    def seen(path: Path) -> tuple[object, ...]:
        info = path.lstat()
        link = os.readlink(path) if stat.S_ISLNK(info.st_mode) else None
        return (
            info.st_mode, info.st_size, info.st_uid, info.st_gid, info.st_ino, info.st_mtime_ns, info.st_ctime_ns, link
        )

    found = {".": seen(root)}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            found[str(path.relative_to(root))] = seen(path)
    return found


def _used(root: Path) -> int:
    """The bytes below `root` on its own filesystem as `du -sxb` counts them
    (apparent sizes, the directories' own too, a hard-linked file once):
    what a copy of the volume sends."""
    top = root.lstat()
    total, seen = top.st_size, set()
    for directory, dirs, files in os.walk(root):
        kept = []
        for name in dirs + files:
            info = (Path(directory) / name).lstat()
            if info.st_dev != top.st_dev or info.st_ino in seen:
                continue
            seen.add(info.st_ino)
            total += info.st_size
            if name in dirs:
                kept.append(name)
        dirs[:] = kept
    return total


@contextmanager
def _tmpfs(place: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `place` (made), unmounted at the end."""
    place.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(place)], check=True)
    try:
        yield place
    finally:
        subprocess.run(["umount", str(place)], check=True)


def _free(place: Path) -> int:
    """The bytes free to an unprivileged login under `place`, as statfs says."""
    info = os.statvfs(place)
    return info.f_bavail * info.f_frsize


def _small_tree(root: Path, payload: int = 40 * KiB) -> None:
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("source\n")
    os.chmod(root / "etc" / "hostname", 0o640)
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(os.urandom(payload))
    os.chmod(root / "bin" / "tool", 0o755)
    (root / "current").symlink_to("etc/hostname")
    os.utime(root / "etc" / "hostname", (1_000_000_000, 1_000_000_000))


# -- logins whose PATH the test makes ---------------------------------------


def _programs(directory: Path, names: Sequence[str]) -> Path:
    """A directory of symbolic links to each program named, as found on a stock PATH."""
    directory.mkdir()
    for name in dict.fromkeys(names):
        found = shutil.which(name, path=STOCK_PATH)
        assert found is not None, f"this machine has no {name}"
        (directory / name).symlink_to(found)
    return directory


def _stranger_key() -> str:
    """A private key no server authorizes."""
    return keygen(f"stranger-{secrets.token_hex(6)}", "-t", "ed25519")


# -- 1. a ready cold migration ------------------------------------------


def test_a_ready_cold_migration_passes_all_ten_checks_in_order_keeps_them_and_writes_nothing(
    make_machine: Callable[[str], Machine], machines: SshMachines
) -> None:
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    _small_tree(source.root)
    storage = _storage()
    # /var is a filesystem of its own, as on a real machine: the copy of /
    # leaves it out, and so does what / is found to hold. The host's disk is
    # one of its own too, so that its free bytes are the test's to know.
    with _tmpfs(source.root / "var", "4m") as var, _tmpfs(host.root / "disk", "64m") as disk:
        (var / "log").mkdir()
        (var / "log" / "syslog").write_bytes(os.urandom(300 * KiB))
        (disk / "other").mkdir()
        (disk / "other" / "kept").write_text("the host's own\n")
        landing = disk / "landing"
        pair = _pair(storage, source, host, landing, ["/", "/var"], ["/", "/var"])
        before = (_listing(source.root), _listing(host.root))
        began = CLOCK.now()

        result = check_readiness(storage, machines, OWNER, pair.migration)

        ended = CLOCK.now()
        after = (_listing(source.root), _listing(host.root))
        root_bytes, var_bytes, free = _used(source.root), _used(var), _free(disk)

    _expect(result)
    assert after == before  # nothing written on either machine, not even a time
    assert not landing.exists()
    hostname = socket.gethostname()
    fingerprint = source.host_key_fingerprint
    assert fingerprint == host.host_key_fingerprint  # one sshd plays both
    assert _message(result, "source_login") == (
        f"Logged in to {hostname} (127.0.0.1 port {source.port}) as {source.username}; host key {fingerprint}."
    )
    assert _message(result, "host_login") == (
        f"Logged in to {hostname} (127.0.0.2 port {host.port}) as {host.username}; host key {fingerprint}."
    )
    assert _message(result, "source_os") == "The source runs Linux."
    assert _message(result, "source_tools") == f"The source has every program a copy runs ({', '.join(SOURCE_TOOLS)})."
    assert _message(result, "host_tools") == f"The host has every program a copy runs ({', '.join(HOST_TOOLS)})."
    assert _message(result, "volumes") == (
        f"Every selected volume is a directory under {source.root}: / {_size(root_bytes)}, /var {_size(var_bytes)}."
    )
    assert _message(result, "host_root") == (
        f"{landing} is not on the host yet; {host.username!r} may make it in {disk}."
    )
    send = root_bytes + var_bytes
    assert 64 * MiB - 64 * KiB <= free < 64 * MiB
    assert _message(result, "host_space") == (
        f"{_size(free)} free under {disk}, {_size(int(send * 1.1))} needed ({_size(send)} to send plus 10%)."
    )
    assert _message(result, "system_volume") == "The system volume / is selected."
    assert _message(result, "target_free") == f"No other migration is running into target {pair.target}."

    # What was found is kept: each machine's last word, the migration's readiness, a preflight event.
    for workload_id in (pair.source.workload, pair.host):
        workload = core.get_workload(storage, OWNER, workload_id)
        assert workload.last_check is not None
        assert began <= workload.last_check.at <= ended
        assert (workload.last_check.ok, workload.last_check.message) == (
            True, f"Logged in to {hostname} as {source.username} (readiness check)."
        )
        assert (workload.os, workload.host_key) == (core.OperatingSystem.LINUX, source.host_public_key)
    readiness = core.get_migration(storage, OWNER, pair.migration).readiness
    assert readiness is not None and (readiness.ready, readiness.failed) == (True, ())
    assert began <= readiness.at <= ended
    events = core.list_events(storage, OWNER, pair.migration, core.ListQuery(filters={"kind": "preflight"})).items
    assert [(event.detail, event.at) for event in events] == [({"ready": True, "failed": []}, readiness.at)]


# -- 2. the programs on the login's PATH ----------------------------------


def test_a_program_missing_from_the_login_s_path_fails_the_tools_checks_naming_it(
    sshd: SshServer, make_machine: Callable[[str], Machine], machines: SshMachines, tmp_path: Path
) -> None:
    """A login whose PATH holds every program of SOURCE_TOOLS and HOST_TOOLS
    but sha256sum: the source's tools fail naming it, and the host's too
    when the host logs in with it; a host with a stock login is fine."""
    source, lean_host, stock_host = (make_machine(ip) for ip in ("127.0.0.1", "127.0.0.2", "127.0.0.3"))
    _small_tree(source.root)
    wanted = [tool for tool in dict.fromkeys((*SOURCE_TOOLS, *HOST_TOOLS)) if tool != "sha256sum"]
    lean_key = key_with_path(sshd, str(_programs(tmp_path / "bin", wanted)))
    storage = _storage()
    lean = _login(storage, source, private_key=lean_key)
    src = _source(storage, source.ip, source.port, lean, source.root, ["/"])
    hosts = (_host(storage, lean_host.ip, lean_host.port, lean), _host(storage, stock_host.ip, stock_host.port,
                                                                         _login(storage, stock_host)))
    onto_lean, onto_stock = (
        _migration(storage, src, _target(storage, lean, host, tmp_path / f"landing-{host}"), ["/"])
        for host in hosts
    )
    wave = core.create_wave(storage, OWNER, name="tools", migration_ids=[onto_lean, onto_stock]).id

    lean_result, stock_result = check_wave_readiness(storage, machines, OWNER, wave, at_once=3).migrations

    _expect(lean_result, ["source_tools", "host_tools"])
    _expect(stock_result, ["source_tools"])
    for result in (lean_result, stock_result):
        assert _message(result, "source_tools") == (
            "The source lacks sha256sum on the login's PATH: a copy runs it there. Install it or fix the PATH."
        )
    assert _message(lean_result, "host_tools") == (
        "The host lacks sha256sum on the login's PATH: a copy runs it there. Install it or fix the PATH."
    )
    assert _message(stock_result, "host_tools").startswith("The host has every program a copy runs")
    checked = core.get_workload(storage, OWNER, src.workload).last_check
    assert checked is not None and not checked.ok and "sha256sum" in checked.message, checked


def test_a_login_whose_path_holds_just_the_listed_programs_passes_every_check(
    sshd: SshServer, make_machine: Callable[[str], Machine], machines: SshMachines, tmp_path: Path
) -> None:
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    _small_tree(source.root)
    key = key_with_path(sshd, str(_programs(tmp_path / "bin", [*SOURCE_TOOLS, *HOST_TOOLS])))
    storage = _storage()
    lean = _login(storage, source, private_key=key)
    pair = _pair(storage, source, host, host.root / "landing", ["/"], ["/"], source_key=key, host_credentials=lean)

    result = check_readiness(storage, machines, OWNER, pair.migration)

    _expect(result)
    assert _message(result, "source_login").startswith(f"Logged in to {socket.gethostname()} ")


def test_a_real_copy_needs_no_program_beyond_the_listed_ones(
    sshd: SshServer, make_machine: Callable[[str], Machine], machines: SshMachines, tmp_path: Path
) -> None:
    """The converse of the tools checks, which proves the lists complete: a
    login whose PATH holds exactly SOURCE_TOOLS and HOST_TOOLS carries a
    cold run through the core, then a second migration into the same place
    (which hard-links what is unchanged), each byte for byte."""
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    _small_tree(source.root, payload=300 * KiB)
    (source.root / "var").mkdir()
    (source.root / "var" / "data").write_bytes(os.urandom(70_000))
    key = key_with_path(sshd, str(_programs(tmp_path / "bin", [*SOURCE_TOOLS, *HOST_TOOLS])))
    storage = _storage()
    lean = _login(storage, source, private_key=key)
    landing = host.root / "landing"
    pair = _pair(storage, source, host, landing, ["/", "/var"], ["/", "/var"], source_key=key, host_credentials=lean)
    src = core.get_workload(storage, OWNER, pair.source.workload)
    core.update_workload(storage, OWNER, src.id, os="linux")
    runner = BlockingRunner(storage, CLOCK, CopyRouter(SimulatedCopy(0), machines))

    first = core.run_migration(storage, CLOCK, runner, OWNER, pair.migration)

    assert (first.state, first.error) == (core.MigrationState.SUCCESS, None), first.error
    assert tree(landing) == tree(source.root)

    (source.root / "etc" / "hostname").write_text("changed\n")
    again = _migration(storage, pair.source, pair.target, ["/", "/var"])
    second = core.run_migration(storage, CLOCK, runner, OWNER, again)

    assert (second.state, second.error) == (core.MigrationState.SUCCESS, None), second.error
    assert tree(landing) == tree(source.root)


# -- 3. a full host -----------------------------------------------------


def test_a_host_without_room_fails_host_space_with_free_and_needed_bytes(
    make_machine: Callable[[str], Machine], machines: SshMachines
) -> None:
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    _small_tree(source.root, payload=3 * MiB)
    storage = _storage()
    with _tmpfs(host.root / "small", "1m") as small:
        landing = small / "landing"
        pair = _pair(storage, source, host, landing, ["/"], ["/"])

        result = check_readiness(storage, machines, OWNER, pair.migration)

        free = _free(small)
    send = _used(source.root)

    _expect(result, ["host_space"])
    assert free == MiB and send > 3 * MiB
    assert _message(result, "host_space") == (
        f"Not enough space on the host: 1.0 MiB free under {small},"
        f" {_size(int(send * 1.1))} needed ({_size(send)} to send plus 10%)."
    )
    assert _message(result, "host_root") == (
        f"{landing} is not on the host yet; {host.username!r} may make it in {small}."
    )


def test_a_selected_volume_below_another_on_its_filesystem_is_counted_once(
    make_machine: Callable[[str], Machine], machines: SshMachines
) -> None:
    """/ holds 1 MiB of its own and /var, a directory on the same filesystem,
    3 MiB: the run sends about 4 MiB (4.4 MiB with the margin), which a host
    with 6 MiB free takes."""
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    _small_tree(source.root, payload=MiB)
    (source.root / "var").mkdir()
    (source.root / "var" / "data").write_bytes(os.urandom(3 * MiB))
    storage = _storage()
    with _tmpfs(host.root / "room", "6m") as room:
        pair = _pair(storage, source, host, room / "landing", ["/", "/var"], ["/", "/var"])

        result = check_readiness(storage, machines, OWNER, pair.migration)

    var_bytes = _used(source.root / "var")
    own_bytes = _used(source.root) - var_bytes
    send = own_bytes + var_bytes
    assert _message(result, "volumes") == (
        f"Every selected volume is a directory under {source.root}: / {_size(own_bytes)}, /var {_size(var_bytes)}."
    )
    assert _message(result, "host_space") == (
        f"6.0 MiB free under {room}, {_size(int(send * 1.1))} needed ({_size(send)} to send plus 10%)."
    )
    _expect(result)


# -- 4. a volume that is not a directory -----------------------------------


def test_a_selected_volume_that_is_not_a_directory_fails_volumes_naming_it_and_space_is_not_checked(
    make_machine: Callable[[str], Machine], machines: SshMachines
) -> None:
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    _small_tree(source.root)
    (source.root / "data").write_text("a file where the volume /data should be\n")
    storage = _storage()
    pair = _pair(storage, source, host, host.root / "landing", ["/", "/data", "/srv"], ["/", "/data", "/srv"])

    result = check_readiness(storage, machines, OWNER, pair.migration)

    _expect(result, ["volumes", "host_space"])
    assert _message(result, "volumes") == (
        f"Not a directory under the source's root {source.root}, or not readable by the login:"
        f" /data ({source.root}/data), /srv ({source.root}/srv)."
        " Discover the workload's volumes again, or fix its root."
    )
    assert _message(result, "host_space") == _not_checked("the selected volumes' sizes are not known (volumes)")
    readiness = core.get_migration(storage, OWNER, pair.migration).readiness
    assert readiness is not None and (readiness.ready, readiness.failed) == (False, ("volumes", "host_space"))
    (event,) = core.list_events(storage, OWNER, pair.migration, core.ListQuery(filters={"kind": "preflight"})).items
    assert event.detail == {"ready": False, "failed": ["volumes", "host_space"]}


# -- 5. a host that refuses the login --------------------------------------


def test_a_host_that_refuses_the_login_fails_host_login_in_words_and_its_checks_say_not_checked(
    make_machine: Callable[[str], Machine], machines: SshMachines
) -> None:
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    _small_tree(source.root)
    storage = _storage()
    stranger = _login(storage, host, private_key=_stranger_key())
    pair = _pair(storage, source, host, host.root / "landing", ["/"], ["/"], host_credentials=stranger)

    result = check_readiness(storage, machines, OWNER, pair.migration)

    _expect(result, ["host_tools", "host_login", "host_root", "host_space"])
    refused = f"Login refused for user {host.username!r} at 127.0.0.2 port {host.port}."
    assert _message(result, "host_login") == f"The host, workload {pair.host}: {refused}"
    for name in ("host_tools", "host_root", "host_space"):
        assert _message(result, name) == _not_checked("the host could not be logged in to"), name
    checked = core.get_workload(storage, OWNER, pair.host).last_check
    assert checked is not None and (checked.ok, checked.message) == (False, refused)
    assert core.get_workload(storage, OWNER, pair.host).host_key is None  # no login, nothing pinned
    assert not (host.root / "landing").exists()


# -- 6. a root the login may not write -------------------------------------


def test_a_root_under_a_directory_the_host_s_login_may_not_write_fails_host_root_naming_it(
    make_machine: Callable[[str], Machine], machines: SshMachines
) -> None:
    """The host's login is a user of its own (a password login); the
    target's root would be made in a directory of root's (0755): refused,
    naming that directory. The same login with a directory of its own is
    fine. (Under /tmp: the test's own directory is root's, 0700.)"""
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    _small_tree(source.root)
    user = host.add_password_user()
    top = Path(tempfile.mkdtemp(prefix="readiness-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        locked, own = top / "locked", top / "own"
        locked.mkdir(mode=0o755)
        own.mkdir()
        shutil.chown(own, user.name)
        storage = _storage()
        login = core.create_credentials(storage, OWNER, username=user.name, password=user.password).id
        pair = _pair(storage, source, host, locked / "landing", ["/"], ["/"], host_credentials=login)
        fine = _migration(storage, pair.source, _target(storage, login, pair.host, own / "landing"), ["/"])
        wave = core.create_wave(storage, OWNER, name="roots", migration_ids=[pair.migration, fine]).id

        refused, allowed = check_wave_readiness(storage, machines, OWNER, wave, at_once=2).migrations

        assert sorted(os.listdir(top)) == ["locked", "own"] and os.listdir(locked) == os.listdir(own) == []
    finally:
        shutil.rmtree(top)

    _expect(refused, ["host_root", "host_space"])
    assert _message(refused, "host_root") == (
        f"The host's login {user.name!r} may not write {locked}: a copy writes under {locked / 'landing'}."
    )
    assert _message(refused, "host_space") == _not_checked("the target's root cannot be written (host_root)")
    assert _message(refused, "host_login").endswith(f" as {user.name}; host key {host.host_key_fingerprint}.")
    _expect(allowed)
    assert _message(allowed, "host_root") == (
        f"{own / 'landing'} is not on the host yet; {user.name!r} may make it in {own}."
    )


# -- 7. the system volume -------------------------------------------------


def test_a_migration_without_the_system_volume_fails_system_volume(
    make_machine: Callable[[str], Machine], machines: SshMachines
) -> None:
    """The source's os is unknown to storage: the login finds Linux, whose system volume is /."""
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    _small_tree(source.root)
    (source.root / "var").mkdir()
    storage = _storage()
    pair = _pair(storage, source, host, host.root / "landing", ["/", "/var"], ["/var"])
    assert core.get_workload(storage, OWNER, pair.source.workload).os is None

    result = check_readiness(storage, machines, OWNER, pair.migration)

    _expect(result, ["system_volume"])
    assert _message(result, "system_volume") == (
        "The system volume / is not selected: a migration may not run without it."
    )
    assert core.get_workload(storage, OWNER, pair.source.workload).os is core.OperatingSystem.LINUX


# -- 8. a target busy with another migration --------------------------------


class RecordingRunner:
    """Takes runs and carries none: what it is given stays running."""

    instance_id = "recording"

    def __init__(self) -> None:
        self.launched: list[int] = []

    def launch(self, job: CopyJob) -> None:
        self.launched.append(job.migration_id)

    def cancel(self, migration_id: int) -> None:
        pass

    def queued(self) -> None:
        pass


def test_a_target_another_migration_is_running_into_fails_target_free_naming_it(
    make_machine: Callable[[str], Machine], machines: SshMachines
) -> None:
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    _small_tree(source.root)
    storage = _storage()
    pair = _pair(storage, source, host, host.root / "landing", ["/"], ["/"])
    core.update_workload(storage, OWNER, pair.source.workload, os="linux")
    second = _migration(storage, pair.source, pair.target, ["/"])
    core.launch_run(storage, CLOCK, RecordingRunner(), OWNER, pair.migration)
    assert core.get_migration(storage, OWNER, pair.migration).state is core.MigrationState.RUNNING

    result = check_readiness(storage, machines, OWNER, second)

    _expect(result, ["target_free"])
    assert _message(result, "target_free") == (
        f"Migration {pair.migration} is running into target {pair.target}: wait for it to end."
    )
    assert not (host.root / "landing").exists()


# -- 9. hooks ------------------------------------------------------------


def _sh_says(command: str) -> str:
    """What this machine's sh says of `command` with -n (it is the machines' sh too)."""
    done = subprocess.run(["sh", "-n", "-c", command], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert done.returncode != 0, f"sh parses {command!r}"
    return done.stderr.strip()


def test_a_warm_migration_s_hooks_are_parsed_on_their_machines_and_a_cold_one_has_no_hooks_check(
    make_machine: Callable[[str], Machine], machines: SshMachines
) -> None:
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    _small_tree(source.root)
    storage = _storage()
    pair = _pair(storage, source, host, host.root / "landing", ["/"], ["/"])
    ran_pre, ran_post = source.root / "pre-ran", host.root / "post-ran"
    good_pre, good_post = f"touch {ran_pre} && sync", f"if [ -d /srv ]; then touch {ran_post}; fi; touch {ran_post}"
    bad_pre, bad_post = 'systemctl stop app && echo "stopped', "if [ -d /srv ]; then systemctl start app"
    bad_source, bad_host, parse = (
        _migration(storage, pair.source, pair.target, ["/"], mode="warm", pre=pre, post=post)
        for pre, post in ((bad_pre, good_post), (good_pre, bad_post), (good_pre, good_post))
    )
    cold = pair.migration
    wave = core.create_wave(storage, OWNER, name="hooks", migration_ids=[bad_source, bad_host, parse, cold]).id

    answer = check_wave_readiness(storage, machines, OWNER, wave, at_once=2).migrations
    answered = {result.migration_id: result for result in answer}

    assert [result.migration_id for result in answer] == sorted(answered)  # a wave answers by id
    results = [answered[migration] for migration in (bad_source, bad_host, parse, cold)]
    _expect(results[0], ["hooks"], WARM_ORDER)
    assert _message(results[0], "hooks") == f"pre_cutover does not parse on the source: {_sh_says(bad_pre)}."
    assert "Unterminated quoted string" in _message(results[0], "hooks")
    _expect(results[1], ["hooks"], WARM_ORDER)
    assert _message(results[1], "hooks") == f"post_cutover does not parse on the host: {_sh_says(bad_post)}."
    assert 'expecting "fi"' in _message(results[1], "hooks")
    _expect(results[2], [], WARM_ORDER)
    assert _message(results[2], "hooks") == "pre_cutover and post_cutover parse (sh -n)."
    _expect(results[3])  # cold: ten checks, no hooks
    assert not ran_pre.exists() and not ran_post.exists()  # parsed, never run


# -- 10. a simulated migration -------------------------------------------


def test_a_simulated_migration_answers_only_the_checks_that_need_no_machine_and_connects_nowhere(
    witness_listener: Callable[[str], Witness], machines: SshMachines
) -> None:
    witness = witness_listener("127.0.0.9")
    storage = _storage()
    login = core.create_credentials(storage, OWNER, username="root", password="never sent").id
    source = _source(storage, witness.ip, witness.port, login, "/", ["/", "/var"], os_name="linux")
    simulated = _target(storage, login)
    ready = _migration(storage, source, simulated, ["/", "/var"])
    without_system = _migration(storage, source, simulated, ["/var"])

    first = check_readiness(storage, machines, OWNER, ready)
    second = check_readiness(storage, machines, OWNER, without_system)

    _expect(first, [], ("system_volume", "target_free"))
    _expect(second, ["system_volume"], ("system_volume", "target_free"))
    assert witness.attempts() == []
    assert core.get_workload(storage, OWNER, source.workload).last_check is None  # no machine was asked
    (event,) = core.list_events(storage, OWNER, ready, core.ListQuery(filters={"kind": "preflight"})).items
    assert event.detail == {"ready": True, "failed": []}


# -- 11. an address outside the allowed networks -------------------------------


def test_an_address_outside_the_allowed_networks_is_refused_before_any_packet_and_fails_only_its_login_in_a_wave(
    make_machine: Callable[[str], Machine], witness_listener: Callable[[str], Witness]
) -> None:
    witness = witness_listener("127.0.0.9")
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")
    _small_tree(source.root)
    storage = _storage()
    pair = _pair(storage, source, host, host.root / "landing", ["/"], ["/"])
    login = _login(storage, source)
    outside = _source(storage, witness.ip, witness.port, login, "/", ["/"], os_name="linux")
    far = _migration(storage, outside, pair.target, ["/"])
    wave = core.create_wave(storage, OWNER, name="near and far", migration_ids=[pair.migration, far]).id
    allowed = [ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("127.0.0.2/32")]
    driver = SshMachines(allowed, connect_timeout=5)
    try:
        with pytest.raises(core.Conflict) as refused:
            check_readiness(storage, driver, OWNER, far)
        assert witness.attempts() == []
        assert core.get_migration(storage, OWNER, far).readiness is None  # a refused check keeps nothing

        near_result, far_result = check_wave_readiness(storage, driver, OWNER, wave, at_once=3).migrations
    finally:
        driver.close()

    words = (
        "127.0.0.9 is outside the networks the service may connect to"
        " (MIGRATION_ALLOWED_NETWORKS: 127.0.0.1/32, 127.0.0.2/32)."
    )
    assert refused.value.message == words
    assert witness.attempts() == []
    _expect(near_result)
    _expect(far_result, ["source_login", "source_os", "source_tools", "volumes", "host_space"])
    assert _message(far_result, "source_login") == f"The source, workload {outside.workload}: {words}"
    for name in ("source_os", "source_tools", "volumes"):
        assert _message(far_result, name) == _not_checked("the source could not be logged in to"), name
    checked = core.get_workload(storage, OWNER, outside.workload).last_check
    assert checked is not None and (checked.ok, checked.message) == (False, words)


# -- 12. a wave of thirty sources onto one host -------------------------------


class CountingMachines(SshMachines):
    """The SSH driver, counting the surveys under way: the first `at_once`
    wait for each other (so that the test knows that many ran at once), and
    the most seen at once is kept."""

    def __init__(self, at_once: int) -> None:
        super().__init__([ipaddress.ip_network("127.0.0.0/8")], connect_timeout=10)
        self._lock = threading.Lock()
        self._together = threading.Barrier(at_once, timeout=PATIENCE)
        self._at_once = at_once
        self.calls = 0
        self.running = 0
        self.most = 0

    def survey(self, address: MachineAddress, questions: SurveyQuestions) -> Surveyed:
        with self._lock:
            self.calls += 1
            first = self.calls <= self._at_once
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if first:
                self._together.wait()
            return super().survey(address, questions)
        finally:
            with self._lock:
                self.running -= 1


_CONNECTION = re.compile(r"^Connection from \S+ port \d+ on (\S+) port \d+ ", re.M)
_LOGIN = re.compile(r"^(Accepted|Failed) publickey for \S+ from \S+ port \d+ ", re.M)


def _logins(logs: Sequence[str]) -> tuple[dict[str, int], dict[str, int]]:
    """From sshd logs: the connections made, by the address they reached,
    and the publickey logins by outcome ("Accepted", "Failed"). (A login's
    line names the client's port, not the address reached, and two
    connections to two addresses may share a client port: so no more.)"""
    connections: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    for log in logs:
        for address in _CONNECTION.findall(log):
            connections[address] = connections.get(address, 0) + 1
        for outcome in _LOGIN.findall(log):
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return connections, outcomes


def _logs_once_settled(fleet: SshFleet, offsets: Sequence[int], settled: Callable[[list[str]], bool]) -> list[str]:
    """What each server of the fleet logged past its offset, once `settled`
    holds of it (or after PATIENCE seconds, for the assertions to show)."""
    deadline = time.monotonic() + PATIENCE
    while True:
        logs = [server.log()[offset:] for server, offset in zip(fleet.servers, offsets)]
        if settled(logs) or time.monotonic() > deadline:
            return logs
        time.sleep(0.01)  # polling a file sshd appends to


def test_a_wave_of_thirty_sources_onto_one_host_logs_in_to_each_machine_once_a_bounded_number_at_a_time(
    tmp_path: Path,
) -> None:
    """30 sources at 127.0.1.1-30 and their host at 127.0.1.31, on stock
    sshd processes (SshFleet); three migrations broken on purpose: a volume
    that is a file, a pre_cutover sh refuses, a source whose key is not
    authorized. The wave's readiness logs in 31 times (the host once for
    its 30 migrations), at most 8 at a time, and finds exactly those three
    not ready."""
    count, at_once = 30, 8
    broken_volume, broken_hook, refused_login = 4, 11, 19  # positions in the wave
    with SshFleet(fleet_addresses(count + 1), tmp_path / "fleet") as fleet:
        machines = [fleet.machine(address) for address in fleet_addresses(count + 1)]
        host, sources = machines[-1], machines[:-1]
        storage = _storage()
        good = _login(storage, host)
        stranger = _login(storage, host, private_key=_stranger_key())
        host_id = _host(storage, host.ip, host.port, good)
        migrations = []
        for number, machine in enumerate(sources):
            _small_tree(machine.root, payload=(1 + number) * KiB)
            (machine.root / "data").mkdir()
            if number == broken_volume:
                (machine.root / "data").rmdir()
                (machine.root / "data").write_text("not a directory\n")
            credentials = stranger if number == refused_login else good
            source = _source(storage, machine.ip, machine.port, credentials, machine.root, ["/", "/data"],
                             os_name="linux")
            target = _target(storage, good, host_id, host.root / f"from-{machine.ip}")
            warm = number == broken_hook
            migrations.append(_migration(
                storage, source, target, ["/", "/data"], mode="warm" if warm else "cold",
                pre="systemctl stop app; echo 'stopped" if warm else None,
            ))
        wave = core.create_wave(storage, OWNER, name="thirty", migration_ids=migrations).id
        before = [len(server.log()) for server in fleet.servers]
        landing_before = _listing(host.root)
        driver = CountingMachines(at_once)
        try:
            result: WaveReadiness = check_wave_readiness(storage, driver, OWNER, wave, at_once=at_once)
        finally:
            driver.close()
        # sshd's pre-login process hands its lines (a refused key's) to its
        # monitor, which writes them a moment after the client is answered.
        logs = _logs_once_settled(fleet, before, lambda logs: sum(_logins(logs)[1].values()) >= count + 1)
        assert _listing(host.root) == landing_before

    by_id = {one.migration_id: one for one in result.migrations}
    assert [one.migration_id for one in result.migrations] == sorted(migrations)
    assert (result.ready, result.not_ready) == (count - 3, 3)
    not_ready = {migration for migration, one in by_id.items() if not one.ready}
    assert not_ready == {migrations[broken_volume], migrations[broken_hook], migrations[refused_login]}
    _expect(by_id[migrations[broken_volume]], ["volumes", "host_space"])
    assert f"/data ({sources[broken_volume].root}/data)" in _message(by_id[migrations[broken_volume]], "volumes")
    _expect(by_id[migrations[broken_hook]], ["hooks"], WARM_ORDER)
    assert "Unterminated quoted string" in _message(by_id[migrations[broken_hook]], "hooks")
    _expect(by_id[migrations[refused_login]], ["source_login", "source_os", "source_tools", "volumes", "host_space"])
    assert "Login refused" in _message(by_id[migrations[refused_login]], "source_login")

    # One connection to each machine, the host's included (once for its 30
    # migrations); each let in but the one whose key is not authorized.
    connections, outcomes = _logins(logs)
    assert connections == dict.fromkeys(fleet_addresses(count + 1), 1), "\n".join(logs)
    assert outcomes == {"Accepted": count, "Failed": 1}, "\n".join(logs)  # 29 sources and the host
    # The refusal was on the server of the refused source's address.
    for server, log in zip(fleet.servers, logs):
        refused_here = sources[refused_login].ip in server.addresses
        assert _logins([log])[1].get("Failed", 0) == int(refused_here), log
    assert (driver.calls, driver.most) == (count + 1, at_once)


# -- 13. discovering many workloads at once -----------------------------------


def test_discovering_many_workloads_at_once_answers_each_by_id_and_a_dry_run_writes_nothing(
    make_machine: Callable[[str], Machine], machines: SshMachines, closed_port: int
) -> None:
    first, second = make_machine("127.0.0.2"), make_machine("127.0.0.3")
    storage = _storage()
    reachable = [
        core.create_workload(
            storage, OWNER, ip=m.ip, port=m.port, credentials_id=_login(storage, m), root=str(m.root)
        ).id
        for m in (first, second)
    ]
    nowhere = core.create_workload(
        storage, OWNER, ip="127.0.0.1", port=closed_port, credentials_id=_login(storage, first)
    ).id
    asked = [reachable[1], nowhere, reachable[0], nowhere]
    snapshot = (core.list_workloads(storage, OWNER, core.ListQuery(limit=100)).items,
                core.list_mount_points(storage, OWNER, core.ListQuery(limit=100)).items)

    dry = discover_workloads(storage, machines, OWNER, asked, at_once=2, dry_run=True)

    assert [workload_id for workload_id, _ in dry] == [reachable[1], nowhere, reachable[0]]  # in order, each once
    refused = f"Connection refused at 127.0.0.1 port {closed_port}: nothing listens there."
    for workload_id, report in dry:
        if workload_id == nowhere:
            assert (report.ok, report.message) == (False, refused)
        else:
            assert report.ok, report.message
            assert [volume.name for volume in report.added] == ["/"] and report.message.endswith(
                "would change 1 added, 0 updated, 0 unchanged."
            ), report
    assert (core.list_workloads(storage, OWNER, core.ListQuery(limit=100)).items,
            core.list_mount_points(storage, OWNER, core.ListQuery(limit=100)).items) == snapshot

    real = dict(discover_workloads(storage, machines, OWNER, asked, at_once=2))

    assert list(real) == [reachable[1], nowhere, reachable[0]]
    assert (real[nowhere].ok, real[nowhere].message) == (False, refused)
    for workload_id, machine in zip(reachable, (first, second)):
        report = real[workload_id]
        assert report.ok and report.message.endswith("changed 1 added, 0 updated, 0 unchanged."), report
        workload = core.get_workload(storage, OWNER, workload_id)
        (volume,) = [core.get_mount_point(storage, OWNER, i) for i in workload.mount_point_ids]
        assert (volume.name, volume.size) == ("/", report.added[0].size) and volume.size > 0
        assert workload.host_key == machine.host_public_key and workload.os is core.OperatingSystem.LINUX
        assert workload.last_check is not None and workload.last_check.ok
    unreachable = core.get_workload(storage, OWNER, nowhere)
    assert unreachable.last_check is not None and (unreachable.last_check.ok, unreachable.last_check.message) == (
        False, refused
    )
    assert unreachable.mount_point_ids == ()

