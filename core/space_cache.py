"""What a worker process keeps of a space between tasks: its vectors, and where each list ends.

Reading the vectors of a 44k catalogue from SQL takes seconds, and an add changes a handful of
them. A :class:`SpaceCache` keeps each space's vectors (projected) and the last entry of each of
its stored lists, and checks both against the database on every use, so that a stale copy is
detected and read again, never used:

* Triggers count, in the same transaction, every update or delete of an embedding, every change
  of a product's photo, and every write to the neighbour table (:class:`ChangeCounter`). A
  counter that moved since a copy was taken means reading that copy again.
* An inserted embedding moves no counter (workers embedding at once would queue on that row).
  A use reads the ids of the rows created since a little before its last check, fetches the
  vectors it does not have, and then checks that it holds as many rows as the table does: a row
  it missed (committed long after its ``created_at``) means reading everything again.
* What a transaction saw becomes the process's copy only when that transaction commits; a
  rollback drops it, so nothing a rolled-back transaction wrote is ever kept.
* The list ends are read after taking the ``neighbours`` counter's row lock, which every writer of
  the lists takes too (through the triggers), so they cannot change until the transaction ends.

Functions here take a ``Session`` and never commit, like the rest of ``core``.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import delete, event, func, insert, select, update
from sqlalchemy.orm import Session, SessionTransaction

from core.models import ChangeCounter, Embedding, ListWrite, Neighbour, Product
from core.projection import Projection
from core.vectors import (
    VectorSet,
    get_projection,
    load_vectors,
    project,
    read_rows,
    split_space,
    stacked,
)

VECTORS = "vectors"
NEIGHBOURS = "neighbours"
# How far before the last check to look for new rows. A row is committed moments after it is
# created (by a worker's clock, close to this one's): one created earlier than this and committed
# since is rare, and only costs a full read (the row count finds it).
SETTLE = timedelta(minutes=5)
_IN_CHUNK = 500
# The log of list writes keeps this many counter steps (a step is a statement on PostgreSQL, a
# row on SQLite), and leaves out a transaction that rewrote more lists than this.
_LOG_SPAN = 1_000_000
_LOG_MAX_LISTS = 5_000
_LOG_PRUNE = 1_000  # prune when the counter passes a multiple of this


@dataclass(frozen=True)
class ListEnds:
    """The products that have a list in a space, each with its list's last score: what a newcomer
    must come close to to enter it (-inf when the list is shorter than k: anyone enters).

    Kept as arrays along the rows of ``vectors`` (so that an add does not look up every product),
    plus ``elsewhere``, the lists of products with no row there. :meth:`along` moves them onto
    another set of rows: cheaply onto one grown from theirs, by a look-up per product otherwise.
    """

    k: int
    vectors: VectorSet | None
    listed: np.ndarray  # bool per row of ``vectors``
    floors: np.ndarray  # float32 per row: -inf when the list is short or there is none
    elsewhere: Mapping[str, float]
    counter: int | None = None

    @classmethod
    def of(cls, k: int, floors: Mapping[str, float], counter: int | None = None) -> ListEnds:
        empty = np.zeros(0, dtype=bool)
        return cls(k, None, empty, empty.astype(np.float32), floors, counter)

    def along(self, vectors: VectorSet) -> ListEnds:
        """The same ends along the rows of ``vectors``."""
        if vectors is self.vectors:
            return self
        at = vectors.inserted_at
        if self.vectors is not None and at is not None and vectors.grown_from() is self.vectors:
            listed = np.insert(self.listed, at, False)
            floors = np.insert(self.floors, at, np.float32(-np.inf))
            return replace(self, vectors=vectors, listed=listed, floors=floors, elsewhere={})._with(
                self.elsewhere, ()
            )
        every = self.as_dict()
        get = every.get
        scores = np.fromiter(map(get, vectors.ids, itertools.repeat(np.nan)), np.float64)
        listed = ~np.isnan(scores)
        scores[~listed] = -np.inf
        elsewhere: dict[str, float] = {}
        if int(listed.sum()) != len(every):
            elsewhere = {pid: every[pid] for pid in every.keys() - set(vectors.ids)}
        return replace(
            self,
            vectors=vectors,
            listed=listed,
            floors=scores.astype(np.float32),
            elsewhere=elsewhere,
        )

    def as_dict(self) -> dict[str, float]:
        every = dict(self.elsewhere)
        if self.vectors is not None:
            rows = np.flatnonzero(self.listed)
            ids = self.vectors.ids
            every.update(zip([ids[row] for row in rows], self.floors[rows].tolist(), strict=True))
        return every

    def written(self, floors: Mapping[str, float], removed: Iterable[str]) -> ListEnds:
        """After lists were rewritten (``floors``, their new last scores) or removed."""
        return replace(self, listed=self.listed.copy(), floors=self.floors.copy())._with(
            floors, removed
        )

    def _with(self, floors: Mapping[str, float], removed: Iterable[str]) -> ListEnds:
        # Only on arrays this object owns (fresh copies).
        elsewhere = dict(self.elsewhere)
        position = self.vectors.position if self.vectors is not None else lambda _: None
        for pid in removed:
            at = position(pid)
            if at is None:
                elsewhere.pop(pid, None)
            else:
                self.listed[at] = False
                self.floors[at] = -np.inf
        for pid, floor in floors.items():
            at = position(pid)
            if at is None:
                elsewhere[pid] = floor
            else:
                self.listed[at] = True
                self.floors[at] = floor
        return replace(self, elsewhere=elsewhere)


def read_list_ends(session: Session, model_id: str, k: int, counter: int | None = None) -> ListEnds:
    """The list ends of space ``model_id`` as stored."""
    query = select(Neighbour.product_id, Neighbour.rank, Neighbour.score).where(
        Neighbour.model_id == model_id, Neighbour.rank.in_(sorted({1, k}))
    )
    return ListEnds.of(k, _floors(read_rows(session, query), k), counter)


def _floors(rows: Iterable[Any], k: int) -> dict[str, float]:
    floors: dict[str, float] = {}
    for pid, rank, score in rows:
        if rank == k:
            floors[pid] = float(np.float32(score))
        else:
            floors.setdefault(pid, -np.inf)
    return floors


def lock_lists(session: Session) -> int | None:
    """Take the row lock every writer of the neighbour table takes (through the triggers), until
    this transaction ends, and return the ``neighbours`` counter (None when the row is missing).
    """
    # An UPDATE, not SELECT ... FOR UPDATE: on SQLite it is what starts a write transaction.
    value: int | None = session.scalar(
        update(ChangeCounter)
        .where(ChangeCounter.name == NEIGHBOURS)
        .values(value=ChangeCounter.value)
        .returning(ChangeCounter.value)
    )
    return value


def log_list_writes(session: Session, before: int | None, product_ids: Iterable[str]) -> int | None:
    """Record that this transaction rewrote (or removed) the lists of ``product_ids`` since
    ``before``, what :func:`lock_lists` returned, and nothing else; returns the counter now.

    Callers record every list they wrote: a list left out would be missed by other processes.
    """
    after = _counter(session, NEIGHBOURS)
    if before is None or after is None or after == before:
        return after
    ids = sorted(set(product_ids))
    # A rebuild that rewrote most lists is not worth following: the chain breaks there.
    if len(ids) <= _LOG_MAX_LISTS:
        session.execute(insert(ListWrite).values(counter=after, previous=before, product_ids=ids))
    if after // _LOG_PRUNE != before // _LOG_PRUNE:
        session.execute(delete(ListWrite).where(ListWrite.counter < after - _LOG_SPAN))
    return after


def _follow(
    session: Session, model_id: str, known: ListEnds, counter: int | None
) -> ListEnds | None:
    """``known`` brought to ``counter`` through the log of list writes, or None on a gap."""
    if known.counter is None or counter is None or counter < known.counter:
        return None
    writes = session.execute(
        select(ListWrite.counter, ListWrite.previous, ListWrite.product_ids)
        .where(ListWrite.counter > known.counter, ListWrite.counter <= counter)
        .order_by(ListWrite.counter)
    ).all()
    at = known.counter
    for after, previous, _ in writes:
        if previous != at:
            return None
        at = after
    if at != counter:
        return None
    ids = sorted({pid for write in writes for pid in write[2]})
    floors: dict[str, float] = {}
    for start in range(0, len(ids), _IN_CHUNK):
        query = select(Neighbour.product_id, Neighbour.rank, Neighbour.score).where(
            Neighbour.model_id == model_id,
            Neighbour.rank.in_(sorted({1, known.k})),
            Neighbour.product_id.in_(ids[start : start + _IN_CHUNK]),
        )
        floors.update(_floors(session.execute(query), known.k))
    return replace(
        known.written(floors, [pid for pid in ids if pid not in floors]), counter=counter
    )


def _counter(session: Session, name: str) -> int | None:
    return session.scalar(select(ChangeCounter.value).where(ChangeCounter.name == name))


@dataclass(frozen=True)
class _Vectors:
    counter: int | None
    vectors: VectorSet
    outdated: frozenset[str]  # rows of products whose photo changed since: counted, not used
    rows: int  # current + outdated: every row of the embedding model
    read_at: datetime  # this process's clock, just before the rows were read
    projection: Projection | None


def _rows(embedding_model: str) -> Any:
    current = (Embedding.content_hash == Product.content_hash).label("current")
    return (
        select(Embedding.product_id, current)
        .join(Product, Product.id == Embedding.product_id)
        .where(Embedding.model_id == embedding_model)
    )


def _read_vectors(session: Session, model_id: str) -> _Vectors:
    embedding_model, tag = split_space(model_id)
    read_at = datetime.now(UTC)
    counter = _counter(session, VECTORS)  # before the rows: a change after it shows next time
    rows = read_rows(session, _rows(embedding_model).add_columns(Embedding.dim, Embedding.vector))
    current = sorted(((row[0], row[2], row[3]) for row in rows if row[1]), key=lambda row: row[0])
    projection = get_projection(session, tag) if tag else None
    vectors = stacked(current)
    if projection is not None and len(current):
        vectors = project(projection, vectors)
    return _Vectors(
        counter,
        VectorSet([row[0] for row in current], vectors),
        frozenset(row[0] for row in rows if not row[1]),
        len(rows),
        read_at,
        projection,
    )


def _catch_up(session: Session, model_id: str, known: _Vectors) -> _Vectors | None:
    """``known`` with the rows inserted since, or None when anything else changed."""
    if known.counter is None:
        return None
    embedding_model, _ = split_space(model_id)
    read_at = datetime.now(UTC)
    recent = session.execute(
        _rows(embedding_model).where(Embedding.created_at >= known.read_at - SETTLE)
    ).all()
    new = [
        row
        for row in recent
        if row[0] not in known.outdated and known.vectors.position(row[0]) is None
    ]
    wanted = sorted(row[0] for row in new if row[1])
    fetched: list[Any] = []
    # A few (an add) through SQLAlchemy, whose statements are compiled once; many in binary.
    read = functools.partial(read_rows, session) if len(wanted) > 64 else session.execute
    for start in range(0, len(wanted), _IN_CHUNK):
        fetched.extend(
            read(
                select(Embedding.product_id, Embedding.dim, Embedding.vector).where(
                    Embedding.model_id == embedding_model,
                    Embedding.product_id.in_(wanted[start : start + _IN_CHUNK]),
                ),
            )
        )
    # Last, in one statement: nothing was updated or deleted since ``known`` was read (the
    # counter), and no insert was missed (the count).
    counter, rows = session.execute(
        select(
            select(ChangeCounter.value).where(ChangeCounter.name == VECTORS).scalar_subquery(),
            select(func.count())
            .select_from(Embedding)
            .where(Embedding.model_id == embedding_model)
            .scalar_subquery(),
        )
    ).one()
    if counter != known.counter or rows != known.rows + len(new) or len(fetched) != len(wanted):
        return None
    fetched.sort(key=lambda row: row[0])
    vectors = stacked(fetched)
    if len(fetched) and len(known.vectors.ids) and vectors.shape[1] != _raw_dim(known):
        return None
    if known.projection is not None and len(fetched):
        vectors = project(known.projection, vectors)
    return _Vectors(
        counter,
        known.vectors.with_rows([row[0] for row in fetched], vectors),
        known.outdated | {row[0] for row in new if not row[1]},
        rows,
        read_at,
        known.projection,
    )


def _raw_dim(known: _Vectors) -> int:
    if known.projection is not None:
        return int(known.projection.components.shape[1])
    return int(known.vectors.vectors.shape[1])


class SpaceCache:
    """A process's copy of the vectors and list ends of its most recently used spaces.

    Hold one per worker process, beside the model; pass it to the functions that take one.
    Every use is checked against the database (see the module's description), so a copy that is
    cold, stale or dropped only costs time, never correctness.
    """

    def __init__(self, spaces: int = 2) -> None:
        self._limit = 2 * spaces
        self._shared: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()
        self._key = f"lookalike.space_cache.{id(self)}"

    def vectors(self, session: Session, model_id: str) -> VectorSet:
        """Every current vector of space ``model_id``, as :func:`load_vectors` would read it."""
        key = (VECTORS, model_id)
        known = self._known(session, key)
        state = _catch_up(session, model_id, known) if known is not None else None
        if state is None:
            state = _read_vectors(session, model_id)
        self._staged(session)[key] = state
        return state.vectors

    def list_ends(self, session: Session, model_id: str, k: int, counter: int | None) -> ListEnds:
        """The list ends of space ``model_id`` at ``counter``, what :func:`lock_lists` returned
        earlier in this transaction (the lock keeps them so until it ends)."""
        key = (NEIGHBOURS, model_id)
        known: ListEnds | None = self._known(session, key)
        if known is not None and (counter is None or known.k != k or counter != known.counter):
            known = _follow(session, model_id, known, counter) if known.k == k else None
        if known is None:
            known = read_list_ends(session, model_id, k, counter)
        self._staged(session)[key] = known
        return known

    def keep_list_ends(
        self, session: Session, model_id: str, ends: ListEnds, counter: int | None
    ) -> None:
        """Keep ``ends``, the lists of ``model_id`` after this transaction's writes, at
        ``counter``, what :func:`log_list_writes` returned (the lock taken before the writes is
        what makes that counter belong to exactly these lists)."""
        self._staged(session)[(NEIGHBOURS, model_id)] = replace(ends, counter=counter)

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


def space_vectors(session: Session, model_id: str, cache: SpaceCache | None) -> VectorSet:
    """The vectors of space ``model_id``: from the worker's ``cache`` when it has one, else
    read from SQL."""
    return load_vectors(session, model_id) if cache is None else cache.vectors(session, model_id)
