"""Start-up reconciliation of rows and files after whatever a crash left behind.

- temp files (".…tmp") of interrupted writes are removed;
- trash files (".…del") of interrupted deletes are put back if a row still needs them, else removed;
- files no row refers to are removed;
- generations whose files are missing (or of the wrong size) are flagged `files_missing`, and the
  flag is cleared on those whose files are all back. Nothing here raises for a missing file.

Run only while no other process has the gallery open (Gallery.open holds an exclusive lock then):
a file written by another process just before its row commits would look like an orphan.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select, update

from storage.db import Database
from storage.files import TRASH_SUFFIX, FileStore, is_temp_name
from storage.models import FileRow, GenerationFileRow, GenerationRow

CHUNK = 500


@dataclass(frozen=True)
class SweepReport:
    removed_temp: int = 0
    restored: int = 0
    removed_orphans: int = 0
    missing_files: int = 0
    flagged: int = 0
    unflagged: int = 0


def sweep(db: Database, files: FileStore) -> SweepReport:
    with db.writing() as session:
        known = dict(session.execute(select(FileRow.sha256, FileRow.relative_path)).all())
        removed_temp = restored = removed_orphans = 0
        for folder, name in list(files.walk()):
            entry = folder / name
            if is_temp_name(name):
                final = name[1:].rsplit(".", 2)[0]
                sha = files.sha_from_name(folder, final)
                final_path = folder / final
                if (
                    name.endswith(TRASH_SUFFIX)
                    and known.get(sha) == f"{folder.name}/{final}"
                    and not final_path.exists()
                ):
                    files.restore(entry)
                    restored += 1
                else:
                    entry.unlink(missing_ok=True)
                    removed_temp += 1
            elif known.get(files.sha_from_name(folder, name)) != f"{folder.name}/{name}":
                entry.unlink(missing_ok=True)
                removed_orphans += 1

        linked = set(session.scalars(select(GenerationFileRow.sha256).distinct()))
        unlinked = [sha for sha in known if sha not in linked]
        for start in range(0, len(unlinked), CHUNK):
            chunk = unlinked[start : start + CHUNK]
            session.execute(delete(FileRow).where(FileRow.sha256.in_(chunk)))
            for sha in chunk:
                files.remove(known.pop(sha))
                removed_orphans += 1

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
    return SweepReport(removed_temp, restored, removed_orphans, len(missing), len(to_flag), len(to_unflag))


def _present(files: FileStore, relative: str, size: int) -> bool:
    try:
        return files.path(relative).stat().st_size == size
    except OSError:
        return False
