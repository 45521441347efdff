"""Alembic migrations of the Lookalike schema (one head), and the helpers that apply them.

Owns the schema's history. May import ``core`` (the models, the settings); nothing in ``core``
imports this package: the entry points (``cli``) and the tests upgrade a database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, make_url
from sqlalchemy.exc import OperationalError

from core.errors import DatabaseUnavailable


def alembic_config(url: str) -> Any:
    """Alembic's configuration for the database at ``url``, with these migrations."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (creating a SQLite file if needed).

    Raises:
        DatabaseUnavailable: the server cannot be reached, or the database does not exist.
    """
    from alembic import command

    try:
        command.upgrade(alembic_config(url), revision)
    except OperationalError as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        reason = " ".join(str(exc.orig).split()) or type(exc.orig).__name__
        raise DatabaseUnavailable(f"cannot open the database {shown}: {reason}") from None


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
