"""The embedded default: jobs run in this process, step by step, on one session.

:class:`InProcessQueue` is the ``core.jobs.JobQueue`` of ``lookalike index`` when no broker is
set. It runs the very steps a worker runs (``core.job_steps``), in the order they are sent,
committing where each step says; so the embedded default cannot drift from the service.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

from sqlalchemy.orm import Session

from core import logs
from core.catalogue import CatalogueItem
from core.context import Context
from core.job_steps import run_step
from core.jobs import StepCall
from core.models import Job
from core.submissions import submit_index


class InProcessQueue:
    def __init__(self) -> None:
        self._calls: deque[StepCall] = deque()

    def submit(self, session: Session, job: Job, calls: Sequence[StepCall]) -> None:
        session.commit()  # as a worker would find it; an interrupted run keeps its products
        self._calls.extend(calls)

    def send(self, call: StepCall) -> None:
        self._calls.append(call)

    def run(self, context: Context, session: Session) -> Iterator[StepCall]:
        """Run every step sent so far, and those they send, in order; yields after each
        commit, with the step it belongs to."""
        while self._calls:
            call = self._calls.popleft()
            with logs.job_context(str(call.args[0])):
                for _ in run_step(context, session, call):
                    session.commit()
                    yield call
                session.commit()
            yield call


def index_catalogue(
    context: Context,
    session: Session,
    items: Sequence[CatalogueItem],
    *,
    source: str = "",
    refit: bool = False,
) -> Iterator[Job]:
    """Index ``items`` in this process: submit the index job to the context's in-process queue
    and run its steps here. Yields the job after each commit (refreshed: its progress as the
    steps left it); when the iteration ends the job has finished."""
    queue = context.queue
    if not isinstance(queue, InProcessQueue):
        raise TypeError("index_catalogue runs on an in-process queue; workers run the others")
    job, _ = submit_index(context, session, items, source=source, refit=refit)
    yield job
    for _ in queue.run(context, session):
        session.refresh(job)
        yield job
