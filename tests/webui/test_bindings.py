"""The bindings: controls → Recipe → controls is lossless, and bad values name the field."""

from __future__ import annotations

import gradio as gr
import pytest

from atelier.requests import ModelChoice
from pipelines.recipe import LoraRef, MicroConditioning, ModelRef, Recipe, RefineSettings
from webui import bindings

DEFAULTS = bindings.Defaults(models=ModelChoice(base="tiny", refiner="tiny"), width=256, height=256, loras=("detail",))


@pytest.fixture(scope="module")
def controls():
    with gr.Blocks():
        return bindings.render_generation_controls(DEFAULTS)


def initial_values(controls) -> dict:
    return {c: c.value for c in controls.inputs()}


def test_every_control_is_an_input_once(controls):
    assert len(controls.inputs()) == 35


def test_defaults_make_a_valid_recipe(controls):
    values = initial_values(controls) | {controls.prompt: "a cat", controls.random_seed: False, controls.seed: 7}
    recipe, count = bindings.recipe_from_values(controls, values, DEFAULTS)
    assert count == 4
    assert (recipe.width, recipe.height, recipe.seed, recipe.model, recipe.refine.model) == (
        256,
        256,
        7,
        ModelRef("tiny"),
        ModelRef("tiny"),
    )
    assert recipe.micro == MicroConditioning()  # zeros mean "the generated size"


def test_recipe_round_trips_through_the_controls(controls):
    recipe = Recipe(
        model=ModelRef("tiny"),
        prompt="a lighthouse <lora:ink:0.5>",
        negative_prompt="blurry",
        prompt_syntax="a1111",
        seed=41,
        batch_seeds=(40, 41, 42),
        steps=33,
        guidance=7.5,
        scheduler="DPM++ 2M Karras",
        width=832,
        height=1216,
        micro=MicroConditioning(
            original_size=(2048, 1024),
            target_size=(1216, 832),
            crops_coords_top_left=(16, 8),
            negative_original_size=(512, 512),
            negative_target_size=(640, 640),
            negative_crops_coords_top_left=(4, 2),
            aesthetic_score=7.0,
            negative_aesthetic_score=1.5,
        ),
        switch=0.7,
        refine=RefineSettings(model=ModelRef("tiny"), strength=0.45),
        loras=(LoraRef("detail", weight=0.8), LoraRef("ink", weight=0.5)),
        watermark=False,
    )
    values = initial_values(controls) | bindings.values_from_recipe(controls, recipe)
    assert values[controls.size_preset] == "832×1216" and values[controls.count] == 3 and values[controls.seed] == 40
    again, count = bindings.recipe_from_values(controls, values, DEFAULTS)
    # The whole batch is drafted again (first seed, three drafts), so the picked image comes back identical.
    assert count == 3
    assert again.replace(seed=41) == recipe.replace(batch_seeds=())


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: {c.prompt: "  "}, "prompt: type what the image should show"),
        (lambda c: {c.width: 100}, "width: must be a multiple of 8"),
        (lambda c: {c.original_w: 512}, "original size: give both width and height"),
        (lambda c: {c.random_seed: False, c.seed: 1.5}, "seed: must be a whole number"),
        (lambda c: {c.steps: None}, "steps: enter a whole number"),
    ],
)
def test_bad_values_name_the_field(controls, change, message):
    values = initial_values(controls) | {controls.prompt: "a cat"} | change(controls)
    with pytest.raises(ValueError, match=message):
        bindings.recipe_from_values(controls, values, DEFAULTS)


def test_default_size_setting(monkeypatch):
    monkeypatch.delenv(bindings.SIZE_ENV, raising=False)
    assert bindings.default_size(demo=True) == (256, 256) and bindings.default_size(demo=False) == (1024, 1024)
    monkeypatch.setenv(bindings.SIZE_ENV, "512x384")
    assert bindings.default_size(demo=False) == (512, 384)
    monkeypatch.setenv(bindings.SIZE_ENV, "big")
    with pytest.raises(ValueError, match=bindings.SIZE_ENV):
        bindings.default_size(demo=True)


@pytest.fixture(scope="module")
def img2img_size():
    with gr.Blocks():
        return bindings.render_size_controls(256, 256, elem_prefix="img2img-", from_source=True)


@pytest.mark.parametrize(
    "source, expected",
    [
        ((80, 48), (104, 64)),
        ((64, 64), (64, 64)),
        ((1080, 1920), (576, 1024)),
        ((3000, 1000), (1024, 344)),
        ((250, 251), (248, 248)),
    ],
)
def test_img2img_size_follows_the_source_by_default(img2img_size, source, expected):
    assert img2img_size.preset.value == bindings.SOURCE_SIZE
    values = {c: c.value for c in img2img_size.inputs()}
    assert bindings.size_from_values(img2img_size, values, source) == expected


@pytest.mark.parametrize("preset", [bindings.CUSTOM_SIZE, "832×1216"])
def test_a_chosen_img2img_size_is_kept(img2img_size, preset):
    values = {img2img_size.preset: preset, img2img_size.width: 832, img2img_size.height: 1216}
    assert bindings.size_from_values(img2img_size, values, (80, 48)) == (832, 1216)


def test_following_the_source_needs_one(img2img_size):
    values = {c: c.value for c in img2img_size.inputs()}
    with pytest.raises(ValueError, match="no source image"):
        bindings.size_from_values(img2img_size, values, None)


@pytest.mark.parametrize("text, expected", [("", 16), ("3", 3), ("0", ValueError), ("many", ValueError)])
def test_queue_size_setting(monkeypatch, text, expected):
    from webui.app import QUEUE_SIZE_ENV, queue_size_default

    monkeypatch.setenv(QUEUE_SIZE_ENV, text)
    if expected is ValueError:
        with pytest.raises(ValueError, match=QUEUE_SIZE_ENV):
            queue_size_default()
    else:
        assert queue_size_default() == expected


def test_remembered_settings_round_trip_by_name(controls):
    values = initial_values(controls) | {controls.prompt: "a kite", controls.steps: 7, controls.lora_names[1]: "detail"}
    kept = bindings.remembered_settings(controls, values)
    assert kept["steps"] == 7 and kept["lora_names.1"] == "detail" and kept["prompt"] == "a kite"
    restored = bindings.restored_settings(controls, {**kept, "a_control_of_an_older_version": 1})
    assert restored[controls.steps] == 7 and restored[controls.lora_names[1]] == "detail"
    assert len(restored) == len(controls.inputs())  # every control, and nothing unknown
    assert bindings.restored_settings(controls, None) == {}
