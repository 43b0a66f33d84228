"""The file journal: files the gallery is about to write or has just given up, so that the start-up
sweep removes only what it can prove is its own debris (never a file merely because no row names it).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "file_journal",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("relative_path", sa.String(256), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_file_journal"),
    )


def downgrade() -> None:
    op.drop_table("file_journal")
