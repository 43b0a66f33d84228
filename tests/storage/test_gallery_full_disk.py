"""A full disk gives a clear error and leaves no partial file or row."""

from __future__ import annotations

import errno
import os
import random
import sqlite3
import subprocess

import pytest
from sqlalchemy import event
from storage_checks import consistency_problems, files_on_disk, make_png, sha

import storage.files
from storage.files import GalleryWriteError
from storage.gallery import Gallery


def _rows(home) -> int:
    con = sqlite3.connect(home / "gallery.db")
    try:
        return con.execute("SELECT count(*) FROM generations").fetchone()[0]
    finally:
        con.close()


# Writes in order: image, thumbnail, latent, source; with a reused image only latent and source.
@pytest.mark.parametrize(
    "reuse_image, failing_write", [(False, 1), (False, 2), (False, 3), (False, 4), (True, 1), (True, 2)]
)
def test_enospc_while_writing_files(gallery, home, recipe, latent, monkeypatch, reuse_image, failing_write):
    shared = make_png(1)
    kept = gallery.save(recipe(), "draft", shared)
    before = files_on_disk(home)
    real_write, calls = storage.files._write_all, []

    def write_until_full(fd, data):
        calls.append(len(data))
        if len(calls) == failing_write:
            os.write(fd, data[: len(data) // 2])  # a partial write first, as a real disk would
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(fd, data)

    monkeypatch.setattr(storage.files, "_write_all", write_until_full)
    source = make_png(3)
    r = recipe(mode="img2img", strength=0.5, source_image_sha256=sha(source))
    image = shared if reuse_image else make_png(2)  # files of another generation must survive
    with pytest.raises(GalleryWriteError, match="no space left") as failure:
        gallery.save(r, "img2img", image, latent=latent(7), inputs={"source": source})
    assert failure.value.errno == errno.ENOSPC and len(calls) == failing_write
    assert files_on_disk(home) == before  # no temp file, no half file, the shared file kept
    assert _rows(home) == 1 and gallery.get(kept.id).image_path.read_bytes() == shared
    assert consistency_problems(home) == []


def test_database_full(gallery, home, recipe):
    kept = gallery.save(recipe(), "draft", make_png(1))
    before = files_on_disk(home)
    with gallery.db.engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()

    @event.listens_for(gallery.db.engine, "connect")
    def cap_size(dbapi_connection, _record):
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages + 1}")

    gallery.db.engine.dispose()  # new connections get the cap: SQLite reports SQLITE_FULL
    with pytest.raises(GalleryWriteError, match="no space left on the disk holding the database") as failure:
        # Distinct words within the Recipe's prompt limit: the row and its FTS entries need pages.
        gallery.save(recipe(prompt=" ".join(f"w{i}" for i in range(800))), "draft", make_png(2))
    assert failure.value.errno == errno.ENOSPC
    assert files_on_disk(home) == before and _rows(home) == 1
    event.remove(gallery.db.engine, "connect", cap_size)
    gallery.db.engine.dispose()
    assert gallery.save(recipe(prompt="fits again"), "draft", make_png(2)).id == kept.id + 1
    assert consistency_problems(home) == []


@pytest.fixture()
def tiny_disk(tmp_path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root); the injected ENOSPC tests cover it")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_real_full_tmpfs(tiny_disk, recipe):
    """Fill a 3 MB tmpfs with incompressible images until the gallery refuses a save."""
    home = tiny_disk / "home"
    rng = random.Random(1)
    saved, failure = [], None
    with Gallery.open(home) as gallery:
        for n in range(200):
            noise = rng.randbytes(96 * 96 * 3)
            try:
                saved.append(gallery.save(recipe(seed=n), "draft", _noise_png(noise)).id)
            except GalleryWriteError as exc:
                failure = exc
                break
        assert failure is not None and failure.errno == errno.ENOSPC and "no space left" in str(failure)
        assert len(saved) >= 3
        assert [g.id for g in gallery.list(limit=1000).items] == saved[::-1]
    assert not [p for p in (home / "files").rglob(".*")]  # no temp file left by the failed save
    assert consistency_problems(home) == []


def _noise_png(rgb: bytes) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.frombytes("RGB", (96, 96), rgb).save(buffer, "PNG")
    return buffer.getvalue()
