"""Catalogue indexing: products in, vectors stored, neighbour table kept exact.

Functions here take a ``Session`` and never commit: the caller decides the transaction
boundaries (one per batch when embedding, so that an interrupted run keeps its progress; one
for each neighbour-table update, so that a reader never sees a half-written list).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import and_, delete, func, insert, select
from sqlalchemy.orm import Session

from core.catalogue import CatalogueItem, content_hash
from core.db import upsert
from core.encoder import ImageEncoder
from core.errors import NotIndexed, ProductNotFound
from core.jobs import finish_job, record_failures, start_job
from core.models import Embedding, Job, Neighbour, Product, ProjectionRecord
from core.neighbours import NO_NEIGHBOUR, Neighbours, add_to_lists, changed_rows, empty_lists, top_k
from core.pipeline import EmbeddedBatch, embed_images
from core.projection import fit_projection
from core.vectors import SPACE_SEPARATOR, get_projection

# Re-exported: evaluation, tests and benches import these from here.
from core.vectors import VectorSet as VectorSet
from core.vectors import load_vectors as load_vectors

_IN_CHUNK = 500
T = TypeVar("T")


@dataclass
class ProductSync:
    added: int = 0
    changed: int = 0
    unchanged: int = 0


def _chunks(values: Sequence[T], size: int = _IN_CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def sync_products(session: Session, items: Sequence[CatalogueItem]) -> ProductSync:
    """Insert new products, update changed ones. A product whose photo changed loses its
    vectors, so it is embedded again."""
    result = ProductSync()
    stale: list[str] = []
    for chunk in _chunks(items):
        known = {
            p.id: p
            for p in session.scalars(
                select(Product).where(Product.id.in_([item.product_id for item in chunk]))
            )
        }
        for item in chunk:
            product = known.get(item.product_id)
            try:
                digest = content_hash(item.path)
            except OSError:
                if product is None:
                    raise
                # A stored photo that vanished: embedding it reports the error against it.
                result.unchanged += 1
                continue
            if product is None:
                result.added += 1
                session.add(
                    Product(
                        id=item.product_id,
                        meta=item.meta,
                        image_path=str(item.path),
                        content_hash=digest,
                    )
                )
                continue
            if (product.content_hash, product.image_path, product.meta) == (
                digest,
                str(item.path),
                item.meta,
            ):
                result.unchanged += 1
                continue
            result.changed += 1
            if product.content_hash != digest:
                stale.append(item.product_id)
            product.meta = item.meta
            product.image_path = str(item.path)
            product.content_hash = digest
    for stale_ids in _chunks(stale):
        session.execute(delete(Embedding).where(Embedding.product_id.in_(stale_ids)))
    session.flush()
    return result


def stored_items(session: Session) -> list[CatalogueItem]:
    """The registered products as catalogue items, to index them again where they are."""
    return [
        CatalogueItem(product.id, Path(product.image_path), dict(product.meta or {}))
        for product in session.scalars(select(Product).order_by(Product.id))
    ]


def pending_products(
    session: Session, model_id: str, product_ids: Iterable[str] | None = None
) -> list[tuple[str, str]]:
    """(id, image path) of products with no vector of their current photo under ``model_id``."""
    embedded = select(Embedding.product_id).where(
        and_(
            Embedding.product_id == Product.id,
            Embedding.model_id == model_id,
            Embedding.content_hash == Product.content_hash,
        )
    )
    query = select(Product.id, Product.image_path).where(~embedded.exists())
    if product_ids is None:
        return sorted((pid, path) for pid, path in session.execute(query))
    found: list[tuple[str, str]] = []
    for chunk in _chunks(sorted(set(product_ids))):
        found.extend(session.execute(query.where(Product.id.in_(chunk))))
    return sorted(found)


def store_batch(session: Session, model_id: str, batch: EmbeddedBatch, job_id: str | None) -> None:
    """Upsert a batch's vectors (keyed by product and model id) and record its failures."""
    if batch.product_ids:
        hashes = dict(
            session.execute(
                select(Product.id, Product.content_hash).where(Product.id.in_(batch.product_ids))
            ).all()
        )
        upsert(
            session,
            Embedding.__table__,
            [
                {
                    "product_id": pid,
                    "model_id": model_id,
                    "content_hash": hashes[pid],
                    "dim": int(vector.shape[0]),
                    "vector": np.asarray(vector, dtype="<f4").tobytes(),
                }
                for pid, vector in zip(batch.product_ids, batch.vectors, strict=True)
            ],
            keys=["product_id", "model_id"],
        )
    record_failures(session, job_id, batch.failures)


def embed_pending(
    session: Session,
    encoder: ImageEncoder,
    items: Sequence[tuple[str, str]],
    batch_size: int,
    workers: int,
    job_id: str | None = None,
) -> Iterator[EmbeddedBatch]:
    """Embed ``items`` and store each batch; yields after each batch so the caller can commit."""
    for batch in embed_images(encoder, items, batch_size, workers):
        store_batch(session, encoder.model_id, batch, job_id)
        yield batch


def resolve_space(
    session: Session,
    embedding_model_id: str,
    dims: int,
    power: float,
    refit: bool = False,
    fit: bool = True,
    whiten: float = 1.0,
) -> str:
    """The model id neighbour lists are built in: the embedding model's own vectors, or those
    vectors through the stored PCA-whitening projection of this catalogue.

    A projection is fitted once, when there is none yet and the catalogue has at least
    ``2 * dims`` vectors (before that, lists use the embedding vectors as they are), and again
    only when ``refit`` asks for it. Adds therefore keep projecting with the same parameters.
    """
    if dims <= 0:
        return embedding_model_id
    record = session.scalars(
        select(ProjectionRecord)
        .where(
            ProjectionRecord.embedding_model_id == embedding_model_id,
            ProjectionRecord.dims == dims,
            ProjectionRecord.power == power,
            ProjectionRecord.whiten == whiten,
        )
        .order_by(ProjectionRecord.created_at.desc())
        .limit(1)
    ).first()
    if record is not None and not refit:
        return f"{embedding_model_id}{SPACE_SEPARATOR}{record.tag}"
    if not fit:
        return embedding_model_id
    vectors = load_vectors(session, embedding_model_id)
    if len(vectors.ids) < 2 * dims:
        return (
            embedding_model_id
            if record is None
            else (f"{embedding_model_id}{SPACE_SEPARATOR}{record.tag}")
        )
    projection = fit_projection(vectors.vectors, dims, power, whiten)
    if session.get(ProjectionRecord, projection.tag) is None:
        session.add(
            ProjectionRecord(
                tag=projection.tag,
                embedding_model_id=embedding_model_id,
                dims=dims,
                whiten=whiten,
                power=power,
                fitted_on=len(vectors.ids),
                data=projection.to_bytes(),
            )
        )
        session.flush()
    return f"{embedding_model_id}{SPACE_SEPARATOR}{projection.tag}"


def project_queries(session: Session, model_id: str, vectors: np.ndarray) -> np.ndarray:
    """Outside vectors (a search photo) into the space ``model_id`` names."""
    _, _, tag = model_id.partition(SPACE_SEPARATOR)
    return get_projection(session, tag).apply(vectors) if tag else vectors


def load_lists(
    session: Session, vectors: VectorSet, product_ids: Sequence[str], model_id: str, k: int
) -> Neighbours:
    """Stored lists of ``product_ids`` as positions in ``vectors`` (rows of another model, or
    naming products no longer there, read as absent)."""
    lists = empty_lists(len(product_ids), k)
    row_of = {pid: row for row, pid in enumerate(product_ids)}
    index = {pid: pos for pos, pid in enumerate(vectors.ids)}
    for chunk in _chunks(list(product_ids)):
        for pid, rank, neighbour, score, mid in session.execute(
            select(
                Neighbour.product_id,
                Neighbour.rank,
                Neighbour.neighbour_id,
                Neighbour.score,
                Neighbour.model_id,
            ).where(Neighbour.product_id.in_(chunk))
        ):
            pos = index.get(neighbour)
            if mid != model_id or pos is None or not 1 <= rank <= k:
                continue
            lists.positions[row_of[pid], rank - 1] = pos
            lists.scores[row_of[pid], rank - 1] = np.float32(score)
    return lists


def write_lists(
    session: Session,
    vectors: VectorSet,
    product_ids: Sequence[str],
    lists: Neighbours,
    model_id: str,
) -> None:
    """Replace the stored lists of ``product_ids`` (delete, then insert, in one transaction)."""
    for chunk in _chunks(list(product_ids)):
        session.execute(delete(Neighbour).where(Neighbour.product_id.in_(chunk)))
    rows = [
        {
            "product_id": pid,
            "rank": rank + 1,
            "neighbour_id": vectors.ids[pos],
            "score": float(score),
            "model_id": model_id,
        }
        for pid, positions, scores in zip(product_ids, lists.positions, lists.scores, strict=True)
        for rank, (pos, score) in enumerate(zip(positions, scores, strict=True))
        if pos != NO_NEIGHBOUR
    ]
    for rows_chunk in _chunks(rows, 5000):
        session.execute(insert(Neighbour), list(rows_chunk))


def refresh_neighbours(session: Session, model_id: str, k: int, block_size: int) -> int:
    """Make the neighbour table exactly the top-k of every vector of ``model_id``.

    Computes every list, then rewrites only those that differ from the table (and drops lists
    of products without a vector under this model).

    Returns:
        The number of lists written or removed.
    """
    vectors = load_vectors(session, model_id)
    fresh = top_k(vectors.vectors, k, block_size)
    stored = load_lists(session, vectors, vectors.ids, model_id, k)
    rows = changed_rows(stored, fresh)
    # Rows whose model id differs would read as absent above and so count as changed too.
    changed_ids = [vectors.ids[row] for row in rows]
    write_lists(
        session,
        vectors,
        changed_ids,
        Neighbours(fresh.positions[rows], fresh.scores[rows]),
        model_id,
    )
    orphans = sorted(_listed_any(session) - set(vectors.ids))
    for chunk in _chunks(orphans):
        session.execute(delete(Neighbour).where(Neighbour.product_id.in_(chunk)))
    return len(changed_ids) + len(orphans)


def lists_mentioning(session: Session, product_ids: Iterable[str]) -> set[str]:
    """Products whose stored list holds any of ``product_ids``."""
    found: set[str] = set()
    for chunk in _chunks(sorted(set(product_ids))):
        found.update(
            session.scalars(select(Neighbour.product_id).where(Neighbour.neighbour_id.in_(chunk)))
        )
    return found


def _listed_any(session: Session) -> set[str]:
    return set(session.scalars(select(Neighbour.product_id).where(Neighbour.rank == 1)))


def _listed(session: Session, model_id: str) -> set[str]:
    """Products that have a list under ``model_id`` (every list has a rank 1)."""
    return set(
        session.scalars(
            select(Neighbour.product_id).where(Neighbour.model_id == model_id, Neighbour.rank == 1)
        )
    )


def _floors(session: Session, model_id: str, k: int) -> dict[str, tuple[float, str]]:
    """Each full list's last entry (score, neighbour): what a newcomer must beat to enter."""
    return {
        pid: (score, neighbour)
        for pid, score, neighbour in session.execute(
            select(Neighbour.product_id, Neighbour.score, Neighbour.neighbour_id).where(
                Neighbour.model_id == model_id, Neighbour.rank == k
            )
        )
    }


def update_neighbours(
    session: Session,
    model_id: str,
    k: int,
    block_size: int,
    stale_ids: Iterable[str] = (),
    repair_ids: Iterable[str] = (),
) -> int:
    """Bring the table up to date after products were added, replaced or deleted.

    Never a full rebuild: products without a list (new ones) and ``stale_ids`` (whose vector
    changed) are scored against everything; lists that held a stale product, and
    ``repair_ids`` (lists that held a product since deleted), are recomputed; every other list
    is only scored against the new vectors and updated if they enter it. The table afterwards
    equals :func:`refresh_neighbours`. Safe to run twice.

    Returns:
        The number of lists written.
    """
    stale = set(stale_ids)
    repair = (lists_mentioning(session, stale) | set(repair_ids)) - stale
    vectors = load_vectors(session, model_id)
    present = set(vectors.ids)
    listed = _listed(session, model_id)

    # Lists of products that no longer have a vector, or whose vector changed, go first.
    gone = sorted((listed - present) | (stale & listed))
    for chunk in _chunks(gone):
        session.execute(delete(Neighbour).where(Neighbour.product_id.in_(chunk)))

    new_ids = sorted((present - listed) | (stale & present))
    recompute = sorted(set(new_ids) | (repair & present))
    old_ids = [pid for pid in vectors.ids if pid in listed and pid not in set(recompute)]
    new = vectors.positions(new_ids)
    old = vectors.positions(old_ids)
    # Only lists whose last entry a newcomer beats can change: read just those.
    entering = top_k(vectors.vectors, 1, block_size, queries=old, candidates=new)
    floors = _floors(session, model_id, k)
    index = {pid: pos for pos, pid in enumerate(vectors.ids)}
    touched = [
        row
        for row, pid in enumerate(old_ids)
        if entering.positions[row, 0] != NO_NEIGHBOUR
        and _beats(entering.scores[row, 0], int(entering.positions[row, 0]), floors.get(pid), index)
    ]
    touched_ids = [old_ids[row] for row in touched]
    current = load_lists(session, vectors, touched_ids, model_id, k)
    updated, _ = add_to_lists(
        vectors.vectors, current, old[touched], new, k, block_size, new_lists=False
    )
    rows = changed_rows(current, updated)
    fresh = top_k(vectors.vectors, k, block_size, queries=vectors.positions(recompute))
    write_lists(
        session,
        vectors,
        [touched_ids[row] for row in rows] + recompute,
        Neighbours(
            np.concatenate([updated.positions[rows], fresh.positions]),
            np.concatenate([updated.scores[rows], fresh.scores]),
        ),
        model_id,
    )
    return len(rows) + len(recompute)


def _beats(
    score: float, position: int, floor: tuple[float, str] | None, index: dict[str, int]
) -> bool:
    """Whether (score, position) ranks above a list's last entry (None: the list is short)."""
    if floor is None or floor[1] not in index:
        return True
    floor_score = np.float32(floor[0])
    return bool(score > floor_score or (score == floor_score and position < index[floor[1]]))


def delete_products(
    session: Session, product_ids: Sequence[str], model_id: str, k: int, block_size: int
) -> int:
    """Delete products and repair every list that held one of them.

    Returns:
        The number of lists rewritten.
    """
    affected = lists_mentioning(session, product_ids)
    for chunk in _chunks(list(product_ids)):
        # Cascades remove their vectors, their lists and their places in other lists.
        session.execute(delete(Product).where(Product.id.in_(chunk)))
    session.flush()
    return update_neighbours(session, model_id, k, block_size, repair_ids=affected)


@dataclass(frozen=True)
class ProductSummary:
    """What a neighbour list shows of a product: its id and metadata."""

    id: str
    meta: dict[str, Any]

    @property
    def name(self) -> str | None:
        value = self.meta.get("productDisplayName") if self.meta else None
        return str(value) if value is not None else None


@dataclass
class SimilarProduct:
    rank: int
    product: ProductSummary
    score: float


def similar_products(session: Session, product_id: str) -> tuple[Product, list[SimilarProduct]]:
    """A product and its stored neighbour list, best first.

    Raises:
        ProductNotFound: no such product.
        NotIndexed: the product has no neighbour list yet.
    """
    product = session.get(Product, product_id)
    if product is None:
        raise ProductNotFound(product_id)
    # Plain rows, not ORM objects: this is the storefront's hot path.
    rows = session.execute(
        select(Neighbour.rank, Neighbour.score, Product.id, Product.meta)
        .join(Product, Product.id == Neighbour.neighbour_id)
        .where(Neighbour.product_id == product_id)
        .order_by(Neighbour.rank)
    ).all()
    neighbours = [
        SimilarProduct(rank, ProductSummary(pid, meta or {}), score)
        for rank, score, pid, meta in rows
    ]
    if not neighbours:
        count = session.scalar(
            select(func.count()).select_from(Embedding).where(Embedding.product_id == product_id)
        )
        reason = "it has no vector yet" if not count else "its list has not been built yet"
        raise NotIndexed(f"product {product_id!r} has no neighbours: {reason}")
    return product, neighbours


@dataclass
class IndexProgress:
    """A point where the caller should commit: what stage, and how far it got."""

    stage: str  # "products", "embedding", "neighbours"
    done: int
    total: int
    failed: int = 0
    step: int = 0


@dataclass
class IndexSummary:
    products: ProductSync
    embedded: int
    failed: int
    skipped: int
    lists_written: int
    model_id: str


def index_catalogue(
    session: Session,
    encoder: ImageEncoder,
    items: Sequence[CatalogueItem],
    *,
    k: int,
    block_size: int,
    batch_size: int,
    workers: int,
    job: Job | None = None,
    pca_dims: int = 0,
    pca_power: float = 1.0,
    pca_whiten: float = 1.0,
    refit: bool = False,
) -> Iterator[IndexProgress | IndexSummary]:
    """Index catalogue ``items``: sync products, embed what is missing, refresh the table.

    A generator: it yields an :class:`IndexProgress` after each unit of work that should be
    committed (products, then each embedded batch, then the neighbour table), and finally an
    :class:`IndexSummary`. Products already embedded under this model id are skipped, so a run
    that was interrupted carries on where it stopped.
    """
    synced = sync_products(session, items)
    pending = pending_products(session, encoder.model_id, [item.product_id for item in items])
    skipped = len(items) - len(pending)
    if job is not None:
        start_job(job, total=len(pending))
    yield IndexProgress("products", len(items), len(items))

    done = failed = 0
    job_id = job.id if job is not None else None
    for batch in embed_pending(session, encoder, pending, batch_size, workers, job_id):
        done += batch.size
        failed += len(batch.failures)
        if job is not None:
            job.done = done
        yield IndexProgress("embedding", done, len(pending), failed, batch.size)

    space = resolve_space(
        session, encoder.model_id, pca_dims, pca_power, refit=refit, whiten=pca_whiten
    )
    written = refresh_neighbours(session, space, k, block_size)
    summary = IndexSummary(synced, done - failed, failed, skipped, written, space)
    if job is not None:
        finish_job(job, result=summary_dict(summary))
    yield IndexProgress("neighbours", written, written)
    yield summary


def summary_dict(summary: IndexSummary) -> dict[str, object]:
    return {
        "model_id": summary.model_id,
        "products_added": summary.products.added,
        "products_changed": summary.products.changed,
        "embedded": summary.embedded,
        "failed": summary.failed,
        "skipped": summary.skipped,
        "lists_written": summary.lists_written,
    }
