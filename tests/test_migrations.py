"""Migrations: one head, and upgrading an empty database gives exactly the models' schema."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from core.db import make_engine
from core.models import Base
from migrations import alembic_config, current_revision, upgrade


def test_single_head() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1


@pytest.fixture(params=["sqlite", "postgresql"])
def upgraded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    """An empty database upgraded to the head, on each backend, and an engine on it."""
    if request.param == "postgresql":
        url = request.getfixturevalue("fresh_pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'empty.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield url, engine
    engine.dispose()


def test_upgrade_matches_models(upgraded: tuple[str, Engine]) -> None:
    url, engine = upgraded
    script = ScriptDirectory.from_config(alembic_config(url))
    assert current_revision(engine) == script.get_current_head()
    with engine.connect() as connection:
        opts = {"compare_type": True, "include_name": _not_search_index}
        context = MigrationContext.configure(connection, opts=opts)
        assert compare_metadata(context, Base.metadata) == []
        tables = set(inspect(connection).get_table_names()) - {"alembic_version"}
    assert {t for t in tables if _not_search_index(t, "table", {})} == set(Base.metadata.tables)


def _not_search_index(name: str | None, kind: str, _parent: object) -> bool:
    """The name-search indexes (migration 0009) are dialect-specific and not in the models:
    pg_trgm's GIN index, and SQLite's FTS5 table with the shadow tables it keeps."""
    return not (name or "").startswith(("ix_products_search_trgm", "products_search"))


def test_deleting_a_product_deletes_its_list_and_places(upgraded: tuple[str, Engine]) -> None:
    """The neighbour table has no foreign keys (migration 0016): a trigger does their cascades,
    and the list table's change counter still moves. Also after a downgrade and upgrade."""
    url, engine = upgraded
    _cascades(engine, "p0")
    command.downgrade(alembic_config(url), "0015")
    _cascades(engine, "p1")
    command.upgrade(alembic_config(url), "head")
    _cascades(engine, "p2")


def _cascades(engine: Engine, gone: str) -> None:
    ids = ["p0", "p1", "p2", "p3"]
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM products"))
        connection.execute(
            text(
                "INSERT INTO products (id, meta, image_path, content_hash, sort_key, search_text, "
                "created_at, updated_at) VALUES (:id, '{}', '', '', '', '', :now, :now)"
            ),
            [{"id": pid, "now": datetime.now(UTC)} for pid in ids],
        )
        connection.execute(
            text(
                "INSERT INTO neighbours (product_id, rank, neighbour_id, score, space_id) "
                "VALUES (:p, :r, :n, 0.5, 's')"
            ),
            [
                {"p": p, "r": r + 1, "n": n}
                for p in ids
                for r, n in enumerate(n for n in ids if n != p)
            ],
        )
    with engine.begin() as connection:
        before = connection.scalar(
            text("SELECT value FROM change_counters WHERE name = 'neighbours'")
        )
        connection.execute(text("DELETE FROM products WHERE id = :id"), {"id": gone})
        after = connection.scalar(
            text("SELECT value FROM change_counters WHERE name = 'neighbours'")
        )
        rows = connection.execute(text("SELECT product_id, neighbour_id FROM neighbours")).all()
    assert after > before
    assert len(rows) == 6
    assert all(gone not in row for row in rows)
