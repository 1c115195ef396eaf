"""Configuration (README, "Configuration"): every setting is a variable and a `serve` flag (the flag wins), a
bad value stops the start with one line naming it, and the secret key is
generated once beside the database."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest

from entrypoints.bootstrap import SETTINGS, BadSetting, Settings, bootstrap, load_or_create_secret_key
from entrypoints.cli import main
from migration_core import PasswordHasher


def test_defaults_are_those_of_the_spec() -> None:
    assert Settings.from_sources({}, {}) == Settings(
        storage="sqlite:///./data/migration.db", host="127.0.0.1", port=8080, run_seconds=60,
        access_ttl=86400, refresh_ttl=604800, secret_key=None, password_cost=15,
    )


def test_each_variable_is_read_and_each_flag_wins_over_it() -> None:
    environ = {
        "MIGRATION_STORAGE": "memory://", "MIGRATION_HOST": "0.0.0.0", "MIGRATION_PORT": "9000",
        "MIGRATION_RUN_SECONDS": "0", "MIGRATION_ACCESS_TTL": "60", "MIGRATION_REFRESH_TTL": "120",
        "MIGRATION_SECRET_KEY": "e" * 32, "MIGRATION_ACCESS_LOG": "off", "MIGRATION_METRICS": "off",
        "MIGRATION_LOG_FORMAT": "json",
    }
    assert Settings.from_sources(environ, {}) == Settings(
        storage="memory://", host="0.0.0.0", port=9000, run_seconds=0.0, access_ttl=60, refresh_ttl=120,
        secret_key="e" * 32, access_log=False, metrics=False, log_format="json",
    )
    flags = {"storage": "sqlite:////tmp/x.db", "host": "::1", "port": "9001", "run_seconds": "2.5",
             "access_ttl": "61", "refresh_ttl": "121", "secret_key": "f" * 32, "access_log": "ON",
             "metrics": "on", "log_format": "TEXT"}
    assert Settings.from_sources(environ, flags) == Settings(
        storage="sqlite:////tmp/x.db", host="::1", port=9001, run_seconds=2.5, access_ttl=61, refresh_ttl=121,
        secret_key="f" * 32, access_log=True, metrics=True, log_format="text",
    )
    assert {"--" + name.replace("_", "-") for name in flags} <= {s.flag for s in SETTINGS}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MIGRATION_PORT", "http"), ("MIGRATION_PORT", "0"), ("MIGRATION_PORT", "65536"),
        ("MIGRATION_RUN_SECONDS", "-1"), ("MIGRATION_RUN_SECONDS", "soon"), ("MIGRATION_RUN_SECONDS", "inf"),
        ("MIGRATION_ACCESS_TTL", "0"), ("MIGRATION_REFRESH_TTL", "1.5"), ("MIGRATION_SECRET_KEY", "short"),
        ("MIGRATION_STORAGE", "postgres://db"), ("MIGRATION_STORAGE", "sqlite:///"), ("MIGRATION_HOST", " "),
        ("MIGRATION_ACCESS_LOG", "yes"), ("MIGRATION_WORKERS", "0"), ("MIGRATION_WORKERS", "65"),
        ("MIGRATION_LEASE_SECONDS", "0"), ("MIGRATION_LEASE_SECONDS", "soon"),
        ("MIGRATION_METRICS", "1"), ("MIGRATION_LOG_FORMAT", "xml"),
        ("MIGRATION_PASSWORD_COST", "9"), ("MIGRATION_PASSWORD_COST", "18"), ("MIGRATION_PASSWORD_COST", "fast"),
    ],
)
def test_a_bad_value_is_refused_naming_the_setting(variable: str, value: str) -> None:
    with pytest.raises(BadSetting, match=variable):
        Settings.from_sources({variable: value}, {})


def test_postgresql_storage_needs_the_secret_key_given() -> None:
    """Every instance must share one key, and no file beside the database holds it."""
    url = "postgresql://migration:pw@127.0.0.1:5432/migration"
    with pytest.raises(BadSetting, match="MIGRATION_SECRET_KEY / --secret-key: required with PostgreSQL"):
        Settings.from_sources({"MIGRATION_STORAGE": url}, {})
    assert Settings.from_sources({"MIGRATION_STORAGE": url, "MIGRATION_SECRET_KEY": "k" * 32}, {}).storage == url


def test_serve_with_a_bad_value_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIGRATION_STORAGE", "memory://")
    assert main(["serve", "--port", "eighty"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--port" in err and "MIGRATION_PORT" in err and "Traceback" not in err


def test_a_port_in_use_exits_1_with_one_line_naming_the_setting_before_opening_storage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for setting in SETTINGS:
        monkeypatch.delenv(setting.variable, raising=False)
    database = tmp_path / "data" / "migration.db"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--storage", f"sqlite:///{database}"]) == 1
    assert capsys.readouterr().err == (
        f"migration-api: cannot listen on 127.0.0.1:{port}: the port is already in use;"
        " choose another with MIGRATION_PORT / --port\n"
    )
    # Nothing was opened: a second process on a busy port must not mark the
    # first one's runs interrupted.
    assert not database.parent.exists()


def test_a_port_taken_between_the_check_and_listening_is_said_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two services started at once may both pass the bind check; the one
    that listens second says so as the check would, not with a traceback."""
    import errno

    from aiohttp import web

    def taken(*_args: object, **_options: object) -> None:
        raise OSError(errno.EADDRINUSE, "Address already in use")

    monkeypatch.setattr(web, "run_app", taken)  # serve's, which it imports when it runs
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["serve", "--port", str(port), "--storage", "memory://"]) == 1
    assert capsys.readouterr().err.endswith(
        f"migration-api: cannot listen on 127.0.0.1:{port}: the port is already in use;"
        " choose another with MIGRATION_PORT / --port\n"
    )


def test_the_secret_key_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "data" / "secret.key"
    key = load_or_create_secret_key(path)
    assert len(key) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret_key(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["secret.key"]


def test_sqlite_storage_keeps_its_key_beside_the_database(tmp_path: Path) -> None:
    settings = Settings(storage=f"sqlite:///{tmp_path}/db/migration.db")
    services = bootstrap(settings)
    services.storage.close()
    first = (tmp_path / "db" / "secret.key").read_text()
    services = bootstrap(settings)
    services.storage.close()
    assert (tmp_path / "db" / "secret.key").read_text() == first


def test_the_password_cost_is_that_of_new_hashes_and_a_hash_made_at_another_still_verifies() -> None:
    """Each hash keeps its own factor: lowering or raising the setting locks no one out."""

    def hasher(**cost: str) -> PasswordHasher:
        services = bootstrap(Settings.from_sources({"MIGRATION_STORAGE": "memory://", "MIGRATION_SECRET_KEY": "k" * 32},
                                                   cost))
        services.storage.close()
        return services.hasher

    by_default, cheap = hasher(), hasher(password_cost="10")
    made_by_default = by_default.hash("long enough")
    assert made_by_default.startswith("scrypt$32768$8$1$")
    assert cheap.hash("long enough").startswith("scrypt$1024$8$1$")
    assert cheap.verify(made_by_default, "long enough") and not cheap.verify(made_by_default, "long enougH")


def test_a_database_written_with_another_key_is_a_bad_setting(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/migration.db"
    bootstrap(Settings(storage=url, secret_key="a" * 32)).storage.close()
    with pytest.raises(BadSetting, match="MIGRATION_STORAGE"):
        bootstrap(Settings(storage=url, secret_key="b" * 32))


def test_a_storage_that_cannot_be_opened_is_named_without_its_password() -> None:
    url = "postgresql://migration:TOPSECRET@127.0.0.1:1/migration"
    with pytest.raises(BadSetting) as refused:
        bootstrap(Settings.from_sources({"MIGRATION_STORAGE": url, "MIGRATION_SECRET_KEY": "k" * 32}, {}))
    assert "TOPSECRET" not in str(refused.value)
    assert "postgresql://migration:***@127.0.0.1:1/migration" in str(refused.value)
    with pytest.raises(BadSetting) as refused:
        Settings.from_sources({"MIGRATION_STORAGE": "postgresql://m:TOPSECRET@host"}, {})
    assert "TOPSECRET" not in str(refused.value)
