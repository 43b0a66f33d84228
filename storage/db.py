"""Database engine: the URL setting, SQLite pragmas and write transactions that hold one write lock.

Gallery writes are serialized, on every database, from the very start of the transaction: a save checks
that its content-addressed files are on disk and a delete removes the files no row uses, so the file
checks and the row changes must happen under the same lock (else a delete can take a file that a
concurrent save has just found and then commits a row for).
- SQLite: BEGIN IMMEDIATE. (In WAL mode SQLite also hands SQLITE_BUSY at once, ignoring busy_timeout, to
  a read transaction that later tries to write: with IMMEDIATE writers queue on the busy timeout.)
- PostgreSQL: a transaction-scoped advisory lock, taken as the first statement; every front end sharing
  the database queues on it, and it goes with the commit or rollback (or a lost connection).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

DATABASE_URL_ENV = "ATELIER_DATABASE_URL"
DATABASE_FILE = "gallery.db"
BUSY_TIMEOUT_MS = 60_000
# pg_advisory_xact_lock key of the gallery's write lock: any fixed bigint; this one spells "ATELIER"
POSTGRESQL_WRITE_LOCK_KEY = 0x41_54_45_4C_49_45_52
# ... and of schema migrations (storage/migrate.py): front ends starting together migrate one at a time
POSTGRESQL_MIGRATION_LOCK_KEY = 0x41_54_45_4C_49_45_52_4D  # "ATELIERM"


def database_url(home: Path, url: str | None = None) -> str:
    """The URL to use: the argument, else $ATELIER_DATABASE_URL, else SQLite in the home folder."""
    chosen = url or os.environ.get(DATABASE_URL_ENV) or ""
    if not chosen.strip():
        return f"sqlite:///{Path(home) / DATABASE_FILE}"
    if "://" not in chosen:
        raise ValueError(
            f"database URL: must look like sqlite:///path/gallery.db or postgresql://user@host/db (got {chosen!r})"
        )
    return chosen


def sqlite_file(engine: Engine) -> Path | None:
    """The database file of a SQLite engine; None for other dialects and in-memory databases."""
    if engine.dialect.name != "sqlite":
        return None
    name = engine.url.database
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name)


def make_engine(url: str) -> Engine:
    is_sqlite = url.startswith("sqlite")
    engine = (
        create_engine(url, pool_size=16, max_overflow=16, pool_timeout=120)
        if is_sqlite
        else create_engine(url, pool_pre_ping=True)
    )
    if is_sqlite:
        path = sqlite_file(engine)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    elif engine.dialect.name == "postgresql":
        event.listen(engine, "begin", _postgresql_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # pysqlite must not emit its own BEGIN; _sqlite_on_begin does
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = FULL")  # a generation reported as saved survives a power cut
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _sqlite_on_begin(connection) -> None:
    mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


def _postgresql_on_begin(connection) -> None:
    """PostgreSQL's counterpart of BEGIN IMMEDIATE: write transactions wait here for one another."""
    if connection.get_execution_options().get("postgresql_write_lock"):
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({POSTGRESQL_WRITE_LOCK_KEY})")


class GalleryUnavailableError(OSError):
    """The database server cannot be reached (down, restarting, network): nothing was read or written."""


def _server_unreachable(exc: DBAPIError) -> bool:
    """A lost or refused connection to a database server (SQLSTATE class 08, an admin shutdown 57P0x, or
    no SQLSTATE at all, as when connecting fails) — not a query's own error."""
    state = getattr(exc.orig, "sqlstate", None)
    return exc.connection_invalidated or state is None or state.startswith(("08", "57P"))


@contextmanager
def _words_for_outages(url: str) -> Iterator[None]:
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        if not _server_unreachable(exc):
            raise
        raise GalleryUnavailableError(
            f"the gallery database {make_url(url).render_as_string(hide_password=True)} cannot be reached "
            f"({str(exc.orig).strip().splitlines()[0] if exc.orig else exc}); nothing was saved or changed — "
            "check that the database server is running, then try again"
        ) from None


class Database:
    """One engine and two session factories: plain reads, and writes that hold the write lock. On a database
    server (not SQLite), losing the connection is a GalleryUnavailableError in words; the pool checks
    connections before use, so the first request after the server is back works."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine = make_engine(url)
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            raise ValueError(
                f"database URL {url!r}: cannot be used ({exc}); SQLite and PostgreSQL URLs are supported"
            ) from None
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        lock = {"sqlite_begin": "IMMEDIATE"} if self.is_sqlite else {"postgresql_write_lock": True}
        writer = self.engine.execution_options(**lock)
        self._write = sessionmaker(writer, expire_on_commit=False)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        with self._outages(), self._read() as session, session.begin():
            yield session

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A write transaction: commits on success, rolls back on any exception. It holds the write lock
        from the start of the block, not from its first SQL statement: file checks made before any
        statement (Gallery.save's `ensure`) happen under the lock too."""
        with self._outages(), self._write() as session, session.begin():
            session.connection()  # the session begins lazily: begin (and lock) now
            yield session

    def _outages(self):
        return contextlib.nullcontext() if self.is_sqlite else _words_for_outages(self.url)

    def close(self) -> None:
        self.engine.dispose()
