"""What a worker process keeps of a space between tasks: its vectors, and where each list ends.

Reading the vectors of a 44k catalogue from SQL takes seconds, and an add changes a handful of
them. A :class:`SpaceCache` keeps each space's vectors (projected) and the last entry of each of
its stored lists, and checks both against the database on every use, so that a stale copy is
detected and read again, never used:

* Triggers count, in the same transaction, every update or delete of an embedding, every change
  of a product's photo, and every write to the neighbour table (:class:`ChangeCounter`). A
  counter that moved since a copy was taken means reading that copy again.
* An inserted embedding moves no counter (a change log per insert would grow with every row
  embedded). A use reads the ids of the rows created since a little before its last check,
  fetches the vectors it does not have, and then checks that it holds as many rows as the
  table does (``VectorCount``, kept by triggers: one row read): a row it missed (committed
  long after its ``created_at``) means reading everything again.
* What a transaction saw becomes the process's copy only when that transaction commits; a
  rollback drops it, so nothing a rolled-back transaction wrote is ever kept.
* The list ends are read after taking the ``neighbours`` counter's row lock, which every writer of
  the lists takes too (through the triggers), so they cannot change until the transaction ends.

Functions here take a ``Session`` and never commit, like the rest of ``core``.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session, SessionTransaction

from core import projected
from core.db import in_chunks, read_rows
from core.list_ends import ListEnds, follow_list_writes, read_list_ends
from core.models import ChangeCounter, Embedding, Product, VectorChange, VectorCount
from core.neighbour_table import NEIGHBOURS_COUNTER, read_counter
from core.projection import Projection
from core.spaces import Space, projection_of
from core.vectors import VectorSet

VECTORS_COUNTER = "vectors"
# How far before the last check to look for new rows. A row is committed moments after it is
# created (by a worker's clock, close to this one's): one created earlier than this and committed
# since is rare, and only costs a full read (the row count finds it). Every use reads the rows
# of this window again, so it is kept short: at five minutes, adds arriving back to back at a
# million products spent 50-60 ms of each add on the window's last two thousand rows.
SETTLE = timedelta(minutes=1)
# Up to this many new vectors are fetched through SQLAlchemy (an add), more in binary.
_FEW_ROWS = 64
_FOLLOW_MAX = 10_000  # products changed since beyond which everything is read again


@dataclass(frozen=True)
class _Vectors:
    counter: int | None
    vectors: VectorSet
    outdated: frozenset[str]  # rows of products whose photo changed since: counted, not used
    rows: int  # current + outdated: every row of the embedding model
    read_at: datetime  # this process's clock, just before the rows were read
    projection: Projection | None


def _rows(embedding_model_id: str) -> Any:
    """(product id, whether the vector is of the product's current photo) of every row."""
    current = (Embedding.content_hash == Product.content_hash).label("current")
    return (
        select(Embedding.product_id, current)
        .join(Product, Product.id == Embedding.product_id)
        .where(Embedding.model_id == embedding_model_id)
    )


def _read_vectors(session: Session, space: Space) -> _Vectors:
    """Everything, from SQL: what a first use, or one that found a change, reads (the
    projected rows where the space has a projection, ``core.projected``)."""
    read_at = datetime.now(UTC)
    # Before the rows: a change after it shows at the next use.
    counter = read_counter(session, VECTORS_COUNTER)
    projection = projection_of(session, space)
    read = projected.read_space(session, space.embedding_model_id, space.projection_tag, projection)
    return _Vectors(counter, read.vectors, read.outdated, read.rows, read_at, projection)


def _catch_up(session: Session, space: Space, known: _Vectors) -> _Vectors | None:
    """``known`` with the rows inserted since, and the rows of products whose vector was
    updated or deleted or whose photo changed since read again (``VectorChange``), or None
    when that cannot be followed (a truncate, too many changes, a gap in the log)."""
    if known.counter is None:
        return None
    read_at = datetime.now(UTC)
    counter, rows = _counter_and_count(session, space)
    # Nothing inserted, updated or deleted since (the usual case for a build's blocks): one
    # statement, rather than the ids of every row created in the window (all of them, after
    # a bulk load).
    if (counter, rows) == (known.counter, known.rows):
        return replace(known, read_at=read_at)
    if counter is None:
        return None
    changed: set[str] = set()
    base = known
    if counter != known.counter:
        followed, changed = _without_changed(session, known, counter)
        if followed is None:
            return None
        base = followed
    # (id, current) of the rows created since that it does not hold, and of the changed
    # products: joined to their products for these only (joined for every row of the window,
    # its read took 22 ms for 5,000 rows instead of 3 ms; adds back to back fill the window
    # with rows the cache holds already).
    query = _rows(space.embedding_model_id)
    new = [
        row
        for ids in in_chunks(sorted(_unseen_ids(session, space, base) | changed))
        for row in session.execute(query.where(Embedding.product_id.in_(ids)))
    ]
    wanted = sorted(row[0] for row in new if row[1])
    fetched = _fetch_vectors(session, space, known.projection, wanted)
    after, rows = _counter_and_count(session, space)
    if after != counter or rows != base.rows + len(new) or len(fetched.ids) != len(wanted):
        return None
    width = known.vectors.width
    if len(fetched.ids) and base.vectors.count and fetched.vectors.shape[1] != width:
        return None  # another raw dimension: the model changed under the same id
    return _Vectors(
        counter,
        base.vectors.with_rows(fetched.ids, fetched.vectors),
        base.outdated | {row[0] for row in new if not row[1]},
        rows,
        read_at,
        known.projection,
    )


def _without_changed(
    session: Session, known: _Vectors, counter: int
) -> tuple[_Vectors | None, set[str]]:
    """``known`` at ``counter`` less the rows of the products the counter moved for since, and
    those products; None when the log does not hold every move, or holds a truncate."""
    logged = list(
        session.scalars(
            select(VectorChange.product_id).where(
                VectorChange.counter > known.counter, VectorChange.counter <= counter
            )
        )
    )
    if len(logged) != counter - (known.counter or 0) or None in logged:
        return None, set()  # a gap in the log (pruned), or a truncate
    changed = {pid for pid in logged if pid is not None}
    if len(changed) > _FOLLOW_MAX:
        return None, set()
    held = [pid for pid in changed if known.vectors.position(pid) is not None]
    outdated = changed & known.outdated
    base = replace(
        known,
        counter=counter,
        vectors=known.vectors.without(held),
        outdated=known.outdated - changed,
        rows=known.rows - len(held) - len(outdated),
    )
    return base, changed


def _unseen_ids(session: Session, space: Space, known: _Vectors) -> set[str]:
    """The products with a row created since a little before ``known`` was read that it
    neither holds nor counts as outdated."""
    recent = session.scalars(
        select(Embedding.product_id).where(
            Embedding.model_id == space.embedding_model_id,
            Embedding.created_at >= known.read_at - SETTLE,
        )
    )
    return {
        pid for pid in recent if pid not in known.outdated and known.vectors.position(pid) is None
    }


def _fetch_vectors(
    session: Session, space: Space, projection: Projection | None, wanted: list[str]
) -> VectorSet:
    """The vectors of ``wanted`` (current rows), in id order."""
    # A few (an add) through SQLAlchemy, whose statements are compiled once; many in binary.
    read = functools.partial(read_rows, session) if len(wanted) > _FEW_ROWS else session.execute
    fetched: list[Any] = []
    tag = space.projection_tag if projection is not None else None
    query = projected.space_rows(space.embedding_model_id, tag)
    for ids in in_chunks(wanted):
        fetched.extend(row for row in read(query.where(Embedding.product_id.in_(ids))) if row[1])
    fetched.sort(key=lambda row: row[0])
    return projected.assemble(fetched, projection)


def _counter_and_count(session: Session, space: Space) -> tuple[int | None, int]:
    """In one statement, last: the vectors counter (nothing was updated or deleted since it) and
    the row count (no insert was missed), as the triggers keep it (``VectorCount``: one row
    read, where counting the rows took 40-100 ms at a million)."""
    counter, rows = session.execute(
        select(
            select(ChangeCounter.value)
            .where(ChangeCounter.name == VECTORS_COUNTER)
            .scalar_subquery(),
            select(VectorCount.vectors)
            .where(VectorCount.model_id == space.embedding_model_id)
            .scalar_subquery(),
        )
    ).one()
    return counter, int(rows or 0)


class SpaceCache:
    """A process's copy of the vectors and list ends of its most recently used spaces.

    Hold one per worker process, beside the model (it is a ``core.space_reader.SpaceReader``).
    Every use is checked against the database (see the module's description), so a copy that is
    cold, stale or dropped only costs time, never correctness.
    """

    def __init__(self, spaces: int = 2) -> None:
        self._limit = 2 * spaces
        self._shared: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()
        self._key = f"lookalike.space_cache.{id(self)}"

    def vectors(self, session: Session, space: Space) -> VectorSet:
        """Every current vector of ``space``, as ``core.spaces.load_space_vectors`` reads it."""
        key = (VECTORS_COUNTER, space.grouped(()).id)  # the same vectors in every grouping
        known = self._known(session, key)
        state = _catch_up(session, space, known) if known is not None else None
        if state is None:
            state = _read_vectors(session, space)
        self._staged(session)[key] = state
        return state.vectors

    def list_ends(self, session: Session, space: Space, k: int, counter: int | None) -> ListEnds:
        """The list ends of ``space`` at ``counter``, what
        ``core.neighbour_table.lock_neighbour_table`` returned earlier in this transaction (the
        lock keeps them so until it ends)."""
        key = (NEIGHBOURS_COUNTER, space.id)
        known: ListEnds | None = self._known(session, key)
        if known is not None and (counter is None or known.k != k or counter != known.counter):
            known = follow_list_writes(session, space, known, counter) if known.k == k else None
        if known is None:
            known = read_list_ends(session, space, k, counter)
        self._staged(session)[key] = known
        return known

    def keep_list_ends(
        self, session: Session, space: Space, ends: ListEnds, counter: int | None
    ) -> None:
        """Keep ``ends``, the lists of ``space`` after this transaction's writes, at
        ``counter``, what ``core.neighbour_table.log_list_writes`` returned (the lock taken
        before the writes is what makes that counter belong to exactly these lists)."""
        self._staged(session)[(NEIGHBOURS_COUNTER, space.id)] = replace(ends, counter=counter)

    # --- what this transaction saw, kept when it commits --------------------------------

    def _known(self, session: Session, key: tuple[str, str]) -> Any:
        staged = session.info.get(self._key)
        if staged and key in staged:
            return staged[key]
        with self._lock:
            return self._shared.get(key)

    def _staged(self, session: Session) -> dict[tuple[str, str], Any]:
        staged: dict[tuple[str, str], Any] | None = session.info.get(self._key)
        if staged is None:
            staged = session.info[self._key] = {}
            event.listen(session, "after_commit", self._keep)
            event.listen(session, "after_transaction_end", self._drop)
        return staged

    def _keep(self, session: Session) -> None:
        staged = session.info.get(self._key) or {}
        with self._lock:
            for key, state in staged.items():
                self._shared[key] = state
                self._shared.move_to_end(key)
            while len(self._shared) > self._limit:
                self._shared.popitem(last=False)
        staged.clear()

    def _drop(self, session: Session, transaction: SessionTransaction) -> None:
        # A commit has already kept what it saw; any other end (a rollback, a close, a
        # savepoint going either way) drops it.
        if transaction.parent is None or transaction.nested:
            session.info.get(self._key, {}).clear()
