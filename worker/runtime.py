"""What a worker process holds for its whole life: settings, a database engine, the model, and
its copy of the spaces it works in."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import signals
from sqlalchemy.orm import Session

from core.db import make_engine, make_sessionmaker
from core.encoder import VGG16Encoder, load_encoder
from core.settings import Settings
from core.space_cache import SpaceCache

log = logging.getLogger(__name__)


class WorkerRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings.database_url)
        self._sessions = make_sessionmaker(self.engine)
        self._encoder: VGG16Encoder | None = None
        # Vectors and list ends kept between tasks, checked against the database on each use.
        self.cache = SpaceCache()

    @property
    def encoder(self) -> VGG16Encoder:
        if self._encoder is None:
            self._encoder = load_encoder(self.settings)
        return self._encoder

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session:
            try:
                yield session
            except BaseException:
                session.rollback()
                raise


_runtime: WorkerRuntime | None = None


def get_runtime(app: Any = None) -> WorkerRuntime:
    global _runtime
    if _runtime is None:
        from celery import current_app

        settings = (app or current_app).conf["lookalike_settings"]
        _runtime = WorkerRuntime(settings)
    return _runtime


def _start(app: Any) -> None:
    """Fresh engine for this process (never a pool inherited over fork), model loaded once."""
    global _runtime
    if _runtime is not None:
        _runtime.engine.dispose(close=False)
    _runtime = None
    runtime = get_runtime(app)
    log.info("worker process ready with model %s", runtime.encoder.model_id)


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
