"""A throwaway OpenSSH server for the tests.

Debian's /usr/sbin/sshd in the foreground, its configuration, host key, client
keys, authorized keys and log in a temporary directory, listening on one free
port on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (several machines need several ips),
or on the addresses given (at most 16: tests/sshd_fleet.py serves more).
It is stopped and its directory deleted at the end, by the fixture or by atexit.

Logins: the current user with an ed25519 key (OpenSSH format) or an RSA key
(PEM format), both generated here; as root, also throwaway system users with a
password (add_password_user), removed when the server stops.

For fault tests: kill() SIGKILLs the listener and every process under it (the
per-connection sshd processes and what they run); start() brings it back on the
same port with the same keys; restart_with_new_host_key() swaps the host key.

A server left by a test process killed outright (SIGKILL runs no atexit) is
killed, and its users removed, by the next start.
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType

import attrs

SSHD = Path("/usr/sbin/sshd")
ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
PRIVSEP_DIR = Path("/run/sshd")  # sshd as root refuses to start without it
PATIENCE = 20.0  # seconds: a bound on every wait, never an expectation
USER_PREFIX = "mig-"
MAX_LISTEN_ADDRESSES = 16  # sshd's MAX_LISTEN_SOCKS, one socket per address and port
PACKAGES = "Debian's openssh-server and openssh-client (apt-get install openssh-server openssh-client)"


_made_client_keys: list[Path] = []


def _client_keys() -> list[Path]:
    """The logins' two private keys (Ed25519; RSA in PEM), made once per test
    process and copied to each server's directory: an RSA key takes ssh-keygen
    up to half a second, and a session starts many servers."""
    if not _made_client_keys:
        directory = Path(tempfile.mkdtemp(prefix="sshd-client-keys-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        comment = "migration-tests"
        _checked(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(directory / "ed25519")])
        # 2048 bits: quicker to make than the default, and still accepted.
        _checked(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-C", comment,
                  "-f", str(directory / "rsa.pem")])
        _made_client_keys.extend([directory / "ed25519", directory / "rsa.pem"])
    return _made_client_keys


class SshdUnavailable(RuntimeError):
    """No sshd or ssh-keygen, or the server did not start: the tests fail with this."""


@attrs.frozen
class PasswordUser:
    name: str
    password: str = attrs.field(repr=False)


def _run(args: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=PATIENCE
    )


def _checked(args: Sequence[str], stdin: str | None = None) -> str:
    done = _run(args, stdin)
    if done.returncode != 0:
        raise SshdUnavailable(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}")
    return done.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # The command name in parentheses may hold spaces and parentheses.
        found[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def descendants(pid: int) -> set[int]:
    """Every process under `pid` (children, their children, ...), now."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def is_running(pid: int) -> bool:
    """Whether the process exists and has not exited (a zombie has: nothing may
    reap the orphans of a killed sshd)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def kill_tree(pid: int) -> set[int]:
    """SIGKILL `pid` and every process under it; the pids killed. Each is stopped
    first and the tree walked again until it grows no more, since a process
    that runs may fork, and a process whose parent dies moves out of the tree."""
    stopped: set[int] = set()
    while True:
        tree = {pid} | descendants(pid)
        new = tree - stopped
        if not new:
            break
        for each in new:
            _signal(each, signal.SIGSTOP)
        stopped |= new
    for each in stopped:
        _signal(each, signal.SIGKILL)
    deadline = time.monotonic() + PATIENCE
    while any(is_running(each) for each in stopped - {pid}):
        if time.monotonic() > deadline:
            raise SshdUnavailable(f"processes {sorted(stopped)} of sshd outlived SIGKILL")
        time.sleep(0.01)
    return stopped


def _banner(address: str, port: int) -> bytes:
    try:
        with socket.create_connection((address, port), timeout=PATIENCE) as conn:
            return conn.recv(256)
    except OSError:
        return b""


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # SIGTERM would end the process without atexit; as an interrupt, pytest
    # tears the fixtures down and atexit still runs.
    raise KeyboardInterrupt(f"signal {signum}")


def _remove_user(name: str) -> None:
    # -f: a zombie of the user's session (nothing reaps it) must not block it.
    if name.startswith(USER_PREFIX):
        _run(["userdel", "-r", "-f", name])


def _stop_orphans() -> None:
    """Kill the servers of test processes that died without cleaning up, and
    remove their users; each directory names the process that owns it."""
    for tmp in Path(tempfile.gettempdir()).glob("sshdtest-*"):
        try:
            owner = int((tmp / "owner.pid").read_text())
        except (OSError, ValueError):
            continue  # not ours, or still being set up
        if is_running(owner):
            continue
        try:
            pid = int((tmp / "sshd.pid").read_text())
            if str(tmp) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                kill_tree(pid)
        except (OSError, ValueError):
            pass
        users = tmp / "users"
        for name in users.read_text().split() if users.exists() else []:
            _remove_user(name)
        shutil.rmtree(tmp, ignore_errors=True)


# The key exchange of the tests' servers (SshServer's stock_key_exchange).
CHEAP_KEY_EXCHANGE = "curve25519-sha256,curve25519-sha256@libssh.org"


class SshServer:
    """One sshd of our own: start/stop, or `with`."""

    def __init__(
        self, sshd: Path = SSHD, addresses: Sequence[str] = ADDRESSES, *, default_limits: bool = False,
        stock_key_exchange: bool = False,
    ) -> None:
        """`default_limits`: OpenSSH's own MaxSessions, MaxStartups and
        MaxAuthTries, as a stock server has them, instead of the raised ones
        that let the other tests open many sessions at once. One sshd listens
        on at most 16 addresses (its MAX_LISTEN_SOCKS: "Too many listen
        sockets"): a fleet of more is several servers (tests/sshd_fleet.py).
        `stock_key_exchange`: the server's own choice of key exchange (the
        benchmarks'), instead of the cheap one the tests log in with."""
        if len(addresses) > MAX_LISTEN_ADDRESSES:
            raise ValueError(f"one sshd listens on at most {MAX_LISTEN_ADDRESSES} addresses, not {len(addresses)}")
        self._sshd = sshd
        self.addresses = tuple(addresses)
        self.default_limits = default_limits
        self.stock_key_exchange = stock_key_exchange
        self._tmp: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._fingerprint = ""
        self._users: list[PasswordUser] = []
        self.port = 0
        self.username = pwd.getpwuid(os.geteuid()).pw_name
        self.startup_seconds = 0.0

    @property
    def directory(self) -> Path:
        assert self._tmp is not None, "the server was never started, or is stopped"
        return self._tmp

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        assert self._process is not None and self.running, "sshd is not running"
        return self._process.pid

    @property
    def log_path(self) -> Path:
        return self.directory / "sshd.log"

    def log(self) -> str:
        """What sshd logged (LogLevel VERBOSE), for a failing test to show."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def private_key_path(self) -> Path:
        """The ed25519 client key, in OpenSSH format, authorised for `username`."""
        return self.directory / "client_ed25519"

    @property
    def pem_private_key_path(self) -> Path:
        """The RSA client key, in PEM format, authorised for `username`."""
        return self.directory / "client_rsa.pem"

    @property
    def private_key(self) -> str:
        return self.private_key_path.read_text()

    @property
    def pem_private_key(self) -> str:
        return self.pem_private_key_path.read_text()

    @property
    def _host_key_path(self) -> Path:
        return self.directory / "host_ed25519"

    def host_public_key(self) -> str:
        """The host key as a known_hosts line holds it: "ssh-ed25519 AAAA..."."""
        return " ".join(Path(f"{self._host_key_path}.pub").read_text().split()[:2])

    def known_hosts_line(self) -> str:
        """A known_hosts line naming this server on each of its addresses."""
        names = ",".join(f"[{address}]:{self.port}" for address in self.addresses)
        return f"{names} {self.host_public_key()}\n"

    def fingerprint(self) -> str:
        """The host key's fingerprint as `ssh-keygen -lf` prints it: "SHA256:..."."""
        assert self._fingerprint, "the server was never started, or is stopped"
        return self._fingerprint

    def start(self) -> SshServer:
        """Start the server; after kill(), on the same port with the same keys.
        Does nothing when it runs."""
        if self.running:
            return self
        began = time.monotonic()
        if self._tmp is None:
            self._set_up()
            try:
                self._start_on_a_free_port()
            except BaseException:
                self.stop()
                raise
        elif not self._launch(self.port):
            raise SshdUnavailable(f"sshd could not bind port {self.port} again:\n{self.log()}")
        self.startup_seconds = time.monotonic() - began
        return self

    def _set_up(self) -> None:
        if not os.access(self._sshd, os.X_OK):
            raise SshdUnavailable(f"no OpenSSH server at {self._sshd}; install {PACKAGES}")
        if shutil.which("ssh-keygen") is None:
            raise SshdUnavailable(f"no ssh-keygen on PATH; install {PACKAGES}")
        if os.geteuid() == 0:
            PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        _stop_orphans()
        self._tmp = Path(tempfile.mkdtemp(prefix="sshdtest-"))  # mode 0700
        atexit.register(self.stop)  # before anything that can fail half-way
        (self._tmp / "owner.pid").write_text(str(os.getpid()))
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        ):
            signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
        try:
            self._new_host_key()
            for made, path in zip(_client_keys(), (self.private_key_path, self.pem_private_key_path), strict=True):
                shutil.copy(made, path)
                shutil.copy(f"{made}.pub", f"{path}.pub")
            authorized = self._tmp / "authorized_keys"
            authorized.mkdir()
            (authorized / self.username).write_text(
                Path(f"{self.private_key_path}.pub").read_text()
                + Path(f"{self.pem_private_key_path}.pub").read_text()
            )
        except BaseException:
            self.stop()
            raise

    def _new_host_key(self) -> None:
        for old in (self._host_key_path, Path(f"{self._host_key_path}.pub")):
            old.unlink(missing_ok=True)
        _checked(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "migration-test-host",
                  "-f", str(self._host_key_path)])
        self._fingerprint = _checked(["ssh-keygen", "-lf", f"{self._host_key_path}.pub"]).split()[1]

    def _config(self, port: int) -> str:
        tmp = self.directory
        root = os.geteuid() == 0
        listen = "".join(f"ListenAddress {address}\n" for address in self.addresses)
        # OpenSSH's defaults otherwise: MaxSessions 10, MaxStartups 10:30:100, MaxAuthTries 6.
        limits = "" if self.default_limits else "MaxSessions 30\nMaxStartups 100\nMaxAuthTries 10\n"
        # OpenSSH 9.2's first choice, sntrup761x25519, costs each `ssh` 0.1
        # CPU-s a login on this kind of machine, and the suite's copies log in
        # some 300 times. The clients offer what they always do.
        key_exchange = "" if self.stock_key_exchange else f"KexAlgorithms {CHEAP_KEY_EXCHANGE}\n"
        (tmp / "home").mkdir(exist_ok=True)
        # UsePAM no: Debian's PAM stack wants pam_loginuid, which fails in many
        # containers; without PAM, sshd checks passwords against /etc/shadow.
        return f"""\
Port {port}
AddressFamily inet
{listen}HostKey {self._host_key_path}
PidFile {tmp / "sshd.pid"}
AuthorizedKeysFile {tmp / "authorized_keys"}/%u
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication {"yes" if root else "no"}
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
LogLevel VERBOSE
{key_exchange}{limits}LoginGraceTime 30
PrintMotd no
PrintLastLog no
# A login's PATH may be set by its key (authorize(path=...)): a machine whose
# programs are few, as the readiness tests need. Only PATH, nothing else.
PermitUserEnvironment PATH
X11Forwarding no
Subsystem sftp internal-sftp
# A session's shell starts in an empty home of the server's own: bash run by
# sshd reads ~/.bashrc, and this machine's (pyenv's rehash lock) can hang a
# session for a minute once a killed session left the lock behind.
SetEnv HOME={tmp / "home"}
"""

    def _start_on_a_free_port(self) -> None:
        # Another process (another xdist worker's sshd) may take the port
        # between our probe and sshd's bind.
        for _ in range(10):
            if self._launch(_free_port()):
                return
        raise SshdUnavailable(f"sshd found no free port in 10 tries:\n{self.log()}")

    def _launch(self, port: int) -> bool:
        """Start sshd on `port` and wait until every address answers an SSH
        banner; False when a port was taken."""
        self.port = port
        config = self.directory / "sshd_config"
        config.write_text(self._config(port))
        self.log_path.touch()
        offset = self.log_path.stat().st_size
        with open(self.log_path, "ab") as early_errors:
            self._process = subprocess.Popen(
                [str(self._sshd), "-D", "-E", str(self.log_path), "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=early_errors,
                start_new_session=True,  # a terminal's Ctrl-C is for pytest, which then stops us
            )
        (self.directory / "sshd.pid").write_text(str(self._process.pid))
        deadline = time.monotonic() + PATIENCE
        while True:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            taken = re.search(r"Bind to port \d+ on \S+ failed: Address already in use", text)
            if taken or self._process.poll() is not None:
                self.kill()
                if taken:
                    return False
                raise SshdUnavailable(f"sshd exited with {self._process.returncode}:\n{text}")
            listening = all(f"Server listening on {address} port {port}." in text for address in self.addresses)
            if listening and all(_banner(address, port).startswith(b"SSH-2.0-") for address in self.addresses):
                return True
            if time.monotonic() > deadline:
                self.kill()
                raise SshdUnavailable(f"sshd did not answer on port {port} within {PATIENCE}s:\n{text}")
            try:
                self._process.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                pass

    def authorize(self, public_key: str, *, path: str | None = None) -> None:
        """Let `public_key` (an authorized_keys line) log in as `username` too:
        servers of one fleet then take one client key. sshd reads the file at
        each login. With `path`, a login with that key gets it as its PATH
        (the key's `environment="PATH=..."` option): a machine that has only
        the programs of that directory."""
        line = public_key.strip()
        if path is not None:
            if any(c in path for c in '"\\\n'):
                raise ValueError(f"a PATH given to a key holds no quote, backslash or newline: {path!r}")
            line = f'environment="PATH={path}" {line}'
        with open(self.directory / "authorized_keys" / self.username, "a") as keys:
            keys.write(line + "\n")

    def add_password_user(self) -> PasswordUser:
        """A new system user with a random password that sshd accepts, removed
        when the server stops. Only root can add one."""
        if os.geteuid() != 0:
            raise SshdUnavailable(
                "password logins need a throwaway system user, which only root can add: "
                "run the tests as root (as CI does)"
            )
        user = PasswordUser(USER_PREFIX + secrets.token_hex(3), secrets.token_urlsafe(18))
        # Written down first, so that a cleanup after a crash removes it too.
        with open(self.directory / "users", "a") as users:
            users.write(user.name + "\n")
        self._users.append(user)
        _checked(["useradd", "--create-home", "--shell", "/bin/sh", "--comment", "migration test user", user.name])
        _checked(["chpasswd"], stdin=f"{user.name}:{user.password}\n")
        return user

    def restart_with_new_host_key(self) -> None:
        """The same server on the same port, with another host key."""
        self.kill()
        self._new_host_key()
        self.start()

    def kill(self) -> set[int]:
        """SIGKILL sshd and every process under it, as a crash would; the pids
        killed. start() brings the server back."""
        process = self._process
        if process is None:
            return set()
        killed = kill_tree(process.pid) if process.poll() is None else set()
        process.wait(timeout=PATIENCE)
        return killed

    def stop(self) -> None:
        """Kill the server, remove its users and delete its directory; safe to
        call more than once."""
        atexit.unregister(self.stop)
        self.kill()
        self._process = None
        for user in self._users:
            _remove_user(user.name)
        self._users = []
        tmp, self._tmp = self._tmp, None
        self._fingerprint = ""
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    def __enter__(self) -> SshServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
