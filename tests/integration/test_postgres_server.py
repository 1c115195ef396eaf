"""The test PostgreSQL server itself: reachable, on 127.0.0.1 only, not root,
and a fresh empty database for each test. With MIGRATION_TEST_POSTGRES_URL the
same holds for that server, which must then run on this machine."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

LISTEN = "0A"  # TCP state in /proc/net/tcp*
LOOPBACK = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it


def test_a_client_connects_and_reads_the_version(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("select version()").fetchone()
    assert row is not None and row[0].startswith("PostgreSQL ")


def _listening_addresses(port: int) -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == LISTEN and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_the_server_listens_on_127_0_0_1_only(postgres_url: str) -> None:
    port = urlsplit(postgres_url).port
    assert port is not None
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("show listen_addresses").fetchone()
    assert row == ("127.0.0.1",)
    # What the kernel has bound, not only what the server says.
    assert _listening_addresses(port) == {LOOPBACK}
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(postgres_url.replace("127.0.0.1", "127.0.0.2"), connect_timeout=3)


_seen: list[str] = []


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_new_empty_database(postgres_url: str, run: int) -> None:
    with psycopg.connect(postgres_url) as conn:
        name = conn.execute("select current_database()").fetchone()
        tables = conn.execute(
            "select count(*) from information_schema.tables"
            " where table_schema not in ('pg_catalog', 'information_schema')"
        ).fetchone()
        existing = {r[0] for r in conn.execute("select datname from pg_database")}
        conn.execute("create table left_behind (x int)")
    assert name is not None and name[0] not in _seen
    assert tables == (0,)
    assert not existing & set(_seen), "the previous test's database was not dropped"
    _seen.append(name[0])


def _uids(pid: int) -> list[int]:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("Uid:"))
    return [int(uid) for uid in line.split()[1:]]


def _parent(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("PPid:")).split()[1])


def test_the_server_does_not_run_as_root(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("select pg_backend_pid()").fetchone()
        assert row is not None
        backend = row[0]
        # Read while connected: the backend exits with the connection.
        backend_uids, postmaster_uids = _uids(backend), _uids(_parent(backend))
    assert 0 not in backend_uids
    assert 0 not in postmaster_uids
