"""The composition root: the one place that chooses adapters and wires them.
Settings are parsed in `settings`, the secret key is kept in `keys`."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import attrs

from adapters.carrying import CopyRouter
from adapters.clock import SystemClock
from adapters.instances import Instance, InstanceRegistry
from adapters.jwt_tokens import JwtTokens
from adapters.memory import MemoryStorage
from adapters.passwords import ScryptHasher
from adapters.simulated_copy import SimulatedCopy
from adapters.ssh import SshMachines
from migration_core import Clock, Copier, LoginThrottle, Machines, PasswordHasher, Runner, Storage, TokenIssuer

from .keys import load_or_create_secret_key, master_key, subkey
from .settings import SETTINGS, BadSetting, Settings, label, redacted

__all__ = [
    "SETTINGS",
    "BadSetting",
    "ServiceRunner",
    "Services",
    "Settings",
    "bootstrap",
    "configured_storage",
    "load_or_create_secret_key",
    "open_storage",
]


def open_storage(url: str, secret_key: bytes) -> Storage:
    """`memory://`, `sqlite:///relative/path.db` / `sqlite:////absolute/path.db`,
    or `postgresql://user:password@host:port/database`."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryStorage()
    if scheme == "sqlite":
        from adapters.sqlite import SqliteStorage

        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
        if not path:
            raise BadSetting(f"storage: {url!r} names no file; use sqlite:///path/to/file.db")
        return SqliteStorage(Path(path), secret_key)
    if scheme in ("postgresql", "postgres"):
        from adapters.postgres import PostgresStorage

        return PostgresStorage(url, secret_key)
    raise BadSetting(f"storage: {url!r} is not a memory://, sqlite:/// or postgresql:// URL")


class ServiceRunner(Runner, Protocol):
    """A runner that lives as long as the service: started once the event loop
    runs, stopped before storage closes."""

    async def start(self) -> None: ...

    async def stop(self) -> int:
        """Stop, marking the runs still being carried out interrupted; how many."""
        ...

    @property
    def active(self) -> frozenset[int]:
        """Ids of the migrations being copied now."""
        ...


@attrs.frozen
class Services:
    """Everything the HTTP service needs; the app closes storage on shutdown."""

    storage: Storage
    clock: Clock
    hasher: PasswordHasher
    tokens: TokenIssuer
    runner: ServiceRunner
    throttle: LoginThrottle
    # Where writes run: SQLite batches them into shared commits; None means a
    # worker thread each. The app shuts it down before storage closes.
    write_executor: Executor | None = None
    # Where password hashing runs: slow on purpose, and given fewer threads than
    # there are cores, so logins never take the event loop's core.
    password_executor: Executor = attrs.field(factory=lambda: _password_executor())
    # Whether short reads run on the event loop: only where the storage says
    # its reads never wait (SQLite's WAL snapshots); a network round trip
    # (PostgreSQL) or a lock (memory) goes to a worker thread.
    reads_on_loop: bool = False
    registry: InstanceRegistry | None = None
    # Real machines, reached over SSH only inside the allowed networks. The
    # default reaches none, for services built without settings.
    machines: Machines = attrs.field(factory=lambda: SshMachines(()))
    # A new warm migration's sync interval when none is given (MIGRATION_SYNC_INTERVAL).
    default_sync_interval: int = 3600
    # How many machines a wave's readiness check or a discovery of many
    # reaches at once (MIGRATION_MAX_COPIES).
    machines_at_once: int = 8


# What builds the service's runner: from its storage, clock, copier (the
# simulated copy and the real machines), register of instances and instance.
RunnerFactory = Callable[[Storage, Clock, Copier, InstanceRegistry, Instance], ServiceRunner]


def _async_runner(
    storage: Storage,
    clock: Clock,
    copier: Copier,
    registry: InstanceRegistry,
    instance: Instance,
    *,
    max_copies: int = 8,
    max_copies_per_machine: int = 4,
) -> ServiceRunner:
    from adapters.async_runner import AsyncRunner

    return AsyncRunner(
        storage,
        clock,
        copier,
        registry=registry,
        instance=instance,
        max_copies=max_copies,
        max_copies_per_machine=max_copies_per_machine,
    )


def bootstrap(
    settings: Settings,
    *,
    hasher: PasswordHasher | None = None,
    clock: Clock | None = None,
    make_runner: RunnerFactory | None = None,
) -> Services:
    """Choose and build the adapters `settings` ask for; tests swap the slow or
    timed ones (a cheap hasher, a fixed clock) through the keywords."""
    master, storage = _open_configured(settings)
    clock = clock or SystemClock()
    try:
        registry = storage.instance_registry()
        instance = Instance.this_process(settings.lease_seconds)
        machines = SshMachines(
            settings.allowed_networks, settings.connect_timeout, max_bandwidth=settings.max_bandwidth
        )
        copier = CopyRouter(SimulatedCopy(settings.run_seconds), machines)
        if make_runner is None:
            make_runner = functools.partial(
                _async_runner,
                max_copies=settings.max_copies,
                max_copies_per_machine=settings.max_copies_per_machine,
            )
        runner = make_runner(storage, clock, copier, registry, instance)
        tokens = JwtTokens(
            subkey(master, "tokens"),
            clock,
            access_ttl=settings.access_ttl,
            refresh_ttl=settings.refresh_ttl,
        )
    except BaseException:
        storage.close()
        raise
    return Services(
        storage=storage,
        clock=clock,
        hasher=hasher or ScryptHasher(n=2**settings.password_cost),
        tokens=tokens,
        runner=runner,
        throttle=LoginThrottle(storage, clock),
        write_executor=storage.write_executor(),
        reads_on_loop=storage.reads_never_wait,
        registry=registry,
        machines=machines,
        default_sync_interval=settings.sync_interval,
        machines_at_once=settings.max_copies,
    )


def _open_configured(settings: Settings) -> tuple[bytes, Storage]:
    """The master key and the storage `settings` name; BadSetting when the
    storage cannot be opened."""
    database = settings.database_path
    if database is not None:
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BadSetting(f"{label('storage')}: cannot make the database's folder: {error}") from None
    master = master_key(settings)
    try:
        return master, open_storage(settings.storage, subkey(master, "storage"))
    except BadSetting:
        raise
    except Exception as error:
        # The driver's message may hold the URL too: neither may show the password.
        message = str(error).replace(urlsplit(settings.storage).password or "\0", "***")
        raise BadSetting(f"{label('storage')}: cannot open {redacted(settings.storage)}: {message}") from None


def configured_storage(settings: Settings) -> Storage:
    """The storage of the service, opened as the service opens it, for the
    command line's other commands."""
    return _open_configured(settings)[1]


def _password_executor() -> Executor:
    return ThreadPoolExecutor(max(1, (os.cpu_count() or 2) - 1), thread_name_prefix="passwords")
