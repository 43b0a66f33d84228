"""Helpers shared by the gallery tests and the crash-test writer. Checks go through sqlite3 and the
file system directly, not through the code under test."""

from __future__ import annotations

import hashlib
import io
import json
import re
import sqlite3
import struct
from pathlib import Path

from PIL import Image

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
    root = home / "files"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def _fts_problems(con: sqlite3.Connection) -> list[str]:
    """The FTS index agrees with the rows: each row is found by its prompt's first and last word,
    and every hit is a row that exists (SQLite 3.40's integrity-check ignores external content)."""
    ids = {r[0] for r in con.execute("SELECT id FROM generations")}
    for gen_id, prompt in con.execute("SELECT id, prompt FROM generations"):
        words = re.findall(r"\w+", prompt)
        for word in {words[0], words[-1]} if words else ():
            hits = {
                r[0]
                for r in con.execute("SELECT rowid FROM generations_fts WHERE generations_fts MATCH ?", (f'"{word}"',))
            }
            if gen_id not in hits or not hits <= ids:
                return [f"FTS index out of sync with generations (word {word!r}, row {gen_id})"]
    return []


def consistency_problems(home: Path) -> list[str]:
    """Everything that a crash must never leave behind, checked with sqlite3 and the file system."""
    problems: list[str] = []
    con = sqlite3.connect(home / "gallery.db")
    try:
        if con.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            problems.append("integrity_check failed")
        if con.execute("PRAGMA foreign_key_check").fetchall():
            problems.append("foreign key violations")
        problems += _fts_problems(con)
        rows = dict(con.execute("SELECT sha256, relative_path FROM files").fetchall())
        for sha_, relative in rows.items():
            path = home / "files" / relative
            if not path.exists():
                problems.append(f"missing file {relative}")
            elif sha(path.read_bytes()) != sha_:
                problems.append(f"file {relative} does not hash to {sha_}")
        for gen_id, image_sha in con.execute("SELECT id, image_sha256 FROM generations"):
            roles = dict(con.execute("SELECT role, sha256 FROM generation_files WHERE generation_id = ?", (gen_id,)))
            if roles.get("image") != image_sha or "thumbnail" not in roles:
                problems.append(f"generation {gen_id} lacks its image or thumbnail link")
        unlinked = con.execute(
            "SELECT sha256 FROM files WHERE sha256 NOT IN (SELECT sha256 FROM generation_files)"
        ).fetchall()
        if unlinked:
            problems.append(f"{len(unlinked)} file rows no generation uses")
    finally:
        con.close()
    on_disk = files_on_disk(home)
    extra = on_disk - set(rows.values())
    if extra:
        problems.append(f"files without rows or temp files on disk: {sorted(extra)[:5]}")
    return problems
