"""The one map between the generation controls and Recipe fields.

Every control that shapes an image is created here (with the ranges the Recipe allows) and read
back here: `recipe_from_values` turns the browser's values into a validated Recipe, and
`values_from_recipe` fills every control from one (Load into Draft, dropped PNGs). Handlers take
the controls as a named set (`inputs=controls.inputs()`), so they get a {component: value} dict,
never a long positional list.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, fields
from typing import Any

import gradio as gr

from pipelines.prompt_syntax import extract_lora_tokens
from pipelines.sizes import SDXL_BUCKETS
from pipelines.recipe import (
    MAX_DRAFTS, MAX_SIDE, MAX_STEPS, MIN_SIDE, PROMPT_SYNTAXES, SCHEDULERS,
    LoraRef, MicroConditioning, ModelRef, Recipe, RefineSettings,
)

CUSTOM_SIZE = "Custom"
SOURCE_SIZE = "Nearest bucket to the source"  # img2img: the SDXL bucket closest to the source's aspect
LORA_SLOTS = 3
NO_LORA = ""
SIZE_ENV = "ATELIER_UI_SIZE"  # default image side in the UI, e.g. "256" or "512x384" (width x height)


def bucket_label(width: int, height: int) -> str:
    return f"{width}×{height}"


SIZE_PRESETS = [bucket_label(w, h) for w, h in SDXL_BUCKETS] + [CUSTOM_SIZE]


def default_size(demo: bool) -> tuple[int, int]:
    """(width, height) the controls start with: $ATELIER_UI_SIZE, else 256 on the demo model, else 1024."""
    text = os.environ.get(SIZE_ENV, "").lower().replace("×", "x")
    if text:
        try:
            parts = [int(p) for p in text.split("x")]
        except ValueError:
            raise ValueError(f"{SIZE_ENV}: expected a side like 256 or WIDTHxHEIGHT like 512x384 (got {text!r})") from None
        return (parts[0], parts[-1])
    return (256, 256) if demo else (1024, 1024)


@dataclass(frozen=True)
class Defaults:
    base: str  # model spec the Recipe names (a hub id, folder, file or "tiny")
    refiner: str | None  # None: the base refines its own drafts
    width: int
    height: int
    steps: int = 20
    loras: tuple[str, ...] = ()  # LoRA names found in the models folder


@dataclass
class SizeControls:
    preset: gr.Dropdown
    width: gr.Number
    height: gr.Number

    def inputs(self) -> set[gr.components.Component]:
        return {self.preset, self.width, self.height}


def render_size_controls(width: int, height: int, *, elem_prefix: str = "", from_source: bool = False) -> SizeControls:
    """A size preset (SDXL buckets, Custom; with `from_source` first "nearest bucket to the source") and
    width/height boxes. A preset fills the boxes; typing in a box makes the preset Custom."""
    if from_source:
        presets, preset = [SOURCE_SIZE, *SIZE_PRESETS], SOURCE_SIZE
    else:
        presets, preset = SIZE_PRESETS, bucket_label(width, height) if (width, height) in SDXL_BUCKETS else CUSTOM_SIZE
    with gr.Row():
        size_preset = gr.Dropdown(presets, value=preset, label="Size (SDXL buckets)", elem_id=f"{elem_prefix}size-preset")
        width_box = gr.Number(width, label="Width", minimum=MIN_SIDE, maximum=MAX_SIDE, step=8, precision=0,
                              elem_id=f"{elem_prefix}width")
        height_box = gr.Number(height, label="Height", minimum=MIN_SIDE, maximum=MAX_SIDE, step=8, precision=0,
                               elem_id=f"{elem_prefix}height")
    quiet = dict(queue=False, show_progress="hidden", api_visibility="private")
    size_preset.change(_preset_to_size, inputs=size_preset, outputs=[width_box, height_box], **quiet)
    for box in (width_box, height_box):  # .input: the user's own typing, not a preset filling the box
        box.input(lambda: CUSTOM_SIZE, outputs=size_preset, **quiet)
    return SizeControls(size_preset, width_box, height_box)


def size_from_values(c: SizeControls, values: dict, source_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(width, height): the nearest SDXL bucket to `source_size` (width, height) when the preset says
    so (as `atelier img2img` without --width/--height), else the boxes."""
    if values[c.preset] == SOURCE_SIZE:
        if source_size is None:
            raise ValueError("size: no source image to take the size from; add one, or choose a size")
        from pipelines.sizes import nearest_bucket

        return nearest_bucket(*source_size)
    return _int(values, c.width, "width"), _int(values, c.height, "height")


@dataclass
class GenerationControls:
    """Components for every Recipe field the user sets (shared by Draft, Img2Img and ControlNet)."""

    prompt: gr.Textbox
    negative: gr.Textbox
    syntax: gr.Radio
    size_preset: gr.Dropdown
    width: gr.Number
    height: gr.Number
    count: gr.Slider
    steps: gr.Slider
    switch: gr.Slider
    scheduler: gr.Dropdown
    guidance: gr.Slider
    random_seed: gr.Checkbox
    seed: gr.Number
    refine_strength: gr.Slider
    watermark: gr.Checkbox
    original_w: gr.Number
    original_h: gr.Number
    target_w: gr.Number
    target_h: gr.Number
    crop_top: gr.Number
    crop_left: gr.Number
    negative_original_w: gr.Number
    negative_original_h: gr.Number
    negative_target_w: gr.Number
    negative_target_h: gr.Number
    negative_crop_top: gr.Number
    negative_crop_left: gr.Number
    aesthetic: gr.Slider
    negative_aesthetic: gr.Slider
    lora_names: tuple[gr.Dropdown, ...]
    lora_weights: tuple[gr.Slider, ...]

    def inputs(self) -> set[gr.components.Component]:
        found: set[gr.components.Component] = set()
        for f in fields(self):
            value = getattr(self, f.name)
            found.update(value if isinstance(value, tuple) else (value,))
        return found


def render_generation_controls(d: Defaults) -> GenerationControls:
    """Create the controls in the current Blocks context (prompt first, details in accordions)."""
    prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt", placeholder="a lighthouse on a cliff at dusk, oil painting")
    negative = gr.Textbox(label="Negative prompt", lines=1, elem_id="negative")
    size = render_size_controls(d.width, d.height)
    size_preset, width, height = size.preset, size.width, size.height
    with gr.Row():
        count = gr.Slider(1, MAX_DRAFTS, value=4, step=1, label="Drafts", elem_id="count")
        steps = gr.Slider(1, MAX_STEPS, value=d.steps, step=1, label="Draft steps", elem_id="steps")
        switch = gr.Slider(0.05, 1.0, value=0.8, step=0.05, label="Switch to refiner at", elem_id="switch")
    with gr.Row():
        scheduler = gr.Dropdown(list(SCHEDULERS), value="Euler", label="Sampler", elem_id="scheduler")
        guidance = gr.Slider(0.0, 20.0, value=5.0, step=0.5, label="Guidance", elem_id="guidance")
        random_seed = gr.Checkbox(True, label="Random seed", elem_id="random-seed")
        seed = gr.Number(0, label="Seed", minimum=0, precision=0, elem_id="seed")
    with gr.Accordion("LoRA (also <lora:name:weight> in the prompt)", open=False):
        names, weights = [], []
        for i in range(LORA_SLOTS):
            with gr.Row():
                names.append(gr.Dropdown([NO_LORA, *d.loras], value=NO_LORA, label=f"LoRA {i + 1}", allow_custom_value=True))
                weights.append(gr.Slider(-2.0, 2.0, value=1.0, step=0.05, label="Weight"))
    with gr.Accordion("Micro-conditioning and refiner (0 = the generated size)", open=False):
        with gr.Row():
            original_w = gr.Number(0, label="Original width", precision=0, minimum=0)
            original_h = gr.Number(0, label="Original height", precision=0, minimum=0)
            target_w = gr.Number(0, label="Target width", precision=0, minimum=0)
            target_h = gr.Number(0, label="Target height", precision=0, minimum=0)
            crop_top = gr.Number(0, label="Crop top", precision=0, minimum=0)
            crop_left = gr.Number(0, label="Crop left", precision=0, minimum=0)
        with gr.Row():
            negative_original_w = gr.Number(0, label="Negative original width", precision=0, minimum=0)
            negative_original_h = gr.Number(0, label="Negative original height", precision=0, minimum=0)
            negative_target_w = gr.Number(0, label="Negative target width", precision=0, minimum=0)
            negative_target_h = gr.Number(0, label="Negative target height", precision=0, minimum=0)
            negative_crop_top = gr.Number(0, label="Negative crop top", precision=0, minimum=0)
            negative_crop_left = gr.Number(0, label="Negative crop left", precision=0, minimum=0)
        with gr.Row():
            aesthetic = gr.Slider(0.0, 10.0, value=6.0, step=0.1, label="Aesthetic score (refiner)")
            negative_aesthetic = gr.Slider(0.0, 10.0, value=2.5, step=0.1, label="Negative aesthetic score")
            refine_strength = gr.Slider(0.05, 1.0, value=0.3, step=0.05, label="Refine strength (switch 1.0 only)")
            syntax = gr.Radio(list(PROMPT_SYNTAXES), value="compel", label="Prompt syntax")
            watermark = gr.Checkbox(True, label="Invisible watermark")
    controls = GenerationControls(
        prompt, negative, syntax, size_preset, width, height, count, steps, switch, scheduler, guidance, random_seed,
        seed, refine_strength, watermark, original_w, original_h, target_w, target_h, crop_top, crop_left,
        negative_original_w, negative_original_h, negative_target_w, negative_target_h, negative_crop_top,
        negative_crop_left, aesthetic, negative_aesthetic, tuple(names), tuple(weights),
    )
    return controls


def _preset_to_size(preset: str):
    for w, h in SDXL_BUCKETS:
        if preset == bucket_label(w, h):
            return w, h
    return gr.update(), gr.update()


def _int(values: dict, component: gr.components.Component, name: str) -> int:
    value = values[component]
    if value is None or value == "":
        raise ValueError(f"{name}: enter a whole number")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{name}: must be a whole number (got {value})")
    return int(value)


def _size(values: dict, w: gr.components.Component, h: gr.components.Component, name: str) -> tuple[int, int] | None:
    width, height = _int(values, w, f"{name} width"), _int(values, h, f"{name} height")
    if width == 0 and height == 0:
        return None
    if width == 0 or height == 0:
        raise ValueError(f"{name}: give both width and height, or 0 for both (the generated size)")
    return (height, width)  # the Recipe's sizes are (height, width), as in diffusers


def recipe_from_values(c: GenerationControls, values: dict, d: Defaults) -> tuple[Recipe, int]:
    """The Recipe and draft count the controls describe; ValueError (naming the field) if invalid."""
    prompt = values[c.prompt] or ""
    if not prompt.strip():
        raise ValueError("prompt: type what the image should show")
    loras: dict[str, float] = {}
    for name_box, weight_box in zip(c.lora_names, c.lora_weights):
        name = (values[name_box] or "").strip()
        if name:
            loras[name] = float(values[weight_box])
    for name, weight in extract_lora_tokens(prompt)[1]:  # <lora:…> tokens in the prompt win over the picker
        loras[name] = weight
    micro = MicroConditioning(
        original_size=_size(values, c.original_w, c.original_h, "original size"),
        target_size=_size(values, c.target_w, c.target_h, "target size"),
        crops_coords_top_left=(_int(values, c.crop_top, "crop top"), _int(values, c.crop_left, "crop left")),
        negative_original_size=_size(values, c.negative_original_w, c.negative_original_h, "negative original size"),
        negative_target_size=_size(values, c.negative_target_w, c.negative_target_h, "negative target size"),
        negative_crops_coords_top_left=(_int(values, c.negative_crop_top, "negative crop top"),
                                        _int(values, c.negative_crop_left, "negative crop left")),
        aesthetic_score=float(values[c.aesthetic]), negative_aesthetic_score=float(values[c.negative_aesthetic]),
    )
    seed = secrets.randbelow(2**32) if values[c.random_seed] else _int(values, c.seed, "seed")
    refiner = ModelRef(d.refiner) if d.refiner else None
    recipe = Recipe(
        model=ModelRef(d.base), prompt=prompt, negative_prompt=values[c.negative] or "", prompt_syntax=values[c.syntax],
        seed=seed, steps=_int(values, c.steps, "steps"), guidance=float(values[c.guidance]),
        scheduler=values[c.scheduler], width=_int(values, c.width, "width"), height=_int(values, c.height, "height"),
        micro=micro, switch=round(float(values[c.switch]), 4),
        refine=RefineSettings(model=refiner, strength=float(values[c.refine_strength])),
        loras=tuple(LoraRef(name, weight=w) for name, w in loras.items()), watermark=bool(values[c.watermark]),
    )
    count = _int(values, c.count, "drafts")
    if not 1 <= count <= MAX_DRAFTS:
        raise ValueError(f"drafts: must be from 1 to {MAX_DRAFTS} (got {count})")
    return recipe, count


def values_from_recipe(c: GenerationControls, recipe: Recipe) -> dict[gr.components.Component, Any]:
    """Every control set from a Recipe (the seed fixed, so the same image can be made again)."""
    m = recipe.micro

    def wh(size):  # (height, width) or None → (width, height) boxes, 0 meaning "generated size"
        return (size[1], size[0]) if size else (0, 0)

    preset = bucket_label(recipe.width, recipe.height)
    values: dict[gr.components.Component, Any] = {
        c.prompt: recipe.prompt, c.negative: recipe.negative_prompt, c.syntax: recipe.prompt_syntax,
        c.size_preset: preset if preset in SIZE_PRESETS else CUSTOM_SIZE, c.width: recipe.width, c.height: recipe.height,
        c.steps: recipe.steps, c.switch: recipe.switch, c.scheduler: recipe.scheduler,
        c.guidance: recipe.guidance, c.random_seed: False, c.watermark: recipe.watermark,
        # A draft made in a batch is made again by the same batch (batching changes float rounding).
        c.seed: recipe.batch_seeds[0] if recipe.batch_seeds else recipe.seed,
        c.count: len(recipe.batch_seeds) if recipe.batch_seeds else 1,
        c.refine_strength: recipe.refine.strength if recipe.refine else 0.3,
        c.crop_top: m.crops_coords_top_left[0], c.crop_left: m.crops_coords_top_left[1],
        c.negative_crop_top: m.negative_crops_coords_top_left[0], c.negative_crop_left: m.negative_crops_coords_top_left[1],
        c.aesthetic: m.aesthetic_score, c.negative_aesthetic: m.negative_aesthetic_score,
    }
    for (w_box, h_box), size in (((c.original_w, c.original_h), m.original_size), ((c.target_w, c.target_h), m.target_size),
                                 ((c.negative_original_w, c.negative_original_h), m.negative_original_size),
                                 ((c.negative_target_w, c.negative_target_h), m.negative_target_size)):
        values[w_box], values[h_box] = wh(size)
    in_prompt = {name for name, _ in extract_lora_tokens(recipe.prompt)[1]}
    picked = [lora for lora in recipe.loras if lora.name not in in_prompt][:LORA_SLOTS]
    for i, (name_box, weight_box) in enumerate(zip(c.lora_names, c.lora_weights)):
        values[name_box] = picked[i].name if i < len(picked) else NO_LORA
        values[weight_box] = picked[i].weight if i < len(picked) else 1.0
    return values
