"""The real copy's transport (SPEC 2.10) against the session's OpenSSH server:
each machine reached by OpenSSH's `ssh` through one control master (one
login a machine), held to the pinned host key, never started for an address
outside the allowed networks, a password that never shows in a process's
arguments or environment, the words of a connection closed before the login,
a fingerprint pin completed, and the swap gate."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import subprocess
import tempfile
import threading
from pathlib import Path

import attrs
import pytest

from adapters.copy_engine.openssh import Login, ssh_command
from adapters.copy_engine.relay import COPY_NICENESS
from adapters.ssh import SshMachines
from migration_core.machines import CopyEnd, CopyFailed, CopyJob, VolumeToCopy

from ..sshd_fixtures import ClosingListener, Listener, Witness
from ..sshd_server import SshServer, descendants
from .test_ssh_copy import MIGRATION, OWNER, _address, _Copy, _job, _leftovers, _source_tree, _tree


def _ended(machines: SshMachines, job: CopyJob) -> CopyEnd:
    """How a copy ended, failed or not."""
    copy = _Copy(machines, job)
    with contextlib.suppress(CopyFailed):
        copy.wait()
    end = copy.handle.ended()
    assert end is not None
    return end


def _logins(sshd: SshServer) -> int:
    """The logins sshd has accepted so far."""
    return len(re.findall(r"Accepted (?:publickey|password) for", sshd.log()))


def test_a_copy_logs_in_once_a_machine_and_reports_the_whole_keys_it_met(
    sshd: SshServer, make_machine: object, machines: SshMachines
) -> None:
    """Every command and the stream go over one control master a machine:
    two logins for a whole copy (dozens of commands). The copy ends with the
    whole key each machine showed, for the worker to pin."""
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")  # type: ignore[operator]
    _source_tree(source.root)
    target = host.root / "landing"
    before = _logins(sshd)

    end = _ended(machines, _job(source, host, target, ["/", "/data"], ["/srv"]))

    assert end.failure is None, end.failure
    assert _logins(sshd) - before == 2
    assert dict(end.host_keys) == {"source": sshd.host_public_key(), "host": sshd.host_public_key()}
    assert _tree(target / "data") == _tree(source.root / "data")


def test_every_ssh_of_a_copy_runs_at_the_copies_priority_from_its_start(
    make_machine: object, machines: SshMachines
) -> None:
    """The masters (which carry every byte) and the clients start at the
    copies' niceness, so the API keeps its cores. Not lowered after their
    login instead: a master reniced once logged in left the API's detail p99
    under four copies at twice its figure (docs/benchmarks.md)."""
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")  # type: ignore[operator]
    (source.root / "big").write_bytes(os.urandom(24 * 2**20))
    own = os.getpriority(os.PRIO_PROCESS, 0)
    lowered = max(own, COPY_NICENESS)
    seen: dict[str, set[int]] = {"master": set(), "client": set()}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for pid in descendants(os.getpid()):
                try:
                    arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    niceness = os.getpriority(os.PRIO_PROCESS, pid)
                except OSError:
                    continue
                if arguments[0] == b"ssh":  # started: setpriv and nice have exec'd it
                    seen["master" if b"ControlMaster=yes" in arguments else "client"].add(niceness)
            stop.wait(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        end = _ended(machines, _job(source, host, host.root / "landing", ["/"], []))
    finally:
        stop.set()
        sampler.join()

    assert end.failure is None, end.failure
    assert seen == {"master": {lowered}, "client": {lowered}}
    login = Login("source", _address(source, source.root), Path("/nonexistent"), 10, None)
    for argv in (ssh_command(login, master=True), ssh_command(login, "true")):
        assert argv[argv.index("nice") + 1 : argv.index("nice") + 3] == ["-n", str(COPY_NICENESS)]


def test_a_fingerprint_pin_is_checked_against_the_machine_s_keys_before_the_login_and_completed(
    sshd: SshServer, make_machine: object, machines: SshMachines
) -> None:
    """A pin held as a fingerprint alone: the copy asks the machine for its
    keys without logging in, finds the one the fingerprint names, holds ssh
    to it and reports it whole; a fingerprint of another key is refused with
    nothing logged in, nothing sent."""
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")  # type: ignore[operator]
    _source_tree(source.root)
    target = host.root / "landing"
    job = _job(source, host, target, ["/"], ["/data", "/srv"])
    pinned = attrs.evolve(job, source=attrs.evolve(job.source, host_key=sshd.fingerprint()))

    end = _ended(machines, pinned)
    assert end.failure is None, end.failure
    assert end.host_keys["source"] == sshd.host_public_key()

    other = "SHA256:" + "A" * 43
    wrong = attrs.evolve(job, host=attrs.evolve(job.host, host_key=other, root=str(host.root / "elsewhere")))
    before = _logins(sshd)
    end = _ended(machines, wrong)
    assert end.failure is not None and end.failure.startswith(f"Host key changed at 127.0.0.2 port {host.port}")
    assert sshd.fingerprint() in end.failure and other in end.failure
    assert not (host.root / "elsewhere").exists()
    assert _logins(sshd) - before <= 1  # the source's, at most: nothing logged in to the host


def test_a_changed_host_key_is_refused_and_nothing_is_sent(
    sshd: SshServer, make_machine: object, machines: SshMachines
) -> None:
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")  # type: ignore[operator]
    _source_tree(source.root)
    target = host.root / "landing"
    job = _job(source, host, target, ["/"], ["/data", "/srv"])
    old = sshd.host_public_key()
    sshd.restart_with_new_host_key()
    pinned = attrs.evolve(job, host=attrs.evolve(job.host, host_key=old))

    end = _ended(machines, pinned)

    assert end.failure is not None
    assert end.failure.startswith(f"Host key changed at 127.0.0.2 port {host.port}: it showed {sshd.fingerprint()}")
    assert "If the machine was rebuilt, clear the workload's host_key" in end.failure
    assert not target.exists()


def test_an_address_outside_the_allowed_networks_starts_nothing(
    sshd: SshServer, make_machine: object, witness_listener: object
) -> None:
    """The host at 127.0.0.9 is outside the networks allowed: the copy is
    refused naming the setting, before any process starts, so neither the
    host's address (a witness listening there) nor the allowed source hears
    of it."""
    source = make_machine("127.0.0.1")  # type: ignore[operator]
    witness: Witness = witness_listener("127.0.0.9")  # type: ignore[operator]
    driver = SshMachines([ipaddress.ip_network("127.0.0.1/32")], connect_timeout=5)
    _source_tree(source.root)
    job = CopyJob(
        OWNER, MIGRATION, _address(source, source.root),
        attrs.evolve(_address(source, Path("/nowhere")), ip=witness.ip, port=witness.port),
        (VolumeToCopy("/", 1),), 0, ("/",),
    )
    before = _logins(sshd)
    try:
        end = _ended(driver, job)
    finally:
        driver.close()

    assert end.failure is not None
    assert "127.0.0.9 is outside the networks the service may connect to (MIGRATION_ALLOWED_NETWORKS" in end.failure
    assert witness.attempts() == []
    assert _logins(sshd) == before


def test_a_connection_closed_before_the_login_and_a_non_ssh_answer_read_as_they_are(
    make_machine: object, machines: SshMachines, closing_listener: ClosingListener, not_ssh_listener: Listener,
    closed_port: int,
) -> None:
    source = make_machine("127.0.0.2")  # type: ignore[operator]
    _source_tree(source.root)
    failures = {}
    for name, port in (("closing", closing_listener.port), ("http", not_ssh_listener.port), ("refused", closed_port)):
        job = CopyJob(
            OWNER, MIGRATION, _address(source, source.root),
            attrs.evolve(_address(source, Path("/nowhere")), ip="127.0.0.1", port=port),
            (VolumeToCopy("/", 1),), 0, ("/",),
        )
        failures[name] = _ended(machines, job).failure

    assert failures["closing"] == (
        f"The connection to 127.0.0.1 port {closing_listener.port} was closed before the login (the machine"
        " may be refusing connections beyond its sshd MaxStartups; try again or raise it)."
    )
    assert failures["http"] is not None
    assert failures["http"].startswith(f"127.0.0.1 port {not_ssh_listener.port} did not answer as an SSH server")
    assert failures["refused"] == f"Connection refused at 127.0.0.1 port {closed_port}: nothing listens there."


def test_a_password_login_copies_and_the_password_never_shows_in_a_process(
    make_machine: object, machines: SshMachines
) -> None:
    """While a copy logs in with a password (through the askpass helper and
    its FIFO) and carries a volume, no process's arguments or environment
    hold the password, nor does `ps`; the copy's private directory is 0700."""
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")  # type: ignore[operator]
    user = source.add_password_user()
    tree, target = (Path(tempfile.mkdtemp(dir="/tmp")) for _ in range(2))
    try:
        os.chmod(tree, 0o755)
        (tree / "file").write_bytes(os.urandom(3 * 2**20))
        os.chmod(tree / "file", 0o644)
        subprocess.run(["chown", user.name, str(target)], check=True)
        secret = user.password.encode()
        seen: list[str] = []
        modes: set[int] = set()
        scans = [0]
        stop = threading.Event()
        # Where the copy makes its private directory (copy_engine.openssh.private_directory).
        private_base = Path(tempfile.gettempdir() if len(tempfile.gettempdir()) < 40 else "/tmp")

        def scan() -> None:
            while not stop.is_set():
                scans[0] += 1
                for entry in os.listdir("/proc"):
                    if entry.isdigit():
                        for part in ("cmdline", "environ"):
                            try:
                                with open(f"/proc/{entry}/{part}", "rb") as file:
                                    if secret in file.read():
                                        seen.append(f"{entry}/{part}")
                            except OSError:
                                pass
                listing = subprocess.run(["ps", "-ewwo", "pid,args"], capture_output=True).stdout
                if secret in listing:
                    seen.append("ps")
                for directory in private_base.glob(f"copy-{os.getpid()}-*"):
                    try:
                        modes.add(directory.stat().st_mode & 0o777)
                    except OSError:
                        pass

        scanner = threading.Thread(target=scan)
        scanner.start()
        try:
            job = CopyJob(
                OWNER, MIGRATION,
                attrs.evolve(_address(source, tree), username=user.name, password=user.password, private_key=""),
                attrs.evolve(_address(host, target), username=user.name, password=user.password, private_key=""),
                (VolumeToCopy("/", 10),), 0, ("/",),
            )
            end = _ended(machines, job)
        finally:
            stop.set()
            scanner.join()

        assert end.failure is None, end.failure
        assert (target / "file").read_bytes() == (tree / "file").read_bytes()
        assert scans[0] > 1 and seen == []
        assert modes <= {0o700}
        assert _leftovers(target) == []
    finally:
        subprocess.run(["rm", "-rf", str(tree), str(target)], check=False)


class _Gate:
    """A swap gate as storage keeps it: records each call; `open` says whether a swap may go in."""

    def __init__(self, open: bool) -> None:
        self.open = open
        self.calls: list[tuple[str, int]] = []

    def enter(self, index: int) -> bool:
        self.calls.append(("enter", index))
        return self.open

    def leave(self, index: int, done: object = None) -> None:
        self.calls.append(("leave", index))


@pytest.mark.parametrize("open_", [True, False], ids=["open", "closed"])
def test_each_swap_passes_the_gate_and_a_closed_gate_swaps_nothing(
    make_machine: object, machines: SshMachines, open_: bool
) -> None:
    """Each volume enters the gate before its journal and leaves it after its
    swap; a gate that says the run ended (cancelled elsewhere) keeps the copy
    in place as it was, abandons the new copy and ends the copy `cancelled`."""
    source, host = make_machine("127.0.0.1"), make_machine("127.0.0.2")  # type: ignore[operator]
    _source_tree(source.root)
    target = host.root / "landing"
    (target / "etc").mkdir(parents=True)
    (target / "etc" / "hostname").write_text("old host\n")
    gate = _Gate(open_)
    done = threading.Event()
    handle = machines.start_copy(_job(source, host, target, ["/", "/data"], ["/srv"]), done.set, gate)
    while handle.ended() is None:
        assert done.wait(120), "the copy did not end"
        done.clear()
    end = handle.ended()
    assert end is not None

    if open_:
        assert end.failure is None, end.failure
        assert gate.calls == [("enter", 0), ("leave", 0), ("enter", 1), ("leave", 1)]
        assert (target / "etc" / "hostname").read_text() == "source\n"
    else:
        assert end.failure == "cancelled"
        assert gate.calls == [("enter", 0)]
        assert (target / "etc" / "hostname").read_text() == "old host\n"
        assert sorted(os.listdir(target)) == ["etc"]
    assert _leftovers(target, target / "data") == []
