"""products carry a sort key, their id with digit runs zero-padded, so that the catalogue lists
1855 before 10000 and p2 before p10 (core.models.natural_key)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from core.models import natural_key

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 5000


def upgrade() -> None:
    # Added NOT NULL with a default, then filled: SQLite adds such a column in place (a batch
    # rebuild of the table would drop the triggers on it).
    op.add_column("products", sa.Column("sort_key", sa.Text(), nullable=False, server_default=""))
    bind = op.get_bind()
    products = sa.table("products", sa.column("id", sa.String), sa.column("sort_key", sa.Text))
    ids = [row[0] for row in bind.execute(sa.select(products.c.id))]
    update = (
        products.update()
        .where(products.c.id == sa.bindparam("pid"))
        .values(sort_key=sa.bindparam("key"))
    )
    for start in range(0, len(ids), _BATCH):
        chunk = ids[start : start + _BATCH]
        bind.execute(update, [{"pid": pid, "key": natural_key(pid)} for pid in chunk])
    op.create_index("ix_products_sort_key", "products", ["sort_key"])


def downgrade() -> None:
    op.drop_index("ix_products_sort_key", "products")
    op.drop_column("products", "sort_key")
