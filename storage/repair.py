"""`atelier gallery check` and `atelier gallery repair`, below the Studio: what is wrong with a gallery
(read without writing anything), and recovering what SQLite can still read of a damaged database into
a new file, after an exact copy of the damaged one (which is kept).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from storage import migrate
from storage.db import Database, database_url
from storage.files import FileStore, files_root, fsync_dir
from storage.homelock import HomeLock
from storage.models import FileRow, GenerationRow
from storage.safety import (
    GalleryRefusedError,
    connect_for_reading,
    database_problems,
    display,
    is_empty_sqlite_file,
    is_read_only,
    sqlite_path,
)

TABLES = ("generations", "files", "generation_files", "generation_loras", "generation_tags", "file_journal")
MAX_SKIPS = 64  # read errors tolerated per table before the rest of it is given up


@dataclass(frozen=True)
class GalleryCheck:
    database: str
    problems: tuple[str, ...]  # empty: the database is sound and matches the files
    generations: int | None  # None: the rows could not be read
    files_on_disk: int
    unreferenced_files: int  # files no row names (kept; `atelier gallery rebuild` adopts PNGs with recipes)
    missing_files: int  # rows whose file is gone or has the wrong size
    temp_files: int
    links: tuple[str, ...]  # symbolic links inside files/ (never followed)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_gallery(home: Path, url: str | None = None) -> GalleryCheck:
    """Report on the database and the files of `home`; writes nothing."""
    home = Path(home).expanduser()
    url = database_url(home, url)
    scan = FileStore(files_root(home)).scan()
    problems = list(_file_problems(url, len(scan.files)))
    rows: dict[str, tuple[str, int]] | None = None
    generations = None
    if not problems and is_empty_sqlite_file(url):  # a new home: nothing to read yet
        generations, rows = 0, {}
    elif not problems:
        try:
            generations, rows = _read_rows(url)
        except (SQLAlchemyError, sqlite3.Error) as exc:
            problems.append(f"the gallery rows cannot be read ({type(exc).__name__}: {exc})")
    if generations == 0 and scan.files:
        problems.append(
            f"the database has no generations but files/ holds {len(scan.files)} file(s): "
            "`atelier gallery rebuild` makes rows again from the PNGs' recipes"
        )
    on_disk = {FileStore.sha_from_name(folder, name) for folder, name in scan.files}
    missing = 0
    if rows is not None:
        root = files_root(home)
        missing = sum(1 for rel, size in rows.values() if not _has_size(root / rel, size))
    return GalleryCheck(
        database=display(url),
        problems=tuple(problems),
        generations=generations,
        files_on_disk=len(scan.files),
        unreferenced_files=len(on_disk - set(rows or {})) if rows is not None else len(on_disk),
        missing_files=missing,
        temp_files=len(scan.temps),
        links=tuple(str(link) for link in scan.links),
    )


def _file_problems(url: str, files_count: int) -> list[str]:
    path = sqlite_path(url)
    if path is None:
        return []
    if not path.exists() or path.stat().st_size == 0:
        if not files_count:
            return []
        return [f"the database file {path} is missing or empty but files/ holds {files_count} file(s)"]
    found = [f"damaged: {p}" for p in database_problems(path, full=True)]
    if is_read_only(path):
        found.append(f"the database file {path} is read-only: Atelier will not open it for writing")
    return found


def _read_rows(url: str) -> tuple[int, dict[str, tuple[str, int]]]:
    path = sqlite_path(url)
    engine = create_engine("sqlite://", creator=lambda: connect_for_reading(path)) if path else create_engine(url)
    try:
        with engine.connect() as conn:
            count = conn.scalar(select(func.count()).select_from(GenerationRow))
            rows = {
                sha: (rel, size)
                for sha, rel, size in conn.execute(select(FileRow.sha256, FileRow.relative_path, FileRow.size))
            }
    finally:
        engine.dispose()
    return int(count or 0), rows


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


@dataclass(frozen=True)
class RepairResult:
    database: Path  # the repaired database, now in use
    damaged_copy: Path  # an exact copy of the damaged file (its -wal/-shm beside it, if it had them)
    recovered: dict[str, int] = field(default_factory=dict)  # rows per table
    read_errors: dict[str, int] = field(default_factory=dict)  # tables SQLite could not read whole
    dropped_generations: int = 0  # rows without a readable image/thumbnail link (their files stay)


def repair_database(home: Path, url: str | None = None) -> RepairResult:
    """Copy the damaged SQLite file aside, recover every row SQLite can still read into a new database
    at the current schema, and put the new one in its place. Files on disk are never touched."""
    home = Path(home).expanduser()
    url = database_url(home, url)
    path = sqlite_path(url)
    if path is None:
        raise ValueError(
            f"repair: works on SQLite database files; {display(url)} is not one (use the database's own tools)"
        )
    if not path.exists():
        raise ValueError(f"repair: there is no database file at {path}; restore one, or run `atelier gallery rebuild`")
    if is_read_only(path):
        raise GalleryRefusedError(f"repair: the database file {path} is read-only; make it writable first")
    lock = HomeLock(home / "gallery.lock")
    try:
        if not lock.acquire():
            raise GalleryRefusedError("repair: another Atelier process has this gallery open; close it first")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        copy = _copy_aside(path, stamp)
        fresh = path.with_name(f".{path.name}.repair-{stamp}.tmp")
        result = _recover_into(path, fresh, files_root(home))
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        os.replace(fresh, path)
        fsync_dir(path.parent)
    finally:
        lock.release()
    return RepairResult(path, copy, *result)


def _copy_aside(path: Path, stamp: str) -> Path:
    """An exact copy of the file (and its -wal/-shm), made before anything else happens."""
    copy = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            shutil.copyfile(source, f"{copy}{suffix}")
            with open(f"{copy}{suffix}", "rb+") as handle:
                os.fsync(handle.fileno())
    fsync_dir(path.parent)
    return copy


def _recover_into(damaged: Path, fresh: Path, root: Path) -> tuple[dict, dict, int]:
    db = Database(f"sqlite:///{fresh}")
    try:
        migrate.upgrade(db)
    finally:
        db.close()
    source = sqlite3.connect(damaged)
    target = sqlite3.connect(fresh, isolation_level=None)
    try:
        with contextlib.suppress(sqlite3.DatabaseError):  # unreadable: each table reports its read error
            source.execute("PRAGMA query_only = 1")
        target.execute("PRAGMA foreign_keys = OFF")
        target.execute("BEGIN")
        recovered, errors = {}, {}
        for table in TABLES:
            recovered[table], errors[table] = _copy_table(source, target, table)
        dropped = _mend_references(target, root)
        target.execute("INSERT INTO generations_fts(generations_fts) VALUES ('rebuild')")
        target.execute("COMMIT")
        target.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        source.close()
        target.close()
    return recovered, {t: n for t, n in errors.items() if n}, dropped


def _copy_table(source: sqlite3.Connection, target: sqlite3.Connection, table: str) -> tuple[int, int]:
    """Rows in rowid order; after a read error, carry on past the damage (further each time)."""
    wanted = [row[1] for row in target.execute(f"PRAGMA table_info({table})")]
    try:
        have = {row[1] for row in source.execute(f"PRAGMA table_info({table})")}
    except sqlite3.DatabaseError:
        return 0, 1
    columns = [c for c in wanted if c in have]
    if not columns:
        return 0, 0
    names = ", ".join(columns)
    insert = f"INSERT OR IGNORE INTO {table} ({names}) VALUES ({', '.join('?' for _ in columns)})"
    copied = errors = 0
    last = None
    while errors <= MAX_SKIPS:
        where, args = ("WHERE rowid > ?", (last,)) if last is not None else ("", ())
        try:
            for row in source.execute(f"SELECT rowid, {names} FROM {table} {where} ORDER BY rowid", args):
                target.execute(insert, row[1:])
                last = row[0]
                copied += 1
            break
        except sqlite3.DatabaseError:
            errors += 1
            last = (last or 0) + 2**errors
    return copied, errors


def _mend_references(target: sqlite3.Connection, files_root: Path) -> int:
    """Make the recovered rows consistent: file rows found again on disk, links to lost rows removed,
    generations without their image or thumbnail dropped (their files stay; rebuild can adopt them)."""
    linked = [r[0] for r in target.execute("SELECT DISTINCT sha256 FROM generation_files")]
    known = {r[0] for r in target.execute("SELECT sha256 FROM files")}
    for sha in linked:
        if sha not in known:
            found = _on_disk(files_root, sha)
            if found is not None:
                rel, size = found
                target.execute(
                    "INSERT INTO files (sha256, role, relative_path, size) VALUES (?, 'image', ?, ?)", (sha, rel, size)
                )
    target.execute("DELETE FROM generation_files WHERE sha256 NOT IN (SELECT sha256 FROM files)")
    lacking = "SELECT id FROM generations g WHERE NOT EXISTS (SELECT 1 FROM generation_files f WHERE f.generation_id = g.id AND f.role = ?)"
    dropped = {r[0] for role in ("image", "thumbnail") for r in target.execute(lacking, (role,))}
    target.executemany("DELETE FROM generations WHERE id = ?", [(i,) for i in dropped])
    for table in ("generation_files", "generation_loras", "generation_tags"):
        target.execute(f"DELETE FROM {table} WHERE generation_id NOT IN (SELECT id FROM generations)")
    target.execute("UPDATE generations SET parent_id = NULL WHERE parent_id NOT IN (SELECT id FROM generations)")
    target.execute("DELETE FROM files WHERE sha256 NOT IN (SELECT sha256 FROM generation_files)")
    return len(dropped)


def _on_disk(root: Path, sha: str) -> tuple[str, int] | None:
    folder = root / sha[:2]
    for candidate in sorted(folder.glob(f"{sha[2:]}.*")) if folder.is_dir() else ():
        if candidate.is_file() and not candidate.is_symlink():
            return f"{sha[:2]}/{candidate.name}", candidate.stat().st_size
    return None


# -- what `atelier gallery rebuild` (atelier/gallery_maintenance.py) adopts -----------------------------


def unclaimed_images(files: FileStore, db: Database) -> list[Path]:
    """PNG files in files/ that no generation has as its image, oldest first (links never followed)."""
    with db.reading() as session:
        claimed = set(session.scalars(select(GenerationRow.image_sha256)))
    found = [
        folder / name
        for folder, name in files.scan().files
        if name.endswith(".png") and FileStore.sha_from_name(folder, name) not in claimed
    ]
    return sorted(found, key=lambda path: (path.stat().st_mtime, path.name))


def stored_files(files: FileStore, extension: str) -> list[Path]:
    """Every gallery-named regular file with this extension (".safetensors" …), rows or not."""
    return [folder / name for folder, name in files.scan().files if name.endswith(extension)]


def find_stored(files: FileStore, sha256: str) -> Path | None:
    """The file in files/ whose name is this sha256, rows or not; None when there is none."""
    found = _on_disk(files.root, sha256) if len(sha256) == 64 else None
    return files.path(found[0]) if found else None
