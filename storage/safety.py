"""Checks before a gallery is opened, so that no command writes into a database that is damaged,
read-only, or not the one that belongs with the files in the home.

- a read-only database file (its permissions or its file system) is never written or replaced;
- a SQLite file that is not a database, or fails `PRAGMA quick_check`, is refused: every later page
  would fail with raw errors while new work was written into it (`atelier gallery check|repair`);
- a database that is missing, empty or new (no Atelier schema) in a home whose files/ already holds
  gallery files is refused: it would show an empty gallery over images it knows nothing of
  (restore it, point ATELIER_DATABASE_URL at the right file, or `atelier gallery rebuild`).
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from storage.files import FileStore

SQLITE_MAGIC = b"SQLite format 3\x00"
REPORTED_PROBLEMS = 5


class GalleryRefusedError(OSError):
    """The gallery cannot be opened safely; the message says what is wrong and what to do. Nothing
    was changed on disk."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL; None for other databases and in-memory ones."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    name = parsed.database
    if not parsed.drivername.startswith("sqlite") or not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name)


def display(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def is_read_only(path: Path) -> bool:
    """True when the file or its folder cannot be written, or the file is marked read-only (even for root)."""
    mode = path.stat().st_mode
    return not (mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) or not (
        os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
    )


def database_problems(path: Path, *, full: bool = False) -> list[str]:
    """What is wrong with a SQLite file, by its header and `PRAGMA quick_check` (`integrity_check`
    when `full`); [] when it is sound or empty. Opens the file without writing to it."""
    with open(path, "rb") as handle:
        header = handle.read(len(SQLITE_MAGIC))
    if not header:
        return []
    if header != SQLITE_MAGIC:
        return [f"the file does not start like a SQLite database (first bytes {header[:8]!r})"]
    pragma = "integrity_check" if full else "quick_check"
    try:
        con = connect_for_reading(path)
        try:
            rows = [str(row[0]) for row in con.execute(f"PRAGMA {pragma}({REPORTED_PROBLEMS * 20})")]
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        return [f"SQLite cannot read it ({exc})"]
    return [] if rows == ["ok"] else rows


def connect_for_reading(path: Path) -> sqlite3.Connection:
    """A connection that never writes. A writable file is opened normally (a read-only open of a WAL
    database needs its -shm file), with query_only; a read-only one in SQLite's read-only mode."""
    if is_read_only(path):
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    con = sqlite3.connect(path)
    con.execute("PRAGMA query_only = 1")
    return con


def check_database_file(url: str) -> None:
    """Refuse a read-only or damaged SQLite database file (other databases: nothing to check here)."""
    path = sqlite_path(url)
    if path is None or not path.exists():
        return
    if is_read_only(path):
        raise GalleryRefusedError(
            f"gallery database {path} is read-only (its permissions, its folder or its file system); "
            "Atelier will not write to it or replace it. Make it and its folder writable "
            f"(e.g. chmod u+w {path} {path.parent}), or copy the home folder somewhere writable"
        )
    problems = database_problems(path)
    if problems:
        shown = "; ".join(problems[:REPORTED_PROBLEMS])
        raise GalleryRefusedError(
            f"gallery database {path} is damaged ({shown}); nothing was read or written. "
            "`atelier gallery check` reports what is wrong; `atelier gallery repair` backs the file up "
            "and recovers what SQLite can still read into a new one (the damaged file is kept)"
        )


def is_empty_sqlite_file(url: str) -> bool:
    """True when a SQLite URL's file is missing or holds nothing (a new database would be made)."""
    path = sqlite_path(url)
    return path is not None and (not path.exists() or path.stat().st_size == 0)


def refuse_empty_database_over_files(url: str, files: FileStore, home: Path) -> None:
    """Refuse to start a new (empty) database in a home whose files/ already holds gallery files."""
    count = len(files.scan().files)
    if not count:
        return
    raise GalleryRefusedError(
        f"gallery database {display(url)} is missing, empty or new (it has no gallery rows), but "
        f"{files.root} holds {count} gallery file(s); opening it would show an empty gallery over them, "
        "so nothing was changed. Restore the database from a backup (e.g. a gallery.db.backup-* file "
        f"in {home}), point ATELIER_DATABASE_URL at the right file, or run `atelier gallery rebuild` to "
        "make the rows again from the recipes inside the PNGs"
    )
