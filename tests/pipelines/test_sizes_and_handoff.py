"""Size rules on both sides of their bounds, and the base→refiner cutoff at its exact boundary."""

from __future__ import annotations

import pytest
from diffusers import DDIMScheduler
from PIL import Image

from pipelines.engine.handoff import base_steps, cutoff, schedule
from pipelines.recipe import MAX_SIDE, MIN_SIDE, ModelRef, Recipe
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
    with pytest.raises(ValueError, match="image: must be a PIL image"):
        fit_to_bucket(b"png bytes", 64, 64)


def test_the_cutoff_timestep_itself_belongs_to_the_base():
    scheduler = DDIMScheduler(steps_offset=1, timestep_spacing="leading")
    timesteps = schedule(scheduler, 10)
    assert timesteps[:3] == [901.0, 801.0, 701.0]
    assert cutoff(scheduler, 0.199) == 801  # round(1000 − 199)
    assert base_steps(timesteps, scheduler, 0.199) == 2  # 901 and 801 (t ≥ cutoff)
    assert base_steps(timesteps, scheduler, 0.198) == 1  # cutoff 802: 801 goes to the refiner
    assert base_steps(timesteps, scheduler, 1.0) == 10
    assert schedule(scheduler, 10) == timesteps  # computing a schedule leaves the scheduler's state alone
