"""The options of the generating commands (`draft`, `img2img`) and their one mapping onto a
`GenerationRequest` (`request_from_args`); the Recipe then comes from `atelier.requests.build_recipe`,
as in the web UI. Every default shown here is a constant of atelier/requests.py.

`--lora NAME[:W]` (repeatable): a LoRA from the models folder at weight W (default 1); a
`<lora:NAME:W>` token in the prompt sets the weight of the same LoRA.
`--prompt` may be a dynamic prompt: `{a|b|c}` alternatives and `__name__` wildcards (<home>/wildcards/name.txt,
one option per line), drawn at random with each draft's seed, or every combination with `--combinatorial`.
`--sweep PARAMETER=V1,V2,…` drafts the seed once per value (guidance, steps, switch, scheduler,
aesthetic_score, seed, lora:NAME).
`--control TYPE[=MODEL]:IMAGE[:SCALE[:START:END]]` (repeatable): TYPE is a preprocessor (canny,
shuffle, lineart_standard, none, or an annotator-based one when its weights are here); MODEL is the
ControlNet (a name in the models folder, a folder, a .safetensors file or a hub id) — left out, the
installed ControlNet whose name mentions the type is used. IMAGE is a file or a gallery id.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from atelier.requests import (
    DEFAULT_AESTHETIC,
    DEFAULT_COUNT,
    DEFAULT_GUIDANCE,
    DEFAULT_HEIGHT,
    DEFAULT_IMG2IMG_STRENGTH,
    DEFAULT_NEGATIVE_AESTHETIC,
    DEFAULT_REFINE_STRENGTH,
    DEFAULT_SCHEDULER,
    DEFAULT_STEPS,
    DEFAULT_SWITCH,
    DEFAULT_WIDTH,
    IMG2IMG_MAX_SIDE,
    IMG2IMG_MAX_SIDE_ENV,
    REQUEST_SYNTAXES,
    GenerationRequest,
)
from atelier.sweeps import MAX_CELLS, PARAMETERS
from pipelines.recipe import MAX_DRAFTS, NO_EXPAND, SCHEDULERS, LoraRef, MicroConditioning, Recipe

if TYPE_CHECKING:  # the CLI starts light: the image and model modules load when a command runs
    from atelier.edit_inputs import InputFiles

# MicroConditioning field ← argparse dest; a left-out option keeps the MicroConditioning default.
MICRO_OPTIONS = {
    "original_size": "original_size",
    "crops_coords_top_left": "crop",
    "target_size": "target_size",
    "negative_original_size": "negative_original_size",
    "negative_crops_coords_top_left": "negative_crop",
    "negative_target_size": "negative_target_size",
    "aesthetic_score": "aesthetic_score",
    "negative_aesthetic_score": "negative_aesthetic_score",
}

# Words that name a preprocessor's kind of ControlNet in common model file names.
MODEL_KEYWORDS = {
    "canny": ("canny",),
    "shuffle": ("shuffle",),
    "lineart_standard": ("lineart",),
    "lineart": ("lineart",),
    "lineart_anime": ("anime", "lineart"),
    "depth_midas": ("depth",),
    "hed": ("hed", "softedge"),
    "pidinet": ("softedge", "pidi"),
    "openpose": ("openpose", "pose"),
    "mlsd": ("mlsd",),
    "normalbae": ("normal",),
}

IMG2IMG_SIZE = f"the source's own size, longest side at most ${IMG2IMG_MAX_SIDE_ENV} or {IMG2IMG_MAX_SIDE}"


# -- options ---------------------------------------------------------------------------------------------


def add_recipe_arguments(parser: argparse.ArgumentParser, *, img2img: bool = False) -> None:
    """The recipe options of every generating command (draft, img2img; img2img's size follows its source)."""
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative", default="")
    parser.add_argument(
        "--syntax",
        choices=REQUEST_SYNTAXES,
        default=None,
        help="prompt weighting syntax; auto: a1111 when the prompt uses an A1111-only construct, "
        "else compel (default: $ATELIER_PROMPT_SYNTAX, else auto)",
    )
    parser.add_argument("--seed", type=int, help="first seed (default: random); draft i gets seed+i")
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, metavar="N", help="denoising steps (default: %(default)s)"
    )
    parser.add_argument(
        "--switch",
        type=float,
        default=DEFAULT_SWITCH,
        metavar="F",
        help="fraction of the schedule the base runs, (0, 1] (default: %(default)s)",
    )
    for side, default in (("width", DEFAULT_WIDTH), ("height", DEFAULT_HEIGHT)):
        parser.add_argument(
            f"--{side}",
            type=int,
            default=None,
            metavar="PX",
            help=f"a multiple of 8; give both or neither (default: {IMG2IMG_SIZE if img2img else default})",
        )
    parser.add_argument(
        "--guidance",
        type=float,
        default=DEFAULT_GUIDANCE,
        metavar="G",
        help="classifier-free guidance scale (default: %(default)s)",
    )
    parser.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        default=DEFAULT_SCHEDULER,
        metavar="NAME",
        help=f"{', '.join(SCHEDULERS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--refine-strength",
        type=float,
        default=DEFAULT_REFINE_STRENGTH,
        metavar="R",
        help="the refiner's strength on a clean image: with --switch 1.0 or --refine-only (default: %(default)s)",
    )
    for name in ("original-size", "target-size", "negative-original-size", "negative-target-size"):
        parser.add_argument(f"--{name}", type=_pair, metavar="HxW", help="SDXL size conditioning, height x width")
    for name, default in (
        ("crop", MicroConditioning().crops_coords_top_left),
        ("negative-crop", MicroConditioning().negative_crops_coords_top_left),
    ):
        parser.add_argument(
            f"--{name}",
            type=_pair,
            metavar="TOPxLEFT",
            help=f"SDXL crop conditioning (default: {default[0]}x{default[1]})",
        )
    parser.add_argument(
        "--aesthetic-score",
        type=float,
        default=DEFAULT_AESTHETIC,
        metavar="A",
        help="refiner conditioning (default: %(default)s)",
    )
    parser.add_argument(
        "--negative-aesthetic-score",
        type=float,
        default=DEFAULT_NEGATIVE_AESTHETIC,
        metavar="A",
        help="the refiner's negative aesthetic conditioning (default: %(default)s)",
    )
    parser.add_argument("--no-watermark", action="store_true", help="do not embed the invisible watermark")


def add_count_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--count",
        type=int,
        default=DEFAULT_COUNT,
        metavar="K",
        help=f"number of drafts, 1 to {MAX_DRAFTS} (default: %(default)s)",
    )


def add_draft_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """--combinatorial and --sweep: how one `atelier draft` becomes several different drafts."""
    parser.add_argument(
        "--combinatorial",
        action="store_true",
        help="a dynamic prompt ({a|b}, __wildcard__) gives every combination in order, at most --count "
        "(default: a random draw per draft, seeded by its seed)",
    )
    parser.add_argument(
        "--sweep",
        default="",
        metavar="PARAM=V1,V2,…",
        help=f"one draft of the seed per value, e.g. guidance=3,5,7 ({', '.join(PARAMETERS)}; "
        f"at most {MAX_CELLS} values; --count is not used); a labelled grid goes to <home>/downloads",
    )


def add_img2img_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--strength",
        type=float,
        default=DEFAULT_IMG2IMG_STRENGTH,
        metavar="S",
        help="denoise strength: 0 keeps the source, 1 ignores it; a strength that leaves the base "
        "no step before the switch runs the refiner alone (default: %(default)s)",
    )
    parser.add_argument(
        "--refine-only",
        action="store_true",
        help="refine any image: the refiner alone at --refine-strength (the base runs no step)",
    )


def add_inpaint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mask", metavar="FILE|ID", help="inpaint: repaint where this image is white (file or gallery id)"
    )
    parser.add_argument(
        "--mask-blur", type=int, default=0, metavar="PX", help="blur the mask's edge (0-64 px; default 0)"
    )
    parser.add_argument(
        "--inpaint-area",
        default="whole",
        metavar="whole|masked",
        help="whole: inpaint the whole image; masked: only the mask's box (plus padding) at full size",
    )
    parser.add_argument(
        "--inpaint-padding", type=int, default=32, metavar="PX", help="masked area: pixels around the mask (default 32)"
    )
    parser.add_argument(
        "--masked-content",
        default="original",
        metavar="original|noise",
        help="what the masked area starts from: the source re-noised (original), or fresh noise for new content",
    )
    parser.add_argument(
        "--expand",
        type=_expand,
        default=NO_EXPAND,
        metavar="L,T,R,B",
        help="outpaint: add L,T,R,B px (multiples of 8) around the source and paint them; no --mask needed",
    )
    parser.add_argument(
        "--inpaint-model",
        metavar="NAME",
        help="inpaint with this inpainting checkpoint (9-channel UNet: a models-folder name, file or folder)",
    )


def inpaint_from_args(args: argparse.Namespace, recipe: Recipe, studio) -> tuple[Recipe, bytes | None]:
    """The recipe with the inpaint settings (checked by Recipe, before any image is read), and the mask's bytes."""
    settings = {"mask_blur": args.mask_blur, "inpaint_area": args.inpaint_area, "inpaint_padding": args.inpaint_padding}
    if args.mask is None:
        if recipe.expand != NO_EXPAND:  # outpaint: its own mask
            return recipe.replace(**settings), None
        if settings != {"mask_blur": 0, "inpaint_area": "whole", "inpaint_padding": 32}:
            raise ValueError("--mask: --mask-blur, --inpaint-area and --inpaint-padding need a --mask or --expand")
        if recipe.masked_content != "original":
            raise ValueError("--masked-content: 'noise' needs a --mask or --expand (there is no masked area)")
        if getattr(args, "inpaint_model", None):
            raise ValueError("--inpaint-model: needs a --mask or --expand (there is nothing to inpaint)")
        return recipe, None
    recipe = recipe.replace(**settings)
    data, _ = read_image_arg(args.mask, studio)
    return recipe, data


def add_edit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        type=parse_lora,
        metavar="NAME[:W]",
        help="apply a LoRA from the models folder at weight W (repeatable; default weight 1)",
    )
    parser.add_argument(
        "--control",
        action="append",
        default=[],
        metavar="TYPE[=MODEL]:IMAGE[:SCALE[:START:END]]",
        help="a ControlNet unit (repeatable); TYPE: canny, shuffle, lineart_standard, none, …",
    )
    parser.add_argument(
        "--control-param",
        action="append",
        default=[],
        type=_param,
        metavar="NAME=VALUE",
        help="a preprocessor setting, e.g. low=50 high=150 for canny (repeatable)",
    )


def _pair(text: str) -> tuple[int, int]:
    try:
        a, b = text.lower().replace(",", "x").split("x")
        return int(a), int(b)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two integers like 1024x1024 (got {text!r})") from None


def _expand(text: str) -> tuple[int, int, int, int]:
    try:
        values = tuple(int(part) for part in text.split(","))
        if len(values) != 4:
            raise ValueError
        return values
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected four integers L,T,R,B like 64,0,64,0 (got {text!r})") from None


def parse_lora(text: str) -> LoraRef:
    name, sep, weight = text.rpartition(":")
    if not sep:
        name, weight = text, "1"
    try:
        return LoraRef(name=name, weight=float(weight))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--lora {text!r}: expected NAME or NAME:WEIGHT ({error})") from None


def _param(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    try:
        if not sep or not key:
            raise ValueError
        return key.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--control-param {text!r}: expected NAME=NUMBER") from None


# -- argv → request ----------------------------------------------------------------------------------------


def request_from_args(args: argparse.Namespace, *, source_size: tuple[int, int] | None = None) -> GenerationRequest:
    """The GenerationRequest of draft's or img2img's options (`source_size`: img2img's source, width × height).
    Options a command lacks keep the request's default: draft has no --strength, img2img no --count."""
    return GenerationRequest(
        prompt=args.prompt,
        negative=args.negative,
        syntax=args.syntax,
        seed=args.seed,
        count=getattr(args, "count", 1),  # img2img makes one image
        steps=args.steps,
        guidance=args.guidance,
        scheduler=args.scheduler,
        width=args.width,
        height=args.height,
        switch=args.switch,
        refine_strength=args.refine_strength,
        micro=micro_from_args(args),
        loras=tuple(args.lora),
        watermark=not args.no_watermark,
        source_size=source_size,
        strength=getattr(args, "strength", None),
        refine_only=getattr(args, "refine_only", False),
        masked_content=getattr(args, "masked_content", "original"),  # img2img only
        expand=getattr(args, "expand", NO_EXPAND),
        inpaint_model=getattr(args, "inpaint_model", None),
        combinatorial=getattr(args, "combinatorial", False),  # draft only
        sweep=getattr(args, "sweep", ""),
    )


def micro_from_args(args: argparse.Namespace) -> MicroConditioning:
    given = {name: getattr(args, dest) for name, dest in MICRO_OPTIONS.items() if getattr(args, dest) is not None}
    return MicroConditioning(**given)


# -- images and ControlNet units ---------------------------------------------------------------------------


def read_image_arg(value: str, studio) -> tuple[bytes, int | None]:
    """An image file's bytes, or a gallery generation's image bytes and its id."""
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_bytes(), None
    if value.isdigit():
        generation = studio.get(int(value))
        return studio.download_path(generation.id).read_bytes(), generation.id  # a draft: its full decode
    raise ValueError(f"image {value!r}: no such file, and not a gallery id")


def parse_control(text: str) -> tuple[str, str | None, str, tuple[float, ...]]:
    """(preprocessor, model or None, image, numbers) from TYPE[=MODEL]:IMAGE[:SCALE[:START:END]]."""
    parts = text.split(":")
    numbers: list[float] = []
    while len(parts) > 2 and len(numbers) < 3:
        try:
            numbers.insert(0, float(parts[-1]))
        except ValueError:
            break
        parts.pop()
    if len(parts) < 2 or not parts[0] or len(numbers) == 2:
        raise ValueError(f"--control {text!r}: expected TYPE[=MODEL]:IMAGE[:SCALE[:START:END]]")
    kind, _, model = parts[0].partition("=")
    return kind.strip(), model.strip() or None, ":".join(parts[1:]), tuple(numbers)


def edit_inputs_from_args(
    args: argparse.Namespace, recipe: Recipe, studio, source: bytes | None = None, mask: bytes | None = None
) -> tuple[Recipe, InputFiles]:
    """--control and --control-param applied to a recipe (its LoRAs are already in it); images
    preprocessed and hashed by the studio. A --control-param goes to every unit whose preprocessor has it."""
    from atelier.edit_inputs import ControlRequest

    settings = {row["name"]: row["params"] for row in studio.preprocessors()}
    params = dict(args.control_param)
    controls, used = [], set()
    for text in args.control:
        kind, model, image, numbers = parse_control(text)
        if kind not in settings:  # before any image is read or ControlNet picked
            raise ValueError(f"preprocessor: must be one of {', '.join(settings)} (got {kind!r})")
        own = {k: v for k, v in params.items() if k in settings[kind]}
        data, _ = read_image_arg(image, studio)
        start, end = numbers[1:] if len(numbers) == 3 else (0.0, 1.0)
        used |= set(own)
        controls.append(
            ControlRequest(
                model=model or pick_controlnet(kind, studio.controlnets()),
                preprocessor=kind,
                image=data,
                scale=numbers[0] if numbers else 1.0,
                start=start,
                end=end,
                params=own,
            )
        )
    unused = sorted(set(params) - used)
    if unused:
        raise ValueError(f"--control-param: {', '.join(unused)} is a setting of none of the --control preprocessors")
    return studio.prepare_inputs(recipe, source=source, controls=controls, mask=mask)


def pick_controlnet(kind: str, installed: list[dict]) -> str:
    words = MODEL_KEYWORDS.get(kind, ())
    matches = [m["name"] for m in installed if any(w in m["name"].lower() for w in words)]
    if len(matches) == 1:
        return matches[0]
    names = ", ".join(m["name"] for m in installed) or "none installed"
    if not matches:
        raise ValueError(
            f"--control {kind}: no installed ControlNet's name mentions {kind!r} (installed: {names}); "
            f"name one with {kind}=MODEL"
        )
    raise ValueError(f"--control {kind}: several ControlNets fit ({', '.join(matches)}); name one with {kind}=MODEL")
