"""The Recipe: everything needed to reproduce one image. Standard library only.

One language for the UI, the engine and the gallery. Frozen and validated on construction: a bad
value raises ValueError naming the field and what is allowed, before any model work. JSON
round-trips exactly; upgrading recipes written by older versions happens only in `from_json`.

Sizes follow diffusers' convention: (height, width).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from pipelines.limited_json import MAX_JSON_DEPTH, loads_limited_json  # noqa: F401 (re-exported)

SCHEMA_VERSION = 1

SCHEDULERS = ("Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE Karras", "DDIM", "UniPC", "LCM")
MODES = ("txt2img", "img2img")
INPAINT_AREAS = ("whole", "masked")  # inpaint the whole image, or only the mask's box (plus padding) at full size
MAX_MASK_BLUR = 64
MAX_INPAINT_PADDING = 1024
# What the masked area starts from (A1111's "Masked content"): "original" the source re-noised to the strength;
# "noise" fresh seeded latent noise instead of the source there (A1111's "latent noise"), for new content.
MASKED_CONTENTS = ("original", "noise")
MAX_EXPAND = 1024  # outpaint: px added per side
NO_EXPAND = (0, 0, 0, 0)
# "draft": the base stopped at `switch`, its noisy latent kept; "final": the finished image
# (refined when `refine` is set, otherwise the base ran to the end).
STAGES = ("draft", "final")
PROMPT_SYNTAXES = ("compel", "a1111")

MIN_SIDE, MAX_SIDE = 64, 4096
MAX_STEPS = 500
MAX_DRAFTS = 16  # drafts per request; documented in the README
MAX_SEED = 2**63 - 1

# Limits on what one request can make the server do, met by every front end here (README "Limits").
MAX_PROMPT_CHARS = 4000  # prompt, negative, template: bounds tokens (each at least one non-space character)
MAX_PROMPT_CHUNKS = 12  # 77-token chunks one prompt may encode to; the engine counts them with its tokenizer
MAX_LORAS = 16
MAX_CONTROLNETS = 4
MAX_IMAGE_PIXELS = 4096 * 4096  # decoded size of any image read (upload, source, mask, control, import)
MAX_REQUEST_PIXELS = 16 * 1024 * 1024  # width × height × drafts of one request
MAX_RECIPE_JSON_CHARS = 256 * 1024


def _fail(name: str, allowed: str, got: Any) -> None:
    raise ValueError(f"{name}: must be {allowed} (got {got!r})")


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        _fail(name, f"an integer from {lo} to {hi}", value)


def _check_float(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (lo < value if lo_open else lo <= value) and value <= hi
    if not ok:
        left = "(" if lo_open else "["
        _fail(name, f"a number in {left}{lo}, {hi}]", value)


def _check_size(name: str, value: Any, *, multiple_of: int = 8, lo: int = MIN_SIDE) -> None:
    if value is None:
        return
    if not (isinstance(value, tuple) and len(value) == 2):
        _fail(name, "a (height, width) pair", value)
    for side in value:
        if isinstance(side, bool) or not isinstance(side, int) or not lo <= side <= MAX_SIDE * 4:
            _fail(name, f"a (height, width) pair of integers from {lo} to {MAX_SIDE * 4}", value)
        if multiple_of > 1 and side % multiple_of:
            _fail(name, f"sides that are multiples of {multiple_of}", value)


def _check_sha(name: str, value: Any) -> None:
    if value is None:
        return
    if not (isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)):
        _fail(name, "a lowercase hex sha256 (64 characters)", value)


@dataclass(frozen=True)
class ModelRef:
    """A model's identity: its name as the user gave it, and what pins the exact weights."""

    name: str
    sha256: str | None = None  # single file: the file; folder: a digest of its weight files
    revision: str | None = None  # hub snapshot commit, when loaded from the hub cache

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            _fail("model.name", "a non-empty string", self.name)
        _check_sha("model.sha256", self.sha256)


@dataclass(frozen=True)
class LoraRef:
    name: str
    sha256: str | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            _fail("loras.name", "a non-empty string", self.name)
        _check_sha("loras.sha256", self.sha256)
        _check_float("loras.weight", self.weight, -10.0, 10.0)


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet: which model, which preprocessed map, how strongly and when."""

    model: ModelRef
    preprocessor: str = "none"
    image_sha256: str | None = None  # the control image as given
    map_sha256: str | None = None  # the map the ControlNet saw (after preprocessing)
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    params: tuple[tuple[str, float], ...] = ()  # preprocessor settings, sorted by name

    def __post_init__(self) -> None:
        _check_sha("controlnets.image_sha256", self.image_sha256)
        _check_sha("controlnets.map_sha256", self.map_sha256)
        _check_float("controlnets.scale", self.scale, 0.0, 4.0)
        _check_float("controlnets.start", self.start, 0.0, 1.0)
        _check_float("controlnets.end", self.end, 0.0, 1.0)
        if self.start >= self.end:
            _fail("controlnets.start", "smaller than controlnets.end", (self.start, self.end))


@dataclass(frozen=True)
class MicroConditioning:
    """SDXL's size and crop conditioning; None means "the generated size" (diffusers' default).

    The negative conditioning (sizes and crop) only takes effect in diffusers when both negative sizes
    are given; when any negative value is set, the engine fills a missing size with its positive
    counterpart (see `resolved`).
    """

    original_size: tuple[int, int] | None = None
    crops_coords_top_left: tuple[int, int] = (0, 0)
    target_size: tuple[int, int] | None = None
    negative_original_size: tuple[int, int] | None = None
    negative_crops_coords_top_left: tuple[int, int] = (0, 0)
    negative_target_size: tuple[int, int] | None = None
    aesthetic_score: float = 6.0  # used by the refiner only
    negative_aesthetic_score: float = 2.5

    def __post_init__(self) -> None:
        for name in ("original_size", "target_size", "negative_original_size", "negative_target_size"):
            _check_size(f"micro.{name}", getattr(self, name), multiple_of=1, lo=1)
        for name in ("crops_coords_top_left", "negative_crops_coords_top_left"):
            value = getattr(self, name)
            if not (
                isinstance(value, tuple)
                and len(value) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_SIDE * 4 for v in value)
            ):
                _fail(f"micro.{name}", f"a (top, left) pair of integers from 0 to {MAX_SIDE * 4}", value)
        _check_float("micro.aesthetic_score", self.aesthetic_score, 0.0, 10.0)
        _check_float("micro.negative_aesthetic_score", self.negative_aesthetic_score, 0.0, 10.0)

    def resolved(self, height: int, width: int) -> dict[str, Any]:
        """Keyword arguments for a diffusers SDXL pipeline, with every size made explicit."""
        size = (height, width)
        original = self.original_size or size
        target = self.target_size or size
        kwargs: dict[str, Any] = {
            "original_size": original,
            "crops_coords_top_left": self.crops_coords_top_left,
            "target_size": target,
            "negative_crops_coords_top_left": self.negative_crops_coords_top_left,
        }
        # diffusers ignores every negative micro-condition (the crop too) unless both negative sizes are given.
        if self.negative_original_size or self.negative_target_size or self.negative_crops_coords_top_left != (0, 0):
            kwargs["negative_original_size"] = self.negative_original_size or original
            kwargs["negative_target_size"] = self.negative_target_size or target
        return kwargs


@dataclass(frozen=True)
class RefineSettings:
    """How a draft is finished. `model` None: the base model refines its own draft (checkpoints
    without a refiner). `strength` is used only for a clean latent (switch 1.0, or a 1-step schedule
    that cannot be split): a noisy latent is always resumed at the switch point, never re-noised."""

    model: ModelRef | None = None
    strength: float = 0.3

    def __post_init__(self) -> None:
        _check_float("refine.strength", self.strength, 0.0, 1.0, lo_open=True)

    def schedule_steps(self, steps: int) -> int:
        """The schedule length the refiner uses on a clean latent: `steps`, where steps × strength leaves it
        at least one step (diffusers runs int(steps × strength) of them); otherwise the fewest steps that
        do, so the refiner runs exactly one (a 1-step draft at strength 0.3 is refined as 1 step of 4)."""
        n = steps
        while int(n * self.strength) < 1:
            n += 1
            if n > MAX_STEPS:
                lowest = next(k / 1000 for k in range(1, 1001) if int(MAX_STEPS * (k / 1000)) >= 1)
                _fail(
                    "refine.strength",
                    f"at least {lowest} (a smaller strength leaves the refiner no step)",
                    self.strength,
                )
        return n


@dataclass(frozen=True)
class Recipe:
    model: ModelRef
    prompt: str
    seed: int
    vae: ModelRef | None = None  # a VAE that replaced the model's own (the fp16-fix VAE on CUDA fp16)
    negative_prompt: str = ""
    # The dynamic prompt (`{a|b}` alternatives, `__name__` wildcards) `prompt` was drawn from; None: typed as
    # is. A record only: the engine reads `prompt`, so a re-run needs no wildcard file.
    prompt_template: str | None = None
    prompt_syntax: str = "compel"
    mode: str = "txt2img"
    stage: str = "final"
    batch_seeds: tuple[int, ...] = ()  # all seeds of the batch this image was drafted in; () = alone
    # A1111's "variation seed": the starting noise is slerp(noise(seed), noise(variation_seed), strength)
    # (txt2img only; every image of a batch shares them). Strength 0 is the seed's own noise.
    variation_seed: int | None = None
    variation_strength: float = 0.0
    steps: int = 20
    guidance: float = 5.0
    scheduler: str = "Euler"
    width: int = 1024
    height: int = 1024
    micro: MicroConditioning = field(default_factory=MicroConditioning)
    # Fraction of the schedule the base runs; 1.0 = all of it. Where it would leave the base or the refiner
    # no step (e.g. 1 step in all), the engine hands over at the nearest point that works (pipelines/engine/
    # handoff.py); the recipe keeps the switch as asked, and the rule makes re-runs exact.
    switch: float = 0.8
    refine: RefineSettings | None = field(default_factory=RefineSettings)
    # img2img only. 0: the source as it is (see keeps_source). With a refine stage, a strength that leaves
    # the base no step before the switch is run, and recorded, as refine_any_recipe at that strength.
    strength: float | None = None
    source_image_sha256: str | None = None  # img2img only
    # Inpainting (img2img only): the mask image (white = repaint) stored in the gallery by sha256, fitted to
    # the size like the source; blurred by mask_blur px; "masked" inpaints only its box plus inpaint_padding
    # px at the recipe's size. Outside the blurred mask the result keeps the source's pixels exactly.
    mask_sha256: str | None = None
    mask_blur: int = 0
    inpaint_area: str = "whole"
    inpaint_padding: int = 32
    masked_content: str = "original"  # MASKED_CONTENTS; "noise" needs a mask or an expand
    # A dedicated inpainting checkpoint (9-channel UNet) that replaces the base's UNet in the inpaint step;
    # None: the base model inpaints. Only when the recipe inpaints.
    inpaint_model: ModelRef | None = None
    # Outpaint (img2img only): px added (left, top, right, bottom) around the source, inpainted with a mask made
    # for them; width/height are the whole canvas, the source fitted to (width - left - right, height - top - bottom).
    expand: tuple[int, int, int, int] = NO_EXPAND
    loras: tuple[LoraRef, ...] = ()
    controlnets: tuple[ControlUnit, ...] = ()
    watermark: bool = True  # requested; whether it was applied is recorded in watermark_applied
    watermark_applied: bool | None = None  # filled in when the image is saved (False under 256 px)
    app_version: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            _fail("schema_version", f"{SCHEMA_VERSION} (older recipes are upgraded by from_json)", self.schema_version)
        if not isinstance(self.model, ModelRef):
            _fail("model", "a ModelRef", self.model)
        if self.vae is not None and not isinstance(self.vae, ModelRef):
            _fail("vae", "a ModelRef or null", self.vae)
        for name in ("prompt", "negative_prompt"):
            if not isinstance(getattr(self, name), str):
                _fail(name, "a string", getattr(self, name))
            check_prompt_length(name, getattr(self, name))
        if self.prompt_template is not None and (not isinstance(self.prompt_template, str) or not self.prompt_template):
            _fail("prompt_template", "a non-empty string or null", self.prompt_template)
        check_prompt_length("prompt_template", self.prompt_template or "")
        if self.prompt_syntax not in PROMPT_SYNTAXES:
            _fail("prompt_syntax", f"one of {', '.join(PROMPT_SYNTAXES)}", self.prompt_syntax)
        if self.mode not in MODES:
            _fail("mode", f"one of {', '.join(MODES)}", self.mode)
        if self.stage not in STAGES:
            _fail("stage", f"one of {', '.join(STAGES)}", self.stage)
        _check_int("seed", self.seed, 0, MAX_SEED)
        if not isinstance(self.batch_seeds, tuple) or len(self.batch_seeds) > MAX_DRAFTS:
            _fail("batch_seeds", f"a tuple of at most {MAX_DRAFTS} seeds", self.batch_seeds)
        for s in self.batch_seeds:
            _check_int("batch_seeds", s, 0, MAX_SEED)
        if self.batch_seeds and self.seed not in self.batch_seeds:
            _fail("batch_seeds", f"a batch that contains seed {self.seed}", self.batch_seeds)
        self._check_variation()
        _check_int("steps", self.steps, 1, MAX_STEPS)
        _check_float("guidance", self.guidance, 0.0, 50.0)
        if self.scheduler not in SCHEDULERS:
            _fail("scheduler", f"one of {', '.join(SCHEDULERS)}", self.scheduler)
        for name in ("width", "height"):
            value = getattr(self, name)
            _check_int(name, value, MIN_SIDE, MAX_SIDE)
            if value % 8:
                _fail(name, "a multiple of 8", value)
        if not isinstance(self.micro, MicroConditioning):
            _fail("micro", "a MicroConditioning", self.micro)
        _check_float("switch", self.switch, 0.0, 1.0, lo_open=True)
        if self.refine is not None and not isinstance(self.refine, RefineSettings):
            _fail("refine", "RefineSettings or None", self.refine)
        if self.refine is None and self.switch != 1.0:
            _fail("switch", "1.0 when there is no refine stage (refine is null)", self.switch)
        if self.mode == "img2img":
            if self.strength is None:
                _fail("strength", "a number in [0.0, 1.0] for img2img", None)
            _check_float("strength", self.strength, 0.0, 1.0)
            _check_sha("source_image_sha256", self.source_image_sha256)
        elif self.strength is not None:
            _fail("strength", "unset unless mode is img2img", self.strength)
        elif self.source_image_sha256 is not None:
            _fail("source_image_sha256", "unset unless mode is img2img", self.source_image_sha256)
        self._check_inpaint()
        for name, kind, most in (("loras", LoraRef, MAX_LORAS), ("controlnets", ControlUnit, MAX_CONTROLNETS)):
            value = getattr(self, name)
            if not all(isinstance(x, kind) for x in value):
                _fail(name, f"a tuple of {kind.__name__}", value)
            if len(value) > most:
                raise ValueError(f"{name}: {len(value)} is over the limit of {most} per request; use fewer")
        for name in ("watermark",):
            if not isinstance(getattr(self, name), bool):
                _fail(name, "true or false", getattr(self, name))
        if self.watermark_applied is not None and not isinstance(self.watermark_applied, bool):
            _fail("watermark_applied", "true, false or null", self.watermark_applied)

    def _check_inpaint(self) -> None:
        _check_sha("mask_sha256", self.mask_sha256)
        if self.mask_sha256 is not None and self.mode != "img2img":
            _fail("mask_sha256", "unset unless mode is img2img (inpainting repaints a source image)", self.mask_sha256)
        _check_int("mask_blur", self.mask_blur, 0, MAX_MASK_BLUR)
        if self.inpaint_area not in INPAINT_AREAS:
            _fail("inpaint_area", f"one of {', '.join(INPAINT_AREAS)}", self.inpaint_area)
        _check_int("inpaint_padding", self.inpaint_padding, 0, MAX_INPAINT_PADDING)
        if self.masked_content not in MASKED_CONTENTS:
            _fail("masked_content", f"one of {', '.join(MASKED_CONTENTS)}", self.masked_content)
        check_expand(self.expand)
        if self.inpaint_model is not None:
            if not isinstance(self.inpaint_model, ModelRef):
                _fail("inpaint_model", "a ModelRef or null", self.inpaint_model)
            if not self.inpaints:
                _fail(
                    "inpaint_model",
                    "null unless the recipe inpaints (a mask_sha256 or an expand)",
                    self.inpaint_model.name,
                )
        if self.mode != "img2img":
            if self.masked_content != "original":
                _fail(
                    "masked_content",
                    "'original' unless mode is img2img (inpainting repaints a source image)",
                    self.masked_content,
                )
            if self.expand != NO_EXPAND:
                _fail("expand", "(0, 0, 0, 0) unless mode is img2img (outpainting extends a source image)", self.expand)
        left, top, right, bottom = self.expand
        inner = (self.width - left - right, self.height - top - bottom)
        if min(inner) < MIN_SIDE:
            _fail(
                "expand",
                f"a border that leaves the source at least {MIN_SIDE} px per side of the {self.width}×{self.height} canvas",
                self.expand,
            )

    @property
    def inpaints(self) -> bool:
        """True when the engine inpaints: a mask is recorded, or the canvas is expanded (outpaint)."""
        return self.mask_sha256 is not None or self.expand != NO_EXPAND

    def _check_variation(self) -> None:
        if self.variation_seed is not None:
            _check_int("variation_seed", self.variation_seed, 0, MAX_SEED)
        _check_float("variation_strength", self.variation_strength, 0.0, 1.0)
        if self.variation_strength > 0 and self.variation_seed is None:
            _fail("variation_seed", "set when variation_strength is above 0", None)
        if self.variation_seed is not None and self.mode != "txt2img":
            _fail(
                "variation_seed", "unset unless mode is txt2img (img2img starts from its source)", self.variation_seed
            )

    # -- derived ---------------------------------------------------------------------------------

    @property
    def base_stops_early(self) -> bool:
        """True when the base hands over a still-noisy latent (diffusers needs 0 < f < 1)."""
        return self.switch < 1.0

    @property
    def keeps_source(self) -> bool:
        """img2img at strength 0 with no refiner pass after it: the finished image is the source itself
        (fitted to the size), unchanged, and no model step runs. Not so for "refine any image" (a refine
        stage at switch 1.0), where the refiner still re-noises the source at refine.strength."""
        return self.mode == "img2img" and self.strength == 0.0 and (self.refine is None or self.base_stops_early)

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)

    # -- JSON --------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Recipe:
        return cls.from_dict(loads_limited_json(text, what="recipe", max_chars=MAX_RECIPE_JSON_CHARS))

    @classmethod
    def from_dict(cls, data: Any) -> Recipe:
        if not isinstance(data, dict):
            raise ValueError(f"recipe: must be a JSON object (got {type(data).__name__})")
        data = _upgrade(dict(data))
        return _build(cls, data, "")


def check_expand(value: Any) -> None:
    """An outpaint expansion: (left, top, right, bottom), each a multiple of 8 from 0 to MAX_EXPAND px."""
    allowed = f"(left, top, right, bottom): four multiples of 8 from 0 to {MAX_EXPAND} px"
    if not (isinstance(value, tuple) and len(value) == 4):
        _fail("expand", allowed, value)
    for side in value:
        if isinstance(side, bool) or not isinstance(side, int) or not 0 <= side <= MAX_EXPAND or side % 8:
            _fail("expand", allowed, value)


def check_prompt_length(name: str, text: str) -> None:
    """A prompt within MAX_PROMPT_CHARS; the message names the limit, never repeats the text."""
    if isinstance(text, str) and len(text) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"{name}: {len(text)} characters is over the limit of {MAX_PROMPT_CHARS} characters per prompt; shorten it"
        )


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """Bring a recipe written by an older schema up to SCHEMA_VERSION (none older exist yet)."""
    version = data.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version < 1 or version > SCHEMA_VERSION:
        _fail("schema_version", f"an integer from 1 to {SCHEMA_VERSION}", version)
    return data


_NESTED = {
    "model": ModelRef,
    "vae": ModelRef,
    "inpaint_model": ModelRef,
    "micro": MicroConditioning,
    "refine": RefineSettings,
}
_NESTED_LISTS = {"loras": LoraRef, "controlnets": ControlUnit}


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"recipe: unknown field(s) {', '.join(prefix + u for u in unknown)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in _NESTED and isinstance(value, dict):
            value = _build(_NESTED[key], value, f"{prefix}{key}.")
        elif key in _NESTED_LISTS and isinstance(value, (list, tuple)):  # JSON lists, or to_dict() tuples
            value = tuple(
                _build(_NESTED_LISTS[key], item, f"{prefix}{key}.") if isinstance(item, dict) else item
                for item in value
            )
        elif key == "params" and isinstance(value, list):
            value = tuple(tuple(pair) for pair in value)
        elif isinstance(value, list):  # sizes, seeds: JSON arrays back to tuples
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"recipe: {prefix or ''}{exc}") from None


def refine_any_recipe(recipe: Recipe, refiner: RefineSettings) -> Recipe:
    """ "Refine any image": the source as it is (strength 0, base runs no step), then the refiner at
    `refiner.strength` on the clean latent."""
    return recipe.replace(mode="img2img", strength=0.0, switch=1.0, refine=refiner)
