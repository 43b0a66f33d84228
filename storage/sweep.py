"""Start-up reconciliation of rows and files after whatever a crash left behind.

The sweep removes only what it can prove is the gallery's own debris:
- temp files (".<final>.<hex>.tmp") of interrupted writes;
- trash files (".<final>.<hex>.del") of interrupted deletes — put back if a row still needs them;
- files named by the file journal (storage/journal.py) that no `files` row claims: a save that died
  before its rows committed, or a delete that died before unlinking.
It never removes a file merely because no row refers to it (a lost, emptied or re-pointed database
must not cost the gallery), and it never follows a symbolic link: links are reported and left alone.
Generations whose files are missing (or of the wrong size) are flagged `files_missing`, and the flag
is cleared on those whose files are all back. Nothing here raises for a missing file.

Run only while no other process has the gallery open (Gallery.open holds an exclusive lock then). On
shared storage (--files) other machines may be saving right now, which the home's lock cannot see: there
the sweep leaves temp files and journal entries younger than `grace` for a later sweep.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update

from storage import journal
from storage.db import Database
from storage.files import FINAL_NAME, FOLDER_NAME, FileStore, temp_name_parts
from storage.models import FileRow, GenerationFileRow, GenerationRow

CHUNK = 500
SHARED_FILES_GRACE = timedelta(hours=1)  # longer than any save takes to write its files


@dataclass(frozen=True)
class SweepReport:
    removed_temp: int = 0
    restored: int = 0
    removed_orphans: int = 0  # files the journal proves are debris of a save or delete that died
    missing_files: int = 0
    flagged: int = 0
    unflagged: int = 0
    unreferenced_kept: int = 0  # files no row names and no journal entry proves ours: left alone
    skipped_links: tuple[str, ...] = ()  # symbolic links inside files/: never followed, never removed


def sweep(db: Database, files: FileStore, *, grace: timedelta = timedelta(0)) -> SweepReport:
    scan = files.scan()
    with db.writing() as session:
        known = dict(session.execute(select(FileRow.sha256, FileRow.relative_path)).all())
        removed_temp, restored = _temp_files(files, _older_than(scan.temps, grace), known)
        removed = _journalled(session, files, known, datetime.now(UTC) - grace)
        _drop_unused_file_rows(session, known)
        missing, flags = _flag_missing(session, files, known)
    unreferenced = sum(
        1 for folder, name in scan.files if files.sha_from_name(folder, name) not in known and (folder / name).exists()
    )
    return SweepReport(
        removed_temp=removed_temp,
        restored=restored,
        removed_orphans=removed,
        missing_files=missing,
        flagged=flags[0],
        unflagged=flags[1],
        unreferenced_kept=unreferenced,
        skipped_links=tuple(str(link) for link in scan.links),
    )


def _temp_files(files: FileStore, temps, known: dict[str, str]) -> tuple[int, int]:
    removed = restored = 0
    for folder, name in temps:
        final, kind = temp_name_parts(name)
        sha = files.sha_from_name(folder, final)
        if kind == "del" and known.get(sha) == f"{folder.name}/{final}" and not os.path.lexists(folder / final):
            files.restore(folder / name)
            restored += 1
        else:
            (folder / name).unlink(missing_ok=True)
            removed += 1
    return removed, restored


def _older_than(temps, grace: timedelta) -> list:
    if not grace:
        return list(temps)
    cutoff = time.time() - grace.total_seconds()
    return [(folder, name) for folder, name in temps if _mtime(folder / name) < cutoff]


def _mtime(path) -> float:
    try:
        return os.lstat(path).st_mtime
    except FileNotFoundError:
        return float("inf")


def _journalled(session, files: FileStore, known: dict[str, str], before: datetime) -> int:
    removed = 0
    found = journal.entries(session, before=before)
    for _id, sha, relative in found:
        if sha not in known and _remove_gallery_file(files, relative):
            removed += 1
    journal.forget(session, [entry[0] for entry in found])
    return removed


def _drop_unused_file_rows(session, known: dict[str, str]) -> None:
    """`files` rows no generation uses (saves and deletes never leave one; a hand edit or a partial
    repair may): the rows go, their files stay — a row alone proves nothing about the file's owner."""
    linked = set(session.scalars(select(GenerationFileRow.sha256).distinct()))
    unused = [sha for sha in known if sha not in linked]
    for start in range(0, len(unused), CHUNK):
        chunk = unused[start : start + CHUNK]
        session.execute(delete(FileRow).where(FileRow.sha256.in_(chunk)))
        for sha in chunk:
            known.pop(sha)


def _remove_gallery_file(files: FileStore, relative: str) -> bool:
    """Unlink <root>/<2 hex>/<62 hex>.<ext> if it is a regular file (never a link, never elsewhere)."""
    folder, _, name = relative.partition("/")
    if not (FOLDER_NAME.fullmatch(folder) and FINAL_NAME.fullmatch(name)):
        return False
    path = files.path(relative)
    try:
        if os.path.islink(path.parent) or not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _flag_missing(session, files: FileStore, known: dict[str, str]) -> tuple[int, tuple[int, int]]:
    sizes = dict(session.execute(select(FileRow.sha256, FileRow.size)).all())
    missing = [sha for sha, rel in known.items() if not _present(files, rel, sizes[sha])]
    flagged_ids: set[int] = set()
    for start in range(0, len(missing), CHUNK):
        flagged_ids.update(
            session.scalars(
                select(GenerationFileRow.generation_id).where(
                    GenerationFileRow.sha256.in_(missing[start : start + CHUNK])
                )
            )
        )
    was_flagged = set(session.scalars(select(GenerationRow.id).where(GenerationRow.files_missing.is_(True))))
    to_flag = sorted(flagged_ids - was_flagged)
    to_unflag = sorted(was_flagged - flagged_ids)
    for ids, value in ((to_flag, True), (to_unflag, False)):
        for start in range(0, len(ids), CHUNK):
            session.execute(
                update(GenerationRow)
                .where(GenerationRow.id.in_(ids[start : start + CHUNK]))
                .values(files_missing=value)
            )
    return len(missing), (len(to_flag), len(to_unflag))


def _present(files: FileStore, relative: str, size: int) -> bool:
    try:
        return files.path(relative).stat().st_size == size
    except OSError:
        return False
