"""GPU workers on Ray Serve (issue 14), on a real local Ray cluster of 2 CPU replicas with the tiny model.

One module-scoped cluster (the expensive part: two worker processes each importing torch and loading the
tiny model); every test uses small 64 px recipes.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atelier.cluster.errors import WorkerLost
from pipelines.errors import GenerationCancelled
from tests.cluster.serving import pixels, wait_for
from tests.storage.storage_checks import consistency_problems, database_url

pytestmark = pytest.mark.slow  # a local Ray cluster: about 2 minutes on 2 cores


@pytest.fixture(scope="module")
def cluster(make_tiny_home):
    """(studio on the cluster, its RemoteEngine, a single-process studio for references), the first made as
    `atelier serve --cluster auto --workers 2` makes it, on a local Ray cluster of 2 CPUs started here."""
    import ray

    from atelier.cli import build_parser
    from atelier.cluster.client import NAMESPACE
    from atelier.cluster.options import open_serve_studio
    from atelier.commands.common import choose, open_studio
    from atelier.studio import Studio

    home = make_tiny_home(name="cluster-home")
    argv = ["serve", "--home", str(home), "--model", "tiny", "--refiner", "tiny", "--device", "cpu"]
    args = build_parser().parse_args([*argv, "--cluster", "auto", "--workers", "2"])
    ray.init(num_cpus=2, include_dashboard=False, namespace=NAMESPACE, log_to_driver=False)
    try:
        studio = open_serve_studio(args, choose(args), open_studio)  # joins the cluster ray.init started
        reference = Studio(make_tiny_home(name="reference-home"), device="cpu")
        yield studio, studio.engine, reference
        studio.close()
        reference.close()
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def test_eight_drafts_from_four_clients_use_both_replicas(cluster, tiny_recipe):
    studio, engine, _ = cluster
    assert studio.device_slots == 2  # the web queue runs two jobs at once, one per worker
    before = dict(engine.jobs_per_replica)
    saved, errors = [], []

    def client(number: int) -> None:
        try:
            for job in range(2):
                saved.extend(studio.draft(tiny_recipe(seed=100 + 10 * number + job, steps=4), 1))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({s.id for s in saved}) == 8
    assert all(studio.gallery.get(s.id).latent_path.exists() for s in saved)
    per_replica = {r: n - before.get(r, 0) for r, n in engine.jobs_per_replica.items()}
    print(f"drafts per replica: {per_replica}")
    assert sum(per_replica.values()) == 8
    assert len([n for n in per_replica.values() if n > 0]) == 2, per_replica


def test_draft_on_one_replica_refines_on_the_other_to_single_process_pixels(cluster, tiny_recipe):
    studio, engine, reference = cluster
    recipe = tiny_recipe(seed=77, steps=6)
    before = dict(engine.jobs_per_replica)
    draft = studio.draft(recipe, 1)[0]
    drafted_on = next(r for r, n in engine.jobs_per_replica.items() if n > before.get(r, 0))
    other = next(r for r in engine.replica_ids() if r != drafted_on)
    local_draft = reference.draft(recipe, 1)[0]
    assert pixels(draft.image) == pixels(local_draft.image)
    expected = pixels(reference.refine(local_draft.id).image)
    loaded = studio.load_draft(draft.id)  # the kept latent as the gallery's file store holds it
    finished = engine.refine(loaded, replica=other)
    assert engine.jobs_per_replica[other] == before.get(other, 0) + 1  # the pin held: replica B refined it
    assert pixels(finished.image) == expected
    refined = studio.refine(draft.id)  # through the Studio, on any replica: saved on the front end's side
    assert pixels(refined.image) == expected
    assert studio.gallery.get(refined.id).parent_id == draft.id
    # a cheap-preview draft's full decode (for Download) is made on a worker too, to the same pixels
    assert pixels(studio.download_path(draft.id)) == pixels(reference.download_path(local_draft.id))


def test_an_esrgan_upscale_enlarges_on_a_worker_to_single_process_pixels(cluster, tiny_recipe, monkeypatch):
    import pipelines.models.upscalers as upscalers

    studio, engine, reference = cluster
    for home in (studio.home, reference.home):  # the workers share the front end's home (and models folder)
        model = _write_tiny_esrgan(home / "models")
    image = Image.fromarray(np.random.default_rng(5).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    assert pixels(engine.enlarge(image, 112, 80, "tiny-x2")) == pixels(upscalers.upscale(model, image, 112, 80))
    recipe = tiny_recipe(seed=88, steps=4)
    expected = reference.upscale(reference.draft(recipe, 1)[0].id, scale=2, steps=6, upscaler="tiny-x2")
    draft = studio.draft(recipe, 1)[0]
    # From here the front end's process cannot run an upscaler model: only a worker makes these pixels.
    monkeypatch.setattr(upscalers, "upscale", lambda *args: pytest.fail("the front end ran the upscaler"))
    modes: list[str] = []
    send = engine.run
    monkeypatch.setattr(engine, "run", lambda job, **kw: modes.append(job["mode"]) or send(job, **kw))
    saved = studio.upscale(draft.id, scale=2, steps=6, upscaler="tiny-x2")
    assert modes.count("enlarge") == 1 and "render" in modes, modes
    enlarged = studio.read_file(saved.recipe.source_image_sha256)
    assert Image.open(io.BytesIO(enlarged)).size == (128, 128)
    assert pixels(io.BytesIO(enlarged)) == pixels(io.BytesIO(reference.read_file(expected.recipe.source_image_sha256)))
    assert pixels(saved.image) == pixels(expected.image)
    assert studio.gallery.get(saved.id).parent_id == draft.id
    modes.clear()
    with pytest.raises(ValueError, match=r"^upscaler: no upscaler named 'nope'"):
        studio.upscale(draft.id, scale=2, upscaler="nope")  # checked on the front end, before any job
    assert modes == []
    with pytest.raises(ValueError, match=r"^upscaler: no upscaler named 'nope'"):
        engine.enlarge(image, 112, 80, "nope")  # and by the worker, in its own home


def _write_tiny_esrgan(models):
    """A tiny random Real-ESRGAN Compact (×2) at <models>/ESRGAN/tiny-x2.safetensors (as tests/pipelines/
    test_upscale.py makes it): the same weights in every home."""
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    model = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    (models / "ESRGAN").mkdir(parents=True, exist_ok=True)
    (models / "Lora").mkdir(exist_ok=True)  # an A1111 models folder
    path = models / "ESRGAN" / "tiny-x2.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def test_interrupt_stops_a_running_job_at_its_next_step(cluster, tiny_recipe):
    studio, engine, _ = cluster
    count_before = studio.gallery.search(None, limit=500).items
    steps: list[int] = []
    cancel = threading.Event()

    def on_step(preview):
        steps.append(preview.step)
        if preview.step == 3:
            cancel.set()

    with pytest.raises(GenerationCancelled, match="cancelled during the base at step") as stopped:
        studio.draft(
            tiny_recipe(seed=5, steps=400, switch=1.0, refine=None), 1, on_step=on_step, should_cancel=cancel.is_set
        )
    stopped_at = int(str(stopped.value).rsplit(" ", 1)[1])
    print(f"Interrupt at step 3 of 400: the worker stopped at step {stopped_at}")
    # The flag reaches the board as step 3 arrives; the worker is a few steps on by then (on this 2-core
    # machine 1, at most a handful) and stops at the next step it checks.
    assert 3 <= stopped_at <= 30 and max(steps) <= stopped_at
    assert len(studio.gallery.search(None, limit=500).items) == len(count_before)  # nothing saved


@pytest.mark.parametrize("previews", [True, False])
def test_a_worker_streams_its_steps_only_to_a_caller_that_shows_them(cluster, tiny_recipe, previews):
    """Each step is a message from the worker to the front end: a job sent without `on_step` (the CLI, the
    bench) gets only its start and its result."""
    import uuid

    from ray import serve

    from atelier.cluster.client import APP_NAME
    from atelier.cluster.deployment import job_board

    board, job_id = job_board(), uuid.uuid4().hex
    board.enqueue.remote(job_id)
    recipe = tiny_recipe(seed=9, steps=6, switch=1.0, refine=None)
    job = {"mode": "draft", "recipe": recipe.to_json(), "count": 1, "inputs": None, "loras": []}
    stream = (
        serve.get_app_handle(APP_NAME)
        .options(stream=True)
        .run.remote({**job, "id": job_id, "board": board, "previews": previews})
    )
    kinds = [next(iter(item)) for item in stream]
    board.finish.remote(job_id, ran=True)
    assert kinds == ["started", *(["step"] * 6 if previews else []), "result"]


def test_interrupt_removes_a_waiting_job(cluster, tiny_recipe):
    studio, engine, _ = cluster
    long = tiny_recipe(seed=6, steps=400, switch=1.0, refine=None)
    stop_long = threading.Event()
    busy = [
        threading.Thread(target=_run_until, args=(engine, long, stop_long), daemon=True) for _ in range(2)
    ]  # both replicas busy
    for thread in busy:
        thread.start()
    wait_for(lambda: len(engine.running) == 2)
    steps: list[int] = []
    with pytest.raises(GenerationCancelled):
        engine.draft(tiny_recipe(seed=7), 1, on_step=lambda info: steps.append(info.step), should_cancel=lambda: True)
    assert steps == []  # it never ran
    stop_long.set()
    for thread in busy:
        thread.join(timeout=60)


def test_a_lora_job_prefers_the_replica_that_holds_its_lora(cluster, tiny_recipe):
    """Jobs naming a LoRA loaded on one replica only go to that replica. The router learns each replica's
    LoRAs from stats it polls about once a second: on a loaded machine the first job may still go by chance,
    and then both replicas hold the LoRA (any replica is right from there on). So a try whose count falls
    short is made again with a fresh copy of the LoRA under a new name (no replica holds it yet), up to 3
    tries. By chance alone, 10 of 12 jobs on one replica happen 1.9 % of the time per try."""
    import shutil

    from pipelines.recipe import LoraRef

    studio, engine, _ = cluster
    studio.install_demo_extras()  # the tiny LoRA, in the home's models folder (every replica's too)
    demo = studio.loras()[0]
    holder = engine.replica_ids()[0]
    counts = []
    for attempt in range(3):
        name = f"affinity-{attempt}"
        shutil.copyfile(demo["path"], Path(demo["path"]).with_name(f"{name}.safetensors"))
        recipe = tiny_recipe(seed=31, steps=4, loras=(LoraRef(name, weight=0.8),))
        engine.draft(recipe, 1, replica=holder)  # now loaded on `holder` only
        time.sleep(4)  # each replica's loaded LoRAs reach the router every second
        before = dict(engine.jobs_per_replica)
        for n in range(12):  # one at a time: the holder is free each time, so it is chosen each time
            engine.draft(recipe.replace(seed=40 + n), 1)
        counts.append(engine.jobs_per_replica[holder] - before.get(holder, 0))
        if counts[-1] >= 10:
            return
    raise AssertionError(f"jobs on the replica holding the LoRA, of 12, in each try: {counts}")


def test_a_killed_replica_fails_its_job_in_words_and_the_next_jobs_run(cluster, tiny_recipe):
    studio, engine, _ = cluster
    files_before = sorted(p.name for p in studio.files_folder().rglob("*") if p.is_file())
    rows_before = [g.id for g in studio.gallery.search(None, limit=500).items]
    outcome: dict[str, BaseException] = {}

    def doomed() -> None:
        try:
            studio.draft(tiny_recipe(seed=8, steps=400, switch=1.0, refine=None), 1)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=doomed)
    thread.start()
    wait_for(lambda: len(engine.running) == 1)
    worker = next(iter(engine.running.values()))
    time.sleep(0.5)  # mid-job
    os.kill(worker["pid"], signal.SIGKILL)
    thread.join(timeout=120)
    error = outcome.get("error")
    print(f"the killed worker's job: {error}")
    assert isinstance(error, WorkerLost), error
    assert "stopped before it finished" in str(error) and "nothing was saved" in str(error)
    assert [g.id for g in studio.gallery.search(None, limit=500).items] == rows_before
    assert sorted(p.name for p in studio.files_folder().rglob("*") if p.is_file()) == files_before
    after = [studio.draft(tiny_recipe(seed=9 + n, steps=4), 1)[0] for n in range(3)]  # the next jobs run
    assert all(studio.gallery.get(s.id).kind == "draft" for s in after)
    # The crash test's checks (tests/storage/test_gallery_crash.py): database intact, references and lineage
    # valid, every row's files present with their sha256, no stray or temp file.
    gallery = studio.gallery
    assert consistency_problems(gallery.home, database_url(gallery), files=studio.files_folder()) == []


def test_serve_without_cluster_imports_no_ray(tmp_path):
    """`atelier serve`'s start-up path without --cluster (parse, the Studio, the web app) loads no Ray."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from atelier.cli import build_parser\n"
        "from atelier.cluster.options import open_serve_studio\n"
        "from atelier.commands.common import open_studio\n"
        f"args = build_parser().parse_args(['serve', '--home', {str(tmp_path)!r}, '--device', 'cpu'])\n"
        "studio = open_serve_studio(args, None, open_studio)\n"
        "import webui.app\n"
        "studio.close()\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
        "print('no ray')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no ray" in done.stdout


def _run_until(engine, recipe, stop: threading.Event) -> None:
    with contextlib.suppress(GenerationCancelled):
        engine.draft(recipe, 1, should_cancel=stop.is_set)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--workers", "2"], "need --cluster"),
        (["--cluster", "auto", "--workers", "2", "--min-workers", "1", "--max-workers", "2"], "not both"),
        (["--cluster", "auto", "--min-workers", "1"], "give both"),
        (["--cluster", "auto", "--min-workers", "3", "--max-workers", "2"], "min ≤ max"),
        (["--cluster", "auto", "--workers", "0"], "at least 1"),
    ],
)
def test_worker_options_are_checked_before_anything_starts(options, message):
    from atelier.cli import build_parser
    from atelier.cluster.options import worker_count

    args = build_parser().parse_args(["serve", *options])
    with pytest.raises(ValueError, match=message):
        worker_count(args)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--workers", "0,2"], "--workers: replica counts from 1"),
        (["--jobs", "0"], "--jobs: must be at least 1 (got 0)"),
        (["--repeats", "0"], "--repeats: must be at least 1 (got 0)"),
    ],
)
def test_cluster_bench_options_are_checked_before_ray_starts(options, message):
    from atelier.cli import build_parser
    from atelier.cluster.bench import run_from_args

    args = build_parser().parse_args(["bench", "--cluster", *options])
    with pytest.raises(ValueError, match=re.escape(message)):
        run_from_args(args)


def test_min_and_max_workers_autoscale_the_deployment():
    from atelier.cluster.deployment import worker_application

    application = worker_application(
        home=".", device_options={}, base=None, refiner=None, replicas=(1, 3), actor_options={"num_cpus": 1}
    )
    config = application._bound_deployment._deployment_config
    assert (config.autoscaling_config.min_replicas, config.autoscaling_config.max_replicas) == (1, 3)
    assert config.max_ongoing_requests == 1  # one job at a time on each device
