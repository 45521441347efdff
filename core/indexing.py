"""Catalogue indexing: products in, vectors stored, neighbour table kept exact.

Functions here take a ``Session`` and never commit: the caller decides the transaction
boundaries (one per batch when embedding, so that an interrupted run keeps its progress; one
for each neighbour-table update, so that a reader never sees a half-written list).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import and_, delete, func, select, text
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
from core.space_cache import (
    ListEnds,
    SpaceCache,
    lock_lists,
    log_list_writes,
    read_list_ends,
    space_vectors,
)
from core.vectors import SPACE_SEPARATOR, get_projection, read_rows

# Re-exported: evaluation, tests and benches import these from here.
from core.vectors import VectorSet as VectorSet
from core.vectors import load_vectors as load_vectors

_IN_CHUNK = 500
# A newcomer is scored against every list's last entry in float32; lists it comes within this
# of are read and merged exactly (float32 errs by far less on unit vectors).
_ENTER_SLACK = 1e-3
# Rows and newcomers per float32 tile of that check.
_ENTER_TILE = (8192, 256)
_WRITE_ROWS = 50_000
_UNNEST = (
    "unnest(CAST(:product_ids AS varchar[]), CAST(:ranks AS integer[]), "
    "CAST(:neighbour_ids AS varchar[]), CAST(:scores AS double precision[])) "
    "AS row (product_id, rank, neighbour_id, score)"
)
_INSERT_UNNEST = text(
    "INSERT INTO neighbours (product_id, rank, neighbour_id, score, model_id) "
    f"SELECT product_id, rank, neighbour_id, score, :model_id FROM {_UNNEST}"
)
_UPDATE_UNNEST = text(
    "UPDATE neighbours SET neighbour_id = row.neighbour_id, score = row.score, "
    f"model_id = :model_id FROM {_UNNEST} "
    "WHERE neighbours.product_id = row.product_id AND neighbours.rank = row.rank"
)
# Reading more lists than this reads every list of the space at once; up to _FEW_LISTS goes
# through SQLAlchemy (its compiled statements are cached), more through the binary reader.
_ALL_LISTS = 5_000
_FEW_LISTS = 64
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
    # The tag only: the stored projection itself is read where vectors are projected.
    tag = session.scalars(
        select(ProjectionRecord.tag)
        .where(
            ProjectionRecord.embedding_model_id == embedding_model_id,
            ProjectionRecord.dims == dims,
            ProjectionRecord.power == power,
            ProjectionRecord.whiten == whiten,
        )
        .order_by(ProjectionRecord.created_at.desc())
        .limit(1)
    ).first()
    if tag is not None and not refit:
        return f"{embedding_model_id}{SPACE_SEPARATOR}{tag}"
    if not fit:
        return embedding_model_id
    vectors = load_vectors(session, embedding_model_id)
    if len(vectors.ids) < 2 * dims:
        return embedding_model_id if tag is None else f"{embedding_model_id}{SPACE_SEPARATOR}{tag}"
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
    return _read_lists(session, vectors, product_ids, model_id, k)[0]


def _read_lists(
    session: Session, vectors: VectorSet, product_ids: Sequence[str], model_id: str, k: int
) -> tuple[Neighbours, set[str]]:
    """:func:`load_lists`, and the products with a row it read as absent (another model's, past
    rank k, or naming a product with no vector here): for every other one the table holds
    exactly what was read."""
    lists = empty_lists(len(product_ids), k)
    untidy: set[str] = set()
    row_of = {pid: row for row, pid in enumerate(product_ids)}
    columns = (
        Neighbour.product_id,
        Neighbour.rank,
        Neighbour.neighbour_id,
        Neighbour.score,
        Neighbour.model_id,
    )
    find: Callable[[str], int | None]
    if len(product_ids) > _ALL_LISTS:
        # A rebuild: every list in one read, those not asked for skipped below.
        rows = read_rows(session, select(*columns))
        find = vectors.index.get
    else:
        many = len(product_ids) > _FEW_LISTS
        read = functools.partial(read_rows, session) if many else session.execute
        rows = [
            row
            for chunk in _chunks(list(product_ids))
            for row in read(select(*columns).where(Neighbour.product_id.in_(chunk)))
        ]
        # Few lists (an add): binary search; many: one dict of every id.
        find = vectors.index.get if many else vectors.position
    for pid, rank, neighbour, score, mid in rows:
        row = row_of.get(pid)
        if row is None:
            continue
        pos = find(neighbour)
        if mid != model_id or pos is None or not 1 <= rank <= k:
            untidy.add(pid)
            continue
        lists.positions[row, rank - 1] = pos
        lists.scores[row, rank - 1] = np.float32(score)
    return lists, untidy


def write_lists(
    session: Session,
    vectors: VectorSet,
    product_ids: Sequence[str],
    lists: Neighbours,
    model_id: str,
    stored: Neighbours,
    untidy: set[str],
) -> None:
    """Make the stored lists of ``product_ids`` equal ``lists``, in the caller's transaction.

    ``stored`` and ``untidy`` are what :func:`_read_lists` gave for them. An untidy list is
    deleted and written whole; for any other the table holds exactly ``stored``, so only the
    entries that differ are written and only ranks past a shorter list's end deleted: a list
    that a newcomer enters at rank r keeps its rows above r untouched.
    """
    redo = np.array([pid in untidy for pid in product_ids], dtype=bool)
    if redo.any():
        for chunk in _chunks([pid for pid in product_ids if pid in untidy]):
            session.execute(delete(Neighbour).where(Neighbour.product_id.in_(chunk)))
        stored = Neighbours(
            np.where(redo[:, None], NO_NEIGHBOUR, stored.positions),
            np.where(redo[:, None], np.float32(-np.inf), stored.scores),
        )
    held = lists.positions != NO_NEIGHBOUR
    there = stored.positions != NO_NEIGHBOUR
    differs = held & ((lists.positions != stored.positions) | (lists.scores != stored.scores))
    # On PostgreSQL a row known to be there is updated, a new one inserted, each in one
    # statement over arrays; elsewhere, upserts.
    postgresql = session.get_bind().dialect.name == "postgresql"
    for statement, entries in (
        ((_UPDATE_UNNEST, differs & there), (_INSERT_UNNEST, differs & ~there))
        if postgresql
        else ((None, differs),)
    ):
        rows, ranks = np.nonzero(entries)
        columns = {
            "product_ids": [product_ids[row] for row in rows.tolist()],
            "ranks": (ranks + 1).tolist(),
            "neighbour_ids": [vectors.ids[pos] for pos in lists.positions[entries].tolist()],
            "scores": lists.scores[entries].astype(np.float64).tolist(),
        }
        for start in range(0, len(rows), _WRITE_ROWS):
            part = {name: values[start : start + _WRITE_ROWS] for name, values in columns.items()}
            if statement is not None:
                session.execute(statement, {**part, "model_id": model_id})
                continue
            upsert(
                session,
                Neighbour.__table__,
                [
                    {
                        "product_id": p,
                        "rank": r,
                        "neighbour_id": n,
                        "score": s,
                        "model_id": model_id,
                    }
                    for p, r, n, s in zip(*part.values(), strict=True)
                ],
                keys=["product_id", "rank"],
            )
    # Stored ranks past a list's new end (it got shorter, or had a hole where a product was
    # deleted).
    lengths = held.sum(axis=1)
    past_end = (there & (np.arange(there.shape[1]) >= lengths[:, None])).any(axis=1)
    for length in np.unique(lengths[past_end]).tolist():
        cut = [
            pid
            for pid, n, cut_here in zip(product_ids, lengths, past_end, strict=True)
            if cut_here and n == length
        ]
        for chunk in _chunks(cut):
            session.execute(
                delete(Neighbour).where(Neighbour.product_id.in_(chunk), Neighbour.rank > length)
            )


def refresh_neighbours(
    session: Session, model_id: str, k: int, block_size: int, cache: SpaceCache | None = None
) -> int:
    """Make the neighbour table exactly the top-k of every vector of ``model_id``.

    Computes every list, then rewrites only those that differ from the table (and drops lists
    of products without a vector under this model). With a ``cache``, the vectors come from it
    and it keeps every list's end afterwards.

    Returns:
        The number of lists written or removed.
    """
    before = lock_lists(session)
    vectors = space_vectors(session, model_id, cache)
    fresh = top_k(vectors.vectors, k, block_size)
    stored, untidy = _read_lists(session, vectors, vectors.ids, model_id, k)
    # Lists with rows read as absent (another model's, say) count as changed too.
    rows = np.union1d(changed_rows(stored, fresh), vectors.positions_found(untidy))
    changed_ids = [vectors.ids[row] for row in rows]
    write_lists(
        session,
        vectors,
        changed_ids,
        Neighbours(fresh.positions[rows], fresh.scores[rows]),
        model_id,
        Neighbours(stored.positions[rows], stored.scores[rows]),
        untidy,
    )
    orphans = sorted(_listed_any(session) - set(vectors.ids))
    for chunk in _chunks(orphans):
        session.execute(delete(Neighbour).where(Neighbour.product_id.in_(chunk)))
    after = log_list_writes(session, before, changed_ids + orphans)
    if cache is not None:
        listed = fresh.positions[:, 0] != NO_NEIGHBOUR
        ends = ListEnds(k, vectors, listed, fresh.scores[:, k - 1].copy(), {})
        cache.keep_list_ends(session, model_id, ends, after)
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


def _list_ends(
    product_ids: Sequence[str], lists: Neighbours, k: int
) -> tuple[dict[str, float], list[str]]:
    """The last scores of lists just written (-inf: shorter than k), and the products whose list
    came out empty (no rows)."""
    floors = lists.scores[:, k - 1].astype(np.float64)
    empty = lists.positions[:, 0] == NO_NEIGHBOUR
    kept = dict(zip(product_ids, floors.tolist(), strict=True))
    gone = [pid for pid, none in zip(product_ids, empty.tolist(), strict=True) if none]
    for pid in gone:
        del kept[pid]
    return kept, gone


def _may_enter(
    vectors: np.ndarray, old: np.ndarray, new: np.ndarray, floors: np.ndarray
) -> np.ndarray:
    """Which of the ``old`` lists (last scores ``floors``) some ``new`` vector may enter.

    A float32 bound, never an exact test: a list it passes is read and merged exactly, and one
    it rejects cannot change, since no newcomer comes within float32's error of its last entry.
    """
    if len(old) == 0 or len(new) == 0:
        return np.zeros(len(old), dtype=bool)
    best = np.full(len(vectors), -np.inf, dtype=np.float32)
    x = np.asarray(vectors, dtype=np.float32)
    candidates = x[new]
    rows, cols = _ENTER_TILE
    for r0 in range(0, len(x), rows):
        block = x[r0 : r0 + rows]
        for c0 in range(0, len(new), cols):
            tile = block @ candidates[c0 : c0 + cols].T
            np.maximum(best[r0 : r0 + rows], tile.max(axis=1), out=best[r0 : r0 + rows])
    return np.asarray(best[old] >= floors - _ENTER_SLACK)


def update_neighbours(
    session: Session,
    model_id: str,
    k: int,
    block_size: int,
    stale_ids: Iterable[str] = (),
    repair_ids: Iterable[str] = (),
    cache: SpaceCache | None = None,
) -> int:
    """Bring the table up to date after products were added, replaced or deleted.

    Never a full rebuild: products without a list (new ones) and ``stale_ids`` (whose vector
    changed) are scored against everything; lists that held a stale product, and
    ``repair_ids`` (lists that held a product since deleted), are recomputed; every other list
    is only read, merged and written if a newcomer comes close to its last entry. The table
    afterwards equals :func:`refresh_neighbours`. Safe to run twice.

    With a ``cache`` (a worker's), the vectors and list ends come from it, checked against the
    database, instead of being read in full.

    Returns:
        The number of lists written.
    """
    before = lock_lists(session)  # no other writer of the lists until this transaction ends
    stale = set(stale_ids)
    repair = (lists_mentioning(session, stale) | set(repair_ids)) - stale
    if cache is None:
        ends = read_list_ends(session, model_id, k, before)
    else:
        ends = cache.list_ends(session, model_id, k, before)
    vectors = space_vectors(session, model_id, cache)
    ids = vectors.ids
    ends = ends.along(vectors)
    listed, floors = ends.listed, ends.floors

    # Lists of products that no longer have a vector, or whose vector changed, go first.
    stale_here = vectors.positions_found(stale)
    gone = set(ends.elsewhere) | {ids[pos] for pos in stale_here[listed[stale_here]]}
    for chunk in _chunks(sorted(gone)):
        session.execute(delete(Neighbour).where(Neighbour.product_id.in_(chunk)))

    is_new = ~listed
    is_new[stale_here] = True
    recompute = is_new.copy()
    recompute[vectors.positions_found(repair)] = True
    new = np.flatnonzero(is_new)
    old = np.flatnonzero(~recompute)
    touched = old[_may_enter(vectors.vectors, old, new, floors[old])]
    touched_ids = [ids[pos] for pos in touched]
    current, untidy = _read_lists(session, vectors, touched_ids, model_id, k)
    updated, _ = add_to_lists(
        vectors.vectors, current, touched, new, k, block_size, new_lists=False
    )
    rows = changed_rows(current, updated)
    redo = np.flatnonzero(recompute)
    redo_ids = [ids[pos] for pos in redo]
    fresh = top_k(vectors.vectors, k, block_size, queries=redo)
    stored, untidy_redo = _read_lists(session, vectors, redo_ids, model_id, k)
    written_ids = [touched_ids[row] for row in rows] + redo_ids
    written = Neighbours(
        np.concatenate([updated.positions[rows], fresh.positions]),
        np.concatenate([updated.scores[rows], fresh.scores]),
    )
    previous = Neighbours(
        np.concatenate([current.positions[rows], stored.positions]),
        np.concatenate([current.scores[rows], stored.scores]),
    )
    write_lists(session, vectors, written_ids, written, model_id, previous, untidy | untidy_redo)
    after = log_list_writes(session, before, written_ids + sorted(gone))
    if cache is not None:
        new_ends, empty = _list_ends(written_ids, written, k)
        cache.keep_list_ends(session, model_id, ends.written(new_ends, sorted(gone) + empty), after)
    return len(rows) + len(redo)


def delete_products(
    session: Session,
    product_ids: Sequence[str],
    model_id: str,
    k: int,
    block_size: int,
    cache: SpaceCache | None = None,
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
    return update_neighbours(session, model_id, k, block_size, repair_ids=affected, cache=cache)


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
