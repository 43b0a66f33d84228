"""The GPU workers: a Ray Serve deployment whose replicas each hold a base + refiner and run the engine.

Each replica runs one job at a time (`max_ongoing_requests=1`: one device, one job), through the engine's
public modes exactly as the Studio calls them in one process. A job streams back: first a "started" item
(which replica took it), then its steps, then its result or the error the engine raised, as plain values
(atelier/cluster/wire.py). Nothing here touches the gallery: the Studio on the front end saves the result.

Interrupt: the front end marks the job on the JobBoard (a small Ray actor); the replica asks it at each
step, and once before starting (a job interrupted while it waited never runs).

Queue place and ETA: every front end's jobs are on the same JobBoard (sent, taken by a worker, ended), with
how long recent jobs ran, so a front end sees the jobs of all front ends ahead of its own.
"""

from __future__ import annotations

import os
import queue
import statistics
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray import serve

JOB_BOARD = "atelier-job-board-2"  # numbered: a board left running by an older version is not reused
RECENT_JOBS = 20  # the ETA is the median run time of this many recent jobs
STALE_S = 3600.0  # a job on the board this long was lost with its front end


@ray.remote(num_cpus=0)
class JobBoard:
    """The cluster's jobs from every front end: waiting (in the order sent), running, interrupted; and how
    long recent jobs ran. Each method is one quick look or change (one actor: no locks)."""

    def __init__(self) -> None:
        self._cancelled: set[str] = set()
        self._waiting: dict[str, float] = {}  # job id -> when sent (dicts keep the order: the queue's)
        self._running: dict[str, float] = {}  # job id -> when a worker took it
        self._durations: deque[float] = deque(maxlen=RECENT_JOBS)

    def ping(self) -> bool:
        return True

    def enqueue(self, job_id: str) -> None:
        now = time.monotonic()
        for jobs in (self._waiting, self._running):
            for stale in [j for j, since in jobs.items() if now - since > STALE_S]:
                del jobs[stale]
        self._waiting[job_id] = now

    def start(self, job_id: str) -> bool:
        """A worker takes the job: True if it was interrupted while it waited (then it does not run)."""
        if self._waiting.pop(job_id, None) is not None:
            self._running[job_id] = time.monotonic()
        return job_id in self._cancelled

    def finish(self, job_id: str, *, ran: bool) -> None:
        """The job ended (`ran`: with a result, so its run time counts for the ETA)."""
        self._waiting.pop(job_id, None)
        self._cancelled.discard(job_id)
        started = self._running.pop(job_id, None)
        if started is not None and ran:
            self._durations.append(time.monotonic() - started)

    def cancel(self, job_id: str) -> None:
        self._cancelled.add(job_id)

    def is_cancelled(self, job_id: str) -> bool:
        return job_id in self._cancelled

    def place(self, job_id: str | None, workers: int, not_sent: int = 0) -> tuple[int, float | None]:
        """(jobs ahead of `job_id` (None: a job sent now, behind `not_sent` more jobs its front end has yet to
        send), about how many seconds until it starts, or None before any job ran to its end here). 0 ahead:
        it runs, or starts as soon as it reaches a worker."""
        if job_id in self._running:
            return 0, 0.0
        waiting = list(self._waiting)
        before = waiting.index(job_id) if job_id in self._waiting else len(waiting) + not_sent
        ahead = before + max(0, len(self._running) - workers + 1)
        if not self._durations:
            return ahead, None
        return ahead, statistics.median(self._durations) * ahead / max(workers, 1)


def job_board() -> Any:
    """The cluster's one JobBoard, made by the first front end that asks. It lives on the head node and
    outlives front ends (detached): a front end whose board stops answering knows the head went away."""
    return JobBoard.options(
        name=JOB_BOARD, get_if_exists=True, lifetime="detached", resources={"node:__internal_head__": 0.001}
    ).remote()


class EngineWorker:
    """One replica: one engine (ModelCache + base + refiner) on the device Ray gave this actor."""

    def __init__(self, home: str, device_options: dict[str, Any], base: str | None, refiner: str | None) -> None:
        from atelier import __version__
        from pipelines.engine.engine import Engine
        from pipelines.models.loading import ModelCache

        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.home = Path(home)  # an Upscale's ESRGAN model is found in this home's models folder (shared)
        self.engine = Engine(ModelCache(Path(home), **device_options), app_version=__version__)
        if base:  # every replica holds its models from the start: the first job does not wait for them
            loaded = self.engine.models.load_base(base)
            if refiner:
                self.engine.models.load_refiner(refiner, loaded)
        self.jobs_run = 0
        self._lora_adapters: dict[str, str] = {}  # LoRA name -> adapter name, of the jobs run here

    def identity(self) -> str:
        return self.replica_id

    def record_routing_stats(self) -> dict[str, Any]:
        """What Serve's router sees of this replica (atelier/cluster/routing.py): the LoRAs loaded here."""
        resident = set(self.engine.loras.resident())
        return {"loras": sorted(name for name, adapter in self._lora_adapters.items() if adapter in resident)}

    def _remember_loras(self, result: Any) -> None:
        from pipelines.models.lora import adapter_name

        recipe = getattr(result[0] if isinstance(result, list) else result, "recipe", None)
        for ref in recipe.loras if recipe is not None else ():
            if ref.sha256:
                self._lora_adapters[ref.name] = adapter_name(ref.sha256)

    def run(self, job: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Run one engine mode (job["mode"]); yields {"started"}, {"step"}…, then {"result"} or {"error"}."""
        from pipelines.errors import GenerationCancelled

        yield {"started": self.replica_id, "pid": os.getpid()}
        board = job["board"]

        def should_cancel() -> bool:
            return ray.get(board.is_cancelled.remote(job["id"]))

        if ray.get(board.start.remote(job["id"])):  # interrupted while it waited: never runs
            yield _error(GenerationCancelled("cancelled before it started"))
            return
        items: queue.Queue = queue.Queue()
        thread = threading.Thread(target=self._run_mode, args=(job, should_cancel, items), daemon=True)
        thread.start()
        while True:
            item = items.get()
            yield item
            if "step" not in item:
                break
        thread.join()

    def _run_mode(self, job: dict[str, Any], should_cancel, items: queue.Queue) -> None:
        from atelier.cluster import wire

        try:
            callbacks = {}
            if job.get("previews", True):
                callbacks["on_step"] = lambda info: items.put({"step": wire.step_to_wire(info)})
            if job["mode"] != "full_draft_image":
                callbacks["should_cancel"] = should_cancel
            if job["mode"] == "enlarge":
                result = _enlarge(self.engine, self.home, job)
            else:
                result = _call_engine(self.engine, job, callbacks)
            self._remember_loras(result)
            self.jobs_run += 1
            items.put({"result": wire.result_to_wire(result), "replica": self.replica_id, "jobs_run": self.jobs_run})
        except BaseException as exc:  # every error goes back to the front end, by kind
            items.put(_error(exc))


def _call_engine(engine: Any, job: dict[str, Any], callbacks: dict[str, Any]) -> Any:
    """The engine mode a job names, called as atelier/studio.py calls it."""
    from atelier.cluster import wire
    from pipelines.recipe import Recipe

    mode, inputs = job["mode"], wire.inputs_from_wire(job.get("inputs"))
    if mode == "draft":
        return engine.draft(Recipe.from_json(job["recipe"]), job["count"], inputs=inputs, **callbacks)
    if mode == "render":
        return engine.render(Recipe.from_json(job["recipe"]), inputs=inputs, **callbacks)
    draft = wire.draft_from_wire(job["draft"])
    if mode == "refine":
        return engine.refine(draft, inputs=inputs, **callbacks)
    if mode == "rerender":
        return engine.rerender(draft, job["steps"], inputs=inputs, **callbacks)
    if mode == "full_draft_image":
        return engine.full_draft_image(draft, inputs=inputs)
    raise ValueError(f"job mode: must be draft, render, refine, rerender, full_draft_image or enlarge (got {mode!r})")


def _enlarge(engine: Any, home: Path, job: dict[str, Any]) -> Any:
    """An Upscale's pixel upscale, by the ESRGAN-family model the job names, on this replica's device."""
    from atelier.cluster import wire
    from atelier.upscale import located_upscaler

    run = located_upscaler(home, job["upscaler"])  # a missing model or a pickle: a ValueError, before any work
    return run(wire.image_from(job["image"]), job["width"], job["height"], str(engine.models.device))


# Errors that keep their kind across the wire (the Studio and the front ends catch these by class).
def _error(exc: BaseException) -> dict[str, Any]:
    from pipelines.errors import GenerationCancelled, OutOfMemory

    kinds = {GenerationCancelled: "cancelled", OutOfMemory: "out_of_memory", FileNotFoundError: "file_not_found"}
    kind = next((name for cls, name in kinds.items() if isinstance(exc, cls)), None)
    if kind is None:
        kind = "value" if isinstance(exc, ValueError) else "internal"
    return {"error": kind, "message": str(exc) or type(exc).__name__, "type": type(exc).__name__}


def worker_application(
    *,
    home: Path,
    device_options: dict[str, Any],
    base: str | None,
    refiner: str | None,
    replicas: int | tuple[int, int],
    actor_options: dict[str, Any],
):
    """The Serve application of the workers: a fixed number of replicas, or (min, max) autoscaled by load."""
    from ray.serve.config import RequestRouterConfig

    from atelier.cluster.routing import PinningRouter

    scale: dict[str, Any]
    if isinstance(replicas, tuple):
        low, high = replicas
        scale = {"autoscaling_config": {"min_replicas": low, "max_replicas": high, "target_ongoing_requests": 1}}
    else:
        scale = {"num_replicas": replicas}
    deployment = serve.deployment(
        EngineWorker,
        name="EngineWorker",
        max_ongoing_requests=1,  # one device, one job; the others wait in Serve's queue
        ray_actor_options=actor_options,
        # LoRAs loaded on each replica reach the router within about a second (record_routing_stats)
        request_router_config=RequestRouterConfig(
            request_router_class=PinningRouter, request_routing_stats_period_s=1.0
        ),
        **scale,
    )
    return deployment.bind(str(home), device_options, base, refiner)
