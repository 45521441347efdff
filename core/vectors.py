"""A space's vectors as one array: read from SQL, projected, and looked up by product id.

A space is what neighbour lists are built in: an embedding model's own vectors, or those vectors
through a stored projection (``<embedding model id>|<projection tag>``).
"""

from __future__ import annotations

import bisect
import functools
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import NotIndexed
from core.models import Embedding, Product, ProjectionRecord
from core.projection import Projection

SPACE_SEPARATOR = "|"
# Rows are projected in blocks of exactly this many (the last one padded), so that a row's
# projection never depends on which other rows it was projected with: a newcomer projected on
# its own gets the very bits a full load gives it, and adds stay equal to a rebuild.
_PROJECT_ROWS = 256
# Below this many look-ups, binary search in the sorted ids beats building a dict of them.
_BISECT_MAX = 256


@dataclass(frozen=True)
class VectorSet:
    """Every vector of one space, ordered by product id (the tie-break order)."""

    ids: list[str]
    vectors: np.ndarray
    # Set by with_rows: the set these rows were grown from (weakly: no chain of old sets is
    # kept alive), and where in it the new rows went (as for numpy.insert).
    grown_from: Callable[[], VectorSet | None] = field(
        default=lambda: None, repr=False, compare=False
    )
    inserted_at: np.ndarray | None = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """Product id to position (built on first use: prefer :meth:`position` for a few)."""
        return {pid: pos for pos, pid in enumerate(self.ids)}

    def position(self, product_id: str) -> int | None:
        """Where ``product_id`` is, or None when it has no vector here."""
        at = bisect.bisect_left(self.ids, product_id)
        return at if at < len(self.ids) and self.ids[at] == product_id else None

    def positions(self, product_ids: Iterable[str]) -> np.ndarray:
        """Positions of ``product_ids``; KeyError for one that has no vector here."""
        wanted = list(product_ids)
        if len(wanted) > _BISECT_MAX:
            index = self.index
            return np.array([index[pid] for pid in wanted], dtype=np.int64)
        found = []
        for pid in wanted:
            at = self.position(pid)
            if at is None:
                raise KeyError(pid)
            found.append(at)
        return np.array(found, dtype=np.int64)

    def positions_found(self, product_ids: Iterable[str]) -> np.ndarray:
        """Positions of those of ``product_ids`` that have a vector here, in id order."""
        found = (self.position(pid) for pid in sorted(set(product_ids)))
        return np.array([pos for pos in found if pos is not None], dtype=np.int64)

    def with_rows(self, ids: Sequence[str], vectors: np.ndarray) -> VectorSet:
        """A new set with rows for ``ids`` (sorted, none already here) added in order."""
        if not ids:
            return self
        at = [bisect.bisect_left(self.ids, pid) for pid in ids]
        merged = list(self.ids)
        # Right to left, so that earlier positions stay valid; equal positions keep id order.
        for pos, pid in zip(reversed(at), reversed(ids), strict=True):
            merged.insert(pos, pid)
        base = self.vectors if len(self.ids) else np.zeros((0, vectors.shape[1]), vectors.dtype)
        return VectorSet(
            merged,
            np.insert(base, at, vectors, axis=0),
            grown_from=weakref.ref(self),
            inserted_at=np.array(at, dtype=np.int64),
        )


def read_rows(session: Session, statement: Any) -> list[Any]:
    """Every row of ``statement``: on PostgreSQL (psycopg) fetched in binary format, which sends
    vectors as raw bytes rather than hex text and so reads a catalogue's about three times
    faster; through SQLAlchemy elsewhere. Columns come back as the driver gives them."""
    connection = session.connection()
    if connection.dialect.name != "postgresql" or connection.dialect.driver != "psycopg":
        return list(session.execute(statement).all())
    session.flush()  # as SQLAlchemy's autoflush would before its own queries
    compiled = statement.compile(
        dialect=connection.dialect, compile_kwargs={"render_postcompile": True}
    )
    with connection.connection.driver_connection.cursor(binary=True) as cursor:  # type: ignore[union-attr]
        cursor.execute(compiled.string, compiled.params)
        return list(cursor.fetchall())


def split_space(model_id: str) -> tuple[str, str]:
    """(embedding model id, projection tag or "")."""
    embedding_model, _, tag = model_id.partition(SPACE_SEPARATOR)
    return embedding_model, tag


def get_projection(session: Session, tag: str) -> Projection:
    record = session.get(ProjectionRecord, tag)
    if record is None:
        raise NotIndexed(f"projection {tag!r} is not stored: index again with --refit")
    return _projection_from_bytes(record.data)


@functools.lru_cache(maxsize=4)
def _projection_from_bytes(data: bytes) -> Projection:
    return Projection.from_bytes(data)


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


def load_vectors(session: Session, model_id: str) -> VectorSet:
    """All vectors of space ``model_id`` whose photo is still the product's current one, read
    from SQL (see :class:`core.space_cache.SpaceCache` for a process that keeps them)."""
    embedding_model, tag = split_space(model_id)
    rows = read_rows(
        session,
        select(Embedding.product_id, Embedding.dim, Embedding.vector)
        .join(Product, Product.id == Embedding.product_id)
        .where(
            Embedding.model_id == embedding_model, Embedding.content_hash == Product.content_hash
        ),
    )
    # Python's string order, not the database collation: the same everywhere.
    ordered = sorted(rows, key=lambda row: row[0])
    if not ordered:
        return VectorSet([], np.zeros((0, 0), dtype=np.float32))
    vectors = stacked(ordered)
    if tag:
        vectors = project(get_projection(session, tag), vectors)
    return VectorSet([str(row[0]) for row in ordered], vectors)
