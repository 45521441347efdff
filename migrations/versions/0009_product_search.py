"""find products by name: products.search_text (core.models.search_text_of), searched through a
trigram index, pg_trgm's GIN on PostgreSQL and an FTS5 trigram table on SQLite, both answering
LIKE '%word%' from the index

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from core.models import search_text_of

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 5000
# SQLite: an external-content FTS5 table over products.search_text, kept by triggers.
_SQLITE = (
    "CREATE VIRTUAL TABLE products_search USING fts5(search_text, content='products', "
    "content_rowid='rowid', tokenize='trigram')",
    "CREATE TRIGGER products_search_insert AFTER INSERT ON products BEGIN "
    "INSERT INTO products_search(rowid, search_text) VALUES (new.rowid, new.search_text); END",
    "CREATE TRIGGER products_search_delete AFTER DELETE ON products BEGIN "
    "INSERT INTO products_search(products_search, rowid, search_text) "
    "VALUES ('delete', old.rowid, old.search_text); END",
    "CREATE TRIGGER products_search_update AFTER UPDATE OF search_text ON products BEGIN "
    "INSERT INTO products_search(products_search, rowid, search_text) "
    "VALUES ('delete', old.rowid, old.search_text); "
    "INSERT INTO products_search(rowid, search_text) VALUES (new.rowid, new.search_text); END",
)


def upgrade() -> None:
    op.add_column(
        "products", sa.Column("search_text", sa.Text(), nullable=False, server_default="")
    )
    bind = op.get_bind()
    products = sa.table(
        "products", sa.column("id", sa.String), sa.column("meta"), sa.column("search_text")
    )
    rows = bind.execute(sa.select(products.c.id, sa.cast(products.c.meta, sa.Text))).all()
    update = (
        products.update()
        .where(products.c.id == sa.bindparam("pid"))
        .values(search_text=sa.bindparam("text"))
    )
    for start in range(0, len(rows), _BATCH):
        chunk = rows[start : start + _BATCH]
        values = [
            {"pid": pid, "text": search_text_of(json.loads(meta or "{}"))} for pid, meta in chunk
        ]
        if values:
            bind.execute(update, values)
    if bind.dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute(
            "CREATE INDEX ix_products_search_trgm ON products USING gin (search_text gin_trgm_ops)"
        )
    else:
        for statement in _SQLITE:
            op.execute(statement)
        op.execute("INSERT INTO products_search(products_search) VALUES ('rebuild')")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX ix_products_search_trgm")
    else:
        for trigger in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER products_search_{trigger}")
        op.execute("DROP TABLE products_search")
    op.drop_column("products", "search_text")
