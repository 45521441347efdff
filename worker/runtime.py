"""What a worker process holds for its whole life: its ``core.context.Context`` (settings, a
database engine of its own, the model, its cache of the spaces it works in)."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from core.context import Context
from core.settings import get_settings
from worker.queue import CeleryQueue

log = logging.getLogger(__name__)

_context: Context | None = None


def get_context(app: Celery | None = None) -> Context:
    """This process's context, built on first use from the ``LOOKALIKE_*`` settings."""
    global _context
    if _context is None:
        from celery import current_app

        _context = Context.create(get_settings(), CeleryQueue(app or current_app))
    return _context


def _start(app: Celery) -> None:
    """A fresh context for this process (never a pool inherited over fork), model loaded once."""
    global _context
    if _context is not None:
        _context.engine.dispose(close=False)
    _context = None
    context = get_context(app)
    log.info("worker process ready with model %s", context.encoder.model_id)


@signals.worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    from celery import current_app

    _start(current_app)


@signals.worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    # Prefork children load the model in worker_process_init; solo and thread pools run
    # tasks in this process, so it loads here.
    pool = getattr(sender, "pool_cls", None)
    module = getattr(pool, "__module__", str(pool))
    if "prefork" not in module:
        _start(sender.app)
