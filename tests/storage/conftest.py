"""Fixtures for the gallery tests: small distinct PNGs (Pillow), recipes built directly, and the `gallery`
on SQLite — and also on a real PostgreSQL server for the modules marked `both_databases`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# pytest runs in importlib mode: make the helpers beside this file importable by the test modules.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from postgres_server import empty_postgres, postgres_bin_dir, running_postgres  # noqa: E402
from storage_checks import make_latent, make_png, make_recipe  # noqa: E402


def pytest_generate_tests(metafunc):
    """Tests of a module marked `both_databases` that use `gallery` run once per database."""
    if "gallery" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_databases"):
        metafunc.parametrize("database", ["sqlite", "postgresql"])


@pytest.fixture()
def database():
    return "sqlite"


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server started for this session (None when ATELIER_TEST_POSTGRES_URL names one)."""
    import importlib.util
    import os

    if os.environ.get("ATELIER_TEST_POSTGRES_URL"):
        yield None
        return
    bin_dir = postgres_bin_dir()
    if bin_dir is None or importlib.util.find_spec("psycopg") is None:
        pytest.skip("PostgreSQL is not installed (scripts/install.sh --test installs it and psycopg)")
    with running_postgres(bin_dir) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres_server):
    """A scratch PostgreSQL database: ATELIER_TEST_POSTGRES_URL, else the session's own server."""
    import os

    return postgres_server.url if postgres_server is not None else os.environ["ATELIER_TEST_POSTGRES_URL"]


@pytest.fixture()
def png():
    return make_png


@pytest.fixture()
def recipe():
    return make_recipe


@pytest.fixture()
def latent():
    return make_latent


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.delenv("ATELIER_DATABASE_URL", raising=False)
    return tmp_path / "home"


@pytest.fixture()
def gallery(home, database, request):
    from storage.gallery import Gallery

    url = empty_postgres(request.getfixturevalue("postgres_url")) if database == "postgresql" else None
    g = Gallery.open(home, database_url=url)
    yield g
    g.close()
