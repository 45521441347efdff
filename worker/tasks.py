"""Tasks: one per job step, each taking ids and running ``core.job_steps`` on this process's
context, committing where the step says."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import DBAPIError, OperationalError

from core import logs, metrics
from core.errors import JobNotFound
from core.job_steps import run_step
from core.jobs import JobStep, StepCall, fail_job
from worker.runtime import get_context

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
        with logs.job_context(job_id):
            log.error("task failed job=%s task=%s error=%s", job_id, self.name, exc)
        try:
            with get_context().session() as session:
                fail_job(session, job_id, f"{type(exc).__name__}: {exc}")
                session.commit()
        except JobNotFound:
            pass


def _run(step: JobStep, *args: str | int) -> None:
    context = get_context()
    counted = metrics.work()
    name = step.value.removeprefix("lookalike.")  # the task's name without its namespace
    outcome = "failed"
    try:
        with (
            counted.job_step_seconds.labels(name).time(),
            logs.job_context(str(args[0])),
            context.session() as session,
        ):
            for _ in run_step(context, session, StepCall(step, args)):
                session.commit()
            session.commit()
        outcome = "done"
    finally:
        counted.job_steps.labels(name, outcome).inc()


@shared_task(name=JobStep.INDEX_CHUNK.value, base=JobTask)
def index_chunk(job_id: str, chunk_no: int) -> None:
    _run(JobStep.INDEX_CHUNK, job_id, chunk_no)


@shared_task(name=JobStep.FINALISE_INDEX.value, base=JobTask)
def finalise_index(job_id: str) -> None:
    _run(JobStep.FINALISE_INDEX, job_id)


@shared_task(name=JobStep.BUILD_BLOCK.value, base=JobTask)
def build_block(job_id: str, block_no: int) -> None:
    _run(JobStep.BUILD_BLOCK, job_id, block_no)


@shared_task(name=JobStep.ADD_PRODUCTS.value, base=JobTask)
def add_products(job_id: str) -> None:
    _run(JobStep.ADD_PRODUCTS, job_id)


@shared_task(name=JobStep.DELETE_PRODUCTS.value, base=JobTask)
def delete_products(job_id: str) -> None:
    _run(JobStep.DELETE_PRODUCTS, job_id)


@shared_task(name=JobStep.SEARCH.value, base=JobTask)
def search(job_id: str) -> None:
    _run(JobStep.SEARCH, job_id)
