"""Vectors through the stored projection, kept in SQL beside the embeddings they come from.

A catalogue's lists are built in its projected space (64-d by default), but its embeddings are
stored as the model gives them (1024-d by default): at a million products 4 GB, against 256 MB
projected. So when an index job fixes its space it writes the projected row of every vector
that has none yet (:func:`fill`, a pass over the embeddings a chunk at a time), an add writes
its newcomers', and every reader (``core.space_cache``, ``core.spaces.load_space_vectors``)
reads the projected rows and projects only the vectors that have none. A process that starts
cold thus reads the small rows, never the embeddings.

A projected row is used only while its content hash is that of the embedding, and a vector
embedded again drops its rows (``core.products.store_batch``), so a row is always the
projection of the stored vector: the very bits ``core.vectors.project`` gives it, as a reader
projecting it itself would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import and_, case, delete, null, select
from sqlalchemy.orm import Session

from core.db import in_chunks, keyset_pages, upsert
from core.models import Embedding, Product, ProjectedVector, ProjectionRecord
from core.projection import Projection
from core.vectors import VectorSet, concatenated, project, stacked

CHUNK_ROWS = 8192  # embeddings read, projected and written at a time
PAGE_ROWS = 262_144  # rows per read of a whole space


def space_rows(embedding_model_id: str, tag: str | None) -> Any:
    """(product id, current, projected bytes or None, dim, raw bytes or None) of every
    embedding of the model: the raw vector only where no valid projected row under ``tag``
    exists (every raw vector when ``tag`` is None: a space without a projection)."""
    current = (Embedding.content_hash == Product.content_hash).label("current")
    joined = select(Embedding.product_id, current).join(Product, Product.id == Embedding.product_id)
    if tag is None:
        joined = joined.add_columns(null(), Embedding.dim, Embedding.vector)
        return joined.where(Embedding.model_id == embedding_model_id)
    missing = ProjectedVector.vector.is_(None)
    return (
        joined.add_columns(
            ProjectedVector.vector,
            Embedding.dim,
            case((missing, Embedding.vector), else_=None),
        )
        .outerjoin(
            ProjectedVector,
            and_(
                ProjectedVector.tag == tag,
                ProjectedVector.product_id == Embedding.product_id,
                ProjectedVector.content_hash == Embedding.content_hash,
            ),
        )
        .where(Embedding.model_id == embedding_model_id)
    )


def assemble(rows: Sequence[Any], projection: Projection | None) -> VectorSet:
    """Rows of :func:`space_rows` (current ones, in id order) as one set of the space's
    vectors: stored projected rows as they are, the others projected here (as they are,
    without a projection)."""
    if projection is None:
        return VectorSet([row[0] for row in rows], stacked([row[2:] for row in rows]))
    out = np.empty((len(rows), projection.dims), dtype=np.float32)
    stored = [n for n, row in enumerate(rows) if row[2] is not None]
    if stored:
        matrix = np.frombuffer(b"".join(rows[n][2] for n in stored), dtype="<f4")
        out[stored] = matrix.reshape(len(stored), projection.dims)
    raw = [n for n, row in enumerate(rows) if row[2] is None]
    if raw:
        out[raw] = project(projection, stacked([(None, rows[n][3], rows[n][4]) for n in raw]))
    return VectorSet([row[0] for row in rows], out)


@dataclass(frozen=True)
class SpaceRead:
    """Every vector of a space as read from SQL: the current ones, the products whose row is
    of a photo they no longer have (counted, not used), and how many rows were read."""

    vectors: VectorSet
    outdated: frozenset[str]
    rows: int


def read_space(
    session: Session,
    embedding_model_id: str,
    tag: str | None,
    projection: Projection | None,
    page_rows: int = PAGE_ROWS,
) -> SpaceRead:
    """Every row of a space (``tag`` and ``projection`` None: the model's vectors as they
    are), read a page at a time and each page made an array at once: a million rows never
    sit in memory as a million small objects (whose freed memory stays with the process:
    580 MB at 1M)."""
    pages: list[VectorSet] = []
    outdated: set[str] = set()
    rows = 0
    statement = space_rows(embedding_model_id, tag if projection is not None else None)
    for page in keyset_pages(
        session, statement, Embedding.product_id, page_rows, joined=[Product.id]
    ):
        rows += len(page)
        outdated.update(row[0] for row in page if not row[1])
        pages.append(assemble([row for row in page if row[1]], projection))
    return SpaceRead(concatenated(pages), frozenset(outdated), rows)


def fill(
    session: Session,
    embedding_model_id: str,
    tag: str,
    projection: Projection,
    product_ids: Sequence[str] | None = None,
) -> int:
    """Write the projected row of each current vector of the model (of ``product_ids`` only,
    when given) that has no valid one under ``tag``, and drop the rows of the model's other
    projections (a refit's old ones). Returns the rows written."""
    if product_ids is None:
        others = select(ProjectionRecord.tag).where(
            ProjectionRecord.embedding_model_id == embedding_model_id, ProjectionRecord.tag != tag
        )
        session.execute(delete(ProjectedVector).where(ProjectedVector.tag.in_(others)))
    written = 0
    for chunk in _missing(session, embedding_model_id, tag, product_ids):
        vectors = project(projection, stacked(chunk))
        upsert(
            session,
            ProjectedVector.__table__,
            [
                {
                    "tag": tag,
                    "product_id": row[0],
                    "content_hash": row[3],
                    "vector": np.asarray(vector, dtype="<f4").tobytes(),
                }
                for row, vector in zip(chunk, vectors, strict=True)
            ],
            keys=["tag", "product_id"],
        )
        written += len(chunk)
    return written


def _missing(
    session: Session, embedding_model_id: str, tag: str, product_ids: Sequence[str] | None
) -> Iterator[list[Any]]:
    """(id, dim, raw bytes, content hash) of the current vectors without a valid projected row,
    a chunk at a time (by id, so no chunk is read twice)."""
    valid = select(ProjectedVector.product_id).where(
        ProjectedVector.tag == tag,
        ProjectedVector.product_id == Embedding.product_id,
        ProjectedVector.content_hash == Embedding.content_hash,
    )
    query = (
        select(Embedding.product_id, Embedding.dim, Embedding.vector, Embedding.content_hash)
        .join(Product, Product.id == Embedding.product_id)
        .where(
            Embedding.model_id == embedding_model_id,
            Embedding.content_hash == Product.content_hash,
            ~valid.exists(),
        )
    )
    if product_ids is not None:
        for ids in in_chunks(sorted(set(product_ids))):
            found = list(session.execute(query.where(Embedding.product_id.in_(ids))))
            if found:
                yield found
        return
    yield from keyset_pages(session, query, Embedding.product_id, CHUNK_ROWS, joined=[Product.id])


def drop(session: Session, product_ids: Sequence[str]) -> None:
    """Forget the projected rows of products embedded again."""
    for ids in in_chunks(list(product_ids)):
        session.execute(delete(ProjectedVector).where(ProjectedVector.product_id.in_(ids)))
