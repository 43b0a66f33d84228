"""`atelier draft | refine | rerun | vary`: generation through the studio into the gallery."""

from __future__ import annotations

import argparse
import dataclasses

from atelier import server_wire as wire
from atelier.commands.common import (
    add_device_options,
    add_json_option,
    add_model_options,
    choose,
    emit,
    open_studio,
    tell,
)
from atelier.commands.remote import add_server_options, find_server
from atelier.commands.request_options import (
    add_count_argument,
    add_draft_plan_arguments,
    add_edit_arguments,
    add_recipe_arguments,
    edit_inputs_from_args,
    request_from_args,
)
from pipelines.recipe import MAX_DRAFTS, MAX_STEPS, Recipe


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
    add_server_options(draft)
    draft.set_defaults(func=run_draft)

    refine = subparsers.add_parser("refine", help="finish a draft: the refiner resumes its kept latent")
    add_device_options(refine)
    refine.add_argument("draft_id", type=int)
    refine.add_argument("--steps", type=int, help="re-render the draft's seed at this many steps first")
    add_json_option(refine)
    add_server_options(refine)
    refine.set_defaults(func=run_refine)

    rerun = subparsers.add_parser("rerun", help="make a gallery entry again from its recipe (same pixels)")
    add_device_options(rerun)
    rerun.add_argument("id", type=int)
    add_json_option(rerun)
    add_server_options(rerun)
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
    add_server_options(vary)
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
    from atelier.requests import default_prompt_syntax, recipe_warnings

    plan = draft_plan(args)  # every value validated before a server is asked, the studio opens or a model loads
    tell("draft", [w for recipe in plan.each or (plan.recipe,) for w in recipe_warnings(recipe)])
    local_only = "--control reads image files of this machine" if args.control else None
    server = find_server(args, "draft", local_only=local_only)
    if server is not None:
        request = dataclasses.replace(request_from_args(args), syntax=args.syntax or default_prompt_syntax())
        result = server.run({"action": "draft", "request": wire.request_to_json(request)})
    else:
        result = _draft_here(args, plan)
    entries = result["entries"]
    tell("draft", [note for e in entries for note in e["notes"]])
    labels = result.get("labels") or ("",) * len(entries)
    payload = {"drafts": [dict(wire.printed(e), **({"label": x} if x else {})) for e, x in zip(entries, labels)]}
    lines = [
        f"draft {e['id']}  seed {e['seed']}  {e['image']}" + (f"  {x}" if x else "") for e, x in zip(entries, labels)
    ]
    if result.get("grid") is not None:
        payload["grid"] = str(result["grid"])
        lines.append(f"grid {result['grid']}")
    return emit(args, payload, lines)


def _draft_here(args: argparse.Namespace, plan) -> dict:
    from atelier.studio import write_sweep_grid  # (the gallery's and SQLAlchemy's import: after validation)

    grid = None
    with open_studio(args) as studio:
        recipe, inputs = edit_inputs_from_args(args, plan.recipe, studio)  # --control
        if not plan.each:
            saved = studio.draft(recipe, args.count, inputs=inputs)
        else:
            saved = studio.draft_each([r.replace(controlnets=recipe.controlnets) for r in plan.each], inputs=inputs)
            grid = write_sweep_grid(studio.downloads_folder(), saved, plan.labels) if plan.sweep else None
    return {"entries": [wire.saved_entry(s) for s in saved], "labels": list(plan.labels or ()), "grid": grid}


def run_refine(args: argparse.Namespace) -> int:
    if args.steps is not None and not 1 <= args.steps <= MAX_STEPS:  # before the gallery opens (--steps 0 too)
        raise ValueError(f"steps: must be an integer from 1 to {MAX_STEPS} (got {args.steps})")
    rerender = args.steps is not None
    server = find_server(args, "refine")
    if server is not None:
        job = {"action": "rerender" if rerender else "refine", "id": args.draft_id}
        saved = server.run({**job, "options": {"steps": args.steps} if rerender else {}})["entries"][0]
    else:
        with open_studio(args) as studio:
            made = studio.rerender(args.draft_id, args.steps) if rerender else studio.refine(args.draft_id)
        saved = wire.saved_entry(made)
    tell("refine", saved["notes"])
    return emit(args, {"id": saved["id"], "image": saved["image"]}, f"refined {saved['id']}  {saved['image']}")


def run_rerun(args: argparse.Namespace) -> int:
    server = find_server(args, "rerun")
    if server is not None:
        saved = server.run({"action": "rerun", "id": args.id})["entries"][0]
    else:
        with open_studio(args) as studio:
            saved = wire.saved_entry(studio.rerun(args.id))
    return emit(
        args, {"id": saved["id"], "image": saved["image"]}, f"re-run {args.id} → {saved['id']}  {saved['image']}"
    )


def run_vary(args: argparse.Namespace) -> int:
    if not 1 <= args.count <= MAX_DRAFTS:  # the rest needs the draft's recipe: checked where the gallery is
        raise ValueError(f"count: must be an integer from 1 to {MAX_DRAFTS} (got {args.count})")
    options = {"strength": args.strength, "count": args.count, "variation_seed": args.variation_seed}
    server = find_server(args, "vary")
    if server is not None:
        entries = server.run({"action": "vary", "id": args.id, "options": options})["entries"]
    else:
        with open_studio(args) as studio:  # a bad strength, count or seed fails before a model loads
            entries = [wire.saved_entry(s) for s in studio.vary(args.id, **options)]
    tell("vary", [note for e in entries for note in e["notes"]])
    return emit(
        args,
        {"drafts": [wire.printed(e) for e in entries]},
        [f"draft {e['id']}  seed {e['seed']}  variation seed {e['variation_seed']}  {e['image']}" for e in entries],
    )
