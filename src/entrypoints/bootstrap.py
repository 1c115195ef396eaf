"""The composition root: the one place that reads settings and chooses adapters."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import attrs

from adapters.clock import SystemClock
from adapters.jwt_tokens import MIN_KEY_BYTES, JwtTokens
from adapters.memory import MemoryStorage
from adapters.passwords import ScryptHasher
from entrypoints.logs import LOG_FORMATS
from migration_core import Clock, LoginThrottle, PasswordHasher, Runner, Storage, TokenIssuer

SECRET_KEY_FILE = "secret.key"


class BadSetting(ValueError):
    """A configuration value that cannot be used; the message names the setting."""


def open_storage(url: str, secret_key: bytes) -> Storage:
    """`memory://` or `sqlite:///relative/path.db` / `sqlite:////absolute/path.db`."""
    parts = urlsplit(url)
    if parts.scheme == "memory":
        return MemoryStorage()
    if parts.scheme == "sqlite":
        from adapters.sqlite import SqliteStorage

        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
        if not path:
            raise BadSetting(f"storage: {url!r} names no file; use sqlite:///path/to/file.db")
        return SqliteStorage(Path(path), secret_key)
    raise BadSetting(f"storage: {url!r} is not a memory:// or sqlite:/// URL")


# --- settings ----------------------------------------------------------------


@attrs.frozen
class Setting:
    """One setting: its variable, its `serve` flag and its default."""

    name: str
    variable: str
    flag: str
    default: str | None
    help: str


SETTINGS = [
    Setting("storage", "MIGRATION_STORAGE", "--storage", "sqlite:///./data/migration.db",
            "storage URL: sqlite:///path/to/file.db or memory://"),
    Setting("host", "MIGRATION_HOST", "--host", "127.0.0.1", "address to listen on"),
    Setting("port", "MIGRATION_PORT", "--port", "8080", "TCP port to listen on"),
    Setting("run_seconds", "MIGRATION_RUN_SECONDS", "--run-seconds", "60",
            "duration of a migration's simulated copy, in seconds (0 or more)"),
    Setting("access_ttl", "MIGRATION_ACCESS_TTL", "--access-ttl", "86400",
            "lifetime of access tokens, in seconds"),
    Setting("refresh_ttl", "MIGRATION_REFRESH_TTL", "--refresh-ttl", "604800",
            "lifetime of refresh tokens, in seconds"),
    Setting("idle_timeout", "MIGRATION_IDLE_TIMEOUT", "--idle-timeout", "15",
            "seconds a connection may stay silent (no request, or headers unfinished) before it is closed"),
    Setting("body_timeout", "MIGRATION_BODY_TIMEOUT", "--body-timeout", "30",
            "seconds a request body may take to arrive in full; a slower one answers 408"),
    Setting("access_log", "MIGRATION_ACCESS_LOG", "--access-log", "on",
            "log one line per request: on or off (off saves about a third of a simple"
            " read's cost; see docs/benchmarks.md)"),
    Setting("metrics", "MIGRATION_METRICS", "--metrics", "on",
            "serve Prometheus metrics at /metrics: on or off"),
    Setting("log_format", "MIGRATION_LOG_FORMAT", "--log-format", "text",
            "log lines as text or as one JSON object each: text or json"),
    Setting("secret_key", "MIGRATION_SECRET_KEY", "--secret-key", None,
            f"key that signs tokens and encrypts stored passwords, at least {MIN_KEY_BYTES} bytes;"
            f" default: generated once and kept in {SECRET_KEY_FILE} beside the database"),
]


def _label(name: str) -> str:
    setting = next(s for s in SETTINGS if s.name == name)
    return f"{setting.variable} / {setting.flag}"


def _integer(name: str, raw: str, *, low: int, high: int | None = None) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise BadSetting(f"{_label(name)}: {raw!r} is not a whole number") from None
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
        raise BadSetting(f"{_label(name)}: {value} is out of range ({bounds})")
    return value


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise BadSetting(f"{_label(name)}: {raw!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise BadSetting(f"{_label(name)}: {raw!r} must be 0 or more seconds")
    return value


def _switch(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("on", "off"):
        raise BadSetting(f"{_label(name)}: {raw!r} is neither on nor off")
    return value == "on"


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise BadSetting(f"{_label(name)}: {raw!r} is not one of {', '.join(choices)}")
    return value


def _positive_seconds(name: str, raw: str) -> float:
    value = _seconds(name, raw)
    if value == 0:
        raise BadSetting(f"{_label(name)}: {raw!r} must be more than 0 seconds")
    return value


@attrs.frozen
class Settings:
    storage: str = "sqlite:///./data/migration.db"
    host: str = "127.0.0.1"
    port: int = 8080
    run_seconds: float = 60.0
    access_ttl: int = 86400
    refresh_ttl: int = 604800
    idle_timeout: float = 15.0
    body_timeout: float = 30.0
    access_log: bool = True
    metrics: bool = True
    log_format: str = "text"
    secret_key: str | None = attrs.field(default=None, repr=False)

    @classmethod
    def from_sources(
        cls, environ: Mapping[str, str], flags: Mapping[str, str | None]
    ) -> Settings:
        """Each setting from its flag, else its variable, else its default.
        Raises BadSetting, naming the setting, for a value that cannot be used."""
        raw: dict[str, str | None] = {}
        for setting in SETTINGS:
            flag = flags.get(setting.name)
            raw[setting.name] = flag if flag is not None else environ.get(setting.variable, setting.default)
        return cls.parse(raw)

    @classmethod
    def parse(cls, raw: Mapping[str, str | None]) -> Settings:
        def text(name: str) -> str:
            value = raw[name]
            assert value is not None, "every setting but the key has a default"
            return value

        storage = text("storage").strip()
        if urlsplit(storage).scheme not in ("memory", "sqlite") or (
            storage.startswith("sqlite") and not storage.startswith("sqlite:///")
        ):
            raise BadSetting(
                f"{_label('storage')}: {storage!r} is not a memory:// or sqlite:///path URL"
            )
        if storage.startswith("sqlite:///") and not storage[len("sqlite:///") :]:
            raise BadSetting(f"{_label('storage')}: {storage!r} names no database file")
        host = text("host").strip()
        if not host:
            raise BadSetting(f"{_label('host')}: must not be empty")
        secret_key = raw.get("secret_key")
        if secret_key is not None and len(secret_key.encode("utf-8")) < MIN_KEY_BYTES:
            raise BadSetting(f"{_label('secret_key')}: must be at least {MIN_KEY_BYTES} bytes long")
        return cls(
            storage=storage,
            host=host,
            port=_integer("port", text("port"), low=1, high=65535),
            run_seconds=_seconds("run_seconds", text("run_seconds")),
            access_ttl=_integer("access_ttl", text("access_ttl"), low=1),
            refresh_ttl=_integer("refresh_ttl", text("refresh_ttl"), low=1),
            idle_timeout=_positive_seconds("idle_timeout", text("idle_timeout")),
            body_timeout=_positive_seconds("body_timeout", text("body_timeout")),
            access_log=_switch("access_log", text("access_log")),
            metrics=_switch("metrics", text("metrics")),
            log_format=_choice("log_format", text("log_format"), LOG_FORMATS),
            secret_key=secret_key,
        )

    @property
    def database_path(self) -> Path | None:
        return Path(self.storage[len("sqlite:///") :]) if self.storage.startswith("sqlite:///") else None


# --- the secret key ----------------------------------------------------------


def load_or_create_secret_key(path: Path) -> bytes:
    """The key kept in `path`, created on first use: random, mode 0600, and
    published with a hard link so two processes starting at once share one key."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w", encoding="ascii") as handle:
                handle.write(secrets.token_hex(32) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(draft, path)
            except FileExistsError:
                pass  # another process won the race: use its key
        finally:
            draft.unlink(missing_ok=True)
    key = path.read_text(encoding="utf-8").strip().encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise BadSetting(
            f"{_label('secret_key')}: the key in {path} is shorter than {MIN_KEY_BYTES} bytes"
        )
    return key


def _subkey(master: bytes, purpose: str) -> bytes:
    """Separate keys for separate jobs, derived from the one configured secret."""
    return hmac.new(master, purpose.encode("ascii"), hashlib.sha256).digest()


# --- services ----------------------------------------------------------------


class ServiceRunner(Runner, Protocol):
    """A runner that lives as long as the service: started once the event loop
    runs, stopped before storage closes."""

    async def start(self) -> None: ...

    async def stop(self) -> int:
        """Stop, marking the runs still copying interrupted; how many there were."""
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


RunnerFactory = Callable[[Storage, Clock, float], ServiceRunner]


def _async_runner(storage: Storage, clock: Clock, duration: float) -> ServiceRunner:
    from adapters.async_runner import AsyncRunner

    return AsyncRunner(storage, clock, duration)


def bootstrap(
    settings: Settings,
    *,
    hasher: PasswordHasher | None = None,
    clock: Clock | None = None,
    make_runner: RunnerFactory = _async_runner,
) -> Services:
    """Choose and build the adapters `settings` ask for; tests swap the slow or
    timed ones (a cheap hasher, a fixed clock) through the keywords.

    The key comes from the settings or, failing that, from `secret.key` beside
    the database (created on first start). `memory://` keeps nothing across a
    restart, so it gets a fresh key per process."""
    database = settings.database_path
    try:
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        if settings.secret_key is not None:
            master = settings.secret_key.encode("utf-8")
        elif database is not None:
            master = load_or_create_secret_key(database.parent / SECRET_KEY_FILE)
        else:
            master = secrets.token_bytes(32)
    except OSError as error:
        raise BadSetting(f"{_label('secret_key')}: cannot keep the key beside the database: {error}") from None
    clock = clock or SystemClock()
    try:
        storage = open_storage(settings.storage, _subkey(master, "storage"))
    except BadSetting:
        raise
    except Exception as error:
        raise BadSetting(f"{_label('storage')}: cannot open {settings.storage}: {error}") from None
    try:
        runner = make_runner(storage, clock, settings.run_seconds)
        tokens = JwtTokens(
            _subkey(master, "tokens"),
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
        hasher=hasher or ScryptHasher(),
        tokens=tokens,
        runner=runner,
        throttle=LoginThrottle(clock),
        write_executor=_write_executor(storage),
    )


def _password_executor() -> Executor:
    return ThreadPoolExecutor(max(1, (os.cpu_count() or 2) - 1), thread_name_prefix="passwords")


def _write_executor(storage: Storage) -> Executor | None:
    from adapters.sqlite import SqliteStorage

    if isinstance(storage, SqliteStorage):
        from adapters.sqlite_group_commit import GroupCommitExecutor

        return GroupCommitExecutor(storage)
    return None
