"""`atelier tiny-model DIR [--single-file]`: write the offline tiny SDXL base and refiner."""

from __future__ import annotations

import argparse
from pathlib import Path

from atelier.commands.common import add_json_option, emit


def register(subparsers) -> None:
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
