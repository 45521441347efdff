"""photo sources: projections record how many photo-source directions were asked to be removed
before the PCA (core.nuisance; projections fitted before have none); products are found by
their photo (core.twins), and adding a product or changing its photo moves the products counter
too, as the twins a product's lookalikes name change then

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BUMP = "UPDATE change_counters SET value = value + 1 WHERE name = 'products'"
_SQLITE = {
    "product_added": "AFTER INSERT ON products",
    "product_photo_replaced": "AFTER UPDATE OF content_hash ON products",
}


def upgrade() -> None:
    with op.batch_alter_table("projections") as batch:
        batch.add_column(sa.Column("source_dims", sa.Integer(), nullable=False, server_default="0"))
    op.create_index("ix_products_content_hash", "products", ["content_hash"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE TRIGGER products_added AFTER INSERT OR UPDATE OF content_hash "
            "ON products FOR EACH STATEMENT EXECUTE FUNCTION lookalike_count_products_change()"
        )
    else:
        for trigger, when in _SQLITE.items():
            op.execute(f"CREATE TRIGGER {trigger} {when} BEGIN {_BUMP}; END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER products_added ON products")
    else:
        for trigger in _SQLITE:
            op.execute(f"DROP TRIGGER {trigger}")
    op.drop_index("ix_products_content_hash", "products")
    with op.batch_alter_table("projections") as batch:
        batch.drop_column("source_dims")
