"""Inpainting on the tiny model: the source kept outside the (blurred) mask, repainted inside, the
"masked" area processed at the working size, re-runs exact, bad requests refused before any UNet step."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageFilter

from pipelines.engine.inputs import EditInputs
from pipelines.recipe import ModelRef, RefineSettings
from pipelines.sizes import fit_to_bucket

sys.path.insert(0, str(Path(__file__).resolve().parent))  # importlib mode: the helpers beside this file

from edit_models import EDIT_FIELDS, pixels, smooth_image, square_mask  # noqa: E402
from edit_models import MASK_SHA as SHA

SOURCE = smooth_image(1)


@pytest.fixture()
def inpaint(tiny_recipe):
    return lambda **changes: tiny_recipe(**{**EDIT_FIELDS, "mask_sha256": SHA, **changes})


def check_kept_outside(result, blur, mask=None):
    mask = mask or square_mask()
    blurred = np.asarray(mask.filter(ImageFilter.GaussianBlur(blur)) if blur else mask)
    diff = np.abs(pixels(result.image) - pixels(fit_to_bucket(SOURCE, 64, 64))).max(axis=2)
    assert diff[blurred == 0].max() <= 2  # outside the blurred mask: the source
    assert diff[blurred > 128].mean() > 5  # inside: repainted
    return diff


@pytest.mark.parametrize("blur", [0, 4])
def test_outside_the_mask_is_the_source_and_inside_is_repainted(engine, inpaint, blur):
    result = engine.render(inpaint(mask_blur=blur), inputs=EditInputs(source=SOURCE, mask=square_mask()))
    check_kept_outside(result, blur)
    assert result.recipe.mask_sha256 == SHA and result.recipe.mask_blur == blur


def test_with_the_refiner_handoff_the_source_is_still_kept_outside(engine, inpaint, model_cache, count_calls):
    recipe = inpaint(switch=0.8, steps=10, refine=RefineSettings(model=ModelRef("tiny")), mask_blur=2)
    base = model_cache.load_base("tiny")
    refiner = model_cache.load_refiner("tiny", base)
    with count_calls(base=base.pipe.unet, refiner=refiner.pipe.unet) as calls:
        result = engine.render(recipe, inputs=EditInputs(source=SOURCE, mask=square_mask()))
    assert calls["base"] > 0 and calls["refiner"] > 0  # the base inpaints, the refiner resumes its latent
    check_kept_outside(result, 2)


def test_masked_area_inpaints_the_crop_at_the_working_size(engine, inpaint, model_cache):
    unet = model_cache.load_base("tiny").pipe.unet
    shapes = []
    handle = unet.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape[-2:])))
    try:
        mask = square_mask((28, 28, 36, 36))
        recipe = inpaint(inpaint_area="masked", inpaint_padding=4)
        result = engine.render(recipe, inputs=EditInputs(source=SOURCE, mask=mask))
    finally:
        handle.remove()
    # The crop is (24, 24)-(40, 40): 16 px, yet the UNet sees the recipe's 64 px (latent 8×8), not 2×2.
    assert shapes and set(shapes) == {(8, 8)}
    diff = check_kept_outside(result, 0, mask)
    outside_box = np.ones((64, 64), bool)
    outside_box[24:40, 24:40] = False
    assert diff[outside_box].max() == 0  # nothing outside the crop is touched


def test_reruns_are_bit_exact_and_the_mask_matters(engine, inpaint):
    recipe = inpaint(mask_blur=3)
    inputs = EditInputs(source=SOURCE, mask=square_mask())
    a, b = engine.render(recipe, inputs=inputs), engine.render(recipe, inputs=inputs)
    assert np.array_equal(pixels(a.image), pixels(b.image))
    other = engine.render(recipe, inputs=EditInputs(source=SOURCE, mask=square_mask((0, 0, 16, 16))))
    assert not np.array_equal(pixels(a.image), pixels(other.image))


def test_a_mask_of_another_size_is_fitted_like_the_source(engine, inpaint):
    big = square_mask((36, 24, 60, 40), size=(96, 64))  # SOURCE's size: fitted (centre crop) to 64×64
    result = engine.render(inpaint(), inputs=EditInputs(source=SOURCE, mask=big))
    check_kept_outside(result, 0, fit_to_bucket(big, 64, 64).convert("L"))


@pytest.mark.parametrize(
    ("changes", "inputs", "message"),
    [
        ({"mask_blur": 100}, None, "mask_blur"),
        ({"inpaint_area": "x"}, None, "inpaint_area"),
        ({"inpaint_padding": -1}, None, "inpaint_padding"),
        ({"mode": "txt2img", "strength": None}, None, "mask_sha256"),
        ({}, {"source": SOURCE}, "mask"),
        ({"mask_sha256": None}, {"source": SOURCE, "mask": square_mask()}, "mask"),
        ({}, {"source": SOURCE, "mask": b"not an image"}, "mask"),
    ],
)
def test_bad_inpaint_requests_fail_before_any_model_work(
    engine, inpaint, model_cache, count_calls, changes, inputs, message
):
    unet = model_cache.load_base("tiny").pipe.unet
    with count_calls(unet=unet) as calls, pytest.raises(ValueError, match=message):
        engine.render(inpaint(**changes), inputs=EditInputs(**(inputs or {"source": SOURCE, "mask": square_mask()})))
    assert calls["unet"] == 0


def test_the_result_equals_diffusers_inpaint_pipeline_called_directly(engine, inpaint, diffusers_reference):
    """Whole-picture inpainting without a refiner is StableDiffusionXLInpaintPipeline (made from the same
    components) given the fitted source, the mask and the seed: the same final latent."""
    import torch
    from diffusers import StableDiffusionXLInpaintPipeline

    recipe = inpaint()
    finished = engine.render(recipe, inputs=EditInputs(source=SOURCE, mask=square_mask()))
    reference = StableDiffusionXLInpaintPipeline(**diffusers_reference.base.pipe.components, add_watermarker=False)
    expected = reference(
        prompt=recipe.prompt,
        negative_prompt=recipe.negative_prompt,
        image=fit_to_bucket(SOURCE, 64, 64),
        mask_image=square_mask(),
        strength=recipe.strength,
        num_inference_steps=recipe.steps,
        guidance_scale=recipe.guidance,
        generator=torch.Generator("cpu").manual_seed(recipe.seed),
        width=64,
        height=64,
        output_type="latent",
    ).images[0]
    torch.testing.assert_close(finished.latent, expected, atol=1e-5, rtol=0)
