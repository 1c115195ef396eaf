"""Fixtures for tests that log in to machines (see tests/sshd_server.py): the
real sshd, machines played by temporary directories, and listeners that fail
the ways a network does (silent, not SSH, nothing listening, a witness that
shows nothing was sent)."""

from __future__ import annotations

import ipaddress
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from adapters.ssh import SshMachines

from .ssh_keys import keygen, keys_directory
from .sshd_server import PasswordUser, SshdUnavailable, SshServer

NOT_SSH = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
# A Debian login's PATH, where a machine's stock programs are.
STOCK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def key_with_path(server: SshServer, path: str) -> str:
    """A new private key that logs in to `server` as its user with `path` as the PATH."""
    name = f"path-{secrets.token_hex(6)}"
    private_key = keygen(name, "-t", "ed25519")
    server.authorize((keys_directory() / f"{name}.pub").read_text(), path=path)
    return private_key


@pytest.fixture(scope="session")
def sshd() -> Iterator[SshServer]:
    """The session's sshd (one per test process, so one per xdist worker)."""
    server = SshServer()
    problem = None
    try:
        server.start()
    except SshdUnavailable as e:
        problem = str(e)
    if problem:  # a failure, never a skip: SSH tests must run everywhere
        pytest.fail(problem, pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@attrs.frozen
class Machine:
    """A machine to log in to: the session's sshd at `ip`, with `root` its tree."""

    root: Path
    ip: str
    port: int
    username: str
    private_key: str = attrs.field(repr=False)
    pem_private_key: str = attrs.field(repr=False)
    host_key_fingerprint: str
    host_public_key: str  # the host key whole, as a pin holds it: "ssh-ed25519 AAAA..."
    add_password_user: Callable[[], PasswordUser] = attrs.field(repr=False)


@pytest.fixture
def make_machine(sshd: SshServer, tmp_path: Path) -> Callable[[str], Machine]:
    """Machines on the addresses sshd listens on (a second machine needs
    another ip), each with a fresh empty tree."""
    # A test before may have killed the server or changed its host key.
    sshd.start()

    def make(ip: str = "127.0.0.1") -> Machine:
        assert ip in sshd.addresses, f"sshd listens on {sshd.addresses}, not {ip}"
        root = tmp_path / f"machine-{ip}"
        root.mkdir()
        return Machine(
            root=root,
            ip=ip,
            port=sshd.port,
            username=sshd.username,
            private_key=sshd.private_key,
            pem_private_key=sshd.pem_private_key,
            host_key_fingerprint=sshd.fingerprint(),
            host_public_key=sshd.host_public_key(),
            add_password_user=sshd.add_password_user,
        )

    return make


@pytest.fixture
def machines() -> Iterator[SshMachines]:
    """The SSH driver of copies and checks, allowed onto loopback only. A login
    gets 30 s: a copy's ssh runs niced, and a busy test machine can hold it
    back for seconds; the tests of timeouts make drivers of their own."""
    driver = SshMachines([ipaddress.ip_network("127.0.0.0/8")], connect_timeout=30)
    yield driver
    driver.close()


@pytest.fixture
def machine(make_machine: Callable[[str], Machine]) -> Machine:
    """A machine at 127.0.0.1 whose tree is a fresh empty directory."""
    return make_machine("127.0.0.1")


@attrs.frozen
class Listener:
    ip: str
    port: int


def _listening(ip: str) -> socket.socket:
    listener = socket.socket()
    listener.bind((ip, 0))
    listener.listen(128)
    return listener


@pytest.fixture
def silent_listener() -> Iterator[Listener]:
    """A port on 127.0.0.1 that accepts connections and never says a word."""
    # The kernel completes the handshake for the backlog: a client is
    # connected, and waits for a banner that never comes.
    with _listening("127.0.0.1") as listener:
        yield Listener("127.0.0.1", listener.getsockname()[1])


@pytest.fixture
def not_ssh_listener() -> Iterator[Listener]:
    """A port on 127.0.0.1 that answers each connection with an HTTP line, not
    an SSH banner, and closes it."""
    listener = _listening("127.0.0.1")

    def answer() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed at teardown
            with conn:
                conn.sendall(NOT_SSH)

    thread = threading.Thread(target=answer, name="not-ssh-listener", daemon=True)
    thread.start()
    try:
        yield Listener("127.0.0.1", listener.getsockname()[1])
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        listener.close()
        thread.join(timeout=10)


class Witness:
    """A listener that accepts and counts connections, to prove none came."""

    def __init__(self, ip: str) -> None:
        self._socket = _listening(ip)
        self._socket.setblocking(False)
        self.ip = ip
        self.port: int = self._socket.getsockname()[1]
        self._seen: list[tuple[str, int]] = []

    def attempts(self) -> list[tuple[str, int]]:
        """The peers of every connection made so far. A connect on loopback
        returns once the kernel has queued it, so nothing is in flight here."""
        while True:
            try:
                conn, peer = self._socket.accept()
            except BlockingIOError:
                return list(self._seen)
            conn.close()
            self._seen.append(peer)

    def close(self) -> None:
        self._socket.close()


@pytest.fixture
def witness_listener() -> Iterator[Callable[[str], Witness]]:
    """witness_listener("127.0.0.9"): a Witness on that address (one sshd does
    not listen on); its attempts() are every connection that reached it."""
    witnesses: list[Witness] = []

    def make(ip: str) -> Witness:
        witness = Witness(ip)
        witnesses.append(witness)
        return witness

    try:
        yield make
    finally:
        for witness in witnesses:
            witness.close()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 where nothing listens: connecting is refused."""
    # Bound but not listening: the port stays ours, so nothing else takes it.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


class ClosingListener:
    """A port that accepts each connection and closes it at once, after
    `greeting` (nothing, or sshd's line to a connection beyond MaxStartups):
    a machine refusing connections before the login."""

    def __init__(self, ip: str, greeting: bytes = b"") -> None:
        self._socket = _listening(ip)
        self.ip = ip
        self.port: int = self._socket.getsockname()[1]
        self._greeting = greeting
        self._thread = threading.Thread(target=self._serve, name="closing-listener", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._socket.accept()
            except OSError:
                return  # closed at teardown
            with conn:
                if self._greeting:
                    conn.sendall(self._greeting)

    def close(self) -> None:
        self._socket.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self._socket.close()
        self._thread.join(timeout=10)


@pytest.fixture(params=[b"", b"Exceeded MaxStartups\r\n"], ids=["silent close", "MaxStartups"])
def closing_listener(request: pytest.FixtureRequest) -> Iterator[ClosingListener]:
    """A port on 127.0.0.1 that closes every connection before the login."""
    listener = ClosingListener("127.0.0.1", request.param)
    try:
        yield listener
    finally:
        listener.close()
