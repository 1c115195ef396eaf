"""What storage says when it refuses, in one place, so that every adapter (in
memory, SQLite, PostgreSQL) refuses in the same words."""

from __future__ import annotations

from collections.abc import Iterable

from migration_core import Conflict, NotFound
from migration_core.errors import target_busy

__all__ = ["target_busy"]  # the core's sentence, said by storage too

# One object of each table, as a sentence names it.
NOUNS = {
    "users": "User",
    "credentials": "Credentials",
    "mount_points": "Mount point",
    "workloads": "Workload",
    "migration_targets": "Migration target",
    "migrations": "Migration",
    "waves": "Wave",
}


def not_found(table: str, row_id: int) -> NotFound:
    return NotFound(f"{NOUNS[table]} {row_id} not found.")


def missing_owner(owner_id: int) -> Conflict:
    return Conflict(f"owner_id refers to a missing users row {owner_id}.")


def missing_reference(field: str, table: str, row_id: int) -> Conflict:
    return Conflict(f"{field} refers to a missing {table} row {row_id}.")


def still_referred(table: str, row_id: int, by_table: str) -> Conflict:
    return Conflict(f"{NOUNS[table]} {row_id} is still referred to by {by_table}.")


def still_owns(user_id: int, tables: Iterable[str]) -> Conflict:
    return Conflict(f"User {user_id} still owns {', '.join(tables)}.")


def username_taken(username: str) -> Conflict:
    return Conflict(f"The username {username!r} is taken.")


def ip_taken(workload_id: int, ip: str) -> Conflict:
    return Conflict(f"Workload {workload_id} already has ip {ip}.")


def mount_point_taken(mount_point_id: int, workload_id: int) -> Conflict:
    return Conflict(f"Mount point {mount_point_id} already belongs to workload {workload_id}.")


def not_in_state(migration_id: int, state: str) -> Conflict:
    return Conflict(f"Migration {migration_id} is {state}.")


def name_taken(table: str, row_id: int, name: str) -> Conflict:
    return Conflict(f"{NOUNS[table]} {row_id} is already named {name!r}.")


def migration_in_wave(migration_id: int, wave_id: int) -> Conflict:
    return Conflict(f"Migration {migration_id} is already in wave {wave_id}.")
