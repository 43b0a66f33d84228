"""`atelier bench --cluster`: draft throughput of the GPU workers with 1 replica, then 2 (or --workers …).

The same jobs (`--jobs` drafts, all sent at once, as many clients would) run on the deployment scaled to
each replica count in turn, `--repeats` rounds of them; each count is warmed first (every replica has its
models loaded and has run one draft), so the figure is steady-state throughput (of the median round). On a machine without GPUs each replica takes one
CPU (Ray gives it one thread: OMP_NUM_THREADS=1), and a local Ray cluster with as many CPUs as the largest
count is started (unless ADDRESS is given).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def run_from_args(args) -> dict[str, Any]:
    counts = sorted({int(n) for n in (args.workers or "1,2").split(",")})
    if not counts or counts[0] < 1:
        raise ValueError(f"--workers: replica counts from 1, comma-separated (got {args.workers!r})")
    if args.repeats < 1:
        raise ValueError(f"--repeats: must be at least 1 (got {args.repeats})")
    if args.jobs < 1:
        raise ValueError(f"--jobs: must be at least 1 (got {args.jobs})")
    return run_cluster_bench(
        address=None if args.cluster == "local" else args.cluster,
        home=None if args.model == "tiny" else args.home,
        model=args.model,
        refiner=args.refiner or ("tiny" if args.model == "tiny" else None),
        size=args.size,
        steps=args.steps,
        jobs=args.jobs,
        counts=counts,
        device=args.device,
        rounds=args.repeats,
    )


def run_cluster_bench(
    *,
    address: str | None,
    home: Path | None,
    model: str,
    refiner: str | None,
    size: int,
    steps: int,
    jobs: int,
    counts: list[int],
    device: str | None,
    rounds: int = 1,
) -> dict[str, Any]:
    import ray
    from ray import serve

    from atelier.cluster import client

    scratch = tempfile.TemporaryDirectory(prefix="atelier-cluster-bench-") if home is None else None
    home = Path(scratch.name) if scratch else Path(home)
    if model == "tiny":  # built once here: replicas sharing the home must not each build it
        from pipelines.models.tiny_model import write_tiny_model

        write_tiny_model(home / "models" / "tiny")
    ray.init(
        address=address,
        num_cpus=None if address else max(counts),
        namespace=client.NAMESPACE,
        include_dashboard=False,
        log_to_driver=False,
    )
    figures: dict[str, Any] = {"jobs": jobs, "rounds": rounds, "size": size, "steps": steps, "workers": {}}
    # CPU workers share this machine's cores with whatever else runs: a loaded machine lowers the speed-up.
    figures["load_average_before"] = round(os.getloadavg()[0], 2)
    try:
        for count in counts:
            engine = client.connect(
                address=address or "local",
                home=home,
                device_options={"device": device},
                base=model,
                refiner=refiner,
                replicas=count,
            )
            recipe = _recipe(model, refiner, size, steps)
            figures["workers"][str(count)] = _measure(engine, recipe, jobs, count, rounds)
        first, last = (figures["workers"][str(c)]["jobs_per_s"] for c in (counts[0], counts[-1]))
        figures["speedup"] = round(last / first, 2)
    finally:
        serve.shutdown()
        ray.shutdown()
        if scratch:
            scratch.cleanup()
    return figures


def _measure(engine, recipe, jobs: int, count: int, rounds: int) -> dict[str, Any]:
    """`rounds` times the `jobs` drafts at once; the median round gives jobs_per_s (a shared machine's
    other work lands in a round or two, not in the median)."""
    _drafts_at_once(engine, recipe, count)  # warm: each replica has run a draft
    before = dict(engine.jobs_per_replica)
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        _drafts_at_once(engine, recipe, jobs)
        seconds.append(time.perf_counter() - started)
    per_replica = {r: n - before.get(r, 0) for r, n in engine.jobs_per_replica.items() if n > before.get(r, 0)}
    median = statistics.median(seconds)
    return {
        "seconds": [round(s, 3) for s in seconds],
        "jobs_per_s": round(jobs / median, 3),
        "per_replica": per_replica,
    }


def _drafts_at_once(engine, recipe, jobs: int) -> None:
    errors: list[BaseException] = []

    def one(number: int) -> None:
        try:
            engine.draft(recipe.replace(seed=recipe.seed + number), 1)
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _recipe(model: str, refiner: str | None, size: int, steps: int):
    from pipelines.recipe import ModelRef, Recipe, RefineSettings

    return Recipe(
        model=ModelRef(model),
        prompt="a lighthouse at dusk",
        seed=1,
        steps=steps,
        width=size,
        height=size,
        switch=0.8,
        refine=RefineSettings(model=ModelRef(refiner)) if refiner else None,
    )
