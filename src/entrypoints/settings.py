"""The service's settings: each an environment variable and a `serve` flag (the
flag wins), parsed once into `Settings`; a value that cannot be used stops the
start with a message naming the setting."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import attrs

from adapters.jwt_tokens import MIN_KEY_BYTES
from adapters.passwords import PASSWORD_COST, PASSWORD_COSTS
from adapters.ssh import IpNetwork, parse_networks
from entrypoints.inventory_csv import parse_size
from entrypoints.logs import LOG_FORMATS

SECRET_KEY_FILE = "secret.key"
STORAGE_SCHEMES = ("memory", "sqlite", "postgresql", "postgres")


class BadSetting(ValueError):
    """A configuration value that cannot be used; the message names the setting."""


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
            "storage URL: sqlite:///path/to/file.db, postgresql://user:password@host:port/database"
            " or memory://"),
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
            "log one line per request: on or off (off saves about a quarter of a simple"
            " read's cost; see docs/benchmarks.md)"),
    Setting("metrics", "MIGRATION_METRICS", "--metrics", "on",
            "serve Prometheus metrics at /metrics: on or off"),
    Setting("log_format", "MIGRATION_LOG_FORMAT", "--log-format", "text",
            "log lines as text or as one JSON object each: text or json"),
    Setting("workers", "MIGRATION_WORKERS", "--workers", "1",
            "processes serving the one port, each an instance (1 to 64)"),
    Setting("lease_seconds", "MIGRATION_LEASE_SECONDS", "--lease-seconds", "15",
            "how long an instance's lease in storage lasts between renewals, in seconds"),
    Setting("allowed_networks", "MIGRATION_ALLOWED_NETWORKS", "--allowed-networks", "127.0.0.0/8,::1/128",
            "the only networks the service may connect to over SSH (checks, discoveries, real copies),"
            " comma-separated CIDR blocks; any other address is refused before a packet is sent"),
    Setting("connect_timeout", "MIGRATION_CONNECT_TIMEOUT", "--connect-timeout", "10",
            "seconds to connect to a machine and log in"),
    Setting("max_copies", "MIGRATION_MAX_COPIES", "--max-copies", "8",
            "real copies this instance carries at once (a run's copy waits in the queue every instance"
            " serves until one has room)"),
    Setting("max_copies_per_machine", "MIGRATION_MAX_COPIES_PER_MACHINE", "--max-copies-per-machine", "4",
            "real copies this instance carries at once that touch one machine, as source or host"),
    Setting("sync_interval", "MIGRATION_SYNC_INTERVAL", "--sync-interval", "3600",
            "seconds between a warm migration's syncs when its own sync_interval is not given (60 to 604800)"),
    Setting("max_bandwidth", "MIGRATION_MAX_BANDWIDTH", "--max-bandwidth", "unlimited",
            "bytes per second this instance's copies send in all, shared fairly among them: unlimited,"
            " bytes, or a number with KB MB GB KiB MiB GiB (50MB)"),
    Setting("password_cost", "MIGRATION_PASSWORD_COST", "--password-cost", str(PASSWORD_COST),
            "scrypt's work factor for the password hashes made from now on, as the power of two of its N"
            f" ({PASSWORD_COSTS[0]} to {PASSWORD_COSTS[1]}; each hash keeps its own, so a change never locks"
            " anyone out). Below the default, a stolen database's passwords are cheaper to guess"),
    Setting("secret_key", "MIGRATION_SECRET_KEY", "--secret-key", None,
            f"key that signs tokens and encrypts stored passwords, at least {MIN_KEY_BYTES} bytes;"
            f" default: generated once and kept in {SECRET_KEY_FILE} beside the database"
            " (required with PostgreSQL: every instance needs the same key)"),
]


def label(name: str) -> str:
    """How a person names the setting: its variable and its flag."""
    setting = next(s for s in SETTINGS if s.name == name)
    return f"{setting.variable} / {setting.flag}"


def _integer(name: str, raw: str, *, low: int, high: int | None = None) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise BadSetting(f"{label(name)}: {raw!r} is not a whole number") from None
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
        raise BadSetting(f"{label(name)}: {value} is out of range ({bounds})")
    return value


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise BadSetting(f"{label(name)}: {raw!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise BadSetting(f"{label(name)}: {raw!r} must be 0 or more seconds")
    return value


def _switch(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("on", "off"):
        raise BadSetting(f"{label(name)}: {raw!r} is neither on nor off")
    return value == "on"


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise BadSetting(f"{label(name)}: {raw!r} is not one of {', '.join(choices)}")
    return value


def _positive_seconds(name: str, raw: str) -> float:
    value = _seconds(name, raw)
    if value == 0:
        raise BadSetting(f"{label(name)}: {raw!r} must be more than 0 seconds")
    return value


def _bandwidth(raw: str) -> int | None:
    if raw.strip().lower() == "unlimited":
        return None
    try:
        value = parse_size(raw)
    except ValueError as error:
        raise BadSetting(f"{label('max_bandwidth')}: {error} Or: unlimited.") from None
    if value < 1024:
        raise BadSetting(f"{label('max_bandwidth')}: {raw.strip()!r} is below 1 KiB per second")
    return value


def _networks(raw: str) -> tuple[IpNetwork, ...]:
    try:
        return parse_networks(raw)
    except ValueError as error:
        raise BadSetting(f"{label('allowed_networks')}: {error}") from None


def redacted(url: str) -> str:
    """A storage URL as a message may show it: without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()


def _storage(raw: str) -> str:
    storage = raw.strip()
    shown = redacted(storage)
    scheme = urlsplit(storage).scheme
    if scheme not in STORAGE_SCHEMES or (
        scheme == "sqlite" and not storage.startswith("sqlite:///")
    ):
        raise BadSetting(
            f"{label('storage')}: {shown!r} is not a memory://, sqlite:///path"
            " or postgresql://user:password@host:port/database URL"
        )
    if scheme == "sqlite" and not storage[len("sqlite:///") :]:
        raise BadSetting(f"{label('storage')}: {shown!r} names no database file")
    if scheme.startswith("postgres") and not urlsplit(storage).path.strip("/"):
        raise BadSetting(f"{label('storage')}: {shown!r} names no database")
    return storage


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
    workers: int = 1
    lease_seconds: float = 15.0
    allowed_networks: tuple[IpNetwork, ...] = attrs.field(factory=lambda: parse_networks("127.0.0.0/8,::1/128"))
    connect_timeout: float = 10.0
    max_copies: int = 8
    max_copies_per_machine: int = 4
    max_bandwidth: int | None = None  # bytes per second; None: unlimited
    sync_interval: int = 3600
    password_cost: int = PASSWORD_COST
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
            value = raw.get(name)
            if value is None:
                value = next(s.default for s in SETTINGS if s.name == name)
            assert value is not None, "every setting but the key has a default"
            return value

        storage = _storage(text("storage"))
        host = text("host").strip()
        if not host:
            raise BadSetting(f"{label('host')}: must not be empty")
        secret_key = raw.get("secret_key")
        if secret_key is not None and len(secret_key.encode("utf-8")) < MIN_KEY_BYTES:
            raise BadSetting(f"{label('secret_key')}: must be at least {MIN_KEY_BYTES} bytes long")
        if secret_key is None and urlsplit(storage).scheme.startswith("postgres"):
            raise BadSetting(
                f"{label('secret_key')}: required with PostgreSQL storage, the same for every instance"
            )
        workers = _integer("workers", text("workers"), low=1, high=64)
        if workers > 1 and urlsplit(storage).scheme == "memory":
            raise BadSetting(
                f"{label('workers')}: {workers} workers cannot share memory:// storage;"
                " use an sqlite:/// file or postgresql://"
            )
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
            workers=workers,
            lease_seconds=_positive_seconds("lease_seconds", text("lease_seconds")),
            allowed_networks=_networks(text("allowed_networks")),
            connect_timeout=_positive_seconds("connect_timeout", text("connect_timeout")),
            max_copies=_integer("max_copies", text("max_copies"), low=1, high=1000),
            max_copies_per_machine=_integer("max_copies_per_machine", text("max_copies_per_machine"), low=1, high=1000),
            max_bandwidth=_bandwidth(text("max_bandwidth")),
            sync_interval=_integer("sync_interval", text("sync_interval"), low=60, high=604800),
            password_cost=_integer("password_cost", text("password_cost"), low=PASSWORD_COSTS[0],
                                   high=PASSWORD_COSTS[1]),
            secret_key=secret_key,
        )

    @property
    def database_path(self) -> Path | None:
        return Path(self.storage[len("sqlite:///") :]) if self.storage.startswith("sqlite:///") else None
