"""Alembic migrations run in code at start-up, after a backup: a copy of the SQLite database file, or a
`pg_dump` of a PostgreSQL database (refused without pg_dump unless $ATELIER_NO_BACKUP=1, `--no-backup`).

The whole upgrade runs in one transaction (SQLite and PostgreSQL both have transactional DDL), so
a failed migration leaves the old schema; the backup is there in case anything still went wrong. That
transaction first takes the migration lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock), so
front ends starting together on one database migrate it once, one after the other finding it done.
"""

from __future__ import annotations

import glob
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect

from storage.db import POSTGRESQL_MIGRATION_LOCK_KEY, Database, sqlite_file

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
FIRST_REVISION = "0001"
NO_BACKUP_ENV = "ATELIER_NO_BACKUP"  # "1": migrate PostgreSQL without a pg_dump first (the CLI's --no-backup)
PG_DUMP_ENV = "ATELIER_PG_DUMP"  # the pg_dump to use (default: on PATH, else Debian's newest)


class MigrationError(RuntimeError):
    """The database could not be brought to the schema this version of Atelier needs."""


@dataclass(frozen=True)
class MigrationResult:
    from_revision: str | None
    to_revision: str
    backup: Path | None  # None when nothing was upgraded, the database was new, or --no-backup


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(db: Database, target: str = "head", *, backup_dir: Path | None = None) -> MigrationResult:
    """Bring the database to `target` (normally head), backing it up first: SQLite beside its file,
    PostgreSQL with pg_dump into `backup_dir`.

    Several front ends may start at once on one database server (each with its own home, so the home lock
    does not serialise them): the revision is read again under the migration lock, and whoever finds the
    work already done by another returns without a backup. The lock is held from before the backup until
    the upgrade commits, so the backup is of the state that is upgraded."""
    script = ScriptDirectory.from_config(alembic_config())
    wanted = script.get_current_head() if target == "head" else target
    if current_revision(db) == wanted:  # the usual start-up: nothing to do, no lock taken
        return MigrationResult(wanted, wanted, None)
    config = alembic_config()
    with db.engine.connect() as conn:
        conn.execution_options(sqlite_begin="IMMEDIATE")  # SQLite: the write lock from the first statement
        with conn.begin() as transaction:
            _wait_for_other_migrations(conn)
            current = MigrationContext.configure(conn).get_current_revision()
            if current == wanted:  # another front end migrated while this one waited for the lock
                return MigrationResult(current, wanted, None)
            _refuse_foreign_schema(db, conn, script, current, wanted)
            backup = _backup(db, current, backup_dir) if current is not None else None
            with _upgrade_failure_in_words(current, wanted, backup):
                config.attributes["connection"] = conn
                command.upgrade(config, wanted)
                transaction.commit()
    return MigrationResult(current, wanted, backup)


def _wait_for_other_migrations(conn: Connection) -> None:
    """PostgreSQL: queue on the migration lock (it goes with this transaction). SQLite's BEGIN IMMEDIATE
    has already done the same."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({POSTGRESQL_MIGRATION_LOCK_KEY})")


def _refuse_foreign_schema(
    db: Database, conn: Connection, script: ScriptDirectory, current: str | None, wanted: str
) -> None:
    """MigrationError for a revision this version does not know, or for tables without any revision."""
    where = db.engine.url.render_as_string(hide_password=True)
    known = {rev.revision for rev in script.walk_revisions()}
    if current is not None and current not in known:
        raise MigrationError(
            f"gallery database {where} is at schema revision {current}, which this version of Atelier does not "
            f"know (it knows up to {wanted}); upgrade Atelier or open a different home folder"
        )
    tables = set(inspect(conn).get_table_names())
    if current is None and tables:
        raise MigrationError(
            f"gallery database {where} has tables ({', '.join(sorted(tables)[:5])}) but no Atelier schema "
            "revision; it is not an Atelier gallery"
        )


@contextmanager
def _upgrade_failure_in_words(current: str | None, wanted: str, backup: Path | None) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        where = f"; a copy made before the upgrade is at {backup}" if backup else ""
        raise MigrationError(
            f"upgrading the gallery database from schema revision {current or 'empty'} to {wanted} failed "
            f"({type(exc).__name__}: {exc}); the database was left at revision {current or 'empty'}{where}"
        ) from exc


def _backup(db: Database, revision: str, backup_dir: Path | None) -> Path | None:
    """Copy the SQLite database (with whatever its WAL holds) beside it, with a timestamped name."""
    if db.engine.dialect.name == "postgresql":
        return None if os.environ.get(NO_BACKUP_ENV) == "1" else _pg_dump(db, revision, backup_dir)
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


def find_pg_dump() -> str | None:
    if os.environ.get(PG_DUMP_ENV):
        return os.environ[PG_DUMP_ENV] if os.access(os.environ[PG_DUMP_ENV], os.X_OK) else None
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"), key=lambda p: int(Path(p).parts[-3]))
    return shutil.which("pg_dump") or (found[-1] if found else None)


def _pg_dump(db: Database, revision: str, backup_dir: Path | None) -> Path:
    """A pg_dump (custom format) of the whole database into `backup_dir`; MigrationError when it cannot."""
    pg_dump = find_pg_dump()
    where = db.engine.url.render_as_string(hide_password=True)
    if pg_dump is None or backup_dir is None:
        missing = "no pg_dump was found (install PostgreSQL's client tools or set ATELIER_PG_DUMP)"
        raise MigrationError(
            f"the gallery database {where} needs a schema upgrade from revision {revision}, and Atelier backs it up "
            f"first: {missing if pg_dump is None else 'no folder for the backup was given'}; or run once with "
            "--no-backup (ATELIER_NO_BACKUP=1) to upgrade without a backup"
        )
    backup_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    target = backup_dir / f"gallery-{stamp}-r{revision}.pgdump"
    url = db.engine.url.set(drivername="postgresql")
    env = {**os.environ, **({"PGPASSWORD": url.password} if url.password else {})}
    plain = url.set(password=None).render_as_string(hide_password=False)
    result = subprocess.run(
        [pg_dump, "--format=custom", f"--file={target}", plain], env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        target.unlink(missing_ok=True)
        raise MigrationError(
            f"backing up the gallery database {where} with pg_dump failed before the schema upgrade, so nothing "
            f"was changed: {result.stderr.strip()[-500:]}; fix that, or upgrade without a backup (--no-backup)"
        )
    return target
