"""Fixtures for the gallery tests: small distinct PNGs (Pillow), recipes built directly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# pytest runs in importlib mode: make the helpers beside this file importable by the test modules.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from storage_checks import make_latent, make_png, make_recipe  # noqa: E402


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
def gallery(home):
    from storage.gallery import Gallery

    g = Gallery.open(home)
    yield g
    g.close()
