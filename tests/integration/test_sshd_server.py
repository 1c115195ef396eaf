"""The test sshd itself (tests/sshd_server.py) and the listeners beside it:
real clients log in the ways the service will, see the host key the server
says it has, and the faults are the faults they claim to be."""

from __future__ import annotations

import os
import pwd
import re
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.ssh_library import asyncssh
from tests.sshd_fixtures import NOT_SSH, Listener, Machine, Witness
from tests.sshd_server import SshdUnavailable, SshServer, descendants, is_running

LISTEN = "0A"  # TCP state in /proc/net/tcp
FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")  # 32 bytes in unpadded base64


def _key_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "id_key"
    path.write_text(text)
    path.chmod(0o600)  # ssh ignores a private key others can read
    return path


def _ssh(key: Path, known_hosts: Path, ip: str, port: int, user: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-F", "/dev/null", "-v", "-i", str(key), "-p", str(port),
         "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
         "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
         "-o", "ConnectTimeout=10", f"{user}@{ip}", command],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )


def _known_hosts(tmp_path: Path, sshd: SshServer) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text(sshd.known_hosts_line())
    return path


def _connect(ip: str, port: int, username: str, **login: Any) -> Any:
    # No ~/.ssh/config, no agent, no default keys: only what the test gives.
    login.setdefault("client_keys", None)
    return asyncssh.connect(
        ip, port, username=username, known_hosts=None, config=None, agent_path=None, login_timeout=10, **login
    )


@pytest.mark.parametrize(
    ("key", "header"),
    [("private_key", "-----BEGIN OPENSSH PRIVATE KEY-----"), ("pem_private_key", "-----BEGIN RSA PRIVATE KEY-----")],
    ids=["openssh", "pem"],
)
def test_the_openssh_client_logs_in_with_each_key_and_pins_the_host_key(
    sshd: SshServer, machine: Machine, tmp_path: Path, key: str, header: str
) -> None:
    text = getattr(machine, key)
    assert text.startswith(header)
    done = _ssh(_key_file(tmp_path, text), _known_hosts(tmp_path, sshd), machine.ip, machine.port,
                machine.username, "id -un && echo logged-in")
    assert done.returncode == 0, f"{done.stderr}\n{sshd.log()}"
    assert done.stdout.split() == [machine.username, "logged-in"]
    # StrictHostKeyChecking=yes accepted the host key our known_hosts line holds.
    seen = re.search(r"Server host key: ssh-ed25519 (SHA256:\S+)", done.stderr)
    assert seen and seen.group(1) == machine.host_key_fingerprint == sshd.fingerprint()


def test_a_key_that_is_not_authorised_is_refused(sshd: SshServer, machine: Machine, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True, timeout=30)
    done = _ssh(stranger, _known_hosts(tmp_path, sshd), machine.ip, machine.port, machine.username, "true")
    assert done.returncode == 255
    assert "Permission denied (publickey" in done.stderr


async def test_the_fingerprint_is_what_ssh_keygen_prints_and_asyncssh_sees(sshd: SshServer, machine: Machine) -> None:
    printed = subprocess.run(
        ["ssh-keygen", "-lf", str(sshd.directory / "host_ed25519.pub")],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.split()[1]
    key = asyncssh.import_private_key(machine.private_key)
    async with _connect(machine.ip, machine.port, machine.username, client_keys=[key]) as conn:
        seen = conn.get_server_host_key().get_fingerprint("sha256")
    assert FINGERPRINT.fullmatch(sshd.fingerprint())
    assert seen == printed == sshd.fingerprint()


async def test_a_password_user_logs_in_and_a_wrong_password_does_not(machine: Machine) -> None:
    user = machine.add_password_user()
    async with _connect(machine.ip, machine.port, user.name, password=user.password) as conn:
        done = await conn.run("id -un", check=True, timeout=10)
    assert done.stdout == f"{user.name}\n"
    with pytest.raises(asyncssh.PermissionDenied):
        async with _connect(machine.ip, machine.port, user.name, password=user.password + "x"):
            pass


def test_password_users_and_the_directory_go_when_the_server_stops() -> None:
    with SshServer() as server:
        user = server.add_password_user()
        home = Path(pwd.getpwnam(user.name).pw_dir)
        assert home.is_dir()
        directory, pid = server.directory, server.pid
    with pytest.raises(KeyError):
        pwd.getpwnam(user.name)
    assert not home.exists()
    assert not directory.exists()
    assert not is_running(pid)


def test_only_root_can_add_a_password_user(sshd: SshServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SshdUnavailable, match="only root"):
        sshd.add_password_user()


def test_a_missing_sshd_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(SshdUnavailable, match="openssh-server"):
        SshServer(sshd=tmp_path / "sshd").start()


async def test_a_new_host_key_is_a_new_fingerprint_on_the_same_port(
    sshd: SshServer, machine: Machine, tmp_path: Path
) -> None:
    before, port = sshd.fingerprint(), sshd.port
    old_known_hosts = _known_hosts(tmp_path, sshd)
    sshd.restart_with_new_host_key()
    assert sshd.port == port
    assert sshd.fingerprint() != before
    key = asyncssh.import_private_key(machine.private_key)
    async with _connect(machine.ip, port, machine.username, client_keys=[key]) as conn:
        assert conn.get_server_host_key().get_fingerprint("sha256") == sshd.fingerprint()
    refused = _ssh(sshd.private_key_path, old_known_hosts, machine.ip, port, machine.username, "true")
    assert refused.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.stderr


async def test_kill_ends_every_process_of_the_server_and_start_brings_it_back(
    sshd: SshServer, machine: Machine
) -> None:
    key = asyncssh.import_private_key(machine.private_key)
    async with _connect(machine.ip, machine.port, machine.username, client_keys=[key]) as conn:
        process = await conn.create_process("echo started; exec sleep 600")
        assert await process.stdout.readline() == "started\n"
        # The listener, the connection's sshd processes and the sleep under them.
        tree = {sshd.pid} | descendants(sshd.pid)
        assert len(tree) >= 3, tree
        killed = sshd.kill()
        assert tree <= killed
        assert not [pid for pid in tree if is_running(pid)]
        await conn.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((machine.ip, machine.port), timeout=10).close()
    port = sshd.port
    sshd.start()
    assert sshd.port == port
    async with _connect(machine.ip, port, machine.username, client_keys=[key]) as conn:
        assert (await conn.run("echo back", check=True, timeout=10)).stdout == "back\n"


def _listening_addresses(port: int) -> set[str]:
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == LISTEN and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


async def test_each_address_is_a_machine_of_its_own(sshd: SshServer, make_machine: Callable[[str], Machine]) -> None:
    machines = [make_machine(ip) for ip in ("127.0.0.1", "127.0.0.2", "127.0.0.3")]
    assert len({m.root for m in machines}) == 3
    assert all(m.root.is_dir() and not any(m.root.iterdir()) for m in machines)
    # What the kernel has bound: these three and nothing wider.
    assert _listening_addresses(sshd.port) == set(sshd.addresses) == {m.ip for m in machines}
    key = asyncssh.import_private_key(sshd.private_key)
    for m in machines:
        async with _connect(m.ip, m.port, m.username, client_keys=[key]) as conn:
            done = await conn.run("echo $SSH_CONNECTION", check=True, timeout=10)
        assert done.stdout.split()[2:] == [m.ip, str(m.port)]  # the server's end of it
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.4", sshd.port), timeout=10).close()


def test_the_silent_listener_connects_and_says_nothing(silent_listener: Listener) -> None:
    with socket.create_connection((silent_listener.ip, silent_listener.port), timeout=10) as conn:
        conn.settimeout(0.3)  # how long "nothing" is watched for
        with pytest.raises(TimeoutError):
            conn.recv(1)


def test_the_not_ssh_listener_answers_http_and_closes(not_ssh_listener: Listener) -> None:
    for _ in range(2):  # every connection, not only the first
        with socket.create_connection((not_ssh_listener.ip, not_ssh_listener.port), timeout=10) as conn:
            received = b""
            while chunk := conn.recv(1024):
                received += chunk
        assert received == NOT_SSH
        assert not received.startswith(b"SSH-")


def test_the_closed_port_refuses(closed_port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", closed_port), timeout=10).close()


def test_a_witness_sees_each_connection_and_only_those(witness_listener: Callable[[str], Witness]) -> None:
    witness = witness_listener("127.0.0.9")
    other = witness_listener("127.0.0.10")
    assert witness.ip == "127.0.0.9"
    assert witness.attempts() == []
    for _ in range(2):
        socket.create_connection((witness.ip, witness.port), timeout=10).close()
    assert len(witness.attempts()) == 2
    assert other.attempts() == []
