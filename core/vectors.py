"""Vectors as one array looked up by product id: an embedding model's stored vectors read from
SQL, and projected in fixed blocks (``core.spaces`` says which projection a space uses)."""

from __future__ import annotations

import bisect
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
from core.projection import Projection

# Rows are projected in blocks of exactly this many (the last one padded), so that a row's
# projection never depends on which other rows it was projected with: a newcomer projected on
# its own gets the very bits a full load gives it, and adds stay equal to a rebuild.
_PROJECT_ROWS = 256
# Binary search in the sorted ids (about 1 us a look-up at a million) beats building a dict
# of every id (about 250 ms at a million) below this share of the ids looked up.
_BISECT_SHARE = 8


@dataclass(frozen=True)
class VectorSet:
    """Every vector of one space, ordered by product id (the tie-break order)."""

    ids: list[str]
    vectors: np.ndarray
    # Set by with_rows: the ids of the set these rows were grown from (the list itself, whose
    # identity names those rows without keeping that set's array alive), and where in it the
    # new rows went (as for numpy.insert).
    parent_ids: list[str] | None = field(default=None, repr=False, compare=False)
    inserted_at: np.ndarray | None = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """Product id to position (built on first use: prefer :meth:`position` for a few)."""
        return {pid: pos for pos, pid in enumerate(self.ids)}

    def position(self, product_id: str) -> int | None:
        """Where ``product_id`` is, or None when it has no vector here."""
        return position_in(self.ids, product_id)

    def grown_rows(self) -> np.ndarray | None:
        """Where the rows this set was grown by (``with_rows``) are in it; None: not grown."""
        at = self.inserted_at
        return None if at is None else at + np.arange(len(at))  # as numpy.insert placed them

    def finder(self, lookups: int) -> Callable[[str], int | None]:
        """How to find a product's position (None: absent) for about ``lookups`` look-ups:
        the dict of every id when it is built already or they are many, else binary search
        (an add's few hundred look-ups in a million ids must not build the dict)."""
        if "index" in self.__dict__ or lookups * _BISECT_SHARE > len(self.ids):
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
        return VectorSet(ids, row_buffers.kept_rows(self.vectors, keep))

    def with_rows(self, ids: Sequence[str], vectors: np.ndarray) -> VectorSet:
        """A new set with rows for ``ids`` (sorted, none already here) added in order."""
        if not ids:
            return self
        merged, at = ids_inserted(self.ids, ids)
        base = self.vectors if len(self.ids) else np.zeros((0, vectors.shape[1]), vectors.dtype)
        return VectorSet(
            merged,
            row_buffers.inserted(base, at, vectors.astype(base.dtype)),
            parent_ids=self.ids,
            inserted_at=at,
        )


def position_in(ids: Sequence[str], product_id: str) -> int | None:
    """Where ``product_id`` is in the sorted ``ids``, or None when it is not there."""
    at = bisect.bisect_left(ids, product_id)
    return at if at < len(ids) and ids[at] == product_id else None


def ids_inserted(ids: list[str], new: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The sorted ``ids`` with ``new`` (sorted, none already there) inserted, and where each
    went in ``ids`` (as for numpy.insert)."""
    at = [bisect.bisect_left(ids, pid) for pid in new]
    merged = list(ids)
    # Right to left, so that earlier positions stay valid; equal positions keep id order.
    for pos, pid in zip(reversed(at), reversed(new), strict=True):
        merged.insert(pos, pid)
    return merged, np.array(at, dtype=np.int64)


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
