"""Shared fixtures: one tiny random-weight SDXL per test session, built offline once and copied into
every home that needs it (`tiny_home`, `make_tiny_home`, the session's `atelier_home`)."""

from __future__ import annotations

import gc
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("DISABLE_TELEMETRY", "1")
# One CPU thread for torch (and, through the environment, for every `atelier` subprocess a test starts).
# The tiny model's tensors are far too small to gain from a second thread, and on a busy 2-core machine
# OpenMP's threads wait on each other at every op: a 64 px draft took 1.7-6 s with 2 threads, 0.07 s with 1.
# An explicit OMP_NUM_THREADS / MKL_NUM_THREADS in the environment still wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
if "torch" in sys.modules:  # imported before this file (by a plugin): the environment came too late
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

import pytest


@pytest.fixture(autouse=True)
def _pillow_pixel_limit_as_found():
    """Building the web app in a test's own process (webui.security.limit_decoded_pixels) lowers Pillow's global
    pixel limit, as the server does; later tests of the Studio and CLI paths must see Pillow's default."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = limit


def pytest_collection_finish(session):
    """What collection imported (torch, diffusers, transformers, gradio: some 200,000-600,000 objects) lives
    for the whole session: freeze it out of the garbage collector's way. Every ModelCache load runs
    gc.collect() (release), which otherwise walks all of it each time (tests/pipelines/test_loading*.py:
    8.0 s -> 5.6 s CPU in gc.collect over 25 loads). Objects made by fixtures and tests (and modules imported
    lazily later) are collected as before."""
    gc.collect()
    gc.freeze()


def tiny_home_at(home: Path, tiny_model_dir: Path) -> Path:
    """Make `home` an Atelier home holding a copy of the session's tiny model at home/models/tiny (where
    ModelCache looks for it, so nothing is rebuilt). A copy, not a link: a test may change its files."""
    home = Path(home)
    target = home / "models" / "tiny"
    if not (target / "base" / "model_index.json").exists() or not (target / "refiner" / "model_index.json").exists():
        shutil.copytree(tiny_model_dir, target, dirs_exist_ok=True)
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny SDXL (base/ and refiner/ diffusers folders), written once per session. Read it, never change
    it: copy it first (tiny_home, make_tiny_home) when a test needs to alter files."""
    from pipelines.models.tiny_model import write_tiny_model

    directory = tmp_path_factory.mktemp("tiny-model")
    write_tiny_model(directory)
    return directory


@pytest.fixture(scope="session")
def make_tiny_home(tmp_path_factory, tiny_model_dir):
    """make_tiny_home(path=None) -> a fresh home with the tiny model in place; for module- and session-scoped
    fixtures (e.g. a Studio or an `atelier` subprocess with ATELIER_HOME), which would otherwise build their own."""

    def make(path: Path | None = None, name: str = "home") -> Path:
        return tiny_home_at(path if path is not None else tmp_path_factory.mktemp(name), tiny_model_dir)

    return make


@pytest.fixture()
def tiny_home(tmp_path, tiny_model_dir):
    """A fresh home for one test (tmp_path / "home") with the tiny model in place."""
    return tiny_home_at(tmp_path / "home", tiny_model_dir)


@pytest.fixture(scope="session")
def atelier_home(make_tiny_home):
    """An Atelier home folder shared by the session, with the tiny model in place."""
    return make_tiny_home(name="atelier-home")


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


@pytest.fixture(scope="session")
def diffusers_reference(model_cache):
    """The loaded tiny models, and plain diffusers pipelines over the same weights: the independent
    reference the engine's results are compared with."""
    from types import SimpleNamespace

    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    base = model_cache.load_base("tiny")
    refiner = model_cache.load_refiner("tiny", base)
    return SimpleNamespace(
        base=base,
        refiner=refiner,
        ref_base=StableDiffusionXLPipeline(**base.pipe.components, add_watermarker=False),
        ref_refiner=StableDiffusionXLImg2ImgPipeline(
            **refiner.pipe.components,
            requires_aesthetics_score=True,
            force_zeros_for_empty_prompt=False,
            add_watermarker=False,
        ),
        ref_base_img2img=StableDiffusionXLImg2ImgPipeline(**base.pipe.components, add_watermarker=False),
    )
