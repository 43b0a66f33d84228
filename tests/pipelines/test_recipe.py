"""The Recipe's contract: both sides of every bound, wrong types, invariants (frozen, hashable, canonical
JSON) and JSON round trips over generated recipes (hypothesis). Pure logic: no torch, fast."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.recipe import (
    INPAINT_AREAS,
    MAX_DRAFTS,
    MAX_INPAINT_PADDING,
    MAX_MASK_BLUR,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    MODES,
    PROMPT_SYNTAXES,
    SCHEDULERS,
    ControlUnit,
    LoraRef,
    MicroConditioning,
    ModelRef,
    Recipe,
    RefineSettings,
)
from pipelines.sizes import SDXL_BUCKETS

SHA = "ab" * 32
BASE = Recipe(model=ModelRef(name="base"), prompt="a fox", seed=1)
IMG2IMG = BASE.replace(mode="img2img", strength=0.5, source_image_sha256=SHA)
INPAINT = IMG2IMG.replace(mask_sha256=SHA)
below = lambda x: math.nextafter(x, -math.inf)  # noqa: E731
above = lambda x: math.nextafter(x, math.inf)  # noqa: E731
NOT_NUMBERS = ("1", None, True, [1], math.nan, math.inf, -math.inf)
NOT_INTS = ("1", None, True, 1.0, 1.5)


def bound_cases():
    """(name, make(value) → object, accepted values, refused values, what the message says is allowed): the
    limits themselves are accepted, the first values outside refused."""
    recipe = lambda start: lambda field: lambda v: start.replace(**{field: v})  # noqa: E731
    lora = lambda field: lambda v: LoraRef(**{"name": "style", field: v})  # noqa: E731
    unit = lambda field: lambda v: ControlUnit(model=ModelRef(name="cn"), **{field: v})  # noqa: E731
    micro = lambda field: lambda v: MicroConditioning(**{field: v})  # noqa: E731
    yield "seed", recipe(BASE)("seed"), (0, MAX_SEED), (-1, MAX_SEED + 1, *NOT_INTS), f"an integer from 0 to {MAX_SEED}"
    yield "steps", recipe(BASE)("steps"), (1, MAX_STEPS), (0, MAX_STEPS + 1, *NOT_INTS), "an integer from 1 to 500"
    guidance = (below(0.0), above(50.0), *NOT_NUMBERS)
    yield "guidance", recipe(BASE)("guidance"), (0.0, 50.0, 0, 50), guidance, "a number in [0.0, 50.0]"
    for side in ("width", "height"):
        refused = (56, 63, MAX_SIDE + 8, 1000.0, *NOT_INTS)
        yield side, recipe(BASE)(side), (64, 72, MAX_SIDE), refused, f"an integer from 64 to {MAX_SIDE}"
        yield f"{side} (multiple of 8)", recipe(BASE)(side), (64, 72), (65, 100, 4095), "a multiple of 8"
    switch = (0.0, above(1.0), -0.1, *NOT_NUMBERS)
    yield "switch", recipe(BASE)("switch"), (above(0.0), 0.5, 1.0), switch, "a number in (0.0, 1.0]"
    strength = (below(0.0), above(1.0), *NOT_NUMBERS)
    yield "strength", recipe(IMG2IMG)("strength"), (0.0, 1.0), strength, "a number in [0.0, 1.0]"
    blur = (-1, MAX_MASK_BLUR + 1, *NOT_INTS)
    yield "mask_blur", recipe(INPAINT)("mask_blur"), (0, MAX_MASK_BLUR), blur, f"an integer from 0 to {MAX_MASK_BLUR}"
    padding = recipe(INPAINT)("inpaint_padding")
    refused = (-1, MAX_INPAINT_PADDING + 1, *NOT_INTS)
    yield "inpaint_padding", padding, (0, MAX_INPAINT_PADDING), refused, f"an integer from 0 to {MAX_INPAINT_PADDING}"
    varied = BASE.replace(variation_seed=7)
    variation = recipe(varied)("variation_strength")
    yield "variation_strength", variation, (0.0, 1.0), (below(0.0), above(1.0), "x"), "a number in [0.0, 1.0]"
    seeds_ = (None, 0, MAX_SEED)
    refused = (-1, MAX_SEED + 1, 1.0, "1")
    yield "variation_seed", recipe(BASE)("variation_seed"), seeds_, refused, f"an integer from 0 to {MAX_SEED}"
    refused = (below(-10.0), above(10.0), *NOT_NUMBERS)
    yield "loras.weight", lora("weight"), (-10.0, 10.0, 0.0, 0), refused, "a number in [-10.0, 10.0]"
    yield "loras.name", lora("name"), ("a", "x y"), ("", "   ", None, 1), "a non-empty string"
    yield "controlnets.scale", unit("scale"), (0.0, 4.0), (below(0.0), above(4.0), *NOT_NUMBERS), "[0.0, 4.0]"
    yield "controlnets.start", unit("start"), (0.0, below(1.0)), (below(0.0), *NOT_NUMBERS), "a number in [0.0, 1.0]"
    yield "controlnets.start (before end)", unit("start"), (0.0,), (1.0,), "smaller than controlnets.end"
    end = lambda v: ControlUnit(model=ModelRef(name="cn"), start=0.5, end=v)  # noqa: E731
    yield "controlnets.end", end, (above(0.5), 1.0), (above(1.0), *NOT_NUMBERS), "a number in [0.0, 1.0]"
    yield "controlnets.start (after start)", end, (1.0,), (0.5, below(0.5)), "smaller than controlnets.end"
    scores = (below(0.0), above(10.0), *NOT_NUMBERS)
    yield "micro.aesthetic_score", micro("aesthetic_score"), (0.0, 10.0), scores, "a number in [0.0, 10.0]"
    negative = micro("negative_aesthetic_score")
    yield "micro.negative_aesthetic_score", negative, (0.0, 10.0), scores, "a number in [0.0, 10.0]"
    sizes = ((1, 1), (MAX_SIDE * 4, 7), None)
    for name in ("original_size", "target_size", "negative_original_size", "negative_target_size"):
        refused = ((0, 1), (1, MAX_SIDE * 4 + 1), (1,), [1, 1], (1.0, 1), (True, 1), "1x1")
        yield f"micro.{name}", micro(name), sizes, refused, "a (height, width) pair"
    for name in ("crops_coords_top_left", "negative_crops_coords_top_left"):
        refused = ((-1, 0), (0, MAX_SIDE * 4 + 1), (0,), [0, 0], (0.0, 0), (False, 0), None)
        yield f"micro.{name}", micro(name), ((0, 0), (MAX_SIDE * 4, 0)), refused, f"integers from 0 to {MAX_SIDE * 4}"
    refine = lambda v: RefineSettings(strength=v)  # noqa: E731
    yield "refine.strength", refine, (above(0.0), 1.0), (0.0, above(1.0), *NOT_NUMBERS), "a number in (0.0, 1.0]"
    seeds = recipe(BASE)("batch_seeds")
    full = tuple(range(1, MAX_DRAFTS + 1))
    yield (
        "batch_seeds",
        seeds,
        ((), (1,), full),
        ((*full, MAX_DRAFTS + 1), [1]),
        f"a tuple of at most {MAX_DRAFTS} seeds",
    )
    yield "batch_seeds (seeds)", seeds, (full,), ((1, -1), (1, 1.0)), f"an integer from 0 to {MAX_SEED}"
    yield "batch_seeds (has seed)", seeds, ((1,),), ((2,), (3, 4)), "a batch that contains seed 1"


CASES = list(bound_cases())


@pytest.mark.parametrize(("name", "make", "accepted", "refused", "allowed"), CASES, ids=[c[0] for c in CASES])
def test_every_bound_accepts_its_limits_and_refuses_the_next_value(name, make, accepted, refused, allowed):
    for value in accepted:
        make(value)  # the limit itself is allowed
    field = name.split(" ")[0]
    for value in refused:
        with pytest.raises(ValueError) as caught:
            make(value)
        message = str(caught.value)
        assert message.startswith(f"{field}: must be ") and allowed in message, (name, value, message)
        assert message.endswith(")") and "(got " in message, (name, value, message)  # the value that was wrong


@pytest.mark.parametrize(
    ("field", "allowed"),
    [
        ("scheduler", SCHEDULERS),
        ("prompt_syntax", PROMPT_SYNTAXES),
        ("mode", MODES),
        ("stage", ("draft", "final")),
    ],
)
def test_choice_fields_accept_each_choice_and_name_them_when_refusing(field, allowed):
    start = IMG2IMG if field != "mode" else BASE
    for value in allowed:
        if field == "mode" and value == "img2img":
            start.replace(mode=value, strength=0.5)
        else:
            start.replace(**{field: value})
    for wrong in ("", value.upper() + "x", None, 1):
        with pytest.raises(ValueError, match=rf"{field}: must be one of {allowed[0]}"):
            start.replace(**{field: wrong})


def test_inpaint_area_choices():
    for area in INPAINT_AREAS:
        INPAINT.replace(inpaint_area=area)
    with pytest.raises(ValueError, match="inpaint_area: must be one of whole, masked"):
        INPAINT.replace(inpaint_area="Masked")


@pytest.mark.parametrize("field", ["source_image_sha256", "mask_sha256"])
@pytest.mark.parametrize("bad", ["AB" * 32, "ab" * 31 + "a", "ab" * 32 + "a", "g" * 64, 123, ""])
def test_sha256_fields_must_be_64_lowercase_hex(field, bad):
    with pytest.raises(ValueError, match=f"{field}: must be a lowercase hex sha256"):
        INPAINT.replace(**{field: bad})


def test_model_and_lora_hashes_are_checked_too():
    for make in (lambda s: ModelRef(name="m", sha256=s), lambda s: LoraRef(name="l", sha256=s)):
        make(SHA)
        with pytest.raises(ValueError, match="sha256: must be a lowercase hex sha256"):
            make(SHA.upper())
    with pytest.raises(ValueError, match="model.name: must be a non-empty string"):
        ModelRef(name=" ")


def test_mode_dependent_fields_are_refused_outside_their_mode():
    with pytest.raises(ValueError, match="strength: must be unset unless mode is img2img"):
        BASE.replace(strength=0.5)
    with pytest.raises(ValueError, match="strength: must be a number in"):
        BASE.replace(mode="img2img")
    with pytest.raises(ValueError, match="mask_sha256: must be unset unless mode is img2img"):
        BASE.replace(mask_sha256=SHA)
    with pytest.raises(ValueError, match="variation_seed: must be unset unless mode is txt2img"):
        IMG2IMG.replace(variation_seed=3)
    with pytest.raises(ValueError, match="variation_seed: must be set when variation_strength is above 0"):
        BASE.replace(variation_strength=0.1)
    with pytest.raises(ValueError, match="switch: must be 1.0 when there is no refine stage"):
        BASE.replace(refine=None)
    BASE.replace(refine=None, switch=1.0)


def test_refine_strength_too_small_for_any_step_names_the_smallest_that_works():
    settings_ = RefineSettings(strength=0.001)
    with pytest.raises(ValueError, match=r"refine.strength: must be at least 0.002"):
        settings_.schedule_steps(1)
    assert RefineSettings(strength=0.3).schedule_steps(1) == 4
    assert RefineSettings(strength=0.3).schedule_steps(20) == 20


# -- invariants -------------------------------------------------------------------------------------


def test_recipe_and_its_parts_are_frozen_and_hashable():
    unit = ControlUnit(model=ModelRef(name="cn"), params=(("low", 100.0),))
    parts = (BASE, ModelRef(name="m"), LoraRef(name="l"), unit, MicroConditioning(), RefineSettings())
    for part in parts:
        assert hash(part) == hash(dataclasses.replace(part))
        first = dataclasses.fields(part)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(part, first, None)
    full = BASE.replace(loras=(LoraRef(name="l"),), controlnets=(unit,))
    assert len({full, full.replace(), BASE}) == 2


def test_canonical_json_has_sorted_keys_and_no_spaces():
    text = BASE.to_json()
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    keys = list(json.loads(text))
    assert keys == sorted(keys)
    assert text.startswith('{"app_version":"","batch_seeds":[],"controlnets":[],')
    assert '"model":{"name":"base","revision":null,"sha256":null}' in text
    assert '"refine":{"model":null,"strength":0.3}' in text


def test_every_sdxl_bucket_is_a_valid_recipe_size():
    assert len(SDXL_BUCKETS) >= 9
    for width, height in SDXL_BUCKETS:
        assert BASE.replace(width=width, height=height).width == width


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("[1, 2]", "recipe: must be a JSON object (got list)"),
        ('"text"', "recipe: must be a JSON object (got str)"),
        ("{", "recipe: not valid JSON"),
        (b"\xff\xfe", "recipe: not valid JSON"),
        ('{"schema_version": 99}', "schema_version: must be an integer from 1 to 1"),
        ('{"schema_version": 1, "bogus": 1}', "recipe: unknown field"),
    ],
)
def test_malformed_recipe_json_is_refused_with_a_message(data, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Recipe.from_json(data)


def test_unknown_nested_field_names_its_path():
    data = json.loads(BASE.to_json())
    data["micro"]["bogus"] = 1
    with pytest.raises(ValueError, match=r"unknown field\(s\) micro.bogus"):
        Recipe.from_dict(data)
    data = json.loads(BASE.to_json())
    del data["model"]
    with pytest.raises(ValueError, match="model"):
        Recipe.from_dict(data)


# -- generated round trips ----------------------------------------------------------------------------

finite = lambda lo, hi: st.floats(min_value=lo, max_value=hi, allow_nan=False)  # noqa: E731
sha = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
side = st.integers(min_value=8, max_value=MAX_SIDE // 8).map(lambda k: k * 8)
pair = st.tuples(st.integers(1, MAX_SIDE), st.integers(1, MAX_SIDE))
name = st.text(min_size=1, max_size=12).filter(str.strip)
micro_st = st.builds(
    MicroConditioning,
    original_size=st.none() | pair,
    crops_coords_top_left=st.tuples(st.integers(0, 512), st.integers(0, 512)),
    target_size=st.none() | pair,
    aesthetic_score=finite(0.0, 10.0),
)
lora_st = st.builds(LoraRef, name=name, sha256=st.none() | sha, weight=finite(-10.0, 10.0))
unit_st = st.builds(
    ControlUnit,
    model=st.builds(ModelRef, name=name),
    scale=finite(0.0, 4.0),
    start=finite(0.0, 0.4),
    end=finite(0.5, 1.0),
    params=st.lists(st.tuples(name, finite(0, 255)), max_size=2).map(tuple),
)


@st.composite
def recipes(draw):
    seed = draw(st.integers(0, MAX_SEED))
    recipe = Recipe(
        model=draw(st.builds(ModelRef, name=name, sha256=st.none() | sha)),
        prompt=draw(st.text(max_size=40)),
        negative_prompt=draw(st.text(max_size=20)),
        seed=seed,
        batch_seeds=draw(st.sampled_from([(), (seed,)])),
        steps=draw(st.integers(1, MAX_STEPS)),
        guidance=draw(finite(0.0, 50.0)),
        scheduler=draw(st.sampled_from(SCHEDULERS)),
        width=draw(side),
        height=draw(side),
        micro=draw(micro_st),
        switch=draw(finite(0.01, 1.0)),
        loras=tuple(draw(st.lists(lora_st, max_size=3))),
        controlnets=tuple(draw(st.lists(unit_st, max_size=2))),
        watermark=draw(st.booleans()),
    )
    if draw(st.booleans()):
        recipe = recipe.replace(mode="img2img", strength=draw(finite(0.0, 1.0)), source_image_sha256=draw(sha))
    return recipe


@settings(max_examples=200, deadline=None)
@given(recipes())
def test_json_round_trip_is_exact_and_canonical(recipe):
    text = recipe.to_json()
    again = Recipe.from_json(text)
    assert again == recipe and hash(again) == hash(recipe)
    assert again.to_json() == text
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert Recipe.from_dict(recipe.to_dict()) == recipe  # to_dict() tuples are accepted as well


@pytest.mark.parametrize("field", ["image_sha256", "map_sha256"])
def test_control_unit_hashes_are_checked_and_named(field):
    ControlUnit(model=ModelRef(name="cn"), **{field: SHA})
    with pytest.raises(ValueError, match=rf"^controlnets\.{field}: must be a lowercase hex sha256 \(64 characters\)"):
        ControlUnit(model=ModelRef(name="cn"), **{field: SHA.upper()})


@pytest.mark.parametrize(
    ("micro", "expected"),
    [
        (
            MicroConditioning(),
            {"original_size": (96, 64), "crops_coords_top_left": (0, 0), "target_size": (96, 64)},
        ),
        (
            MicroConditioning(original_size=(2048, 1024), crops_coords_top_left=(8, 16), target_size=(512, 512)),
            {"original_size": (2048, 1024), "crops_coords_top_left": (8, 16), "target_size": (512, 512)},
        ),
        (  # any negative value makes diffusers use them all: the missing sizes are filled from the positive ones
            MicroConditioning(original_size=(300, 200), negative_crops_coords_top_left=(4, 4)),
            {
                "original_size": (300, 200),
                "crops_coords_top_left": (0, 0),
                "target_size": (96, 64),
                "negative_original_size": (300, 200),
                "negative_target_size": (96, 64),
                "negative_crops_coords_top_left": (4, 4),
            },
        ),
        (
            MicroConditioning(negative_original_size=(512, 512)),
            {
                "original_size": (96, 64),
                "crops_coords_top_left": (0, 0),
                "target_size": (96, 64),
                "negative_original_size": (512, 512),
                "negative_target_size": (96, 64),
            },
        ),
        (
            MicroConditioning(negative_target_size=(128, 128)),
            {
                "original_size": (96, 64),
                "crops_coords_top_left": (0, 0),
                "target_size": (96, 64),
                "negative_original_size": (96, 64),
                "negative_target_size": (128, 128),
            },
        ),
    ],
)
def test_micro_conditioning_resolves_every_size_for_diffusers(micro, expected):
    expected = {"negative_crops_coords_top_left": (0, 0), **expected}
    assert micro.resolved(96, 64) == expected


def test_inpaint_model_needs_an_inpainting_recipe_and_round_trips():
    model = ModelRef("sdxl-inpaint.safetensors", sha256=SHA)
    recipe = INPAINT.replace(inpaint_model=model)
    assert Recipe.from_json(recipe.to_json()) == recipe
    assert Recipe.from_json(recipe.to_json()).inpaint_model == model
    with pytest.raises(ValueError, match="inpaint_model: must be null unless the recipe inpaints"):
        IMG2IMG.replace(inpaint_model=model)
    with pytest.raises(ValueError, match="inpaint_model: must be a ModelRef or null"):
        INPAINT.replace(inpaint_model="sdxl-inpaint")
