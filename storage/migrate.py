"""Alembic migrations run in code at start-up, after a backup copy of the SQLite database file.

The whole upgrade runs in one transaction (SQLite and PostgreSQL both have transactional DDL), so
a failed migration leaves the old schema; the backup is there in case anything still went wrong.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from storage.db import Database, sqlite_file

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
FIRST_REVISION = "0001"


class MigrationError(RuntimeError):
    """The database could not be brought to the schema this version of Atelier needs."""


@dataclass(frozen=True)
class MigrationResult:
    from_revision: str | None
    to_revision: str
    backup: Path | None  # None when nothing was upgraded, the database was new, or not SQLite


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(db: Database, target: str = "head") -> MigrationResult:
    """Bring the database to `target` (normally head), backing the SQLite file up first."""
    script = ScriptDirectory.from_config(alembic_config())
    wanted = script.get_current_head() if target == "head" else target
    with db.engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
        tables = set(inspect(conn).get_table_names())
    if current == wanted:
        return MigrationResult(current, wanted, None)
    known = {rev.revision for rev in script.walk_revisions()}
    if current is not None and current not in known:
        raise MigrationError(
            f"gallery database {db.engine.url.render_as_string(hide_password=True)} is at schema revision "
            f"{current}, which this version of Atelier does not know (it knows up to {wanted}); "
            "upgrade Atelier or open a different home folder"
        )
    if current is None and tables:
        raise MigrationError(
            f"gallery database {db.engine.url.render_as_string(hide_password=True)} has tables "
            f"({', '.join(sorted(tables)[:5])}) but no Atelier schema revision; it is not an Atelier gallery"
        )
    backup = _backup(db, current) if current is not None else None
    config = alembic_config()
    try:
        with db.engine.connect() as conn:
            conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                config.attributes["connection"] = conn
                command.upgrade(config, wanted)
    except Exception as exc:
        where = f"; a copy made before the upgrade is at {backup}" if backup else ""
        raise MigrationError(
            f"upgrading the gallery database from schema revision {current or 'empty'} to {wanted} failed "
            f"({type(exc).__name__}: {exc}); the database was left at revision {current or 'empty'}{where}"
        ) from exc
    return MigrationResult(current, wanted, backup)


def _backup(db: Database, revision: str) -> Path | None:
    """Copy the SQLite database (with whatever its WAL holds) beside it, with a timestamped name."""
    path = sqlite_file(db.engine)
    if path is None or not path.exists():
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    target = path.with_name(f"{path.name}.backup-{stamp}-r{revision}")
    source = sqlite3.connect(path)
    try:
        dest = sqlite3.connect(target)
        try:
            source.backup(dest)
        finally:
            dest.close()
    finally:
        source.close()
    return target
