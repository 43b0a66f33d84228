"""Requests a browser user can make that used to end in a raw error: 1-step schedules, switch points that
leave a stage no step, low-denoise img2img with the refiner, strength 0, a negative crop on its own.

Every claim is checked against diffusers called directly (same weights, same generator seed), with UNet
calls counted by forward hooks and pixels compared exactly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.engine.inputs import EditInputs
from pipelines.recipe import MicroConditioning, ModelRef, RefineSettings
from pipelines.sizes import fit_to_bucket

sys.path.insert(0, str(Path(__file__).resolve().parent))  # importlib mode: the helpers beside this file

from edit_models import smooth_image  # noqa: E402

SOURCE = smooth_image(5, size=(96, 80))  # not 64×64: the engine fits it (scale to cover, centre crop)
FITTED = fit_to_bucket(SOURCE, 64, 64)


@pytest.fixture(scope="module")
def direct(diffusers_reference):
    ref = diffusers_reference
    return ref.base, ref.refiner, ref.ref_base, ref.ref_refiner, ref.ref_base_img2img


def common(recipe, steps=None):
    return dict(
        prompt=recipe.prompt,
        negative_prompt=recipe.negative_prompt,
        num_inference_steps=steps or recipe.steps,
        guidance_scale=recipe.guidance,
        output_type="latent",
        generator=torch.Generator("cpu").manual_seed(recipe.seed),
    )


def pixels(image):
    return np.asarray(image).copy()


def encoded(pipe, image):
    """The fitted source's latent, straight from the VAE (distribution mean, scaled)."""
    with torch.no_grad():
        return (
            pipe.vae.encode(pipe.image_processor.preprocess(image)).latent_dist.mode() * pipe.vae.config.scaling_factor
        )


def counting(count_calls, direct):
    base, refiner = direct[0], direct[1]
    return count_calls(base=base.pipe.unet, refiner=refiner.pipe.unet)


# -- 1. one step, and switch points that leave a stage no step ----------------------------------------------


def test_a_one_step_draft_at_the_default_switch_is_the_base_run_to_the_end(engine, tiny_recipe, direct, count_calls):
    """One step cannot be split at 0.8 (its only timestep is below the switch): the base runs it to the end."""
    recipe = tiny_recipe(steps=1, switch=0.8, watermark=False)
    with counting(count_calls, direct) as calls:
        draft = engine.draft(recipe, 1)[0]
    assert (calls["base"], calls["refiner"]) == (1, 0)
    reference = direct[2](width=64, height=64, **common(recipe)).images[0]  # 1 step, no denoising_end
    torch.testing.assert_close(draft.latent.tensor, reference, atol=1e-5, rtol=0)
    assert not draft.latent.noisy and draft.latent.denoising_end == 1.0
    assert draft.recipe.switch == 0.8 and draft.recipe.steps == 1  # the request as asked; a rerender keeps it
    assert any("1-step" in note for note in draft.notes)
    expected_preview = direct[2].image_processor.postprocess(
        direct[2].vae.decode(reference[None] / direct[2].vae.config.scaling_factor).sample.detach(), output_type="pil"
    )[0]
    assert np.abs(pixels(draft.preview).astype(int) - pixels(expected_preview).astype(int)).max() <= 1


def test_a_one_step_draft_is_refined_with_one_refiner_step(engine, tiny_recipe, direct, count_calls):
    recipe = tiny_recipe(
        steps=1, switch=0.8, refine=RefineSettings(model=ModelRef("tiny"), strength=0.3), watermark=False
    )
    draft = engine.draft(recipe, 1)[0]
    with counting(count_calls, direct) as calls:
        refined = engine.refine(draft)
    assert (calls["base"], calls["refiner"]) == (0, 1)
    # A clean latent at strength 0.3 needs a 4-step schedule for int(n × 0.3) = 1 refiner step.
    reference = direct[3](image=draft.latent.tensor[None], strength=0.3, **common(recipe, steps=4)).images[0]
    torch.testing.assert_close(refined.latent, reference, atol=1e-5, rtol=0)
    assert refined.recipe.steps == 1 and refined.recipe.stage == "final"
    again = engine.render(refined.recipe)  # the gallery's re-run: the same pixels
    assert np.array_equal(pixels(again.image), pixels(refined.image))


def test_one_step_at_switch_1_renders_and_refines(engine, tiny_recipe, direct, count_calls):
    recipe = tiny_recipe(
        steps=1, switch=1.0, refine=RefineSettings(model=ModelRef("tiny"), strength=0.3), watermark=False
    )
    with counting(count_calls, direct) as calls:
        finished = engine.render(recipe)
    assert (calls["base"], calls["refiner"]) == (1, 1)
    handoff = direct[2](width=64, height=64, **common(recipe)).images
    reference = direct[3](image=handoff, strength=0.3, **common(recipe, steps=4)).images[0]
    torch.testing.assert_close(finished.latent, reference, atol=1e-5, rtol=0)


def test_rerender_a_draft_at_one_step(engine, tiny_recipe, direct, count_calls):
    draft = engine.draft(tiny_recipe(steps=10, watermark=False), 2)[1]
    with counting(count_calls, direct) as calls:
        finished = engine.rerender(draft, 1)
    assert (calls["base"], calls["refiner"]) == (1, 1)
    assert finished.recipe.steps == 1 and finished.recipe.seed == draft.recipe.seed
    alone = engine.render(tiny_recipe(steps=1, seed=draft.recipe.seed, watermark=False))
    assert np.array_equal(pixels(finished.image), pixels(alone.image))


@pytest.mark.parametrize(
    "switch, effective, split",
    [
        (0.05, 0.099, (1, 9)),  # cutoff 950 is above the first timestep (901): the base runs that one
        (0.9999, 0.899, (9, 1)),  # cutoff 0 keeps every timestep for the base: the refiner gets the last (t=1)
    ],
)
def test_a_switch_that_leaves_a_stage_no_step_hands_over_at_the_nearest_step(
    engine, tiny_recipe, direct, count_calls, switch, effective, split
):
    """Euler, 10 leading steps: timesteps 901, 801, …, 1. diffusers called directly at `effective` is the reference."""
    recipe = tiny_recipe(steps=10, switch=switch, watermark=False)
    with counting(count_calls, direct) as calls:
        draft = engine.draft(recipe, 1)[0]
        finished = engine.refine(draft)
    assert (calls["base"], calls["refiner"]) == split
    assert draft.latent.noisy and draft.latent.denoising_end == pytest.approx(effective)
    assert draft.notes and finished.recipe.switch == switch
    handoff = direct[2](width=64, height=64, denoising_end=effective, **common(recipe)).images
    torch.testing.assert_close(draft.latent.tensor, handoff[0], atol=1e-5, rtol=0)
    reference = direct[3](image=handoff, denoising_start=effective, **common(recipe)).images[0]
    torch.testing.assert_close(finished.latent, reference, atol=1e-5, rtol=0)


def test_a_strength_too_small_for_one_refiner_step_is_refused_in_words(tiny_recipe):
    with pytest.raises(ValueError, match=r"refine.strength: must be at least 0.002"):
        RefineSettings(strength=0.001).schedule_steps(1)
    assert RefineSettings(strength=0.3).schedule_steps(10) == 10  # enough steps: unchanged
    assert RefineSettings(strength=0.3).schedule_steps(1) == 4


# -- 2. low-denoise img2img with the refiner; strength 0 ----------------------------------------------------


def edit(tiny_recipe, **changes):
    fields = dict(mode="img2img", steps=10, switch=0.8, refine=RefineSettings(model=ModelRef("tiny")), watermark=False)
    return tiny_recipe(**{**fields, **changes})


@pytest.mark.parametrize("strength, refiner_steps", [(0.2, 2), (0.1, 1)])
def test_low_strength_img2img_runs_the_refiner_alone(engine, tiny_recipe, direct, count_calls, strength, refiner_steps):
    """strength 0.2 of 10 steps = timesteps 101 and 1, both past the switch (cutoff 200): no base step."""
    base, _, _, ref_refiner, _ = direct
    recipe = edit(tiny_recipe, strength=strength)
    inputs = EditInputs(source=SOURCE)
    with counting(count_calls, direct) as calls:
        finished = engine.render(recipe, inputs=inputs)
    assert (calls["base"], calls["refiner"]) == (0, refiner_steps)
    reference = ref_refiner(image=encoded(base.pipe, FITTED), strength=strength, **common(recipe)).images[0]
    torch.testing.assert_close(finished.latent, reference, atol=1e-5, rtol=0)
    # Recorded in the refine-any form, so a re-run is the very same call.
    assert (finished.recipe.strength, finished.recipe.switch, finished.recipe.refine.strength) == (0.0, 1.0, strength)
    assert not finished.source_unchanged and any("refiner alone" in note for note in finished.notes)
    again = engine.render(finished.recipe, inputs=inputs)
    assert torch.equal(again.latent, finished.latent) and np.array_equal(pixels(again.image), pixels(finished.image))


def test_low_strength_img2img_drafts_then_refines_to_the_same_pixels(engine, tiny_recipe, direct, count_calls):
    recipe = edit(tiny_recipe, strength=0.2)
    inputs = EditInputs(source=SOURCE)
    with counting(count_calls, direct) as calls:
        draft = engine.draft(recipe, 1, inputs=inputs)[0]
    assert (calls["base"], calls["refiner"]) == (0, 0)
    assert draft.source_unchanged and np.array_equal(pixels(draft.preview), pixels(FITTED))
    refined = engine.refine(draft)
    rendered = engine.render(recipe, inputs=inputs)
    assert np.array_equal(pixels(refined.image), pixels(rendered.image))


def test_low_strength_without_a_refine_stage_runs_the_base(engine, tiny_recipe, direct, count_calls):
    base, _, _, _, ref_base_img2img = direct
    recipe = edit(tiny_recipe, strength=0.2, switch=1.0, refine=None)
    with counting(count_calls, direct) as calls:
        finished = engine.render(recipe, inputs=EditInputs(source=SOURCE))
    assert (calls["base"], calls["refiner"]) == (2, 0)
    reference = ref_base_img2img(image=FITTED, strength=0.2, **common(recipe)).images[0]
    torch.testing.assert_close(finished.latent, reference, atol=1e-5, rtol=0)
    assert finished.recipe.strength == 0.2


@pytest.mark.parametrize(
    "changes",
    [
        {"switch": 0.8},  # with a refine stage: nothing to denoise before or after the switch
        {"switch": 1.0, "refine": None},
    ],
)
def test_strength_zero_returns_the_fitted_source_unchanged(engine, tiny_recipe, direct, count_calls, changes):
    base = direct[0]
    recipe = edit(tiny_recipe, strength=0.0, **changes)
    inputs = EditInputs(source=SOURCE)
    with counting(count_calls, direct) as calls:
        finished = engine.render(recipe, inputs=inputs)
        draft = engine.draft(recipe, 1, inputs=inputs)[0]
        refined = engine.refine(draft) if recipe.refine else finished
    assert (calls["base"], calls["refiner"]) == (0, 0)
    for result in (finished, refined):
        assert result.source_unchanged and result.recipe.keeps_source
        assert np.array_equal(pixels(result.image), pixels(FITTED))  # the pixels themselves: no VAE round trip
        torch.testing.assert_close(result.latent, encoded(base.pipe, FITTED)[0], atol=1e-5, rtol=0)
    assert draft.source_unchanged and not draft.latent.noisy


def test_refine_any_image_still_runs_the_refiner_on_the_unchanged_source(engine, tiny_recipe, direct, count_calls):
    recipe = edit(tiny_recipe, strength=0.0, switch=1.0, refine=RefineSettings(model=ModelRef("tiny"), strength=0.5))
    assert not recipe.keeps_source
    with counting(count_calls, direct) as calls:
        finished = engine.render(recipe, inputs=EditInputs(source=SOURCE))
    assert (calls["base"], calls["refiner"]) == (0, 5) and not finished.source_unchanged


# -- 3. a negative crop on its own ---------------------------------------------------------------------------


def test_a_negative_crop_alone_is_passed_with_completed_negative_sizes():
    kwargs = MicroConditioning(negative_crops_coords_top_left=(32, 16)).resolved(1024, 832)
    assert kwargs["negative_original_size"] == (1024, 832) and kwargs["negative_target_size"] == (1024, 832)
    assert kwargs["negative_crops_coords_top_left"] == (32, 16)
    assert "negative_target_size" not in MicroConditioning().resolved(1024, 832)


def test_a_negative_crop_alone_changes_the_base_output(engine, tiny_recipe, direct):
    """The base's draft only (the refiner always used the negative crop): diffusers needs both sizes."""
    crop = (32, 32)
    plain = engine.draft(tiny_recipe(watermark=False), 1)[0]
    cropped_recipe = tiny_recipe(watermark=False, micro=MicroConditioning(negative_crops_coords_top_left=crop))
    cropped = engine.draft(cropped_recipe, 1)[0]
    assert (cropped.latent.tensor - plain.latent.tensor).abs().max() > 1e-4
    reference = direct[2](
        width=64,
        height=64,
        denoising_end=0.8,
        negative_original_size=(64, 64),
        negative_target_size=(64, 64),
        negative_crops_coords_top_left=crop,
        **common(cropped_recipe),
    ).images[0]
    torch.testing.assert_close(cropped.latent.tensor, reference, atol=1e-5, rtol=0)
    ignored = direct[2](
        width=64, height=64, denoising_end=0.8, negative_crops_coords_top_left=crop, **common(cropped_recipe)
    ).images[0]
    torch.testing.assert_close(plain.latent.tensor, ignored, atol=1e-5, rtol=0)  # what diffusers did with it alone
