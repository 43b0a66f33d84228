"""img2img on the tiny model against diffusers called directly: strength, handoff, refine-any-image."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline
from PIL import Image

from pipelines.engine.inputs import EditInputs
from pipelines.recipe import ModelRef, RefineSettings, refine_any_recipe
from pipelines.sizes import fit_to_bucket, nearest_bucket

sys.path.insert(0, str(Path(__file__).resolve().parent))  # importlib mode: the helpers beside this file

from edit_models import smooth_image  # noqa: E402

SOURCE, OTHER = smooth_image(1), smooth_image(2)


@pytest.fixture(scope="module")
def direct(model_cache):
    base = model_cache.load_base("tiny")
    refiner = model_cache.load_refiner("tiny", base)
    ref_base = StableDiffusionXLImg2ImgPipeline(**base.pipe.components, add_watermarker=False)
    ref_refiner = StableDiffusionXLImg2ImgPipeline(
        **refiner.pipe.components,
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    return base, refiner, ref_base, ref_refiner


@pytest.fixture()
def edit(tiny_recipe):
    def make(**changes):
        fields = dict(mode="img2img", strength=0.6, steps=6, switch=1.0, refine=None, watermark=False)
        return tiny_recipe(**{**fields, **changes})

    return make


def common(recipe):
    return dict(
        prompt=recipe.prompt,
        negative_prompt=recipe.negative_prompt,
        num_inference_steps=recipe.steps,
        guidance_scale=recipe.guidance,
        output_type="latent",
        generator=torch.Generator("cpu").manual_seed(recipe.seed),
    )


def encoded(pipe, image):
    """The source's latent, straight from the VAE (distribution mean, scaled)."""
    with torch.no_grad():
        pixels = pipe.image_processor.preprocess(fit_to_bucket(image, 64, 64))
        return pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor


def test_img2img_equals_diffusers_img2img(engine, edit, direct):
    recipe = edit()
    result = engine.render(recipe, inputs=EditInputs(source=SOURCE))
    reference = direct[2](image=fit_to_bucket(SOURCE, 64, 64), strength=0.6, **common(recipe)).images[0]
    torch.testing.assert_close(result.latent, reference, atol=1e-5, rtol=0)
    assert result.recipe.mode == "img2img" and result.recipe.strength == 0.6


def test_img2img_then_refiner_handoff_equals_the_one_shot_reference(engine, edit, direct, count_calls):
    base, refiner, ref_base, ref_refiner = direct
    recipe = edit(strength=0.7, steps=10, switch=0.8, refine=RefineSettings(model=ModelRef("tiny")))
    with count_calls(base=base.pipe.unet, refiner=refiner.pipe.unet) as calls:
        result = engine.render(recipe, inputs=EditInputs(source=SOURCE))
    handoff = ref_base(image=fit_to_bucket(SOURCE, 64, 64), strength=0.7, denoising_end=0.8, **common(recipe)).images
    reference = ref_refiner(image=handoff, denoising_start=0.8, **common(recipe)).images[0]
    torch.testing.assert_close(result.latent, reference, atol=1e-5, rtol=0)
    # strength 0.7 of 10 steps = the last 7; the base runs those above the switch point, the refiner the rest
    assert (calls["base"], calls["refiner"]) == (5, 2)


def test_strength_zero_returns_the_source_unchanged(engine, edit, direct, count_calls):
    with count_calls(unet=direct[0].pipe.unet) as calls:
        result = engine.render(edit(strength=0.0), inputs=EditInputs(source=SOURCE))
    assert calls["unet"] == 0 and result.source_unchanged
    expected = np.asarray(fit_to_bucket(SOURCE, 64, 64)).astype(int)
    assert np.array_equal(np.asarray(result.image).astype(int), expected)  # the fitted pixels, no VAE round trip
    torch.testing.assert_close(result.latent, encoded(direct[0].pipe, SOURCE)[0], atol=1e-5, rtol=0)
    other = np.asarray(engine.render(edit(strength=0.0), inputs=EditInputs(source=OTHER)).image).astype(int)
    assert np.abs(other - expected).max() > 10


def test_strength_one_ignores_the_source(engine, edit, tiny_recipe):
    a = engine.render(edit(strength=1.0), inputs=EditInputs(source=SOURCE))
    b = engine.render(edit(strength=1.0), inputs=EditInputs(source=OTHER))
    assert torch.equal(a.latent, b.latent)
    txt2img = engine.render(tiny_recipe(steps=6, switch=1.0, refine=None, watermark=False))
    assert torch.equal(a.latent, txt2img.latent)


def test_the_output_depends_on_the_source(engine, edit):
    a = engine.render(edit(strength=0.5), inputs=EditInputs(source=SOURCE))
    b = engine.render(edit(strength=0.5), inputs=EditInputs(source=OTHER))
    assert not torch.allclose(a.latent, b.latent, atol=1e-2)


def test_refine_any_image_is_the_refiner_alone_at_its_strength(engine, edit, direct, count_calls):
    base, refiner, _, ref_refiner = direct
    recipe = refine_any_recipe(edit(), RefineSettings(model=ModelRef("tiny"), strength=0.5))
    with count_calls(base=base.pipe.unet, refiner=refiner.pipe.unet) as calls:
        result = engine.render(recipe, inputs=EditInputs(source=SOURCE))
    reference = ref_refiner(image=encoded(base.pipe, SOURCE), strength=0.5, **common(recipe)).images[0]
    torch.testing.assert_close(result.latent, reference, atol=1e-5, rtol=0)
    assert (calls["base"], calls["refiner"]) == (0, 3)


def test_an_img2img_draft_refines_and_reruns_to_the_same_pixels(engine, edit):
    recipe = edit(strength=0.7, steps=10, switch=0.8, refine=RefineSettings(model=ModelRef("tiny")))
    inputs = EditInputs(source=SOURCE)
    drafts = engine.draft(recipe, 2, inputs=inputs)
    assert all(d.latent.noisy for d in drafts)
    refined = engine.refine(drafts[1])
    again = engine.render(refined.recipe, inputs=inputs)
    assert np.array_equal(np.asarray(again.image), np.asarray(refined.image))
    assert torch.equal(engine.render(drafts[1].recipe, inputs=inputs).latent.tensor, drafts[1].latent.tensor)


def test_fit_to_bucket_scales_to_cover_and_crops_the_centre():
    wide = smooth_image(3, size=(128, 64))
    assert np.array_equal(np.asarray(fit_to_bucket(wide, 64, 64)), np.asarray(wide.crop((32, 0, 96, 64))))
    assert fit_to_bucket(Image.new("L", (10, 30)), 64, 128).size == (64, 128)
    assert nearest_bucket(1920, 1080) == (1344, 768) and nearest_bucket(800, 800) == (1024, 1024)


@pytest.mark.parametrize(
    "changes, inputs, message",
    [
        ({}, EditInputs(), "img2img: no source image given"),
        # No refine stage to run instead (with one, see test_engine_dead_ends.py): say what to change.
        (
            {"strength": 0.1},
            EditInputs(source=SOURCE),
            r"strength: 0.1 at 6 steps leaves the base no step.*at least 0.17",
        ),
    ],
)
def test_bad_img2img_requests_are_refused_before_denoising(engine, edit, direct, count_calls, changes, inputs, message):
    with count_calls(unet=direct[0].pipe.unet) as calls, pytest.raises(ValueError, match=message):
        engine.render(edit(**changes), inputs=inputs)
    assert calls["unet"] == 0


def test_a_source_for_txt2img_is_refused(engine, tiny_recipe):
    with pytest.raises(ValueError, match="mode is txt2img"):
        engine.render(tiny_recipe(), inputs=EditInputs(source=SOURCE))
