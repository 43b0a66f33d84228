"""Gallery subcommands: list, show, delete, export, favourite, tag (rerun and import live elsewhere:
they need the engine and the PNG metadata readers)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from storage.gallery import Gallery, Generation


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


def _command(subparsers, name: str, func, help_: str, *, with_id: bool = True):
    parser = subparsers.add_parser(name, help=help_)
    if with_id:
        parser.add_argument("id", type=int, help="gallery id")
    parser.add_argument("--json", action="store_true", help="print JSON")
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


def _open(args) -> Gallery:
    return Gallery.open(Path(args.home))


def _emit(args, data: Any, text: str) -> int:
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else text)
    return 0


def _fail(message: str) -> int:
    print(f"atelier: {message}", file=sys.stderr)
    return 2


def _run(args, action) -> int:
    try:
        with _open(args) as gallery:
            return action(gallery)
    except (ValueError, OSError) as exc:
        return _fail(str(exc))


def _list(args) -> int:
    filters = {k: getattr(args, k) for k in ("model", "lora", "kind", "favourite", "tag")}

    def action(gallery: Gallery) -> int:
        page = gallery.search(args.search, limit=args.limit, after=args.after, **filters)
        rows = [summary(g) for g in page.items]
        lines = [
            f"{g.id:>6}  {g.created_at:%Y-%m-%d %H:%M}  {g.kind:<10} {'*' if g.favourite else ' '} "
            f"{g.recipe.model.name[:20]:<20} {_short(g.recipe.prompt, 60)}"
            for g in page.items
        ]
        if page.next_cursor:
            lines.append(f"(more: --after {page.next_cursor})")
        return _emit(args, {"items": rows, "next_cursor": page.next_cursor}, "\n".join(lines) or "(no entries)")

    return _run(args, action)


def _show(args) -> int:
    def action(gallery: Gallery) -> int:
        gen = gallery.get(args.id)
        data = details(gen)
        lines = [f"{k}: {v}" for k, v in data.items() if k != "recipe"]
        lines.append("recipe: " + gen.recipe.to_json())
        return _emit(args, data, "\n".join(lines))

    return _run(args, action)


def _delete(args) -> int:
    def action(gallery: Gallery) -> int:
        removed = gallery.delete(args.id)
        return _emit(args, {"id": args.id, "removed_files": list(removed)},
                     f"deleted {args.id} ({len(removed)} file(s) removed)")

    return _run(args, action)


def _export(args) -> int:
    def action(gallery: Gallery) -> int:
        gen = gallery.get(args.id)
        folder = Path(args.dir)
        folder.mkdir(parents=True, exist_ok=True)
        image = folder / f"atelier-{gen.id}.png"
        recipe = folder / f"atelier-{gen.id}.json"
        data = gallery.read_file(gen.image_sha256)  # checks the sha256: the export is the saved image
        _write(image, data)
        _write(recipe, (json.dumps(gen.recipe.to_dict(), indent=2, sort_keys=True) + "\n").encode())
        return _emit(args, {"id": gen.id, "image": str(image), "recipe": str(recipe)}, f"{image}\n{recipe}")

    return _run(args, action)


def _favourite(args) -> int:
    def action(gallery: Gallery) -> int:
        gen = gallery.set_favourite(args.id, not args.off)
        return _emit(args, summary(gen), f"{gen.id}: favourite {'on' if gen.favourite else 'off'}")

    return _run(args, action)


def _tag(args) -> int:
    def action(gallery: Gallery) -> int:
        current = [] if args.replace else list(gallery.get(args.id).tags)
        tags = [t for t in [*current, *args.tags] if t not in set(args.remove)]
        gen = gallery.set_tags(args.id, tags)
        return _emit(args, summary(gen), f"{gen.id}: tags {', '.join(gen.tags) or '(none)'}")

    return _run(args, action)


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
