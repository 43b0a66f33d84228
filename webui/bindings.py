"""The one map between the generation controls and Recipe fields.

Every control that shapes an image is created here (with the ranges the Recipe allows) and read
back here: `recipe_from_values` turns the browser's values into a validated Recipe, and
`values_from_recipe` fills every control from one (Load into Draft, dropped PNGs). Handlers take
the controls as a named set (`inputs=controls.inputs()`), so they get a {component: value} dict,
never a long positional list.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import gradio as gr

from atelier import requests
from atelier.requests import GenerationRequest, ModelChoice
from pipelines.prompt_syntax import extract_lora_tokens, prompt_warnings
from pipelines.recipe import MAX_DRAFTS, MAX_STEPS, SCHEDULERS, LoraRef, MicroConditioning, Recipe
from pipelines.sizes import SDXL_BUCKETS, own_size

CUSTOM_SIZE = "Custom"
SOURCE_SIZE = "Source's own size"  # img2img: the source's size (multiples of 8, capped), as `atelier img2img`
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
            raise ValueError(
                f"{SIZE_ENV}: expected a side like 256 or WIDTHxHEIGHT like 512x384 (got {text!r})"
            ) from None
        return (parts[0], parts[-1])
    return (256, 256) if demo else (1024, 1024)


@dataclass(frozen=True)
class Defaults:
    models: ModelChoice  # what the Recipe names as base and refiner
    width: int
    height: int
    loras: tuple[str, ...] = ()  # usable LoRA names found in the models folder
    unusable_loras: tuple[tuple[str, str], ...] = ()  # (name, why) of LoRA files that cannot be used


def lora_note_text(unusable: tuple[tuple[str, str], ...] | list) -> str:
    """A line per unusable LoRA file, with the reason (a corrupt or foreign file is never offered)."""
    return "  \n".join(f"⚠ **{name}** is unusable: {why}" for name, why in unusable)


def lora_lists(rows: list[dict]) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """(usable names, (name, why) of unusable files) from the studio's LoRA list."""
    usable = tuple(row["name"] for row in rows if "error" not in row)
    unusable = tuple((row["name"], row["error"]) for row in rows if "error" in row)
    return usable, unusable


@dataclass
class SizeControls:
    preset: gr.Dropdown
    width: gr.Number
    height: gr.Number

    def inputs(self) -> set[gr.components.Component]:
        return {self.preset, self.width, self.height}


def render_size_controls(width: int, height: int, *, elem_prefix: str = "", from_source: bool = False) -> SizeControls:
    """A size preset (SDXL buckets, Custom; with `from_source` first "the source's own size") and
    width/height boxes. A preset fills the boxes; typing in a box makes the preset Custom."""
    if from_source:
        presets, preset = [SOURCE_SIZE, *SIZE_PRESETS], SOURCE_SIZE
    else:
        presets, preset = SIZE_PRESETS, bucket_label(width, height) if (width, height) in SDXL_BUCKETS else CUSTOM_SIZE
    with gr.Row():
        size_preset = gr.Dropdown(
            presets, value=preset, label="Size (SDXL buckets)", elem_id=f"{elem_prefix}size-preset"
        )
        # No minimum/maximum on the boxes: Gradio would refuse the event with an "Error" badge on every
        # output; the Recipe's own check says what is allowed, in a message that keeps the outputs.
        width_box = gr.Number(width, label="Width", step=8, precision=0, elem_id=f"{elem_prefix}width")
        height_box = gr.Number(height, label="Height", step=8, precision=0, elem_id=f"{elem_prefix}height")
    quiet = dict(queue=False, show_progress="hidden", api_visibility="private")
    size_preset.change(_preset_to_size, inputs=size_preset, outputs=[width_box, height_box], **quiet)
    for box in (width_box, height_box):  # .input: the user's own typing, not a preset filling the box
        box.input(lambda: CUSTOM_SIZE, outputs=size_preset, **quiet)
    return SizeControls(size_preset, width_box, height_box)


def size_from_values(c: SizeControls, values: dict, source_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(width, height): the source's own size (`source_size`, capped as `atelier img2img` without
    --width/--height does) when the preset says so, else the boxes."""
    if values[c.preset] == SOURCE_SIZE:
        if source_size is None:
            raise ValueError("size: no source image to take the size from; add one, or choose a size")
        return own_size(*source_size, max_side=requests.img2img_max_side())
    return _int(values, c.width, "width"), _int(values, c.height, "height")


@dataclass(kw_only=True)
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
    lora_refresh: gr.Button  # not an input: reads the LoRA folder again
    lora_note: gr.Markdown  # not an input: unusable LoRA files and why

    def inputs(self) -> set[gr.components.Component]:
        found: set[gr.components.Component] = set()
        for f in fields(self):
            if f.name in ("lora_refresh", "lora_note"):
                continue
            value = getattr(self, f.name)
            found.update(value if isinstance(value, tuple) else (value,))
        return found


def syntax_note_text(prompt: str | None, negative: str | None, syntax: str | None) -> str:
    """Which syntax the prompt will be read with (and what will not work), shown beside the choice."""
    try:
        chosen = requests.resolved_syntax(prompt or "", negative or "", syntax)
        warnings = prompt_warnings(prompt or "", chosen)
    except ValueError as error:
        return f"⚠ {error}"
    how = f"read as **{chosen}**" + (" (auto)" if syntax == requests.AUTO_SYNTAX else "")
    return "  \n".join([how, *(f"⚠ {w}" for w in warnings)])


def render_generation_controls(d: Defaults) -> GenerationControls:
    """Create the controls in the current Blocks context (prompt first, details in accordions)."""
    prompt = gr.Textbox(
        label="Prompt", lines=3, elem_id="prompt", placeholder="a lighthouse on a cliff at dusk, oil painting"
    )
    negative = gr.Textbox(label="Negative prompt", lines=1, elem_id="negative")
    with gr.Row():
        syntax = gr.Radio(
            list(requests.REQUEST_SYNTAXES),
            value=requests.default_prompt_syntax(),
            label="Prompt syntax",
            elem_id="syntax",
            scale=2,
        )
        syntax_note = gr.Markdown(syntax_note_text("", "", requests.default_prompt_syntax()), elem_id="syntax-note")
    quiet = dict(queue=False, show_progress="hidden", api_visibility="private")
    for trigger in (prompt.change, negative.change, syntax.change):
        trigger(syntax_note_text, inputs=[prompt, negative, syntax], outputs=syntax_note, **quiet)
    size = render_size_controls(d.width, d.height)
    with gr.Row():
        count = gr.Slider(1, MAX_DRAFTS, value=requests.DEFAULT_COUNT, step=1, label="Drafts", elem_id="count")
        steps = gr.Slider(1, MAX_STEPS, value=requests.DEFAULT_STEPS, step=1, label="Draft steps", elem_id="steps")
        switch = gr.Slider(
            0.05, 1.0, value=requests.DEFAULT_SWITCH, step=0.05, label="Switch to refiner at", elem_id="switch"
        )
    with gr.Row():  # two to a row: the sliders' labels and limits stay readable in a narrow column
        scheduler = gr.Dropdown(
            list(SCHEDULERS), value=requests.DEFAULT_SCHEDULER, label="Sampler", elem_id="scheduler"
        )
        guidance = gr.Slider(0.0, 20.0, value=requests.DEFAULT_GUIDANCE, step=0.5, label="Guidance", elem_id="guidance")
    with gr.Row():
        seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")
        random_seed = gr.Checkbox(True, label="Random seed", elem_id="random-seed")
    with gr.Accordion("LoRA (also <lora:name:weight> in the prompt, whose weight wins)", open=False):
        names, weights = [], []
        for i in range(LORA_SLOTS):
            with gr.Row():
                names.append(
                    gr.Dropdown(
                        [NO_LORA, *d.loras],
                        value=NO_LORA,
                        label=f"LoRA {i + 1}",
                        allow_custom_value=True,
                        elem_id=f"lora-{i}",
                    )
                )
                weights.append(gr.Slider(-2.0, 2.0, value=1.0, step=0.05, label="Weight", elem_id=f"lora-weight-{i}"))
        with gr.Row():
            lora_refresh = gr.Button("↻ Refresh LoRA list", size="sm", elem_id="lora-refresh")
            lora_note = gr.Markdown(lora_note_text(d.unusable_loras), elem_id="lora-note")
    with gr.Accordion("Micro-conditioning and refiner (0 = the generated size)", open=False):
        micro = _render_micro_controls()
        with gr.Row():
            refine_strength = gr.Slider(
                0.05,
                1.0,
                value=requests.DEFAULT_REFINE_STRENGTH,
                step=0.05,
                label="Refine strength (switch 1.0 only)",
                elem_id="refine-strength",
            )
            watermark = gr.Checkbox(True, label="Invisible watermark", elem_id="watermark")
    return GenerationControls(
        prompt=prompt,
        negative=negative,
        syntax=syntax,
        size_preset=size.preset,
        width=size.width,
        height=size.height,
        count=count,
        steps=steps,
        switch=switch,
        scheduler=scheduler,
        guidance=guidance,
        random_seed=random_seed,
        seed=seed,
        refine_strength=refine_strength,
        watermark=watermark,
        lora_names=tuple(names),
        lora_weights=tuple(weights),
        lora_refresh=lora_refresh,
        lora_note=lora_note,
        **micro,
    )


def _render_micro_controls() -> dict[str, gr.components.Component]:
    """The SDXL micro-conditioning boxes and the refiner's aesthetic scores, by GenerationControls field."""
    boxes: dict[str, gr.components.Component] = {}
    for prefix, label in (("", ""), ("negative_", "Negative ")):
        with gr.Row():
            for name, text in (
                ("original_w", "original width"),
                ("original_h", "original height"),
                ("target_w", "target width"),
                ("target_h", "target height"),
                ("crop_top", "crop top"),
                ("crop_left", "crop left"),
            ):
                caption = f"{label}{text}" if label else text.capitalize()
                boxes[prefix + name] = gr.Number(
                    0, label=caption, precision=0, elem_id=(prefix + name).replace("_", "-")
                )
    with gr.Row():
        boxes["aesthetic"] = gr.Slider(
            0.0,
            10.0,
            value=requests.DEFAULT_AESTHETIC,
            step=0.1,
            label="Aesthetic score (refiner)",
            elem_id="aesthetic",
        )
        boxes["negative_aesthetic"] = gr.Slider(
            0.0,
            10.0,
            value=requests.DEFAULT_NEGATIVE_AESTHETIC,
            step=0.1,
            label="Negative aesthetic score",
            elem_id="negative-aesthetic",
        )
    return boxes


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


def request_from_values(
    c: GenerationControls,
    values: dict,
    *,
    source_size: tuple[int, int] | None = None,
    size: tuple[int, int] | None = None,
    strength: float | None = None,
    **img2img: Any,
) -> GenerationRequest:
    """The request the controls describe (img2img: the source's size, the size chosen for it, the
    strength, and GenerationRequest's masked_content / expand in `img2img`); field errors name the field."""
    loras = tuple(
        LoraRef(name=(values[n] or "").strip(), weight=float(values[w]))
        for n, w in zip(c.lora_names, c.lora_weights)
        if (values[n] or "").strip()
    )
    micro = MicroConditioning(
        original_size=_size(values, c.original_w, c.original_h, "original size"),
        target_size=_size(values, c.target_w, c.target_h, "target size"),
        crops_coords_top_left=(_int(values, c.crop_top, "crop top"), _int(values, c.crop_left, "crop left")),
        negative_original_size=_size(values, c.negative_original_w, c.negative_original_h, "negative original size"),
        negative_target_size=_size(values, c.negative_target_w, c.negative_target_h, "negative target size"),
        negative_crops_coords_top_left=(
            _int(values, c.negative_crop_top, "negative crop top"),
            _int(values, c.negative_crop_left, "negative crop left"),
        ),
        aesthetic_score=float(values[c.aesthetic]),
        negative_aesthetic_score=float(values[c.negative_aesthetic]),
    )
    width, height = size or (_int(values, c.width, "width"), _int(values, c.height, "height"))
    return GenerationRequest(
        prompt=values[c.prompt] or "",
        negative=values[c.negative] or "",
        syntax=values[c.syntax],
        seed=None if values[c.random_seed] else _int(values, c.seed, "seed"),
        count=_int(values, c.count, "drafts"),
        steps=_int(values, c.steps, "steps"),
        guidance=float(values[c.guidance]),
        scheduler=values[c.scheduler],
        width=width,
        height=height,
        switch=float(values[c.switch]),
        refine_strength=float(values[c.refine_strength]),
        micro=micro,
        loras=loras,
        watermark=bool(values[c.watermark]),
        source_size=source_size,
        strength=strength,
        **img2img,
    )


def recipe_from_values(c: GenerationControls, values: dict, d: Defaults) -> tuple[Recipe, int]:
    """The Recipe and draft count the controls describe; ValueError (naming the field) if invalid."""
    request = request_from_values(c, values)
    return requests.build_recipe(request, d.models), request.count


def one_recipe_from_values(c: GenerationControls, values: dict, d: Defaults, *, wildcards: Path) -> Recipe:
    """The Recipe of a one-image tab (ControlNet): a dynamic prompt (`{a|b}`, `__wildcard__` from `wildcards`)
    drawn with the seed, its template recorded; ValueError (naming the field) if invalid."""
    return requests.build_one_recipe(request_from_values(c, values), d.models, wildcards=wildcards)


def plan_from_values(
    c: GenerationControls, values: dict, d: Defaults, *, sweep: str = "", combinatorial: bool = False, wildcards: Path
) -> requests.DraftPlan:
    """The Draft tab's drafts: a batch, or for a dynamic prompt (`{a|b}`, `__wildcard__` from `wildcards`) or
    a sweep ("guidance=3,5,7") one recipe per draft; ValueError (naming the field) if invalid."""
    request = request_from_values(c, values)
    request = dataclasses.replace(request, sweep=(sweep or "").strip(), combinatorial=bool(combinatorial))
    return requests.plan_drafts(request, d.models, wildcards=wildcards)


def named_controls(c: GenerationControls) -> dict[str, gr.components.Component]:
    """Every input control by a stable name ("steps", "lora_names.0", …): how settings are remembered."""
    named: dict[str, gr.components.Component] = {}
    for f in fields(c):
        value = getattr(c, f.name)
        if isinstance(value, tuple):
            named.update({f"{f.name}.{i}": box for i, box in enumerate(value)})
        elif f.name not in ("lora_refresh", "lora_note"):
            named[f.name] = value
    return named


def remembered_settings(c: GenerationControls, values: dict) -> dict[str, Any]:
    """The controls' values by name, for the browser to keep (a reload starts where the user left off)."""
    return {name: values[box] for name, box in named_controls(c).items() if box in values}


def restored_settings(c: GenerationControls, saved: dict | None) -> dict[gr.components.Component, Any]:
    """The remembered values back into the controls (names this version no longer has are skipped)."""
    if not isinstance(saved, dict):
        return {}
    named = named_controls(c)
    return {named[name]: value for name, value in saved.items() if name in named}


def values_from_recipe(c: GenerationControls, recipe: Recipe) -> dict[gr.components.Component, Any]:
    """Every control set from a Recipe (the seed fixed, so the same image can be made again)."""
    m = recipe.micro

    def wh(size):  # (height, width) or None → (width, height) boxes, 0 meaning "generated size"
        return (size[1], size[0]) if size else (0, 0)

    preset = bucket_label(recipe.width, recipe.height)
    values: dict[gr.components.Component, Any] = {
        c.prompt: recipe.prompt,
        c.negative: recipe.negative_prompt,
        c.syntax: recipe.prompt_syntax,
        c.size_preset: preset if preset in SIZE_PRESETS else CUSTOM_SIZE,
        c.width: recipe.width,
        c.height: recipe.height,
        c.steps: recipe.steps,
        c.switch: recipe.switch,
        c.scheduler: recipe.scheduler,
        c.guidance: recipe.guidance,
        c.random_seed: False,
        c.watermark: recipe.watermark,
        # A draft made in a batch is made again by the same batch (batching changes float rounding).
        c.seed: recipe.batch_seeds[0] if recipe.batch_seeds else recipe.seed,
        c.count: len(recipe.batch_seeds) if recipe.batch_seeds else 1,
        c.refine_strength: recipe.refine.strength if recipe.refine else requests.DEFAULT_REFINE_STRENGTH,
        c.crop_top: m.crops_coords_top_left[0],
        c.crop_left: m.crops_coords_top_left[1],
        c.negative_crop_top: m.negative_crops_coords_top_left[0],
        c.negative_crop_left: m.negative_crops_coords_top_left[1],
        c.aesthetic: m.aesthetic_score,
        c.negative_aesthetic: m.negative_aesthetic_score,
    }
    for (w_box, h_box), size in (
        ((c.original_w, c.original_h), m.original_size),
        ((c.target_w, c.target_h), m.target_size),
        ((c.negative_original_w, c.negative_original_h), m.negative_original_size),
        ((c.negative_target_w, c.negative_target_h), m.negative_target_size),
    ):
        values[w_box], values[h_box] = wh(size)
    in_prompt = {name for name, _ in extract_lora_tokens(recipe.prompt)[1]}
    picked = [lora for lora in recipe.loras if lora.name not in in_prompt][:LORA_SLOTS]
    for i, (name_box, weight_box) in enumerate(zip(c.lora_names, c.lora_weights)):
        values[name_box] = picked[i].name if i < len(picked) else NO_LORA
        values[weight_box] = picked[i].weight if i < len(picked) else 1.0
    return values
