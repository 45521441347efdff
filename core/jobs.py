"""Job records: what was asked, how far it got, and how it ended."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import ImageError, Job, utcnow
from core.pipeline import ImageFailure

STATES = ("queued", "running", "succeeded", "failed")


def create_job(
    session: Session, kind: str, params: dict[str, Any] | None = None, total: int = 0
) -> Job:
    job = Job(id=str(uuid.uuid4()), kind=kind, state="queued", params=params or {}, total=total)
    session.add(job)
    session.flush()
    return job


def start_job(job: Job, total: int | None = None) -> None:
    job.state = "running"
    job.started_at = job.started_at or utcnow()
    if total is not None:
        job.total = total


def finish_job(job: Job, error: str | None = None, result: dict[str, Any] | None = None) -> None:
    job.state = "failed" if error else "succeeded"
    job.error = error
    if result is not None:
        job.result = result
    job.finished_at = utcnow()


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
