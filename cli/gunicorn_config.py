"""gunicorn hooks of `lookalike serve` (``--config python:cli.gunicorn_config``)."""

from __future__ import annotations

import gc
from typing import Any

# gunicorn's default access line, with the time taken and the request's id (web.request_ids).
access_log_format = (
    '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(L)ss request=%({x-request-id}o)s'
)


def post_worker_init(worker: Any) -> None:
    """Once the app is loaded in a worker process, move everything it holds so far (modules,
    the app, SQLAlchemy's compiled statements) out of the garbage collector's view: the
    collector's full passes then look at what requests allocate only, and stop adding tens of
    milliseconds to an unlucky request (BENCHMARKS.md, the read path's tail)."""
    gc.collect()
    gc.freeze()


def on_starting(server: Any) -> None:
    """The app's own loggers (root) and gunicorn's error and access logs in
    ``LOOKALIKE_LOG_FORMAT``, each line with its request id (``core.logs``); workers inherit
    this when they fork."""
    import logging

    from core import logs
    from core.settings import get_settings

    fmt = get_settings().log_format
    handler = logs.configure(fmt, logging.INFO)
    for name in ("gunicorn.error", "gunicorn.access"):
        for gunicorn_handler in logging.getLogger(name).handlers:
            gunicorn_handler.setFormatter(handler.formatter)
            for found in handler.filters:
                gunicorn_handler.addFilter(found)


def child_exit(server: Any, worker: Any) -> None:
    """A gunicorn worker's gauges leave /metrics with it (prometheus_client multiprocess)."""
    import os

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
