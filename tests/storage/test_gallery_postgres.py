"""The gallery on a real PostgreSQL server: one started for these tests (Debian's `postgresql`, which
`scripts/install.sh --test` installs), or the scratch database ATELIER_TEST_POSTGRES_URL names, e.g.
postgresql+psycopg://atelier@/gallery?host=/tmp/pg — it is wiped first."""

from __future__ import annotations

import importlib.util
import os
import threading

import pytest
from postgres_server import postgres_bin_dir, running_postgres
from sqlalchemy import create_engine, text
from storage_checks import files_on_disk, make_png

from storage import migrate
from storage.gallery import Gallery


@pytest.fixture(scope="module")
def postgres_url():
    if os.environ.get("ATELIER_TEST_POSTGRES_URL"):
        yield os.environ["ATELIER_TEST_POSTGRES_URL"]
        return
    bin_dir = postgres_bin_dir()
    if bin_dir is None or importlib.util.find_spec("psycopg") is None:
        pytest.skip("PostgreSQL is not installed (scripts/install.sh --test installs it and psycopg)")
    with running_postgres(bin_dir) as url:
        yield url


@pytest.fixture()
def pg_gallery(home, postgres_url):
    engine = create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    gallery = Gallery.open(home, database_url=postgres_url)
    yield gallery
    gallery.close()


def test_postgres_schema_save_search_delete(pg_gallery, home, recipe, latent):
    assert migrate.current_revision(pg_gallery.db) == migrate.head_revision()
    draft = pg_gallery.save(recipe(prompt="a fox in the snow", stage="draft"), "draft", make_png(1), latent=latent(1))
    refined = pg_gallery.save(recipe(prompt="a fox in the snow"), "refined", make_png(2), parent_id=draft.id)
    other = pg_gallery.save(recipe(prompt="city at night", seed=5), "txt2img", make_png(3))
    assert pg_gallery.get(refined.id).recipe == refined.recipe
    assert [g.id for g in pg_gallery.search("FOX snow").items] == [refined.id, draft.id]  # LIKE fallback
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
