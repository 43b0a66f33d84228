"""The front end's side of the GPU workers: an engine whose modes run on the Serve deployment.

`RemoteEngine` has the engine methods the Studio calls (draft, render, refine, rerender, full_draft_image)
with the same arguments and results, and `enlarge` (an Upscale's ESRGAN pixel upscale, atelier/upscale.py),
so the Studio (`Studio(engine=...)`) saves what comes back exactly as it saves its own engine's work: files
and rows are written in one place, once the result has arrived (a job that fails on its worker has saved
nothing). Model lists and LoRA/ControlNet files are read by a
local engine for the same home, which never loads a model here.

The head node restarting: the cluster's JobBoard lives on the head, so a board that stops answering
(each job is put on it first) means the cluster went away; the engine joins
the cluster at the same address again and deploys the workers as at start (`connect`), then sends the job
again if nothing of it ran, or ends it with ClusterRestarted. `atelier serve` keeps running throughout.

Queue place and ETA: each job is on the JobBoard from when it is sent until it ends, so `place` counts the
jobs of every front end sharing the deployment (each front end's web queue sees only its own).
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

import ray
from ray import serve

from atelier.cluster import wire
from atelier.cluster.deployment import job_board
from atelier.cluster.errors import ClusterRestarted, WorkerLost
from atelier.cluster.options import check_replicas
from atelier.cluster.routing import pin
from pipelines.errors import GenerationCancelled, OutOfMemory

APP_NAME = "atelier-workers"
NAMESPACE = "atelier"
CANCEL_POLL_S = 0.1  # how often a waiting or running job's Interrupt is looked at
START_ATTEMPTS = 3  # a job lost before any worker started it is sent again (nothing of it ran)
PROBE_S = 10.0  # a board slower than this is busy, not gone (a dead head answers "unavailable" at once)
# Ray ends a driver whose head stays away over a minute; `atelier serve` waits for the head to come back.
GCS_WAIT_S = "86400"


class Deployment(NamedTuple):
    """What a job is sent to: the workers' handle and the cluster's board, as joined the `generation`-th time."""

    generation: int
    handle: Any
    board: Any


class RemoteEngine:
    """The engine's modes, run on the workers; models, LoRAs and ControlNets listed locally."""

    def __init__(
        self,
        handle: Any,
        board: Any,
        local_engine: Callable[[], Any],
        *,
        slots: int = 1,
        rejoin: Callable[[], tuple[Any, Any]] | None = None,
    ) -> None:
        """`rejoin`: joins the cluster again and deploys the workers, returning (handle, board) (`connect`
        makes it); None: a cluster that went away is not joined again (this process started it)."""
        self.slots = slots  # jobs the workers run at once (the web queue sends this many)
        self._deployment: Deployment | None = Deployment(1, handle, board)  # None: the cluster went away
        self._rejoin = rejoin
        self._join_lock = threading.Lock()
        self.rejoined = 0  # times the cluster was joined again after its head restarted
        self._local_engine = local_engine
        self._local = None
        self._lock = threading.Lock()
        self.jobs_per_replica: Counter[str] = Counter()  # results received, by replica id
        self.running: dict[str, dict[str, Any]] = {}  # job id -> the replica (and its process id) running it
        self.queued: dict[str, float] = {}  # job id -> when sent, of this front end's jobs no worker took yet

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

    def place(self, job_id: str | None = None, *, not_sent: int = 0) -> tuple[int, float | None]:
        """(jobs ahead of a job waiting on the cluster, from any front end (job_id: a key of `queued`; None:
        a job sent now, or once `not_sent` jobs of this front end are), about how many seconds until it starts
        or None before any job ran to its end)."""
        from ray.exceptions import RayError

        deployment = self._deployment
        if deployment is None:  # the cluster went away: the next job joins it again
            return 0, None
        try:
            return ray.get(deployment.board.place.remote(job_id, self.slots, not_sent), timeout=PROBE_S)
        except RayError:  # a status line, not a job: no place known rather than an error
            return 0, None

    def run(self, job: dict[str, Any], *, on_step=None, should_cancel=None, replica: str | None = None) -> Any:
        """Send a job, relay its steps, and return its result (or raise its error, by kind). A job whose
        worker was lost before it started (Serve had not yet noticed a dead replica) is sent again; so is,
        once, a job that found the cluster restarted before any of it ran."""
        attempt, resent_after_restart = 0, False
        while True:
            attempt += 1
            started: dict[str, Any] = {}
            deployment = self._joined()
            try:
                return self._run_once(deployment, job, on_step, should_cancel, replica, started)
            except (WorkerLost, _RayTrouble) as exc:
                if self._went_away(deployment):
                    if started or resent_after_restart:
                        raise ClusterRestarted(
                            "the GPU workers' cluster restarted while this job ran; nothing was saved. Try again."
                        ) from None
                    resent_after_restart = True
                elif isinstance(exc, _RayTrouble) or started or attempt >= START_ATTEMPTS:
                    raise

    # -- the head node restarting --------------------------------------------------------------------

    def _joined(self) -> Deployment:
        """The deployment to send a job to, after joining the cluster again if the last look found it gone.
        (A job's first call, putting it on the board, is that look: it fails at once on a board gone.)"""
        with self._join_lock:
            if self._deployment is None:
                self._join_again()
            return self._deployment

    def _went_away(self, deployment: Deployment) -> bool:
        """After a job failed in Ray: was it the cluster going away (the next job joins it again)?"""
        with self._join_lock:
            if self._deployment is None or self._deployment.generation != deployment.generation:
                return True  # another job found it gone first
            if _gone(deployment):
                self._deployment = None
                return True
            return False

    def _join_again(self) -> None:
        if self._rejoin is None:
            raise ClusterRestarted("the GPU workers' cluster went away; restart `atelier serve`")
        generation = self.rejoined + 2
        try:
            handle, board = self._rejoin()
        except Exception as exc:  # the head is not back yet: the next job tries again
            raise ClusterRestarted(
                f"the GPU workers' cluster restarted and does not answer yet ({type(exc).__name__}: {exc}); "
                "nothing was saved. Try again in a minute."
            ) from None
        self._deployment = Deployment(generation, handle, board)
        self.rejoined += 1

    def _run_once(self, deployment: Deployment, job, on_step, should_cancel, replica, started: dict) -> Any:
        # "previews": the worker streams its steps only to a caller that shows them (each is a message both ways)
        job = {**job, "id": uuid.uuid4().hex, "board": deployment.board, "previews": on_step is not None}
        handle = deployment.handle.options(stream=True)
        if replica is not None:
            handle = handle.options(multiplexed_model_id=pin(replica))
        _enqueue(deployment.board, job["id"])
        self.queued[job["id"]], watch, ran = time.monotonic(), None, False
        try:
            stream = _sent(handle, job)
            watch = _InterruptWatch(stream, deployment.board, job["id"], should_cancel)
            for item in _items(stream):
                if "started" in item:
                    self.queued.pop(job["id"], None)
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
                    ran = True
                    return wire.result_from_wire(item["result"])
        finally:
            if watch is not None:
                watch.stop()
            with contextlib.suppress(Exception):  # a board that went away with its cluster has nothing to end
                deployment.board.finish.remote(job["id"], ran=ran)
            self.queued.pop(job["id"], None)
            self.running.pop(job["id"], None)
        raise WorkerLost("the GPU worker ended the job without a result; nothing was saved. Try again.")


class _InterruptWatch:
    """Looks at the front end's `should_cancel` while a job waits or runs: a running job is marked on the
    JobBoard (its replica stops at the next step), a waiting one is also taken out of Serve's queue."""

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


class _RayTrouble(RuntimeError):
    """Ray or Serve failed a job (not the engine): a lost cluster, or an internal error (the log has it)."""


def _enqueue(board: Any, job_id: str) -> None:
    """Put the job on the board before sending it (so a worker taking it always finds it there)."""
    from ray.exceptions import RayError

    try:
        ray.get(board.enqueue.remote(job_id), timeout=PROBE_S)
    except RayError as exc:
        raise _RayTrouble(f"the GPU workers' job board did not answer: {type(exc).__name__}: {exc}") from exc


def _sent(handle: Any, job: dict[str, Any]) -> Any:
    from ray.exceptions import RayError
    from ray.serve.exceptions import RayServeException

    try:
        return handle.run.remote(job)
    except (RayError, RayServeException) as exc:
        raise _RayTrouble(f"the GPU workers could not take this job: {type(exc).__name__}: {exc}") from exc


def _gone(deployment: Deployment) -> bool:
    """Whether the cluster's board stopped answering: the head node (where it lives) went away."""
    from ray.exceptions import GetTimeoutError, RayError

    try:
        ray.get(deployment.board.ping.remote(), timeout=PROBE_S)
    except GetTimeoutError:
        return False  # busy, not gone
    except (RayError, ConnectionError):
        return True
    return False


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
    except (RayError, RayServeException) as exc:  # not a lost worker: a lost cluster, or an internal error
        raise _RayTrouble(f"the GPU workers could not run this job: {type(exc).__name__}: {exc}") from exc


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
    GPU in the cluster (one when there is none). When this call joins the cluster (Ray not yet started in
    this process), the engine joins it again, the same way, after its head restarts."""
    from atelier.cluster.deployment import worker_application

    joins = not ray.is_initialized()
    if joins:
        os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", GCS_WAIT_S)
        ray.init(address=address, namespace=NAMESPACE, **(ray_init or {}))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if actor_options is None:
        actor_options = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    if replicas is None:
        replicas = max(gpus, 1)
    check_replicas(replicas)
    application = {
        "home": home,
        "device_options": device_options,
        "base": base,
        "refiner": refiner,
        "replicas": replicas,
        "actor_options": actor_options,
    }

    def deploy() -> tuple[Any, Any]:
        serve.start(proxy_location="Disabled")  # the Gradio front end is the only way in: no HTTP proxy
        handle = serve.run(worker_application(**application), name=APP_NAME, route_prefix=None)
        return handle, job_board()

    def rejoin() -> tuple[Any, Any]:
        ray.shutdown()  # this process's link to the cluster that went away
        if not _head_answers(address):  # else ray.init waits minutes for a head that is not back
            raise ConnectionError(f"nothing answers at {address}")
        ray.init(address=address, namespace=NAMESPACE, **(ray_init or {}))
        return deploy()

    slots = replicas[1] if isinstance(replicas, tuple) else replicas
    local = functools.partial(_local_engine, home, device_options)
    return RemoteEngine(*deploy(), local, slots=slots, rejoin=rejoin if joins else None)


def _head_answers(address: str) -> bool:
    """Whether the head's port ("auto": the cluster `ray start` made here) takes a TCP connection."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        target = address[len("ray://") :] if address.startswith("ray://") else canonicalize_bootstrap_address(address)
        host, _, port = (target or "").rpartition(":")
        with socket.create_connection((host, int(port)), timeout=5):
            return True
    except (OSError, ValueError):  # refused, unreachable, or no address known
        return False


def _local_engine(home, device_options: dict[str, Any]):
    from atelier import __version__
    from pipelines.engine.engine import Engine
    from pipelines.models.loading import ModelCache

    return Engine(ModelCache(home, **device_options), app_version=__version__)


def shutdown() -> None:
    """Take the workers down (the Ray cluster itself stays, as `ray start` made it)."""
    if not ray.is_initialized():  # they went with the cluster (a test's, or one that stopped)
        return
    if _head_answers(ray.get_runtime_context().gcs_address):  # a head that went away would hold up the exit
        serve.delete(APP_NAME)
