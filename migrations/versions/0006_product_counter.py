"""a change counter for products: moved by every metadata update and every delete, so that a
process serving responses from memory (core.read_cache) knows when one may be stale

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BUMP = "UPDATE change_counters SET value = value + 1 WHERE name = 'products'"
# SQLite has row triggers only; PostgreSQL counts once per statement (json has no equality,
# so any statement that sets meta counts, changed or not).
_SQLITE = {
    "product_meta_changed": "AFTER UPDATE OF meta ON products",
    "product_deleted": "AFTER DELETE ON products",
}


def upgrade() -> None:
    op.execute("INSERT INTO change_counters (name, value) VALUES ('products', 0)")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION lookalike_count_products_change() RETURNS trigger "
            f"LANGUAGE plpgsql AS $$ BEGIN {_BUMP}; RETURN NULL; END $$"
        )
        op.execute(
            "CREATE TRIGGER products_changed AFTER UPDATE OF meta OR DELETE OR TRUNCATE "
            "ON products FOR EACH STATEMENT EXECUTE FUNCTION lookalike_count_products_change()"
        )
    else:
        for trigger, when in _SQLITE.items():
            op.execute(f"CREATE TRIGGER {trigger} {when} BEGIN {_BUMP}; END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER products_changed ON products")
        op.execute("DROP FUNCTION lookalike_count_products_change()")
    else:
        for trigger in _SQLITE:
            op.execute(f"DROP TRIGGER {trigger}")
    op.execute("DELETE FROM change_counters WHERE name = 'products'")
