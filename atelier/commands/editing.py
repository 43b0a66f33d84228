"""`atelier img2img | loras | controlnets`. The --lora / --control options img2img shares with `draft`
live in atelier/commands/request_options.py."""

from __future__ import annotations

import argparse
import base64
import dataclasses
from pathlib import Path

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
    add_edit_arguments,
    add_img2img_arguments,
    add_inpaint_arguments,
    add_recipe_arguments,
    edit_inputs_from_args,
    inpaint_from_args,
    read_image_arg,
    request_from_args,
)
from atelier.requests import DEFAULT_HEIGHT, DEFAULT_WIDTH
from pipelines.recipe import NO_EXPAND, Recipe


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
    add_server_options(img2img)
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
    server = _img2img_server(args)  # the request is checked before any server is asked
    if server is not None:
        answer = server.run({"action": "img2img", "request": _sent_request(args), "source": _sent_source(args.image)})
        saved, parent_id = answer["entries"][0], answer["parent_id"]
    else:
        saved, parent_id = _img2img_here(args)
    tell("img2img", saved["notes"])
    return emit(
        args,
        {"id": saved["id"], "seed": saved["seed"], "image": saved["image"], "parent_id": parent_id},
        f"img2img {saved['id']}  seed {saved['seed']}  {saved['image']}",
    )


def _img2img_here(args: argparse.Namespace) -> tuple[dict, int | None]:
    from atelier.requests import with_inpaint_model
    from atelier.studio import image_size

    with open_studio(args) as studio:
        source, parent_id = read_image_arg(args.image, studio)
        recipe = img2img_recipe(args, image_size(source))  # validated before any model loads
        recipe, mask = inpaint_from_args(args, recipe, studio)
        recipe, inputs = edit_inputs_from_args(args, recipe, studio, source, mask)
        recipe = with_inpaint_model(recipe, args.inpaint_model)  # the mask is recorded now
        saved = studio.edit(recipe, inputs, parent_id=parent_id)
    return wire.saved_entry(saved), parent_id


def _img2img_server(args: argparse.Namespace):
    """The server an img2img goes to (None: here), once every value this process can check is checked. A
    mask, an outpaint or a ControlNet run here (they read files of this machine)."""
    if args.mask or args.control or args.inpaint_model or args.expand != NO_EXPAND:
        return find_server(args, "img2img", local_only="--mask, --expand, --control and --inpaint-model")
    path = Path(args.image).expanduser()
    if path.is_file():
        from atelier.edit_inputs import image_size  # (not atelier.studio: no gallery, no SQLAlchemy)

        size = image_size(path.read_bytes())
    elif args.image.isdigit():  # a gallery image: its size is the server's to know; the rest is checked here
        size = (args.width or DEFAULT_WIDTH, args.height or DEFAULT_HEIGHT)
    else:
        raise ValueError(f"image {args.image!r}: no such file, and not a gallery id")
    inpaint_from_args(args, img2img_recipe(args, size), studio=None)  # (no mask: the studio is not needed)
    return find_server(args, "img2img")


def _sent_request(args: argparse.Namespace) -> dict:
    from atelier.requests import default_prompt_syntax

    request = dataclasses.replace(request_from_args(args), syntax=args.syntax or default_prompt_syntax())
    return wire.request_to_json(request)


def _sent_source(image: str) -> dict:
    path = Path(image).expanduser()
    if path.is_file():
        return {"png": base64.b64encode(path.read_bytes()).decode("ascii")}
    return {"id": int(image)}


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
