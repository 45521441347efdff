"""Jobs handed to the workers through Celery: the ``core.jobs.JobQueue`` of the web app, of the
workers themselves (a step's follow-up) and of ``lookalike index`` when a broker is set."""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery
from sqlalchemy.orm import Session

from core.errors import QueueUnavailable
from core.jobs import StepCall
from core.models import Job
from core.submissions import withdraw


class CeleryQueue:
    def __init__(self, app: Celery) -> None:
        self.app = app

    def submit(self, session: Session, job: Job, calls: Sequence[StepCall]) -> None:
        session.commit()  # a worker must find the job and what it needs
        try:
            for call in calls:
                self.send(call)
        except Exception as exc:  # kombu raises several unrelated types for an unreachable broker
            # Nothing half-stored: the job is failed and what its request registered undone.
            withdraw(session, job, f"could not enqueue: {exc}")
            session.commit()
            raise QueueUnavailable(f"job {job.id} could not be queued: {exc}") from exc

    def send(self, call: StepCall) -> None:
        self.app.send_task(call.step.value, args=list(call.args))
