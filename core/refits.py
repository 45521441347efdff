"""Fitting a catalogue's projection again once adds have grown it well past what it was fitted on.

A projection (``core.projection``) is fitted on the catalogue an index job sees and then frozen,
so that every add is projected with the same parameters and stays exact. A catalogue that an
index job fitted at half its size and that adds then doubled keeps a projection that saw only
that half: its whitening and its photo-source directions (``core.nuisance``) were learned
without the newcomers, and when those came from another source (a supplier's thumbnails),
lookalikes between old and new photos suffer (QUALITY.md, "Photo sources"). So the add that
brings the catalogue to ``LOOKALIKE_REFIT_GROWTH`` times its fitted size queues an index job of
the stored catalogue with a refit: nothing is embedded again, the projection is fitted on what
the catalogue now holds and every list is rebuilt in the new space, by the same build blocks as
any index job. With the default growth of 1.5, a catalogue grown by adds from a thousand to a
million products is rebuilt 17 times, in all about three rebuilds at its final size (each is
two thirds of the next); a catalogue that doubles through adds gets its projection refitted
before it has doubled, whatever the size of each add.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.context import Context
from core.jobs import JobKind, JobState, JobStep, StepCall, create_job, start_job
from core.models import Job
from core.neighbour_table import lock_neighbour_table
from core.spaces import ProjectionSettings, Space, refit_due, resolve_space

log = logging.getLogger(__name__)

STORED = "stored catalogue"  # an index job's source when it indexes what is registered


def queue_refit_when_grown(context: Context, session: Session, space: Space) -> Job | None:
    """After an add in ``space`` has committed: when the catalogue has grown enough since its
    projection was fitted, and no index job is unfinished (which would fit or build itself),
    record an index job with a refit and return it; the caller commits, then sends its
    finalise step (:func:`refit_when_grown`). One add at a time decides, under the table's lock."""
    growth = context.settings.refit_growth
    if refit_due(session, space, growth) is None:
        return None
    lock_neighbour_table(session)
    # Again under the lock, with the newest projection: a refit may have ended since this add
    # resolved its space.
    newest = resolve_space(
        session, space.embedding_model_id, ProjectionSettings.of(context.settings), fit=False
    )
    reason = refit_due(session, newest, growth)
    if reason is None:
        return None
    unfinished = session.scalar(
        select(Job.id)
        .where(
            Job.kind == JobKind.INDEX.value,
            Job.state.in_([state.value for state in JobState if not state.finished]),
        )
        .limit(1)
    )
    if unfinished is not None:
        return None
    job = create_job(session, JobKind.INDEX, {"path": STORED, "refit": True, "reason": reason})
    start_job(job, total=0)  # every vector is stored: straight to the build
    log.info("refit queued job=%s: %s", job.id, reason)
    return job


def refit_when_grown(context: Context, session: Session, space: Space) -> Iterator[None]:
    """The end of an add job's step: queue the refit when it is due (yields to commit the job
    before its finalise step is sent)."""
    job = queue_refit_when_grown(context, session, space)
    if job is not None:
        yield
        context.queue.send(StepCall(JobStep.FINALISE_INDEX, (job.id,)))
