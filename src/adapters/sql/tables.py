"""The description of each table the entities live in: its columns, its
references, its sealed columns, the list it keeps in a join table and the
fields derived from others; and the cutting of long id lists into statements."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import attrs

from migration_core import Credentials, CredentialsSummary, Migration, MigrationTarget, MountPoint, Wave, Workload

from ..secrets import SecretBox

R = TypeVar("R")

_PASSWORD = b"credentials.password"
_PRIVATE_KEY = b"credentials.private_key"

# SQLite allows at most 32766 bound parameters per statement; PostgreSQL 65535.
_IN_CHUNK = 500


@attrs.frozen
class Secret:
    """A text column sealed with SecretBox, bound to `context`. An optional
    one keeps "" (none) as NULL: nothing to seal, nothing to open."""

    column: str
    context: bytes
    optional: bool = False

    def seal(self, box: SecretBox, value: str) -> bytes | None:
        return None if self.optional and not value else box.seal(value, self.context)

    def open(self, box: SecretBox, stored: Any) -> str:
        return "" if stored is None else box.open(bytes(stored), self.context)


@attrs.frozen
class ListField:
    """A tuple-of-ids field kept in a join table, in the order given."""

    field: str
    table: str
    parent_column: str
    referred: str  # the table the ids point into
    item_column: str = "mount_point_id"


@attrs.frozen
class DerivedField:
    """A field read from another table, never written with the entity: a
    migration's wave is the wave whose list holds it."""

    field: str
    select: str  # its value, as an expression over the kind's row
    condition: str  # a filter on it, with one `?`


@attrs.frozen
class EntityTable:
    table: str
    entity: type[Any]
    columns: tuple[str, ...]  # stored columns besides id, as named in the entity
    int_columns: frozenset[str]
    references: tuple[tuple[str, str], ...]  # (field, referred table) of scalar fields
    list_field: ListField | None = None
    secrets: tuple[Secret, ...] = ()
    json_columns: tuple[str, ...] = ()  # attrs values (a TargetVm, a CopyMark), as JSON
    unfilterable: frozenset[str] = frozenset()
    derived: tuple[DerivedField, ...] = ()
    # Every column is a str or int the entity takes as it is: rows become
    # entities by a plain call, without the converter's per-field dispatch
    # (the cost that dominated a 100-row page; see docs/benchmarks.md).
    plain: bool = False

    def select(self, list_in_row: str = "") -> str:
        """The SELECT of the kind; with its list last, by `list_in_row` (a
        dialect's template), when given."""
        read = [*self.columns, *(f"{d.select} AS {d.field}" for d in self.derived)]
        if list_in_row and (listed := self.list_field) is not None:
            read.append(
                list_in_row.format(
                    item=listed.item_column, table=listed.table, parent=listed.parent_column, of=self.table
                )
            )
        return f"SELECT id, {', '.join(read)} FROM {self.table}"

    @functools.cached_property
    def positional(self) -> bool:
        """Whether a row (id first, then the columns and what is derived) is
        the entity's fields in order with id last: then it becomes one by a
        positional call."""
        fields = tuple(field.name for field in attrs.fields(self.entity))
        derived = tuple(d.field for d in self.derived)
        return self.plain and not self.list_field and fields == (*self.columns, *derived, "id")

    @functools.cached_property
    def statements(self) -> tuple[str, str, str]:
        """SELECT, INSERT and UPDATE of the kind."""
        marks = ", ".join("?" * len(self.columns))
        return (
            self.select(),
            f"INSERT INTO {self.table} ({', '.join(self.columns)}) VALUES ({marks})",
            f"UPDATE {self.table} SET {', '.join(f'{c} = ?' for c in self.columns)}"
            " WHERE id = ? AND owner_id = ?",
        )


CREDENTIALS = EntityTable(
    "credentials",
    Credentials,
    ("owner_id", "username", "password", "domain", "private_key"),
    frozenset({"owner_id"}),
    (),
    secrets=(Secret("password", _PASSWORD), Secret("private_key", _PRIVATE_KEY, optional=True)),
    unfilterable=frozenset({"password", "private_key"}),
    plain=True,
)
# Credentials as answers show them: read from the same rows, nothing opened.
CREDENTIALS_SUMMARIES = EntityTable(
    "credentials",
    CredentialsSummary,
    ("owner_id", "username", "domain"),
    frozenset({"owner_id"}),
    (),
    derived=(
        DerivedField(
            "has_private_key",
            "private_key IS NOT NULL",
            "CASE WHEN private_key IS NULL THEN 0 ELSE 1 END = ?",
        ),
    ),
    plain=True,
)
MOUNT_POINTS = EntityTable(
    "mount_points",
    MountPoint,
    ("owner_id", "name", "size"),
    frozenset({"owner_id", "size"}),
    (),
    plain=True,
)
WORKLOADS = EntityTable(
    "workloads",
    Workload,
    ("owner_id", "ip", "credentials_id", "port", "os", "root", "host_key", "last_check"),
    frozenset({"owner_id", "credentials_id", "port"}),
    (("credentials_id", "credentials"),),
    ListField("mount_point_ids", "workload_mount_points", "workload_id", "mount_points"),
    # The entity takes its last check as the JSON object stored.
    json_columns=("last_check",),
    unfilterable=frozenset({"last_check"}),
    plain=True,
)
MIGRATION_TARGETS = EntityTable(
    "migration_targets",
    MigrationTarget,
    ("owner_id", "cloud_type", "cloud_credentials_id", "target_vm", "host_id", "root"),
    frozenset({"owner_id", "cloud_credentials_id", "host_id"}),
    (("cloud_credentials_id", "credentials"), ("host_id", "workloads")),
    json_columns=("target_vm",),
    unfilterable=frozenset({"target_vm"}),
)
MIGRATIONS = EntityTable(
    "migrations",
    Migration,
    (
        "owner_id",
        "source_id",
        "migration_target_id",
        "state",
        "progress",
        "error",
        "started_at",
        "finished_at",
        "snapshot",
        "instance_id",
        "copied",
        "phase",
        "swapping",
        "queued_at",
        "mode",
        "sync_interval",
        "cutover_at",
        "pre_cutover",
        "post_cutover",
        "replication",
        "next_sync_at",
        "readiness",
    ),
    frozenset({"owner_id", "source_id", "migration_target_id", "progress"}),
    (("source_id", "workloads"), ("migration_target_id", "migration_targets")),
    ListField("selected_mount_point_ids", "migration_mount_points", "migration_id", "mount_points"),
    json_columns=("snapshot", "copied", "replication", "readiness"),
    unfilterable=frozenset(
        {
            "snapshot", "started_at", "finished_at", "instance_id", "copied", "phase", "swapping", "queued_at",
            "mode", "sync_interval", "cutover_at", "pre_cutover", "post_cutover", "replication", "next_sync_at",
            "readiness",
        }
    ),
    derived=(
        DerivedField(
            "wave_id",
            "(SELECT wave_id FROM wave_migrations WHERE migration_id = migrations.id)",
            "id IN (SELECT migration_id FROM wave_migrations WHERE wave_id = ?)",
        ),
    ),
)
WAVES = EntityTable(
    "waves",
    Wave,
    ("owner_id", "name"),
    frozenset({"owner_id"}),
    (),
    ListField("migration_ids", "wave_migrations", "wave_id", "migrations", "migration_id"),
    plain=True,
)
KINDS = (CREDENTIALS, MOUNT_POINTS, WORKLOADS, MIGRATION_TARGETS, MIGRATIONS, WAVES)
LISTED = frozenset(kind.list_field.referred for kind in KINDS if kind.list_field is not None)


def chunks(ids: Sequence[R]) -> Iterator[Sequence[R]]:
    for start in range(0, len(ids), _IN_CHUNK):
        yield ids[start : start + _IN_CHUNK]


def marks(count: int) -> str:
    return ", ".join("?" * count)
