"""Tasks: thin wrappers over ``core.services`` that take ids, re-read, and commit."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import DBAPIError, OperationalError

from core.jobs import finish_job
from core.services import (
    JobNotFound,
    delete_job_products,
    embed_chunk,
    embed_job_products,
    finalise_index,
    finish_chunk,
    get_job,
    link_job_products,
    search_job,
)
from worker.runtime import get_runtime

log = logging.getLogger(__name__)

# Hiccups worth retrying with backoff; anything else fails the job at once.
RETRYABLE = (OperationalError, DBAPIError, BrokerError, ConnectionError)


class JobTask(Task):
    """Marks the job failed when a task gives up (retries spent, time limit, bug)."""

    autoretry_for = RETRYABLE
    retry_backoff = True
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = 5
    acks_late = True
    reject_on_worker_lost = True

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        job_id = args[0] if args else kwargs.get("job_id")
        log.error("task failed job=%s task=%s error=%s", job_id, self.name, exc)
        try:
            with get_runtime().session() as session:
                job = get_job(session, job_id)
                finish_job(job, error=f"{type(exc).__name__}: {exc}")
                session.commit()
        except JobNotFound:
            pass


@shared_task(name="lookalike.index_chunk", base=JobTask)
def index_chunk(job_id: str, chunk_no: int) -> None:
    runtime = get_runtime()
    s = runtime.settings
    with runtime.session() as session:
        for _ in embed_chunk(
            session, runtime.encoder, job_id, chunk_no, s.batch_size, s.decode_workers
        ):
            session.commit()
        last = finish_chunk(session, job_id, chunk_no)
        session.commit()
    if last:
        finalise_index_task.delay(job_id)


@shared_task(name="lookalike.finalise_index", base=JobTask)
def finalise_index_task(job_id: str) -> None:
    runtime = get_runtime()
    with runtime.session() as session:
        finalise_index(session, job_id, runtime.encoder.model_id, runtime.settings, runtime.cache)
        session.commit()


@shared_task(name="lookalike.add_products", base=JobTask)
def add_products(job_id: str) -> None:
    runtime = get_runtime()
    s = runtime.settings
    with runtime.session() as session:
        for _ in embed_job_products(
            session, runtime.encoder, job_id, s.batch_size, s.decode_workers
        ):
            session.commit()
        link_job_products(session, job_id, runtime.encoder.model_id, s, runtime.cache)
        session.commit()


@shared_task(name="lookalike.delete_products", base=JobTask)
def delete_products(job_id: str) -> None:
    runtime = get_runtime()
    s = runtime.settings
    with runtime.session() as session:
        delete_job_products(session, job_id, runtime.encoder.model_id, s, runtime.cache)
        session.commit()


@shared_task(name="lookalike.search", base=JobTask)
def search(job_id: str) -> None:
    runtime = get_runtime()
    s = runtime.settings
    with runtime.session() as session:
        search_job(session, runtime.encoder, job_id, s, runtime.cache)
        session.commit()
