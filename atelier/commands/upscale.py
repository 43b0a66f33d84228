"""`atelier upscale`: hires fix of a gallery image (pixel upscale, then img2img base → refiner); see
atelier/upscale.py for what is recorded. Bad values are ValueErrors (exit 2) before a model loads."""

from __future__ import annotations

import argparse

from atelier import server_wire as wire
from atelier.commands.common import add_device_options, add_json_option, emit, open_studio, tell
from atelier.commands.remote import add_server_options, find_server


def register(subparsers) -> None:
    upscale = subparsers.add_parser(
        "upscale",
        help="enlarge a gallery image (×2 by default) and redraw its detail with img2img (hires fix)",
    )
    add_device_options(upscale)
    upscale.add_argument("id", type=int, help="the gallery image (a picked draft, a refined or any image)")
    upscale.add_argument("--scale", type=float, metavar="F", help="enlarge by F, above 1 and at most 4 (default 2)")
    upscale.add_argument("--width", type=int, metavar="W", help="or a target size: width (a multiple of 8) ...")
    upscale.add_argument("--height", type=int, metavar="H", help="... and height (a multiple of 8)")
    upscale.add_argument(
        "--strength", type=float, default=0.35, metavar="S", help="denoise strength of the img2img pass (default 0.35)"
    )
    upscale.add_argument("--steps", type=int, metavar="N", help="schedule steps (default: the image's own)")
    upscale.add_argument(
        "--upscaler",
        default="lanczos",
        metavar="NAME",
        help="lanczos (default) or an ESRGAN-family .safetensors model in models/ESRGAN or models/upscale_models",
    )
    add_json_option(upscale)
    add_server_options(upscale)
    upscale.set_defaults(func=run_upscale)


def run_upscale(args: argparse.Namespace) -> int:
    options = {
        "scale": args.scale,
        "width": args.width,
        "height": args.height,
        "strength": args.strength,
        "steps": args.steps,
        "upscaler": args.upscaler,
    }
    from atelier.upscale import UpscaleRequest

    UpscaleRequest(**options)  # bad values are refused here, before a server is asked or a model loads
    server = find_server(args, "upscale")
    if server is not None:
        saved = server.run({"action": "upscale", "id": args.id, "options": options})["entries"][0]
    else:
        with open_studio(args) as studio:
            saved = wire.saved_entry(studio.upscale(args.id, **options))
    tell("upscale", saved["notes"])
    size = f"{saved['width']}×{saved['height']}"
    return emit(
        args,
        {"id": saved["id"], "image": saved["image"]},
        f"upscaled {args.id} → {saved['id']}  {size}  {saved['image']}",
    )
