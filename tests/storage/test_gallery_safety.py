"""The gallery never destroys itself: a lost, emptied or re-pointed database, a symlinked folder in
files/, garbage in the database or a read-only database file cost no image file; the sweep removes
only what the journal proves is debris. Real files on disk, the real command line."""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image
from storage_checks import consistency_problems, files_on_disk, make_png, make_recipe, sha

from atelier.cli import main
from pipelines.provenance.png_metadata import encode_png
from storage.gallery import Gallery, GalleryRefusedError

REPO = Path(__file__).resolve().parents[2]


def recipe_png(n: int, recipe) -> bytes:
    """A PNG with the recipe inside, as the Studio saves it (colour from n: distinct bytes)."""
    return encode_png(Image.new("RGB", (64, 64), (n * 40 % 256, 90, 200)), recipe)


def kept_latent(recipe) -> bytes:
    """A safetensors file with the recipe in its header, as a draft's kept latent has it."""
    header = {
        "__metadata__": {"format": "atelier-kept-latent", "recipe": recipe.to_json()},
        "latent": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + struct.pack("<f", float(recipe.seed))


def fill(home: Path) -> dict[str, object]:
    """A txt2img, a draft with its latent and an img2img of the first image: recipes inside the PNGs."""
    first = make_recipe(seed=1, prompt="a lighthouse in fog", refine=None, switch=1.0)
    draft = make_recipe(seed=2, prompt="a fox in snow", stage="draft")
    with Gallery.open(home) as gallery:
        a = gallery.save(first, "txt2img", recipe_png(1, first))
        b = gallery.save(draft, "draft", recipe_png(2, draft), latent=kept_latent(draft))
        source = a.image_path.read_bytes()
        edit = make_recipe(
            seed=3, prompt="the lighthouse at dusk", mode="img2img", strength=0.5, source_image_sha256=sha(source)
        )
        c = gallery.save(edit, "img2img", recipe_png(3, edit), parent_id=a.id, inputs={"source": source})
    return {g.image_sha256: g for g in (a, b, c)}


def snapshot(home: Path) -> dict[str, bytes]:
    root = home / "files"
    return {name: (root / name).read_bytes() for name in files_on_disk(home)}


def atelier(*argv: str, capsys) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- a lost, emptied or re-pointed database: refused, every file kept ------------------------------


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_an_emptied_or_lost_database_keeps_every_file_and_says_why(home, capsys, damage):
    fill(home)
    before = snapshot(home)
    database = home / "gallery.db"
    for extra in ("gallery.db-wal", "gallery.db-shm"):
        (home / extra).unlink(missing_ok=True)
    database.write_bytes(b"") if damage == "truncate" else database.unlink()
    for _ in range(2):  # the old sweep emptied files/ on the first command
        code, out, err = atelier("list", "--home", str(home), capsys=capsys)
        assert code == 1 and out == ""
        assert "missing, empty or new" in err and f"holds {len(before)} gallery file(s)" in err
        assert "atelier gallery rebuild" in err and "ATELIER_DATABASE_URL" in err
        assert snapshot(home) == before
    assert database.exists() == (damage == "truncate") and (not database.exists() or database.stat().st_size == 0)


def test_a_re_pointed_database_url_keeps_every_file(home, tmp_path, monkeypatch, capsys):
    fill(home)
    before = snapshot(home)
    elsewhere = tmp_path / "elsewhere" / "other.db"
    monkeypatch.setenv("ATELIER_DATABASE_URL", f"sqlite:///{elsewhere}")
    code, _, err = atelier("list", "--home", str(home), capsys=capsys)
    assert code == 1 and str(elsewhere) in err and "ATELIER_DATABASE_URL" in err
    assert snapshot(home) == before and not elsewhere.exists()
    monkeypatch.delenv("ATELIER_DATABASE_URL")
    code, out, _ = atelier("list", "--home", str(home), capsys=capsys)  # the right database again
    assert code == 0 and "lighthouse at dusk" in out


def test_files_without_rows_are_never_removed_by_the_sweep(home, recipe):
    kept = fill(home)
    con = sqlite3.connect(home / "gallery.db")
    con.execute("PRAGMA foreign_keys = OFF")
    con.execute("DELETE FROM generation_files")
    con.execute("DELETE FROM files")
    con.commit()
    con.close()
    before = snapshot(home)
    with Gallery.open(home) as gallery:
        assert gallery.sweep_report.removed_orphans == 0
        assert gallery.sweep_report.unreferenced_kept == len(before)
    assert snapshot(home) == before and len(kept) == 3


# -- symbolic links in files/ ---------------------------------------------------------------------


def test_a_symlinked_folder_or_file_in_files_is_never_followed(home, tmp_path, recipe):
    fill(home)
    outside = tmp_path / "outside"
    outside.mkdir()
    victims = {
        "b" * 62 + ".png": b"someone else's picture",
        f".{'c' * 62}.png.0123abcd.tmp": b"looks like a temp file",
        f".{'d' * 62}.png.cafe.del": b"looks like trash",
    }
    for name, data in victims.items():
        (outside / name).write_bytes(data)
    (outside / "holiday.jpg").write_bytes(b"a photo")
    (home / "files" / "ab").symlink_to(outside, target_is_directory=True)
    real_folder = next(p for p in (home / "files").iterdir() if not p.is_symlink())
    (real_folder / ("e" * 62 + ".png")).symlink_to(outside / "holiday.jpg")
    con = sqlite3.connect(home / "gallery.db")  # a journal entry that names a file behind the link
    con.execute(
        "INSERT INTO file_journal (sha256, relative_path, reason, created_at) VALUES (?, ?, 'deleted', '2026-01-01')",
        ("ab" + "b" * 62, f"ab/{'b' * 62}.png"),
    )
    con.commit()
    con.close()
    with Gallery.open(home) as gallery:
        report = gallery.sweep_report
        assert sorted(report.skipped_links) == sorted(
            [str(home / "files" / "ab"), str(real_folder / ("e" * 62 + ".png"))]
        )
        assert report.removed_orphans == 0 and report.removed_temp == 0
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == {**victims, "holiday.jpg": b"a photo"}


# -- the journal: what a dead save or delete leaves is removed, nothing else -------------------------


def _die_inside(home: Path, action: str) -> None:
    """Run `action` in a process that is killed (os._exit) at the worst point: a save after its files
    are written but before its rows commit; a delete after its commit, before the files are unlinked."""
    script = textwrap.dedent(
        f"""
        import os, sys, pathlib
        sys.path[:0] = [{str(REPO)!r}, {str(Path(__file__).parent)!r}]
        from storage_checks import make_png, make_recipe
        from storage.gallery import Gallery
        gallery = Gallery.open(pathlib.Path({str(home)!r}))
        if {action!r} == "save":
            Gallery._insert_files = lambda *a: os._exit(9)
            gallery.save(make_recipe(seed=77), "draft", make_png(77))
        else:
            victim = gallery.list().items[0].id
            pathlib.Path.unlink = lambda *a, **k: os._exit(9)
            gallery.delete(victim)
        os._exit(0)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 9, done.stderr


def _stranger(home: Path) -> Path:
    """A file the gallery never wrote (no row, no journal entry), named like one of its own."""
    path = home / "files" / "9f" / ("9" * 62 + ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not the gallery's to remove")
    return path


def test_a_save_killed_before_its_rows_commit_leaves_only_journalled_debris(home):
    fill(home)
    stranger = _stranger(home)
    before = snapshot(home)
    _die_inside(home, "save")
    written = set(snapshot(home)) - set(before)
    assert len(written) == 2  # the image and its thumbnail reached the disk, the rows never did
    with Gallery.open(home) as gallery:
        assert gallery.sweep_report.removed_orphans == 2
        assert gallery.sweep_report.unreferenced_kept == 1  # the stranger
    assert snapshot(home) == before and stranger.read_bytes() == b"not the gallery's to remove"
    _assert_journal_empty(home)


def test_a_delete_killed_after_its_commit_is_finished_by_the_sweep(home):
    fill(home)
    stranger = _stranger(home)
    _die_inside(home, "delete")  # the newest: the img2img (its source is the first image, kept)
    con = sqlite3.connect(home / "gallery.db")
    assert con.execute("SELECT count(*) FROM file_journal WHERE reason = 'deleted'").fetchone()[0] == 2
    con.close()
    trash = [name for name in files_on_disk(home) if name.endswith(".del")]
    assert len(trash) == 2
    # The journal alone proves it: put one back under its final name, as if never renamed away.
    folder, name = trash[0].split("/")
    final = home / "files" / folder / name[1:].rsplit(".", 2)[0]
    (home / "files" / trash[0]).rename(final)
    with Gallery.open(home) as gallery:
        report = gallery.sweep_report
        assert (report.removed_temp, report.removed_orphans) == (1, 1)
        assert [g.recipe.prompt for g in gallery.list().items] == ["a fox in snow", "a lighthouse in fog"]
    assert not final.exists() and stranger.exists()
    stranger.unlink()
    assert consistency_problems(home) == []
    _assert_journal_empty(home)


def _assert_journal_empty(home: Path) -> None:
    con = sqlite3.connect(home / "gallery.db")
    try:
        assert con.execute("SELECT count(*) FROM file_journal").fetchone()[0] == 0
    finally:
        con.close()


# -- a damaged or read-only database: refused at open, check and repair ------------------------------


def _checkpointed(home: Path) -> Path:
    database = home / "gallery.db"
    con = sqlite3.connect(database)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return database


def _page_of(database: Path, table: str) -> int:
    con = sqlite3.connect(database)
    try:
        return con.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    finally:
        con.close()


def _garble_page(database: Path, page: int) -> None:
    page_size = 4096
    with open(database, "r+b") as handle:
        handle.seek((page - 1) * page_size)
        handle.write(bytes((i * 37 + 11) % 256 for i in range(page_size)))


def test_garbage_in_the_database_is_reported_at_open_and_nothing_is_written(home, capsys):
    fill(home)
    database = _checkpointed(home)
    _garble_page(database, _page_of(database, "generations_fts_data"))
    damaged = database.read_bytes()
    before = snapshot(home)
    with pytest.raises(GalleryRefusedError, match="is damaged .*atelier gallery repair"):
        Gallery.open(home)
    code, _, err = atelier("list", "--home", str(home), capsys=capsys)
    assert code == 1 and "damaged" in err and "atelier gallery check" in err
    assert database.read_bytes() == damaged and snapshot(home) == before
    code, out, _ = atelier("gallery", "check", "--home", str(home), capsys=capsys)
    assert code == 1 and "problem: damaged" in out


def test_a_garbled_header_is_reported_at_open(home):
    fill(home)
    database = _checkpointed(home)
    with open(database, "r+b") as handle:
        handle.write(b"this is not sqlite at all")
    with pytest.raises(GalleryRefusedError, match="does not start like a SQLite database"):
        Gallery.open(home)


def test_repair_copies_the_damaged_file_first_and_recovers_the_rows(home, capsys):
    saved = fill(home)
    database = _checkpointed(home)
    _garble_page(database, _page_of(database, "generations_fts_data"))
    damaged = database.read_bytes()
    before = snapshot(home)
    code, out, err = atelier("gallery", "repair", "--home", str(home), capsys=capsys)
    assert code == 0, err
    copies = list(home.glob("gallery.db.damaged-*"))
    assert len(copies) == 1 and copies[0].read_bytes() == damaged and str(copies[0]) in out
    with Gallery.open(home) as gallery:
        found = {g.image_sha256: g.recipe for g in gallery.list().items}
        assert found == {key: g.recipe for key, g in saved.items()}
        assert [g.id for g in gallery.search("lighthouse").items] == [3, 1]  # the search index is rebuilt
    assert snapshot(home) == before and consistency_problems(home) == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_a_read_only_database_is_refused_and_never_written(home, capsys):
    fill(home)
    database = _checkpointed(home)
    data, stamp = database.read_bytes(), database.stat().st_mtime_ns
    database.chmod(0o444)
    try:
        code, _, err = atelier("list", "--home", str(home), capsys=capsys)
        assert code == 1 and "read-only" in err and "chmod" in err
        assert database.read_bytes() == data and database.stat().st_mtime_ns == stamp
    finally:
        database.chmod(0o644)


def test_check_of_a_sound_gallery_says_ok(home, capsys):
    fill(home)
    code, out, _ = atelier("gallery", "check", "--home", str(home), "--json", capsys=capsys)
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["generations"] == 3 and report["unreferenced_files"] == 0


# -- rebuild: rows again from the recipes inside the PNGs ---------------------------------------------


def test_rebuild_recreates_rows_with_their_recipes_inputs_and_latents(home, capsys):
    saved = fill(home)
    (home / "files" / "ff").mkdir()
    (home / "files" / "ff" / ("f" * 62 + ".png")).write_bytes(make_png(5))  # a PNG without a recipe
    before = snapshot(home)
    (home / "gallery.db").unlink()
    code, out, err = atelier("gallery", "rebuild", "--home", str(home), capsys=capsys)
    assert code == 0, err
    assert "rebuilt 3 generation(s)" in out and "1 input file(s) and 1 kept latent(s)" in out
    with Gallery.open(home) as gallery:
        rebuilt = {g.image_sha256: g for g in gallery.list().items}
        assert set(rebuilt) == set(saved)
        for key, original in saved.items():
            again = rebuilt[key]
            assert again.recipe == original.recipe and again.kind == original.kind
            assert again.inputs == original.inputs  # the img2img's source, by sha256
            assert (again.latent_path is None) == (original.latent_path is None)
            if original.latent_path is not None:
                assert again.latent_path.read_bytes() == original.latent_path.read_bytes()
    assert set(snapshot(home)) >= set(before)
    code, out, _ = atelier("gallery", "rebuild", "--home", str(home), capsys=capsys)  # nothing left to adopt
    assert code == 0 and "rebuilt 0 generation(s)" in out
    code, out, _ = atelier("list", "--home", str(home), capsys=capsys)
    assert code == 0 and "lighthouse at dusk" in out
    assert os.path.exists(home / "files" / "ff" / ("f" * 62 + ".png"))
