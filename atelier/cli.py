"""`atelier`: the command line. Subcommands live in atelier/commands/, one module per topic; each is a
thin adapter: argparse values → the Studio and the request builder (atelier/requests.py).

A stable contract for outside scripts: with `--json`, stdout carries exactly one JSON document;
progress bars and messages go to stderr. Exit status, the same for every command (one mapping:
atelier.commands.common.run_command):
  0    success
  1    a fault rather than the input: a full disk or another OSError, out of device memory, a failed
       gallery migration; also the negative answer of `detect-watermark` (a file without the watermark)
  2    bad input: a usage error, or a ValueError such as a value out of range or a gallery id that does
       not exist; the message names the field and what is allowed
  130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from pathlib import Path

from atelier import __version__
from atelier.commands.common import run_command
from atelier.settings import default_home

COMMAND_MODULES = ("generate", "editing", "upscale", "gallery", "provenance", "models", "bench", "serve")


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
    common.add_argument(
        "--home",
        type=Path,
        default=default_home(),
        help="where the gallery, outputs and models live (default: $ATELIER_HOME or ~/.atelier)",
    )
    common.add_argument(
        "--database",
        metavar="URL",
        help="the gallery database, e.g. postgresql+psycopg://user@host/gallery "
        "(default: $ATELIER_DATABASE_URL, else gallery.db in the home)",
    )
    common.add_argument(
        "--files",
        dest="files_dir",  # not "files": detect-watermark's positional FILEs are args.files
        metavar="DIR",
        help="the gallery's image files, e.g. on storage every machine mounts (default: $ATELIER_FILES_DIR, "
        "else files/ in the home)",
    )
    common.add_argument(
        "--no-backup",
        action="store_true",
        help="upgrade a PostgreSQL gallery's schema without a pg_dump first (SQLite is always copied)",
    )
    parser = argparse.ArgumentParser(prog="atelier", description="A browser studio for Stable Diffusion XL.")
    parser.add_argument("--version", action="version", version=f"atelier {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wrapped = _WithCommonOptions(subparsers, common)
    for name in COMMAND_MODULES:
        importlib.import_module(f"atelier.commands.{name}").register(wrapped)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("DISABLE_TELEMETRY", "1")
    args = build_parser().parse_args(argv)  # a usage error exits 2 here, with argparse's message
    # The storage layer reads these (storage.db / storage.migrate): set for the command, they reach all of it.
    overrides = {
        "ATELIER_DATABASE_URL": args.database,
        "ATELIER_FILES_DIR": str(Path(args.files_dir).expanduser().resolve()) if args.files_dir else None,
        "ATELIER_NO_BACKUP": "1" if args.no_backup else None,
    }
    with _environment({name: value for name, value in overrides.items() if value}):
        return run_command(args)


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


if __name__ == "__main__":
    sys.exit(main())
