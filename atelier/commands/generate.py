"""`atelier draft | refine | rerender | rerun | import`: generation through the studio into the gallery."""

from __future__ import annotations

import argparse
import json
import secrets
from pathlib import Path

from pipelines.recipe import MAX_DRAFTS, PROMPT_SYNTAXES, SCHEDULERS, MicroConditioning, ModelRef, Recipe, RefineSettings


def register(subparsers) -> None:
    draft = subparsers.add_parser("draft", help="make drafts: the base stops at the switch point, its noisy latent kept")
    _add_device_options(draft)
    add_recipe_arguments(draft)
    draft.add_argument("--count", type=int, default=4, help=f"number of drafts, 1 to {MAX_DRAFTS}")
    # --lora / --control (repeatable): atelier/commands/editing.py
    from atelier.commands.editing import add_edit_arguments

    add_edit_arguments(draft)
    draft.add_argument("--json", action="store_true")
    draft.set_defaults(func=run_draft)

    refine = subparsers.add_parser("refine", help="finish a draft: the refiner resumes its kept latent")
    _add_device_options(refine)
    refine.add_argument("draft_id", type=int)
    refine.add_argument("--steps", type=int, help="re-render the draft's seed at this many steps first")
    refine.add_argument("--json", action="store_true")
    refine.set_defaults(func=run_refine)

    rerun = subparsers.add_parser("rerun", help="make a gallery entry again from its recipe (same pixels)")
    _add_device_options(rerun)
    rerun.add_argument("id", type=int)
    rerun.add_argument("--json", action="store_true")
    rerun.set_defaults(func=run_rerun)

    importer = subparsers.add_parser("import", help="add an Atelier, A1111 or InvokeAI PNG to the gallery with its recipe")
    importer.add_argument("file", type=Path)
    importer.add_argument("--json", action="store_true")
    importer.set_defaults(func=run_import)


def add_recipe_arguments(draft: argparse.ArgumentParser, refine_strength_flag: str = "--strength") -> None:
    """The recipe options of every generating command (draft, img2img)."""
    draft.add_argument("--model", help="tiny, a hub id, a diffusers folder, a .safetensors file, or a name in the models "
                                       "folder (default: SDXL weights found locally, else the tiny demo model)")
    draft.add_argument("--refiner", help="like --model; 'base' lets the base refine its own drafts")
    draft.add_argument("--prompt", required=True)
    draft.add_argument("--negative", default="")
    draft.add_argument("--syntax", choices=PROMPT_SYNTAXES, default=None,
                       help="prompt weighting syntax (default: $ATELIER_PROMPT_SYNTAX, else compel)")
    draft.add_argument("--seed", type=int, help="first seed (default: random); draft i gets seed+i")
    draft.add_argument("--steps", type=int, default=20)
    draft.add_argument("--switch", type=float, default=0.8, help="fraction of the schedule the base runs, (0, 1]")
    draft.add_argument("--width", type=int, default=1024)
    draft.add_argument("--height", type=int, default=1024)
    draft.add_argument("--guidance", type=float, default=5.0)
    draft.add_argument("--scheduler", choices=SCHEDULERS, default="Euler", metavar="NAME", help=", ".join(SCHEDULERS))
    draft.add_argument(refine_strength_flag, dest="refine_strength", type=float, default=0.3,
                       help="refine strength, used only when --switch is 1.0")
    for name in ("original-size", "target-size", "negative-original-size", "negative-target-size"):
        draft.add_argument(f"--{name}", type=_pair, metavar="HxW", help="SDXL size conditioning, height x width")
    for name in ("crop", "negative-crop"):
        draft.add_argument(f"--{name}", type=_pair, metavar="TOPxLEFT", help="SDXL crop conditioning")
    draft.add_argument("--aesthetic-score", type=float, default=6.0, help="refiner conditioning")
    draft.add_argument("--negative-aesthetic-score", type=float, default=2.5)
    draft.add_argument("--no-watermark", action="store_true", help="do not embed the invisible watermark")


def _add_device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: the best available)")
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), help="default: float16 on GPUs, float32 on CPU")
    parser.add_argument("--cpu-offload", action="store_true", help="keep models in RAM, move each to the GPU when used")
    parser.add_argument("--vae-tiling", action="store_true", help="decode large images in tiles (less memory)")


def _pair(text: str) -> tuple[int, int]:
    try:
        a, b = text.lower().replace(",", "x").split("x")
        return int(a), int(b)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two integers like 1024x1024 (got {text!r})") from None


def _studio(args):
    from atelier.studio import Studio

    return Studio(args.home, device=getattr(args, "device", None), dtype=getattr(args, "dtype", None),
                  cpu_offload=getattr(args, "cpu_offload", False), vae_tiling=getattr(args, "vae_tiling", False))


def recipe_from_args(args, home: Path) -> Recipe:
    from atelier.requests import default_prompt_syntax
    from atelier.studio import choose_models

    choice = choose_models(home, args.model, args.refiner)
    micro = MicroConditioning(
        original_size=args.original_size, target_size=args.target_size,
        negative_original_size=args.negative_original_size, negative_target_size=args.negative_target_size,
        crops_coords_top_left=args.crop or (0, 0), negative_crops_coords_top_left=args.negative_crop or (0, 0),
        aesthetic_score=args.aesthetic_score, negative_aesthetic_score=args.negative_aesthetic_score,
    )
    refiner = ModelRef(choice.refiner) if choice.refiner else None
    return Recipe(
        model=ModelRef(choice.base), prompt=args.prompt, negative_prompt=args.negative, prompt_syntax=args.syntax or default_prompt_syntax(),
        seed=secrets.randbelow(2**32) if args.seed is None else args.seed, steps=args.steps, guidance=args.guidance,
        scheduler=args.scheduler, width=args.width, height=args.height, micro=micro, switch=args.switch,
        refine=RefineSettings(model=refiner, strength=args.refine_strength), watermark=not args.no_watermark,
    )


def _print(args, payload: dict, lines: list[str]) -> None:
    if args.json:
        print(json.dumps(payload))
    else:
        print("\n".join(lines))


def run_draft(args) -> int:
    recipe = recipe_from_args(args, args.home)  # every value validated before any model is loaded
    from atelier.commands.editing import edit_inputs_from_args

    with _studio(args) as studio:
        recipe, inputs = edit_inputs_from_args(args, recipe, studio)  # --lora, --control
        saved = studio.draft(recipe, args.count, inputs=inputs)
    _print(args, {"drafts": [s.as_json() for s in saved]},
           [f"draft {s.id}  seed {s.recipe.seed}  {s.image}" for s in saved])
    return 0


def run_refine(args) -> int:
    with _studio(args) as studio:
        saved = studio.rerender(args.draft_id, args.steps) if args.steps else studio.refine(args.draft_id)
    _print(args, {"id": saved.id, "image": str(saved.image)}, [f"refined {saved.id}  {saved.image}"])
    return 0


def run_rerun(args) -> int:
    with _studio(args) as studio:
        saved = studio.rerun(args.id)
    _print(args, {"id": saved.id, "image": str(saved.image)}, [f"re-run {args.id} → {saved.id}  {saved.image}"])
    return 0


def run_import(args) -> int:
    from atelier.studio import Studio

    if not args.file.is_file():
        raise ValueError(f"{args.file}: no such file")
    with Studio(args.home) as studio:
        saved = studio.import_png(args.file)
    _print(args, {"id": saved.id, "image": str(saved.image)}, [f"imported {args.file} as {saved.id}"])
    return 0
