"""`atelier bench [--json]`: engine counts and timings, and gallery latencies."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="measure the engine and the gallery (tiny model by default)")
    bench.add_argument("--model", default="tiny")
    bench.add_argument(
        "--refiner", help="default: tiny for the tiny model, else the SDXL refiner if it is found locally"
    )
    bench.add_argument("--device")
    bench.add_argument("--size", type=int, default=256, help="image side in pixels")
    bench.add_argument("--steps", type=int, default=20)
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--gallery-rows", type=int, default=100_000)
    bench.add_argument("--no-ui", action="store_true", help="skip the web UI figures (they start a server)")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(func=run)


def run(args) -> int:
    from atelier.bench import run_all
    from atelier.model_choice import choose_models

    refiner = args.refiner or choose_models(args.home, args.model).refiner
    if refiner is None:
        raise ValueError(
            "bench: no refiner found for this model; give --refiner (a hub id, folder or .safetensors file)"
        )
    home = args.home if args.model != "tiny" else None  # the tiny model is built in a scratch home
    figures = run_all(
        home,
        gallery_rows=args.gallery_rows,
        ui=not args.no_ui,
        model=args.model,
        refiner=refiner,
        size=args.size,
        steps=args.steps,
        repeats=args.repeats,
        device=args.device,
    )
    print(json.dumps(figures, indent=None if args.json else 2))
    return 0
