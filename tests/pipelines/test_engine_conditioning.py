"""Micro-conditioning, samplers, cancellation, out-of-memory and bad input."""

from __future__ import annotations

import pytest
import torch

from pipelines.engine.engine import GenerationCancelled, OutOfMemory
from pipelines.recipe import SCHEDULERS, MicroConditioning, ModelRef, Recipe, RefineSettings


def refined_latent(engine, recipe):
    return engine.render(recipe).latent


@pytest.mark.parametrize(
    "field, value",
    [
        ("original_size", (512, 768)),
        ("crops_coords_top_left", (128, 64)),
        ("target_size", (768, 512)),
        ("negative_original_size", (256, 256)),  # alone: diffusers would ignore it without the engine's fill-in
        ("negative_crops_coords_top_left", (32, 32)),
        ("negative_target_size", (256, 256)),
        ("aesthetic_score", 9.0),  # refiner only
        ("negative_aesthetic_score", 0.5),
    ],
)
def test_each_micro_conditioning_input_changes_the_output(engine, tiny_recipe, field, value):
    baseline = refined_latent(engine, tiny_recipe())
    changed = refined_latent(engine, tiny_recipe(micro=MicroConditioning(**{field: value})))
    assert (changed - baseline).abs().max() > 1e-4, f"{field} had no effect"


def test_negative_sizes_are_completed_so_diffusers_uses_them():
    micro = MicroConditioning(negative_original_size=(256, 256))
    kwargs = micro.resolved(1024, 832)
    assert kwargs["negative_original_size"] == (256, 256)
    assert kwargs["negative_target_size"] == (1024, 832)  # filled with the positive target
    assert "negative_original_size" not in MicroConditioning().resolved(1024, 1024)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_sampler_drafts_refines_and_reruns_exactly(engine, tiny_recipe, name):
    recipe = tiny_recipe(scheduler=name, steps=8)
    drafts = engine.draft(recipe, 2)
    finished = engine.refine(drafts[1])
    assert finished.recipe.scheduler == name
    again = engine.render(finished.recipe)
    assert torch.equal(again.latent, finished.latent)
    assert torch.isfinite(finished.latent).all()


def test_samplers_differ(engine, tiny_recipe):
    outputs = {
        name: engine.draft(tiny_recipe(scheduler=name, steps=8), 1)[0].latent.tensor
        for name in ("Euler", "Euler a", "DPM++ 2M", "DDIM")
    }
    names = list(outputs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.allclose(outputs[a], outputs[b]), f"{a} and {b} gave the same draft"


def test_interrupt_stops_at_the_next_step(engine, tiny_recipe, model_cache, count_calls):
    unet = model_cache.load_base("tiny").pipe.unet
    steps_seen = []
    with count_calls(unet=unet) as calls:
        with pytest.raises(GenerationCancelled):
            engine.draft(
                tiny_recipe(),
                2,
                on_step=lambda info: steps_seen.append(info.step),
                should_cancel=lambda: len(steps_seen) >= 3,
            )
    assert calls["unet"] == 3 and steps_seen == [1, 2, 3]


def test_step_callback_reports_progress_with_a_clean_estimate(engine, tiny_recipe):
    infos = []
    engine.render(tiny_recipe(steps=10), on_step=infos.append)
    assert [(i.stage, i.step, i.total) for i in infos] == [("base", s, 8) for s in range(1, 9)] + [
        ("refiner", s, 2) for s in (1, 2)
    ]
    assert infos[0].clean_estimate.shape == (1, 4, 8, 8)


def test_out_of_memory_is_reported_in_words_and_the_next_job_runs(engine, tiny_recipe, model_cache, monkeypatch):
    unet = model_cache.load_base("tiny").pipe.unet
    real_forward = unet.forward
    failures = {"left": 1}

    def flaky_forward(*args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", flaky_forward)
    with pytest.raises(OutOfMemory, match="Out of memory on cpu while making 1 draft"):
        engine.draft(tiny_recipe(), 1)
    expected = engine.draft(tiny_recipe(), 1)[0]  # the next job runs normally
    assert torch.isfinite(expected.latent.tensor).all()


def test_a_batch_that_does_not_fit_falls_back_to_one_at_a_time(engine, tiny_recipe, model_cache, monkeypatch):
    unet = model_cache.load_base("tiny").pipe.unet
    real_forward = unet.forward

    def forward_small_batches_only(sample, *args, **kwargs):
        if sample.shape[0] > 2:  # CFG doubles the batch: more than one image does not "fit"
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real_forward(sample, *args, **kwargs)

    monkeypatch.setattr(unet, "forward", forward_small_batches_only)
    drafts = engine.draft(tiny_recipe(), 3)
    assert [d.recipe.seed for d in drafts] == [1234, 1235, 1236]
    assert all(d.recipe.batch_seeds == () for d in drafts)  # recorded as made alone: re-runs stay exact
    monkeypatch.undo()
    assert torch.equal(engine.render(drafts[2].recipe).latent.tensor, drafts[2].latent.tensor)


BAD_RECIPES = [
    ({"width": 1001}, "width: must be a multiple of 8"),
    ({"height": 32}, "height: must be an integer from 64 to 4096"),
    ({"steps": 0}, "steps: must be an integer from 1 to 500"),
    ({"switch": 0.0}, r"switch: must be a number in \(0.0, 1.0\]"),
    ({"switch": 1.5}, r"switch: must be a number in \(0.0, 1.0\]"),
    ({"guidance": -1.0}, r"guidance: must be a number in \[0.0, 50.0\]"),
    ({"guidance": float("nan")}, "guidance"),
    ({"scheduler": "Heun++"}, "scheduler: must be one of Euler, Euler a"),
    ({"mode": "img2img", "strength": 1.5}, r"strength: must be a number in \[0.0, 1.0\]"),
    ({"refine": lambda: RefineSettings(strength=0.0)}, r"refine.strength: must be a number in \(0.0, 1.0\]"),
    ({"seed": -1}, "seed: must be an integer from 0"),
    ({"refine": None, "switch": 0.8}, "switch: must be 1.0 when there is no refine stage"),
]


@pytest.mark.parametrize("changes, message", BAD_RECIPES)
def test_bad_recipe_values_name_the_field_and_the_allowed_range(tiny_recipe, changes, message):
    with pytest.raises(ValueError, match=message):
        tiny_recipe(**{k: v() if callable(v) else v for k, v in changes.items()})


@pytest.mark.parametrize("count", [0, 17, -1, True])
def test_draft_count_is_checked_before_any_model_work(engine, tiny_recipe, model_cache, count_calls, count):
    with count_calls(unet=model_cache.load_base("tiny").pipe.unet) as calls:
        with pytest.raises(ValueError, match="count: must be an integer from 1 to 16"):
            engine.draft(tiny_recipe(), count)
    assert calls["unet"] == 0


def test_recipe_json_round_trip_is_exact(tiny_recipe):
    recipe = tiny_recipe(
        micro=MicroConditioning(original_size=(512, 512), negative_target_size=(64, 64)), batch_seeds=(1234, 1235)
    )
    assert Recipe.from_json(recipe.to_json()) == recipe
    assert Recipe.from_json(recipe.to_json()).to_json() == recipe.to_json()
    with pytest.raises(ValueError, match="unknown field"):
        Recipe.from_dict({**recipe.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="schema_version"):
        Recipe.from_dict({**recipe.to_dict(), "schema_version": 99})
    with pytest.raises(ValueError, match="not valid JSON"):
        Recipe.from_json("{nope")


def test_a_changed_model_is_named_never_substituted(engine, tiny_recipe):
    wrong = ModelRef("tiny", sha256="0" * 64)
    loaded = engine.models.load_base("tiny").ref
    assert loaded.sha256, "the loader must record the weights' sha256"
    with pytest.raises(ValueError, match="model: 'tiny' now has sha256"):
        engine.render(tiny_recipe(model=wrong))


def test_a_swapped_vae_is_recorded_and_required_on_rerun(engine, tiny_recipe, model_cache, monkeypatch):
    import dataclasses

    first = engine.draft(tiny_recipe(), 1)[0]
    assert first.recipe.vae is None  # the model's own VAE
    base = model_cache.load_base("tiny")
    swapped = dataclasses.replace(base, vae_override="madebyollin/sdxl-vae-fp16-fix")
    monkeypatch.setattr(model_cache, "load_base", lambda spec: swapped)
    with pytest.raises(ValueError, match="vae: the recipe was decoded with the model's own VAE, but here madebyollin"):
        engine.render(first.recipe)
    fresh = engine.draft(tiny_recipe(), 1)[0]  # a new request records the VAE it was decoded with
    assert fresh.recipe.vae == ModelRef("madebyollin/sdxl-vae-fp16-fix")


def test_controlnets_built_for_one_base_are_dropped_when_the_base_changes(
    engine, model_cache, tiny_recipe, monkeypatch
):
    import dataclasses

    engine.draft(tiny_recipe(), 1)
    engine.controlnets._loaded[("marker", 0)] = (object(), ModelRef("marker"))
    engine.draft(tiny_recipe(), 1)  # same base: kept
    assert ("marker", 0) in engine.controlnets._loaded
    base = model_cache.load_base("tiny")
    other = dataclasses.replace(
        base, pipe=base.pipe.__class__.from_pipe(base.pipe, dtype=base.pipe.dtype, add_watermarker=False)
    )
    monkeypatch.setattr(model_cache, "load_base", lambda spec: other)
    engine.draft(tiny_recipe(), 1)
    assert ("marker", 0) not in engine.controlnets._loaded
