"""How a job step gets a space's vectors and its lists' ends: one interface, two readers.

:class:`SqlSpaceReader` reads both from SQL on every call; ``core.space_cache.SpaceCache``, a
worker's, keeps them between tasks and checks them against the database on every use. Both
give the same answers, so the steps never ask which one they have.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.orm import Session

from core.list_ends import ListEnds, read_list_ends
from core.spaces import Space, load_space_vectors
from core.vectors import VectorSet


class SpaceReader(Protocol):
    def vectors(self, session: Session, space: Space) -> VectorSet:
        """Every current vector of ``space``, projected, ordered by product id."""
        ...

    def list_ends(self, session: Session, space: Space, k: int, counter: int | None) -> ListEnds:
        """The ends of the lists of ``space`` at ``counter``, what
        ``core.neighbour_table.lock_neighbour_table`` returned earlier in this transaction."""
        ...

    def keep_list_ends(
        self, session: Session, space: Space, ends: ListEnds, counter: int | None
    ) -> None:
        """``ends`` are the lists of ``space`` after this transaction's writes, at ``counter``
        (what ``core.neighbour_table.log_list_writes`` returned): a reader that keeps them may."""
        ...


class SqlSpaceReader:
    """Reads everything from SQL, every time: for a process that runs one job and ends."""

    def vectors(self, session: Session, space: Space) -> VectorSet:
        return load_space_vectors(session, space)

    def list_ends(self, session: Session, space: Space, k: int, counter: int | None) -> ListEnds:
        return read_list_ends(session, space, k, counter)

    def keep_list_ends(
        self, session: Session, space: Space, ends: ListEnds, counter: int | None
    ) -> None:
        """Nothing to keep."""
