"""change counters: triggers count changes to vectors and lists, and the log of list writes,
for process caches; embeddings indexed by model and creation time

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BUMP = "UPDATE change_counters SET value = value + 1 WHERE name = '{name}'"
# Changes to an embedding that alter what a cache holds (not a rewrite of the same values).
_EMBEDDING_COLUMNS = ("product_id", "model_id", "content_hash", "dim", "vector")

_POSTGRESQL = [
    *(
        f"""CREATE FUNCTION lookalike_count_{name}_change() RETURNS trigger
        LANGUAGE plpgsql AS $$ BEGIN {_BUMP.format(name=name)}; RETURN NULL; END $$"""
        for name in ("vectors", "neighbours")
    ),
    f"""CREATE TRIGGER embedding_changed AFTER UPDATE ON embeddings FOR EACH ROW
    WHEN (({", ".join(f"OLD.{c}" for c in _EMBEDDING_COLUMNS)})
        IS DISTINCT FROM ({", ".join(f"NEW.{c}" for c in _EMBEDDING_COLUMNS)}))
    EXECUTE FUNCTION lookalike_count_vectors_change()""",
    """CREATE TRIGGER embedding_deleted AFTER DELETE ON embeddings FOR EACH ROW
    EXECUTE FUNCTION lookalike_count_vectors_change()""",
    """CREATE TRIGGER embeddings_truncated AFTER TRUNCATE ON embeddings FOR EACH STATEMENT
    EXECUTE FUNCTION lookalike_count_vectors_change()""",
    """CREATE TRIGGER product_photo_changed AFTER UPDATE OF content_hash ON products FOR EACH ROW
    WHEN (OLD.content_hash IS DISTINCT FROM NEW.content_hash)
    EXECUTE FUNCTION lookalike_count_vectors_change()""",
    # Once per statement: a rebuild writes hundreds of thousands of rows in a few statements.
    """CREATE TRIGGER neighbours_written AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON neighbours
    FOR EACH STATEMENT EXECUTE FUNCTION lookalike_count_neighbours_change()""",
]
_POSTGRESQL_DROP = [
    "DROP TRIGGER neighbours_written ON neighbours",
    "DROP TRIGGER product_photo_changed ON products",
    "DROP TRIGGER embeddings_truncated ON embeddings",
    "DROP TRIGGER embedding_deleted ON embeddings",
    "DROP TRIGGER embedding_changed ON embeddings",
    "DROP FUNCTION lookalike_count_neighbours_change()",
    "DROP FUNCTION lookalike_count_vectors_change()",
]

# SQLite has row triggers only; foreign-key cascades fire them too.
_SQLITE = {
    "embedding_changed": "AFTER UPDATE ON embeddings WHEN "
    + " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in _EMBEDDING_COLUMNS),
    "embedding_deleted": "AFTER DELETE ON embeddings",
    "product_photo_changed": "AFTER UPDATE OF content_hash ON products "
    "WHEN OLD.content_hash IS NOT NEW.content_hash",
    "neighbour_inserted": "AFTER INSERT ON neighbours",
    "neighbour_updated": "AFTER UPDATE ON neighbours",
    "neighbour_deleted": "AFTER DELETE ON neighbours",
}


def upgrade() -> None:
    counters = op.create_table(
        "change_counters",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_change_counters")),
    )
    op.bulk_insert(counters, [{"name": "vectors", "value": 0}, {"name": "neighbours", "value": 0}])
    op.create_table(
        "list_writes",
        sa.Column("counter", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("previous", sa.BigInteger(), nullable=False),
        sa.Column("product_ids", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("counter", name=op.f("pk_list_writes")),
    )
    with op.batch_alter_table("embeddings", schema=None) as batch_op:
        batch_op.create_index(
            "ix_embeddings_model_id_created_at", ["model_id", "created_at"], unique=False
        )
        batch_op.drop_index("ix_embeddings_model_id")
    if op.get_bind().dialect.name == "postgresql":
        for statement in _POSTGRESQL:
            op.execute(statement)
    else:
        for trigger, when in _SQLITE.items():
            table = "neighbours" if trigger.startswith("neighbour") else "vectors"
            op.execute(f"CREATE TRIGGER {trigger} {when} BEGIN {_BUMP.format(name=table)}; END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in _POSTGRESQL_DROP:
            op.execute(statement)
    else:
        for trigger in _SQLITE:
            op.execute(f"DROP TRIGGER {trigger}")
    with op.batch_alter_table("embeddings", schema=None) as batch_op:
        batch_op.create_index("ix_embeddings_model_id", ["model_id"], unique=False)
        batch_op.drop_index("ix_embeddings_model_id_created_at")
    op.drop_table("list_writes")
    op.drop_table("change_counters")
