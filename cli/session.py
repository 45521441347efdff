"""The command line's database sessions and its per-process context."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from core.context import Context
from core.db import make_engine, make_sessionmaker
from core.jobs import JobQueue
from core.settings import Settings
from core.space_reader import SqlSpaceReader


@contextmanager
def sessions(settings: Settings) -> Iterator[Session]:
    """One session on the settings' database, for a command that only reads or records."""
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            yield session
    finally:
        engine.dispose()


def command_context(settings: Settings) -> Context:
    """This command's context: jobs go to the workers when a broker is set, else they run here;
    a command reads each space once, so no cache is kept."""
    queue: JobQueue
    if settings.broker_url:
        from worker.app import create_celery
        from worker.queue import CeleryQueue

        queue = CeleryQueue(create_celery(settings))
    else:
        from cli.in_process import InProcessQueue

        queue = InProcessQueue()
    return Context.create(settings, queue, spaces=SqlSpaceReader())
