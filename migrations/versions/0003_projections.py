"""projections

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "projections",
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.Column("embedding_model_id", sa.String(length=255), nullable=False),
        sa.Column("dims", sa.Integer(), nullable=False),
        sa.Column("whiten", sa.Float(), nullable=False),
        sa.Column("power", sa.Float(), nullable=False),
        sa.Column("fitted_on", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tag", name=op.f("pk_projections")),
    )
    with op.batch_alter_table("projections", schema=None) as batch_op:
        batch_op.create_index(
            "ix_projections_embedding_model_id", ["embedding_model_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("projections", schema=None) as batch_op:
        batch_op.drop_index("ix_projections_embedding_model_id")

    op.drop_table("projections")
