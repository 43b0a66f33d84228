"""A gallery entry acted on from the web (re-run, refine, vary, upscale) may name only the models this
server offers: an imported recipe naming a path or another hub id is refused before anything loads."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from atelier.requests import ModelChoice
from atelier.studio import Studio
from pipelines.recipe import ControlUnit, ModelRef, Recipe, RefineSettings
from webui.context import Context


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 60, 90)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture()
def context(tmp_path):
    studio = Studio(tmp_path / "home")
    yield Context(studio=studio, jobs=None, choice=ModelChoice(base="tiny", refiner="tiny-refiner"), defaults=None)
    studio.close()


def saved(context: Context, recipe: Recipe) -> int:
    return context.studio.gallery.save(recipe, "txt2img", png()).id


def recipe(**changes) -> Recipe:
    fields = {"model": ModelRef(name="tiny"), "prompt": "a fox", "seed": 1, "width": 64, "height": 64}
    return Recipe(**{**fields, "refine": RefineSettings(model=ModelRef(name="tiny-refiner")), **changes})


def test_entries_made_with_the_served_models_pass(context):
    context.check_offered(saved(context, recipe()))
    context.check_offered(saved(context, recipe(refine=RefineSettings(model=None))))  # the base refines


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"model": ModelRef(name="/etc/hostile.safetensors")}, "the model '/etc/hostile.safetensors'"),
        ({"model": ModelRef(name="someone/else-sdxl")}, "the model 'someone/else-sdxl'"),
        ({"refine": RefineSettings(model=ModelRef(name="../../refiner"))}, "the refiner '../../refiner'"),
        ({"controlnets": (ControlUnit(model=ModelRef(name="/tmp/cn")),)}, "the ControlNet '/tmp/cn'"),
        (
            {"mode": "img2img", "strength": 0.5, "mask_sha256": "ab" * 32, "inpaint_model": ModelRef(name="/x.st")},
            "the inpainting model '/x.st'",
        ),
    ],
)
def test_entries_naming_other_models_are_refused_before_loading(context, changes, named):
    gid = saved(context, recipe(**changes))
    with pytest.raises(ValueError, match=f"#{gid} was made with {named}, which this server does not offer") as caught:
        context.check_offered(gid)
    assert "atelier serve --model" in str(caught.value)
    assert context.studio._engine is None  # nothing was loaded: not even the engine was made
