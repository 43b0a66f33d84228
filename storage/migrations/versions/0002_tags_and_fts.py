"""Tags, and on SQLite an FTS5 index over prompt and negative kept in sync by triggers.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# External-content FTS5 table: the text lives once, in generations; the index follows by triggers.
FTS_STATEMENTS = (
    "CREATE VIRTUAL TABLE generations_fts USING fts5("
    "prompt, negative, content='generations', content_rowid='id', tokenize='unicode61 remove_diacritics 2')",
    "CREATE TRIGGER generations_fts_insert AFTER INSERT ON generations BEGIN "
    "INSERT INTO generations_fts(rowid, prompt, negative) VALUES (new.id, new.prompt, new.negative); END",
    "CREATE TRIGGER generations_fts_delete AFTER DELETE ON generations BEGIN "
    "INSERT INTO generations_fts(generations_fts, rowid, prompt, negative) "
    "VALUES ('delete', old.id, old.prompt, old.negative); END",
    "CREATE TRIGGER generations_fts_update AFTER UPDATE OF prompt, negative ON generations BEGIN "
    "INSERT INTO generations_fts(generations_fts, rowid, prompt, negative) "
    "VALUES ('delete', old.id, old.prompt, old.negative); "
    "INSERT INTO generations_fts(rowid, prompt, negative) VALUES (new.id, new.prompt, new.negative); END",
    "INSERT INTO generations_fts(generations_fts) VALUES ('rebuild')",
)


def upgrade() -> None:
    op.create_table(
        "generation_tags",
        sa.Column("generation_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["generation_id"],
            ["generations.id"],
            name="fk_generation_tags_generation_id_generations",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("generation_id", "tag", name="pk_generation_tags"),
    )
    op.create_index("ix_generation_tags_tag", "generation_tags", ["tag"])
    if op.get_context().dialect.name == "sqlite":
        for statement in FTS_STATEMENTS:
            op.execute(statement)


def downgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        for name in ("generations_fts_insert", "generations_fts_delete", "generations_fts_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS generations_fts")
    op.drop_table("generation_tags")
