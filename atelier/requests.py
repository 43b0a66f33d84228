"""One way from a front end's plain values to a Recipe: the web UI and the CLI both build a
`GenerationRequest` and call `build_recipe`, so the same request gives the same Recipe.

Torch-free (standard library, the Recipe and the prompt parser): the CLI validates a request before
it imports anything heavy. Defaults come from the Recipe's own fields; the rules that decide a value
the user left open (seed, prompt syntax, size of an img2img, LoRAs named in the prompt) live here once.
A Draft request becomes a `DraftPlan` (`plan_drafts`): one batch of a Recipe, or — for a dynamic prompt
(atelier/prompt_expansion.py) or a parameter sweep (atelier/sweeps.py) — one Recipe per draft.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from atelier.prompt_expansion import is_dynamic, resolve_prompts, wildcards_folder  # noqa: F401 (wildcards_folder)
from atelier.sweeps import Sweep, parse_sweep, swept_recipes
from pipelines.prompt_syntax import detect_syntax, merge_prompt_loras, prompt_warnings
from pipelines.recipe import (
    MAX_DRAFTS,
    MAX_REQUEST_PIXELS,
    MAX_SEED,
    MAX_SIDE,
    NO_EXPAND,
    PROMPT_SYNTAXES,
    LoraRef,
    MicroConditioning,
    ModelRef,
    Recipe,
    RefineSettings,
    check_expand,
    check_prompt_length,
    refine_any_recipe,
)
from pipelines.sizes import own_size

PROMPT_SYNTAX_ENV = "ATELIER_PROMPT_SYNTAX"
AUTO_SYNTAX = "auto"  # A1111 constructs select A1111 parsing, anything else compel; the Recipe records which
REQUEST_SYNTAXES = (AUTO_SYNTAX, *PROMPT_SYNTAXES)
IMG2IMG_MAX_SIDE_ENV = "ATELIER_IMG2IMG_MAX_SIDE"  # img2img's default size: the source's, at most this side
IMG2IMG_MAX_SIDE = 1024
RANDOM_SEED_BELOW = 2**32  # random seeds are 32-bit, as in A1111/ComfyUI, so people can type them


def _recipe_default(cls: type, name: str):
    for f in fields(cls):
        if f.name == name:
            return f.default if f.default is not MISSING else f.default_factory()
    raise KeyError(name)


# The defaults every front end shows: the Recipe's own.
DEFAULT_STEPS: int = _recipe_default(Recipe, "steps")
DEFAULT_GUIDANCE: float = _recipe_default(Recipe, "guidance")
DEFAULT_SCHEDULER: str = _recipe_default(Recipe, "scheduler")
DEFAULT_SWITCH: float = _recipe_default(Recipe, "switch")
DEFAULT_WIDTH: int = _recipe_default(Recipe, "width")
DEFAULT_HEIGHT: int = _recipe_default(Recipe, "height")
DEFAULT_REFINE_STRENGTH: float = _recipe_default(RefineSettings, "strength")
DEFAULT_AESTHETIC: float = _recipe_default(MicroConditioning, "aesthetic_score")
DEFAULT_NEGATIVE_AESTHETIC: float = _recipe_default(MicroConditioning, "negative_aesthetic_score")
DEFAULT_COUNT = 4
DEFAULT_IMG2IMG_STRENGTH = 0.6
# Vary: the variation strength of the presets (A1111's "variation strength": the starting noise slerped
# towards a variation seed's). Fooocus' Vary (Subtle / Strong) re-noise the image instead (img2img at 0.5 /
# 0.85); here the draft's own noise is varied, so it stays at the same switch and refinable.
VARY_SUBTLE = 0.1
VARY_STRONG = 0.4


@dataclass(frozen=True)
class ModelChoice:
    base: str  # model spec the Recipe names (a hub id, folder, file, models-folder name or "tiny")
    refiner: str | None  # None: the base refines its own drafts
    demo: bool = False  # True when no SDXL weights were found and the random-weight tiny model stands in


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """What a user asked for, as plain values. `None` means "not said": the rules below decide."""

    prompt: str
    negative: str = ""
    syntax: str | None = None  # "auto", "compel" or "a1111"; None: $ATELIER_PROMPT_SYNTAX, else auto
    seed: int | None = None  # None: a random seed
    count: int = DEFAULT_COUNT
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    scheduler: str = DEFAULT_SCHEDULER
    width: int | None = None  # None: DEFAULT_WIDTH, or for img2img the source's own size
    height: int | None = None
    switch: float = DEFAULT_SWITCH
    refine_strength: float = DEFAULT_REFINE_STRENGTH
    micro: MicroConditioning = field(default_factory=MicroConditioning)
    loras: tuple[LoraRef, ...] = ()  # picked in a LoRA list or with --lora; prompt tokens are merged in
    watermark: bool = True
    # img2img: a source image's (width, height), and how much of it to re-noise
    source_size: tuple[int, int] | None = None
    strength: float | None = None
    refine_only: bool = False  # the refiner alone on the source, at refine_strength
    # img2img only. What a masked area starts from ("original" or "noise", Recipe.masked_content; "noise" needs
    # a mask or an expand), and an outpaint border (left, top, right, bottom px, multiples of 8): the Recipe's
    # size is then the canvas, the size above (or the source's own) plus the border.
    masked_content: str = "original"
    expand: tuple[int, int, int, int] = NO_EXPAND
    # Inpainting only: a dedicated inpainting checkpoint (9-channel UNet; a models-folder name, file or folder)
    # that inpaints in the base's place. Recorded by with_inpaint_model once the mask is known.
    inpaint_model: str | None = None
    # Drafts only: every combination of a dynamic prompt (else random draws, seeded by each draft's seed),
    # and a parameter sweep "PARAMETER=V1,V2,…" (one draft per value; `count` is not used).
    combinatorial: bool = False
    sweep: str = ""

    def __post_init__(self) -> None:
        check_request_limits(self)  # on construction: before any front end parses the prompt or loads a model


def default_prompt_syntax() -> str:
    """$ATELIER_PROMPT_SYNTAX ("auto", "compel" or "a1111"; default auto): how prompts are read unless a
    request says otherwise."""
    value = os.environ.get(PROMPT_SYNTAX_ENV, AUTO_SYNTAX).strip().lower()
    if value not in REQUEST_SYNTAXES:
        raise ValueError(f"{PROMPT_SYNTAX_ENV}: must be one of {', '.join(REQUEST_SYNTAXES)} (got {value!r})")
    return value


def resolved_syntax(prompt: str, negative: str, syntax: str | None) -> str:
    """The syntax a prompt is read with: the one asked for, or for "auto" the one its constructs call
    for (A1111 when the prompt or the negative uses an A1111-only construct)."""
    syntax = syntax or default_prompt_syntax()
    if syntax not in REQUEST_SYNTAXES:
        raise ValueError(f"prompt_syntax: must be one of {', '.join(REQUEST_SYNTAXES)} (got {syntax!r})")
    if syntax != AUTO_SYNTAX:
        return syntax
    return "a1111" if "a1111" in (detect_syntax(prompt), detect_syntax(negative or "")) else "compel"


def recipe_warnings(recipe: Recipe) -> list[str]:
    """What in the recipe's prompts will not do what the user probably meant (shown, never refused)."""
    return [
        *prompt_warnings(recipe.prompt, recipe.prompt_syntax),
        *(f"negative: {w}" for w in prompt_warnings(recipe.negative_prompt, recipe.prompt_syntax)),
    ]


def img2img_max_side() -> int:
    text = os.environ.get(IMG2IMG_MAX_SIDE_ENV, "").strip()
    if not text:
        return IMG2IMG_MAX_SIDE
    if not text.isdigit() or not 64 <= int(text) <= 4096:
        raise ValueError(f"{IMG2IMG_MAX_SIDE_ENV}: expected a whole number from 64 to 4096 (got {text!r})")
    return int(text)


def random_seed() -> int:
    return secrets.randbelow(RANDOM_SEED_BELOW)


def request_size(request: GenerationRequest) -> tuple[int, int]:
    """(width, height): as given; else for img2img the source's own size (multiples of 8, longest side
    at most $ATELIER_IMG2IMG_MAX_SIDE); else the Recipe's default."""
    if (request.width is None) != (request.height is None):
        raise ValueError("size: give both width and height, or neither")
    if request.width is not None:
        return request.width, request.height
    if request.source_size is not None:
        return own_size(*request.source_size, max_side=img2img_max_side())
    return DEFAULT_WIDTH, DEFAULT_HEIGHT


def check_request_limits(request: GenerationRequest) -> None:
    """What a request may ask of the server (pipelines/recipe.py's MAX_* limits), checked before its prompt
    is parsed at all: a 1 MB prompt is refused here in microseconds."""
    for name, text in (("prompt", request.prompt), ("negative_prompt", request.negative)):
        if text is not None and not isinstance(text, str):
            raise ValueError(f"{name}: must be text (got {type(text).__name__})")
        check_prompt_length(name, text or "")


def check_plan_pixels(recipes: list[Recipe] | tuple[Recipe, ...], count: int = 1) -> None:
    """Width × height × drafts of one request within MAX_REQUEST_PIXELS (`count` copies of one recipe, or
    one of each)."""
    total = count * sum(r.width * r.height for r in recipes)
    if total > MAX_REQUEST_PIXELS:
        raise ValueError(
            f"drafts × size: {total} pixels in one request is over the limit of {MAX_REQUEST_PIXELS} "
            "(e.g. 16 drafts at 1024×1024); make fewer drafts or smaller ones"
        )


def build_recipe(request: GenerationRequest, models: ModelChoice) -> Recipe:
    """The validated Recipe of a request (ValueError naming the field and what is allowed)."""
    if not isinstance(request.prompt, str) or not request.prompt.strip():
        raise ValueError("prompt: type what the image should show")
    if not isinstance(request.count, int) or not 1 <= request.count <= MAX_DRAFTS:
        raise ValueError(f"drafts: must be from 1 to {MAX_DRAFTS} (got {request.count})")
    width, height = request_size(request)
    refiner = ModelRef(models.refiner) if models.refiner else None
    recipe = Recipe(
        model=ModelRef(models.base),
        prompt=request.prompt,
        negative_prompt=request.negative or "",
        prompt_syntax=resolved_syntax(request.prompt, request.negative, request.syntax),
        seed=random_seed() if request.seed is None else request.seed,
        steps=request.steps,
        guidance=float(request.guidance),
        scheduler=request.scheduler,
        width=width,
        height=height,
        micro=request.micro,
        switch=round(float(request.switch), 4),
        refine=RefineSettings(model=refiner, strength=float(request.refine_strength)),
        loras=merge_prompt_loras(request.loras, request.prompt),
        watermark=bool(request.watermark),
    )
    if request.strength is None and not request.refine_only:
        if request.source_size is not None:
            raise ValueError("strength: an img2img needs a denoise strength from 0 to 1")
        if request.masked_content != "original" or tuple(request.expand) != NO_EXPAND:
            raise ValueError("masked_content, expand: inpainting and outpainting need img2img (a source image)")
        if request.inpaint_model:
            raise ValueError("inpaint_model: inpainting needs img2img (a source image and a mask)")
        return recipe
    if request.source_size is None:
        raise ValueError("image: img2img needs a source image")
    if request.refine_only:
        if recipe.refine is None:
            raise ValueError("refine-only: needs a refine stage (a refiner, or 'base')")
        return _outpainted(refine_any_recipe(recipe, recipe.refine), request)
    return _outpainted(recipe.replace(mode="img2img", strength=float(request.strength)), request)


def with_inpaint_model(recipe: Recipe, name: str | None) -> Recipe:
    """The recipe (its mask or expand already recorded) with a dedicated inpainting checkpoint; None: as is."""
    if not name:
        return recipe
    if not recipe.inpaints:
        raise ValueError(f"inpaint_model: {name!r} needs something to inpaint (a mask or an expand)")
    return recipe.replace(inpaint_model=ModelRef(name))


def _outpainted(recipe: Recipe, request: GenerationRequest) -> Recipe:
    """The img2img recipe with the request's masked content and expansion; its size becomes the canvas."""
    expand = tuple(request.expand) if isinstance(request.expand, (list, tuple)) else request.expand
    check_expand(expand)
    left, top, right, bottom = expand
    width, height = recipe.width + left + right, recipe.height + top + bottom
    if max(width, height) > MAX_SIDE:
        raise ValueError(
            f"expand: the canvas would be {width}×{height} (the source's {recipe.width}×{recipe.height} plus "
            f"{expand}); each side must be at most {MAX_SIDE} px"
        )
    recipe = recipe.replace(masked_content=request.masked_content, expand=expand, width=width, height=height)
    return with_inpaint_model(recipe, request.inpaint_model) if recipe.inpaints else recipe


@dataclass(frozen=True)
class DraftPlan:
    """What one Draft request makes. Plain: `count` drafts of `recipe` in one batch (seeds seed, seed+1, …).
    A dynamic prompt or a sweep: `each`, one recipe per draft, each made alone (Studio.draft_each), with a
    caption per draft in `labels` (its resolved prompt, or its sweep value)."""

    recipe: Recipe  # the batch's recipe; with `each`, the first draft's
    count: int
    each: tuple[Recipe, ...] = ()
    labels: tuple[str, ...] = ()
    sweep: Sweep | None = None


def plan_drafts(request: GenerationRequest, models: ModelChoice, *, wildcards: Path | None = None) -> DraftPlan:
    """The validated draft recipes of a request (ValueError naming the field, before any model work).
    `wildcards`: the folder of `__name__` wildcard files (prompt_expansion.wildcards_folder(home))."""
    sweep = parse_sweep(request.sweep)
    if sweep is not None and request.combinatorial:
        raise ValueError("sweep: cannot be combined with combinatorial prompts; a sweep's cells share one prompt")
    if not isinstance(request.count, int) or not 1 <= request.count <= MAX_DRAFTS:
        raise ValueError(f"drafts: must be from 1 to {MAX_DRAFTS} (got {request.count})")
    request = dataclasses.replace(request, seed=random_seed() if request.seed is None else request.seed)
    if not is_dynamic(request.prompt):
        recipe = build_recipe(request, models)
        if sweep is None:
            check_plan_pixels([recipe], request.count)
            return DraftPlan(recipe=recipe, count=request.count)
    else:  # a sweep's cells share the prompt drawn with the request's seed
        count = 1 if sweep is not None else request.count
        if request.seed + count - 1 > MAX_SEED:
            raise ValueError(f"seed: must leave room for {count} consecutive seeds (got {request.seed})")
        seeds = [request.seed + i for i in range(count)]
        prompts = resolve_prompts(request.prompt, seeds, combinatorial=request.combinatorial, wildcards=wildcards)
        each = tuple(_resolved(request, models, prompt, seed) for prompt, seed in zip(prompts, seeds))
        if sweep is None:
            check_plan_pixels(each)
            return DraftPlan(recipe=each[0], count=len(each), each=each, labels=tuple(prompts))
        recipe = each[0]
    cells = tuple(swept_recipes(recipe, sweep))
    check_plan_pixels(cells)
    return DraftPlan(recipe=cells[0], count=len(cells), each=cells, labels=sweep.labels, sweep=sweep)


def _resolved(request: GenerationRequest, models: ModelChoice, prompt: str, seed: int) -> Recipe:
    """The draft recipe of one prompt a template gave, made alone, recording the template."""
    recipe = build_recipe(dataclasses.replace(request, prompt=prompt, seed=seed), models)
    return recipe.replace(stage="draft", prompt_template=request.prompt)


def build_one_recipe(request: GenerationRequest, models: ModelChoice, *, wildcards: Path | None = None) -> Recipe:
    """The Recipe of a one-image request (img2img, inpaint, ControlNet): a dynamic prompt (`{a|b}`,
    `__wildcard__` files in `wildcards`) drawn with the request's seed, the template recorded, as a draft's."""
    if not is_dynamic(request.prompt):
        return build_recipe(request, models)
    seed = random_seed() if request.seed is None else request.seed
    prompt = resolve_prompts(request.prompt, [seed], wildcards=wildcards)[0]
    recipe = build_recipe(dataclasses.replace(request, prompt=prompt, seed=seed), models)
    return recipe.replace(prompt_template=request.prompt)


def varied_recipes(parent: Recipe, *, strength: float, count: int, variation_seed: int | None = None) -> list[Recipe]:
    """The draft recipes of `count` variations of `parent` (a txt2img generation): its seed, each with
    its own variation seed — `variation_seed`, +1, … (random when None) — at `strength`, made alone."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_DRAFTS:
        raise ValueError(f"count: must be an integer from 1 to {MAX_DRAFTS} (got {count!r})")
    if parent.mode != "txt2img":
        raise ValueError("vary: only txt2img images can be varied (an img2img one starts from its source image)")
    if parent.variation_strength > 0:
        raise ValueError(
            f"vary: this image is itself a variation (variation seed {parent.variation_seed} at strength "
            f"{parent.variation_strength}); vary the image it was varied from instead"
        )
    first = random_seed() if variation_seed is None else variation_seed
    draft = parent.replace(stage="draft", batch_seeds=(), watermark_applied=None)
    recipes = [draft.replace(variation_seed=first, variation_strength=strength)]  # validates seed and strength
    if first + count - 1 > MAX_SEED:
        raise ValueError(f"variation_seed: must leave room for {count} consecutive seeds (got {first})")
    check_plan_pixels(recipes, count)  # each variation the parent's size
    return recipes + [recipes[0].replace(variation_seed=first + i) for i in range(1, count)]
