"""The Flask application: JSON API and pages. It never loads the model."""

from __future__ import annotations

from typing import Any

from flask import Flask, g

from core.catalogue_queries import LookalikesReader
from core.db import make_engine, make_read_engine, make_sessionmaker
from core.settings import get_settings
from web.json_provider import OrjsonProvider
from worker.app import create_celery


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """App factory: defaults, then ``LOOKALIKE_*`` variables, then ``test_config``."""
    app = Flask(__name__)
    settings = get_settings(**(test_config or {}))
    app.config.update(
        LOOKALIKE=settings,
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
    )
    app.json = OrjsonProvider(app)
    engine = make_engine(settings.database_url)
    app.extensions["lookalike.engine"] = engine
    app.extensions["lookalike.sessions"] = make_sessionmaker(engine)
    # The lookalikes API reads with one statement per request, on a pool of its own.
    app.extensions["lookalike.read_engine"] = read_engine = make_read_engine(settings.database_url)
    app.extensions["lookalike.lookalikes"] = LookalikesReader(read_engine)
    app.extensions["celery"] = create_celery(settings)

    @app.teardown_appcontext
    def close_session(_exc: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is not None:
            session.close()

    from web import api, errors, pages

    errors.register(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    return app
