"""`atelier draft | refine | rerun | vary`: generation through the studio into the gallery."""

from __future__ import annotations

import argparse

from atelier.commands.common import (
    add_device_options,
    add_json_option,
    add_model_options,
    choose,
    emit,
    open_studio,
    tell,
)
from atelier.commands.request_options import (
    add_count_argument,
    add_draft_plan_arguments,
    add_edit_arguments,
    add_recipe_arguments,
    edit_inputs_from_args,
    request_from_args,
)
from pipelines.recipe import MAX_STEPS, Recipe


def register(subparsers) -> None:
    draft = subparsers.add_parser(
        "draft", help="make drafts: the base stops at the switch point, its noisy latent kept"
    )
    add_device_options(draft)
    add_model_options(draft)
    add_recipe_arguments(draft)
    add_count_argument(draft)
    add_draft_plan_arguments(draft)  # --combinatorial, --sweep
    add_edit_arguments(draft)  # --lora, --control, --control-param
    add_json_option(draft)
    draft.set_defaults(func=run_draft)

    refine = subparsers.add_parser("refine", help="finish a draft: the refiner resumes its kept latent")
    add_device_options(refine)
    refine.add_argument("draft_id", type=int)
    refine.add_argument("--steps", type=int, help="re-render the draft's seed at this many steps first")
    add_json_option(refine)
    refine.set_defaults(func=run_refine)

    rerun = subparsers.add_parser("rerun", help="make a gallery entry again from its recipe (same pixels)")
    add_device_options(rerun)
    rerun.add_argument("id", type=int)
    add_json_option(rerun)
    rerun.set_defaults(func=run_rerun)
    register_vary(subparsers)


def register_vary(subparsers) -> None:
    from atelier.requests import DEFAULT_COUNT, VARY_STRONG, VARY_SUBTLE

    vary = subparsers.add_parser(
        "vary", help="new drafts of a draft: its seed's noise slerped towards variation seeds (A1111's variations)"
    )
    add_device_options(vary)
    vary.add_argument("id", type=int, help="the draft (or any txt2img image) to vary")
    vary.add_argument(
        "--strength",
        type=float,
        default=VARY_SUBTLE,
        help=f"variation strength from 0 (the draft itself) to 1 (default {VARY_SUBTLE}, subtle; strong: {VARY_STRONG})",
    )
    vary.add_argument("--count", type=int, default=DEFAULT_COUNT, help=f"how many drafts (default {DEFAULT_COUNT})")
    vary.add_argument("--variation-seed", type=int, help="the first variation seed, +1 for each next (default: random)")
    add_json_option(vary)
    vary.set_defaults(func=run_vary)


def draft_recipe(args: argparse.Namespace) -> Recipe:
    """The Recipe `atelier draft` makes: its options as a GenerationRequest, through `build_recipe`."""
    from atelier.requests import build_recipe

    return build_recipe(request_from_args(args), choose(args))


def draft_plan(args: argparse.Namespace):
    """The DraftPlan `atelier draft` makes: a batch, or one recipe per draft (a dynamic prompt, --sweep)."""
    from atelier.requests import plan_drafts, wildcards_folder

    return plan_drafts(request_from_args(args), choose(args), wildcards=wildcards_folder(args.home))


def run_draft(args: argparse.Namespace) -> int:
    from atelier.requests import recipe_warnings

    plan = draft_plan(args)  # every value validated before the studio opens or a model loads
    from atelier.studio import write_sweep_grid  # (the gallery's and SQLAlchemy's import: after validation)

    tell("draft", [w for recipe in plan.each or (plan.recipe,) for w in recipe_warnings(recipe)])
    grid = None
    with open_studio(args) as studio:
        recipe, inputs = edit_inputs_from_args(args, plan.recipe, studio)  # --control
        if not plan.each:
            saved = studio.draft(recipe, args.count, inputs=inputs)
        else:
            saved = studio.draft_each([r.replace(controlnets=recipe.controlnets) for r in plan.each], inputs=inputs)
            grid = write_sweep_grid(studio.downloads_folder(), saved, plan.labels) if plan.sweep else None
    tell("draft", [note for s in saved for note in s.notes])
    labels = plan.labels or ("",) * len(saved)
    payload = {"drafts": [dict(s.as_json(), **({"label": x} if x else {})) for s, x in zip(saved, labels)]}
    lines = [f"draft {s.id}  seed {s.recipe.seed}  {s.image}" + (f"  {x}" if x else "") for s, x in zip(saved, labels)]
    if grid is not None:
        payload["grid"] = str(grid)
        lines.append(f"grid {grid}")
    return emit(args, payload, lines)


def run_refine(args: argparse.Namespace) -> int:
    if args.steps is not None and not 1 <= args.steps <= MAX_STEPS:  # before the gallery opens (--steps 0 too)
        raise ValueError(f"steps: must be an integer from 1 to {MAX_STEPS} (got {args.steps})")
    with open_studio(args) as studio:
        rerender = args.steps is not None
        saved = studio.rerender(args.draft_id, args.steps) if rerender else studio.refine(args.draft_id)
    tell("refine", saved.notes)
    return emit(args, {"id": saved.id, "image": str(saved.image)}, f"refined {saved.id}  {saved.image}")


def run_rerun(args: argparse.Namespace) -> int:
    with open_studio(args) as studio:
        saved = studio.rerun(args.id)
    return emit(args, {"id": saved.id, "image": str(saved.image)}, f"re-run {args.id} → {saved.id}  {saved.image}")


def run_vary(args: argparse.Namespace) -> int:
    with open_studio(args) as studio:  # a bad strength, count or seed fails before a model loads
        saved = studio.vary(args.id, strength=args.strength, count=args.count, variation_seed=args.variation_seed)
    tell("vary", [note for s in saved for note in s.notes])
    return emit(
        args,
        {"drafts": [s.as_json() for s in saved]},
        [f"draft {s.id}  seed {s.recipe.seed}  variation seed {s.recipe.variation_seed}  {s.image}" for s in saved],
    )
