"""The Gallery facade: every generation as a row plus its content-addressed files.

Save order: files first (atomic), then one IMMEDIATE transaction for the rows; a failure removes
the files this save created, so nothing partial remains. Input roles for `save(inputs=...)`:
"source" (img2img), "mask" (inpainting), "control:N" and "map:N" (ControlNet unit N's image as given and the map it saw;
"control"/"map" alone mean unit 0).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from pipelines.recipe import Recipe
from storage import journal, migrate, safety, search
from storage.db import Database
from storage.db import database_url as resolve_database_url
from storage.files import (
    FileStore,
    GalleryWriteError,
    check_png,
    check_safetensors,
    files_are_shared,
    files_root,
    make_thumbnail,
    sha256_hex,
)
from storage.homelock import HomeLock
from storage.models import KINDS, FileRow, GenerationFileRow, GenerationLoraRow, GenerationRow, GenerationTagRow
from storage.safety import GalleryRefusedError
from storage.save_rows import normalise_inputs, row_from_recipe
from storage.sweep import SHARED_FILES_GRACE, SweepReport, sweep

__all__ = ["KINDS", "Gallery", "Generation", "Page", "NotFoundError", "GalleryWriteError", "GalleryRefusedError"]


class NotFoundError(ValueError):
    """No generation (or file) with that id in the gallery."""


@dataclass(frozen=True)
class Generation:
    id: int
    created_at: datetime  # UTC, timezone-aware
    kind: str
    parent_id: int | None
    batch_id: str | None
    recipe: Recipe
    image_sha256: str
    image_path: Path
    thumbnail_path: Path
    latent_path: Path | None
    favourite: bool
    tags: tuple[str, ...]
    files_missing: bool
    inputs: tuple[tuple[str, str], ...] = ()  # (role, sha256) of source/control/map files, sorted


@dataclass(frozen=True)
class Page:
    items: tuple[Generation, ...]
    next_cursor: str | None  # pass as `after` for the next (older) page; None on the last page


class Gallery:
    def __init__(self, home: Path, db: Database, lock: HomeLock, sweep_report: SweepReport | None) -> None:
        self.home = home
        self.db = db
        self.files = FileStore(files_root(home))
        self._lock = lock
        self.sweep_report = sweep_report  # None when another process had the gallery open
        self._text_search = {"sqlite": "fts5", "postgresql": "postgresql"}.get(db.engine.dialect.name, "like")

    @classmethod
    def open(cls, home: Path, database_url: str | None = None, *, adopt_existing_files: bool = False) -> Gallery:
        """Open (creating if needed) the gallery in `home`: check, migrate with backup, then sweep.

        The database URL is the argument, else $ATELIER_DATABASE_URL, else <home>/gallery.db.
        Migrations and the sweep run only when no other process has this home open. A damaged or
        read-only database, or a new one in a home whose files/ already holds files (unless
        `adopt_existing_files`: `atelier gallery rebuild`), raises GalleryRefusedError (storage/safety.py).
        """
        home = Path(home).expanduser()
        home.mkdir(parents=True, exist_ok=True)
        url = resolve_database_url(home, database_url)
        lock = HomeLock(home / "gallery.lock")
        exclusive = lock.acquire()
        db = None
        try:
            safety.check_database_file(url)
            store = FileStore(files_root(home))
            guard = exclusive and not adopt_existing_files
            if guard and safety.is_empty_sqlite_file(url):  # before the file is made
                safety.refuse_empty_database_over_files(url, store, home)
            db = Database(url)
            report = None
            if exclusive:
                if guard and migrate.current_revision(db) is None:
                    safety.refuse_empty_database_over_files(url, store, home)
                migrate.upgrade(db, backup_dir=home / "backups")
                report = sweep(db, store, grace=SHARED_FILES_GRACE if files_are_shared() else timedelta(0))
                lock.share()
            elif migrate.current_revision(db) != migrate.head_revision():
                raise migrate.MigrationError(
                    f"the gallery in {home} needs a schema upgrade but another Atelier process has it open; "
                    "close that process and start again"
                )
        except BaseException:
            if db is not None:
                db.close()
            lock.release()
            raise
        return cls(home, db, lock, report)

    def close(self) -> None:
        self.db.close()
        self._lock.release()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- saving --------------------------------------------------------------------------------

    def save(
        self,
        recipe: Recipe,
        kind: str,
        image_png: bytes,
        *,
        parent_id: int | None = None,
        batch_id: str | None = None,
        latent: bytes | None = None,
        inputs: Mapping[str, bytes] | None = None,
    ) -> Generation:
        blobs = self._validated_blobs(recipe, kind, image_png, parent_id, batch_id, latent, inputs)
        created: list[str] = []
        pending: list[int] = []
        try:
            pending = self._journal_new_files(blobs)
            stored = []
            for role, data in blobs:
                sha, relative, new = self.files.put(data)
                if new:
                    created.append(relative)
                stored.append((role, sha, relative, data))
            with self.db.writing() as session:
                if parent_id is not None and session.get(GenerationRow, parent_id) is None:
                    raise NotFoundError(f"parent_id: no generation with id {parent_id}")
                for _role, _sha, relative, data in stored:
                    if self.files.ensure(relative, data):  # removed by a delete since we wrote it
                        created.append(relative)
                self._insert_files(session, stored)
                row = row_from_recipe(recipe, kind, parent_id, batch_id, stored[0][1])
                session.add(row)
                session.flush()
                session.add_all(GenerationFileRow(generation_id=row.id, role=r, sha256=s) for r, s, _, _ in stored)
                session.add_all(
                    GenerationLoraRow(
                        generation_id=row.id, position=i, name=lora.name, sha256=lora.sha256, weight=lora.weight
                    )
                    for i, lora in enumerate(recipe.loras)
                )
                journal.forget(session, pending)  # committed with the rows: the files are now claimed
            new_id = row.id
        except OperationalError as exc:
            self._discard(created, pending)
            if "full" in str(exc.orig).lower():
                raise GalleryWriteError(
                    errno.ENOSPC,
                    f"gallery: no space left on the disk holding the database ({exc.orig}); nothing was saved "
                    "— free some space and try again",
                ) from exc
            raise
        except BaseException:
            self._discard(created, pending)
            raise
        return self.get(new_id)

    def _journal_new_files(self, blobs) -> list[int]:
        """Journal the files this save is about to create (committed before any is written), so a crash
        before the rows commit leaves debris the sweep can prove. Files already on disk are not
        journalled: whoever put them there, a failed save must never remove them."""
        new = {}
        for _role, data in blobs:
            sha = sha256_hex(data)
            relative = self.files.relative_path(sha, data)
            if not self.files.path(relative).exists():
                new[sha] = relative
        if not new:
            return []
        with self.db.writing() as session:
            return journal.record(session, new.items(), journal.PENDING)

    def _validated_blobs(self, recipe, kind, image_png, parent_id, batch_id, latent, inputs) -> list:
        if not isinstance(recipe, Recipe):
            raise ValueError(f"recipe: must be a Recipe (got {type(recipe).__name__})")
        search.check_kind(kind)
        check_png(image_png)
        if parent_id is not None:
            search.check_id(parent_id, "parent_id")
        if batch_id is not None and (not isinstance(batch_id, str) or not 1 <= len(batch_id) <= 64):
            raise ValueError(f"batch_id: must be a string of 1 to 64 characters or None (got {batch_id!r})")
        blobs = [("image", bytes(image_png)), ("thumbnail", make_thumbnail(bytes(image_png)))]
        if latent is not None:
            check_safetensors(latent)
            blobs.append(("latent", bytes(latent)))
        for role, data in sorted(normalise_inputs(recipe, inputs or {}).items()):
            blobs.append((role, data))
        return blobs

    def _insert_files(self, session, stored) -> None:
        values = {
            sha: {"sha256": sha, "role": role, "relative_path": rel, "size": len(data)}
            for role, sha, rel, data in reversed(stored)
        }
        dialect = {"sqlite": sqlite, "postgresql": postgresql}.get(self.db.engine.dialect.name)
        if dialect is not None:
            session.execute(dialect.insert(FileRow).values(list(values.values())).on_conflict_do_nothing())
            return
        have = set(session.scalars(select(FileRow.sha256).where(FileRow.sha256.in_(values))))
        session.add_all(FileRow(**v) for sha, v in values.items() if sha not in have)

    def _discard(self, created: list[str], pending: list[int]) -> None:
        """Remove files this failed save created, unless another save has meanwhile recorded them."""
        if not created and not pending:
            return
        try:
            with self.db.writing() as session:
                shas = [rel.replace("/", "").split(".", 1)[0] for rel in created]
                recorded = set(session.scalars(select(FileRow.sha256).where(FileRow.sha256.in_(shas))))
                for sha, rel in zip(shas, created):
                    if sha not in recorded:
                        self.files.remove(rel)
                journal.forget(session, pending)
        except Exception:
            pass  # left for the start-up sweep: the journal still names these files

    # -- reading -------------------------------------------------------------------------------

    def imported_image(self, sha256: str) -> Generation | None:
        """The "imported" generation whose image has this sha256 (importing the same file twice finds it)."""
        with self.db.reading() as session:
            row = session.scalars(
                select(GenerationRow)
                .where(GenerationRow.image_sha256 == sha256, GenerationRow.kind == "imported")
                .order_by(GenerationRow.id)
                .limit(1)
            ).first()
            found = row.id if row is not None else None
        return self.get(found) if found is not None else None

    def get(self, id: int) -> Generation:
        search.check_id(id)
        with self.db.reading() as session:
            row = session.get(GenerationRow, id)
            if row is None:
                raise NotFoundError(f"no generation with id {id}")
            return self._build(session, [row])[0]

    def file_path(self, sha256: str) -> Path:
        with self.db.reading() as session:
            relative = session.scalar(select(FileRow.relative_path).where(FileRow.sha256 == sha256))
        if relative is None:
            raise NotFoundError(f"no file with sha256 {sha256!r} in the gallery")
        return self.files.path(relative)

    def read_file(self, sha256: str) -> bytes:
        path = self.file_path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(
                errno.ENOENT, f"gallery file {path} (sha256 {sha256}) is missing from disk", str(path)
            ) from None
        if sha256_hex(data) != sha256:
            raise OSError(errno.EIO, f"gallery file {path} is damaged: its content no longer has sha256 {sha256}")
        return data

    def list(self, limit: int = 50, after: str | None = None, **filters: Any) -> Page:
        """Newest first, keyset-paginated; filters as in `search`."""
        return self.search(None, limit=limit, after=after, **filters)

    def search(self, query: str | None, *, limit: int = 50, after: str | None = None, **filters: Any) -> Page:
        """Full text over prompt, negative and prompt template (see storage.search) combined with filters:
        model, lora (names), kind (one or several), since/until (created_at, since inclusive, until
        exclusive), favourite, tag, batch_id, parent_id. Newest (highest id) first."""
        search.check_limit(limit)
        if query is not None and not isinstance(query, str):
            raise ValueError(f"search: the query must be text or None (got {type(query).__name__})")
        statement = select(GenerationRow).where(*search.filter_conditions(filters)).limit(limit + 1)
        cursor = search.decode_cursor(after) if after is not None else None
        text_query = query if query is not None and query.strip() else None
        if text_query is not None and self._text_search == "fts5":
            statement = search.searched(statement, text_query, cursor)
        else:
            if text_query is not None:
                postgres = self._text_search == "postgresql"
                condition = search.postgres_condition if postgres else search.like_condition
                statement = statement.where(condition(text_query))
            if cursor is not None:
                statement = statement.where(GenerationRow.id < cursor)
            statement = statement.order_by(GenerationRow.id.desc())
        with self.db.reading() as session:
            try:
                rows = list(session.scalars(statement))
            except OperationalError as exc:
                if query is not None and search.is_fts_error(str(exc.orig)):
                    raise ValueError(
                        f"search: {query!r} is not a valid full-text query ({exc.orig}); {search.FTS_HELP}"
                    ) from None
                raise
            items = self._build(session, rows[:limit])
        more = len(rows) > limit
        return Page(tuple(items), search.encode_cursor(items[-1].id) if more else None)

    def tags_in_use(self) -> list[str]:
        """Every tag some generation has, sorted (for a front end's tag filter)."""
        with self.db.reading() as session:
            return list(session.scalars(select(GenerationTagRow.tag).distinct().order_by(GenerationTagRow.tag)))

    def children(self, id: int) -> list[Generation]:
        """Direct children, oldest first."""
        self.get(id)
        with self.db.reading() as session:
            rows = session.scalars(
                select(GenerationRow)
                .where(GenerationRow.parent_id == id)
                .order_by(GenerationRow.created_at, GenerationRow.id)
            )
            return self._build(session, list(rows))

    def ancestors(self, id: int) -> list[Generation]:
        """Parent, grandparent, … up to the root (nearest first)."""
        chain: list[Generation] = []
        seen = {id}
        current = self.get(id)
        while current.parent_id is not None and current.parent_id not in seen:
            seen.add(current.parent_id)
            current = self.get(current.parent_id)
            chain.append(current)
        return chain

    # -- changing ------------------------------------------------------------------------------

    def set_favourite(self, id: int, favourite: bool) -> Generation:
        if not isinstance(favourite, bool):
            raise ValueError(f"favourite: must be true or false (got {favourite!r})")
        with self.db.writing() as session:
            self._row_for_update(session, id).favourite = favourite
        return self.get(id)

    def set_tags(self, id: int, tags: Iterable[str]) -> Generation:
        """Replace the tags (order kept, duplicates dropped)."""
        clean = search.normalise_tags(tags)
        with self.db.writing() as session:
            self._row_for_update(session, id)
            session.execute(delete(GenerationTagRow).where(GenerationTagRow.generation_id == id))
            session.add_all(GenerationTagRow(generation_id=id, tag=t, position=i) for i, t in enumerate(clean))
        return self.get(id)

    def delete(self, id: int) -> tuple[str, ...]:
        """Delete the row and the files no other row uses, in one operation. Children stay (their
        parent_id becomes None). Returns the sha256 of the files removed."""
        trashed: list[Path] = []
        removed: list[str] = []
        given_up: list[int] = []
        try:
            with self.db.writing() as session:
                self._row_for_update(session, id)
                used = set(
                    session.scalars(select(GenerationFileRow.sha256).where(GenerationFileRow.generation_id == id))
                )
                session.execute(delete(GenerationRow).where(GenerationRow.id == id))
                still_used = set(
                    session.scalars(select(GenerationFileRow.sha256).where(GenerationFileRow.sha256.in_(used)))
                )
                removed = sorted(used - still_used)
                paths = dict(
                    session.execute(
                        select(FileRow.sha256, FileRow.relative_path).where(FileRow.sha256.in_(removed))
                    ).all()
                )
                session.execute(delete(FileRow).where(FileRow.sha256.in_(removed)))
                given_up = journal.record(session, paths.items(), journal.DELETED)
                # Renamed away while we hold the write lock, so a concurrent save that reuses one
                # of these files sees it gone and writes it again.
                trashed = [t for t in (self.files.to_trash(paths[sha]) for sha in removed) if t is not None]
        except BaseException:
            for trash in trashed:
                self.files.restore(trash)
            raise
        for trash in trashed:
            trash.unlink(missing_ok=True)
        self._forget_quietly(given_up)
        return tuple(removed)

    def _forget_quietly(self, entries: list[int]) -> None:
        if not entries:
            return
        try:
            with self.db.writing() as session:
                journal.forget(session, entries)
        except Exception:
            pass  # harmless: the sweep removes a journalled file only while no row claims it

    # -- helpers -------------------------------------------------------------------------------

    def _row_for_update(self, session, id: int) -> GenerationRow:
        search.check_id(id)
        row = session.get(GenerationRow, id)
        if row is None:
            raise NotFoundError(f"no generation with id {id}")
        return row

    def _build(self, session, rows: list[GenerationRow]) -> list[Generation]:
        if not rows:
            return []
        ids = [r.id for r in rows]
        links: dict[int, dict[str, Path]] = {i: {} for i in ids}
        shas: dict[int, dict[str, str]] = {i: {} for i in ids}
        for gen_id, role, sha, relative in session.execute(
            select(
                GenerationFileRow.generation_id, GenerationFileRow.role, GenerationFileRow.sha256, FileRow.relative_path
            )
            .join(FileRow, FileRow.sha256 == GenerationFileRow.sha256)
            .where(GenerationFileRow.generation_id.in_(ids))
        ):
            links[gen_id][role] = self.files.path(relative)
            shas[gen_id][role] = sha
        tags: dict[int, list[str]] = {i: [] for i in ids}
        for gen_id, tag in session.execute(
            select(GenerationTagRow.generation_id, GenerationTagRow.tag)
            .where(GenerationTagRow.generation_id.in_(ids))
            .order_by(GenerationTagRow.generation_id, GenerationTagRow.position)
        ):
            tags[gen_id].append(tag)
        return [
            Generation(
                id=r.id,
                created_at=r.created_at,
                kind=r.kind,
                parent_id=r.parent_id,
                batch_id=r.batch_id,
                recipe=Recipe.from_json(r.recipe_json),
                image_sha256=r.image_sha256,
                image_path=links[r.id]["image"],
                thumbnail_path=links[r.id]["thumbnail"],
                latent_path=links[r.id].get("latent"),
                favourite=r.favourite,
                tags=tuple(tags[r.id]),
                files_missing=r.files_missing,
                inputs=tuple(
                    sorted((k, v) for k, v in shas[r.id].items() if k not in ("image", "thumbnail", "latent"))
                ),
            )
            for r in rows
        ]
