"""The one request→Recipe builder: the Recipe's defaults, one seed policy, one syntax rule, one LoRA rule."""

from __future__ import annotations

import subprocess
import sys

import pytest

from atelier import requests
from atelier.requests import GenerationRequest, ModelChoice, build_recipe
from pipelines.recipe import LoraRef, Recipe, RefineSettings
from tests.atelier.png_helpers import tiny_png

TINY = ModelChoice(base="tiny", refiner="tiny")


def test_defaults_are_the_recipes_own():
    recipe = build_recipe(GenerationRequest(prompt="a cat", seed=1), TINY)
    plain = Recipe(model=recipe.model, prompt="a cat", seed=1, refine=recipe.refine)
    for name in ("steps", "guidance", "scheduler", "width", "height", "switch", "micro", "watermark"):
        assert getattr(recipe, name) == getattr(plain, name), name
    assert recipe.refine.strength == RefineSettings().strength == requests.DEFAULT_REFINE_STRENGTH
    assert requests.DEFAULT_STEPS == Recipe(model=recipe.model, prompt="x", seed=0).steps == 20


def test_no_seed_means_a_random_32_bit_seed():
    seeds = {build_recipe(GenerationRequest(prompt="a cat"), TINY).seed for _ in range(20)}
    assert len(seeds) > 15 and all(0 <= s < 2**32 for s in seeds)


@pytest.mark.parametrize(
    "picked, prompt, expected",
    [
        ((LoraRef("x", weight=0.5),), "a cat <lora:x:0.9>", (("x", 0.9),)),  # a token sets its LoRA's weight
        ((LoraRef("x", weight=0.5),), "a cat", (("x", 0.5),)),  # a picked LoRA keeps its weight
        ((LoraRef("x.safetensors", weight=0.5),), "a cat <lora:y>", (("x", 0.5), ("y", 1.0))),
        ((), "<lora:ink:0.3> a cat <lora:x.safetensors:0.7>", (("ink", 0.3), ("x", 0.7))),
    ],
)
def test_one_lora_rule(picked, prompt, expected):
    recipe = build_recipe(GenerationRequest(prompt=prompt, loras=picked, seed=1), TINY)
    assert tuple((lora.name, lora.weight) for lora in recipe.loras) == expected


def test_the_engine_applies_the_same_lora_rule():
    from pipelines.models.lora import with_prompt_loras

    handmade = Recipe(model=TINY_REF, prompt="a cat <lora:x:0.9>", seed=1, loras=(LoraRef("x", weight=0.5),))
    built = build_recipe(
        GenerationRequest(prompt="a cat <lora:x:0.9>", loras=(LoraRef("x", weight=0.5),), seed=1), TINY
    )
    assert with_prompt_loras(handmade).loras == built.loras == (LoraRef("x", weight=0.9),)
    assert with_prompt_loras(built) is built  # nothing left to merge


TINY_REF = build_recipe(GenerationRequest(prompt="x", seed=0), TINY).model


def test_a_lora_named_twice_in_the_prompt_is_refused():
    with pytest.raises(ValueError, match="appears twice"):
        build_recipe(GenerationRequest(prompt="<lora:x:0.5> a <lora:x:0.6>", seed=1), TINY)


@pytest.mark.parametrize(
    "prompt, negative, syntax",
    [
        ("a cat, oil painting", "", "compel"),
        ("(a cat:1.3), oil painting", "", "a1111"),
        ("a (cat)1.3", "", "compel"),
        ("((masterpiece)), a cat", "", "a1111"),
        ("a cat", "[blurry]", "a1111"),
        ("a cat BREAK a dog", "", "a1111"),
    ],
)
def test_auto_syntax_follows_the_prompts_constructs_and_is_recorded(monkeypatch, prompt, negative, syntax):
    monkeypatch.delenv(requests.PROMPT_SYNTAX_ENV, raising=False)
    recipe = build_recipe(GenerationRequest(prompt=prompt, negative=negative, seed=1), TINY)
    assert recipe.prompt_syntax == syntax


def test_the_syntax_setting_and_an_explicit_choice(monkeypatch):
    monkeypatch.setenv(requests.PROMPT_SYNTAX_ENV, "compel")
    assert build_recipe(GenerationRequest(prompt="(a cat:1.3)", seed=1), TINY).prompt_syntax == "compel"
    assert build_recipe(GenerationRequest(prompt="a cat", syntax="a1111", seed=1), TINY).prompt_syntax == "a1111"
    monkeypatch.setenv(requests.PROMPT_SYNTAX_ENV, "fancy")
    with pytest.raises(ValueError, match="ATELIER_PROMPT_SYNTAX: must be one of auto, compel, a1111"):
        build_recipe(GenerationRequest(prompt="a cat", seed=1), TINY)


def test_unsupported_a1111_constructs_are_named():
    recipe = build_recipe(GenerationRequest(prompt="[a cat:a dog:0.5], [red|blue] ball", seed=1), TINY)
    warnings = requests.recipe_warnings(recipe)
    assert recipe.prompt_syntax == "a1111"
    assert any("[from:to:when]" in w for w in warnings) and any("[a|b]" in w for w in warnings)
    compel = build_recipe(GenerationRequest(prompt="(a cat:1.3)", syntax="compel", seed=1), TINY)
    assert any("A1111 weighting" in w for w in requests.recipe_warnings(compel))


@pytest.mark.parametrize(
    "source, expected", [((256, 256), (256, 256)), ((3000, 2000), (1024, 680)), ((30, 20), (96, 64))]
)
def test_img2img_takes_the_sources_own_size(source, expected):
    recipe = build_recipe(GenerationRequest(prompt="a cat", seed=1, source_size=source, strength=0.5), TINY)
    assert (recipe.mode, recipe.strength, recipe.width, recipe.height) == ("img2img", 0.5, *expected)
    chosen = build_recipe(
        GenerationRequest(prompt="a cat", seed=1, source_size=source, strength=0.5, width=512, height=512), TINY
    )
    assert (chosen.width, chosen.height) == (512, 512)


def test_refine_only_is_the_refiner_alone_on_the_source():
    recipe = build_recipe(
        GenerationRequest(prompt="a cat", seed=1, source_size=(64, 64), refine_only=True, refine_strength=0.4), TINY
    )
    assert (recipe.mode, recipe.strength, recipe.switch, recipe.refine.strength) == ("img2img", 0.0, 1.0, 0.4)


@pytest.mark.parametrize(
    "request_, message",
    [
        (GenerationRequest(prompt="  "), "prompt: type what the image should show"),
        (GenerationRequest(prompt="a", count=17), "drafts: must be from 1 to 16"),
        (GenerationRequest(prompt="a", width=100, height=64), "width: .*multiple of 8"),
        (GenerationRequest(prompt="a", width=512), "give both width and height"),
        (GenerationRequest(prompt="a", strength=0.5), "img2img needs a source image"),
    ],
)
def test_bad_requests_name_the_field(request_, message):
    with pytest.raises(ValueError, match=message):
        build_recipe(request_, TINY)


def test_the_builder_loads_no_torch():
    code = (
        "import sys, atelier.requests; print(sorted(m for m in ('torch', 'diffusers', 'gradio') if m in sys.modules))"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


def test_a_recorded_sha256_survives_the_merge():
    """A re-run's recipe names each LoRA's sha256; the prompt's token may set the weight, never drop it."""
    from pipelines.prompt_syntax import merge_prompt_loras

    recorded = (LoraRef("x", sha256="a" * 64, weight=0.5),)
    assert merge_prompt_loras(recorded, "a cat <lora:x:0.9>") == (LoraRef("x", sha256="a" * 64, weight=0.9),)
    assert merge_prompt_loras(recorded, "a cat") == recorded


def test_the_gallery_lora_filter_treats_name_and_file_name_alike(tmp_path):
    from atelier.studio import GalleryFilters, Studio

    with Studio(tmp_path / "home") as studio:
        recipe = Recipe(model=TINY_REF, prompt="a cat", seed=1, loras=(LoraRef("ink", weight=0.5),))
        saved = studio.gallery.save(recipe, "txt2img", tiny_png())
        for typed in ("ink", "ink.safetensors", " ink.safetensors "):
            found = studio.search(None, GalleryFilters(lora=typed)).items
            assert [g.id for g in found] == [saved.id], typed
        assert not studio.search(None, GalleryFilters(lora="other")).items
