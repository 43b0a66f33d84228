"""Draft → pick → refine against diffusers called directly, with exact call counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from PIL import Image

from pipelines.engine.engine import Draft
from pipelines.engine.kept_latent import KeptLatent
from pipelines.engine.previews import decode_latents
from pipelines.recipe import ModelRef, RefineSettings


def pixels(image):
    return np.asarray(image).copy()


@pytest.fixture(scope="module")
def direct(diffusers_reference):
    ref = diffusers_reference
    return ref.base, ref.refiner, ref.ref_base, ref.ref_refiner


def one_shot_reference(direct, recipe):
    """diffusers' documented ensemble-of-experts handoff, in one go."""
    _, _, ref_base, ref_refiner = direct
    common = dict(
        prompt=recipe.prompt,
        negative_prompt=recipe.negative_prompt,
        num_inference_steps=recipe.steps,
        guidance_scale=recipe.guidance,
        output_type="latent",
    )
    latents = ref_base(
        **common,
        width=recipe.width,
        height=recipe.height,
        denoising_end=recipe.switch,
        generator=torch.Generator("cpu").manual_seed(recipe.seed),
    ).images
    final = ref_refiner(
        **common,
        image=latents,
        denoising_start=recipe.switch,
        generator=torch.Generator("cpu").manual_seed(recipe.seed),
    ).images
    return latents[0], final[0]


def test_drafts_are_deterministic_and_seeded_per_image(engine, tiny_recipe):
    recipe = tiny_recipe()
    first = engine.draft(recipe, 3)
    second = engine.draft(recipe, 3)
    assert [d.recipe.seed for d in first] == [1234, 1235, 1236]
    assert all(d.recipe.batch_seeds == (1234, 1235, 1236) and d.recipe.stage == "draft" for d in first)
    for a, b in zip(first, second):
        assert torch.equal(a.latent.tensor, b.latent.tensor)
        assert np.array_equal(pixels(a.preview), pixels(b.preview))
    assert not torch.allclose(first[0].latent.tensor, first[1].latent.tensor)  # seeds differ → drafts differ


def test_a_draft_re_runs_alone_and_in_its_batch(engine, tiny_recipe):
    drafts = engine.draft(tiny_recipe(), 3)
    middle = drafts[1]
    replayed = engine.render(middle.recipe)  # the recorded batch layout: bit-exact
    assert torch.equal(replayed.latent.tensor, middle.latent.tensor)
    assert np.array_equal(pixels(replayed.preview), pixels(middle.preview))
    alone = engine.draft(middle.recipe.replace(batch_seeds=()), 1)[0]  # alone: the same image, up to float rounding
    assert alone.recipe.seed == 1235
    torch.testing.assert_close(alone.latent.tensor, middle.latent.tensor, atol=1e-4, rtol=0)
    assert not torch.allclose(alone.latent.tensor, drafts[0].latent.tensor, atol=1e-2)


def test_refine_equals_one_shot_diffusers_reference_across_disk(engine, tiny_recipe, direct, tmp_path):
    recipe = tiny_recipe(seed=77)
    draft = engine.draft(recipe, 1)[0]
    ref_handoff, ref_final = one_shot_reference(direct, recipe)
    torch.testing.assert_close(draft.latent.tensor, ref_handoff, atol=1e-5, rtol=0)
    refined = engine.refine(draft)
    torch.testing.assert_close(refined.latent, ref_final, atol=1e-5, rtol=0)
    # The kept latent goes to disk and comes back (as after a restart): same result.
    path = tmp_path / "draft.safetensors"
    path.write_bytes(draft.latent.to_bytes(draft.recipe.to_json()))
    restored = Draft(draft.recipe, KeptLatent.from_bytes(path.read_bytes()), draft.preview)
    assert restored.latent.noisy and restored.latent.denoising_end == 0.8
    again = engine.refine(restored)
    torch.testing.assert_close(again.latent, ref_final, atol=1e-5, rtol=0)
    assert np.array_equal(pixels(again.image), pixels(refined.image))


def test_refine_makes_no_base_unet_call_and_no_vae_encode(engine, tiny_recipe, direct, count_calls):
    base, refiner, _, _ = direct
    recipe = tiny_recipe(steps=10, switch=0.8)
    schedule = EulerDiscreteScheduler.from_config(base.pipe.scheduler.config)
    schedule.set_timesteps(recipe.steps)
    cutoff = round(1000 - recipe.switch * 1000)
    base_steps = int((schedule.timesteps >= cutoff).sum())
    with count_calls(
        base=base.pipe.unet, refiner=refiner.pipe.unet, encode=base.pipe.vae.encoder, decode=base.pipe.vae.decoder
    ) as calls:
        draft = engine.draft(recipe, 1)[0]
        assert (calls["base"], calls["refiner"], calls["decode"]) == (base_steps, 0, 1)  # preview: one decode
        engine.refine(draft)
    assert calls["base"] == base_steps  # nothing more from the base during refine
    assert calls["refiner"] == recipe.steps - base_steps
    assert calls["encode"] == 0
    assert calls["decode"] == 2


def test_preview_is_the_models_clean_estimate_at_its_last_step(engine, tiny_recipe, direct, count_calls):
    """Reference: Euler's own pred_original_sample at the base's last step, decoded cheaply (half size) for the
    preview and fully on demand."""
    _, _, ref_base, _ = direct
    recipe = tiny_recipe(seed=9)
    seen = {}

    class Recording(EulerDiscreteScheduler):
        def step(self, *args, **kwargs):
            out = super().step(*args, **kwargs)
            seen["x0"] = out.pred_original_sample if not isinstance(out, tuple) else out[1]
            return out

    reference = StableDiffusionXLPipeline(
        **{**ref_base.components, "scheduler": Recording.from_config(ref_base.scheduler.config)}, add_watermarker=False
    )
    reference(
        prompt=recipe.prompt,
        negative_prompt=recipe.negative_prompt,
        num_inference_steps=recipe.steps,
        guidance_scale=recipe.guidance,
        width=64,
        height=64,
        denoising_end=recipe.switch,
        output_type="latent",
        return_dict=True,
        generator=torch.Generator("cpu").manual_seed(recipe.seed),
    )
    with count_calls(unet=ref_base.unet, decode=ref_base.vae.decoder) as calls:
        draft = engine.draft(recipe.replace(watermark=False), 1)[0]
    assert calls["unet"] == 8  # the base's own steps: the preview costs no UNet call
    assert calls["decode"] == 1  # the cheap preview: one decode at half the size
    kept = draft.latent.clean_estimate
    torch.testing.assert_close(kept[None], seen["x0"], atol=1e-5, rtol=0)
    assert (kept - draft.latent.tensor).abs().mean() > 1e-2  # not the noisy latent itself
    assert draft.latent.preview == "vae-half-size"
    small = torch.nn.functional.interpolate(seen["x0"], size=(4, 4), mode="area")
    cheap = decode_latents(reference, small)[0].resize((64, 64), Image.Resampling.BICUBIC)
    assert np.abs(pixels(draft.preview).astype(int) - pixels(cheap).astype(int)).max() <= 1
    # On demand (open, download, img2img): the full decode of the same estimate.
    with count_calls(unet=ref_base.unet, decode=ref_base.vae.decoder) as calls:
        full = engine.full_draft_image(draft)
    assert (calls["unet"], calls["decode"]) == (0, 1)
    expected = decode_latents(reference, seen["x0"])[0]
    assert np.abs(pixels(full).astype(int) - pixels(expected).astype(int)).max() <= 1
    assert np.abs(pixels(full).astype(int) - pixels(draft.preview).astype(int)).max() > 1  # the cheap one differs


def test_refine_with_the_base_model_itself(engine, tiny_recipe, direct, count_calls):
    base, refiner, _, _ = direct
    recipe = tiny_recipe(refine=RefineSettings(model=None))
    draft = engine.draft(recipe, 1)[0]
    with count_calls(base=base.pipe.unet, refiner=refiner.pipe.unet) as calls:
        finished = engine.refine(draft)
    assert calls["refiner"] == 0 and calls["base"] == 2  # 10 steps, switch 0.8: two steps left
    with_refiner = engine.refine(
        Draft(draft.recipe.replace(refine=RefineSettings(model=ModelRef("tiny"))), draft.latent, draft.preview)
    )
    assert not torch.allclose(finished.latent, with_refiner.latent)


def test_clean_latent_is_refined_with_strength_never_denoising_start(
    engine, tiny_recipe, direct, count_calls, monkeypatch
):
    base, refiner, _, _ = direct
    recipe = tiny_recipe(switch=1.0, refine=RefineSettings(model=ModelRef("tiny"), strength=0.3))
    draft = engine.draft(recipe, 1)[0]
    assert not draft.latent.noisy
    assert draft.latent.refine_kwargs(0.3) == {"strength": 0.3}
    seen = {}
    original = StableDiffusionXLImg2ImgPipeline.__call__

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionXLImg2ImgPipeline, "__call__", spy)
    with count_calls(refiner=refiner.pipe.unet) as calls:
        engine.refine(draft)
    assert "denoising_start" not in seen and seen["strength"] == 0.3
    assert calls["refiner"] == 3  # int(10 * 0.3) steps of re-noised refinement


def test_rerender_at_more_steps_then_hands_off(engine, tiny_recipe, direct, count_calls):
    base, refiner, _, _ = direct
    draft = engine.draft(tiny_recipe(steps=5), 2)[1]
    with count_calls(base=base.pipe.unet, refiner=refiner.pipe.unet) as calls:
        finished = engine.rerender(draft, steps=20)
    assert (
        finished.recipe.steps == 20 and finished.recipe.seed == draft.recipe.seed and finished.recipe.batch_seeds == ()
    )
    assert (calls["base"], calls["refiner"]) == (16, 4)
    again = engine.render(finished.recipe)
    assert np.array_equal(pixels(again.image), pixels(finished.image))


def test_final_without_refine_stage_runs_the_base_to_the_end(engine, tiny_recipe, direct, count_calls):
    base, _, ref_base, _ = direct
    recipe = tiny_recipe(switch=1.0, refine=None)
    with count_calls(decode=base.pipe.vae.decoder) as calls:
        finished = engine.render(recipe)
    assert calls["decode"] == 1
    expected = ref_base(
        prompt=recipe.prompt,
        negative_prompt=recipe.negative_prompt,
        num_inference_steps=recipe.steps,
        guidance_scale=recipe.guidance,
        width=64,
        height=64,
        output_type="latent",
        generator=torch.Generator("cpu").manual_seed(recipe.seed),
    ).images[0]
    torch.testing.assert_close(finished.latent, expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="no refine stage"):
        engine.refine(engine.draft(recipe, 1)[0])
