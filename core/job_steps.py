"""The steps of every kind of job, the same whoever runs them: a Celery task on a worker, or the
command line's in-process queue (the embedded default).

A step takes the process's ``Context``, a ``Session`` the runner owns, and small arguments
(ids); it re-reads what it needs, and yields where the runner must commit (after each embedded
batch, and before it hands the next step to the queue). Every write is an upsert or a
delete-then-insert keyed by product and model, so a step that runs twice (a redelivered task)
changes nothing more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core import neighbour_build, nuisance, partition, projected, twins
from core.approximate import BuildSearch
from core.context import Context
from core.errors import InvalidImage, JobNotFound
from core.index_summary import index_summary
from core.jobs import (
    ChunkState,
    JobState,
    JobStep,
    StepCall,
    finish_job,
    get_job,
    record_failures,
    start_job,
    state_of,
)
from core.media import job_photos, remove_unreferenced
from core.models import JobChunk, Product
from core.neighbour_table import lock_neighbour_table
from core.neighbour_updates import delete_products, update_lists
from core.neighbours import NO_NEIGHBOUR, search
from core.pipeline import ImageFailure
from core.products import embed_pending, pending_products
from core.refits import refit_when_grown
from core.spaces import (
    ProjectionSettings,
    Space,
    project_queries,
    projection_of,
    resolve_space,
)
from core.uploads import take_back
from core.vectors import VectorSet

log = logging.getLogger(__name__)
Commits = Iterator[None]


def run_step(context: Context, session: Session, call: StepCall) -> Commits:
    """Run one step; the caller commits at each yield, and once more when it ends."""
    commits = STEPS[call.step](context, session, *call.args)
    if commits is not None:
        yield from commits


def _space(context: Context, session: Session, **options: bool) -> Space:
    """The space this job works in, resolved once for it."""
    s = context.settings
    wanted = ProjectionSettings.of(s)

    def source_basis(vectors: VectorSet, rank: int) -> np.ndarray | None:
        return nuisance.source_basis(
            session,
            context.encoder,
            vectors,
            rank,
            batch_size=s.batch_size,
            workers=s.decode_workers,
            max_pixels=s.max_image_pixels,
        )

    space = resolve_space(
        session, context.encoder.model_id, wanted, source_basis=source_basis, **options
    )
    return space.grouped(s.partition_columns)


def _fill_projected(
    session: Session, space: Space, product_ids: Sequence[str] | None = None
) -> int:
    """The projected rows of the space's vectors (of ``product_ids`` only, when given) that
    have none yet (``core.projected``): what processes read instead of the embeddings."""
    projection = projection_of(session, space)
    if projection is None or space.projection_tag is None:
        return 0
    return projected.fill(
        session, space.embedding_model_id, space.projection_tag, projection, product_ids
    )


# --- index: chunks embedded anywhere, then one finalise --------------------------------


def index_chunk(context: Context, session: Session, job_id: str, chunk_no: int) -> Commits:
    """Embed one chunk of an index job; the chunk that finishes the job sends the finalise."""
    chunk = session.get(JobChunk, (job_id, chunk_no))
    if chunk is None:
        raise JobNotFound(f"{job_id}/{chunk_no}")
    if not state_of(get_job(session, job_id)).finished:
        yield from _embed_chunk(context, session, chunk)
    last = _finish_chunk(session, job_id, chunk_no)
    yield  # the chunk is done before anyone may finalise
    if last:
        context.queue.send(StepCall(JobStep.FINALISE_INDEX, (job_id,)))


def _embed_chunk(context: Context, session: Session, chunk: JobChunk) -> Commits:
    s = context.settings
    pending = pending_products(session, context.encoder.model_id, chunk.product_ids)
    if chunk.state == ChunkState.QUEUED:
        # Counted on the first run only: a redelivered chunk finds its own earlier work.
        chunk.skipped = chunk.total - len(pending)
    chunk.state = ChunkState.RUNNING.value
    chunk.done = chunk.total - len(pending)
    started = time.perf_counter()
    failed = 0
    for batch in embed_pending(
        session, context.encoder, pending, s.batch_size, s.decode_workers, chunk.job_id
    ):
        chunk.done += batch.size
        failed += len(batch.failures)
        neighbour_build.set_progress(session, chunk.job_id)
        yield
    log.info(
        "chunk done job=%s chunk=%d images=%d embedded=%d failed=%d seconds=%.1f",
        chunk.job_id,
        chunk.chunk_no,
        chunk.total,
        len(pending) - failed,
        failed,
        time.perf_counter() - started,
    )


def _finish_chunk(session: Session, job_id: str, chunk_no: int) -> bool:
    """Mark a chunk done. True when this call finished the job's last chunk and so must have
    the neighbour table built (exactly one caller gets True)."""
    session.execute(
        update(JobChunk)
        .where(JobChunk.job_id == job_id, JobChunk.chunk_no == chunk_no)
        .values(state=ChunkState.DONE.value, done=JobChunk.total)
    )
    neighbour_build.set_progress(session, job_id)
    session.flush()
    job = get_job(session, job_id, lock=True)  # serialises the last chunks' checks
    left = session.scalar(
        select(func.count())
        .select_from(JobChunk)
        .where(JobChunk.job_id == job_id, JobChunk.state != ChunkState.DONE.value)
    )
    if left or state_of(job) is not JobState.RUNNING:
        return False
    job.state = JobState.FINALISING.value
    return True


def finalise_index(context: Context, session: Session, job_id: str) -> Commits:
    """Once every chunk of an index job is embedded: fix the space (fitting its projection if
    due) and the rows, split the neighbour build into blocks, and send them
    (``core.neighbour_build``). Run again (redelivered), it sends the blocks not done."""
    job = get_job(session, job_id)
    if state_of(job) not in (JobState.FINALISING, JobState.RUNNING):
        return
    s = context.settings
    lock_neighbour_table(session)  # before the projection is chosen: one fit at a time
    space = _space(context, session, refit=bool(job.params.get("refit")))
    projected_rows = _fill_projected(session, space)
    job.state = JobState.FINALISING.value
    pending = neighbour_build.plan_build(
        session,
        job,
        space,
        context.spaces,
        s.build_block_rows,
        BuildSearch.of(s),
        s.neighbours,
    )
    log.info(
        "build planned job=%s space=%s blocks=%d projected_rows_written=%d",
        job_id,
        space.id,
        len(pending),
        projected_rows,
    )
    yield  # the plan is committed before any block may start
    for block_no in pending:
        context.queue.send(StepCall(JobStep.BUILD_BLOCK, (job_id, block_no)))


def build_block(context: Context, session: Session, job_id: str, block_no: int) -> Commits:
    """Compute and write one block of an index job's neighbour build; the block that finds
    every other one done finishes the job."""
    job = get_job(session, job_id)
    plan = neighbour_build.BuildPlan.of(job)
    if state_of(job).finished or plan is None:
        return
    s = context.settings
    started = time.perf_counter()
    planned = Space.parse(plan.space_id)
    times = yield from neighbour_build.run_block(
        session, job_id, block_no, planned, context.spaces, s.neighbours, s.block_size
    )
    log.info(
        "block done job=%s block=%d seconds=%.1f %s",
        job_id,
        block_no,
        time.perf_counter() - started,
        times,
    )
    if not neighbour_build.is_last_block(session, job_id):
        return
    started = time.perf_counter()
    lock_neighbour_table(session)
    # The space as the settings give it now: a change of setting since the plan rebuilds.
    space = _space(context, session)
    written = neighbour_build.finish_build(
        session, job, space, context.spaces, s.neighbours, s.block_size, BuildSearch.of(s)
    )
    recall = neighbour_build.build_recall(session, job_id)
    summary = index_summary(session, job, context.encoder.model_id, space, written, recall)
    finish_job(job, result=summary.as_result())
    log.info(
        "index done job=%s products=%d lists_written=%d finish_seconds=%.1f",
        job_id,
        summary.embedded,
        written,
        time.perf_counter() - started,
    )


# --- add, delete, search ----------------------------------------------------------------


def add_products(context: Context, session: Session, job_id: str) -> Commits:
    """Embed an add job's products, give them their lists and update every list they enter.

    A photo that still cannot be indexed (it passed the check on arrival) is recorded against
    the job and taken back: the product it created is deleted, a product whose photo it replaced
    gets its former photo back. The job fails when none of its photos could be indexed. Once
    that has committed, the photos nothing refers to any more (failed ones, replaced ones) are
    removed from the media folder.
    """
    s = context.settings
    job = get_job(session, job_id)
    if state_of(job).finished:  # redelivered after it finished: only the cleaning may be left
        remove_unreferenced(session, s.media_dir, job_photos(job.params))
        return
    ids: list[str] = list(job.params.get("product_ids", []))
    pending = pending_products(session, context.encoder.model_id, ids)
    start_job(job, total=len(ids))
    job.done = len(ids) - len(pending)
    yield
    for batch in embed_pending(
        session, context.encoder, pending, s.batch_size, s.decode_workers, job_id
    ):
        job.done += batch.size
        yield
    started = time.perf_counter()
    lock_neighbour_table(session)
    # Still without a vector of the photo this job registered (not of one another request put
    # there since): it could not be indexed.
    photos = job.params.get("photos") or {}
    failed = [
        pid
        for pid, path in pending_products(session, context.encoder.model_id, ids)
        if pid not in photos or photos[pid]["image_path"] == path
    ]
    taken = take_back(session, job.params, failed, metadata=False)
    space = _space(context, session)
    # A changed photo, or metadata that moved the product to another lookalike group.
    former = {pid: photo.get("meta") for pid, photo in (job.params.get("previous") or {}).items()}
    moved = partition.moved(session, space.partition, former)
    stale = sorted(set(job.params.get("replaced", [])) | set(moved))
    written = update_lists(
        session, space, context.spaces, s.neighbours, s.block_size, stale_ids=stale
    )
    _fill_projected(session, space, ids)
    result = {
        "model_id": space.id,
        "lists_written": written,
        "failed": len(failed),
        "failed_ids": failed,
        "removed": taken.removed,
        "restored": taken.restored,
    }
    error = None
    if ids and len(failed) == len(ids):
        error = f"none of the {len(ids)} photos could be indexed (see the job's errors)"
    finish_job(job, error=error, result=result)
    log.info(
        "add done job=%s products=%d failed=%d lists_written=%d seconds=%.1f",
        job_id,
        job.total,
        len(failed),
        written,
        time.perf_counter() - started,
    )
    yield  # the products taken back and the job's end are committed before files go
    remove_unreferenced(session, s.media_dir, job_photos(job.params))
    yield from refit_when_grown(context, session, space)


def delete_job_products(context: Context, session: Session, job_id: str) -> Commits:
    """Delete a job's products and repair every list that held them; once that has
    committed, remove their photos from the media folder where nothing else uses them."""
    s = context.settings
    job = get_job(session, job_id)
    ids: list[str] = list(job.params.get("product_ids", []))
    start_job(job, total=len(ids))
    lock_neighbour_table(session)
    photos = set(session.scalars(select(Product.image_path).where(Product.id.in_(ids))))
    space = _space(context, session)
    written = delete_products(session, ids, space, context.spaces, s.neighbours, s.block_size)
    job.done = len(ids)
    finish_job(job, result={"deleted": ids, "lists_written": written})
    log.info("delete done job=%s products=%d lists_written=%d", job_id, len(ids), written)
    yield
    remove_unreferenced(session, s.media_dir, photos)


def search_photo(context: Context, session: Session, job_id: str) -> Commits:
    """Embed a search job's photo and find its top-k in the catalogue, without adding it; once
    the job's end has committed, the photo is removed (unless a product uses the same file)."""
    job = get_job(session, job_id)
    media_dir = context.settings.media_dir
    path = str(job.params["image_path"])
    if state_of(job).finished:  # redelivered after it finished: only the cleaning may be left
        remove_unreferenced(session, media_dir, [path])
        return
    start_job(job, total=1)
    started = time.perf_counter()
    encoder = context.encoder
    try:
        query = encoder.embed_batch(encoder.prepare(path)[None, ...])
    except InvalidImage as exc:
        name = str(job.params.get("filename", path))
        record_failures(session, job_id, [ImageFailure("", name, exc.message)])
        finish_job(job, error=f"{name}: {exc.message}")
    else:
        # The space the stored lists live in; a search never fits a projection.
        space = _space(context, session, fit=False)
        hits = _nearest_products(context, session, space, project_queries(session, space, query))
        job.done = 1
        finish_job(job, result={"model_id": space.id, "neighbours": hits})
        log.info(
            "search done job=%s hits=%d seconds=%.2f",
            job_id,
            len(hits),
            time.perf_counter() - started,
        )
    yield
    remove_unreferenced(session, media_dir, [path])


def _nearest_products(
    context: Context, session: Session, space: Space, query: Any
) -> list[dict[str, Any]]:
    vectors, _, _ = twins.visible(session, context.spaces.vectors(session, space))
    if not vectors.count:
        return []
    s = context.settings
    found = search(vectors.vectors, query, s.neighbours, s.block_size)
    held = found.positions[0] != NO_NEIGHBOUR
    ids = vectors.ids_at(found.positions[0][held])
    products = {p.id: p for p in session.scalars(select(Product).where(Product.id.in_(ids)))}
    hits: list[dict[str, Any]] = []
    ranked = zip((np.flatnonzero(held) + 1).tolist(), ids, found.scores[0][held], strict=True)
    for rank, product_id, score in ranked:
        product = products[product_id]
        hits.append(
            {
                # The service's own fields last: metadata can never shadow them.
                **(product.meta or {}),
                "rank": rank,
                "id": product.id,
                "score": round(float(score), 6),
            }
        )
    return hits


STEPS: dict[JobStep, Callable[..., Commits | None]] = {
    JobStep.INDEX_CHUNK: index_chunk,
    JobStep.FINALISE_INDEX: finalise_index,
    JobStep.BUILD_BLOCK: build_block,
    JobStep.ADD_PRODUCTS: add_products,
    JobStep.DELETE_PRODUCTS: delete_job_products,
    JobStep.SEARCH: search_photo,
}
