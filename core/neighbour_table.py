"""The neighbour table: one product's top-k list per ``(product_id, rank)`` row, the storefront's
product. This module reads lists, writes the difference between stored and new lists, and
guards the table with its one lock; ``core.neighbour_updates`` decides what the lists should be.

Every writer takes :func:`lock_neighbour_table` first, and records the lists it wrote with
:func:`log_list_writes`, so that other processes' copies of the list ends can follow. Functions
here take a ``Session`` and never commit: a list is replaced inside the caller's transaction,
so a reader never sees half of one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import repeat
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.orm import Session

from core.db import by_key, in_chunks, read_rows, upsert
from core.models import ChangeCounter, ListWrite, Neighbour
from core.neighbours import NO_NEIGHBOUR, Neighbours, empty_lists
from core.spaces import Space
from core.vectors import VectorSet

NEIGHBOURS_COUNTER = "neighbours"
_WRITE_ROWS = 50_000
_UNNEST = (
    "unnest(CAST(:product_ids AS varchar[]), CAST(:ranks AS integer[]), "
    "CAST(:neighbour_ids AS varchar[]), CAST(:scores AS double precision[])) "
    "AS row (product_id, rank, neighbour_id, score)"
)
_COPY_ROWS = (
    "COPY neighbours (product_id, rank, neighbour_id, score, space_id) FROM STDIN (FORMAT BINARY)"
)
_COPY_TYPES = ("varchar", "int4", "varchar", "float8", "varchar")
_UPDATE_UNNEST = text(
    "UPDATE neighbours SET neighbour_id = row.neighbour_id, score = row.score, "
    f"space_id = :space_id FROM {_UNNEST} "
    "WHERE neighbours.product_id = row.product_id AND neighbours.rank = row.rank"
)
# Reading more lists than this reads every list at once; up to _FEW_LISTS goes through
# SQLAlchemy (its compiled statements are cached), more through the binary reader.
_ALL_LISTS = 5_000
_FEW_LISTS = 64
# The log of list writes keeps this many counter steps (a step is a statement on PostgreSQL, a
# row on SQLite), and leaves out a transaction that rewrote more lists than this.
_LOG_SPAN = 1_000_000
_LOG_MAX_LISTS = 5_000
_LOG_PRUNE = 1_000  # prune when the counter passes a multiple of this


def read_counter(session: Session, name: str) -> int | None:
    """A change counter's value (None when its row is missing)."""
    return session.scalar(select(ChangeCounter.value).where(ChangeCounter.name == name))


def lock_neighbour_table(session: Session) -> int | None:
    """The one lock of the neighbour table: one writer at a time, until this transaction ends.

    It is the row lock of the ``neighbours`` change counter, which every write to the table
    takes too (through the triggers of migration 0004), so two jobs updating lists on different
    workers serialise instead of overwriting each other's changes. Taking it again in the same
    transaction is free. Returns the counter (None when the row is missing).
    """
    # An UPDATE, not SELECT ... FOR UPDATE: on SQLite it is what starts a write transaction.
    value: int | None = session.scalar(
        update(ChangeCounter)
        .where(ChangeCounter.name == NEIGHBOURS_COUNTER)
        .values(value=ChangeCounter.value)
        .returning(ChangeCounter.value)
    )
    return value


def log_list_writes(session: Session, before: int | None, product_ids: Iterable[str]) -> int | None:
    """Record that this transaction rewrote (or removed) the lists of ``product_ids`` since
    ``before``, what :func:`lock_neighbour_table` returned, and nothing else; returns the counter
    now. Callers record every list they wrote: a list left out would be missed elsewhere.
    """
    after = read_counter(session, NEIGHBOURS_COUNTER)
    if before is None or after is None or after == before:
        return after
    ids = sorted(set(product_ids))
    # A rebuild that rewrote most lists is not worth following: the chain breaks there.
    if len(ids) <= _LOG_MAX_LISTS:
        session.execute(insert(ListWrite).values(counter=after, previous=before, product_ids=ids))
    if after // _LOG_PRUNE != before // _LOG_PRUNE:
        session.execute(delete(ListWrite).where(ListWrite.counter < after - _LOG_SPAN))
    return after


def read_lists(
    session: Session,
    vectors: VectorSet,
    product_ids: Sequence[str],
    space: Space,
    k: int,
    *,
    part: bool = False,
) -> tuple[Neighbours, set[str]]:
    """Stored lists of ``product_ids`` as positions in ``vectors``, and the *untidy* ones: those
    with a row read as absent (another space's, past rank k, or naming a product with no
    vector here). For every other list the table holds exactly what was read. With ``part``
    (a block of a build: many lists, a small part of the table) they are read by id, never
    the whole table."""
    lists = empty_lists(len(product_ids), k)
    untidy: set[str] = set()
    row_of = {pid: row for row, pid in enumerate(product_ids)}
    rows, find = _list_rows(session, vectors, product_ids, part)
    for pid, rank, neighbour, score, space_id in rows:
        row = row_of.get(pid)
        if row is None:
            continue
        pos = find(neighbour)
        if space_id != space.id or pos is None or not 1 <= rank <= k:
            untidy.add(pid)
            continue
        lists.positions[row, rank - 1] = pos
        lists.scores[row, rank - 1] = np.float32(score)
    return lists, untidy


def _list_rows(
    session: Session, vectors: VectorSet, product_ids: Sequence[str], part: bool
) -> tuple[list[Any], Callable[[str], int | None]]:
    """The rows of those lists, read the cheapest way for how many there are, and how to find a
    neighbour's position."""
    columns = (
        Neighbour.product_id,
        Neighbour.rank,
        Neighbour.neighbour_id,
        Neighbour.score,
        Neighbour.space_id,
    )
    if len(product_ids) > _ALL_LISTS and not part:
        # A rebuild: every list in one read, those not asked for skipped by the caller.
        return read_rows(session, select(*columns)), vectors.index.get
    many = len(product_ids) > _FEW_LISTS
    read = functools.partial(read_rows, session) if many else session.execute
    with by_key(session):
        rows = [
            row
            for chunk in in_chunks(list(product_ids))
            for row in read(select(*columns).where(Neighbour.product_id.in_(chunk)))
        ]
    # An add's few lists: binary search; a large share of the ids: one dict of every id.
    return rows, vectors.finder(len(rows))


def write_lists(
    session: Session,
    vectors: VectorSet,
    product_ids: Sequence[str],
    lists: Neighbours,
    space: Space,
    stored: Neighbours,
    untidy: set[str],
) -> None:
    """Make the stored lists of ``product_ids`` equal ``lists``, in the caller's transaction.

    ``stored`` and ``untidy`` are what :func:`read_lists` gave for them. An untidy list is
    deleted and written whole; for any other the table holds exactly ``stored``, so only the
    entries that differ are written and only ranks past a shorter list's end deleted: a list
    that a newcomer enters at rank r keeps its rows above r untouched.
    """
    stored = _clear_untidy(session, product_ids, stored, untidy)
    _write_entries(session, vectors, product_ids, lists, stored, space)
    _cut_past_end(session, product_ids, lists, stored)


def _clear_untidy(
    session: Session, product_ids: Sequence[str], stored: Neighbours, untidy: set[str]
) -> Neighbours:
    """Delete the untidy lists; ``stored`` as the table now holds it."""
    redo = np.array([pid in untidy for pid in product_ids], dtype=bool)
    if not redo.any():
        return stored
    delete_lists(session, [pid for pid in product_ids if pid in untidy])
    return Neighbours(
        np.where(redo[:, None], NO_NEIGHBOUR, stored.positions),
        np.where(redo[:, None], np.float32(-np.inf), stored.scores),
    )


def _write_entries(
    session: Session,
    vectors: VectorSet,
    product_ids: Sequence[str],
    lists: Neighbours,
    stored: Neighbours,
    space: Space,
) -> None:
    """Write the entries of ``lists`` that differ from ``stored``. On PostgreSQL a row known to
    be there is updated in statements over arrays and a new one goes in through COPY;
    elsewhere, upserts."""
    held = lists.positions != NO_NEIGHBOUR
    there = stored.positions != NO_NEIGHBOUR
    differs = held & ((lists.positions != stored.positions) | (lists.scores != stored.scores))
    writes: tuple[tuple[_RowWriter, np.ndarray], ...] = (
        ((_update_rows, differs & there), (_copy_rows, differs & ~there))
        if session.get_bind().dialect.name == "postgresql"
        else ((_upsert_rows, differs),)
    )
    for write, entries in writes:
        rows, ranks = np.nonzero(entries)
        if len(rows):
            columns = _Columns(
                [product_ids[row] for row in rows.tolist()],
                (ranks + 1).tolist(),
                vectors.ids_at(lists.positions[entries]),
                lists.scores[entries].astype(np.float64).tolist(),
            )
            write(session, columns, space.id)


class _Columns(NamedTuple):
    """The entries to write, as columns."""

    product_ids: list[str]
    ranks: list[int]
    neighbour_ids: list[str]
    scores: list[float]

    def parts(self) -> Iterator[dict[str, list[Any]]]:
        """The columns in parts of at most ``_WRITE_ROWS`` rows, by name."""
        for start in range(0, len(self.product_ids), _WRITE_ROWS):
            yield {
                name: column[start : start + _WRITE_ROWS] for name, column in self._asdict().items()
            }


_RowWriter = Callable[[Session, _Columns, str], None]


def _update_rows(session: Session, columns: _Columns, space_id: str) -> None:
    for part in columns.parts():
        session.execute(_UPDATE_UNNEST, {**part, "space_id": space_id})


def _copy_rows(session: Session, columns: _Columns, space_id: str) -> None:
    """New rows through COPY, binary: a build block's 164k rows in 0.6 of the time an INSERT
    over arrays took, with a quarter of the client's CPU (bench/perf/list_writes.py;
    BENCHMARKS.md, a ninth day). COPY fires the table's statement trigger as an INSERT does."""
    driver: Any = session.connection().connection.driver_connection  # psycopg's
    with driver.cursor() as cursor, cursor.copy(_COPY_ROWS) as copy:
        copy.set_types(_COPY_TYPES)
        for row in zip(*columns, repeat(space_id)):
            copy.write_row(row)


def _upsert_rows(session: Session, columns: _Columns, space_id: str) -> None:
    for part in columns.parts():
        upsert(
            session,
            Neighbour.__table__,
            [
                {"product_id": p, "rank": r, "neighbour_id": n, "score": s, "space_id": space_id}
                for p, r, n, s in zip(*part.values(), strict=True)
            ],
            keys=["product_id", "rank"],
        )


def _cut_past_end(
    session: Session, product_ids: Sequence[str], lists: Neighbours, stored: Neighbours
) -> None:
    """Delete stored ranks past a list's new end (it got shorter, or had a hole where a product
    was deleted)."""
    there = stored.positions != NO_NEIGHBOUR
    lengths = (lists.positions != NO_NEIGHBOUR).sum(axis=1)
    past_end = (there & (np.arange(there.shape[1]) >= lengths[:, None])).any(axis=1)
    for length in np.unique(lengths[past_end]).tolist():
        cut = [
            pid
            for pid, n, cut_here in zip(product_ids, lengths, past_end, strict=True)
            if cut_here and n == length
        ]
        for chunk in in_chunks(cut):
            session.execute(
                delete(Neighbour).where(Neighbour.product_id.in_(chunk), Neighbour.rank > length)
            )


def delete_lists(session: Session, product_ids: Iterable[str]) -> None:
    """Remove the whole lists of ``product_ids``."""
    for chunk in in_chunks(sorted(set(product_ids))):
        session.execute(delete(Neighbour).where(Neighbour.product_id.in_(chunk)))


def lists_mentioning(session: Session, product_ids: Iterable[str]) -> set[str]:
    """Products whose stored list holds any of ``product_ids``."""
    found: set[str] = set()
    for chunk in in_chunks(sorted(set(product_ids))):
        found.update(
            session.scalars(select(Neighbour.product_id).where(Neighbour.neighbour_id.in_(chunk)))
        )
    return found


def listed_products(session: Session) -> set[str]:
    """Every product that has a stored list, in any space."""
    return set(session.scalars(select(Neighbour.product_id).where(Neighbour.rank == 1)))


def analyse_lists(session: Session) -> None:
    """Fresh planner statistics of the neighbour table after a build rewrote it (PostgreSQL):
    a table filled since it was last analysed (autovacuum may be off, or not have come round
    yet) makes the planner expect thousands of rows per product, and each storefront read
    then ran as a parallel scan, 5 ms instead of 0.1 (BENCHMARKS.md, 1M products). It samples
    30,000 rows, about a second at ten million, and blocks neither reads nor writes."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("ANALYZE neighbours"))
