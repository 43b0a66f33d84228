"""Files on shared storage (--files / ATELIER_FILES_DIR): several homes (machines) use one files folder
and one database; a sweep never takes what another machine may be writing right now."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image, PngImagePlugin
from sqlalchemy import update
from storage_checks import files_on_disk, make_png, make_recipe, sha

from storage import journal
from storage.gallery import Gallery
from storage.models import FileJournalRow


@pytest.fixture()
def shared(tmp_path, monkeypatch):
    folder = tmp_path / "shared"
    monkeypatch.setenv("ATELIER_FILES_DIR", str(folder / "files"))
    monkeypatch.setenv("ATELIER_DATABASE_URL", f"sqlite:///{folder / 'gallery.db'}")
    folder.mkdir()
    return folder


def test_two_machines_share_one_files_folder(shared, tmp_path):
    with Gallery.open(tmp_path / "machine-a") as a:
        saved = a.save(make_recipe(prompt="made on a"), "txt2img", make_png(1))
    assert saved.image_path.is_relative_to(shared / "files")
    assert not (tmp_path / "machine-a" / "files").exists()
    with Gallery.open(tmp_path / "machine-b") as b:
        assert b.read_file(saved.image_sha256) == make_png(1)
        assert [g.id for g in b.search("made").items] == [saved.id]


def _debris(gallery, files_folder, age: timedelta, n: int) -> tuple[str, str]:
    """A temp file and a journalled (pending) file as a save on another machine leaves them mid-write."""
    data = make_png(40 + n)
    relative = f"{sha(data)[:2]}/{sha(data)[2:]}.png"
    (files_folder / relative).parent.mkdir(parents=True, exist_ok=True)
    (files_folder / relative).write_bytes(data)
    temp = files_folder / relative.split("/")[0] / f".{relative.split('/')[1]}.{os.urandom(4).hex()}.tmp"
    temp.write_bytes(b"half")
    when = time.time() - age.total_seconds()
    os.utime(temp, (when, when))
    with gallery.db.writing() as session:
        (entry,) = journal.record(session, [(sha(data), relative)], journal.PENDING)
        session.execute(
            update(FileJournalRow).where(FileJournalRow.id == entry).values(created_at=datetime.now(UTC) - age)
        )
    return relative, temp.relative_to(files_folder).as_posix()


def test_on_shared_storage_the_sweep_leaves_young_debris_alone(shared, tmp_path):
    files_folder = shared / "files"
    with Gallery.open(tmp_path / "machine-a") as a:
        young = _debris(a, files_folder, timedelta(minutes=5), 1)
        old = _debris(a, files_folder, timedelta(hours=2), 2)
    with Gallery.open(tmp_path / "machine-b") as b:  # its start-up sweep
        report = b.sweep_report
    on_disk = files_on_disk(shared)
    assert set(young) <= on_disk  # another machine may still be writing these
    assert not set(old) & on_disk  # debris older than the grace period is proven stale
    assert report.removed_temp == 1 and report.removed_orphans == 1


def test_without_shared_storage_the_sweep_is_immediate(tmp_path, monkeypatch):
    monkeypatch.delenv("ATELIER_FILES_DIR", raising=False)
    monkeypatch.delenv("ATELIER_DATABASE_URL", raising=False)
    home = tmp_path / "home"
    with Gallery.open(home) as gallery:
        gallery.save(make_recipe(), "txt2img", make_png(1))
        young = _debris(gallery, home / "files", timedelta(minutes=5), 3)
    with Gallery.open(home) as gallery:
        assert gallery.sweep_report.removed_temp == 1 and gallery.sweep_report.removed_orphans == 1
    assert not set(young) & files_on_disk(home)


def test_the_cli_files_option(tmp_path, monkeypatch):
    monkeypatch.delenv("ATELIER_FILES_DIR", raising=False)
    monkeypatch.delenv("ATELIER_DATABASE_URL", raising=False)
    home, files = tmp_path / "home", tmp_path / "mounted" / "files"
    png = tmp_path / "picture.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a fox\nSteps: 4, Sampler: Euler, CFG scale: 5, Seed: 1, Size: 64x64, Model: tiny")
    Image.open(io.BytesIO(make_png(3, size=(64, 64)))).save(png, pnginfo=info)
    command = [sys.executable, "-m", "atelier.cli", "import", str(png), "--home", str(home), "--files", str(files)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"{sha(png.read_bytes())[2:]}.png" in {p.name for p in files.rglob("*.png")}
    assert not (home / "files").exists()
