"""vector_changes: which product each move of the vectors counter was about, so that a process
cache follows a delete or a photo change by reading those rows again instead of every vector
(5 s at a million products, on every delete)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEEP = 100_000  # changes kept: a cache further behind reads everything again
_COUNT = "UPDATE change_counters SET value = value + 1 WHERE name = 'vectors'"

_POSTGRESQL = f"""CREATE OR REPLACE FUNCTION lookalike_count_vectors_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed bigint;
    changed_id text;
BEGIN
    {_COUNT} RETURNING value INTO changed;
    IF TG_LEVEL = 'ROW' THEN  -- a truncate logs no product: everything changed
        IF TG_TABLE_NAME = 'products' THEN changed_id := OLD.id; ELSE changed_id := OLD.product_id;
        END IF;
    END IF;
    INSERT INTO vector_changes (counter, product_id) VALUES (changed, changed_id);
    IF changed % 1000 = 0 THEN
        DELETE FROM vector_changes WHERE counter <= changed - {_KEEP};
    END IF;
    RETURN NULL;
END $$"""
_POSTGRESQL_BEFORE = f"""CREATE OR REPLACE FUNCTION lookalike_count_vectors_change() RETURNS trigger
LANGUAGE plpgsql AS $$ BEGIN {_COUNT}; RETURN NULL; END $$"""

_LOG = (
    "INSERT INTO vector_changes (counter, product_id) "
    "VALUES ((SELECT value FROM change_counters WHERE name = 'vectors'), OLD.{column})"
)
# SQLite: migration 0004's triggers again, each logging the product it counted.
_EMBEDDING_COLUMNS = ("product_id", "model_id", "content_hash", "dim", "vector")
_SQLITE = {
    "embedding_changed": (
        "AFTER UPDATE ON embeddings WHEN "
        + " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in _EMBEDDING_COLUMNS),
        "product_id",
    ),
    "embedding_deleted": ("AFTER DELETE ON embeddings", "product_id"),
    "product_photo_changed": (
        "AFTER UPDATE OF content_hash ON products WHEN OLD.content_hash IS NOT NEW.content_hash",
        "id",
    ),
}


def upgrade() -> None:
    op.create_table(
        "vector_changes",
        sa.Column("counter", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("product_id", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("counter", name=op.f("pk_vector_changes")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_POSTGRESQL)
        return
    for trigger, (when, column) in _SQLITE.items():
        op.execute(f"DROP TRIGGER {trigger}")
        op.execute(
            f"CREATE TRIGGER {trigger} {when} BEGIN {_COUNT}; {_LOG.format(column=column)}; END"
        )
    op.execute(
        "CREATE TRIGGER vector_changes_pruned AFTER INSERT ON vector_changes "
        f"WHEN NEW.counter % 1000 = 0 BEGIN "
        f"DELETE FROM vector_changes WHERE counter <= NEW.counter - {_KEEP}; END"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_POSTGRESQL_BEFORE)
    else:
        op.execute("DROP TRIGGER vector_changes_pruned")
        for trigger, (when, _) in _SQLITE.items():
            op.execute(f"DROP TRIGGER {trigger}")
            op.execute(f"CREATE TRIGGER {trigger} {when} BEGIN {_COUNT}; END")
    op.drop_table("vector_changes")
