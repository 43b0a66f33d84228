"""Vary: a draft's starting noise slerped towards a variation seed's noise (A1111's variation seed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipelines.engine import variation
from pipelines.recipe import Recipe


def pixels(image):
    return np.asarray(image).astype(np.int16)


def reference_slerp(t, low, high):
    """Slerp written out independently (float64, over the whole tensor): the test's own reference."""
    a, b = low.double().flatten(), high.double().flatten()
    cos = float(torch.dot(a, b) / (a.norm() * b.norm()))
    if cos > 0.9995:
        return (low.double() * (1 - t) + high.double() * t).to(low.dtype)
    omega = math.acos(cos)
    mixed = (math.sin((1 - t) * omega) * low.double() + math.sin(t * omega) * high.double()) / math.sin(omega)
    return mixed.to(low.dtype)


def captured_latents(pipe_class, monkeypatch):
    """Record the `latents=` each call of `pipe_class` receives (None when the pipeline draws its own)."""
    seen = []
    original = pipe_class.__call__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("latents"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pipe_class, "__call__", spy)
    return seen


def test_slerp_ends_and_midpoint():
    low, high = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    assert torch.equal(variation.slerp(0.0, low, high), low)  # strength 0: the seed's own noise, bit-exact
    torch.testing.assert_close(variation.slerp(1.0, low, high), high)
    torch.testing.assert_close(variation.slerp(0.3, low, high), reference_slerp(0.3, low, high))
    # Nearly parallel: the lerp (A1111's branch, with its weights the right way round)
    near = low + 1e-4 * high
    torch.testing.assert_close(variation.slerp(0.25, low, near), 0.75 * low + 0.25 * near)


def test_noise_is_what_diffusers_draws(diffusers_reference):
    from diffusers.utils.torch_utils import randn_tensor

    pipe = diffusers_reference.ref_base
    made = variation.noise(pipe, 64, 48, torch.Generator("cpu").manual_seed(5))
    # What the SDXL pipeline's prepare_latents draws for one 64×48 image with seed 5, before init_noise_sigma.
    expected = randn_tensor((1, 4, 8, 6), generator=torch.Generator("cpu").manual_seed(5), dtype=pipe.unet.dtype)
    assert made.shape == (1, 4, 8, 6) and torch.equal(made, expected)


def test_the_pipeline_gets_the_reference_slerp(engine, tiny_recipe, monkeypatch):
    from diffusers import StableDiffusionXLPipeline

    seen = captured_latents(StableDiffusionXLPipeline, monkeypatch)
    recipe = tiny_recipe(seed=21, variation_seed=99, variation_strength=0.3)
    drafts = engine.draft(recipe, 2)
    own = [torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(s)) for s in (21, 22)]
    target = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(99))
    expected = torch.cat([reference_slerp(0.3, n, target) for n in own])
    assert len(seen) == 1 and seen[0] is not None
    torch.testing.assert_close(seen[0], expected, atol=1e-5, rtol=0)
    assert [(d.recipe.seed, d.recipe.variation_seed, d.recipe.variation_strength) for d in drafts] == [
        (21, 99, 0.3),
        (22, 99, 0.3),
    ]
    assert drafts[0].recipe.batch_seeds == (21, 22)
    # Without a variation seed the pipeline draws its own noise, as before.
    engine.draft(tiny_recipe(seed=21), 1)
    assert seen[1] is None


def test_strength_zero_is_the_draft_itself(engine, tiny_recipe):
    plain = engine.draft(tiny_recipe(seed=31), 1)[0]
    varied = engine.draft(tiny_recipe(seed=31, variation_seed=5, variation_strength=0.0), 1)[0]
    assert torch.equal(varied.latent.tensor, plain.latent.tensor)
    assert np.array_equal(pixels(varied.preview), pixels(plain.preview))


def test_strength_zero_matches_a_batch_parent_within_rounding(engine, tiny_recipe):
    batch = engine.draft(tiny_recipe(seed=40), 3)
    parent = batch[1]
    child = engine.draft(parent.recipe.replace(variation_seed=7, variation_strength=0.0), 1)[0]
    torch.testing.assert_close(child.latent.tensor, parent.latent.tensor, atol=1e-4, rtol=0)
    assert np.abs(pixels(child.preview) - pixels(parent.preview)).max() <= 1


def test_an_ancestral_sampler_continues_from_the_same_generator_state(engine, tiny_recipe):
    plain = engine.draft(tiny_recipe(seed=8, scheduler="Euler a"), 1)[0]
    varied = engine.draft(tiny_recipe(seed=8, scheduler="Euler a", variation_seed=3, variation_strength=0.0), 1)[0]
    assert torch.equal(varied.latent.tensor, plain.latent.tensor)


def test_a_small_strength_stays_close_to_the_parent(engine, tiny_recipe):
    parent = engine.draft(tiny_recipe(seed=50), 1)[0].latent.tensor
    children = [
        engine.draft(tiny_recipe(seed=50, variation_seed=v, variation_strength=0.05), 1)[0].latent.tensor
        for v in (1, 2)
    ]
    unrelated = engine.draft(tiny_recipe(seed=9050), 1)[0].latent.tensor
    far = (unrelated - parent).norm()
    for child in children:
        assert not torch.equal(child, parent)
        assert (child - parent).norm() < 0.5 * far
    assert not torch.equal(children[0], children[1])  # each variation seed its own image


def test_a_varied_draft_re_runs_bit_exactly(engine, tiny_recipe):
    draft = engine.draft(tiny_recipe(seed=60, variation_seed=123, variation_strength=0.4), 1)[0]
    again = engine.render(draft.recipe)
    assert torch.equal(again.latent.tensor, draft.latent.tensor)
    assert np.array_equal(pixels(again.preview), pixels(draft.preview))
    loaded = Recipe.from_json(draft.recipe.to_json())
    assert loaded == draft.recipe and loaded.variation_seed == 123


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(variation_seed=1, variation_strength=1.5), "variation_strength"),
        (dict(variation_seed=1, variation_strength=-0.1), "variation_strength"),
        (dict(variation_strength=0.2), "variation_seed"),
        (dict(variation_seed=-1, variation_strength=0.2), "variation_seed"),
        (dict(variation_seed=1, variation_strength=0.2, mode="img2img", strength=0.5), "variation_seed"),
    ],
)
def test_bad_variation_values_name_the_field(tiny_recipe, changes, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        tiny_recipe(**changes)


def test_old_recipes_load_without_variation(tiny_recipe):
    data = tiny_recipe().to_dict()
    del data["variation_seed"], data["variation_strength"]
    recipe = Recipe.from_dict(data)
    assert recipe.variation_seed is None and recipe.variation_strength == 0.0
    assert recipe == tiny_recipe()


def test_a1111_parameters_carry_the_variation(tiny_recipe):
    from pipelines.provenance.png_metadata import a1111_parameters, recipe_from_a1111

    text = a1111_parameters(tiny_recipe(variation_seed=777, variation_strength=0.25))
    assert "Variation seed: 777, Variation seed strength: 0.25" in text
    read = recipe_from_a1111(text)
    assert (read.recipe.variation_seed, read.recipe.variation_strength) == (777, 0.25)
    assert not any(item.startswith("Variation") for item in read.unmapped)
    assert "Variation" not in a1111_parameters(tiny_recipe())
