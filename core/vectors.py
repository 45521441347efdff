"""Vectors as one array looked up by product id: an embedding model's stored vectors read from
SQL, and projected in fixed blocks (``core.spaces`` says which projection a space uses)."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core import row_buffers
from core.db import in_chunks, keyset_pages, read_rows
from core.models import Embedding, Product
from core.pending import Ids, Insertion, PendingIds, position_of
from core.projection import Projection

# Rows are projected in blocks of exactly this many (the last one padded), so that a row's
# projection never depends on which other rows it was projected with: a newcomer projected on
# its own gets the very bits a full load gives it, and adds stay equal to a rebuild.
_PROJECT_ROWS = 256
# Binary search in the sorted ids (about 1 us a look-up at a million) beats building a dict
# of every id (about 250 ms at a million) below this share of the ids looked up.
_BISECT_SHARE = 8
# A set grown from a set not yet written is one insertion into the last written array, until
# this many rows wait to be inserted (the rows themselves, 1 MB at 64-d): then it is written.
_PENDING_MAX = 4096


@dataclass(frozen=True)
class VectorSet:
    """Every vector of one space, ordered by product id (the tie-break order).

    A set grown by :meth:`with_rows` writes its array when something first reads
    :attr:`vectors`, and makes the list of its ids only when something reads :attr:`ids`
    whole: a worker's cache grows its set at every add, and where only a set derived from it
    is searched (``core.twins``: the set without twins) that 256 MB copy is never made; an add
    looks ids up (:meth:`position`, :meth:`ids_at`) and never makes a list of a million ids (8
    ms, and 7 more to free the one before). Sets grown one from another stay one insertion
    into the last written array and list, until ``_PENDING_MAX`` rows wait."""

    held_ids: Ids
    stored: np.ndarray | Insertion
    # Set by with_rows: the ids of the set these rows were grown from (what that set held:
    # the list, or its pending ids; the object's identity names those rows without keeping
    # that set's array alive), where in it the new rows went (as for numpy.insert), and the
    # ids and rows added.
    parent_ids: Ids | None = field(default=None, repr=False, compare=False)
    inserted_at: np.ndarray | None = field(default=None, repr=False, compare=False)
    added_ids: list[str] | None = field(default=None, repr=False, compare=False)
    added: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def ids(self) -> list[str]:
        """Every product id, in order, as one list (made now if it is not yet: prefer
        :meth:`ids_at` and :meth:`position` for a few)."""
        held = self.held_ids
        return held.listed if isinstance(held, PendingIds) else held

    def ids_at(self, positions: Sequence[int] | np.ndarray) -> list[str]:
        """The product ids at ``positions``: without making the list of every id for a few
        (an add's), through it for many."""
        wanted = positions.tolist() if isinstance(positions, np.ndarray) else list(positions)
        held = self.ids if len(wanted) * _BISECT_SHARE > self.count else self.held_ids
        return [held[pos] for pos in wanted]

    @property
    def count(self) -> int:
        """How many rows, without making the list of ids."""
        return len(self.held_ids)

    @property
    def vectors(self) -> np.ndarray:
        """The (rows, width) array, written now if it is not yet."""
        stored = self.stored
        if isinstance(stored, Insertion):
            stored = stored.written()
            # Frozen for its users; the insertion (and the array it holds) is let go.
            object.__setattr__(self, "stored", stored)
        return stored

    def hold_as(self, kept: VectorSet, dropped: np.ndarray) -> None:
        """Hold this set's array as ``kept``'s (this set without the rows at ``dropped``,
        ascending) with those rows to be inserted: the same rows, and the array this set held
        let go. A worker's cached set, once its set without twins is made, then holds no array
        of its own beside that one (``core.twins``)."""
        stored = self.stored
        rows = stored.rows_at(dropped) if isinstance(stored, Insertion) else stored[dropped]
        at = dropped - np.arange(len(dropped))
        object.__setattr__(self, "stored", Insertion(kept.vectors, at, rows))

    @property
    def width(self) -> int:
        """The width of each row, without writing the array."""
        stored = self.stored
        return int((stored.base if isinstance(stored, Insertion) else stored).shape[1])

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """Product id to position (built on first use: prefer :meth:`position` for a few)."""
        return {pid: pos for pos, pid in enumerate(self.ids)}

    def position(self, product_id: str) -> int | None:
        """Where ``product_id`` is, or None when it has no vector here."""
        return position_of(self.held_ids, product_id)

    def finder(self, lookups: int) -> Callable[[str], int | None]:
        """How to find a product's position (None: absent) for about ``lookups`` look-ups:
        the dict of every id when it is built already or they are many, else binary search
        (an add's few hundred look-ups in a million ids must not build the dict)."""
        if "index" in self.__dict__ or lookups * _BISECT_SHARE > self.count:
            return self.index.get
        return self.position

    def positions(self, product_ids: Iterable[str]) -> np.ndarray:
        """Positions of ``product_ids``; KeyError for one that has no vector here."""
        wanted = list(product_ids)
        find = self.finder(len(wanted))
        found = []
        for pid in wanted:
            at = find(pid)
            if at is None:
                raise KeyError(pid)
            found.append(at)
        return np.array(found, dtype=np.int64)

    def positions_found(self, product_ids: Iterable[str]) -> np.ndarray:
        """Positions of those of ``product_ids`` that have a vector here, in id order."""
        found = (self.position(pid) for pid in sorted(set(product_ids)))
        return np.array([pos for pos in found if pos is not None], dtype=np.int64)

    def without(self, product_ids: Iterable[str]) -> VectorSet:
        """A new set without the rows of ``product_ids`` (those it has)."""
        drop = self.positions_found(product_ids)
        if not len(drop):
            return self
        keep = np.ones(len(self.ids), dtype=bool)
        keep[drop] = False
        ids = [pid for pid, kept in zip(self.ids, keep.tolist(), strict=True) if kept]
        if isinstance(self.stored, Insertion):
            # Not written first: at most its base is copied (not at all when only inserted
            # rows go, as a set with twins held as the set without them loses its twins).
            return VectorSet(ids, self.stored.without(drop))
        return VectorSet(ids, row_buffers.kept_rows(self.vectors, keep))

    def with_rows(self, ids: Sequence[str], vectors: np.ndarray) -> VectorSet:
        """A new set with rows for ``ids`` (sorted, none already here) added in order; its
        array is written when first read, its list of ids made when first read whole."""
        if not ids:
            return self
        held, stored = self.held_ids, self.stored
        if not self.count:
            stored = np.zeros((0, vectors.shape[1]), vectors.dtype)
        # Past _PENDING_MAX waiting rows or ids, written now: the next insertion or merge
        # starts afresh (this set's held ids still name its rows).
        if isinstance(stored, Insertion) and len(stored.rows) >= _PENDING_MAX:
            stored = self.vectors
        pending = held if isinstance(held, PendingIds) else PendingIds(held, [])
        if len(pending.new) >= _PENDING_MAX:
            pending = PendingIds(pending.listed, [])
        insertion = stored if isinstance(stored, Insertion) else Insertion.into(stored)
        at = np.array([pending.bisect(pid) for pid in ids], dtype=np.int64)
        rows = vectors.astype(insertion.base.dtype)
        grown_ids, grown = pending.then(ids), insertion.then(at, rows)
        return VectorSet(
            grown_ids, grown, parent_ids=held, inserted_at=at, added_ids=list(ids), added=rows
        )


def project(projection: Projection, vectors: np.ndarray) -> np.ndarray:
    """``projection`` applied to each row, the same bits whatever rows come with it."""
    count = len(vectors)
    out = np.empty((count, projection.dims), dtype=np.float32)
    block = np.zeros((_PROJECT_ROWS, vectors.shape[1]), dtype=np.float32)
    for start in range(0, count, _PROJECT_ROWS):
        rows = min(_PROJECT_ROWS, count - start)
        block[:rows] = vectors[start : start + rows]
        block[rows:] = 0
        out[start : start + rows] = projection.apply(block)[:rows]
    return out


def stacked(rows: Sequence[Any]) -> np.ndarray:
    """Stored vectors ``(_, dim, bytes)`` of one model as an (n, dim) float32 array."""
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    matrix = np.frombuffer(b"".join(row[2] for row in rows), dtype="<f4")
    return matrix.reshape(len(rows), rows[0][1]).astype(np.float32, copy=False)


def current_rows(embedding_model_id: str) -> Any:
    """(product id, dim, bytes) of the vectors of ``embedding_model_id`` whose photo is still the
    product's current one."""
    return (
        select(Embedding.product_id, Embedding.dim, Embedding.vector)
        .join(Product, Product.id == Embedding.product_id)
        .where(
            Embedding.model_id == embedding_model_id,
            Embedding.content_hash == Product.content_hash,
        )
    )


def load_embeddings(
    session: Session, embedding_model_id: str, product_ids: Sequence[str] | None = None
) -> VectorSet:
    """Every current vector of ``embedding_model_id`` (of ``product_ids`` only, when given),
    as stored (unprojected), read from SQL."""
    query = current_rows(embedding_model_id)
    if product_ids is None:
        found = read_rows(session, query)
    else:
        found = [
            row
            for ids in in_chunks(sorted(set(product_ids)))
            for row in read_rows(session, query.where(Embedding.product_id.in_(ids)))
        ]
    # Python's string order, not the database collation: the same everywhere.
    ordered = sorted(found, key=lambda row: row[0])
    if not ordered:
        return VectorSet([], np.zeros((0, 0), dtype=np.float32))
    return VectorSet([str(row[0]) for row in ordered], stacked(ordered))


def current_ids(session: Session, embedding_model_id: str) -> list[str]:
    """The ids of the products with a current vector of ``embedding_model_id``, in order."""
    query = current_rows(embedding_model_id).with_only_columns(Embedding.product_id)
    return sorted(str(pid) for (pid,) in session.execute(query))


def embedding_chunks(
    session: Session, embedding_model_id: str, rows: int = 8192
) -> Iterator[np.ndarray]:
    """The current vectors of ``embedding_model_id``, unprojected, ``rows`` at a time (in the
    database's order of ids): a pass over a catalogue that never holds it whole."""
    pages = keyset_pages(
        session, current_rows(embedding_model_id), Embedding.product_id, rows, joined=[Product.id]
    )
    for page in pages:
        yield stacked(page)


def concatenated(pages: Sequence[VectorSet]) -> VectorSet:
    """Pages of one space's rows (each in the database's id order) as one set in Python's id
    order, the tie-break order everywhere (a collation may order ids otherwise)."""
    ids = [pid for page in pages for pid in page.ids]
    full = [page.vectors for page in pages if len(page.ids)]
    if not full:
        return VectorSet([], np.zeros((0, 0), dtype=np.float32))
    vectors = np.concatenate(full) if len(full) > 1 else full[0]
    if any(a >= b for a, b in itertools.pairwise(ids)):
        order = sorted(range(len(ids)), key=ids.__getitem__)
        ids = [ids[n] for n in order]
        vectors = vectors[np.array(order, dtype=np.int64)]
    return VectorSet(ids, vectors)
