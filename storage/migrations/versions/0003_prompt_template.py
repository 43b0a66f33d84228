"""The dynamic prompt a generation's prompt was drawn from (`prompt_template`), searched like the prompt.

Adds the nullable column generations.prompt_template (existing rows: NULL, "typed as is"); on SQLite
the FTS5 index of 0002 is made again over prompt, negative and prompt_template, and rebuilt from the
rows, so old generations stay searchable.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TRIGGERS = ("generations_fts_insert", "generations_fts_delete", "generations_fts_update")


def fts_statements(columns: tuple[str, ...]) -> list[str]:
    """The external-content FTS5 table over `columns` of generations, its sync triggers and a rebuild."""
    names = ", ".join(columns)
    new = ", ".join(f"new.{c}" for c in columns)
    old = ", ".join(f"old.{c}" for c in columns)
    delete_old = f"INSERT INTO generations_fts(generations_fts, rowid, {names}) VALUES ('delete', old.id, {old}); "
    insert_new = f"INSERT INTO generations_fts(rowid, {names}) VALUES (new.id, {new}); "
    return [
        f"CREATE VIRTUAL TABLE generations_fts USING fts5({names}, content='generations', content_rowid='id', "
        "tokenize='unicode61 remove_diacritics 2')",
        f"CREATE TRIGGER generations_fts_insert AFTER INSERT ON generations BEGIN {insert_new}END",
        f"CREATE TRIGGER generations_fts_delete AFTER DELETE ON generations BEGIN {delete_old}END",
        f"CREATE TRIGGER generations_fts_update AFTER UPDATE OF {names} ON generations BEGIN "
        f"{delete_old}{insert_new}END",
        "INSERT INTO generations_fts(generations_fts) VALUES ('rebuild')",
    ]


def _drop_fts() -> None:
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.execute("DROP TABLE IF EXISTS generations_fts")


def upgrade() -> None:
    sqlite = op.get_context().dialect.name == "sqlite"
    if sqlite:
        _drop_fts()
    op.add_column("generations", sa.Column("prompt_template", sa.Text(), nullable=True))
    if sqlite:
        for statement in fts_statements(("prompt", "negative", "prompt_template")):
            op.execute(statement)


def downgrade() -> None:
    sqlite = op.get_context().dialect.name == "sqlite"
    if sqlite:
        _drop_fts()
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("prompt_template")
    if sqlite:
        for statement in fts_statements(("prompt", "negative")):
            op.execute(statement)
