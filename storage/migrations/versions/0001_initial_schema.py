"""Initial schema: generations, their LoRAs, content-addressed files and the links between them.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "generations",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("batch_id", sa.String(64), nullable=True),
        sa.Column("recipe_json", sa.Text(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("negative", sa.Text(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("model_name", sa.String(512), nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=True),
        sa.Column("scheduler", sa.String(32), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("guidance", sa.Float(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("switch", sa.Float(), nullable=False),
        sa.Column("strength", sa.Float(), nullable=True),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("favourite", sa.Boolean(), nullable=False),
        sa.Column("files_missing", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["generations.id"], name="fk_generations_parent_id_generations", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_generations"),
    )
    for column in ("kind", "parent_id", "batch_id", "seed", "model_name", "image_sha256", "favourite"):
        op.create_index(f"ix_generations_{column}", "generations", [column])
    op.create_index("ix_generations_created_at_id", "generations", ["created_at", "id"])

    op.create_table(
        "generation_loras",
        sa.Column("generation_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["generation_id"],
            ["generations.id"],
            name="fk_generation_loras_generation_id_generations",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("generation_id", "position", name="pk_generation_loras"),
    )
    op.create_index("ix_generation_loras_name", "generation_loras", ["name"])

    op.create_table(
        "files",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("relative_path", sa.String(256), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name="pk_files"),
    )

    op.create_table(
        "generation_files",
        sa.Column("generation_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["generation_id"],
            ["generations.id"],
            name="fk_generation_files_generation_id_generations",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["sha256"], ["files.sha256"], name="fk_generation_files_sha256_files"),
        sa.PrimaryKeyConstraint("generation_id", "role", name="pk_generation_files"),
    )
    op.create_index("ix_generation_files_sha256", "generation_files", ["sha256"])


def downgrade() -> None:
    op.drop_table("generation_files")
    op.drop_table("files")
    op.drop_table("generation_loras")
    op.drop_table("generations")
