"""Submitting jobs: each function validates what it is given, records the job (and what it
needs: products, photos, chunks) in the caller's session, and hands the job's first steps to
the process's queue, which commits before it does. The web views and the command line call one
of these per request or command; what runs next is ``core.job_steps``.

Nothing is left half-stored when the queue cannot take a job (the broker is down): the queue
commits, fails to send, and calls ``withdraw``, which marks the job failed and takes back what
its request registered (products created are deleted, replaced ones get their former photo and
metadata back), and commits that; then the submission removes the photos the request wrote,
which nothing refers to any more. Committing first and undoing on failure, rather than sending
first, keeps the rule that a worker always finds the job it is handed; checking the broker
before committing would still leave the moment between the check and the send uncovered.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.orm import Session

from core.catalogue import CatalogueItem
from core.context import Context
from core.errors import ProductNotFound, QueueUnavailable, Rejected
from core.jobs import JobKind, JobStep, StepCall, create_job, finish_job, start_job
from core.media import remove_unreferenced, store
from core.models import Job, JobChunk, Product
from core.products import ProductSync, sync_products
from core.uploads import (
    Accepted,
    MetadataSheet,
    Upload,
    accept_uploads,
    check_upload,
    take_back,
)


def submit_index(
    context: Context,
    session: Session,
    items: Sequence[CatalogueItem],
    *,
    source: str,
    refit: bool = False,
) -> tuple[Job, ProductSync]:
    """Register a catalogue's products and queue their embedding in chunks of
    ``LOOKALIKE_CHUNK_SIZE``; the last chunk to finish queues the neighbour-table build."""
    synced = sync_products(session, items)
    params = {"path": source, "refit": refit, "products": synced.as_dict()}
    job = create_job(session, JobKind.INDEX, params)
    chunks = _plan_chunks(session, job, [item.product_id for item in items], context)
    calls = [StepCall(JobStep.INDEX_CHUNK, (job.id, number)) for number in range(chunks)]
    # Nothing to embed: straight to the table.
    context.queue.submit(session, job, calls or [StepCall(JobStep.FINALISE_INDEX, (job.id,))])
    return job, synced


def _plan_chunks(session: Session, job: Job, product_ids: Sequence[str], context: Context) -> int:
    """Split an index job's products into chunks; returns how many."""
    size = context.settings.chunk_size
    ids = sorted(product_ids)
    chunks = [ids[start : start + size] for start in range(0, len(ids), size)]
    for number, chunk in enumerate(chunks):
        session.add(JobChunk(job_id=job.id, chunk_no=number, product_ids=chunk, total=len(chunk)))
    start_job(job, total=len(ids))
    return len(chunks)


def submit_add_products(
    context: Context, session: Session, uploads: list[Upload], sheet: MetadataSheet | None = None
) -> tuple[Job, Accepted]:
    """Check uploaded photos, store and register the good ones, and queue their indexing; with
    ``sheet``, each photo takes its row's metadata (under what the upload gives itself).

    Raises:
        UploadRejected: every photo was refused (nothing is stored).
    """
    s = context.settings
    refused: list[Rejected] = []
    if sheet is not None:
        uploads, refused = sheet.applied(uploads)
    accepted = accept_uploads(session, uploads, s.media_dir, s.max_image_bytes, s.max_image_pixels)
    accepted.rejected[:0] = refused
    params = accepted.as_params()
    job = create_job(session, JobKind.ADD_PRODUCTS, params, total=len(accepted.product_ids))
    calls = [StepCall(JobStep.ADD_PRODUCTS, (job.id,))]
    _submit(context, session, job, calls, accepted.written)
    return job, accepted


def submit_search(context: Context, session: Session, data: bytes, filename: str | None) -> Job:
    """Store a search photo (not added to the catalogue) and queue the search.

    Raises:
        InvalidImage: the file cannot be a photo.
    """
    s = context.settings
    image = store(s.media_dir, data, check_upload(data, s.max_image_bytes, s.max_image_pixels))
    params = {"image_path": str(image.path), "filename": filename}
    job = create_job(session, JobKind.SEARCH, params, total=1)
    written = [image.path] if image.written else []
    _submit(context, session, job, [StepCall(JobStep.SEARCH, (job.id,))], written)
    return job


def _submit(
    context: Context, session: Session, job: Job, calls: list[StepCall], written: list[Path]
) -> None:
    """Hand a job to the queue; when it cannot take it, the photos this request wrote go too
    (the queue has withdrawn the job and committed that)."""
    try:
        context.queue.submit(session, job, calls)
    except QueueUnavailable:
        remove_unreferenced(session, context.settings.media_dir, written)
        raise


def withdraw(session: Session, job: Job, error: str) -> None:
    """Mark a job that was committed but could not be queued failed, and take back what its
    request registered, so nothing of it stays half-stored. Never commits (the queue does).

    An index job's products stay registered: they are the folder's, and indexing it again
    embeds them.
    """
    finish_job(job, error=error)
    if job.kind == JobKind.ADD_PRODUCTS.value:
        take_back(session, job.params, list(job.params.get("product_ids", [])))


def submit_delete(context: Context, session: Session, product_id: str) -> Job:
    """Queue the deletion of a product and the repair of every list that held it.

    Raises:
        ProductNotFound: no such product.
    """
    if session.get(Product, product_id) is None:
        raise ProductNotFound(product_id)
    job = create_job(session, JobKind.DELETE_PRODUCTS, {"product_ids": [product_id]}, total=1)
    context.queue.submit(session, job, [StepCall(JobStep.DELETE_PRODUCTS, (job.id,))])
    return job
