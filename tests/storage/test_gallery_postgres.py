"""The gallery on a real PostgreSQL server: one started for these tests (Debian's `postgresql`, which
`scripts/install.sh --test` installs), or the scratch database ATELIER_TEST_POSTGRES_URL names, e.g.
postgresql+psycopg://atelier@/gallery?host=/tmp/pg — it is wiped first."""

from __future__ import annotations

import threading

import pytest
from postgres_server import empty_postgres
from storage_checks import files_on_disk, make_png

from storage import migrate
from storage.gallery import Gallery


@pytest.fixture()
def pg_gallery(home, postgres_url):
    gallery = Gallery.open(home, database_url=empty_postgres(postgres_url))
    yield gallery
    gallery.close()


def test_postgres_schema_save_search_delete(pg_gallery, home, recipe, latent):
    assert migrate.current_revision(pg_gallery.db) == migrate.head_revision()
    draft = pg_gallery.save(recipe(prompt="a fox in the snow", stage="draft"), "draft", make_png(1), latent=latent(1))
    refined = pg_gallery.save(recipe(prompt="a fox in the snow"), "refined", make_png(2), parent_id=draft.id)
    other = pg_gallery.save(recipe(prompt="city at night", seed=5), "txt2img", make_png(3))
    assert pg_gallery.get(refined.id).recipe == refined.recipe
    assert [g.id for g in pg_gallery.search("FOX snow").items] == [refined.id, draft.id]  # PostgreSQL text search
    assert [g.id for g in pg_gallery.list(kind=("draft", "txt2img")).items] == [other.id, draft.id]
    page = pg_gallery.list(limit=2)
    assert [g.id for g in pg_gallery.list(limit=2, after=page.next_cursor).items] == [draft.id]
    assert pg_gallery.set_tags(other.id, ["night"]).tags == ("night",)
    assert [g.id for g in pg_gallery.ancestors(refined.id)] == [draft.id]
    pg_gallery.delete(draft.id)
    assert pg_gallery.get(refined.id).parent_id is None and not draft.latent_path.exists()
    kept = {
        p.relative_to(home / "files").as_posix() for g in (refined, other) for p in (g.image_path, g.thumbnail_path)
    }
    assert files_on_disk(home) == kept


def test_postgres_parallel_writers(pg_gallery, recipe):
    errors = []

    def writer(t):
        try:
            for w in range(25):
                g = pg_gallery.save(recipe(seed=t * 100 + w), "draft", make_png(t * 100 + w % 3))
                pg_gallery.set_tags(g.id, [f"t{t}"])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(pg_gallery.list(limit=1000).items) == 100


def test_postgres_search_uses_the_text_search_index(pg_gallery, recipe):
    from sqlalchemy import text

    from storage import search

    for n in range(3):
        pg_gallery.save(recipe(prompt=f"crème brûlée number{n}", seed=n), "txt2img", make_png(n))
    condition = search.postgres_condition("creme brulee")
    with pg_gallery.db.engine.connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))
        sql = condition.compile(conn, compile_kwargs={"literal_binds": True})
        plan = "\n".join(row[0] for row in conn.execute(text(f"EXPLAIN SELECT id FROM generations WHERE {sql}")))
    assert "ix_generations_text_search" in plan, plan
    assert len(pg_gallery.search("creme brulee").items) == 3


@pytest.mark.parametrize(
    ("query", "tsquery"),
    [
        ('"fox" "snow"', "(('fox') & ('snow'))"),
        ("fish*", "('fish':*)"),
        ("prompt: blurry", "('blurry':A)"),
        ("negative: blur*", "('blurry':*B)".replace("blurry", "blur")),
        ('"red fox" OR neon', "(('red' <-> 'fox') | ('neon'))"),
        ("fox NOT snow", "(('fox') & !('snow'))"),
        ("a AND (b OR c)", "(('a') & (('b') | ('c')))"),
        ("Crème", "('creme')"),
        ("well-lit", "('well' <-> 'lit')"),
    ],
)
def test_fts5_queries_translate_to_tsquery(query, tsquery):
    from storage.pg_search import pg_tsquery

    assert pg_tsquery(query) == tsquery


@pytest.mark.parametrize("query", ['"unterminated', "fox AND", "colour: red", "(fox", "a NEAR b", "OR"])
def test_malformed_queries_are_refused_in_words(query):
    from storage.search import postgres_condition

    with pytest.raises(ValueError, match="is not a valid full-text query"):
        postgres_condition(query)


@pytest.fixture()
def old_schema_url(postgres_url, tmp_path, recipe):
    """The scratch database with one generation, taken back to schema revision 0003: a gallery an older
    Atelier made."""
    from alembic import command

    with Gallery.open(tmp_path / "old-home", database_url=empty_postgres(postgres_url)) as gallery:
        gallery.save(recipe(prompt="old fox"), "txt2img", make_png(7))
        config = migrate.alembic_config()
        with gallery.db.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0003")
    return postgres_url


def test_upgrading_postgres_makes_a_pg_dump_first(old_schema_url, home, monkeypatch):
    monkeypatch.delenv("ATELIER_NO_BACKUP", raising=False)
    with Gallery.open(home, database_url=old_schema_url) as gallery:
        assert migrate.current_revision(gallery.db) == migrate.head_revision()
        assert [g.recipe.prompt for g in gallery.search("fox").items] == ["old fox"]  # searchable after the upgrade
    (backup,) = (home / "backups").iterdir()
    assert backup.name.endswith("-r0003.pgdump") and backup.read_bytes()[:5] == b"PGDMP"


def test_without_pg_dump_the_upgrade_is_refused_unless_asked(old_schema_url, home, monkeypatch):
    monkeypatch.setenv("ATELIER_PG_DUMP", str(home / "no-such-pg_dump"))
    monkeypatch.delenv("ATELIER_NO_BACKUP", raising=False)
    with pytest.raises(migrate.MigrationError, match=r"no pg_dump was found .* --no-backup"):
        Gallery.open(home, database_url=old_schema_url)
    from storage.db import Database

    db = Database(old_schema_url)
    assert migrate.current_revision(db) == "0003"  # nothing changed
    db.engine.dispose()
    monkeypatch.setenv("ATELIER_NO_BACKUP", "1")
    with Gallery.open(home, database_url=old_schema_url) as gallery:
        assert migrate.current_revision(gallery.db) == migrate.head_revision()
    assert not (home / "backups").exists()


def test_the_cli_takes_the_database_and_no_backup_options(old_schema_url, home, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("ATELIER_PG_DUMP", str(home / "no-such-pg_dump"))
    monkeypatch.delenv("ATELIER_DATABASE_URL", raising=False)
    command = [sys.executable, "-m", "atelier.cli", "list", "--json", "--home", str(home), "--database", old_schema_url]
    refused = subprocess.run(command, capture_output=True, text=True)
    assert refused.returncode == 1 and "--no-backup" in refused.stderr
    listed = subprocess.run([*command, "--no-backup"], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "old fox" in listed.stdout


def test_a_server_restart_is_an_error_in_words_then_work_resumes(postgres_server, home, recipe):
    from storage.db import GalleryUnavailableError

    if postgres_server is None:
        pytest.skip("needs the tests' own PostgreSQL server (ATELIER_TEST_POSTGRES_URL names another one)")
    with Gallery.open(home, database_url=empty_postgres(postgres_server.url)) as gallery:
        before = gallery.save(recipe(prompt="before the outage"), "txt2img", make_png(1))
        postgres_server.stop()
        try:
            with pytest.raises(GalleryUnavailableError, match=r"cannot be reached .* nothing was saved or changed"):
                gallery.list()
            with pytest.raises(GalleryUnavailableError, match="check that the database server is running"):
                gallery.save(recipe(prompt="during the outage"), "txt2img", make_png(2))
        finally:
            postgres_server.start()
        after = gallery.save(recipe(prompt="after the outage"), "txt2img", make_png(3))
        assert [g.id for g in gallery.list().items] == [after.id, before.id]  # nothing half-saved meanwhile
