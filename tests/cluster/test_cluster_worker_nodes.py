"""The head node restarting, seen from the GPU machines (issue 14, faults): they rejoin under a supervisor.

A cluster as the README deploys it, on this one machine: a head started with `--num-cpus 0` (no worker can
run there) and a "GPU machine", a second Ray node started as one runs: `ray start --address HEAD --num-cpus 1
--block`, under a supervisor that starts it again whenever it exits (systemd's Restart=always). The Studio is
built as `atelier serve --cluster ADDRESS --workers 1` builds it. The head is SIGKILLed and started again at
the same port; the next job from the same Studio runs on the GPU machine's new node, with the same pixels as
in one process.

What Ray 2.60 does (measured here; the test prints it): a GPU machine's `ray start --block` exits by itself,
with status 1, when its head goes away, and nothing in Ray starts it again:
- head back in time: its raylet finds a GCS with another cluster id at its next self check
  (`raylet_liveness_self_check_interval_ms`, 60 s by default) and exits ("GCS returned an authentication
  error …"); about a minute after the head was killed, whether or not the head is already back;
- head away longer than `gcs_rpc_server_reconnect_timeout_s` (60 s by default): it exits then ("Failed to
  connect to GCS within 60 seconds").
The GPU machine's node runs here with both lowered (WORKER_NODE_CONFIG) so the test takes seconds, not minutes.

A long outage (the second test): while the head is down, each start of `ray start --address HEAD --block` by
the supervisor fails by itself, status 1, after about 21 s with the reconnect timeout at 10 s (the `ray start`
command's own GCS client: 5 s, 5 s, then the timeout; "Failed to connect to GCS within 10 seconds"; nothing
is left running), so a supervisor just keeps restarting it; the start in flight when the head comes back joins
it. A job sent meanwhile is refused in words within seconds (ClusterRestarted, "does not answer yet"), and the
first job after the head is back joins the new cluster and runs on the GPU machine's new node.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from atelier.cluster.errors import ClusterRestarted
from tests.cluster.serving import JobThread, pixels, served_studios, wait_for
from tests.storage.storage_checks import consistency_problems, database_url

pytestmark = pytest.mark.slow  # a head started 3 times, a worker deployed 3 times, a 40 s outage: ~2.5 minutes

RAY = str(Path(sys.executable).with_name("ray"))
WORKER_NODE_CONFIG = {
    "RAY_raylet_liveness_self_check_interval_ms": "3000",  # 60 000 by default: how soon it sees a new head
    "RAY_gcs_rpc_server_reconnect_timeout_s": "10",  # 60 by default: how long it waits for a head that is away
}
OLD_NODE_EXITS = (
    "GCS returned an authentication error",  # the head came back: a GCS with another cluster id
    "Failed to connect to GCS within",  # the head stayed away longer than the reconnect timeout
)
RESTART_S = 1.0  # the supervisor's pause before starting the node again (systemd's RestartSec)
START_TIMEOUT_S = 120.0


def ray_env(**config: str) -> dict[str, str]:
    """This process's environment for a `ray start`, without the GCS wait `atelier.cluster.client.connect`
    sets here for the front end (86 400 s), with token authentication on (as the head has it)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_gcs_rpc_server_reconnect_timeout_s"}
    return {**env, "RAY_AUTH_MODE": "token", **config}


def start_node(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """`ray start … --block` in its own process group, once it says it started (or exited, or took too long:
    the caller looks at its log)."""
    with log.open("w") as out:
        process = subprocess.Popen(
            [RAY, "start", *command, "--disable-usage-stats", "--block"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while "Ray runtime started" not in log.read_text() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.25)
    return process


def kill_node(process: subprocess.Popen) -> None:
    """SIGKILL to the node's process group and every process it started (Ray gives each worker its own group)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        started = psutil.Process(process.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        for child in started:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
    process.wait(timeout=30)


class HeadNode:
    """`ray start --head --num-cpus 0 --block` at a fixed port, killed (SIGKILL) and started again there."""

    def __init__(self, root: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.root = root
        self.starts = 0
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        # A fresh --temp-dir each start: one machine only. With the old GPU node still running here, `ray start
        # --head` would find that node's raylet (ps) pointing at this address, recorded in the old temp dir,
        # and refuse ("already running"); on separate machines the head's machine has no such raylet.
        self.starts += 1
        temp_dir = self.root / f"head{self.starts}"  # short: Ray's socket paths must stay under ~107 characters
        temp_dir.mkdir()
        command = ["--head", "--port", str(self.port), "--num-cpus", "0", "--temp-dir", str(temp_dir)]
        log = self.root / f"head{self.starts}.log"
        self.process = start_node([*command, "--include-dashboard", "false"], log, ray_env())
        assert "Ray runtime started" in log.read_text() and self.process.poll() is None, log.read_text()[-3000:]

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            kill_node(self.process)


@dataclass
class NodeRun:
    """One run of the GPU machine's `ray start --address … --block`."""

    process: subprocess.Popen
    log: Path
    began: float  # time.monotonic(), as the supervisor started it
    returncode: int | None = None
    ended_at: float | None = None  # time.monotonic()
    killed_by_test: bool = False

    def summary(self, since: float) -> str:
        """What this run did, its times counted from `since` (time.monotonic())."""
        joined = "joined" if "Ray runtime started" in self.log.read_text() else "never joined"
        ended = (
            "still running"
            if self.ended_at is None
            else f"exited rc {self.returncode} at {self.ended_at - since:+.1f} s"
        )
        return f"started at {self.began - since:+.1f} s, {joined}, {ended}"


@dataclass
class SupervisedGpuMachine:
    """A GPU machine's node, `ray start --address HEAD --num-cpus 1 --block`, started again by a supervisor
    (RESTART_S after) whenever it exits, as systemd's Restart=always does."""

    head: HeadNode
    root: Path
    runs: list[NodeRun] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, daemon=True)
        self._thread.start()
        self.wait_for_run(1)

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            number = len(self.runs) + 1
            temp_dir = self.root / f"gpu{number}"
            temp_dir.mkdir()
            command = ["--address", self.head.address, "--num-cpus", "1", "--temp-dir", str(temp_dir)]
            log = self.root / f"gpu{number}.log"
            began = time.monotonic()
            run = NodeRun(start_node(command, log, ray_env(**WORKER_NODE_CONFIG)), log, began)
            self.runs.append(run)
            run.returncode = run.process.wait()
            run.ended_at = time.monotonic()
            self._stopping.wait(RESTART_S)

    def wait_for_run(self, number: int) -> NodeRun:
        """The `number`-th run, once its node started (1: the first)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if len(self.runs) >= number:
                run = self.runs[number - 1]
                if "Ray runtime started" in run.log.read_text():
                    return run
                assert run.ended_at is None, run.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"the GPU machine's run {number} did not start"
            time.sleep(0.25)

    def stop(self) -> None:
        self._stopping.set()
        while self._thread is not None and self._thread.is_alive():
            if self.runs and self.runs[-1].process.poll() is None:
                self.runs[-1].killed_by_test = True
                kill_node(self.runs[-1].process)
            self._thread.join(timeout=1)


class ReplicaWatch:
    """Passed as a job's `on_step`: the process ids of the replica running it and of that process's ancestors."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.lineages: set[tuple[int, ...]] = set()

    def __call__(self, step) -> None:
        for started in list(self.engine.running.values()):
            with contextlib.suppress(psutil.NoSuchProcess):
                replica = psutil.Process(started["pid"])
                self.lineages.add((replica.pid, *(parent.pid for parent in replica.parents())))

    def ran_under(self, run: NodeRun) -> bool:
        """Whether the job ran, on one replica, in a process that the node of `run` started."""
        (lineage,) = self.lineages  # one job, one replica
        return run.process.pid in lineage[1:]


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="atl-rn-", dir="/tmp"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "token")  # an explicit address: Ray wants token mode said (README)
        head = HeadNode(root)
        gpu_machine = SupervisedGpuMachine(head, root)
        try:
            head.start()
            gpu_machine.start()
            yield head, gpu_machine
        finally:
            import ray

            ray.shutdown()
            gpu_machine.stop()
            head.kill()
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def served(cluster, make_tiny_home):
    head, _ = cluster
    with served_studios(head.address, make_tiny_home, "worker-nodes") as studios:
        yield studios


def alive_nodes() -> dict[str, float]:
    """Node id -> CPUs, of the nodes alive in the cluster this process joined."""
    import ray

    return {node["NodeID"]: node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"]}


def draft_watched(studio, recipe, timeout: float = 180.0):
    """(a draft run off the main thread, as the web queue runs it, the ReplicaWatch of the replica that ran it)."""
    watch = ReplicaWatch(studio.engine)
    draft = JobThread(lambda: studio.draft(recipe, 1, on_step=watch)).result(timeout=timeout)[0]
    return draft, watch


def draft_after_the_restart(studio, recipe, killed: float):
    """draft_watched, for the first job after the head came back (killed at `killed`): the front end joins the
    cluster again and deploys, and its worker waits for the GPU machine's node (the head has no CPU)."""
    made = draft_watched(studio, recipe)
    print(
        f"the next draft (rejoin, GPU machine back, worker deployed): {time.monotonic() - killed:.1f} s after the kill"
    )
    return made


def saved(studio) -> tuple[list[str], list[str]]:
    """(the gallery's row ids, the names of its files), sorted."""
    rows = sorted(row.id for row in studio.gallery.search(None, limit=50).items)
    return rows, sorted(path.name for path in studio.files_folder().rglob("*") if path.is_file())


def exit_reasons(run: NodeRun, killed: float) -> list[str]:
    """Why the GPU machine's node of `run`, alive when the head was killed (at `killed`), exited by itself."""
    assert run.ended_at is not None and not run.killed_by_test  # it exited by itself …
    print(
        f"the GPU machine's `ray start --block` exited {run.ended_at - killed:.1f} s after the kill, rc {run.returncode}"
    )
    assert run.returncode == 1  # … as `ray start --block` does when its raylet dies, for one of two reasons:
    reasons = [reason for reason in OLD_NODE_EXITS if reason in run.log.read_text()]
    print(f"… because: {reasons}")
    return reasons


def check_the_rejoin(gpu_machine: SupervisedGpuMachine, watch: ReplicaWatch, nodes_before: dict[str, float]) -> None:
    """The job of `watch` ran on the GPU machine's node that its supervisor started again, in a new cluster."""
    rejoined_run = gpu_machine.runs[-1]
    assert len(gpu_machine.runs) >= 2 and rejoined_run.ended_at is None
    assert watch.ran_under(rejoined_run)  # on the GPU machine's node started again by its supervisor
    nodes_after = alive_nodes()
    assert sorted(nodes_after.values()) == [0.0, 1.0] and not set(nodes_after) & set(nodes_before)  # new nodes


def check_the_gallery(studio, reference, made: dict, rows_before: list[str]) -> None:
    """The drafts `made` (recipe -> draft) have the single-process pixels, the gallery holds them and nothing
    else new, and passes the crash test's integrity checks."""
    for recipe, draft in made.items():
        assert pixels(draft.image) == pixels(reference.draft(recipe, 1)[0].image)
    assert saved(studio)[0] == sorted([*rows_before, *(draft.id for draft in made.values())])
    gallery = studio.gallery
    assert consistency_problems(gallery.home, database_url(gallery), files=studio.files_folder()) == []


def refused_at_once(studio, recipe) -> float:
    """Seconds a draft sent while the head is down took to be refused, in words (ClusterRestarted)."""
    started = time.monotonic()
    job = JobThread(lambda: studio.draft(recipe, 1))
    job.join(timeout=60)  # a job that hangs fails here rather than holding up the test
    print(f"a job sent while the head was down: {job.error!r}")
    assert isinstance(job.error, ClusterRestarted), job.error
    assert re.search("does not answer yet.*nothing was saved", str(job.error)), job.error
    return time.monotonic() - started


def test_a_gpu_machine_under_a_supervisor_rejoins_the_restarted_head(cluster, served, tiny_recipe):
    head, gpu_machine = cluster
    studio, reference = served
    engine = studio.engine
    recipes = [tiny_recipe(seed=81, steps=4), tiny_recipe(seed=82, steps=4)]
    rows_before, rejoined_before = saved(studio)[0], engine.rejoined
    nodes_before = alive_nodes()
    assert sorted(nodes_before.values()) == [0.0, 1.0]  # the head (no CPU) and the GPU machine
    first, first_watch = draft_watched(studio, recipes[0])
    assert first_watch.ran_under(gpu_machine.runs[-1])  # the head has no CPU: the job ran on the GPU machine
    old_run = gpu_machine.runs[-1]

    killed = time.monotonic()
    head.kill()  # the head crashes between two jobs …
    head.start()  # … and comes back at the same address: a new cluster, without the GPU machine's node
    print(f"head restarted in {time.monotonic() - killed:.1f} s")
    second, second_watch = draft_after_the_restart(studio, recipes[1], killed)

    assert len(exit_reasons(old_run, killed)) == 1
    check_the_rejoin(gpu_machine, second_watch, nodes_before)
    assert engine.rejoined == rejoined_before + 1
    check_the_gallery(studio, reference, dict(zip(recipes, [first, second], strict=True)), rows_before)


def test_a_long_head_outage_refuses_jobs_at_once_and_the_gpu_machine_rejoins_after_it(cluster, served, tiny_recipe):
    """The head away longer than the GPU machine's reconnect timeout: its node exits, the supervisor's starts
    against the dead head fail one after the other, a job sent meanwhile is refused at once; once the head is
    back, the supervisor's next start joins it and the next job runs there. (After the first test or alone.)"""
    head, gpu_machine = cluster
    studio, reference = served
    engine = studio.engine
    recipes = [tiny_recipe(seed=91, steps=4), tiny_recipe(seed=92, steps=4)]
    rows_before, rejoined_before = saved(studio)[0], engine.rejoined
    first, first_watch = draft_watched(studio, recipes[0])  # the worker deployed, the GPU machine's node alive
    old_run = gpu_machine.runs[-1]
    assert first_watch.ran_under(old_run) and old_run.ended_at is None
    nodes_before, saved_before = alive_nodes(), saved(studio)

    killed = time.monotonic()
    head.kill()  # the head crashes, and stays away
    refused_in = [refused_at_once(studio, tiny_recipe(seed=93, steps=4))]  # the old node still up
    wait_for(lambda: old_run.ended_at is not None, timeout=60)
    assert exit_reasons(old_run, killed) == ["Failed to connect to GCS within"]
    refused_in.append(refused_at_once(studio, tiny_recipe(seed=94, steps=4)))  # no node left
    print(f"jobs sent while the head was down were refused in {[f'{s:.1f} s' for s in refused_in]}")
    assert max(refused_in) < 15
    assert saved(studio) == saved_before  # nothing of them was saved
    # the supervisor starts the node again at once; against a dead head that start fails by itself
    after_old = gpu_machine.runs.index(old_run) + 1
    wait_for(lambda: len(gpu_machine.runs) > after_old and gpu_machine.runs[after_old].ended_at, timeout=60)
    failed = gpu_machine.runs[after_old]
    print(f"a start against the dead head: rc {failed.returncode} after {failed.ended_at - failed.began:.1f} s")
    assert failed.returncode == 1 and "Ray runtime started" not in failed.log.read_text()
    assert "Failed to connect to GCS within" in failed.log.read_text()

    head.start()  # at the same port
    print(f"head back {time.monotonic() - killed:.1f} s after the kill")
    second, second_watch = draft_after_the_restart(studio, recipes[1], killed)
    since_the_kill = gpu_machine.runs[gpu_machine.runs.index(old_run) :]
    print("the GPU machine's runs, from the kill:\n" + "\n".join(run.summary(killed) for run in since_the_kill))
    check_the_rejoin(gpu_machine, second_watch, nodes_before)
    assert engine.rejoined == rejoined_before + 1  # the refused jobs did not count: they found no cluster
    check_the_gallery(studio, reference, dict(zip(recipes, [first, second], strict=True)), rows_before)
