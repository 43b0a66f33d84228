"""`atelier img2img | loras | controlnets`. The --lora / --control options img2img shares with `draft`
live in atelier/commands/request_options.py."""

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
    add_edit_arguments,
    add_img2img_arguments,
    add_inpaint_arguments,
    add_recipe_arguments,
    edit_inputs_from_args,
    inpaint_from_args,
    read_image_arg,
    request_from_args,
)
from pipelines.recipe import Recipe


def register(subparsers) -> None:
    img2img = subparsers.add_parser("img2img", help="remake an image (a file or a gallery id) at a denoise strength")
    add_device_options(img2img)
    add_model_options(img2img)
    img2img.add_argument("--image", required=True, help="source: an image file or a gallery id")
    add_img2img_arguments(img2img)  # --strength, --refine-only
    add_inpaint_arguments(img2img)  # --mask, --mask-blur, --inpaint-area, --inpaint-padding
    add_recipe_arguments(img2img, img2img=True)
    add_edit_arguments(img2img)
    add_json_option(img2img)
    img2img.set_defaults(func=run_img2img)

    loras = subparsers.add_parser("loras", help="list the LoRAs in the models folder")
    add_json_option(loras)
    loras.set_defaults(func=run_loras)

    controlnets = subparsers.add_parser("controlnets", help="list the installed ControlNets and preprocessors")
    add_json_option(controlnets)
    controlnets.set_defaults(func=run_controlnets)


def img2img_recipe(args: argparse.Namespace, source_size: tuple[int, int]) -> Recipe:
    """The Recipe `atelier img2img` makes from a source of `source_size` (width, height)."""
    from atelier.requests import build_recipe

    return build_recipe(request_from_args(args, source_size=source_size), choose(args))


def run_img2img(args: argparse.Namespace) -> int:
    from atelier.requests import with_inpaint_model
    from atelier.studio import image_size

    with open_studio(args) as studio:
        source, parent_id = read_image_arg(args.image, studio)
        recipe = img2img_recipe(args, image_size(source))  # validated before any model loads
        recipe, mask = inpaint_from_args(args, recipe, studio)
        recipe, inputs = edit_inputs_from_args(args, recipe, studio, source, mask)
        recipe = with_inpaint_model(recipe, args.inpaint_model)  # the mask is recorded now
        saved = studio.edit(recipe, inputs, parent_id=parent_id)
    tell("img2img", saved.notes)
    return emit(
        args,
        {"id": saved.id, "seed": saved.recipe.seed, "image": str(saved.image), "parent_id": parent_id},
        f"img2img {saved.id}  seed {saved.recipe.seed}  {saved.image}",
    )


def run_loras(args: argparse.Namespace) -> int:
    with open_studio(args) as studio:
        folder, found = studio.lora_folder(), studio.loras()
    lines = [f"LoRA folder: {folder or f'none (put LoRAs in {args.home.resolve()}/models/Lora or set ATELIER_MODELS)'}"]
    for entry in found:
        lines.append(
            f"  {entry['name']}  "
            + (f"{entry['format']}, {entry['layers']} layers" if "format" in entry else f"unusable: {entry['error']}")
        )
    return emit(args, {"folder": str(folder) if folder else None, "loras": found}, lines)


def run_controlnets(args: argparse.Namespace) -> int:
    with open_studio(args) as studio:
        folder, models, preprocessors = studio.controlnet_folder(), studio.controlnets(), studio.preprocessors()
    lines = [
        f"ControlNet folder: {folder or f'none (put ControlNets in {args.home.resolve()}/models/ControlNet or set ATELIER_MODELS)'}"
    ]
    lines += [f"  {entry['name']}  {entry['path']}" for entry in models]
    lines.append("Preprocessors:")
    lines += [f"  {entry['name']}  " + ("ready" if entry["ready"] else entry["missing"]) for entry in preprocessors]
    return emit(
        args, {"folder": str(folder) if folder else None, "controlnets": models, "preprocessors": preprocessors}, lines
    )
