"""Shared fixtures: one tiny random-weight SDXL per test session, built offline in a temp home."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DISABLE_TELEMETRY", "1")

import pytest


@pytest.fixture(scope="session")
def atelier_home(tmp_path_factory):
    """An Atelier home folder shared by the session; the tiny model is written into it on first use."""
    return tmp_path_factory.mktemp("atelier-home")


@pytest.fixture(scope="session")
def model_cache(atelier_home):
    from pipelines.models.loading import ModelCache

    return ModelCache(atelier_home, device="cpu")


@pytest.fixture(scope="session")
def engine(model_cache):
    from pipelines.engine.engine import Engine

    return Engine(model_cache, app_version="test")


@pytest.fixture()
def tiny_recipe():
    """A small, fast recipe for the tiny model; pass field overrides as keyword arguments."""
    from pipelines.recipe import ModelRef, Recipe, RefineSettings

    def make(**changes):
        fields = dict(
            model=ModelRef("tiny"),
            prompt="a photo of a cat",
            negative_prompt="blurry",
            seed=1234,
            steps=10,
            width=64,
            height=64,
            guidance=5.0,
            switch=0.8,
            refine=RefineSettings(model=ModelRef("tiny")),
        )
        fields.update(changes)
        return Recipe(**fields)

    return make


class CallCounter:
    """Counts forward calls of modules with forward hooks; `with` removes the hooks."""

    def __init__(self, **modules):
        self.counts = {name: 0 for name in modules}
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name):
        def hook(*_):
            self.counts[name] += 1

        return hook

    def __getitem__(self, name):
        return self.counts[name]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()


@pytest.fixture()
def count_calls():
    return CallCounter
