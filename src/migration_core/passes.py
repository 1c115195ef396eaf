"""Many items in one unit of work, where a failing item must not hold back
the others (an import's rows, a wave's members): `items_in_one_unit`."""

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


def items_in_one_unit(storage: Storage, work: Work[T], *, commit: bool = True) -> T:
    """What `work` gives, committed when `commit`. Each item is a nested unit,
    undone alone when it fails; undoing alone has a cost in some storage, and
    most work has no failure: so `work` runs first in a unit that undoes
    nothing alone and gives up at the first failure (the quick pass), and only
    then again from the start with each item undone alone (the careful pass,
    whose errors go on)."""
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
