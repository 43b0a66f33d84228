"""Alembic environment for the gallery. storage/migrate.py passes an open connection (already in
a transaction) in config.attributes["connection"]; developers may pass `-x url=...` instead."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from storage.models import FTS_TABLE, Base

config = context.config


def _include_object(obj, name, type_, reflected, compare_to) -> bool:
    # The FTS5 index and its shadow tables exist only on SQLite and only in the migrations.
    return not (type_ == "table" and name and name.startswith(FTS_TABLE))


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        include_object=_include_object,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("pass the database with -x url=sqlite:///path/gallery.db")
    if context.is_offline_mode():  # `--sql`: print the DDL, e.g. to review it for PostgreSQL
        context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
    else:
        with create_engine(url).begin() as conn:
            _run(conn)
