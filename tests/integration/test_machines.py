"""Checks and discoveries against a real OpenSSH server (tests/sshd_server.py):
the core's use cases through the SSH driver, with the in-memory storage."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

import migration_core as core
from adapters.memory import MemoryStorage
from adapters.ssh import SshMachines, parse_mounts, volumes_under
from migration_core import Conflict, OperatingSystem

from ..sshd_fixtures import ClosingListener, Listener, Machine, Witness
from ..sshd_server import SshServer

OWNER = 1
LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]


@pytest.fixture
def machines() -> Iterator[SshMachines]:
    driver = SshMachines(LOOPBACK, connect_timeout=30)  # a bound on a busy machine, not an expectation
    yield driver
    driver.close()


def _storage() -> MemoryStorage:
    storage = MemoryStorage()
    with storage.unit_of_work() as uow:
        assert uow.users.add(core.User("owner", "not-a-real-hash")).id == OWNER
        uow.commit()
    return storage


def _workload(
    storage: MemoryStorage,
    ip: str,
    port: int,
    *,
    username: str,
    password: str = "",
    private_key: str = "",
    root: str = "/",
) -> int:
    credentials = core.create_credentials(storage, OWNER, username=username, password=password, private_key=private_key)
    return core.create_workload(storage, OWNER, ip=ip, credentials_id=credentials.id, port=port, root=root).id


def _of(storage: MemoryStorage, machine: Machine, **options: str) -> int:
    options.setdefault("private_key", machine.private_key)
    return _workload(storage, machine.ip, machine.port, username=machine.username, root=str(machine.root), **options)


@pytest.mark.parametrize("key", ["private_key", "pem_private_key"])
def test_a_check_reads_what_the_machine_says_of_itself_and_pins_its_key(
    machine: Machine, machines: SshMachines, key: str
) -> None:
    storage = _storage()
    workload_id = _of(storage, machine, private_key=getattr(machine, key))

    report = core.check_workload(storage, machines, OWNER, workload_id)

    uname = os.uname()
    assert report.ok, report.message
    assert (report.os, report.hostname, report.kernel) == (OperatingSystem.LINUX, socket.gethostname(), uname.release)
    assert report.hostname == uname.nodename
    assert dict(report.tools) == {"tar": True, "sha256sum": True}
    assert report.host_key == machine.host_key_fingerprint  # answered as its fingerprint
    stored = core.get_workload(storage, OWNER, workload_id)
    assert (stored.host_key, stored.os) == (machine.host_public_key, OperatingSystem.LINUX)  # pinned whole


def test_a_password_login_checks_too_and_a_wrong_password_is_refused_in_words(
    machine: Machine, machines: SshMachines
) -> None:
    user = machine.add_password_user()
    storage = _storage()
    good = _workload(storage, "127.0.0.1", machine.port, username=user.name, password=user.password)
    bad = _workload(storage, "127.0.0.2", machine.port, username=user.name, password=user.password + "x")

    assert core.check_workload(storage, machines, OWNER, good).ok
    refused = core.check_workload(storage, machines, OWNER, bad)

    assert not refused.ok
    assert refused.message == f"Login refused for user {user.name!r} at 127.0.0.2 port {machine.port}."
    assert core.get_workload(storage, OWNER, bad).host_key is None  # no contact pinned anything


def test_a_closed_port_a_port_that_is_not_ssh_and_a_silent_one_fail_in_words(
    sshd: SshServer, closed_port: int, not_ssh_listener: Listener, silent_listener: Listener
) -> None:
    driver = SshMachines(LOOPBACK, connect_timeout=1)
    messages = {}
    try:
        for name, ip, port in (
            ("refused", "127.0.0.1", closed_port),
            ("not ssh", not_ssh_listener.ip, not_ssh_listener.port),
            ("silent", silent_listener.ip, silent_listener.port),
        ):
            storage = _storage()
            workload_id = _workload(storage, ip, port, username="root", password="x")
            report = core.check_workload(storage, driver, OWNER, workload_id)
            assert not report.ok
            messages[name] = report.message
    finally:
        driver.close()

    assert messages["refused"] == f"Connection refused at 127.0.0.1 port {closed_port}: nothing listens there."
    assert messages["not ssh"].startswith(
        f"{not_ssh_listener.ip} port {not_ssh_listener.port} did not answer as an SSH server"
    )
    assert messages["silent"] == (
        f"Timed out after 1 s connecting and logging in to {silent_listener.ip} port {silent_listener.port}."
    )


def test_a_changed_host_key_refuses_every_connection_until_the_user_clears_it(
    sshd: SshServer, machine: Machine, machines: SshMachines
) -> None:
    storage = _storage()
    workload_id = _of(storage, machine)
    first = core.check_workload(storage, machines, OWNER, workload_id)
    assert first.ok and first.host_key == machine.host_key_fingerprint

    sshd.restart_with_new_host_key()
    changed = core.check_workload(storage, machines, OWNER, workload_id)
    found = core.discover_volumes(storage, machines, OWNER, workload_id)

    assert not changed.ok and changed.message.startswith("Host key changed at 127.0.0.1")
    assert sshd.fingerprint() in changed.message and machine.host_key_fingerprint in changed.message
    assert not found.ok and found.message == changed.message
    assert core.get_workload(storage, OWNER, workload_id).host_key == machine.host_public_key

    core.update_workload(storage, OWNER, workload_id, host_key=None)
    again = core.check_workload(storage, machines, OWNER, workload_id)
    assert again.ok and again.host_key == sshd.fingerprint()
    assert core.get_workload(storage, OWNER, workload_id).host_key == sshd.host_public_key()


def test_an_address_outside_the_allowed_networks_is_refused_before_any_packet(
    witness_listener: Callable[[str], Witness],
) -> None:
    witness = witness_listener("127.0.0.9")
    storage = _storage()
    workload_id = _workload(storage, "127.0.0.9", witness.port, username="root", password="x")
    driver = SshMachines([ipaddress.ip_network("127.0.0.1/32")], connect_timeout=2)
    try:
        for action in (core.check_workload, core.discover_volumes):
            with pytest.raises(
                Conflict, match=r"127\.0\.0\.9 is outside .*MIGRATION_ALLOWED_NETWORKS: 127\.0\.0\.1/32"
            ):
                action(storage, driver, OWNER, workload_id)
    finally:
        driver.close()
    assert witness.attempts() == []


def _data_mounts() -> dict[str, str]:
    """What this machine mounts under / that discovery should find, by
    Python's own reading of /proc/self/mounts: directories only."""
    with open("/proc/self/mounts", "rb") as mounts:
        listed = volumes_under("/", parse_mounts(mounts.read()))
    return {name: path for name, path in listed if os.path.isdir(path)}


def _used(path: str) -> int:
    stat = os.statvfs(path)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def test_discovery_of_this_machine_matches_its_mounts_and_used_bytes(machine: Machine, machines: SshMachines) -> None:
    storage = _storage()
    workload_id = _of(storage, machine)
    core.update_workload(storage, OWNER, workload_id, root="/")

    expected = _data_mounts()
    report = core.discover_volumes(storage, machines, OWNER, workload_id)
    after = _data_mounts()

    assert report.ok, report.message
    found = {change.name: change.size for change in report.added}
    assert set(found) == set(expected) == set(after)
    assert "/" in found and "/proc" not in found and "/sys" not in found
    for name, size in found.items():
        # Other processes write meanwhile: within 64 MiB of what Python read.
        assert abs(size - _used(expected[name])) < 64 * 2**20, name
    workload = core.get_workload(storage, OWNER, workload_id)
    stored = {core.get_mount_point(storage, OWNER, i).name for i in workload.mount_point_ids}
    assert stored == set(found)
    assert workload.os is OperatingSystem.LINUX and workload.host_key == machine.host_public_key


def test_a_dry_run_writes_nothing_and_a_second_discovery_updates_sizes_and_removes_nothing(
    machine: Machine, machines: SshMachines
) -> None:
    storage = _storage()
    kept = core.create_mount_point(storage, OWNER, name="/gone", size=5)
    stale = core.create_mount_point(storage, OWNER, name="/", size=1)
    workload_id = _of(storage, machine)
    core.update_workload(storage, OWNER, workload_id, mount_point_ids=[kept.id, stale.id])
    before = core.get_workload(storage, OWNER, workload_id)

    dry = core.discover_volumes(storage, machines, OWNER, workload_id, dry_run=True)

    assert dry.ok and dry.added == () and [u.name for u in dry.updated] == ["/"]
    assert dry.updated[0].was == 1 and abs(dry.updated[0].size - _used(str(machine.root))) < 64 * 2**20
    assert core.get_workload(storage, OWNER, workload_id) == before
    assert core.get_mount_point(storage, OWNER, stale.id).size == 1

    real = core.discover_volumes(storage, machines, OWNER, workload_id)

    assert [u.name for u in real.updated] == ["/"] and real.unchanged == ()
    after = core.get_workload(storage, OWNER, workload_id)
    assert after.mount_point_ids == (kept.id, stale.id)  # /gone is not on the machine, and stays
    assert core.get_mount_point(storage, OWNER, stale.id).size == real.updated[0].size


HOSTILE = ["it's; touch CANARY", "$(touch CANARY)", "`touch CANARY`", "line\nbreak", "-rf", '"quoted" name']


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_roots_and_usernames_pass_through_as_data(
    machine: Machine, machines: SshMachines, name: str, tmp_path: Path
) -> None:
    root = machine.root / name
    root.mkdir()
    storage = _storage()
    workload_id = _of(storage, machine)
    core.update_workload(storage, OWNER, workload_id, root=str(root))
    stranger = _workload(storage, "127.0.0.2", machine.port, username=name, password="x")

    found = core.discover_volumes(storage, machines, OWNER, workload_id)
    refused = core.check_workload(storage, machines, OWNER, stranger)

    assert found.ok and [v.name for v in found.added] == ["/"]
    assert not refused.ok
    assert refused.message.startswith(("Login refused", "The login cannot be sent")), refused.message
    for place in (machine.root, root, Path.home(), Path("/")):
        assert not (place / "CANARY").exists()


def test_a_windows_workload_is_not_discovered(
    machine: Machine, machines: SshMachines, witness_listener: Callable[[str], Witness]
) -> None:
    witness = witness_listener("127.0.0.9")
    storage = _storage()
    workload_id = _workload(storage, "127.0.0.9", witness.port, username="Administrator", password="x")
    core.update_workload(storage, OWNER, workload_id, os=OperatingSystem.WINDOWS)

    with pytest.raises(Conflict, match="runs windows"):
        core.discover_volumes(storage, machines, OWNER, workload_id)
    assert witness.attempts() == []


def test_a_connection_closed_before_the_login_says_so_and_a_real_non_ssh_answer_is_told_apart(
    closing_listener: ClosingListener, not_ssh_listener: Listener
) -> None:
    """sshd beyond its MaxStartups closes a connection before the login
    (saying so in a line, or not): that reads as a closed connection, not as
    a machine that is no SSH server; an HTTP answer still reads as the latter."""
    driver = SshMachines(LOOPBACK, connect_timeout=5)
    try:
        reports = {}
        for name, listener in (("closing", closing_listener), ("http", not_ssh_listener)):
            storage = _storage()
            workload_id = _workload(storage, listener.ip, listener.port, username="root", password="x")
            reports[name] = core.check_workload(storage, driver, OWNER, workload_id)
    finally:
        driver.close()

    where = f"{closing_listener.ip} port {closing_listener.port}"
    assert reports["closing"].message == (
        f"The connection to {where} was closed before the login (the machine may be refusing"
        " connections beyond its sshd MaxStartups; try again or raise it)."
    )
    http = reports["http"].message
    assert http.startswith(f"{not_ssh_listener.ip} port {not_ssh_listener.port} did not answer as an SSH server"), http


def test_a_key_pinned_as_a_fingerprint_alone_is_completed_by_a_check_whose_key_matches_it(
    machine: Machine, machines: SshMachines
) -> None:
    """A database from an earlier release holds fingerprints: the next check
    that meets the key it names pins the whole key; one that meets another
    key leaves the pin as it was and is refused."""
    storage = _storage()
    workload_id = _of(storage, machine)
    _pin(storage, workload_id, machine.host_key_fingerprint)

    report = core.check_workload(storage, machines, OWNER, workload_id)

    assert report.ok and report.host_key == machine.host_key_fingerprint
    assert core.get_workload(storage, OWNER, workload_id).host_key == machine.host_public_key

    other = "SHA256:" + "A" * 43
    _pin(storage, workload_id, other)
    refused = core.check_workload(storage, machines, OWNER, workload_id)
    assert not refused.ok and refused.message.startswith("Host key changed at 127.0.0.1"), refused.message
    assert refused.host_key == other and core.get_workload(storage, OWNER, workload_id).host_key == other


def _pin(storage: MemoryStorage, workload_id: int, key: str) -> None:
    """A pin as an earlier release (or a check) left it, written straight through storage."""
    with storage.unit_of_work() as uow:
        workload = uow.workloads.get(OWNER, workload_id)
        uow.workloads.update(attrs.evolve(workload, host_key=key))
        uow.commit()
