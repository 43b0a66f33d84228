"""The start-up sweep: temp files, interrupted deletes, files without rows kept, missing files flagged."""

from __future__ import annotations

from storage_checks import consistency_problems, files_on_disk, make_png

from storage.gallery import Gallery


def test_sweep_removes_temp_files_and_keeps_files_without_rows(home, recipe):
    with Gallery.open(home) as gallery:
        kept = gallery.save(recipe(), "draft", make_png(1))
    folder = kept.image_path.parent
    (folder / f".{kept.image_path.name}.0123abcd.tmp").write_bytes(b"half a png")
    orphan_dir = home / "files" / "ff"
    orphan_dir.mkdir()
    (orphan_dir / ("f" * 62 + ".png")).write_bytes(b"no row")
    before = files_on_disk(home)
    assert len(before) == 4
    with Gallery.open(home) as gallery:
        report = gallery.sweep_report
        # A file without a row is not proof of debris (a lost or re-pointed database looks the same).
        assert report.removed_temp == 1 and report.removed_orphans == 0 and report.flagged == 0
        assert report.unreferenced_kept == 1
        assert gallery.get(kept.id).files_missing is False
    assert files_on_disk(home) == before - {f"{folder.name}/.{kept.image_path.name}.0123abcd.tmp"}
    assert (orphan_dir / ("f" * 62 + ".png")).read_bytes() == b"no row"
    assert kept.image_path.read_bytes() == make_png(1)


def test_interrupted_delete_is_undone_or_finished(home, recipe):
    with Gallery.open(home) as gallery:
        still_wanted = gallery.save(recipe(), "draft", make_png(1))
    # A delete that renamed the file away but never committed: the row still needs it.
    trash = still_wanted.image_path.with_name(f".{still_wanted.image_path.name}.deadbeef.del")
    still_wanted.image_path.rename(trash)
    # A delete that committed but died before unlinking: nothing needs this one.
    gone = home / "files" / "ee" / ("e" * 62 + ".png")
    gone.parent.mkdir()
    (gone.parent / f".{gone.name}.cafe.del").write_bytes(b"old")
    with Gallery.open(home) as gallery:
        assert gallery.sweep_report.restored == 1 and gallery.sweep_report.removed_temp == 1
        assert gallery.get(still_wanted.id).files_missing is False
    assert still_wanted.image_path.read_bytes() == make_png(1)
    assert consistency_problems(home) == []


def test_missing_files_are_flagged_not_fatal_and_unflagged_when_back(home, recipe):
    with Gallery.open(home) as gallery:
        lost = gallery.save(recipe(seed=1), "draft", make_png(1))
        fine = gallery.save(recipe(seed=2), "draft", make_png(2))
    saved_bytes = lost.image_path.read_bytes()
    lost.image_path.unlink()
    with Gallery.open(home) as gallery:
        assert gallery.sweep_report.flagged == 1
        assert gallery.get(lost.id).files_missing is True
        assert gallery.get(fine.id).files_missing is False
        assert [g.files_missing for g in gallery.list().items] == [False, True]
    lost.image_path.write_bytes(saved_bytes)
    with Gallery.open(home) as gallery:
        assert gallery.sweep_report.unflagged == 1
        assert gallery.get(lost.id).files_missing is False


def test_a_truncated_file_counts_as_missing(home, recipe):
    with Gallery.open(home) as gallery:
        g = gallery.save(recipe(), "draft", make_png(1))
    g.image_path.write_bytes(g.image_path.read_bytes()[:10])
    with Gallery.open(home) as gallery:
        assert gallery.get(g.id).files_missing is True


def test_no_sweep_while_another_user_has_the_gallery_open(home, recipe):
    first = Gallery.open(home)
    try:
        stray = home / "files" / "dd" / ("d" * 62 + ".png")
        stray.parent.mkdir(parents=True)
        stray.write_bytes(b"maybe a file whose row is about to commit")
        second = Gallery.open(home)
        try:
            assert second.sweep_report is None and stray.exists()
            saved = second.save(recipe(), "draft", make_png(3))
            assert first.get(saved.id).image_sha256 == saved.image_sha256
        finally:
            second.close()
    finally:
        first.close()
    with Gallery.open(home) as alone:
        # Unknown to the journal: kept (the old sweep removed it, and with it whole galleries).
        assert alone.sweep_report.removed_orphans == 0 and stray.exists()
