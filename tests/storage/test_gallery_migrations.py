"""Schema by Alembic from empty and from the first revision; backups; failures; pragmas."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from storage import migrate
from storage.db import Database
from storage.gallery import Gallery
from storage.models import Base


def _revision(path) -> str | None:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    finally:
        con.close()


def _tables(path) -> set[str]:
    con = sqlite3.connect(path)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")}
    finally:
        con.close()


def test_empty_home_gets_head_schema_matching_the_models(home):
    with Gallery.open(home) as gallery, gallery.db.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"include_object": _not_fts}), Base.metadata)
    assert diffs == []
    db_file = home / "gallery.db"
    assert _revision(db_file) == migrate.head_revision() == "0005"
    assert {
        "generations",
        "generation_loras",
        "files",
        "generation_files",
        "generation_tags",
        "file_journal",
        "generations_fts",
        "generations_fts_insert",
        "generations_fts_delete",
    } <= _tables(db_file)
    assert not list(home.glob("gallery.db.backup-*"))  # nothing to back up in a new gallery


def _not_fts(obj, name, type_, reflected, compare_to) -> bool:
    return not (type_ == "table" and name and name.startswith("generations_fts"))


def _database_at_first_revision(home, revision: str = migrate.FIRST_REVISION) -> None:
    """A gallery as `revision` (by default 0001) left it, with one generation inserted by hand."""
    home.mkdir(parents=True)
    db = Database(f"sqlite:///{home / 'gallery.db'}")
    migrate.upgrade(db, revision)
    db.close()
    con = sqlite3.connect(home / "gallery.db")
    con.execute(
        "INSERT INTO generations (id, created_at, kind, recipe_json, prompt, negative, seed, model_name, "
        "scheduler, steps, guidance, width, height, switch, image_sha256, favourite, files_missing) "
        "VALUES (1, ?, 'draft', '{}', 'an old lighthouse at dusk', 'blurry', 7, 'tiny', 'Euler', 4, 5.0, "
        "64, 64, 0.8, ?, 0, 0)",
        (datetime(2024, 5, 1, tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S.%f"), "a" * 64),
    )
    con.commit()
    con.close()


def test_upgrade_from_first_revision_backs_up_and_indexes_old_rows(home):
    _database_at_first_revision(home)
    assert _revision(home / "gallery.db") == "0001"
    gallery = Gallery.open(home)
    try:
        assert _revision(home / "gallery.db") == migrate.head_revision()
        backups = list(home.glob("gallery.db.backup-*-r0001"))
        assert len(backups) == 1
        assert _revision(backups[0]) == "0001" and "generation_tags" not in _tables(backups[0])
        with gallery.db.engine.connect() as conn:  # the row written before FTS existed is indexed
            found = conn.exec_driver_sql(
                "SELECT rowid FROM generations_fts WHERE generations_fts MATCH 'lighthouse'"
            ).fetchall()
        assert found == [(1,)]
    finally:
        gallery.close()
    Gallery.open(home).close()  # already at head: no second backup
    assert len(list(home.glob("gallery.db.backup-*"))) == 1


def _fts_ids(gallery, query: str) -> list[int]:
    with gallery.db.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT rowid FROM generations_fts WHERE generations_fts MATCH ?", (query,))
        return sorted(r[0] for r in rows)


def test_upgrade_from_0002_adds_the_template_and_keeps_old_rows_searchable(home, recipe, png):
    _database_at_first_revision(home, "0002")
    with Gallery.open(home) as gallery:
        assert _revision(home / "gallery.db") == migrate.head_revision()
        assert len(list(home.glob("gallery.db.backup-*-r0002"))) == 1
        assert _fts_ids(gallery, "lighthouse") == [1]  # indexed before 0003, found after the rebuild
        with gallery.db.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT prompt_template FROM generations").fetchall() == [(None,)]
        made = gallery.save(recipe(prompt="a red kite", prompt_template="a {red|green} kite"), "draft", png(1))
        assert _fts_ids(gallery, "green") == [made.id] and _fts_ids(gallery, "red") == [made.id]
        assert [g.id for g in gallery.search("green").items] == [made.id]
        gallery.delete(made.id)  # the delete trigger takes the template out of the index too
        assert _fts_ids(gallery, "green") == []


def test_downgrade_to_0002_drops_the_template_and_keeps_search(home, recipe, png):
    from alembic import command

    with Gallery.open(home) as gallery:
        gallery.save(recipe(prompt="a red kite", prompt_template="a {red|green} kite"), "draft", png(2))
        config = migrate.alembic_config()
        with gallery.db.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0002")
        assert _fts_ids(gallery, "kite") == [1] and _fts_ids(gallery, "green") == []
    assert _revision(home / "gallery.db") == "0002"


def test_failed_migration_keeps_old_schema_and_backup(home):
    _database_at_first_revision(home)
    con = sqlite3.connect(home / "gallery.db")
    con.execute("CREATE TABLE generations_fts (x)")  # 0002 creates generation_tags, then fails here
    con.commit()
    con.close()
    with pytest.raises(migrate.MigrationError) as failure:
        Gallery.open(home)
    message = str(failure.value)
    assert (
        f"from schema revision 0001 to {migrate.head_revision()} failed" in message
        and "left at revision 0001" in message
    )
    backups = list(home.glob("gallery.db.backup-*"))
    assert len(backups) == 1 and str(backups[0]) in message
    assert _revision(home / "gallery.db") == "0001"
    assert "generation_tags" not in _tables(home / "gallery.db")  # the partial upgrade was rolled back


def test_database_newer_than_the_app_is_refused(home):
    Gallery.open(home).close()
    con = sqlite3.connect(home / "gallery.db")
    con.execute("UPDATE alembic_version SET version_num = '9999'")
    con.commit()
    con.close()
    with pytest.raises(migrate.MigrationError, match="9999, which this version of Atelier does not know"):
        Gallery.open(home)


def test_database_url_from_environment_and_argument(home, tmp_path, monkeypatch):
    elsewhere = tmp_path / "shared" / "atelier.db"
    monkeypatch.setenv("ATELIER_DATABASE_URL", f"sqlite:///{elsewhere}")
    Gallery.open(home).close()
    assert _revision(elsewhere) == migrate.head_revision() and not (home / "gallery.db").exists()
    argument = tmp_path / "arg.db"
    Gallery.open(home, database_url=f"sqlite:///{argument}").close()
    assert _revision(argument) == migrate.head_revision()
    with pytest.raises(ValueError, match="database URL"):
        Gallery.open(home, database_url="not a url")


def test_sqlite_pragmas(gallery):
    with gallery.db.engine.connect() as conn:
        pragma = lambda name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
        assert pragma("journal_mode") == "wal"
        assert pragma("synchronous") == 2  # FULL
        assert pragma("foreign_keys") == 1
        assert pragma("busy_timeout") >= 5000


def test_write_transactions_take_the_write_lock_at_begin(gallery, home):
    """BEGIN IMMEDIATE: the lock is held before any statement, so another writer cannot sneak in."""
    other = sqlite3.connect(home / "gallery.db", timeout=0, isolation_level=None)
    try:
        with gallery.db.writing() as session:
            session.connection()  # transaction begun, nothing written yet
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # free again after commit
        other.execute("ROLLBACK")
        with gallery.db.reading() as session:
            session.connection()
            other.execute("BEGIN IMMEDIATE")  # a read transaction does not block writers
            other.execute("ROLLBACK")
    finally:
        other.close()


def test_an_unusable_database_url_is_a_clear_error_and_frees_the_home(tmp_path):
    from storage.gallery import Gallery

    with pytest.raises(ValueError, match="database URL 'foo://x': cannot be used"):
        Gallery.open(tmp_path, "foo://x")
    with Gallery.open(tmp_path) as gallery:  # the failed open left no lock or connection behind
        assert gallery.sweep_report is not None  # this process got the home exclusively
