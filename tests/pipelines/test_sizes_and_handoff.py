"""Size rules on both sides of their bounds; the base→refiner cutoff at its exact boundary, where the base hands
over (handoff.plan_handoff and the switch it moves to) and how many steps img2img leaves the base
(img2img.base_step_count, check_base_steps, stop_at_switch). No model: real diffusers schedulers from config,
every result an exact value."""

from __future__ import annotations

import math

import pytest
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from PIL import Image

from pipelines.engine.handoff import _switch_after, base_steps, cutoff, plan_handoff, schedule
from pipelines.engine.img2img import base_step_count, check_base_steps, stop_at_switch
from pipelines.recipe import MAX_SIDE, MAX_STEPS, MIN_SIDE, ModelRef, Recipe, RefineSettings
from pipelines.sizes import SDXL_BUCKETS, fit_to_bucket, nearest_bucket, own_size


@pytest.mark.parametrize(("width", "height"), [(0, 10), (10, 0), (-5, 5), (0, 0)])
def test_sizes_must_be_positive(width, height):
    for rule in (nearest_bucket, own_size):
        with pytest.raises(ValueError, match=rf"image size must be positive \(got {width}×{height}\)"):
            rule(width, height)


@pytest.mark.parametrize(
    ("size", "bucket"),
    [((1, 1), (1024, 1024)), ((1000, 1000), (1024, 1024)), ((10_000, 1), (1536, 640)), ((1, 10_000), (640, 1536))],
)
def test_nearest_bucket_at_the_extremes(size, bucket):
    assert nearest_bucket(*size) == bucket


def test_nearest_bucket_picks_the_closest_aspect_and_breaks_ties_by_order():
    for width, height in SDXL_BUCKETS:
        assert nearest_bucket(width * 3, height * 3) == (width, height)
    assert nearest_bucket(10, 10, buckets=((8, 8), (16, 16))) == (8, 8)  # equal aspect: the first listed


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1, 1), (MIN_SIDE, MIN_SIDE)),  # tiny: scaled up to the minimum
        ((64, 64), (64, 64)),
        ((1024, 1024), (1024, 1024)),  # the limit itself is kept
        ((1032, 1032), (1024, 1024)),  # the next multiple of 8 is scaled down
        ((3000, 2000), (1024, 680)),
        ((10, 5000), (MIN_SIDE, MAX_SIDE)),  # extreme aspect: clamped to the Recipe's sides
        ((5000, 10), (MAX_SIDE, MIN_SIDE)),
        ((1001, 333), (1000, 336)),
        ((1025, 92), (1024, 88)),  # scaled by 1024/1025 (the default max_side), not 1025/1025
    ],
)
def test_own_size_stays_within_the_recipes_sides(size, expected):
    width, height = own_size(*size)
    assert (width, height) == expected
    Recipe(model=ModelRef(name="m"), prompt="", seed=0, width=width, height=height)  # a valid recipe size


def test_fit_to_bucket_is_deterministic_and_refuses_non_images():
    image = Image.effect_noise((300, 200), 40).convert("RGB")
    a, b = fit_to_bucket(image, 128, 128), fit_to_bucket(image, 128, 128)
    assert a.size == (128, 128) and a.tobytes() == b.tobytes()
    assert fit_to_bucket(image, 300, 200).tobytes() == image.tobytes()  # already that size: unchanged
    with pytest.raises(ValueError, match=r"^image: must be a PIL image \(got bytes\)$"):
        fit_to_bucket(b"png bytes", 64, 64)


@pytest.mark.parametrize(
    ("size", "box"),
    [((300, 200), (50, 0, 250, 200)), ((200, 300), (0, 50, 200, 250))],  # the centre square of each
)
def test_fit_to_bucket_crops_the_centre_and_scales_with_lanczos(size, box):
    image = Image.effect_noise(size, 40).convert("L")  # grey: converted to RGB
    fitted = fit_to_bucket(image, 128, 128)
    reference = image.convert("RGB").resize((128, 128), Image.Resampling.LANCZOS, box=box)
    assert fitted.mode == "RGB" and fitted.tobytes() == reference.tobytes()
    assert fit_to_bucket(image, *size).mode == "RGB"  # already the size: still converted


def test_the_cutoff_timestep_itself_belongs_to_the_base():
    scheduler = DDIMScheduler(steps_offset=1, timestep_spacing="leading")
    timesteps = schedule(scheduler, 10)
    assert timesteps[:3] == [901.0, 801.0, 701.0]
    assert cutoff(scheduler, 0.199) == 801  # round(1000 − 199)
    assert base_steps(timesteps, scheduler, 0.199) == 2  # 901 and 801 (t ≥ cutoff)
    assert base_steps(timesteps, scheduler, 0.198) == 1  # cutoff 802: 801 goes to the refiner
    assert base_steps(timesteps, scheduler, 1.0) == 10
    assert schedule(scheduler, 10) == timesteps  # computing a schedule leaves the scheduler's state alone


# SDXL's scheduler config: 10 steps visit 901, 801, …, 101, 1.
EULER = EulerDiscreteScheduler(steps_offset=1, timestep_spacing="leading")
TEN = [901.0, 801.0, 701.0, 601.0, 501.0, 401.0, 301.0, 201.0, 101.0, 1.0]
REFINE = RefineSettings(model=ModelRef("refiner"), strength=0.3)


def recipe(**fields) -> Recipe:
    return Recipe(model=ModelRef(name="m"), prompt="", seed=0, **fields)


def edit(strength: float, steps: int = 10, **fields) -> Recipe:
    return recipe(mode="img2img", strength=strength, steps=steps, **fields)


# -- the switch that gives the base exactly `count` steps ----------------------------------------------------


def test_switch_after_keeps_exactly_count_steps_for_the_base():
    assert schedule(EULER, 10) == TEN
    switches = [_switch_after(TEN, EULER, k) for k in range(1, 10)]
    assert switches == [0.099, 0.199, 0.299, 0.399, 0.499, 0.599, 0.699, 0.799, 0.899]
    assert [base_steps(TEN, EULER, s) for s in switches] == list(range(1, 10))


@pytest.mark.parametrize(
    ("timesteps", "switch"),
    [
        ([1.0, 0.0], 0.999),  # cutoff 1, the lowest a switch below 1.0 can give
        ([0.9, 0.0], None),  # cutoff 0: only switch 1.0 keeps every step
        ([999.0, 0.0], 0.001),  # cutoff 999, the highest
        ([1000.0, 0.0], None),  # cutoff 1000 would need switch 0
        ([500.7, 499.9], 0.5),  # the base's last timestep is cut to 500, still above the next one
        ([500.7, 500.0], None),  # cutoff 500 would keep the next timestep (500) as well
        ([500.7, 500.2], None),
        ([501.0, 500.0], 0.499),
    ],
)
def test_switch_after_at_the_ends_of_the_timestep_range(timesteps, switch):
    assert _switch_after(timesteps, EULER, 1) == switch


# -- plan_handoff ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "asked",
    [
        recipe(steps=10, switch=1.0, refine=None),  # no refine stage
        recipe(steps=1, switch=1.0, refine=None),
        recipe(steps=10, switch=1.0, refine=REFINE),  # refined from a clean latent
        recipe(steps=1, switch=1.0, refine=REFINE),
        edit(0.0, switch=0.8, refine=REFINE),  # the source as it is
        recipe(steps=10, switch=0.8, refine=REFINE),  # an ordinary split: nothing to adjust
    ],
)
def test_handoffs_that_need_no_adjustment(asked):
    handoff = plan_handoff(asked, EULER)
    assert handoff.recipe is asked and handoff.notes == ()
    assert handoff.denoising_end == (0.8 if asked.switch == 0.8 and asked.strength is None else 1.0)


def test_a_one_step_schedule_is_not_split():
    handoff = plan_handoff(recipe(steps=1, switch=0.8, refine=REFINE), EULER)
    assert handoff.denoising_end == 1.0 and handoff.recipe.switch == 0.8
    assert handoff.notes == (
        "switch 0.8: a 1-step schedule cannot be split between base and refiner, so the base ran the step to the "
        "end; refining re-noises its image at the refine strength",
    )


def test_two_steps_are_split_one_each():
    assert schedule(EULER, 2) == [501.0, 1.0]
    assert plan_handoff(recipe(steps=2, switch=0.8, refine=REFINE), EULER).denoising_end == 0.8
    handoff = plan_handoff(recipe(steps=2, switch=0.3, refine=REFINE), EULER)  # cutoff 700: no base step
    assert handoff.denoising_end == 0.499 and base_steps([501.0, 1.0], EULER, 0.499) == 1


@pytest.mark.parametrize(
    ("switch", "end", "note"),
    [
        (0.05, 0.099, "leaves the base no step, so the base ran 1 step(s) and the refiner the rest"),
        (0.9999, 0.899, "leaves the refiner no step, so the base ran 9 step(s) and the refiner the rest"),
        (0.099, 0.099, None),  # the base's first step is exactly at the cutoff: kept as asked
        (0.098, 0.099, "leaves the base no step, so the base ran 1 step(s) and the refiner the rest"),
        (0.998, 0.998, None),  # cutoff 2: the last step (t = 1) is the refiner's
        (0.999, 0.899, "leaves the refiner no step, so the base ran 9 step(s) and the refiner the rest"),
    ],
)
def test_a_switch_that_leaves_a_stage_no_step_moves_to_the_nearest_step(switch, end, note):
    handoff = plan_handoff(recipe(steps=10, switch=switch, refine=REFINE), EULER)
    assert handoff.denoising_end == end and handoff.recipe.switch == switch
    if note is None:
        assert handoff.notes == ()
    else:
        assert handoff.notes == (f"switch {switch}: at 10 steps it {note}",)


def test_when_no_switch_gives_the_refiner_a_step_the_base_runs_them_all():
    """A scheduler whose timesteps are closer together than 1: no cutoff separates the last two."""
    scheduler = EulerDiscreteScheduler(num_train_timesteps=10, timestep_spacing="linspace")
    assert schedule(scheduler, 20)[-3:] == pytest.approx([0.947368, 0.473684, 0.0], abs=1e-5)
    handoff = plan_handoff(recipe(steps=20, switch=0.9999, refine=REFINE), scheduler)
    assert handoff.denoising_end == 1.0 and handoff.recipe.switch == 0.9999
    assert handoff.notes == (
        "switch 0.9999: at 20 steps it leaves the refiner no step, so the base ran every step; refining "
        "re-noises its image at the refine strength",
    )


@pytest.mark.parametrize("strength", [0.2, 0.29, 0.1, 0.01])
def test_img2img_with_no_base_step_before_the_switch_becomes_refine_any(strength):
    """10 steps at strength 0.2 visit 101 and 1, both past the cutoff of switch 0.8 (200)."""
    asked = edit(strength, switch=0.8, refine=REFINE, negative_prompt="blur")
    handoff = plan_handoff(asked, EULER)
    assert handoff.denoising_end == 1.0
    assert handoff.recipe == asked.replace(
        strength=0.0, switch=1.0, refine=RefineSettings(ModelRef("refiner"), strength)
    )
    assert handoff.notes == (
        f"strength {strength} at 10 steps leaves the base no step before the switch point 0.8: the refiner alone "
        f"re-noised the source to {strength} and denoised it (recorded as refine-any: strength 0, switch 1.0, "
        f"refine strength {strength})",
    )


def test_img2img_with_one_base_step_before_the_switch_runs_as_asked():
    asked = edit(0.3, switch=0.8, refine=REFINE)  # 201, 101, 1: the base runs 201
    handoff = plan_handoff(asked, EULER)
    assert (handoff.recipe, handoff.denoising_end, handoff.notes) == (asked, 0.8, ())


def test_img2img_base_step_count_is_taken_from_the_end_of_the_schedule():
    asked = edit(0.5, switch=0.9999, refine=REFINE)  # 401 … 1; the refiner gets the last step
    handoff = plan_handoff(asked, EULER)
    assert handoff.recipe is asked and handoff.denoising_end == 0.899
    assert handoff.notes == (
        "switch 0.9999: at 10 steps it leaves the refiner no step, so the base ran 9 step(s) and the refiner the rest",
    )
    assert base_step_count(EULER, asked, handoff.denoising_end) == 4


def test_img2img_at_full_strength_is_planned_as_txt2img():
    asked = edit(1.0, switch=0.05, refine=REFINE)  # no base step at 0.05: moved, not turned into refine-any
    handoff = plan_handoff(asked, EULER)
    assert handoff.recipe is asked and handoff.denoising_end == 0.099 and len(handoff.notes) == 1
    partial = plan_handoff(edit(0.5, switch=0.05, refine=REFINE), EULER)  # img2img: the base has no step
    assert partial.recipe.strength == 0.0 and partial.recipe.refine.strength == 0.5 and partial.denoising_end == 1.0


def test_img2img_in_a_one_step_schedule_is_refined_alone():
    handoff = plan_handoff(edit(0.9, steps=1, switch=0.8, refine=REFINE), EULER)  # int(1 × 0.9) = 0 base steps
    assert handoff.recipe.strength == 0.0 and handoff.recipe.refine.strength == 0.9 and handoff.denoising_end == 1.0
    assert handoff.notes[0].startswith("strength 0.9 at 1 steps leaves the base no step")


# -- img2img step counts -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strength", "steps", "end", "count"),
    [
        (0.5, 10, 1.0, 5),
        (0.5, 10, 0.8, 3),  # 501, 401, 301 before the cutoff 200
        (1.0, 10, 0.8, 8),
        (1.0, 10, 1.0, 10),
        (0.1, 10, 1.0, 1),  # the least strength that leaves one step
        (0.09, 10, 1.0, 0),
        (0.2, 10, 0.8, 0),
        (0.5, 10, math.nextafter(1.0, 0.0), 5),  # cutoff 0: every step
        (0.34, 3, 1.0, 1),
        (0.33, 3, 1.0, 0),
        (0.0, 10, 1.0, 0),
    ],
)
def test_base_step_count(strength, steps, end, count):
    asked = edit(strength, steps=steps)
    assert base_step_count(EULER, asked, end) == count
    assert stop_at_switch(asked, EULER, end) == (None if end >= 1.0 else count)
    if end == 1.0:
        assert base_step_count(EULER, asked) == count  # the default: run to the end


def test_stop_at_switch_runs_to_the_end_only_at_switch_1():
    asked = edit(0.5)
    assert stop_at_switch(asked, EULER, 1.0) is None
    assert stop_at_switch(asked, EULER, 0.8) == 3
    assert stop_at_switch(asked, EULER, math.nextafter(1.0, 0.0)) == 5


def test_check_base_steps_says_whether_the_base_runs():
    assert check_base_steps(EULER, edit(0.0)) is False  # the source as it is
    assert check_base_steps(EULER, edit(0.1)) is True
    assert check_base_steps(EULER, edit(0.2), 1.0) is True
    assert check_base_steps(EULER, edit(0.3), 0.8) is True
    with pytest.raises(ValueError) as refused:  # only without a refine stage in the engine: see plan_handoff
        check_base_steps(EULER, edit(0.2), 0.8)
    assert str(refused.value) == (
        "strength: 0.2 at 10 steps leaves the base no step to run; raise the strength to at least 0.1 or the steps "
        "to at least 10, or use strength 0 to keep the source as it is"
    )


@pytest.mark.parametrize(
    ("strength", "steps", "advice"),
    [
        (0.09, 10, "raise the strength to at least 0.1 or the steps to at least 12, or use strength 0"),
        (0.33, 3, "raise the strength to at least 0.34 or the steps to at least 4, or use strength 0"),
        (0.5, 1, "raise the strength to at least 1.0 or the steps to at least 2, or use strength 0"),
        (0.0066, 150, "raise the strength to at least 0.01 or the steps to at least 152, or use strength 0"),
        (0.002, 150, f"raise the strength to at least 0.01 or the steps to at least {MAX_STEPS}, or use strength 0"),
        (0.0019961, 150, "raise the strength to at least 0.01 or use strength 0"),  # 501 steps would be needed
        (0.001, 99, "raise the strength to at least 0.02 or use strength 0"),
    ],
)
def test_a_strength_that_leaves_the_base_no_step_is_refused_with_advice(strength, steps, advice):
    with pytest.raises(ValueError) as refused:
        check_base_steps(EULER, edit(strength, steps=steps))
    assert str(refused.value) == (
        f"strength: {strength} at {steps} steps leaves the base no step to run; {advice} to keep the source as it is"
    )
