"""Many items in one unit of work, where a failing item must not hold back
the others (an import's rows, a wave's members): each item is a nested unit,
undone alone when it fails. Undoing alone has a cost in some storage, and
most runs have no failure: so the work is tried first in a unit that undoes
nothing alone and gives up at the first failure, then, only when that
happened, again from the start with each item undone alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from .ports import Storage, UnitOfWork

T = TypeVar("T")

# work(uow, careful): careful=False means no failure may be passed over:
# any failure must leave `work` as an exception.
Work = Callable[[UnitOfWork, bool], T]


class GaveUp(Exception):
    """A failure the quick pass met and the careful one will tell."""


def quick_then_careful(storage: Storage, work: Work[T], *, commit: bool = True) -> T:
    """What `work` gives, committed when `commit`: from the quick pass when
    nothing failed in it, else from the careful pass (whose errors go on)."""
    committed = False
    try:
        with storage.unit_of_work(undo_nested=False) as uow:
            result = work(uow, False)
            if commit:
                uow.commit()
            committed = True
        return result
    except Exception:
        if committed:  # written already: doing it again would not be the same
            raise
    with storage.unit_of_work() as uow:
        result = work(uow, True)
        if commit:
            uow.commit()
    return result
