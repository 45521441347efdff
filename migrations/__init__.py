"""Alembic migrations of the Lookalike schema (one head), and the helpers that apply them.

Owns the schema's history. May import ``core`` (the models, the settings); nothing in ``core``
imports this package: the entry points (``cli``) and the tests upgrade a database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine


def alembic_config(url: str) -> Any:
    """Alembic's configuration for the database at ``url``, with these migrations."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (creating a SQLite file if needed)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
