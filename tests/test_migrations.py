"""Migrations: one head, and upgrading an empty database gives exactly the models' schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from core.db import make_engine
from core.models import Base
from migrations import alembic_config, current_revision, upgrade


def test_single_head() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrade_matches_models(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "postgresql":
        url = request.getfixturevalue("fresh_pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'empty.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        script = ScriptDirectory.from_config(alembic_config(url))
        assert current_revision(engine) == script.get_current_head()
        with engine.connect() as connection:
            opts = {"compare_type": True, "include_name": _not_search_index}
            context = MigrationContext.configure(connection, opts=opts)
            assert compare_metadata(context, Base.metadata) == []
            tables = set(inspect(connection).get_table_names()) - {"alembic_version"}
        assert {t for t in tables if _not_search_index(t, "table", {})} == set(Base.metadata.tables)
    finally:
        engine.dispose()


def _not_search_index(name: str | None, kind: str, _parent: object) -> bool:
    """The name-search indexes (migration 0009) are dialect-specific and not in the models:
    pg_trgm's GIN index, and SQLite's FTS5 table with the shadow tables it keeps."""
    return not (name or "").startswith(("ix_products_search_trgm", "products_search"))
