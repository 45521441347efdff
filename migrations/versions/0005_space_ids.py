"""neighbour lists name their space (space_id, not model_id); chunks count skipped photos

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain RENAME COLUMN on both databases (SQLite >= 3.25): a batch copy of the table would
    # drop the triggers of migration 0004.
    op.execute("ALTER TABLE neighbours RENAME COLUMN model_id TO space_id")
    op.add_column(
        "job_chunks", sa.Column("skipped", sa.Integer(), nullable=False, server_default="0")
    )


def downgrade() -> None:
    with op.batch_alter_table("job_chunks", schema=None) as batch_op:
        batch_op.drop_column("skipped")
    op.execute("ALTER TABLE neighbours RENAME COLUMN space_id TO model_id")
