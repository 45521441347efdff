"""What a worker process holds for its whole life: its ``core.context.Context`` (settings, a
database engine of its own, the model, its cache of the spaces it works in)."""

from __future__ import annotations

import gc
import logging
from typing import Any

from celery import Celery, signals

from core.context import Context
from core.settings import get_settings
from worker.queue import CeleryQueue

log = logging.getLogger(__name__)

_context: Context | None = None

# The collector's youngest generation is collected after this many more container objects
# allocated than freed (Python's default: 700). An add at a million products makes a new list
# of a million ids (and one more for the set without twins); with the default, every other add
# met a collection that walked two to four such young lists, 60-100 ms of one add, and one in
# four a second one (BENCHMARKS.md, a seventh day). Collected this much less often, most of
# those lists are freed by their reference counts before any collection sees them.
_YOUNGEST_THRESHOLD = 50_000


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
    # What the process holds for its life (modules, TensorFlow's objects, the model) leaves
    # the collector's view, so that its full passes look at what tasks allocate only.
    gc.collect()
    gc.freeze()
    gc.set_threshold(_YOUNGEST_THRESHOLD, *gc.get_threshold()[1:])
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
