"""A driver's errors in the SQL adapters' terms: `ConstraintViolation` for a
broken constraint, the core's `Conflict` for a clash with a concurrent
transaction, `StorageFailure` for any other failure of the database."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from migration_core import Conflict

P = ParamSpec("P")
R = TypeVar("R")


class StorageFailure(RuntimeError):
    """The database could not do what was asked: locked too long, unreachable,
    closed, or out of space. Not the caller's fault; worth retrying later."""


class ConstraintViolation(Exception):
    """A statement broke a constraint of the schema. Raised by a session in
    place of its driver's integrity error; never leaves the SQL adapters."""


@contextmanager
def driver_errors(
    integrity: type[Exception], failures: tuple[type[Exception], ...], clashes: tuple[type[Exception], ...] = ()
) -> Iterator[None]:
    """A driver's errors in the adapters' terms: a broken constraint (the
    driver's `integrity` error), a clash with a concurrent transaction that
    the database resolved by refusing this one (`clashes`: a deadlock, a
    serialisation failure), and any other failure of the database."""
    try:
        yield
    except integrity as exc:
        raise ConstraintViolation(str(exc)) from exc
    except clashes as exc:
        raise Conflict(
            "The change clashed with another made at the same time; nothing was written. Try again."
        ) from exc
    except failures as exc:
        raise StorageFailure(f"The database failed: {exc}") from exc


def translated(method: Callable[P, R]) -> Callable[P, R]:
    """A constraint a repository has not explained is still a Conflict."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except ConstraintViolation as exc:
            raise Conflict("The change conflicts with data already stored.") from exc

    return wrapper
