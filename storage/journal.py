"""The file journal (table `file_journal`, revision 0004): the gallery's proof that a file is its own debris.

- "pending": committed *before* a save writes a file that was not on disk, and removed in the same
  transaction that commits the save's rows. A crash in between leaves the entry; the sweep then finds
  no `files` row for that sha256 and removes the file.
- "deleted": committed *with* a row delete, for the files nothing uses any more; cleared once they are
  unlinked. A crash after the commit leaves the entry; the sweep finishes the removal.

A file is removed by the sweep only while no `files` row claims its sha256, so an entry left over
after the same bytes were saved again is harmless.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import delete, insert, select

from storage.models import FileJournalRow

PENDING = "pending"
DELETED = "deleted"
CHUNK = 500


def record(session, entries: Iterable[tuple[str, str]], reason: str) -> list[int]:
    """Journal (sha256, relative path) pairs; returns the new entries' ids."""
    now = datetime.now(UTC)
    rows = [{"sha256": sha, "relative_path": rel, "reason": reason, "created_at": now} for sha, rel in entries]
    if not rows:
        return []
    return list(session.scalars(insert(FileJournalRow).returning(FileJournalRow.id), rows))


def forget(session, ids: Iterable[int]) -> None:
    ids = list(ids)
    for start in range(0, len(ids), CHUNK):
        session.execute(delete(FileJournalRow).where(FileJournalRow.id.in_(ids[start : start + CHUNK])))


def entries(session, before: datetime | None = None) -> list[tuple[int, str, str]]:
    """(id, sha256, relative path) of every entry (made before `before`, when given)."""
    query = select(FileJournalRow.id, FileJournalRow.sha256, FileJournalRow.relative_path)
    if before is not None:
        query = query.where(FileJournalRow.created_at < before)
    return [tuple(row) for row in session.execute(query)]
