"""gunicorn hooks of `lookalike serve` (``--config python:cli.gunicorn_config``)."""

from __future__ import annotations

import gc
from typing import Any


def post_worker_init(worker: Any) -> None:
    """Once the app is loaded in a worker process, move everything it holds so far (modules,
    the app, SQLAlchemy's compiled statements) out of the garbage collector's view: the
    collector's full passes then look at what requests allocate only, and stop adding tens of
    milliseconds to an unlucky request (BENCHMARKS.md, the read path's tail)."""
    gc.collect()
    gc.freeze()
