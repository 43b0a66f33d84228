"""The GPU job runner: previews while running, Interrupt at the next step, errors as readable messages."""

from __future__ import annotations

import re
import threading
import time
from types import SimpleNamespace

import gradio as gr
import pytest

from atelier.studio import Cancelled as GenerationCancelled
from atelier.studio import StepPreview
from pipelines.errors import OutOfMemory
from webui.context import Browsers, browser_link
from webui.job_tickets import wait_for_a_device
from webui.jobs import Done, GpuJobs, Interrupted, Step, Stopped, queue_text, readable_error


def stepping(steps: int, delay: float, seen: list):
    """Work that reports `steps` steps and, like the engine, stops when told to."""

    def work(on_step, should_cancel):
        for i in range(1, steps + 1):
            time.sleep(delay)
            seen.append(i)
            on_step(StepPreview(stage="base", step=i, total=steps))
            if should_cancel():
                raise GenerationCancelled(f"cancelled during the base at step {i}")
        return "finished"

    return work


def test_steps_then_result():
    events = list(GpuJobs().stream("s", stepping(6, 0.1, [])))
    assert isinstance(events[-1], Done) and events[-1].result == "finished"
    steps = [e.info.step for e in events if isinstance(e, Step)]
    assert steps and steps == sorted(steps) and len(steps) < 6 + 1  # throttled, in order


def test_interrupt_stops_that_session_at_the_next_step():
    jobs, seen = GpuJobs(), []
    assert not jobs.interrupt("a")  # nothing running
    stream = jobs.stream("a", stepping(1000, 0.01, seen))
    next(stream)  # running now
    assert not jobs.interrupt("someone-else")
    assert jobs.running()
    assert jobs.interrupt("a") == Stopped(running=1, waiting=0)
    rest = list(stream)
    assert not jobs.running()
    assert isinstance(rest[-1], Interrupted) and "at step" in rest[-1].message
    assert len(seen) < 1000


def test_a_job_whose_page_went_away_runs_to_the_end():
    jobs, seen, finished = GpuJobs(), [], threading.Event()
    work = stepping(30, 0.01, seen)

    def recorded(on_step, should_cancel):
        result = work(on_step, should_cancel)
        finished.set()
        return result

    stream = jobs.stream("a", recorded)
    next(stream)
    stream.close()  # the browser went away (a reload): the job is kept, so its images are saved
    assert finished.wait(5) and seen == list(range(1, 31))


def test_interrupt_takes_a_reserved_job_out_of_the_queue_before_it_runs():
    jobs, seen = GpuJobs(), []
    first = jobs.reserve("page-a")
    waiting = jobs.reserve("page-b")
    assert jobs.place(first)[0] == 0 and jobs.place(waiting)[0] == 1
    assert jobs.interrupt("page-b") == Stopped(running=0, waiting=1)  # while page A's job is still ahead of it
    events = list(jobs.stream("page-b", stepping(5, 0.0, seen), waiting))
    assert seen == [] and len(events) == 1 and isinstance(events[0], Interrupted)
    assert "before it ran" in events[0].message
    done = list(jobs.stream("page-a", stepping(3, 0.0, seen), first))  # page A's job was not touched
    assert isinstance(done[-1], Done) and seen == [1, 2, 3]
    assert not jobs.interrupt("page-b")  # nothing of B's is left


def test_the_queue_place_counts_the_jobs_ahead_and_estimates_from_finished_ones():
    jobs = GpuJobs()
    list(jobs.stream("s", lambda on_step, should_cancel: time.sleep(0.2)))
    jobs.reserve("x")
    b = jobs.reserve("y")
    ahead, eta = jobs.place(b)
    assert ahead == 1 and 0.2 <= eta < 2
    assert queue_text(ahead, eta).startswith("Waiting — 2nd in the queue (about ")
    assert queue_text(0, None) == "Starting…"
    jobs.count_waiting(lambda: 3)  # the app counts what waits in Gradio's queue instead
    assert jobs.place(jobs.reserve("z"))[0] == 3


def test_on_shared_gpu_workers_the_place_comes_from_the_cluster_after_this_front_ends_unsent_jobs():
    """With `--cluster`, the cluster's board counts every front end's jobs; this front end adds those of its
    web queue not sent yet (tests/cluster/test_cluster_reconnect.py shows it on a real cluster)."""
    jobs, asked = GpuJobs(slots=2), []
    jobs.count_waiting(lambda: 3)

    def cluster_place(not_sent: int):
        asked.append(not_sent)
        return not_sent + 4, 2.5 * (not_sent + 4)

    jobs.count_shared(cluster_place)
    assert jobs.place(jobs.reserve("z")) == (7, 17.5) and asked == [3]
    jobs.count_shared(lambda not_sent: None)  # one process: the local queue's own place
    assert jobs.place(jobs.reserve("z")) == (3, None)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_wait_is_the_running_jobs_time_left_at_its_pace_then_a_typical_job_for_each_ahead():
    clock = Clock()
    jobs = GpuJobs(clock=clock)
    for seconds in (6.0, 30.0, 8.0):  # finished jobs: the typical one (median) took 8 s

        def took(on_step, should_cancel, seconds=seconds):
            clock.now += seconds

        list(jobs.stream("s", took))
    started, go, stepped, finish = (threading.Event() for _ in range(4))

    def long(on_step, should_cancel):
        started.set()
        go.wait(5)
        on_step(StepPreview(stage="base", step=10, total=40))
        stepped.set()
        finish.wait(5)

    clock.now = 100.0  # it gets the device at 100 s
    running = threading.Thread(target=lambda: list(jobs.stream("a", long)))
    running.start()
    assert started.wait(5)
    second = jobs.reserve("b")
    assert jobs.place(second) == (1, None)  # no step made yet: no pace to go by, so no estimate
    clock.now = 110.0
    go.set()
    assert stepped.wait(5)
    clock.now = 112.0
    assert jobs.place(second) == (1, 28.0)  # 10 steps in 10 s: 40 steps take 40 s, 12 s have passed
    assert jobs.place(jobs.reserve("c")) == (2, 36.0)  # and a typical 8 s for the job waiting ahead
    clock.now = 200.0
    assert jobs.place(second) == (1, 0.0)  # slower than its pace so far: it may end any moment
    finish.set()
    running.join(5)


def test_with_several_devices_each_job_ahead_takes_the_first_one_free():
    assert wait_for_a_device([28.0, 10.0], slots=2, before=0, typical=8.0) == 10.0
    assert wait_for_a_device([28.0, 10.0], slots=2, before=1, typical=8.0) == 18.0  # 10 + 8, before 28
    assert wait_for_a_device([28.0, 10.0], slots=2, before=2, typical=8.0) == 26.0  # 18 + 8
    assert wait_for_a_device([5.0], slots=2, before=0, typical=None) == 0.0  # a device is free
    assert wait_for_a_device([5.0, None], slots=2, before=0, typical=8.0) is None  # one has made no step yet
    assert wait_for_a_device([0.0, 3.0], slots=1, before=0, typical=None) == 3.0  # one only saves: no slot


def test_no_estimate_for_jobs_waiting_ahead_before_any_job_has_finished():
    jobs = GpuJobs()
    jobs.reserve("a")
    assert jobs.place(jobs.reserve("b")) == (1, None)


def test_a_reloaded_page_reaches_its_browsers_job_and_no_other_browser_does():
    jobs, seen = GpuJobs(), []
    ticket = jobs.reserve("page-before-reload", browser="browser-1")
    stream = jobs.stream("page-before-reload", stepping(1000, 0.01, seen), ticket)
    next(stream)  # running now
    assert jobs.running_for("browser-1") and not jobs.running_for("browser-2") and not jobs.running_for(None)
    assert not jobs.interrupt("page-of-another-browser", browser="browser-2")
    assert not jobs.interrupt("an-api-client")  # no browser: its session's jobs only
    tab = jobs.reserve("another-tab", browser="browser-1")  # the same browser's other tab stops its own job first
    assert not jobs.running_for("browser-2")
    assert jobs.interrupt("another-tab", browser="browser-1") == Stopped(running=0, waiting=1)
    jobs.release(tab)
    assert jobs.interrupt("page-after-reload", browser="browser-1") == Stopped(1, 0, other_pages=True)
    rest = list(stream)
    assert isinstance(rest[-1], Interrupted) and len(seen) < 1000
    assert not jobs.running_for("browser-1")


def test_a_page_is_linked_once_to_its_browser_and_an_unknown_id_is_replaced_by_a_random_one():
    ctx = SimpleNamespace(browsers=Browsers(kept=3))
    link = browser_link(ctx)["fn"]
    first = link("", gr.Request(session_hash="page-1"))
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", first) and ctx.browsers.of("page-1") == first
    assert link(None, gr.Request(session_hash="page-2")) not in (first, None)  # another browser: another id
    assert link(first, gr.Request(session_hash="page-3")) == first  # a reload keeps its browser's id
    assert link("guessable", gr.Request(session_hash="page-4")) not in ("guessable", first)
    link(first, gr.Request(session_hash="page-4"))  # a page's browser is the first one it said
    assert ctx.browsers.of("page-4") not in ("guessable", first)
    assert ctx.browsers.of("page-1") is None  # the oldest page is forgotten past `kept`
    link(first, gr.Request())  # no session (an API call): nothing is linked
    assert ctx.browsers.of("no-session") is None


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_as_many_jobs_at_once_as_there_are_devices(slots):
    """One device: one job at a time; a cluster of N GPU workers: N at once, never more."""
    jobs, active, most = GpuJobs(slots=slots), [0], [0]
    lock = threading.Lock()

    def work(on_step, should_cancel):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.2)
        with lock:
            active[0] -= 1

    threads = [threading.Thread(target=lambda: list(jobs.stream("s", work))) for _ in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert most[0] == slots


@pytest.mark.parametrize("slots", [0, -1, 1.5, True])
def test_device_slots_must_be_a_whole_number(slots):
    with pytest.raises(ValueError, match="device slots: must be a whole number of at least 1"):
        GpuJobs(slots=slots)


@pytest.mark.parametrize(
    "error, title, text",
    [
        (ValueError("steps: must be an integer from 1 to 500 (got 0)"), "Cannot do that", "steps: must be"),
        (OutOfMemory("Out of memory on cuda"), "Cannot do that", "Out of memory"),
        (RuntimeError("<b>boom</b> [SQL: SELECT 1]"), "Something went wrong", "server log says what failed"),
    ],
)
def test_errors_become_messages(error, title, text):
    def work(on_step, should_cancel):
        raise error

    with pytest.raises(gr.Error) as raised:
        list(GpuJobs().stream("s", work))
    assert raised.value.title == title and text in raised.value.message
    assert "Traceback" not in raised.value.message
    assert "RuntimeError" not in raised.value.message and "SQL" not in raised.value.message
    assert readable_error(raised.value) is raised.value


def test_interrupt_reaches_a_job_still_waiting_for_the_device():
    jobs, seen, holding = GpuJobs(), [], threading.Event()
    release = threading.Event()

    def warm_up():  # e.g. loading models outside the queue
        holding.set()
        release.wait(5)

    holder = threading.Thread(target=jobs.run_now, args=(warm_up,))
    holder.start()
    holding.wait(5)
    stream = jobs.stream("a", stepping(5, 0.01, seen))
    first = []
    reader = threading.Thread(target=lambda: first.extend(stream))
    reader.start()
    deadline = time.monotonic() + 5
    while not jobs.interrupt("a"):  # the job registers itself before it gets the device
        assert time.monotonic() < deadline, "a waiting job could not be interrupted"
        time.sleep(0.01)
    release.set()
    holder.join()
    reader.join(5)
    assert isinstance(first[-1], Interrupted) and seen == []  # it never ran a step


def test_the_next_job_takes_the_device_while_a_finished_job_saves(tmp_path, tiny_model_dir, tiny_recipe):
    """Two queued drafts on one device: the second job's UNet runs while the first job's gallery commit is
    still going (atelier.device_lease); without the hand-over the first commit would wait here in vain."""
    from atelier.studio import Studio
    from tests.conftest import tiny_home_at

    first_saving, second_on_device, overlapped = threading.Event(), threading.Event(), []
    with Studio(tiny_home_at(tmp_path / "home", tiny_model_dir), device="cpu", save_workers=1) as studio:
        studio.draft(tiny_recipe(steps=2), 1)  # models loaded: both jobs below only draft
        save = studio.gallery.save

        def save_once_the_next_job_runs(*args, **kwargs):
            if not first_saving.is_set():
                first_saving.set()
                overlapped.append(second_on_device.wait(30))
            return save(*args, **kwargs)

        studio.gallery.save = save_once_the_next_job_runs
        hook = studio.models.load_base("tiny").pipe.unet.register_forward_pre_hook(
            lambda *_: second_on_device.set() if first_saving.is_set() else None
        )
        jobs, made = GpuJobs(), {}

        def job(name, seed):
            work = lambda on_step, should_cancel: studio.draft(tiny_recipe(steps=4, seed=seed), 1)  # noqa: E731
            made[name] = [event for event in jobs.stream(name, work) if isinstance(event, Done)][0].result

        try:
            threads = [threading.Thread(target=job, args=(name, seed)) for name, seed in (("a", 1), ("b", 2))]
            threads[0].start()
            time.sleep(0.05)  # "a" takes the device first
            threads[1].start()
            [t.join(120) for t in threads]
        finally:
            hook.remove()
    assert overlapped == [True], "the second job waited for the first job's save before using the device"
    assert [saved.recipe.seed for saved in made["a"] + made["b"]] == [1, 2]
    assert all(saved.image.exists() for saved in made["a"] + made["b"])


def test_a_job_that_gave_the_device_up_waits_for_it_before_using_it_again():
    """A job that saved in the middle (device given up) and goes on with the engine takes a slot again first:
    two jobs never use one device at once."""
    from atelier.device_lease import device_free, device_needed

    jobs, order, freed, limits = GpuJobs(), [], threading.Event(), []
    jobs.on_concurrency_change(limits.append)  # the web server's limit: 2 while "a" runs without its slot

    def first(on_step, should_cancel):
        order.append("a device")
        device_free()  # e.g. a draft saved before its refine
        freed.set()
        time.sleep(0.1)  # "b" takes the device now
        device_needed()
        order.append("a device again")

    def second(on_step, should_cancel):
        order.append("b device")
        time.sleep(0.3)
        order.append("b done")

    a = threading.Thread(target=lambda: list(jobs.stream("a", first)))
    a.start()
    freed.wait(5)
    list(jobs.stream("b", second))
    a.join(5)
    assert order == ["a device", "b device", "b done", "a device again"]
    assert limits == [2, 1]
