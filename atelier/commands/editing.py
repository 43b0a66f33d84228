"""`atelier img2img | loras | controlnets`, and the `--lora` / `--control` options `draft` shares.

`--lora NAME[:W]` (repeatable): a LoRA from the models folder at weight W (default 1).
`--control TYPE[=MODEL]:IMAGE[:SCALE[:START:END]]` (repeatable): TYPE is a preprocessor (canny,
shuffle, lineart_standard, none, or an annotator-based one when its weights are here); MODEL is the
ControlNet (a name in the models folder, a folder, a .safetensors file or a hub id) — left out, the
installed ControlNet whose name mentions the type is used. IMAGE is a file or a gallery id.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.recipe import LoraRef, Recipe

if TYPE_CHECKING:  # the CLI starts light: the image and model modules load when a command runs
    from atelier.edit_inputs import InputFiles

# Words that name a preprocessor's kind of ControlNet in common model file names.
MODEL_KEYWORDS = {
    "canny": ("canny",), "shuffle": ("shuffle",), "lineart_standard": ("lineart",), "lineart": ("lineart",),
    "lineart_anime": ("anime", "lineart"), "depth_midas": ("depth",), "hed": ("hed", "softedge"),
    "pidinet": ("softedge", "pidi"), "openpose": ("openpose", "pose"), "mlsd": ("mlsd",), "normalbae": ("normal",),
}


def register(subparsers) -> None:
    from atelier.commands.generate import _add_device_options, add_recipe_arguments

    img2img = subparsers.add_parser("img2img", help="remake an image (a file or a gallery id) at a denoise strength")
    _add_device_options(img2img)
    img2img.add_argument("--image", required=True, help="source: an image file or a gallery id")
    add_recipe_arguments(img2img, refine_strength_flag="--refine-strength")
    img2img.set_defaults(width=None, height=None)  # default: the SDXL bucket nearest the source's aspect
    img2img.add_argument("--strength", type=float, required=True,
                         help="0 keeps the source, 1 ignores it; with the refiner, above 1 - switch")
    img2img.add_argument("--refine-only", action="store_true",
                         help="refine any image: the refiner alone at --refine-strength (the base runs no step)")
    add_edit_arguments(img2img)
    img2img.add_argument("--json", action="store_true")
    img2img.set_defaults(func=run_img2img)

    loras = subparsers.add_parser("loras", help="list the LoRAs in the models folder")
    loras.add_argument("--json", action="store_true")
    loras.set_defaults(func=run_loras)

    controlnets = subparsers.add_parser("controlnets", help="list the installed ControlNets and preprocessors")
    controlnets.add_argument("--json", action="store_true")
    controlnets.set_defaults(func=run_controlnets)


def add_edit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lora", action="append", default=[], type=parse_lora, metavar="NAME[:W]",
                        help="apply a LoRA from the models folder at weight W (repeatable)")
    parser.add_argument("--control", action="append", default=[], metavar="TYPE[=MODEL]:IMAGE[:SCALE[:START:END]]",
                        help="a ControlNet unit (repeatable); TYPE: canny, shuffle, lineart_standard, none, …")
    parser.add_argument("--control-param", action="append", default=[], type=_param, metavar="NAME=VALUE",
                        help="a preprocessor setting, e.g. low=50 high=150 for canny (repeatable)")


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


def read_image_arg(value: str, gallery) -> tuple[bytes, int | None]:
    """An image file's bytes, or a gallery generation's image bytes and its id."""
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_bytes(), None
    if value.isdigit():
        generation = gallery.get(int(value))
        return generation.image_path.read_bytes(), generation.id
    raise ValueError(f"image {value!r}: no such file, and not a gallery id")


def edit_inputs_from_args(args, recipe: Recipe, studio, source: bytes | None = None) -> tuple[Recipe, InputFiles]:
    """--lora, --control and --control-param applied to a recipe; images preprocessed and hashed."""
    from atelier.edit_inputs import ControlRequest, with_inputs
    from pipelines.models.preprocessors import OFFLINE, check_params

    recipe = recipe.replace(loras=recipe.loras + tuple(args.lora))
    params = dict(args.control_param)
    controls, used = [], set()
    for text in args.control:
        kind, model, image, numbers = parse_control(text)
        own = {k: v for k, v in params.items() if k in OFFLINE.get(kind, {})}
        check_params(kind, own)  # an unknown preprocessor or setting, before anything is read
        data, _ = read_image_arg(image, studio.gallery)
        scale = numbers[0] if numbers else 1.0
        start, end = numbers[1:] if len(numbers) == 3 else (0.0, 1.0)
        used |= set(own)
        model = model or pick_controlnet(kind, studio.engine.controlnets.available())
        controls.append(ControlRequest(model, kind, data, scale, start, end, own))
    unused = sorted(set(params) - used)
    if unused:
        raise ValueError(f"--control-param: {', '.join(unused)} is a setting of none of the --control preprocessors")
    annotators = studio.engine.controlnets.folder()
    annotators = annotators.parent / "annotators" if annotators is not None else None
    return with_inputs(recipe, source, controls, annotators)


def pick_controlnet(kind: str, installed: list[dict]) -> str:
    words = MODEL_KEYWORDS.get(kind, ())
    matches = [m["name"] for m in installed if any(w in m["name"].lower() for w in words)]
    if len(matches) == 1:
        return matches[0]
    names = ", ".join(m["name"] for m in installed) or "none installed"
    if not matches:
        raise ValueError(f"--control {kind}: no installed ControlNet's name mentions {kind!r} (installed: {names}); "
                         f"name one with {kind}=MODEL")
    raise ValueError(f"--control {kind}: several ControlNets fit ({', '.join(matches)}); name one with {kind}=MODEL")


def run_img2img(args) -> int:
    from atelier.commands.generate import _print, _studio, recipe_from_args
    from atelier.edit_inputs import open_image
    from pipelines.recipe import refine_any_recipe
    from pipelines.sizes import nearest_bucket

    with _studio(args) as studio:
        source, parent_id = read_image_arg(args.image, studio.gallery)
        if args.width is None or args.height is None:
            args.width, args.height = nearest_bucket(*open_image(source, "source image").size)
        recipe = recipe_from_args(args, args.home)
        recipe = recipe.replace(mode="img2img", strength=args.strength)
        if args.refine_only:
            if recipe.refine is None:
                raise ValueError("--refine-only: needs a refine stage (a --refiner, or 'base')")
            recipe = refine_any_recipe(recipe, recipe.refine)
        recipe, inputs = edit_inputs_from_args(args, recipe, studio, source)
        saved = studio.edit(recipe, inputs, parent_id=parent_id)
    _print(args, {"id": saved.id, "seed": saved.recipe.seed, "image": str(saved.image), "parent_id": parent_id},
           [f"img2img {saved.id}  seed {saved.recipe.seed}  {saved.image}"])
    return 0


def run_loras(args) -> int:
    from pipelines.models.lora import LoraLibrary

    library = LoraLibrary(args.home)
    folder, found = library.folder(), library.available()
    if args.json:
        print(json.dumps({"folder": str(folder) if folder else None, "loras": found}))
        return 0
    print(f"LoRA folder: {folder or 'none (put LoRAs in <home>/models/Lora or set ATELIER_MODELS)'}")
    for entry in found:
        print(f"  {entry['name']}  " + (f"{entry['format']}, {entry['layers']} layers" if "format" in entry
                                        else f"unusable: {entry['error']}"))
    return 0


def run_controlnets(args) -> int:
    from pipelines.models.controlnet import ControlNetLibrary
    from pipelines.models.preprocessors import available

    library = ControlNetLibrary(args.home)
    folder = library.folder()
    annotators = folder.parent / "annotators" if folder is not None else None
    models, preprocessors = library.available(), available(annotators)
    if args.json:
        print(json.dumps({"folder": str(folder) if folder else None, "controlnets": models,
                          "preprocessors": preprocessors}))
        return 0
    print(f"ControlNet folder: {folder or 'none (put ControlNets in <home>/models/ControlNet or set ATELIER_MODELS)'}")
    for entry in models:
        print(f"  {entry['name']}  {entry['path']}")
    print("Preprocessors:")
    for entry in preprocessors:
        print(f"  {entry['name']}  " + ("ready" if entry["ready"] else entry["missing"]))
    return 0
