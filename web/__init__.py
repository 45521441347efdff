"""The Flask application: JSON API and pages. It never loads the model.

Owns HTTP: parsing requests, shaping responses, pages and their templates, and the one handler
that turns errors into responses. Views call one ``core`` function each; jobs go to the workers
through ``worker.queue``. May import ``core`` and ``worker`` (for the queue), nothing above.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, g

from core.context import Context
from core.db import make_read_engine
from core.lookalikes import LookalikesReader
from core.read_cache import ReadCache
from core.settings import get_settings
from core.space_reader import SqlSpaceReader
from web.json_provider import OrjsonProvider
from worker.app import create_celery
from worker.queue import CeleryQueue

# A fixed pool per engine and process: under gevent (`lookalike serve`) a process may run many
# requests at once, and overflow connections beyond the pool would be opened and closed per
# request; requests past the pool wait (cooperatively) for a pooled connection instead.
WEB_POOL: dict[str, int] = {"pool_size": 8, "max_overflow": 0}


def web_pool(url: str) -> dict[str, int]:
    """``WEB_POOL`` where the engine has a pool of that kind (SQLite keeps its own)."""
    return {} if url.startswith("sqlite") else WEB_POOL


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """App factory: defaults, then ``LOOKALIKE_*`` variables, then ``test_config``."""
    app = Flask(__name__)
    settings = get_settings(**(test_config or {}))
    app.config.update(
        LOOKALIKE=settings,
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
    )
    app.json = OrjsonProvider(app)
    celery = app.extensions["celery"] = create_celery(settings)
    pool = web_pool(settings.database_url)
    context = Context.create(
        settings,
        CeleryQueue(celery),
        spaces=SqlSpaceReader(),
        loads_model=False,
        engine_options=pool,
    )
    app.extensions["lookalike.context"] = context
    app.extensions["lookalike.engine"] = context.engine
    app.extensions["lookalike.sessions"] = context.sessions
    # The lookalikes API reads with one statement per request, on a pool of its own.
    app.extensions["lookalike.read_engine"] = read_engine = make_read_engine(
        settings.database_url, **pool
    )
    app.extensions["lookalike.lookalikes"] = LookalikesReader(read_engine)
    app.extensions["lookalike.read_cache"] = ReadCache(
        read_engine, settings.read_cache_entries, settings.read_cache_seconds
    )

    @app.teardown_appcontext
    def close_session(_exc: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is not None:
            session.close()

    from web import api, errors, headers, metrics, pages, request_ids

    errors.register(app)
    headers.register(app)
    request_ids.register(app)
    metrics.register(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    return app
