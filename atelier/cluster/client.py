"""The front end's side of the GPU workers: an engine whose modes run on the Serve deployment.

`RemoteEngine` has the engine methods the Studio calls (draft, render, refine, rerender, full_draft_image)
with the same arguments and results, and `enlarge` (an Upscale's ESRGAN pixel upscale, atelier/upscale.py),
so the Studio (`Studio(engine=...)`) saves what comes back exactly as it saves its own engine's work: files and rows are written in one place, once the result has arrived
(a job that fails on its worker has saved nothing). Model lists and LoRA/ControlNet files are read by a
local engine for the same home, which never loads a model here.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import ray
from ray import serve

from atelier.cluster import wire
from atelier.cluster.deployment import CANCEL_BOARD, CancelBoard
from atelier.cluster.errors import WorkerLost
from atelier.cluster.options import check_replicas
from atelier.cluster.routing import pin
from pipelines.errors import GenerationCancelled, OutOfMemory

APP_NAME = "atelier-workers"
NAMESPACE = "atelier"
CANCEL_POLL_S = 0.1  # how often a waiting or running job's Interrupt is looked at
START_ATTEMPTS = 3  # a job lost before any worker started it is sent again (nothing of it ran)


class RemoteEngine:
    """The engine's modes, run on the workers; models, LoRAs and ControlNets listed locally."""

    def __init__(self, handle: Any, board: Any, local_engine: Callable[[], Any], *, slots: int = 1) -> None:
        self.slots = slots  # jobs the workers run at once (the web queue sends this many)
        self._handle = handle
        self._board = board
        self._local_engine = local_engine
        self._local = None
        self._lock = threading.Lock()
        self.jobs_per_replica: Counter[str] = Counter()  # results received, by replica id
        self.running: dict[str, dict[str, Any]] = {}  # job id -> the replica (and its process id) running it

    # -- the engine's modes, as atelier/studio.py calls them -------------------------------------------

    def draft(self, recipe, count=1, *, inputs=None, on_step=None, should_cancel=None, replica=None):
        job = {"mode": "draft", "recipe": recipe.to_json(), "count": count, "inputs": wire.inputs_to_wire(inputs)}
        job["loras"] = _lora_names(recipe)
        return self.run(job, on_step=on_step, should_cancel=should_cancel, replica=replica)

    def render(self, recipe, *, inputs=None, on_step=None, should_cancel=None, replica=None):
        job = {"mode": "render", "recipe": recipe.to_json(), "inputs": wire.inputs_to_wire(inputs)}
        job["loras"] = _lora_names(recipe)
        return self.run(job, on_step=on_step, should_cancel=should_cancel, replica=replica)

    def refine(self, draft, *, inputs=None, on_step=None, should_cancel=None, replica=None):
        """The draft's kept latent travels with the job, so any replica resumes it exactly."""
        job = {"mode": "refine", "draft": wire.draft_to_wire(draft), "inputs": wire.inputs_to_wire(inputs)}
        return self.run(job, on_step=on_step, should_cancel=should_cancel, replica=replica)

    def rerender(self, draft, steps, *, inputs=None, on_step=None, should_cancel=None, replica=None):
        job = {
            "mode": "rerender",
            "draft": wire.draft_to_wire(draft),
            "steps": steps,
            "inputs": wire.inputs_to_wire(inputs),
        }
        return self.run(job, on_step=on_step, should_cancel=should_cancel, replica=replica)

    def full_draft_image(self, draft, *, inputs=None):
        job = {"mode": "full_draft_image", "draft": wire.draft_to_wire(draft), "inputs": wire.inputs_to_wire(inputs)}
        return self.run(job)

    def enlarge(self, image, width, height, upscaler):
        """The ESRGAN-family pixel upscale of an Upscale job, on a worker (found in its home's models folder:
        the workers share it); the same pixels atelier/upscale.py makes in one process."""
        job = {"mode": "enlarge", "image": wire.image_bytes(image), "width": width, "height": height}
        return self.run({**job, "upscaler": upscaler})

    def replica_ids(self) -> list[str]:
        """The ids of the workers running now (Serve names each replica's actor after its id)."""
        prefix = f"SERVE_REPLICA::{APP_NAME}#"
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
        return sorted(name.rsplit("#", 1)[1] for name in names if name.startswith(prefix))

    # -- what the Studio reads without running a model ---------------------------------------------

    @property
    def local(self):
        with self._lock:
            if self._local is None:
                self._local = self._local_engine()
            return self._local

    @property
    def models(self):
        return _FrontEndModels(self.local.models)

    @property
    def loras(self):
        return self.local.loras

    @property
    def controlnets(self):
        return self.local.controlnets

    # -- one job -------------------------------------------------------------------------------------

    def run(self, job: dict[str, Any], *, on_step=None, should_cancel=None, replica: str | None = None) -> Any:
        """Send a job, relay its steps, and return its result (or raise its error, by kind). A job whose
        worker was lost before it started (Serve had not yet noticed a dead replica) is sent again."""
        for attempt in range(1, START_ATTEMPTS + 1):
            started: dict[str, Any] = {}
            try:
                return self._run_once(job, on_step, should_cancel, replica, started)
            except WorkerLost:
                if started or attempt == START_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _run_once(self, job, on_step, should_cancel, replica, started: dict[str, Any]) -> Any:
        job = {**job, "id": uuid.uuid4().hex, "board": self._board}
        handle = self._handle.options(stream=True)
        if replica is not None:
            handle = handle.options(multiplexed_model_id=pin(replica))
        stream = handle.run.remote(job)
        watch = _InterruptWatch(stream, self._board, job["id"], should_cancel)
        try:
            for item in _items(stream):
                if "started" in item:
                    started.update(replica=item["started"], pid=item["pid"])
                    self.running[job["id"]] = started
                    watch.started.set()
                elif "step" in item:
                    if on_step is not None:
                        on_step(wire.step_from_wire(item["step"]))
                    watch.look()  # at each step too, not only every CANCEL_POLL_S
                elif "error" in item:
                    raise _error_from(item)
                else:
                    self.jobs_per_replica[item["replica"]] += 1
                    return wire.result_from_wire(item["result"])
        finally:
            watch.stop()
            self.running.pop(job["id"], None)
        raise WorkerLost("the GPU worker ended the job without a result; nothing was saved. Try again.")


class _InterruptWatch:
    """Looks at the front end's `should_cancel` while a job waits or runs: a running job is marked on the
    CancelBoard (its replica stops at the next step), a waiting one is also taken out of Serve's queue."""

    def __init__(self, stream: Any, board: Any, job_id: str, should_cancel: Callable[[], bool] | None) -> None:
        self.started = threading.Event()
        self._done = threading.Event()
        self._stream, self._board, self._job_id, self._should_cancel = stream, board, job_id, should_cancel
        self._thread = None
        self._lock, self._sent = threading.Lock(), False
        if should_cancel is not None:
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(CANCEL_POLL_S):
            if self.look():
                return

    def look(self) -> bool:
        """Mark the job cancelled if the front end asks; True once it has."""
        with self._lock:
            if self._sent or self._should_cancel is None or not self._should_cancel():
                return self._sent
            self._sent = True
        self._board.cancel.remote(self._job_id)
        if not self.started.is_set():
            self._stream.cancel()
        return True

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        self._board.forget.remote(self._job_id)


def _items(stream: Any):
    """The stream's items; a worker that died or a request taken out of the queue, in words."""
    from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, RayError, WorkerCrashedError
    from ray.serve.exceptions import RayServeException, RequestCancelledError

    try:
        yield from stream
    except RequestCancelledError:
        raise GenerationCancelled("cancelled while it waited for a GPU worker") from None
    except (RayActorError, NodeDiedError, WorkerCrashedError, ObjectLostError) as exc:  # ActorDiedError on SIGKILL
        raise WorkerLost(
            "The GPU worker running this job stopped before it finished (its process or machine went away); "
            f"nothing was saved. Try again: the other workers are still running. ({type(exc).__name__})"
        ) from None
    except (RayError, RayServeException) as exc:  # not a lost worker: an internal error (the log has it)
        raise RuntimeError(f"the GPU workers could not run this job: {type(exc).__name__}: {exc}") from exc


def _lora_names(recipe) -> list[str]:
    """The LoRAs a job's base pass uses, by name (prompt tokens merged): for the router's LoRA affinity."""
    from pipelines.models.lora import with_prompt_loras

    return sorted(ref.name for ref in with_prompt_loras(recipe).loras)


def _error_from(item: dict[str, Any]) -> Exception:
    message = item["message"]
    kinds = {
        "cancelled": GenerationCancelled,
        "out_of_memory": OutOfMemory,
        "file_not_found": FileNotFoundError,
        "value": ValueError,
    }
    if item["error"] in kinds:
        return kinds[item["error"]](message)
    return RuntimeError(f"the GPU worker failed: {item['type']}: {message}")


class _FrontEndModels:
    """The local ModelCache (file lookups, device name), except loading: the workers hold the models."""

    def __init__(self, models: Any) -> None:
        self._models = models

    def load_base(self, spec: str) -> None:
        return None

    def load_refiner(self, spec: str, base: Any = None) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._models, name)


def connect(
    *,
    address: str,
    home,
    device_options: dict[str, Any],
    base: str | None,
    refiner: str | None,
    replicas: int | tuple[int, int] | None = None,
    actor_options: dict[str, Any] | None = None,
    ray_init: dict[str, Any] | None = None,
) -> RemoteEngine:
    """Join the Ray cluster at `address` ("auto": the one `ray start` made here), deploy the workers, and
    return the engine that sends them jobs. `replicas`: a count, (min, max) to autoscale, or None: one per
    GPU in the cluster (one when there is none)."""
    from atelier.cluster.deployment import worker_application

    if not ray.is_initialized():
        ray.init(address=address, namespace=NAMESPACE, **(ray_init or {}))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if actor_options is None:
        actor_options = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    if replicas is None:
        replicas = max(gpus, 1)
    check_replicas(replicas)
    serve.start(proxy_location="Disabled")  # the Gradio front end is the only way in: no HTTP proxy
    application = worker_application(
        home=home,
        device_options=device_options,
        base=base,
        refiner=refiner,
        replicas=replicas,
        actor_options=actor_options,
    )
    handle = serve.run(application, name=APP_NAME, route_prefix=None)
    board = CancelBoard.options(name=CANCEL_BOARD, get_if_exists=True).remote()
    slots = replicas[1] if isinstance(replicas, tuple) else replicas
    return RemoteEngine(handle, board, lambda: _local_engine(home, device_options), slots=slots)


def _local_engine(home, device_options: dict[str, Any]):
    from atelier import __version__
    from pipelines.engine.engine import Engine
    from pipelines.models.loading import ModelCache

    return Engine(ModelCache(home, **device_options), app_version=__version__)


def shutdown() -> None:
    """Take the workers down (the Ray cluster itself stays, as `ray start` made it)."""
    if ray.is_initialized():  # else they went with the cluster (a test's, or one that stopped)
        serve.delete(APP_NAME)
