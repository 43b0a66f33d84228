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
    bench.add_argument("--repeats", type=int, default=5, help="rounds of each measurement (default: 5)")
    bench.add_argument("--gallery-rows", type=int, default=100_000)
    bench.add_argument("--no-ui", action="store_true", help="skip the web UI figures (they start a server)")
    bench.add_argument("--json", action="store_true")
    full = bench.add_argument_group("full size (atelier/bench_full_size.py)")
    full.add_argument("--full-size", action="store_true", help="SDXL 1.0's architecture, random weights, at 1024²")
    full.add_argument("--tiny", action="store_true", help="with --full-size: the same run on the tiny model at 64²")
    full.add_argument("--compile", action="store_true", help="with --full-size: also torch.compile the UNets")
    full.add_argument("--compile-backend", default="inductor", help="with --compile (default: inductor)")
    full.add_argument("--output", help="with --full-size: also write the figures (JSON) here, after each phase")
    cluster = bench.add_argument_group("GPU workers (atelier/cluster/bench.py; pip install '.[cluster]')")
    cluster.add_argument(
        "--cluster",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="draft throughput on Ray Serve workers, 1 then 2 replicas (a local Ray cluster, or ADDRESS)",
    )
    cluster.add_argument("--workers", help="with --cluster: replica counts to compare (default: 1,2)")
    cluster.add_argument("--jobs", type=int, default=8, help="with --cluster: drafts sent at once (default: 8)")
    bench.set_defaults(func=run)


def run(args) -> int:
    if args.cluster:
        from atelier.cluster.bench import run_from_args as run_cluster

        print(json.dumps(run_cluster(args), indent=None if args.json else 2))
        return 0
    if args.full_size:
        from atelier.bench_full_size import run_from_args

        print(json.dumps(run_from_args(args), indent=None if args.json else 2))
        return 0
    if args.tiny or args.compile or args.output:
        raise ValueError("bench: --tiny, --compile and --output go with --full-size")
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
