"""photo_counts: how many products have each photo, kept by triggers, so that the products
sharing a photo (core.twins) are found through an index of the few shared ones instead of a
GROUP BY over the whole catalogue (2.5 s at a million products, on every build block and add)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# PostgreSQL: once per statement, over its transition tables (a COPY of a million products
# costs one GROUP BY, not a million upserts); hashes in order, so concurrent writers lock
# shared rows in the same order.
_ADD = """INSERT INTO photo_counts (content_hash, products)
    SELECT content_hash, count(*) FROM {rows} GROUP BY content_hash ORDER BY content_hash
    ON CONFLICT (content_hash) DO UPDATE SET products = photo_counts.products + excluded.products"""
_REMOVE = """UPDATE photo_counts SET products = photo_counts.products - gone.n
    FROM (SELECT content_hash, count(*) AS n FROM {rows} GROUP BY content_hash) AS gone
    WHERE photo_counts.content_hash = gone.content_hash;
    DELETE FROM photo_counts WHERE products <= 0
        AND content_hash IN (SELECT content_hash FROM {rows})"""
_MOVED = (
    "(SELECT {side}.content_hash FROM old_rows o JOIN new_rows n ON n.id = o.id "
    "WHERE o.content_hash IS DISTINCT FROM n.content_hash)"
)
_FUNCTIONS = {
    "inserted": (_ADD.format(rows="new_rows"), "INSERT", "NEW TABLE AS new_rows"),
    "deleted": (_REMOVE.format(rows="old_rows"), "DELETE", "OLD TABLE AS old_rows"),
    "photo_changed": (
        _REMOVE.format(rows=_MOVED.format(side="o") + " AS moved_from")
        + ";\n    "
        + _ADD.format(rows=_MOVED.format(side="n") + " AS moved_to"),
        "UPDATE",
        "OLD TABLE AS old_rows NEW TABLE AS new_rows",
    ),
}

_SQLITE_ADD = (
    "INSERT INTO photo_counts (content_hash, products) VALUES (NEW.content_hash, 1) "
    "ON CONFLICT (content_hash) DO UPDATE SET products = products + 1"
)
_SQLITE_REMOVE = (
    "UPDATE photo_counts SET products = products - 1 WHERE content_hash = OLD.content_hash; "
    "DELETE FROM photo_counts WHERE content_hash = OLD.content_hash AND products <= 0"
)
_SQLITE = {
    "photo_count_inserted": ("AFTER INSERT ON products", _SQLITE_ADD),
    "photo_count_deleted": ("AFTER DELETE ON products", _SQLITE_REMOVE),
    "photo_count_changed": (
        "AFTER UPDATE OF content_hash ON products WHEN OLD.content_hash IS NOT NEW.content_hash",
        f"{_SQLITE_REMOVE}; {_SQLITE_ADD}",
    ),
}


def upgrade() -> None:
    op.create_table(
        "photo_counts",
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("products", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("content_hash", name=op.f("pk_photo_counts")),
    )
    op.create_index(
        "ix_photo_counts_shared",
        "photo_counts",
        ["content_hash"],
        postgresql_where=sa.text("products > 1"),
        sqlite_where=sa.text("products > 1"),
    )
    op.execute(
        "INSERT INTO photo_counts (content_hash, products) "
        "SELECT content_hash, count(*) FROM products GROUP BY content_hash"
    )
    if op.get_bind().dialect.name == "postgresql":
        for name, (body, event, referencing) in _FUNCTIONS.items():
            op.execute(
                f"CREATE FUNCTION lookalike_photo_count_{name}() RETURNS trigger "
                f"LANGUAGE plpgsql AS $$ BEGIN {body}; RETURN NULL; END $$"
            )
            op.execute(
                f"CREATE TRIGGER photo_count_{name} AFTER {event} ON products "
                f"REFERENCING {referencing} FOR EACH STATEMENT "
                f"EXECUTE FUNCTION lookalike_photo_count_{name}()"
            )
    else:
        for trigger, (when, body) in _SQLITE.items():
            op.execute(f"CREATE TRIGGER {trigger} {when} BEGIN {body}; END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in _FUNCTIONS:
            op.execute(f"DROP TRIGGER photo_count_{name} ON products")
            op.execute(f"DROP FUNCTION lookalike_photo_count_{name}()")
    else:
        for trigger in _SQLITE:
            op.execute(f"DROP TRIGGER {trigger}")
    op.drop_table("photo_counts")
