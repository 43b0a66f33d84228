"""Every refusal the Recipe and its parts can give, each with its exact message (the field, what is allowed and
the value that was wrong), the accepted side of the limits test_recipe.py does not cover, the derived properties,
and the JSON reader's error paths. Pure logic, fast: mutation testing runs these for each recipe.py mutant."""

from __future__ import annotations

import pytest

from pipelines.recipe import (
    MAX_CONTROLNETS,
    MAX_LORAS,
    MAX_PROMPT_CHARS,
    MAX_RECIPE_JSON_CHARS,
    ControlUnit,
    LoraRef,
    MicroConditioning,
    ModelRef,
    Recipe,
    RefineSettings,
    _check_size,
    refine_any_recipe,
)
from tests.pipelines.test_recipe import BASE, IMG2IMG, INPAINT, SHA

CN = ModelRef(name="cn")
HEX = "a lowercase hex sha256 (64 characters)"
SCHEDULERS = "Euler, Euler a, DPM++ 2M, DPM++ 2M Karras, DPM++ 2M SDE Karras, DDIM, UniPC, LCM"
EXPAND = "(left, top, right, bottom): four multiples of 8 from 0 to 1024 px"
LONG = "x" * (MAX_PROMPT_CHARS + 1)
TOO_LONG = (
    f"{MAX_PROMPT_CHARS + 1} characters is over the limit of {MAX_PROMPT_CHARS} characters per prompt; shorten it"
)
MAX_INT = 9223372036854775807

REFUSALS = {
    "model.name": (lambda: ModelRef(name=" "), "model.name: must be a non-empty string (got ' ')"),
    "model.name type": (lambda: ModelRef(name=3), "model.name: must be a non-empty string (got 3)"),
    "model.sha256": (lambda: ModelRef(name="m", sha256="X" * 64), f"model.sha256: must be {HEX} (got '{'X' * 64}')"),
    "loras.name": (lambda: LoraRef(name=""), "loras.name: must be a non-empty string (got '')"),
    "loras.sha256": (lambda: LoraRef(name="l", sha256="ab" * 31), f"loras.sha256: must be {HEX} (got '{'ab' * 31}')"),
    "loras.weight": (
        lambda: LoraRef(name="l", weight=10.5),
        "loras.weight: must be a number in [-10.0, 10.0] (got 10.5)",
    ),
    "controlnets.image_sha256": (
        lambda: ControlUnit(model=CN, image_sha256="x"),
        f"controlnets.image_sha256: must be {HEX} (got 'x')",
    ),
    "controlnets.map_sha256": (
        lambda: ControlUnit(model=CN, map_sha256="x"),
        f"controlnets.map_sha256: must be {HEX} (got 'x')",
    ),
    "controlnets.scale": (
        lambda: ControlUnit(model=CN, scale=4.5),
        "controlnets.scale: must be a number in [0.0, 4.0] (got 4.5)",
    ),
    "controlnets.start": (
        lambda: ControlUnit(model=CN, start=-0.5),
        "controlnets.start: must be a number in [0.0, 1.0] (got -0.5)",
    ),
    "controlnets.end": (
        lambda: ControlUnit(model=CN, end=1.5),
        "controlnets.end: must be a number in [0.0, 1.0] (got 1.5)",
    ),
    "controlnets.start before end": (
        lambda: ControlUnit(model=CN, start=0.5, end=0.5),
        "controlnets.start: must be smaller than controlnets.end (got (0.5, 0.5))",
    ),
    "micro.original_size": (
        lambda: MicroConditioning(original_size=(1,)),
        "micro.original_size: must be a (height, width) pair (got (1,))",
    ),
    "micro.target_size": (
        lambda: MicroConditioning(target_size=(0, 5)),
        "micro.target_size: must be a (height, width) pair of integers from 1 to 16384 (got (0, 5))",
    ),
    "micro.negative_original_size": (
        lambda: MicroConditioning(negative_original_size=[1, 1]),
        "micro.negative_original_size: must be a (height, width) pair (got [1, 1])",
    ),
    "micro.negative_target_size": (
        lambda: MicroConditioning(negative_target_size=(1, 16385)),
        "micro.negative_target_size: must be a (height, width) pair of integers from 1 to 16384 (got (1, 16385))",
    ),
    "micro.crops_coords_top_left": (
        lambda: MicroConditioning(crops_coords_top_left=(-1, 0)),
        "micro.crops_coords_top_left: must be a (top, left) pair of integers from 0 to 16384 (got (-1, 0))",
    ),
    "micro.negative_crops_coords_top_left": (
        lambda: MicroConditioning(negative_crops_coords_top_left=(0, 0, 0)),
        "micro.negative_crops_coords_top_left: must be a (top, left) pair of integers from 0 to 16384 (got (0, 0, 0))",
    ),
    "micro.aesthetic_score": (
        lambda: MicroConditioning(aesthetic_score=11),
        "micro.aesthetic_score: must be a number in [0.0, 10.0] (got 11)",
    ),
    "micro.negative_aesthetic_score": (
        lambda: MicroConditioning(negative_aesthetic_score=-1),
        "micro.negative_aesthetic_score: must be a number in [0.0, 10.0] (got -1)",
    ),
    "refine.strength": (lambda: RefineSettings(strength=0), "refine.strength: must be a number in (0.0, 1.0] (got 0)"),
    "refine.strength (no refiner step)": (
        lambda: RefineSettings(strength=0.001).schedule_steps(1),
        "refine.strength: must be at least 0.002 (a smaller strength leaves the refiner no step) (got 0.001)",
    ),
    "schema_version": (
        lambda: BASE.replace(schema_version=2),
        "schema_version: must be 1 (older recipes are upgraded by from_json) (got 2)",
    ),
    "model": (lambda: BASE.replace(model="base"), "model: must be a ModelRef (got 'base')"),
    "vae": (lambda: BASE.replace(vae="fp16-fix"), "vae: must be a ModelRef or null (got 'fp16-fix')"),
    "prompt": (lambda: BASE.replace(prompt=None), "prompt: must be a string (got None)"),
    "negative_prompt": (lambda: BASE.replace(negative_prompt=b"x"), "negative_prompt: must be a string (got b'x')"),
    "prompt length": (lambda: BASE.replace(prompt=LONG), f"prompt: {TOO_LONG}"),
    "negative_prompt length": (lambda: BASE.replace(negative_prompt=LONG), f"negative_prompt: {TOO_LONG}"),
    "prompt_template empty": (
        lambda: BASE.replace(prompt_template=""),
        "prompt_template: must be a non-empty string or null (got '')",
    ),
    "prompt_template type": (
        lambda: BASE.replace(prompt_template=5),
        "prompt_template: must be a non-empty string or null (got 5)",
    ),
    "prompt_template length": (lambda: BASE.replace(prompt_template=LONG), f"prompt_template: {TOO_LONG}"),
    "prompt_syntax": (
        lambda: BASE.replace(prompt_syntax="A1111"),
        "prompt_syntax: must be one of compel, a1111 (got 'A1111')",
    ),
    "mode": (lambda: BASE.replace(mode="inpaint"), "mode: must be one of txt2img, img2img (got 'inpaint')"),
    "stage": (lambda: BASE.replace(stage="preview"), "stage: must be one of draft, final (got 'preview')"),
    "seed": (lambda: BASE.replace(seed=-1), f"seed: must be an integer from 0 to {MAX_INT} (got -1)"),
    "batch_seeds type": (
        lambda: BASE.replace(batch_seeds=[1]),
        "batch_seeds: must be a tuple of at most 16 seeds (got [1])",
    ),
    "batch_seeds length": (
        lambda: BASE.replace(batch_seeds=tuple(range(17))),
        f"batch_seeds: must be a tuple of at most 16 seeds (got {tuple(range(17))})",
    ),
    "batch_seeds item": (
        lambda: BASE.replace(batch_seeds=(1, -2)),
        f"batch_seeds: must be an integer from 0 to {MAX_INT} (got -2)",
    ),
    "batch_seeds without seed": (
        lambda: BASE.replace(batch_seeds=(2, 3)),
        "batch_seeds: must be a batch that contains seed 1 (got (2, 3))",
    ),
    "variation_seed": (
        lambda: BASE.replace(variation_seed=-1),
        f"variation_seed: must be an integer from 0 to {MAX_INT} (got -1)",
    ),
    "variation_strength": (
        lambda: BASE.replace(variation_seed=1, variation_strength=1.5),
        "variation_strength: must be a number in [0.0, 1.0] (got 1.5)",
    ),
    "variation_seed needed": (
        lambda: BASE.replace(variation_strength=0.5),
        "variation_seed: must be set when variation_strength is above 0 (got None)",
    ),
    "variation_seed in img2img": (
        lambda: IMG2IMG.replace(variation_seed=4),
        "variation_seed: must be unset unless mode is txt2img (img2img starts from its source) (got 4)",
    ),
    "steps": (lambda: BASE.replace(steps=0), "steps: must be an integer from 1 to 500 (got 0)"),
    "guidance": (lambda: BASE.replace(guidance=51), "guidance: must be a number in [0.0, 50.0] (got 51)"),
    "scheduler": (lambda: BASE.replace(scheduler="euler"), f"scheduler: must be one of {SCHEDULERS} (got 'euler')"),
    "width": (lambda: BASE.replace(width=4104), "width: must be an integer from 64 to 4096 (got 4104)"),
    "height": (lambda: BASE.replace(height=100), "height: must be a multiple of 8 (got 100)"),
    "micro": (lambda: BASE.replace(micro={}), "micro: must be a MicroConditioning (got {})"),
    "switch": (lambda: BASE.replace(switch=0), "switch: must be a number in (0.0, 1.0] (got 0)"),
    "refine": (lambda: BASE.replace(refine=0.3), "refine: must be RefineSettings or None (got 0.3)"),
    "switch without refine": (
        lambda: BASE.replace(refine=None),
        "switch: must be 1.0 when there is no refine stage (refine is null) (got 0.8)",
    ),
    "strength missing": (
        lambda: BASE.replace(mode="img2img"),
        "strength: must be a number in [0.0, 1.0] for img2img (got None)",
    ),
    "strength": (lambda: IMG2IMG.replace(strength=1.5), "strength: must be a number in [0.0, 1.0] (got 1.5)"),
    "source_image_sha256": (
        lambda: IMG2IMG.replace(source_image_sha256="AB" * 32),
        f"source_image_sha256: must be {HEX} (got '{'AB' * 32}')",
    ),
    "strength in txt2img": (
        lambda: BASE.replace(strength=0.5),
        "strength: must be unset unless mode is img2img (got 0.5)",
    ),
    "source_image_sha256 in txt2img": (
        lambda: BASE.replace(source_image_sha256=SHA),
        f"source_image_sha256: must be unset unless mode is img2img (got '{SHA}')",
    ),
    "mask_sha256": (lambda: INPAINT.replace(mask_sha256="ab"), f"mask_sha256: must be {HEX} (got 'ab')"),
    "mask_sha256 in txt2img": (
        lambda: BASE.replace(mask_sha256=SHA),
        f"mask_sha256: must be unset unless mode is img2img (inpainting repaints a source image) (got '{SHA}')",
    ),
    "mask_blur": (lambda: INPAINT.replace(mask_blur=65), "mask_blur: must be an integer from 0 to 64 (got 65)"),
    "inpaint_area": (
        lambda: INPAINT.replace(inpaint_area="box"),
        "inpaint_area: must be one of whole, masked (got 'box')",
    ),
    "inpaint_padding": (
        lambda: INPAINT.replace(inpaint_padding=-1),
        "inpaint_padding: must be an integer from 0 to 1024 (got -1)",
    ),
    "masked_content": (
        lambda: INPAINT.replace(masked_content="latent noise"),
        "masked_content: must be one of original, noise (got 'latent noise')",
    ),
    "expand length": (lambda: IMG2IMG.replace(expand=(0, 0, 0)), f"expand: must be {EXPAND} (got (0, 0, 0))"),
    "expand list": (lambda: IMG2IMG.replace(expand=[0, 0, 0, 0]), f"expand: must be {EXPAND} (got [0, 0, 0, 0])"),
    "expand multiple": (lambda: IMG2IMG.replace(expand=(0, 0, 0, 12)), f"expand: must be {EXPAND} (got (0, 0, 0, 12))"),
    "expand over": (lambda: IMG2IMG.replace(expand=(1032, 0, 0, 0)), f"expand: must be {EXPAND} (got (1032, 0, 0, 0))"),
    "expand bool": (lambda: IMG2IMG.replace(expand=(True, 0, 0, 0)), f"expand: must be {EXPAND} (got (True, 0, 0, 0))"),
    "expand float": (lambda: IMG2IMG.replace(expand=(8.0, 0, 0, 0)), f"expand: must be {EXPAND} (got (8.0, 0, 0, 0))"),
    "expand negative": (lambda: IMG2IMG.replace(expand=(-8, 0, 0, 0)), f"expand: must be {EXPAND} (got (-8, 0, 0, 0))"),
    "inpaint_model type": (
        lambda: INPAINT.replace(inpaint_model="inpaint"),
        "inpaint_model: must be a ModelRef or null (got 'inpaint')",
    ),
    "inpaint_model without inpainting": (
        lambda: IMG2IMG.replace(inpaint_model=ModelRef("inpaint")),
        "inpaint_model: must be null unless the recipe inpaints (a mask_sha256 or an expand) (got 'inpaint')",
    ),
    "masked_content in txt2img": (
        lambda: BASE.replace(masked_content="noise"),
        "masked_content: must be 'original' unless mode is img2img (inpainting repaints a source image) (got 'noise')",
    ),
    "expand in txt2img": (
        lambda: BASE.replace(expand=(8, 0, 0, 0)),
        "expand: must be (0, 0, 0, 0) unless mode is img2img (outpainting extends a source image) (got (8, 0, 0, 0))",
    ),
    "expand too wide": (
        lambda: IMG2IMG.replace(width=512, height=512, expand=(256, 0, 200, 0)),
        "expand: must be a border that leaves the source at least 64 px per side of the 512×512 canvas "
        "(got (256, 0, 200, 0))",
    ),
    "expand too tall": (
        lambda: IMG2IMG.replace(width=512, height=1024, expand=(0, 512, 0, 456)),
        "expand: must be a border that leaves the source at least 64 px per side of the 512×1024 canvas "
        "(got (0, 512, 0, 456))",
    ),
    "loras type": (lambda: BASE.replace(loras=("style",)), "loras: must be a tuple of LoraRef (got ('style',))"),
    "loras count": (
        lambda: BASE.replace(loras=tuple(LoraRef(name=f"l{i}") for i in range(MAX_LORAS + 1))),
        "loras: 17 is over the limit of 16 per request; use fewer",
    ),
    "controlnets type": (
        lambda: BASE.replace(controlnets=(CN,)),
        "controlnets: must be a tuple of ControlUnit (got (ModelRef(name='cn', sha256=None, revision=None),))",
    ),
    "controlnets count": (
        lambda: BASE.replace(controlnets=(ControlUnit(model=CN),) * (MAX_CONTROLNETS + 1)),
        "controlnets: 5 is over the limit of 4 per request; use fewer",
    ),
    "watermark": (lambda: BASE.replace(watermark=1), "watermark: must be true or false (got 1)"),
    "watermark_applied": (
        lambda: BASE.replace(watermark_applied="yes"),
        "watermark_applied: must be true, false or null (got 'yes')",
    ),
    "from_dict": (lambda: Recipe.from_dict([1]), "recipe: must be a JSON object (got list)"),
    "from_json over the limit": (
        lambda: Recipe.from_json(" " * (MAX_RECIPE_JSON_CHARS + 1)),
        "recipe: 262145 characters of JSON is over the limit of 262144",
    ),
    "schema_version 0": (
        lambda: Recipe.from_dict({"schema_version": 0}),
        "schema_version: must be an integer from 1 to 1 (got 0)",
    ),
    "schema_version text": (
        lambda: Recipe.from_dict({"schema_version": "1"}),
        "schema_version: must be an integer from 1 to 1 (got '1')",
    ),
    "schema_version 2": (
        lambda: Recipe.from_dict({"schema_version": 2}),
        "schema_version: must be an integer from 1 to 1 (got 2)",
    ),
    "missing field": (
        lambda: Recipe.from_dict({"prompt": "x", "seed": 1}),
        "recipe: Recipe.__init__() missing 1 required positional argument: 'model'",
    ),
    "missing nested field": (
        lambda: Recipe.from_dict({"model": {}, "prompt": "x", "seed": 1}),
        "recipe: model.ModelRef.__init__() missing 1 required positional argument: 'name'",
    ),
    "unknown fields": (
        lambda: Recipe.from_dict({"seed": 1, "size": 2, "colour": "red"}),
        "recipe: unknown field(s) colour, size",
    ),
    "unknown field in a list": (
        lambda: Recipe.from_dict({"model": {"name": "m"}, "prompt": "x", "seed": 1, "loras": [{"nam": "x"}]}),
        "recipe: unknown field(s) loras.nam",
    ),
    "missing field in a list": (
        lambda: Recipe.from_dict({"model": {"name": "m"}, "prompt": "x", "seed": 1, "controlnets": [{}]}),
        "recipe: controlnets.ControlUnit.__init__() missing 1 required positional argument: 'model'",
    ),
    "size helper: multiple": (
        lambda: _check_size("size", (64, 65)),
        "size: must be sides that are multiples of 8 (got (64, 65))",
    ),
    "size helper: even": (
        lambda: _check_size("size", (64, 65), multiple_of=2),
        "size: must be sides that are multiples of 2 (got (64, 65))",
    ),
    "size helper: minimum": (
        lambda: _check_size("size", (56, 64)),
        "size: must be a (height, width) pair of integers from 64 to 16384 (got (56, 64))",
    ),
}


@pytest.mark.parametrize(("make", "message"), REFUSALS.values(), ids=REFUSALS.keys())
def test_each_refusal_names_the_field_what_is_allowed_and_the_value(make, message):
    with pytest.raises(ValueError) as refused:
        make()
    assert str(refused.value) == message


ACCEPTED = {
    "prompt at the limit": lambda: BASE.replace(prompt="x" * MAX_PROMPT_CHARS),
    "negative_prompt at the limit": lambda: BASE.replace(negative_prompt="x" * MAX_PROMPT_CHARS),
    "prompt_template at the limit": lambda: BASE.replace(prompt_template="x" * MAX_PROMPT_CHARS),
    "loras at the limit": lambda: BASE.replace(loras=tuple(LoraRef(name=f"l{i}") for i in range(MAX_LORAS))),
    "controlnets at the limit": lambda: BASE.replace(controlnets=(ControlUnit(model=CN),) * MAX_CONTROLNETS),
    "vae": lambda: BASE.replace(vae=ModelRef("fp16-fix")),
    "watermark_applied": lambda: BASE.replace(watermark=False, watermark_applied=False),
    "expand at the limit": lambda: IMG2IMG.replace(width=2048, expand=(1024, 0, 0, 0)),
    "expand leaving 64 px": lambda: IMG2IMG.replace(width=512, height=512, expand=(256, 0, 192, 0)),
    "expand leaving 64 px high": lambda: IMG2IMG.replace(width=512, height=1024, expand=(0, 512, 0, 448)),
    "masked_content noise": lambda: INPAINT.replace(masked_content="noise"),
    "inpaint_model with an expand": lambda: IMG2IMG.replace(expand=(64, 0, 0, 0), inpaint_model=ModelRef("inpaint")),
    "size helper": lambda: _check_size("size", (64, 16384)),
}


@pytest.mark.parametrize("make", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_the_limits_themselves_are_accepted(make):
    make()


def test_a_recipe_without_schema_version_is_read_as_the_current_one():
    data = BASE.to_dict()
    del data["schema_version"]
    assert Recipe.from_dict(data) == BASE
    padded = BASE.to_json().ljust(MAX_RECIPE_JSON_CHARS)  # exactly at the size limit
    assert len(padded) == MAX_RECIPE_JSON_CHARS and Recipe.from_json(padded) == BASE


def test_from_dict_takes_parts_that_are_already_objects():
    unit = ControlUnit(model=CN, params=(("low", 100.0),))
    data = {"model": ModelRef("m"), "prompt": "x", "seed": 1, "loras": [LoraRef("l")], "controlnets": (unit,)}
    recipe = Recipe.from_dict(data)
    assert recipe.model == ModelRef("m") and recipe.loras == (LoraRef("l"),) and recipe.controlnets == (unit,)
    listed = Recipe.from_dict({**data, "controlnets": [{"model": {"name": "cn"}, "params": [["low", 100.0]]}]})
    assert listed.controlnets == (unit,)
    assert Recipe.from_dict({**data, "batch_seeds": [1, 2], "micro": {"original_size": [8, 16]}}).batch_seeds == (1, 2)


def test_refine_steps_up_to_the_limit():
    assert RefineSettings(strength=0.002).schedule_steps(1) == 500  # MAX_STEPS itself
    assert RefineSettings(strength=0.5).schedule_steps(1) == 2
    assert RefineSettings(strength=1.0).schedule_steps(1) == 1


@pytest.mark.parametrize(
    ("recipe", "inpaints", "keeps_source", "stops_early"),
    [
        (BASE, False, False, True),
        (BASE.replace(switch=1.0), False, False, False),
        (BASE.replace(switch=0.9999), False, False, True),
        (INPAINT, True, False, True),
        (IMG2IMG.replace(expand=(8, 0, 0, 0)), True, False, True),
        (IMG2IMG.replace(strength=0.0), False, True, True),  # with a refine stage after the switch
        (IMG2IMG.replace(strength=0.0, switch=1.0, refine=None), False, True, False),
        (IMG2IMG.replace(strength=0.0, switch=1.0), False, False, False),  # "refine any image"
        (IMG2IMG.replace(strength=0.01), False, False, True),
    ],
)
def test_derived_properties(recipe, inpaints, keeps_source, stops_early):
    assert (recipe.inpaints, recipe.keeps_source, recipe.base_stops_early) == (inpaints, keeps_source, stops_early)


def test_refine_any_recipe_keeps_the_source_and_refines_at_the_given_strength():
    refiner = RefineSettings(model=ModelRef("refiner"), strength=0.45)
    recipe = refine_any_recipe(IMG2IMG.replace(switch=0.7, steps=12), refiner)
    assert recipe == IMG2IMG.replace(steps=12, strength=0.0, switch=1.0, refine=refiner)
    assert refine_any_recipe(BASE, refiner) == BASE.replace(mode="img2img", strength=0.0, switch=1.0, refine=refiner)
