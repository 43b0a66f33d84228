"""What every subcommand shares: the studio factory, printing, the device and model options, and the one
mapping from an error to the exit status (`run_command`, which `atelier.cli.main` calls; the statuses
are listed in atelier/cli.py's docstring). Any exception outside that mapping is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipelines.errors import OutOfMemory

EXIT_OK = 0
EXIT_FAULT = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

DTYPES = ("float16", "bfloat16", "float32")


def run_command(args: argparse.Namespace) -> int:
    """`args.func(args)`, with its errors turned into a message on stderr and the exit status above."""
    name = f"atelier {getattr(args, 'command', '') or ''}".rstrip()
    try:
        return int(args.func(args) or EXIT_OK)
    except (KeyboardInterrupt, Exception) as exc:
        code = exit_code(exc)
        if code is None:
            raise
        print(f"{name}: {'interrupted' if code == EXIT_INTERRUPTED else exc}", file=sys.stderr)
        return code


def exit_code(exc: BaseException) -> int | None:
    """The exit status of an error a user can act on; None for a bug (re-raised with its traceback)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, ValueError):  # includes storage's NotFoundError and pipelines' ModelNotFound
        return EXIT_BAD_INPUT
    if isinstance(exc, _faults()):
        return EXIT_FAULT
    return None


def _faults() -> tuple[type[BaseException], ...]:
    """Faults whose message is meant for the user. MigrationError is asked of storage.migrate only once it
    is loaded (it imports SQLAlchemy and Alembic), so the CLI still starts light."""
    kinds: list[type[BaseException]] = [OSError, OutOfMemory]
    migrate = sys.modules.get("storage.migrate")
    if migrate is not None:
        kinds.append(migrate.MigrationError)
    return tuple(kinds)


def open_studio(args: argparse.Namespace):
    """The Studio for `args.home`, with the device options when the command has them."""
    from atelier.studio import Studio

    name = f"atelier {getattr(args, 'command', '') or ''}".rstrip()
    return Studio(
        args.home,
        device=getattr(args, "device", None),
        dtype=getattr(args, "dtype", None),
        cpu_offload=getattr(args, "cpu_offload", False),
        vae_tiling=getattr(args, "vae_tiling", False),
        on_loading=lambda what: print(f"{name}: loading {what}…", file=sys.stderr, flush=True),
    )


def emit(args: argparse.Namespace, payload: Any, text: str | list[str]) -> int:
    """With --json exactly one JSON document on stdout, else the text (lines joined)."""
    if getattr(args, "json", False):
        print(json.dumps(payload, default=str))
    else:
        print(text if isinstance(text, str) else "\n".join(text))
    return EXIT_OK


def tell(command: str, lines) -> None:
    """Notes and warnings for the user on stderr (stdout stays one JSON document with --json)."""
    for line in dict.fromkeys(lines):
        print(f"atelier {command}: note: {line}", file=sys.stderr)


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """--device, --dtype, --cpu-offload, --vae-tiling: for every command that loads models."""
    parser.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: the best available)")
    parser.add_argument("--dtype", choices=DTYPES, help="default: float16 on GPUs, float32 on CPU")
    parser.add_argument("--cpu-offload", action="store_true", help="keep models in RAM, move each to the GPU when used")
    parser.add_argument("--vae-tiling", action="store_true", help="decode large images in tiles (less memory)")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model and --refiner, as `choose_models` reads them."""
    parser.add_argument(
        "--model",
        help="tiny, a hub id, a diffusers folder, a .safetensors file, or a name in the models "
        "folder (default: SDXL weights found locally, else the tiny demo model)",
    )
    parser.add_argument("--refiner", help="like --model; 'base' lets the base refine its own drafts")


def choose(args: argparse.Namespace):
    """The ModelChoice of --model/--refiner (what is found locally when they are left out)."""
    from atelier.model_choice import choose_models

    return choose_models(args.home, args.model, args.refiner)
