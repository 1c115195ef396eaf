"""Each machine of a copy is reached by OpenSSH's own `ssh` client (SPEC
2.10): one control master per machine logs in once, and every command of the
copy, the stream's two tars included, is a client multiplexed over it. The
master's process carries the encryption, so a copy's bytes pass through no
Python code, and copies spread over every core.

Everything a client needs lives in a private directory made per copy (0700):
the known_hosts file written from the pinned key (under a `HostKeyAlias`, so
the address's form does not matter), the login's private key (0600), the
control socket and the master's log, and for a password an askpass helper
that reads it from a FIFO there. The password is never in an argument list,
an environment or a file. Every argument list of `ssh` is built by
`ssh_command`; the remote command it carries comes from `remote_shell`.

The clients run at a lower CPU priority (`nice`), so that under load the
kernel serves the API's event loop first and the copies with what is left;
and they die with the service (`setpriv --pdeathsig`), so that a service
killed outright leaves no `ssh` behind: the machines then see their sessions
close (the swap ignores that and finishes alone)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import shlex
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

from migration_core.machines import HostKeyChanged, MachineAddress, MachineUnreachable, fingerprint, key_blob, whole_key

from .relay import COPY_NICENESS, Bandwidth

# AES-GCM first: with AES-NI it is the cheapest cipher for the master's
# process to carry; the others for machines that offer no GCM.
CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr"
SERVER_ALIVE_SECONDS = 15
SERVER_ALIVE_COUNT = 4
KEY_TYPES = "ed25519,ecdsa,rsa"
# What the master's LocalCommand prints once it is logged in and listens for clients.
READY = "ready"


@attrs.frozen
class Transport:
    """What every copy of a driver shares: the login's bound, the guard of the
    allowed networks (raising before any process starts), the bandwidth cap."""

    connect_timeout: float
    ensure_allowed: Callable[[str], None]
    bandwidth: Bandwidth | None = None


@contextlib.contextmanager
def private_directory() -> Iterator[Path]:
    """A directory only this service's user may enter (0700), removed at the
    end; those a killed service left (their process gone) go first. Short,
    for a control socket's path (at most 108 bytes with ssh's suffix)."""
    base = Path(tempfile.gettempdir() if len(tempfile.gettempdir()) < 40 else "/tmp")
    for left in base.glob("copy-*-*"):
        pid = left.name.split("-")[1]
        if pid.isdigit() and not _alive(int(pid)) and left.is_dir() and left.stat().st_uid == os.getuid():
            shutil.rmtree(left, ignore_errors=True)
    directory = Path(tempfile.mkdtemp(prefix=f"copy-{os.getpid()}-", dir=base))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@attrs.frozen
class Login:
    """One machine's login, and where its files are in the copy's private
    directory. `pin` is the whole key the known_hosts file holds; None trusts
    the first key met (it is written there then)."""

    side: str  # "source" or "host"
    address: MachineAddress
    directory: Path
    connect_timeout: float
    pin: str | None

    def _file(self, suffix: str) -> Path:
        return self.directory / f"{self.side}.{suffix}"

    @property
    def alias(self) -> str:
        return f"{self.side}.copy"

    @property
    def known_hosts(self) -> Path:
        return self._file("known_hosts")

    @property
    def identity(self) -> Path:
        return self._file("key")

    @property
    def control(self) -> Path:
        return self._file("ctl")

    @property
    def askpass(self) -> Path:
        return self._file("askpass")

    @property
    def password_fifo(self) -> Path:
        return self._file("password")

    @property
    def log(self) -> Path:
        return self._file("log")

    @property
    def where(self) -> str:
        return f"{self.address.ip} port {self.address.port}"


def _launcher() -> list[str]:
    """What starts each client: tied to the service's life, at a lower priority."""
    prefix = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
    return [*prefix, "nice", "-n", str(COPY_NICENESS)]


def ssh_command(login: Login, remote: str | None = None, *, master: bool = False) -> list[str]:
    """The argument list of an `ssh` reaching `login`'s machine: its master
    (`master`, logging in and serving the others), or a client running the
    remote command line `remote` over that master. No user or system
    configuration is read; nothing but the key files of the private directory
    logs in; the host key must be the pinned one."""
    address = login.address
    password = bool(address.password)
    options = {
        "BatchMode": "no" if password else "yes",  # a password comes from the askpass helper
        "StrictHostKeyChecking": "yes" if login.pin is not None else "accept-new",
        "HostKeyAlias": login.alias,
        "UserKnownHostsFile": str(login.known_hosts),
        "GlobalKnownHostsFile": "/dev/null",
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        "IdentitiesOnly": "yes",
        "IdentityAgent": "none",
        "PubkeyAuthentication": "yes" if address.private_key else "no",
        "PasswordAuthentication": "yes" if password else "no",
        "KbdInteractiveAuthentication": "yes" if password else "no",
        "NumberOfPasswordPrompts": "1",
        "GSSAPIAuthentication": "no",
        "HostbasedAuthentication": "no",
        "ConnectTimeout": str(max(1, math.ceil(login.connect_timeout))),
        "ControlPath": str(login.control),
        "ControlMaster": "yes" if master else "no",
        "ControlPersist": "no",
        "Ciphers": CIPHERS,
        "Compression": "no",
        "ServerAliveInterval": str(SERVER_ALIVE_SECONDS),
        "ServerAliveCountMax": str(SERVER_ALIVE_COUNT),
        "ClearAllForwardings": "yes",
        "ForwardAgent": "no",
        "ForwardX11": "no",
        "RequestTTY": "no",
        "Tunnel": "no",
    }
    if address.private_key:
        options["IdentityFile"] = str(login.identity)
    if master:
        # Logged in and listening for clients: the LocalCommand runs after both.
        options.update(PermitLocalCommand="yes", LocalCommand=f"echo {READY}", LogLevel="DEBUG1")
    else:
        # A client only ever goes through the master: were it gone, this
        # fails instead of connecting (and logging in) on its own.
        options.update(PermitLocalCommand="no", ProxyCommand="exit 255", LogLevel="ERROR")
    argv = [*_launcher(), "ssh", "-F", "/dev/null", "-T", "-x", "-a"]
    for name, value in options.items():
        argv += ["-o", f"{name}={value}"]
    if master:
        argv += ["-N", "-E", str(login.log)]
    argv += ["-l", address.username, "-p", str(address.port), "--", address.ip]
    if remote is not None:
        argv.append(remote)
    return argv


def keyscan_command(address: MachineAddress, timeout: float) -> list[str]:
    """`ssh-keyscan` asking a machine for its host keys, without logging in."""
    return [
        *_launcher(), "ssh-keyscan", "-T", str(max(1, math.ceil(timeout))), "-t", KEY_TYPES,
        "-p", str(address.port), "--", address.ip,
    ]


def _where(address: MachineAddress) -> str:
    return f"{address.ip} port {address.port}"


def closed_before_login(where: str) -> str:
    return (
        f"The connection to {where} was closed before the login (the machine may be refusing"
        " connections beyond its sshd MaxStartups; try again or raise it)."
    )


def changed_key(where: str, seen: str, pinned: str) -> str:
    return (
        f"Host key changed at {where}: it showed {seen}, but {fingerprint(pinned)} is pinned."
        " If the machine was rebuilt, clear the workload's host_key and check it again."
    )


# sshd's words to a connection it drops beyond MaxStartups, before it closes it.
MAX_STARTUPS = "Exceeded MaxStartups"
_BANNER_LINE = re.compile(r"kex_exchange_identification: banner line \d+: (.*)$")
_SEEN_KEY = re.compile(r"SHA256:[A-Za-z0-9+/]+")


def login_failure(log: str, login: Login) -> MachineUnreachable:
    """What a master's log (debug1) says of a login that failed, in the words
    of the service's other connections."""
    address, where = login.address, login.where
    said = [line.strip() for line in log.splitlines() if line.strip() and not line.startswith("debug")]
    text = "\n".join(said)
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or "Host key verification failed" in text:
        if login.pin is not None:
            seen = _SEEN_KEY.search(text)
            return HostKeyChanged(changed_key(where, seen.group() if seen else "another key", login.pin))
        return MachineUnreachable(f"The host key of {where} could not be verified.")
    if "Permission denied" in text:
        return MachineUnreachable(f"Login refused for user {address.username!r} at {where}.")
    if "Connection refused" in text:
        return MachineUnreachable(f"Connection refused at {where}: nothing listens there.")
    if "No route to host" in text or "Network is unreachable" in text:
        return MachineUnreachable(f"No route to {where}.")
    if "timed out" in text.lower():
        return timed_out(login)
    if "kex_exchange_identification" in text or "Connection closed by" in text or "Connection reset by" in text:
        heard = [match.group(1).strip() for line in log.splitlines() if (match := _BANNER_LINE.search(line))]
        answer = [line for line in heard if line and line != MAX_STARTUPS]
        if answer:
            return MachineUnreachable(f"{where} did not answer as an SSH server (it said {answer[0][:80]!r}).")
        return MachineUnreachable(closed_before_login(where))
    return MachineUnreachable(f"The SSH connection to {where} failed: {said[-1] if said else 'ssh said nothing'}.")


def timed_out(login: Login) -> MachineUnreachable:
    seconds = f"{login.connect_timeout:g}"
    return MachineUnreachable(f"Timed out after {seconds} s connecting and logging in to {login.where}.")


def _write_private(path: Path, data: str, mode: int = 0o600) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with open(descriptor, "w", encoding="utf-8") as file:
        file.write(data)


class _PasswordFeed:
    """Serves the password once to the askpass helper through the FIFO, from a
    thread: it passes through the pipe and never onto a disk. The FIFO goes
    once read, so a second prompt (a refused password) gets no answer."""

    def __init__(self, fifo: Path, password: str) -> None:
        self._fifo = fifo
        self._password = password.encode()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="askpass-feed", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            descriptor = os.open(self._fifo, os.O_WRONLY)  # until a reader opens it
        except OSError:
            return
        try:
            self._fifo.unlink()
            if not self._stopped.is_set():
                os.write(descriptor, self._password)
        except OSError:
            pass
        finally:
            os.close(descriptor)

    def stop(self) -> None:
        self._stopped.set()
        # A writer waiting for a reader is let go by one that reads nothing.
        with contextlib.suppress(OSError):
            os.close(os.open(self._fifo, os.O_RDONLY | os.O_NONBLOCK))
        self._thread.join(timeout=5)


# Answers ssh's password prompts from the FIFO named as its argument; any other
# question (a key's passphrase) gets no answer.
_ASKPASS = """#!/bin/sh
case "$1" in *assword*) exec cat -- %s ;; esac
exit 1
"""


class Link:
    """One machine of a copy: its login's files, its control master, and the
    clients started over it."""

    def __init__(self, login: Login, transport: Transport) -> None:
        self.login = login
        self._transport = transport
        self._master: asyncio.subprocess.Process | None = None
        self._clients: set[asyncio.subprocess.Process] = set()
        # The whole key the machine showed (`type base64`), once logged in.
        self.met: str | None = None

    @property
    def side(self) -> str:
        return self.login.side

    async def open(self) -> None:
        """Log in: check the address, complete a fingerprint pin from the
        machine's keys, write the private files, start the master and wait
        until it serves clients. MachineUnreachable (HostKeyChanged) in words."""
        login = self.login
        self._transport.ensure_allowed(login.address.ip)
        pin = login.pin
        if pin is not None:
            pin = whole_key(pin) or await self._complete(pin)
            self.login = login = attrs.evolve(login, pin=pin)
        if pin is not None:
            _write_private(login.known_hosts, f"{login.alias} {pin}\n")
        else:
            _write_private(login.known_hosts, "")
        if login.address.private_key:
            _write_private(login.identity, _openssh_key(login.address.private_key))
        feed = None
        environment = dict(os.environ)
        for name in ("SSH_AUTH_SOCK", "SSH_ASKPASS", "SSH_ASKPASS_REQUIRE", "DISPLAY"):
            environment.pop(name, None)
        if login.address.password:
            os.mkfifo(login.password_fifo, 0o600)
            _write_private(login.askpass, _ASKPASS % shlex.quote(str(login.password_fifo)), 0o700)
            environment.update(SSH_ASKPASS=str(login.askpass), SSH_ASKPASS_REQUIRE="force")
            feed = _PasswordFeed(login.password_fifo, login.address.password)
        try:
            self._master = await asyncio.create_subprocess_exec(
                *ssh_command(login, master=True),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                env=environment,
            )
            await self._until_ready(self._master)
        except BaseException:
            await self.close()
            raise
        finally:
            if feed is not None:
                feed.stop()
        self.met = pin or _known_key(login.known_hosts)

    async def _until_ready(self, master: asyncio.subprocess.Process) -> None:
        assert master.stdout is not None
        try:
            async with asyncio.timeout(self.login.connect_timeout):
                line = await master.stdout.readline()
                if line.strip() == READY.encode():
                    return
                await master.wait()
        except TimeoutError:
            raise timed_out(self.login) from None
        raise login_failure(self._log(), self.login)

    def _log(self) -> str:
        try:
            return self.login.log.read_text(errors="replace")
        except OSError:
            return ""

    async def _complete(self, pinned: str) -> str:
        """The whole key a fingerprint pin names, from the keys the machine
        shows before any login; HostKeyChanged when none of them is it."""
        login = self.login
        try:
            async with asyncio.timeout(login.connect_timeout + 5):
                scan = await asyncio.create_subprocess_exec(
                    *keyscan_command(login.address, login.connect_timeout),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                out, err = await scan.communicate()
        except TimeoutError:
            raise timed_out(login) from None
        shown = []
        for line in out.decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 3 and not line.startswith("#"):
                key = whole_key(" ".join(parts[1:3]))
                if key is not None:
                    shown.append(key)
        for key in shown:
            if fingerprint(key) == pinned:
                return key
        if shown:
            raise HostKeyChanged(changed_key(login.where, ", ".join(fingerprint(key) for key in shown), pinned))
        raise login_failure(err.decode(errors="replace"), login)

    async def spawn(self, remote: str, **pipes: object) -> asyncio.subprocess.Process:
        """A client running `remote` on the machine over the master;
        `pipes` are create_subprocess_exec's stdin, stdout and stderr."""
        process = await asyncio.create_subprocess_exec(*ssh_command(self.login, remote), **pipes)  # type: ignore[arg-type]
        self._clients.add(process)
        return process

    def done_with(self, process: asyncio.subprocess.Process) -> None:
        self._clients.discard(process)

    def ended(self) -> bool:
        """Whether the master is gone (its connection closed): no client can run."""
        return self._master is None or self._master.returncode is not None

    async def lost(self) -> bool:
        """Whether the master is gone, allowing it a moment to be seen going
        (a client may say its connection closed before the master is reaped)."""
        if self._master is None:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self._master.wait()
        return self._master.returncode is not None

    def last_words(self) -> str:
        """The master's last line that was not debug output: why it ended."""
        said = [line.strip() for line in self._log().splitlines() if line.strip() and not line.startswith("debug")]
        return said[-1] if said else "its connection closed"

    async def close(self) -> None:
        """Stop what is left of the clients, then the master (its sessions with it)."""
        for process in list(self._clients):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        self._clients.clear()
        master, self._master = self._master, None
        if master is not None and master.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                master.terminate()
            try:
                async with asyncio.timeout(5):
                    await master.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    master.kill()
                await master.wait()


def _openssh_key(text: str) -> str:
    """The credentials' key in OpenSSH's own format, which every `ssh` reads."""
    from ..ssh_library import private_key  # asyncssh, imported at the first copy

    return private_key(text).export_private_key("openssh").decode()


def _known_key(known_hosts: Path) -> str | None:
    """The key ssh wrote into the private known_hosts at first contact."""
    try:
        lines = known_hosts.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and not line.startswith("#") and key_blob(" ".join(parts[1:3])) is not None:
            return " ".join(parts[1:3])
    return None


def is_private(path: Path) -> bool:
    """Whether only the service's user may use `path` (for the tests of the private directory)."""
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
