"""`atelier`: the command line. Subcommands live in atelier/commands/, one module per topic.

A stable contract for outside scripts: with `--json`, stdout carries exactly one JSON document;
progress bars and messages go to stderr. Exit status 0 on success, 1 for a negative answer
(e.g. no watermark found), 2 for a usage or input error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from atelier import __version__
from atelier.settings import default_home

COMMAND_MODULES = ("generate", "models", "gallery", "provenance", "bench", "serve", "editing")


class _WithCommonOptions:
    """Hands every subcommand the options all of them share (--home), whoever registers it."""

    def __init__(self, subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
        self._subparsers = subparsers
        self._common = common

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        kwargs["parents"] = [*kwargs.get("parents", []), self._common]
        return self._subparsers.add_parser(name, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", type=Path, default=default_home(),
                        help="where the gallery, outputs and models live (default: $ATELIER_HOME or ~/.atelier)")
    parser = argparse.ArgumentParser(prog="atelier", description="A browser studio for Stable Diffusion XL.")
    parser.add_argument("--version", action="version", version=f"atelier {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wrapped = _WithCommonOptions(subparsers, common)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"atelier.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"atelier.commands.{name}":
                raise
            continue  # a topic not built yet
        module.register(wrapped)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("DISABLE_TELEMETRY", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:  # errors a user can cause: say what to change, no traceback
        print(f"atelier {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"atelier {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not isinstance(exc, _worded_faults()):
            raise
        print(f"atelier {args.command}: {exc}", file=sys.stderr)
        return 1


def _worded_faults() -> tuple[type, ...]:
    """Faults whose message is meant for the user: a full disk, a lost file, out of memory, a failed
    migration. Only modules already loaded are asked, so the CLI still starts without torch."""
    kinds: list[type] = [OSError]
    for module, name in (("pipelines.engine.engine", "OutOfMemory"), ("storage.migrate", "MigrationError")):
        if module in sys.modules:
            kinds.append(getattr(sys.modules[module], name))
    return tuple(kinds)


if __name__ == "__main__":
    sys.exit(main())
