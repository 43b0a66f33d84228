"""Outpainting and masked content "noise" on the tiny model: the canvas size exact, the source kept outside
the (blurred) mask, the border painted, "noise" differing from "original" only inside the mask and matching
a reference built directly with torch and diffusers, re-runs exact, bad values refused before any UNet step."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLInpaintPipeline

from pipelines.engine.inputs import EditInputs
from pipelines.engine.outpaint import OVERLAP, extend_canvas
from pipelines.provenance.png_metadata import a1111_parameters
from pipelines.recipe import ModelRef, Recipe, RefineSettings
from pipelines.sizes import fit_to_bucket

sys.path.insert(0, str(Path(__file__).resolve().parent))  # importlib mode: the helpers beside this file

from edit_models import EDIT_FIELDS, pixels, smooth_image, square_mask  # noqa: E402
from edit_models import MASK_SHA as SHA

SOURCE = smooth_image(1)  # 96×64: fitted (centre crop) to the source's part of the canvas
EXPAND = (16, 8, 24, 0)  # left, top, right, bottom: a 64×64 source on a 104×72 canvas
CANVAS = (104, 72)
MASK_BOX = (16, 16, 48, 48)


@pytest.fixture()
def edit(tiny_recipe):
    return lambda **changes: tiny_recipe(**{**EDIT_FIELDS, **changes})


def outpainted(edit, **changes) -> Recipe:
    return edit(expand=EXPAND, width=CANVAS[0], height=CANVAS[1], **changes)


def far_from_the_border(margin: int) -> tuple[slice, slice]:
    """The source's part of the canvas less `margin` px on each expanded side (rows, columns)."""
    left, top, right, bottom = EXPAND
    width, height = CANVAS
    rows = slice(top + (margin if top else 0), height - bottom - (margin if bottom else 0))
    columns = slice(left + (margin if left else 0), width - right - (margin if right else 0))
    return rows, columns


@pytest.mark.parametrize("blur", [0, 4])
@pytest.mark.parametrize("refine", [None, RefineSettings(model=ModelRef("tiny"))])
def test_outpaint_makes_the_canvas_keeps_the_source_and_paints_the_border(engine, edit, blur, refine):
    switch = 1.0 if refine is None else 0.8
    recipe = outpainted(edit, mask_blur=blur, refine=refine, switch=switch)
    result = engine.render(recipe, inputs=EditInputs(source=SOURCE))
    assert result.image.size == CANVAS and result.recipe.expand == EXPAND
    left, top, right, bottom = EXPAND
    fitted = fit_to_bucket(SOURCE, CANVAS[0] - left - right, CANVAS[1] - top - bottom)
    placed = np.zeros((CANVAS[1], CANVAS[0], 3), int)
    placed[top : CANVAS[1] - bottom, left : CANVAS[0] - right] = pixels(fitted)
    diff = np.abs(pixels(result.image) - placed).max(axis=2)
    rows, columns = far_from_the_border(OVERLAP + 4 * blur)  # beyond the seam band and the blur's reach
    assert diff[rows, columns].size > 0 and diff[rows, columns].max() <= 2
    # The border is painted: it is not the edge-stretched fill the model started from.
    border = np.ones(diff.shape, bool)
    border[top : CANVAS[1] - bottom, left : CANVAS[0] - right] = False
    fill = pixels(extend_canvas(fitted, EXPAND))
    assert np.abs(pixels(result.image) - fill).max(axis=2)[border].mean() > 5


def test_outpaint_with_a_user_mask_also_repaints_inside_the_source(engine, edit):
    inputs = EditInputs(source=SOURCE, mask=square_mask((24, 24, 40, 40)))
    result = engine.render(outpainted(edit, mask_sha256=SHA), inputs=inputs)
    left, top = EXPAND[:2]
    fitted = pixels(fit_to_bucket(SOURCE, 64, 64))
    inner = pixels(result.image)[top : top + 64, left : left + 64]
    diff = np.abs(inner - fitted).max(axis=2)
    assert diff[24:40, 24:40].mean() > 5  # the user's mask, placed on the source
    assert diff[40:56, 8:16].max() <= 2 and diff[40:56, 8:40].max() <= 2  # neither mask reaches there


def test_outpaint_reruns_are_bit_exact(engine, edit):
    recipe = outpainted(edit, mask_blur=2, masked_content="noise", seed=7)
    a = engine.render(recipe, inputs=EditInputs(source=SOURCE))
    b = engine.render(recipe, inputs=EditInputs(source=SOURCE))
    assert np.array_equal(pixels(a.image), pixels(b.image))


def test_noise_and_original_differ_inside_the_mask_and_both_keep_the_outside(engine, edit):
    inputs = EditInputs(source=SOURCE, mask=square_mask(MASK_BOX))
    original = engine.render(edit(strength=0.6, mask_sha256=SHA), inputs=inputs)
    noise = engine.render(edit(strength=0.6, mask_sha256=SHA, masked_content="noise"), inputs=inputs)
    again = engine.render(edit(strength=0.6, mask_sha256=SHA, masked_content="noise"), inputs=inputs)
    inside = np.asarray(square_mask(MASK_BOX)) == 255
    fitted = pixels(fit_to_bucket(SOURCE, 64, 64))
    for result in (original, noise):
        assert np.abs(pixels(result.image) - fitted).max(axis=2)[~inside].max() <= 2
    assert np.abs(pixels(noise.image) - pixels(original.image)).max(axis=2)[inside].mean() > 5
    assert np.array_equal(pixels(noise.image), pixels(again.image))  # same seed, same pixels
    assert noise.recipe.masked_content == "noise"


def test_noise_matches_a_reference_built_with_torch_and_diffusers(engine, edit, diffusers_reference):
    """The masked area of the source's latent (the VAE's mean) replaced by the seed's first normal draw, the
    pipeline given that latent and the same generator after the draw; the latent mask is the pixel mask
    binarized at 0.5 and sampled every 8 px (nearest)."""
    recipe = edit(strength=0.6, mask_sha256=SHA, masked_content="noise")
    finished = engine.render(recipe, inputs=EditInputs(source=SOURCE, mask=square_mask(MASK_BOX)))
    base = diffusers_reference.base.pipe
    reference = StableDiffusionXLInpaintPipeline(**base.components, add_watermarker=False)
    fitted = fit_to_bucket(SOURCE, 64, 64)
    with torch.no_grad():
        pixels_in = reference.image_processor.preprocess(fitted)
        source = base.vae.encode(pixels_in).latent_dist.mode() * base.vae.config.scaling_factor
    binary = np.asarray(square_mask(MASK_BOX), dtype=np.float32) / 255 >= 0.5
    latent_mask = torch.from_numpy(binary[::8, ::8].astype(np.float32))[None, None]
    generator = torch.Generator("cpu").manual_seed(recipe.seed)
    fill = torch.randn(source.shape, generator=generator, dtype=torch.float32)
    start = source * (1 - latent_mask) + fill * latent_mask
    expected = reference(
        prompt=recipe.prompt,
        negative_prompt=recipe.negative_prompt,
        image=start,
        mask_image=square_mask(MASK_BOX),
        strength=0.6,
        num_inference_steps=recipe.steps,
        guidance_scale=recipe.guidance,
        generator=generator,
        width=64,
        height=64,
        output_type="latent",
    ).images[0]
    torch.testing.assert_close(finished.latent, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"expand": (4, 0, 0, 0)}, "expand: must be .*multiples of 8"),
        ({"expand": (-8, 0, 0, 0)}, "expand"),
        ({"expand": (1032, 0, 0, 0), "width": 1096}, "expand"),
        ({"expand": (8, 0, 8)}, "expand"),
        ({"expand": (8, 0, 0, 0), "mode": "txt2img", "strength": None}, "expand: .*img2img"),
        ({"masked_content": "noise", "mode": "txt2img", "strength": None}, "masked_content: .*img2img"),
        ({"masked_content": "latent nothing"}, "masked_content: must be one of original, noise"),
        ({"expand": (0, 0, 8, 0), "width": 64}, "expand: .*at least 64"),
    ],
)
def test_bad_outpaint_values_are_refused_by_the_recipe(edit, changes, message):
    with pytest.raises(ValueError, match=message):
        edit(**changes)


def test_noise_without_a_mask_fails_before_any_model_work(engine, edit, model_cache, count_calls):
    unet = model_cache.load_base("tiny").pipe.unet
    with count_calls(unet=unet) as calls, pytest.raises(ValueError, match="masked_content: 'noise'"):
        engine.render(edit(masked_content="noise"), inputs=EditInputs(source=SOURCE))
    assert calls["unet"] == 0


def test_the_new_fields_round_trip_through_json_and_show_in_the_a1111_text(edit):
    recipe = outpainted(edit, masked_content="noise", mask_blur=4)
    assert Recipe.from_json(recipe.to_json()) == recipe
    older = {k: v for k, v in recipe.to_dict().items() if k not in ("masked_content", "expand")}
    assert Recipe.from_dict(older).expand == (0, 0, 0, 0) and Recipe.from_dict(older).masked_content == "original"
    text = a1111_parameters(recipe)
    assert "Masked content: latent noise" in text and 'Outpaint: "16,8,24,0"' in text and "Mask blur: 4" in text
    assert "Masked content" not in a1111_parameters(edit(strength=0.5))
