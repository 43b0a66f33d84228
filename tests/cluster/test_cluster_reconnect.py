"""The head node restarting (issue 14, faults): `atelier serve --cluster ADDRESS` joins the cluster again.

The realistic set-up: a head started by `ray start --head --block` in its own process group (killed with
SIGKILL: a crash, not a clean stop), one CPU worker on the tiny model, and the Studio built as `atelier serve
--cluster ADDRESS --workers 1` builds it. Its own module (and head): the tests restart the cluster. Here too,
on its one worker: the queue place and ETA that front ends sharing the deployment read from its job board.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.cluster.serving import JobThread, pixels, served_studios, wait_for
from tests.storage.storage_checks import consistency_problems, database_url

pytestmark = pytest.mark.slow  # a Ray head started 3 times, a worker deployed 3 times: about 1–2 minutes


class Head:
    """`ray start --head --block` at a fixed port, as a process group this test can kill and start again."""

    def __init__(self, temp_dir: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.temp_dir = temp_dir  # short: Ray's socket paths must stay under ~107 characters
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.temp_dir / f"head-{time.monotonic_ns()}.log"
        env = {k: v for k, v in os.environ.items() if k != "RAY_gcs_rpc_server_reconnect_timeout_s"}
        command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--port", str(self.port)]
        command += ["--num-cpus", "2", "--temp-dir", str(self.temp_dir), "--include-dashboard", "false"]
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [*command, "--disable-usage-stats", "--block"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**env, "RAY_AUTH_MODE": "token"},
                start_new_session=True,  # its own process group: GCS, raylet and the rest go with it
            )
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            assert self.process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the Ray head did not start in 2 minutes"
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL to the whole group; the raylet's worker processes end on their own when it is gone."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def head():
    import tempfile

    temp_dir = Path(tempfile.mkdtemp(prefix="atl-ray-", dir="/tmp"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "token")  # an explicit address: Ray wants token mode said (README)
        head = Head(temp_dir)
        head.start()
        try:
            yield head
        finally:
            import ray

            ray.shutdown()
            head.kill()
            shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def served(head, make_tiny_home):
    with served_studios(head.address, make_tiny_home, "reconnect") as studios:
        yield studios


def test_the_next_job_runs_after_the_head_node_restarts(head, served, tiny_recipe):
    studio, reference = served
    engine = studio.engine
    recipes = [tiny_recipe(seed=61, steps=4), tiny_recipe(seed=62, steps=4)]
    first = studio.draft(recipes[0], 1)[0]
    started = time.monotonic()
    head.kill()  # the head crashes between two jobs …
    head.start()  # … and comes back at the same address: a new cluster, without the workers
    print(f"head restarted in {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    second = JobThread(lambda: studio.draft(recipes[1], 1)).result()[0]  # as the web queue runs it: off the main thread
    print(f"the next draft (joining again and deploying the worker) took {time.monotonic() - started:.1f} s")
    assert engine.rejoined == 1
    for recipe, draft in zip(recipes, [first, second], strict=True):
        assert pixels(draft.image) == pixels(reference.draft(recipe, 1)[0].image)
    # no half-saved row or file: the two drafts, whole, and the crash test's integrity checks
    assert sorted(row.id for row in studio.gallery.search(None, limit=50).items) == sorted([first.id, second.id])
    gallery = studio.gallery
    assert consistency_problems(gallery.home, database_url(gallery), files=studio.files_folder()) == []


def test_a_job_running_when_the_head_dies_ends_in_words_and_the_next_one_runs(head, served, tiny_recipe):
    from atelier.cluster.errors import ClusterRestarted

    studio, reference = served
    engine = studio.engine
    rows_before = sorted(row.id for row in studio.gallery.search(None, limit=50).items)
    files_before = sorted(p.name for p in studio.files_folder().rglob("*") if p.is_file())
    doomed = JobThread(lambda: studio.draft(tiny_recipe(seed=63, steps=400, switch=1.0, refine=None), 1))
    wait_for(lambda: engine.running)
    time.sleep(0.5)  # mid-job
    head.kill()
    doomed.join(timeout=60)  # ends while the head is still down
    print(f"the job running when the head died: {doomed.error!r}")
    assert isinstance(doomed.error, ClusterRestarted), doomed.error
    assert "cluster restarted" in str(doomed.error) and "nothing was saved" in str(doomed.error)
    started = time.monotonic()
    with pytest.raises(ClusterRestarted, match="does not answer yet.*nothing was saved"):
        studio.draft(tiny_recipe(seed=65, steps=4), 1)  # a job while the head is down: told so, at once
    assert time.monotonic() - started < 30
    head.start()
    assert sorted(row.id for row in studio.gallery.search(None, limit=50).items) == rows_before
    assert sorted(p.name for p in studio.files_folder().rglob("*") if p.is_file()) == files_before
    recipe = tiny_recipe(seed=64, steps=4)
    after = JobThread(lambda: studio.draft(recipe, 1)).result()[0]  # `atelier serve` was not restarted
    assert engine.rejoined == 2
    assert pixels(after.image) == pixels(reference.draft(recipe, 1)[0].image)
    gallery = studio.gallery
    assert consistency_problems(gallery.home, database_url(gallery), files=studio.files_folder()) == []


def test_queue_place_and_eta_count_the_jobs_of_every_front_end(served, tiny_recipe):
    """Two front ends (two RemoteEngines) on one worker: each sees the other's jobs ahead of its own."""
    from ray import serve

    from atelier.cluster.client import APP_NAME, RemoteEngine
    from atelier.cluster.deployment import job_board

    studio, _ = served
    mine = studio.engine
    other = RemoteEngine(serve.get_app_handle(APP_NAME), job_board(), lambda: None, slots=1)
    other.draft(tiny_recipe(seed=70, steps=4), 1)  # a run time on the board, for the ETA
    ahead, seconds = mine.place()
    assert ahead == 0 and seconds == 0.0  # nothing waits or runs: a job sent now starts at once
    stop_long = threading.Event()
    long = tiny_recipe(seed=71, steps=400, switch=1.0, refine=None)
    running = JobThread(lambda: _until_cancelled(mine, long, stop_long))
    wait_for(lambda: len(mine.running) == 1)
    waiting_other = JobThread(lambda: other.draft(tiny_recipe(seed=72, steps=4), 1))
    wait_for(lambda: len(other.queued) == 1)
    waiting_mine = JobThread(lambda: mine.draft(tiny_recipe(seed=73, steps=4), 1))
    wait_for(lambda: len(mine.queued) == 1)
    (other_job,), (my_job,) = list(other.queued), list(mine.queued)
    places = {"other": other.place(other_job), "mine": mine.place(my_job), "new": mine.place()}
    print(f"places (jobs ahead, seconds): {places}")
    assert {name: ahead for name, (ahead, _) in places.items()} == {"other": 1, "mine": 2, "new": 3}
    assert 0 < places["other"][1] < places["mine"][1] < places["new"][1]
    assert mine.place(my_job) == other.place(my_job)  # the same board for both front ends
    _the_web_page_shows_the_deployment_place(studio, places["new"])
    stop_long.set()
    for job in (running, waiting_other, waiting_mine):
        job.result(timeout=120)
    assert mine.place() == (0, 0.0) and mine.queued == {} and other.queued == {}


def _the_web_page_shows_the_deployment_place(studio, sent_now: tuple[int, float]) -> None:
    """The page's status line at a click, on the app `atelier serve --cluster` builds: the jobs of every
    front end ahead (its own web queue is empty: alone it would say "Starting…"), plus its own not yet sent."""
    from atelier.model_choice import choose_models
    from webui.app import build_app, make_context
    from webui.jobs import queue_text

    ctx = make_context(studio, choose_models(studio.home, "tiny", "tiny"))
    build_app(ctx)
    ticket = ctx.jobs.reserve("a browser")
    assert ctx.jobs.place(ticket) == sent_now
    assert queue_text(*sent_now).startswith("Waiting — 4th in the queue (about ")
    ctx.jobs.count_waiting(lambda: 2)  # two more jobs waiting in this front end's web queue, not sent yet
    ahead, seconds = ctx.jobs.place(ticket)
    assert ahead == 5 and seconds > sent_now[1]


def _until_cancelled(engine, recipe, stop: threading.Event) -> None:
    from pipelines.errors import GenerationCancelled

    with pytest.raises(GenerationCancelled):
        engine.draft(recipe, 1, should_cancel=stop.is_set)
