"""Helpers shared by the gallery tests and the crash-test writer. Checks go through a connection of their
own (SQLAlchemy Core, plain SQL) and the file system directly, not through the code under test."""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
from pathlib import Path

from PIL import Image
from sqlalchemy import create_engine, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from pipelines.recipe import ControlUnit, LoraRef, ModelRef, Recipe


def make_png(n: int, size: tuple[int, int] = (32, 24)) -> bytes:
    """A small PNG whose colour encodes n, so different n give different bytes."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (n % 256, (n // 256) % 256, (n // 65536) % 256)).save(buffer, "PNG")
    return buffer.getvalue()


def make_latent(n: int) -> bytes:
    """The bytes of a tiny .safetensors file holding one float32 tensor [n]."""
    header = json.dumps({"latent": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + struct.pack("<f", float(n))


def make_recipe(**changes) -> Recipe:
    fields = dict(
        model=ModelRef("tiny"),
        prompt="a photo of a cat",
        negative_prompt="blurry",
        seed=1,
        steps=4,
        width=64,
        height=64,
    )
    fields.update(changes)
    return Recipe(**fields)


def control_recipe(image: bytes, map_: bytes) -> Recipe:
    unit = ControlUnit(
        model=ModelRef("tiny-controlnet"), preprocessor="canny", image_sha256=sha(image), map_sha256=sha(map_)
    )
    return make_recipe(controlnets=(unit,), loras=(LoraRef("ink", weight=0.7),))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_on_disk(home: Path) -> set[str]:
    return _files_on_disk(home / "files")


def _files_on_disk(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def _fts_problems(con, postgres: bool) -> list[str]:
    """The full-text index agrees with the rows: each row is found by its prompt's first and last word,
    and every hit is a row that exists (SQLite 3.40's integrity-check ignores external content)."""
    if postgres:
        from storage.pg_search import PG_DOCUMENT

        match = f"SELECT id FROM generations WHERE {PG_DOCUMENT} @@ plainto_tsquery('simple', atelier_unaccent(:word))"
    else:
        match = "SELECT rowid FROM generations_fts WHERE generations_fts MATCH :word"
    ids = {r[0] for r in con.execute(text("SELECT id FROM generations"))}
    for gen_id, prompt in con.execute(text("SELECT id, prompt FROM generations")).fetchall():
        words = re.findall(r"\w+", prompt)
        for word in {words[0], words[-1]} if words else ():
            hits = {r[0] for r in con.execute(text(match), {"word": word if postgres else f'"{word}"'})}
            if gen_id not in hits or not hits <= ids:
                return [f"full-text index out of sync with generations (word {word!r}, row {gen_id})"]
    return []


def database_url(gallery) -> str:
    """The URL an open gallery uses, password included, for checks made over a connection of their own."""
    return gallery.db.engine.url.render_as_string(hide_password=False)


def consistency_problems(
    home: Path, url: str | None = None, *, files: Path | None = None, after_sweep: bool = False
) -> list[str]:
    """Everything that a crash must never leave behind, checked over a connection of its own (SQLite in the
    home folder unless `url` names another database) and on the file system (`files`, else <home>/files).
    `after_sweep`: the start-up sweep has just run, so the file journal must be empty too."""
    problems: list[str] = []
    root = files if files is not None else home / "files"
    engine = create_engine(url or f"sqlite:///{home / 'gallery.db'}", poolclass=NullPool)
    postgres = engine.dialect.name == "postgresql"
    try:
        with engine.connect() as con:
            problems += _postgres_storage_problems(con) if postgres else _sqlite_storage_problems(con)
            problems += _reference_problems(con) + _fts_problems(con, postgres)
            rows = dict(con.execute(text("SELECT sha256, relative_path FROM files")).fetchall())
            for sha_, relative in rows.items():
                path = root / relative
                if not path.exists():
                    problems.append(f"missing file {relative}")
                elif sha(path.read_bytes()) != sha_:
                    problems.append(f"file {relative} does not hash to {sha_}")
            links = text("SELECT role, sha256 FROM generation_files WHERE generation_id = :id")
            for gen_id, image_sha in con.execute(text("SELECT id, image_sha256 FROM generations")).fetchall():
                roles = dict(con.execute(links, {"id": gen_id}).fetchall())
                if roles.get("image") != image_sha or "thumbnail" not in roles:
                    problems.append(f"generation {gen_id} lacks its image or thumbnail link")
            unlinked = con.execute(
                text("SELECT sha256 FROM files WHERE sha256 NOT IN (SELECT sha256 FROM generation_files)")
            ).fetchall()
            if unlinked:
                problems.append(f"{len(unlinked)} file rows no generation uses")
            journalled = con.execute(text("SELECT count(*) FROM file_journal")).scalar()
            if after_sweep and journalled:
                problems.append(f"{journalled} file journal entries left after the sweep")
    finally:
        engine.dispose()
    extra = _files_on_disk(root) - set(rows.values())
    if extra:
        problems.append(f"files without rows or temp files on disk: {sorted(extra)[:5]}")
    return problems


def _sqlite_storage_problems(con) -> list[str]:
    problems = []
    if con.execute(text("PRAGMA integrity_check")).scalar() != "ok":
        problems.append("integrity_check failed")
    if con.execute(text("PRAGMA foreign_key_check")).fetchall():
        problems.append("foreign key violations")
    return problems


def _postgres_storage_problems(con) -> list[str]:
    """PostgreSQL's counterpart of PRAGMA integrity_check: amcheck verifies every table's heap and every
    B-tree index of the gallery's schema against its table (installed in a schema of its own, so the
    gallery's schema stays as the migrations made it). Needs a superuser; skipped on a server without one."""
    can = con.execute(
        text(
            "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) "
            "AND EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck')"
        )
    ).scalar()
    if not can:
        return []
    con.execute(text("CREATE SCHEMA IF NOT EXISTS atelier_checks"))
    con.execute(text("CREATE EXTENSION IF NOT EXISTS amcheck SCHEMA atelier_checks"))
    con.commit()
    relations = (
        "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_am a ON a.oid = c.relam WHERE n.nspname = current_schema() AND a.amname = :method"
    )
    problems = []
    for table in con.scalars(text(relations), {"method": "heap"}).all():
        damage = text("SELECT count(*) FROM atelier_checks.verify_heapam(CAST(:table AS regclass))")
        if con.execute(damage, {"table": table}).scalar():
            problems.append(f"table {table} is damaged (verify_heapam)")
    for index in con.scalars(text(relations), {"method": "btree"}).all():
        try:
            with con.begin_nested():
                check = text("SELECT atelier_checks.bt_index_check(CAST(:index AS regclass), true)")
                con.execute(check, {"index": index})
        except DBAPIError as exc:
            problems.append(f"index {index} is damaged ({str(exc.orig).splitlines()[0]})")
    return problems


def _reference_problems(con) -> list[str]:
    """Every reference points at a row that exists, on any dialect (whether or not it enforces foreign
    keys), and the lineage (parent_id) leads back to a root without a cycle."""
    problems = []
    dangling = {
        "generation_files.generation_id": "SELECT count(*) FROM generation_files WHERE generation_id NOT IN "
        "(SELECT id FROM generations)",
        "generation_files.sha256": "SELECT count(*) FROM generation_files WHERE sha256 NOT IN (SELECT sha256 FROM files)",
        "generation_loras.generation_id": "SELECT count(*) FROM generation_loras WHERE generation_id NOT IN "
        "(SELECT id FROM generations)",
        "generation_tags.generation_id": "SELECT count(*) FROM generation_tags WHERE generation_id NOT IN "
        "(SELECT id FROM generations)",
        "generations.parent_id": "SELECT count(*) FROM generations WHERE parent_id IS NOT NULL AND parent_id NOT IN "
        "(SELECT id FROM generations)",
    }
    for what, query in dangling.items():
        count = con.execute(text(query)).scalar()
        if count:
            problems.append(f"{count} rows whose {what} names a row that does not exist")
    parents = dict(con.execute(text("SELECT id, parent_id FROM generations")).fetchall())
    for start in parents:
        seen, at = set(), start
        while at is not None and at in parents:
            if at in seen:
                problems.append(f"the lineage of generation {start} goes round in a cycle")
                break
            seen.add(at)
            at = parents[at]
    return problems


def set_created_at(gallery, generation_id: int, when) -> None:
    """Move a generation in time (date filter tests), on any dialect."""
    from storage.models import GenerationRow

    with gallery.db.engine.begin() as con:
        con.execute(update(GenerationRow).where(GenerationRow.id == generation_id).values(created_at=when))


def query_rows(gallery, sql: str, **params) -> list[tuple]:
    engine = create_engine(database_url(gallery), poolclass=NullPool)
    try:
        with engine.connect() as con:
            return [tuple(row) for row in con.execute(text(sql), params)]
    finally:
        engine.dispose()
