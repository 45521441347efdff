"""The steps of each kind of job, over a ``Session`` the caller owns.

A worker task, or the in-process CLI path, re-reads the job by id, calls one of these, and
commits where a step yields. Every write is an upsert or a delete-then-insert keyed by product
and model id, so a step that runs twice (a redelivered task) changes nothing more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from core.encoder import ImageEncoder
from core.errors import InvalidImage, LookalikeError
from core.indexing import (
    delete_products,
    embed_pending,
    pending_products,
    project_queries,
    refresh_neighbours,
    resolve_space,
    update_neighbours,
)
from core.jobs import finish_job, record_failures, start_job
from core.models import Job, JobChunk, Product
from core.neighbours import NO_NEIGHBOUR, search
from core.pipeline import ImageFailure
from core.settings import Settings
from core.space_cache import SpaceCache, space_vectors

log = logging.getLogger(__name__)


class JobNotFound(LookalikeError):
    status = 404
    code = "job_not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")


def get_job(session: Session, job_id: str, lock: bool = False) -> Job:
    query = select(Job).where(Job.id == job_id)
    if lock:
        query = query.with_for_update()
    job = session.scalars(query).one_or_none()
    if job is None:
        raise JobNotFound(job_id)
    return job


def lock_neighbour_table(session: Session) -> None:
    """One writer of the neighbour table at a time, until this transaction ends.

    PostgreSQL: a transaction-level advisory lock, so two jobs updating lists at once on
    different workers serialise instead of overwriting each other's changes. SQLite already
    allows a single writer.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext('lookalike.neighbours'))"))


# --- index ---------------------------------------------------------------------------------


def plan_chunks(session: Session, job: Job, product_ids: Sequence[str], chunk_size: int) -> int:
    """Split an index job's products into chunks; returns how many."""
    ids = sorted(product_ids)
    chunks = [ids[start : start + chunk_size] for start in range(0, len(ids), chunk_size)]
    for number, chunk in enumerate(chunks):
        session.add(JobChunk(job_id=job.id, chunk_no=number, product_ids=chunk, total=len(chunk)))
    start_job(job, total=len(ids))
    return len(chunks)


def _set_progress(session: Session, job_id: str) -> None:
    done = select(func.coalesce(func.sum(JobChunk.done), 0)).where(JobChunk.job_id == job_id)
    session.execute(update(Job).where(Job.id == job_id).values(done=done.scalar_subquery()))


def embed_chunk(
    session: Session,
    encoder: ImageEncoder,
    job_id: str,
    chunk_no: int,
    batch_size: int,
    workers: int,
) -> Iterator[int]:
    """Embed one chunk of an index job. Yields the chunk's progress after each batch."""
    chunk = session.get(JobChunk, (job_id, chunk_no))
    if chunk is None:
        raise JobNotFound(f"{job_id}/{chunk_no}")
    job = get_job(session, job_id)
    if job.state in ("succeeded", "failed"):
        return
    pending = pending_products(session, encoder.model_id, chunk.product_ids)
    chunk.state = "running"
    chunk.done = chunk.total - len(pending)
    started = time.perf_counter()
    failed = 0
    for batch in embed_pending(session, encoder, pending, batch_size, workers, job_id):
        chunk.done += batch.size
        failed += len(batch.failures)
        _set_progress(session, job_id)
        yield chunk.done
    log.info(
        "chunk done job=%s chunk=%d images=%d embedded=%d failed=%d seconds=%.1f",
        job_id,
        chunk_no,
        chunk.total,
        len(pending) - failed,
        failed,
        time.perf_counter() - started,
    )


def finish_chunk(session: Session, job_id: str, chunk_no: int) -> bool:
    """Mark a chunk done. True when this call finished the job's last chunk and so must build
    the neighbour table (exactly one caller gets True)."""
    session.execute(
        update(JobChunk)
        .where(JobChunk.job_id == job_id, JobChunk.chunk_no == chunk_no)
        .values(state="done", done=JobChunk.total)
    )
    _set_progress(session, job_id)
    session.flush()
    job = get_job(session, job_id, lock=True)  # serialises the last chunks' checks
    left = session.scalar(
        select(func.count())
        .select_from(JobChunk)
        .where(JobChunk.job_id == job_id, JobChunk.state != "done")
    )
    if left or job.state != "running":
        return False
    job.state = "finalising"
    return True


def _space(session: Session, model_id: str, settings: Settings, **options: bool) -> str:
    return resolve_space(
        session,
        model_id,
        settings.pca_dims,
        settings.pca_power,
        whiten=settings.pca_whiten,
        **options,
    )


def finalise_index(
    session: Session,
    job_id: str,
    model_id: str,
    settings: Settings,
    cache: SpaceCache | None = None,
) -> None:
    """Build the neighbour table once every chunk of an index job is embedded."""
    job = get_job(session, job_id)
    if job.state not in ("finalising", "running"):
        return
    started = time.perf_counter()
    lock_neighbour_table(session)
    space = _space(session, model_id, settings, refit=bool(job.params.get("refit")))
    written = refresh_neighbours(
        session, space, settings.neighbours, settings.block_size, cache=cache
    )
    errors = job.total - _embedded_count(session, job_id, model_id)
    finish_job(job, result={"model_id": space, "lists_written": written, "failed": errors})
    log.info(
        "index done job=%s products=%d lists_written=%d seconds=%.1f",
        job_id,
        job.total,
        written,
        time.perf_counter() - started,
    )


def _embedded_count(session: Session, job_id: str, model_id: str) -> int:
    chunks = session.scalars(select(JobChunk.product_ids).where(JobChunk.job_id == job_id))
    ids = [pid for chunk in chunks for pid in chunk]
    return len(ids) - len(pending_products(session, model_id, ids))


# --- add, delete ---------------------------------------------------------------------------


def embed_job_products(
    session: Session, encoder: ImageEncoder, job_id: str, batch_size: int, workers: int
) -> Iterator[int]:
    """Embed the products of an add-products job. Yields progress after each batch."""
    job = get_job(session, job_id)
    ids: list[str] = list(job.params.get("product_ids", []))
    pending = pending_products(session, encoder.model_id, ids)
    start_job(job, total=len(ids))
    job.done = len(ids) - len(pending)
    yield job.done
    for batch in embed_pending(session, encoder, pending, batch_size, workers, job_id):
        job.done += batch.size
        yield job.done


def link_job_products(
    session: Session,
    job_id: str,
    model_id: str,
    settings: Settings,
    cache: SpaceCache | None = None,
) -> int:
    """Give an add-products job's products their lists and update every list they enter.

    ``cache``: the worker's copy of the space, which spares reading every vector again.
    """
    job = get_job(session, job_id)
    lock_neighbour_table(session)
    started = time.perf_counter()
    space = _space(session, model_id, settings)
    written = update_neighbours(
        session,
        space,
        settings.neighbours,
        settings.block_size,
        stale_ids=job.params.get("replaced", []),
        cache=cache,
    )
    failed = len(pending_products(session, model_id, job.params.get("product_ids", [])))
    finish_job(job, result={"model_id": space, "lists_written": written, "failed": failed})
    log.info(
        "add done job=%s products=%d failed=%d lists_written=%d seconds=%.1f",
        job_id,
        job.total,
        failed,
        written,
        time.perf_counter() - started,
    )
    return written


def delete_job_products(
    session: Session,
    job_id: str,
    model_id: str,
    settings: Settings,
    cache: SpaceCache | None = None,
) -> int:
    """Delete a job's products and repair every list that held them."""
    job = get_job(session, job_id)
    ids: list[str] = list(job.params.get("product_ids", []))
    start_job(job, total=len(ids))
    lock_neighbour_table(session)
    space = _space(session, model_id, settings)
    written = delete_products(
        session, ids, space, settings.neighbours, settings.block_size, cache=cache
    )
    job.done = len(ids)
    finish_job(job, result={"deleted": ids, "lists_written": written})
    log.info("delete done job=%s products=%d lists_written=%d", job_id, len(ids), written)
    return written


# --- search --------------------------------------------------------------------------------


def search_job(
    session: Session,
    encoder: ImageEncoder,
    job_id: str,
    settings: Settings,
    cache: SpaceCache | None = None,
) -> dict[str, Any]:
    """Embed a search job's photo and find its top-k in the catalogue, without adding it."""
    job = get_job(session, job_id)
    start_job(job, total=1)
    path = str(job.params["image_path"])
    started = time.perf_counter()
    try:
        query = encoder.embed_batch(encoder.prepare(path)[None, ...])
    except InvalidImage as exc:
        name = str(job.params.get("filename", path))
        record_failures(session, job_id, [ImageFailure("", name, exc.message)])
        finish_job(job, error=f"{name}: {exc.message}")
        return {}
    # The space the stored lists live in; a search never fits a projection.
    space = _space(session, encoder.model_id, settings, fit=False)
    vectors = space_vectors(session, space, cache)
    query = project_queries(session, space, query)
    found = (
        search(vectors.vectors, query, settings.neighbours, settings.block_size)
        if vectors.ids
        else None
    )
    hits: list[dict[str, Any]] = []
    if found is not None:
        ids = [vectors.ids[pos] for pos in found.positions[0] if pos != NO_NEIGHBOUR]
        products = {p.id: p for p in session.scalars(select(Product).where(Product.id.in_(ids)))}
        for rank, (pos, score) in enumerate(
            zip(found.positions[0], found.scores[0], strict=True), start=1
        ):
            if pos == NO_NEIGHBOUR:
                continue
            product = products[vectors.ids[pos]]
            hits.append(
                {
                    "rank": rank,
                    "id": product.id,
                    "score": round(float(score), 6),
                    **(product.meta or {}),
                }
            )
    result = {"model_id": space, "neighbours": hits}
    job.done = 1
    finish_job(job, result=result)
    log.info(
        "search done job=%s hits=%d seconds=%.2f", job_id, len(hits), time.perf_counter() - started
    )
    return result
