"""The SQLite schema as an ordered list of upgrade steps.

`PRAGMA user_version` holds how many steps a database file has had. Opening a
file applies the missing steps in order, in one transaction, so a database
written by an older release opens in a newer one. Steps are never edited once
released: a change to the schema is a new step at the end of `STEPS`.

The DDL is written out rather than generated: AUTOINCREMENT ids (never reused,
as in the in-memory storage), table-level UNIQUE constraints, composite foreign
keys and partial indexes are the point of the schema and should be read as SQL.

Constraints carry the rules that span rows:
- every owned row references its owner; deleting a referenced row is refused
  (ON DELETE RESTRICT), except join rows, which go with the row that owns them;
- references are composite `(owner_id, x_id)` keys, so a row can only refer to
  rows of the same owner;
- UNIQUE(owner_id, ip) on workloads, UNIQUE(mount_point_id) on the workload's
  storage, UNIQUE(username) on users, and at most one `running` migration per
  target (a partial unique index)."""

from __future__ import annotations

from collections.abc import Callable

from sqlite_utils import Database

Step = Callable[[Database], None]


def _create_tables(db: Database) -> None:
    """Step 1: the tables, their constraints and the indexes foreign keys need."""
    statements = [
        """
        CREATE TABLE settings (
            name TEXT PRIMARY KEY,
            value BLOB NOT NULL
        )
        """,
        """
        CREATE TABLE users (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            username TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL
        )
        """,
        """
        CREATE TABLE credentials (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            owner_id INTEGER NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
            username TEXT NOT NULL CHECK (username <> ''),
            password BLOB NOT NULL,
            domain TEXT NOT NULL DEFAULT '',
            UNIQUE (owner_id, id)
        )
        """,
        """
        CREATE TABLE mount_points (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            owner_id INTEGER NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
            name TEXT NOT NULL CHECK (name <> ''),
            size INTEGER NOT NULL CHECK (size >= 0),
            UNIQUE (owner_id, id)
        )
        """,
        """
        CREATE TABLE workloads (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            owner_id INTEGER NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
            ip TEXT NOT NULL,
            credentials_id INTEGER NOT NULL,
            UNIQUE (owner_id, id),
            UNIQUE (owner_id, ip),
            FOREIGN KEY (owner_id, credentials_id)
                REFERENCES credentials (owner_id, id) ON DELETE RESTRICT
        )
        """,
        "CREATE INDEX workloads_credentials ON workloads (credentials_id)",
        """
        CREATE TABLE workload_mount_points (
            workload_id INTEGER NOT NULL,
            position INTEGER NOT NULL,
            owner_id INTEGER NOT NULL,
            mount_point_id INTEGER NOT NULL UNIQUE,
            PRIMARY KEY (workload_id, position),
            FOREIGN KEY (owner_id, workload_id)
                REFERENCES workloads (owner_id, id) ON DELETE CASCADE,
            FOREIGN KEY (owner_id, mount_point_id)
                REFERENCES mount_points (owner_id, id) ON DELETE RESTRICT
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE migration_targets (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            owner_id INTEGER NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
            cloud_type TEXT NOT NULL
                CHECK (cloud_type IN ('aws', 'azure', 'vsphere', 'vcloud')),
            cloud_credentials_id INTEGER NOT NULL,
            target_vm TEXT,
            UNIQUE (owner_id, id),
            FOREIGN KEY (owner_id, cloud_credentials_id)
                REFERENCES credentials (owner_id, id) ON DELETE RESTRICT
        )
        """,
        "CREATE INDEX migration_targets_credentials ON migration_targets (cloud_credentials_id)",
        """
        CREATE TABLE migrations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            owner_id INTEGER NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
            source_id INTEGER NOT NULL,
            migration_target_id INTEGER NOT NULL,
            state TEXT NOT NULL
                CHECK (state IN ('not_started', 'running', 'error', 'success')),
            progress INTEGER NOT NULL CHECK (progress BETWEEN 0 AND 100),
            error TEXT,
            started_at TEXT,
            finished_at TEXT,
            snapshot TEXT,
            UNIQUE (owner_id, id),
            FOREIGN KEY (owner_id, source_id)
                REFERENCES workloads (owner_id, id) ON DELETE RESTRICT,
            FOREIGN KEY (owner_id, migration_target_id)
                REFERENCES migration_targets (owner_id, id) ON DELETE RESTRICT
        )
        """,
        "CREATE INDEX migrations_source ON migrations (source_id)",
        "CREATE INDEX migrations_target ON migrations (migration_target_id)",
        """
        CREATE UNIQUE INDEX migrations_one_running_per_target
            ON migrations (migration_target_id) WHERE state = 'running'
        """,
        """
        CREATE TABLE migration_mount_points (
            migration_id INTEGER NOT NULL,
            position INTEGER NOT NULL,
            owner_id INTEGER NOT NULL,
            mount_point_id INTEGER NOT NULL,
            PRIMARY KEY (migration_id, position),
            UNIQUE (migration_id, mount_point_id),
            FOREIGN KEY (owner_id, migration_id)
                REFERENCES migrations (owner_id, id) ON DELETE CASCADE,
            FOREIGN KEY (owner_id, mount_point_id)
                REFERENCES mount_points (owner_id, id) ON DELETE RESTRICT
        ) WITHOUT ROWID
        """,
        "CREATE INDEX migration_mount_points_mount_point"
        " ON migration_mount_points (mount_point_id)",
    ]
    for statement in statements:
        db.execute(statement)


# Each list filter of the API, as (table, column): an index on (owner_id, column)
# answers "this owner's rows with this value, in id order" without a scan, as the
# rowid is the implicit last column of every index.
FILTER_INDEXES = [
    ("credentials", "username"),
    ("credentials", "domain"),
    ("mount_points", "name"),
    ("migration_targets", "cloud_type"),
    ("migrations", "state"),
    ("migrations", "source_id"),
    ("migrations", "migration_target_id"),
]


def _index_list_filters(db: Database) -> None:
    """Step 2: indexes for the list filters (workloads' ip is UNIQUE already)."""
    for table, column in FILTER_INDEXES:
        db.table(table).create_index(["owner_id", column], index_name=f"{table}_by_{column}")


OWNED_TABLES = ["credentials", "mount_points", "workloads", "migration_targets", "migrations"]


def _count_owned_rows(db: Database) -> None:
    """Step 3: each owner's number of rows per table, kept by triggers, so an
    unfiltered list knows its `count` without counting (an owner's rows are
    never moved to another owner, so updates need no trigger)."""
    db.execute(
        """
        CREATE TABLE owned_counts (
            table_name TEXT NOT NULL,
            owner_id INTEGER NOT NULL,
            rows INTEGER NOT NULL CHECK (rows >= 0),
            PRIMARY KEY (table_name, owner_id)
        ) WITHOUT ROWID
        """
    )
    for table in OWNED_TABLES:
        db.execute(
            f"""
            CREATE TRIGGER {table}_counted_insert AFTER INSERT ON {table} BEGIN
                INSERT INTO owned_counts (table_name, owner_id, rows)
                VALUES ('{table}', NEW.owner_id, 1)
                ON CONFLICT (table_name, owner_id) DO UPDATE SET rows = rows + 1;
            END
            """
        )
        db.execute(
            f"""
            CREATE TRIGGER {table}_counted_delete AFTER DELETE ON {table} BEGIN
                UPDATE owned_counts SET rows = rows - 1
                WHERE table_name = '{table}' AND owner_id = OLD.owner_id;
            END
            """
        )
        db.execute(
            f"INSERT INTO owned_counts (table_name, owner_id, rows)"
            f" SELECT '{table}', owner_id, count(*) FROM {table} GROUP BY owner_id"
        )


STEPS: list[Step] = [_create_tables, _index_list_filters, _count_owned_rows]
LATEST_VERSION = len(STEPS)


class SchemaTooNew(Exception):
    """The file was written by a newer release, whose schema this one does not know."""


def schema_version(db: Database) -> int:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    assert isinstance(version, int)
    return version


def upgrade(db: Database, to_version: int = LATEST_VERSION) -> list[int]:
    """Apply the missing steps up to `to_version`, inside the caller's
    transaction; return the step numbers applied."""
    current = schema_version(db)
    if current > LATEST_VERSION:
        raise SchemaTooNew(
            f"The database is at schema version {current}; this release knows"
            f" versions up to {LATEST_VERSION}. Use a newer release."
        )
    applied = []
    for number in range(current + 1, to_version + 1):
        STEPS[number - 1](db)
        applied.append(number)
    if applied:
        # PRAGMA takes no parameters; the value is our own integer.
        db.execute(f"PRAGMA user_version = {int(to_version)}")
    return applied
