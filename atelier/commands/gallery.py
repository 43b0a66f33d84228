"""Gallery subcommands: list, show, delete, export, favourite, tag, import (rerun lives with the
generating commands: it needs the engine), and `gallery check|repair|rebuild` (atelier/gallery_maintenance.py:
they work on a gallery the Studio refuses to open). Errors reach `atelier.commands.common.run_command`, the one
mapping to an exit status (a missing id is a ValueError: 2; a file that cannot be written: 1)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atelier.commands.common import add_json_option, emit, open_studio, tell
from atelier.studio_values import GalleryFilters

if TYPE_CHECKING:  # the Studio (SQLAlchemy, the gallery) loads when a command runs, not at `atelier` start-up
    from atelier.studio import Generation


def register(subparsers) -> None:
    p = _command(subparsers, "list", _list, "list gallery entries, newest first", with_id=False)
    p.add_argument("--search", metavar="Q", help="full-text query over prompt and negative")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="how many (default 20)")
    p.add_argument("--after", metavar="CURSOR", help="continue after a previous page (its next_cursor)")
    p.add_argument("--model", help="only this model name")
    p.add_argument("--lora", help="only generations that used this LoRA")
    p.add_argument("--kind", help="only this kind (draft, refined, txt2img, img2img, controlnet, imported)")
    p.add_argument("--favourite", action="store_true", default=None, help="only favourites")
    p.add_argument("--tag", help="only generations with this tag")

    _command(subparsers, "show", _show, "show one gallery entry and its recipe")
    _command(subparsers, "delete", _delete, "delete an entry and the files nothing else uses")
    p = _command(subparsers, "export", _export, "copy an entry's PNG (unchanged) and its recipe JSON to DIR")
    p.add_argument("dir", type=Path)
    p = _command(subparsers, "favourite", _favourite, "mark (or with --off unmark) an entry as favourite")
    p.add_argument("--off", action="store_true", help="remove the mark")
    p = _command(subparsers, "tag", _tag, "add tags to an entry (--replace: set exactly these)")
    p.add_argument("tags", nargs="*", metavar="TAG", help="tags to add")
    p.add_argument("--remove", nargs="+", default=[], metavar="TAG", help="tags to remove")
    p.add_argument("--replace", action="store_true", help="replace all tags with the given ones")
    p = _command(
        subparsers,
        "import",
        _import,
        "add an Atelier, A1111 or InvokeAI PNG to the gallery with its recipe",
        with_id=False,
    )
    p.add_argument("file", type=Path)
    _register_maintenance(subparsers)


def _register_maintenance(subparsers) -> None:
    parser = subparsers.add_parser("gallery", help="check, repair or rebuild the gallery database")
    tools = parser.add_subparsers(dest="gallery_command", required=True, metavar="ACTION")
    for name, func, help_ in (
        ("check", _check, "report what is wrong with the database and files (changes nothing)"),
        ("repair", _repair, "copy a damaged database aside, then recover what SQLite can read into a new one"),
        ("rebuild", _rebuild, "make rows again from the recipes inside the PNGs in files/ that have none"),
    ):
        tool = tools.add_parser(name, help=help_)
        tool.add_argument("--home", type=Path, default=argparse.SUPPRESS, help="as for every command")
        add_json_option(tool)
        tool.set_defaults(func=func)


def _command(subparsers, name: str, func, help_: str, *, with_id: bool = True):
    parser = subparsers.add_parser(name, help=help_)
    if with_id:
        parser.add_argument("id", type=int, help="gallery id")
    add_json_option(parser)
    parser.set_defaults(func=func)
    return parser


def summary(gen: Generation) -> dict[str, Any]:
    return {
        "id": gen.id,
        "created_at": gen.created_at.isoformat(),
        "kind": gen.kind,
        "parent_id": gen.parent_id,
        "batch_id": gen.batch_id,
        "prompt": gen.recipe.prompt,
        "model": gen.recipe.model.name,
        "seed": gen.recipe.seed,
        "size": [gen.recipe.width, gen.recipe.height],
        "image_sha256": gen.image_sha256,
        "image": str(gen.image_path),
        "favourite": gen.favourite,
        "tags": list(gen.tags),
        "files_missing": gen.files_missing,
    }


def details(gen: Generation) -> dict[str, Any]:
    return {
        **summary(gen),
        "thumbnail": str(gen.thumbnail_path),
        "latent": str(gen.latent_path) if gen.latent_path else None,
        "inputs": dict(gen.inputs),
        "recipe": gen.recipe.to_dict(),
    }


def _list(args) -> int:
    filters = GalleryFilters(
        kinds=(args.kind,) if args.kind else (),
        model=args.model,
        lora=args.lora,
        favourites_only=bool(args.favourite),
        tag=args.tag,
    )
    with open_studio(args) as studio:
        page = studio.search(args.search, filters, limit=args.limit, after=args.after)
    lines = [
        f"{g.id:>6}  {g.created_at:%Y-%m-%d %H:%M}  {g.kind:<10} {'*' if g.favourite else ' '} "
        f"{g.recipe.model.name[:20]:<20} {_short(g.recipe.prompt, 60)}"
        for g in page.items
    ]
    if page.next_cursor:
        lines.append(f"(more: --after {page.next_cursor})")
    return emit(
        args, {"items": [summary(g) for g in page.items], "next_cursor": page.next_cursor}, lines or "(no entries)"
    )


def _show(args) -> int:
    with open_studio(args) as studio:
        gen = studio.get(args.id)
    data = details(gen)
    lines = [f"{k}: {v}" for k, v in data.items() if k != "recipe"]
    lines.append("recipe: " + gen.recipe.to_json())
    return emit(args, data, lines)


def _delete(args) -> int:
    with open_studio(args) as studio:
        removed = studio.delete(args.id)
    return emit(
        args, {"id": args.id, "removed_files": list(removed)}, f"deleted {args.id} ({len(removed)} file(s) removed)"
    )


def _export(args) -> int:
    with open_studio(args) as studio:
        gen = studio.get(args.id)
        data = studio.read_file(gen.image_sha256)  # checks the sha256: the export is the saved image
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)  # a file in the way: an OSError, exit 1
    image = folder / f"atelier-{gen.id}.png"
    recipe = folder / f"atelier-{gen.id}.json"
    _write(image, data)
    _write(recipe, (json.dumps(gen.recipe.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    return emit(args, {"id": gen.id, "image": str(image), "recipe": str(recipe)}, [str(image), str(recipe)])


def _favourite(args) -> int:
    with open_studio(args) as studio:
        gen = studio.set_favourite(args.id, not args.off)
    return emit(args, summary(gen), f"{gen.id}: favourite {'on' if gen.favourite else 'off'}")


def _tag(args) -> int:
    with open_studio(args) as studio:
        current = [] if args.replace else list(studio.get(args.id).tags)
        tags = [t for t in [*current, *args.tags] if t not in set(args.remove)]
        gen = studio.set_tags(args.id, tags)
    return emit(args, summary(gen), f"{gen.id}: tags {', '.join(gen.tags) or '(none)'}")


def _import(args) -> int:
    if not args.file.is_file():
        raise ValueError(f"file {str(args.file)!r}: no such file")
    with open_studio(args) as studio:  # the PNG metadata readers and the gallery
        saved = studio.import_png(args.file)
    tell("import", saved.notes)
    how = "already in the gallery" if saved.reused else "imported"
    return emit(
        args,
        {"id": saved.id, "image": str(saved.image), "already_imported": saved.reused, "not_kept": list(saved.notes)},
        f"{how}: {args.file} as {saved.id}",
    )


def _write(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _check(args) -> int:
    from atelier import gallery_maintenance

    report = gallery_maintenance.check(args.home)
    lines = [
        f"database: {report.database}",
        f"generations: {'unreadable' if report.generations is None else report.generations}",
        f"files on disk: {report.files_on_disk} ({report.unreferenced_files} without a row, "
        f"{report.temp_files} temp), rows whose file is missing: {report.missing_files}",
        *(f"symbolic link left alone: {link}" for link in report.links),
        *(f"problem: {problem}" for problem in report.problems),
        "ok" if report.ok else "not ok: see `atelier gallery repair` / `atelier gallery rebuild` in the README",
    ]
    emit(args, {**dataclasses.asdict(report), "ok": report.ok}, lines)
    return 0 if report.ok else 1


def _repair(args) -> int:
    from atelier import gallery_maintenance

    result = gallery_maintenance.repair(args.home)
    lines = [
        f"the damaged database was copied to {result.damaged_copy} (kept)",
        f"recovered into {result.database}: "
        + ", ".join(f"{table} {count}" for table, count in result.recovered.items()),
        *(f"{table}: {count} read error(s), rows past them may be lost" for table, count in result.read_errors.items()),
        f"generations dropped for a lost image link: {result.dropped_generations} "
        "(their files stay; `atelier gallery rebuild` adopts the PNGs)",
    ]
    if not result.recovered.get("generations"):
        lines.append("no generation could be read back: `atelier gallery rebuild` makes them again from the PNGs")
    return emit(args, dataclasses.asdict(result), lines)


def _rebuild(args) -> int:
    from atelier import gallery_maintenance

    report = gallery_maintenance.rebuild(args.home)
    tell("gallery rebuild", [f"skipped {item}" for item in report.skipped] + list(report.notes))
    text = (
        f"rebuilt {len(report.rebuilt)} generation(s) from their PNGs ({report.linked_inputs} input file(s) and "
        f"{report.linked_latents} kept latent(s) linked; {len(report.skipped)} PNG(s) without a usable recipe skipped)"
    )
    return emit(args, dataclasses.asdict(report), text)
