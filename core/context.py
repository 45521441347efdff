"""What one process holds for its whole life: settings, its database sessions, the queue its
jobs go to, its reader of spaces, and (in processes that embed photos) the model.

Each entry point builds one (the command line, each worker process, the web app) and hands it
down, so that job steps and services take a context and a session instead of long parameter
lists. The model is loaded on first use, once per process, never at import.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from core.db import make_engine, make_sessionmaker
from core.encoder import ImageEncoder, load_encoder
from core.jobs import JobQueue
from core.settings import Settings
from core.space_cache import SpaceCache
from core.space_reader import SpaceReader


def _no_model() -> ImageEncoder:
    raise RuntimeError("this process never loads the model (the web app reads SQL only)")


@dataclass
class Context:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    queue: JobQueue
    spaces: SpaceReader
    load_model: Callable[[], ImageEncoder]

    @classmethod
    def create(
        cls,
        settings: Settings,
        queue: JobQueue,
        *,
        spaces: SpaceReader | None = None,
        encoder: ImageEncoder | None = None,
        loads_model: bool = True,
        engine_options: Mapping[str, Any] | None = None,
    ) -> Context:
        """A context on ``settings``' database. ``spaces`` defaults to a cache kept between
        jobs; ``encoder`` replaces the VGG16 model (tests); ``loads_model=False`` is for a
        process that must never load it; ``engine_options`` go to SQLAlchemy's engine."""
        engine = make_engine(settings.database_url, **(engine_options or {}))
        if encoder is not None:
            load: Callable[[], ImageEncoder] = functools.partial(lambda e: e, encoder)
        elif loads_model:
            load = functools.partial(load_encoder, settings)
        else:
            load = _no_model
        return cls(settings, engine, make_sessionmaker(engine), queue, spaces or SpaceCache(), load)

    @functools.cached_property
    def encoder(self) -> ImageEncoder:
        """The model, loaded on first use."""
        return self.load_model()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session of this process, rolled back if the block raises."""
        with self.sessions() as session:
            try:
                yield session
            except BaseException:
                session.rollback()
                raise

    def close(self) -> None:
        self.engine.dispose()
