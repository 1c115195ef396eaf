"""Secrets at rest: no password or private key is written in a readable form
to an SQLite file or its WAL, nor to what `pg_dump` makes of a PostgreSQL
database, yet the storage gives each one back, and only with the secret key
it was written with."""

from __future__ import annotations

import base64
import secrets
import subprocess
from pathlib import Path

import pytest

import migration_core as core
from adapters.clock import SystemClock
from adapters.passwords import ScryptHasher
from adapters.runners import BlockingRunner
from adapters.secrets import SecretBox, SecretError
from adapters.simulated_copy import SimulatedCopy
from entrypoints.bootstrap import open_storage

from ..postgres_server import find_bin_dir
from ..ssh_keys import keygen
from .storages import SQL_STORAGES, storage_url

SECRET = b"secrets-suite-secret-key-32-bytes"


def on_disk(path: Path) -> bytes:
    return b"".join(
        p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists()
    )


def stored(url: str) -> bytes:
    """Everything the database holds, as bytes: the SQLite file and its WAL, or
    a plain `pg_dump` of the PostgreSQL database (what a backup would hold)."""
    if url.startswith("sqlite:///"):
        return on_disk(Path(url[len("sqlite:///") :]))
    dump = subprocess.run(
        [str(find_bin_dir() / "pg_dump"), "--dbname", url], capture_output=True, check=True, timeout=60
    )
    return dump.stdout


def readable_forms(password: str) -> list[bytes]:
    raw = password.encode()
    return [raw, base64.b64encode(raw), password.encode("utf-16-le")]


def key_forms(key: str) -> list[bytes]:
    """A private key as text, and each line of its body: any one of them is
    part of the key a reader could take (the body is base64 already)."""
    lines = [line for line in key.splitlines() if line and not line.startswith("-----")]
    return [*readable_forms(key), *(line.encode() for line in lines)]


@pytest.mark.parametrize("kind", SQL_STORAGES)
def test_passwords_are_unreadable_at_rest_and_read_back_through_the_storage(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = storage_url(kind, request, tmp_path)
    user_password = "user-" + secrets.token_hex(16)
    credentials_password = "cred-" + secrets.token_hex(16)
    storage = open_storage(url, SECRET)
    hasher = ScryptHasher(n=2**12)
    try:
        user = core.register_user(storage, hasher, "keeper", user_password)
        credentials = core.create_credentials(
            storage, user.id, username="admin", password=credentials_password
        )
        private_key = keygen("at-rest", "-t", "ed25519")
        keyed = core.create_credentials(storage, user.id, username="deploy", private_key=private_key)
        system = core.create_mount_point(storage, user.id, name="C:\\", size=1)
        workload = core.create_workload(
            storage, user.id, ip="10.0.0.1", credentials_id=credentials.id, mount_point_ids=[system.id]
        )
        target = core.create_migration_target(
            storage, user.id, cloud_type="aws", cloud_credentials_id=credentials.id
        )
        migration = core.create_migration(
            storage,
            user.id,
            clock=SystemClock(),
            source_id=workload.id,
            migration_target_id=target.id,
            selected_mount_point_ids=[system.id],
        )
        clock = SystemClock()
        # Success copies the source's login into the target VM, via the run's snapshot.
        runner = BlockingRunner(storage, clock, SimulatedCopy(0))
        done = core.run_migration(storage, clock, runner, user.id, migration.id)
        assert done.state is core.MigrationState.SUCCESS

        if kind == "sqlite":
            wal = Path(url[len("sqlite:///") :] + "-wal")
            assert wal.stat().st_size > 0, "the WAL is checked too"
        written = stored(url)
        assert credentials.username.encode() in written, "the check reads what storage holds"
        for password in (user_password, credentials_password):
            for form in readable_forms(password):
                assert form not in written
        for form in key_forms(private_key):
            assert form not in written

        assert core.get_credentials(storage, user.id, credentials.id).password == credentials_password
        assert core.get_credentials(storage, user.id, keyed.id).private_key == private_key
        vm = core.get_migration_target(storage, user.id, target.id).target_vm
        assert vm is not None and vm.credentials.password == credentials_password
        snapshot = core.get_migration(storage, user.id, migration.id).snapshot
        assert snapshot is not None and snapshot.credentials.password == credentials_password
        assert core.authenticate(
            storage, hasher, core.LoginThrottle(storage, clock), "keeper", user_password
        ) == user
    finally:
        storage.close()

    # Closed (SQLite: checkpointed into the main file): still nothing readable.
    written = stored(url)
    for password in (user_password, credentials_password):
        for form in readable_forms(password):
            assert form not in written
    for form in key_forms(private_key):
        assert form not in written
    assert b"scrypt$" in written


@pytest.mark.parametrize("kind", SQL_STORAGES)
def test_reopening_with_the_same_key_reads_the_secrets(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = storage_url(kind, request, tmp_path)
    storage = open_storage(url, SECRET)
    with storage.unit_of_work() as uow:
        owner = uow.users.add(core.User("keeper", "h")).id
        uow.commit()
    credentials = core.create_credentials(storage, owner, username="admin", password="kept")
    keyed = core.create_credentials(
        storage, owner, username="deploy", private_key=keygen("reopened", "-t", "rsa", "-b", "2048", "-m", "PEM")
    )
    storage.close()

    reopened = open_storage(url, SECRET)
    try:
        assert core.get_credentials(reopened, owner, credentials.id) == credentials
        assert core.get_credentials(reopened, owner, keyed.id) == keyed
    finally:
        reopened.close()


@pytest.mark.parametrize("kind", SQL_STORAGES)
def test_credentials_answers_are_read_without_opening_a_secret(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_storage(storage_url(kind, request, tmp_path), SECRET)
    try:
        with storage.unit_of_work() as uow:
            owner = uow.users.add(core.User("keeper", "h")).id
            uow.commit()
        credentials = core.create_credentials(storage, owner, username="admin", password="sealed")
        keyed = core.create_credentials(
            storage, owner, username="deploy", private_key=keygen("unopened", "-t", "ed25519")
        )

        def refuse(*_: object) -> str:
            raise AssertionError("a secret was opened")

        monkeypatch.setattr(SecretBox, "open", refuse)
        monkeypatch.setattr(SecretBox, "open_text", refuse)
        summaries = [core.CredentialsSummary.of(credentials), core.CredentialsSummary.of(keyed)]
        assert core.get_credentials_summary(storage, owner, keyed.id) == summaries[1]
        assert core.list_credentials_summaries(storage, owner, core.ListQuery()).items == summaries
        with pytest.raises(AssertionError, match="a secret was opened"):
            core.get_credentials(storage, owner, credentials.id)  # the check can fail
    finally:
        storage.close()


@pytest.mark.parametrize("kind", SQL_STORAGES)
def test_another_secret_key_is_refused_when_the_database_opens(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = storage_url(kind, request, tmp_path)
    open_storage(url, SECRET).close()
    with pytest.raises(SecretError, match="another secret key"):
        open_storage(url, b"some-other-secret-key-of-32-bytes")


def test_a_sealed_value_opens_only_with_its_key_and_in_its_place() -> None:
    box = SecretBox(SECRET)
    sealed = box.seal("hunter2", b"credentials.password")
    assert b"hunter2" not in sealed
    assert box.open(sealed, b"credentials.password") == "hunter2"
    assert box.seal("hunter2", b"credentials.password") != sealed  # a fresh nonce each time
    with pytest.raises(SecretError):
        box.open(sealed, b"login.password")
    with pytest.raises(SecretError):  # a password is no private key either
        box.open(sealed, b"credentials.private_key")
    with pytest.raises(SecretError):
        SecretBox(b"another-key").open(sealed, b"credentials.password")
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SecretError):
        box.open(tampered, b"credentials.password")
