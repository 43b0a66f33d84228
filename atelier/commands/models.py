"""`atelier models [--json] [--no-hash]`: every model file Atelier can see, what it is, its hashes and why
it is unusable; `atelier tiny-model DIR [--single-file]`: write the offline tiny SDXL base and refiner."""

from __future__ import annotations

import argparse
from pathlib import Path

from atelier.commands.common import add_json_option, emit


def register(subparsers) -> None:
    listing = subparsers.add_parser(
        "models",
        help="list the checkpoints, refiners, VAEs, LoRAs, ControlNets and upscalers in the models folder",
        description="Every model file in the models folder ($ATELIER_MODELS or <home>/models, A1111 or ComfyUI "
        "layout) with its kind, detected variant, hashes (sha256; AutoV2 for checkpoints and AutoV3 for LoRAs, "
        "as A1111 and Civitai show them) and, for a file Atelier cannot use, why. Hashes are cached in "
        "<home>/cache/hashes.json, so a file is hashed once per version.",
    )
    listing.add_argument("--no-hash", action="store_true", help="hash nothing new: show only the hashes already cached")
    add_json_option(listing)
    listing.set_defaults(func=list_models)
    parser = subparsers.add_parser(
        "tiny-model",
        help="write a random-weight SDXL-architecture base and refiner (diffusers folders) for offline use",
    )
    parser.add_argument("directory", type=Path, metavar="DIR", help="writes DIR/base and DIR/refiner")
    parser.add_argument(
        "--single-file",
        action="store_true",
        help="also write DIR/base.safetensors and DIR/refiner.safetensors (original A1111/Civitai layout)",
    )
    add_json_option(parser)
    parser.set_defaults(func=tiny_model)


def tiny_model(args: argparse.Namespace) -> int:
    from atelier.model_choice import write_tiny_model

    paths = write_tiny_model(args.directory, single_file=args.single_file)
    return emit(args, paths, [f"{name}: {path}" for name, path in paths.items()])


def list_models(args: argparse.Namespace) -> int:
    from atelier.model_listing import list_models as listing

    found = listing(args.home, compute_hashes=not args.no_hash)
    if found["models_folder"] is None:
        lines = [
            f"no models folder found (set ATELIER_MODELS, or make {args.home / 'models'} with Stable-diffusion/, Lora/ …)"
        ]
    else:
        lines = [f"models folder: {found['models_folder']}"]
        lines += [_line(entry) for entry in found["models"]] or ["(no model files)"]
    return emit(args, found, lines)


def _line(entry: dict) -> str:
    hashes = [f"{key} {entry[key]}" for key in ("autov2", "autov3") if entry.get(key)]
    if entry.get("sha256") and not hashes:
        hashes.append(f"sha256 {entry['sha256'][:12]}…")
    variant = entry["variant"] or entry["form"]
    text = f"{entry['kind']:<10} {entry['name']}  —  {variant}" + (f"  [{', '.join(hashes)}]" if hashes else "")
    return text + (f"\n           unusable: {entry['problem']}" if entry["problem"] else "")
