"""Provenance: `atelier detect-watermark FILE...` and `atelier info FILE`.

detect-watermark exits 0 when every file carries SDXL's invisible watermark, 1 when any does not,
2 when a file cannot be read as an image. info prints the Recipe inside a PNG (Atelier's exactly,
the closest one for an A1111 or InvokeAI PNG) and the fields it could not map.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from atelier.commands.common import EXIT_BAD_INPUT, EXIT_OK, add_json_option

EXIT_NOT_ALL_MARKED = 1  # detect-watermark's negative answer


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "detect-watermark",
        help="check images for SDXL's invisible watermark (exit 0 if all carry it, 1 if not)",
    )
    p.add_argument(
        "files", nargs="+", type=Path, metavar="FILE", help="image files (PNG keeps the mark; JPEG loses it)"
    )
    add_json_option(p)
    p.set_defaults(func=detect_watermark_command)

    p = subparsers.add_parser(
        "info",
        help="print the recipe inside a PNG (Atelier, A1111 or InvokeAI) and what could not be mapped",
    )
    p.add_argument("file", type=Path, metavar="FILE", help="a PNG")
    add_json_option(p)
    p.set_defaults(func=info_command)


def check_file(path: Path) -> dict[str, Any]:
    """{file, present, bit_accuracy, note}: note says why a file could not be checked."""
    from PIL import Image, UnidentifiedImageError

    from pipelines.provenance.watermark import DETECTION_THRESHOLD, MIN_SIDE, detect_watermark

    result: dict[str, Any] = {"file": str(path), "present": False, "bit_accuracy": 0.0, "note": None}
    try:
        with Image.open(path) as image:
            image.load()
            if min(image.size) < MIN_SIDE:
                result["note"] = f"smaller than {MIN_SIDE} px: too small to carry the watermark"
                return result
            present, accuracy = detect_watermark(image)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError) as exc:
        result["note"] = f"cannot read the image ({exc})"
        result["error"] = True
        return result
    result.update(present=present, bit_accuracy=round(accuracy, 4))
    if not present and accuracy > 0.6:
        result["note"] = f"partly matching (below the {DETECTION_THRESHOLD:.0%} threshold): damaged or re-encoded"
    return result


def detect_watermark_command(args: argparse.Namespace) -> int:
    results = [check_file(path) for path in args.files]
    errors = any(r.pop("error", False) for r in results)
    all_present = all(r["present"] for r in results)
    if args.json:
        print(json.dumps({"files": results, "all_present": all_present}))
    else:
        for r in results:
            verdict = "present" if r["present"] else "absent"
            note = f" — {r['note']}" if r["note"] else ""
            print(f"{r['file']}: {verdict} (bit accuracy {r['bit_accuracy']:.3f}){note}")
    if errors:
        print("atelier detect-watermark: some files could not be read", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK if all_present else EXIT_NOT_ALL_MARKED


def info_command(args: argparse.Namespace) -> int:
    from pipelines.provenance.png_metadata import read_png

    back = read_png(Path(args.file))  # ValueError (not a PNG, malformed metadata) → exit 2 via the CLI
    data = {
        "file": str(args.file),
        "source": back.source,
        "recipe": back.recipe.to_dict(),
        "unmapped": list(back.unmapped),
    }
    if args.json:
        print(json.dumps(data))
        return 0
    exact = "exact" if back.source == "atelier" else "closest match"
    print(f"{args.file}: {back.source} metadata ({exact})")
    print(json.dumps(data["recipe"], indent=2, ensure_ascii=False))
    if back.unmapped:
        print("not mapped:")
        for item in back.unmapped:
            print(f"  {item}")
    return 0
