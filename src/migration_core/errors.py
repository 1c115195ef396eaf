"""The core's own errors. Adapters translate their failures into these, and the
HTTP edge maps each kind to one status in a single table."""

from __future__ import annotations

import attrs


class DomainError(Exception):
    """Base of every error the core raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(DomainError):
    """Values that break a rule; `errors` maps each field to its messages."""

    def __init__(self, errors: dict[str, list[str]], message: str = "Invalid input.") -> None:
        super().__init__(message)
        self.errors = errors

    @classmethod
    def field(cls, name: str, message: str) -> InvalidInput:
        return cls({name: [message]})


class NotFound(DomainError):
    """Missing, or owned by someone else: the two are indistinguishable on purpose."""


class Conflict(DomainError):
    """The request is valid but clashes with the current state."""


def target_busy(target_id: int, migration_id: int) -> Conflict:
    """What a run into a target another run is copying into is told, and an
    edit of where that target copies to: the one sentence for it."""
    return Conflict(f"Migration target {target_id} is busy with migration {migration_id}.")


def running_not_editable(migration_id: int) -> Conflict:
    """What an edit of a running migration is told, by an update and by an
    inventory import alike: the one sentence for it."""
    return Conflict(f"Migration {migration_id} is running and cannot be edited.")


class AuthenticationFailed(DomainError):
    """Wrong username or password, or an unusable token."""


class Throttled(DomainError):
    """Too many failed logins; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after



@attrs.frozen
class RowError:
    """One bad row of an inventory: its number as a spreadsheet shows it (the
    header is row 1), the column at fault (None: the whole row) and why."""

    row: int
    field: str | None
    message: str


class RowsRefused(DomainError):
    """An inventory that may not be imported, as a whole: `rows` says which
    rows are bad and why (empty when the file itself is)."""

    def __init__(self, message: str, rows: list[RowError]) -> None:
        super().__init__(message)
        self.rows = rows
