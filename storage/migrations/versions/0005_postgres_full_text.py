"""On PostgreSQL: a GIN index over the text search vector of prompt (weight A), negative (B) and prompt
template (C) without diacritics, the counterpart of SQLite's FTS5 table. storage/pg_search.py searches the
same expression, so queries use the index. `unaccent` is a trusted extension (the database owner may
create it); it is wrapped in an immutable function because only those can be indexed. Nothing changes on
SQLite.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Keep in step with storage.pg_search.PG_DOCUMENT: the index serves only this exact expression.
DOCUMENT = (
    "(setweight(to_tsvector('simple'::regconfig, atelier_unaccent(coalesce(prompt, ''))), 'A') || "
    "setweight(to_tsvector('simple'::regconfig, atelier_unaccent(coalesce(negative, ''))), 'B') || "
    "setweight(to_tsvector('simple'::regconfig, atelier_unaccent(coalesce(prompt_template, ''))), 'C'))"
)
UNACCENT = (
    "CREATE OR REPLACE FUNCTION atelier_unaccent(text) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT "
    "AS $$ SELECT unaccent('unaccent'::regdictionary, $1) $$"
)


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS unaccent")
        op.execute(UNACCENT)
        op.execute(f"CREATE INDEX ix_generations_text_search ON generations USING GIN ({DOCUMENT})")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_generations_text_search")
        op.execute("DROP FUNCTION IF EXISTS atelier_unaccent(text)")
