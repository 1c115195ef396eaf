import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, settings

from adapters.postgres import PostgresStorage

from .postgres_server import PostgresServer, PostgresUnavailable

# The suite's temporary files on tmpfs, for the test processes and all they
# start (sshd, PostgreSQL, services, copies): on this machine's disk, creating
# a file costs half a millisecond of CPU and every commit waits for an fsync.
# A TMPDIR given is kept. Others may pass through (PostgreSQL runs as nobody
# under root), not list.
_IN_MEMORY = Path("/dev/shm") / f"migration-tests-{os.getuid()}"
if "TMPDIR" not in os.environ and os.access(_IN_MEMORY.parent, os.W_OK | os.X_OK):
    _IN_MEMORY.mkdir(exist_ok=True)
    if _IN_MEMORY.stat().st_uid == os.getuid():
        _IN_MEMORY.chmod(0o711)
        os.environ["TMPDIR"] = str(_IN_MEMORY)
        tempfile.tempdir = None  # gettempdir() reads TMPDIR again

# The real sshd and the listeners of the SSH tests.
pytest_plugins = ["tests.sshd_fixtures"]

settings.register_profile("default", max_examples=60, deadline=None)
# CI derandomizes (Hypothesis's own CI settings), so each run draws the same
# examples: more of them re-check the same cases at every run, and 100 keep
# the properties' share of a suite bound by two cores.
settings.register_profile(
    "ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

TEMPLATE_ONLY_KEY = b"opens-the-schema-template-only-32"


# A real PostgreSQL server (see tests/postgres_server.py): one per test session
# (with pytest-xdist, one per worker), a fresh database per test: empty, or
# copied from one at the latest schema (postgres_schema_url).

# Databases whose test (or module) is over, dropped once all of that test's
# fixtures have ended: a fixture set up before the database (an app holding a
# pool of connections to it, a service process) ends after it, and must not
# find its database gone (a pool would wait out its timeout reconnecting).
_finished_databases: list[tuple[PostgresServer, str]] = []


def _drop_finished_databases() -> None:
    while _finished_databases:
        server, name = _finished_databases.pop()
        server.drop_database(name)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    try:
        return (yield)
    finally:
        _drop_finished_databases()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's server. Its url() is the base URL; a module whose tests run
    several processes against one database can take postgres_module_url, or
    call create_database()/drop_database() itself."""
    server = PostgresServer.from_env()
    problem = None
    try:
        server.start()
    except PostgresUnavailable as e:
        problem = str(e)
    if problem:  # a failure, never a skip: PostgreSQL tests must run everywhere
        pytest.fail(problem, pytrace=False)
    try:
        yield server
    finally:
        try:
            _drop_finished_databases()  # the last test's, on a server that stays (a URL given)
        finally:
            server.stop()


def _database_url(server: PostgresServer, template: str = "template0") -> Iterator[str]:
    name = server.create_database(template=template)
    try:
        yield server.url(name)
    finally:
        _finished_databases.append((server, name))


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A new empty database for this test alone, dropped after it."""
    yield from _database_url(postgres_server)


@pytest.fixture(scope="session")
def postgres_schema_template(postgres_server: PostgresServer) -> Iterator[str]:
    """A database the storage opened once (the latest schema) and holding no
    row: not even the secret key's check, so a copy takes any test's key as
    new. Copying it is a fifth of what a copy of template0 and the schema's
    steps take, the most of a PostgreSQL test's setup."""
    name = postgres_server.create_database()
    PostgresStorage(postgres_server.url(name), TEMPLATE_ONLY_KEY, min_connections=1).close()
    with psycopg.connect(postgres_server.url(name), autocommit=True) as template:
        template.execute("DELETE FROM settings")
        tables = [row[0] for row in template.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_version'"
        )]
        holding = [table for table in tables if template.execute(f'SELECT 1 FROM "{table}" LIMIT 1').fetchone()]
        assert tables and holding == [], f"the schema template holds rows in {holding}"
    try:
        yield name
    finally:
        postgres_server.drop_database(name)


@pytest.fixture
def postgres_schema_url(postgres_server: PostgresServer, postgres_schema_template: str) -> Iterator[str]:
    """A new database for this test alone at the latest schema, with no row, dropped after it."""
    yield from _database_url(postgres_server, postgres_schema_template)


@pytest.fixture(scope="module")
def postgres_module_url(postgres_server: PostgresServer) -> Iterator[str]:
    """One empty database shared by a whole test module, e.g. by the processes a
    multi-process test starts; dropped after the module."""
    yield from _database_url(postgres_server)
