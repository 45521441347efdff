"""vector_counts: how many vectors each model has, kept by triggers, so that a worker's cache
checks it holds every row by reading one row instead of counting the embeddings (40-100 ms at
a million products, twice on every add)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# PostgreSQL: once per statement, over its transition tables (a COPY of a million vectors costs
# one GROUP BY, not a million updates); models in order, so concurrent writers lock their rows
# in the same order. An upsert fires the INSERT trigger for the rows it inserted and the UPDATE
# trigger for those it updated.
_ADD = """INSERT INTO vector_counts (model_id, vectors)
    SELECT model_id, count(*) FROM {rows} GROUP BY model_id ORDER BY model_id
    ON CONFLICT (model_id) DO UPDATE SET vectors = vector_counts.vectors + excluded.vectors"""
_REMOVE = """UPDATE vector_counts SET vectors = vector_counts.vectors - gone.n
    FROM (SELECT model_id, count(*) AS n FROM {rows} GROUP BY model_id) AS gone
    WHERE vector_counts.model_id = gone.model_id"""
_FUNCTIONS = {
    "inserted": (_ADD.format(rows="new_rows"), "INSERT", "REFERENCING NEW TABLE AS new_rows"),
    "deleted": (_REMOVE.format(rows="old_rows"), "DELETE", "REFERENCING OLD TABLE AS old_rows"),
    # Rows never change model in Lookalike; a hand-made UPDATE that does is counted as a move.
    "model_changed": (
        _REMOVE.format(rows="old_rows") + ";\n    " + _ADD.format(rows="new_rows"),
        "UPDATE",
        "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    ),
    "truncated": ("DELETE FROM vector_counts", "TRUNCATE", ""),
}

_SQLITE_ADD = (
    "INSERT INTO vector_counts (model_id, vectors) VALUES (NEW.model_id, 1) "
    "ON CONFLICT (model_id) DO UPDATE SET vectors = vectors + 1"
)
_SQLITE_REMOVE = "UPDATE vector_counts SET vectors = vectors - 1 WHERE model_id = OLD.model_id"
_SQLITE = {
    "vector_count_inserted": ("AFTER INSERT ON embeddings", _SQLITE_ADD),
    "vector_count_deleted": ("AFTER DELETE ON embeddings", _SQLITE_REMOVE),
    "vector_count_moved": (
        "AFTER UPDATE OF model_id ON embeddings WHEN OLD.model_id IS NOT NEW.model_id",
        f"{_SQLITE_REMOVE}; {_SQLITE_ADD}",
    ),
}


def upgrade() -> None:
    op.create_table(
        "vector_counts",
        sa.Column("model_id", sa.String(length=255), nullable=False),
        sa.Column("vectors", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("model_id", name=op.f("pk_vector_counts")),
    )
    op.execute(
        "INSERT INTO vector_counts (model_id, vectors) "
        "SELECT model_id, count(*) FROM embeddings GROUP BY model_id"
    )
    if op.get_bind().dialect.name == "postgresql":
        for name, (body, event, referencing) in _FUNCTIONS.items():
            op.execute(
                f"CREATE FUNCTION lookalike_vector_count_{name}() RETURNS trigger "
                f"LANGUAGE plpgsql AS $$ BEGIN {body}; RETURN NULL; END $$"
            )
            op.execute(
                f"CREATE TRIGGER vector_count_{name} AFTER {event} ON embeddings "
                f"{referencing} FOR EACH STATEMENT "
                f"EXECUTE FUNCTION lookalike_vector_count_{name}()"
            )
    else:
        for trigger, (when, body) in _SQLITE.items():
            op.execute(f"CREATE TRIGGER {trigger} {when} BEGIN {body}; END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in _FUNCTIONS:
            op.execute(f"DROP TRIGGER vector_count_{name} ON embeddings")
            op.execute(f"DROP FUNCTION lookalike_vector_count_{name}()")
    else:
        for trigger in _SQLITE:
            op.execute(f"DROP TRIGGER {trigger}")
    op.drop_table("vector_counts")
