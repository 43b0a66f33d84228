"""`atelier serve --cluster auto|ADDRESS [--workers N | --min-workers A --max-workers B]`.

Standard library only at import: `atelier serve` without --cluster never imports Ray (tests/cluster checks).
"""

from __future__ import annotations

import argparse
import atexit
import sys


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("GPU workers on a Ray cluster (pip install '.[cluster]')")
    group.add_argument(
        "--cluster",
        metavar="auto|ADDRESS",
        help="run engine jobs on GPU workers (a Ray Serve deployment) instead of in this process: 'auto' joins "
        "the cluster `ray start` made on this machine, ADDRESS another (HOST:6379, ray://HOST:10001)",
    )
    group.add_argument("--workers", type=int, help="with --cluster: this many workers (default: one per GPU)")
    group.add_argument("--min-workers", type=int, help="with --cluster: autoscale from this many workers …")
    group.add_argument("--max-workers", type=int, help="… to this many, by the number of jobs waiting")


def worker_count(args: argparse.Namespace) -> int | tuple[int, int] | None:
    """--workers N, or (--min-workers, --max-workers); refused when mixed or given without --cluster."""
    low, high = args.min_workers, args.max_workers
    if args.cluster is None:
        if args.workers is not None or low is not None or high is not None:
            raise ValueError("--workers/--min-workers/--max-workers: need --cluster auto|ADDRESS")
        return None
    if args.workers is not None and (low is not None or high is not None):
        raise ValueError("--workers: give either --workers N or --min-workers A --max-workers B, not both")
    if (low is None) != (high is None):
        raise ValueError("--min-workers/--max-workers: give both (e.g. --min-workers 1 --max-workers 4)")
    count = (low, high) if low is not None else args.workers
    if count is not None:
        check_replicas(count)
    return count


def check_replicas(replicas: int | tuple[int, int]) -> None:
    if isinstance(replicas, tuple):
        low, high = replicas
        if not 0 <= low <= high or high < 1:
            raise ValueError(f"--min-workers/--max-workers: need 0 ≤ min ≤ max and max ≥ 1 (got {low} and {high})")
    elif replicas < 1:
        raise ValueError(f"--workers: must be at least 1 (got {replicas})")


def open_serve_studio(args: argparse.Namespace, choice, open_local):
    """`open_local(args)` without --cluster (no Ray import); with it, the Studio for `args.home` whose engine
    jobs run on the cluster's workers, each holding `choice`'s models."""
    count = worker_count(args)
    if args.cluster is None:
        return open_local(args)
    from atelier.studio import Studio

    try:
        from atelier.cluster import client
    except ImportError as exc:
        raise ValueError(f"--cluster: Ray Serve is not installed ({exc}); pip install '.[cluster]'") from None
    device_options = {
        "device": args.device,
        "dtype": args.dtype,
        "cpu_offload": args.cpu_offload,
        "vae_tiling": args.vae_tiling,
    }
    print(f"atelier serve: starting GPU workers on the Ray cluster at {args.cluster}…", file=sys.stderr, flush=True)
    try:
        engine = client.connect(
            address=args.cluster,
            home=args.home,
            device_options=device_options,
            base=choice.base,
            refiner=choice.refiner,
            replicas=count,
        )
    except ConnectionError as exc:
        raise ValueError(
            f"--cluster {args.cluster}: no Ray cluster answered ({exc}); start one with `ray start --head`"
        ) from None
    atexit.register(client.shutdown)
    return Studio(args.home, **device_options, engine=engine)
