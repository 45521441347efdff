"""Jobs: their kinds, states and steps, and the records of what was asked, how far it got and
how it ended.

Every job goes through the same life: it is *submitted* (``core.submissions``: recorded as
``queued``, committed, its first steps handed to a queue), each step *runs* (``core.job_steps``,
called by a Celery task or by the in-process queue of the command line), and it *finishes*
(``finish_job``: ``succeeded`` or ``failed``, with a result or an error).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import JobNotFound
from core.models import ImageError, Job, utcnow
from core.pipeline import ImageFailure


class JobKind(StrEnum):
    INDEX = "index"
    ADD_PRODUCTS = "add_products"
    DELETE_PRODUCTS = "delete_products"
    SEARCH = "search"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    # An index job whose chunks are all embedded, while one worker builds the neighbour table.
    FINALISING = "finalising"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def shown(self) -> JobState:
        """The state as the API and the pages report it: finalising is part of running."""
        return JobState.RUNNING if self is JobState.FINALISING else self

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED)


class ChunkState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


class JobStep(StrEnum):
    """The steps jobs run in; each value is the name of the Celery task that runs it."""

    INDEX_CHUNK = "lookalike.index_chunk"
    FINALISE_INDEX = "lookalike.finalise_index"
    BUILD_BLOCK = "lookalike.build_block"
    ADD_PRODUCTS = "lookalike.add_products"
    DELETE_PRODUCTS = "lookalike.delete_products"
    SEARCH = "lookalike.search"


@dataclass(frozen=True)
class StepCall:
    """One step of one job, as a queue carries it: the step and its small arguments (ids)."""

    step: JobStep
    args: tuple[str | int, ...]


class JobQueue(Protocol):
    """Who runs the steps: Celery workers (``worker.queue.CeleryQueue``) or this very process
    (``cli.in_process.InProcessQueue``, the embedded default)."""

    def submit(self, session: Session, job: Job, calls: Sequence[StepCall]) -> None:
        """Commit ``session``, so that whoever runs the steps finds the job and what it needs,
        then hand ``calls`` over.

        Raises:
            QueueUnavailable: they could not be handed over; the job is withdrawn
                (``core.submissions.withdraw``: marked failed, what its request registered
                taken back) and that committed.
        """
        ...

    def send(self, call: StepCall) -> None:
        """Hand over the next step of a running job, after the current step committed."""
        ...


def state_of(job: Job) -> JobState:
    return JobState(job.state)


def create_job(
    session: Session, kind: JobKind, params: dict[str, Any] | None = None, total: int = 0
) -> Job:
    job = Job(
        id=str(uuid.uuid4()),
        kind=kind.value,
        state=JobState.QUEUED.value,
        params=params or {},
        total=total,
    )
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: str, lock: bool = False) -> Job:
    """The job ``job_id``; with ``lock``, its row locked until the transaction ends.

    Raises:
        JobNotFound: no such job.
    """
    query = select(Job).where(Job.id == job_id)
    if lock:
        query = query.with_for_update()
    job = session.scalars(query).one_or_none()
    if job is None:
        raise JobNotFound(job_id)
    return job


def start_job(job: Job, total: int | None = None) -> None:
    job.state = JobState.RUNNING.value
    job.started_at = job.started_at or utcnow()
    if total is not None:
        job.total = total


def finish_job(job: Job, error: str | None = None, result: dict[str, Any] | None = None) -> None:
    job.state = (JobState.FAILED if error else JobState.SUCCEEDED).value
    job.error = error
    if result is not None:
        job.result = result
    job.finished_at = utcnow()


def fail_job(session: Session, job_id: str, error: str) -> None:
    """Mark a job failed (a step gave up, or the command running it was interrupted)."""
    finish_job(get_job(session, job_id), error=error)


def record_failures(session: Session, job_id: str | None, failures: Sequence[ImageFailure]) -> None:
    """Keep each unusable photo and its reason against the job."""
    session.add_all(
        ImageError(job_id=job_id, product_id=f.product_id, path=f.source, message=f.message)
        for f in failures
    )


def job_errors(session: Session, job_id: str) -> list[ImageError]:
    return list(
        session.scalars(
            select(ImageError).where(ImageError.job_id == job_id).order_by(ImageError.id)
        )
    )


def recent_jobs(session: Session, limit: int = 20) -> list[Job]:
    return list(session.scalars(select(Job).order_by(Job.created_at.desc()).limit(limit)))
