"""GPU work for the UI: one job at a time, live step previews, Interrupt at the next step, readable errors.

Gradio's queue already runs GPU events one at a time (a shared concurrency_id, limit 1); the lock
here also covers work started outside the queue (the model warm-up at start-up). A job runs in a
worker thread so the handler (a generator) can yield step previews while it runs.
"""

from __future__ import annotations

import functools
import html
import inspect
import os
import queue
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from atelier import device_lease
from atelier.device_lease import DeviceLease, FairSlots
from atelier.studio import USER_ERRORS, Cancelled, StepPreview
from atelier.studio_values import ordinal
from webui import image_inputs
from webui.job_tickets import Stopped, Ticket, wait_for_a_device

GPU = "gpu"  # the concurrency_id every event that runs the engine shares
PREVIEW_EVERY_S = 0.25  # at most ~4 preview updates a second; the browser need not see every step
STALE_TICKET_S = 3600  # a reserved job that never started after this long is no longer counted


@dataclass(frozen=True)
class Step:
    info: StepPreview


@dataclass(frozen=True)
class Done:
    result: Any


@dataclass(frozen=True)
class Interrupted:
    message: str


Work = Callable[[Callable[[StepPreview], None], Callable[[], bool]], Any]


class GpuJobs:
    """The device's jobs in order: reserved (waiting in the queue), then running, one at a time (or as many
    as there are GPU workers, with `atelier serve --cluster`).

    A page reserves a ticket the moment the user clicks (an event outside the queue), so Interrupt can
    reach a job still waiting in Gradio's queue: when its turn comes it sees the cancelled ticket and
    never runs. A job whose page goes away (reload, closed tab) keeps running and is saved.
    """

    def __init__(self, slots: int = 1, *, clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"device slots: must be a whole number of at least 1 (got {slots!r})")
        self.slots = slots  # jobs that may run at once: 1 device, or the GPU workers of a cluster
        self._without_a_slot = 0  # running jobs that gave their slot up: only their saves are left
        self._concurrency_changed: Callable[[int], None] = lambda limit: None
        self._waiting: Callable[[], int] | None = None
        self._shared_place: Callable[[int], tuple[int, float | None] | None] = lambda not_sent: None
        self._lock = FairSlots(slots)  # held while a job uses a device; in the order the jobs came
        self._tickets: dict[str, Ticket] = {}  # in the order they were reserved
        self._mutex = threading.Lock()  # guards _tickets and _durations
        self._durations: list[float] = []  # seconds of the last few jobs, for the queue's ETA
        self._clock = clock  # for the queue's ETA and stale tickets (tests pass a controlled one)

    def reserve(self, session: str, browser: str | None = None) -> str:
        """A ticket for a job about to be queued by page `session` of `browser` (None: not known)."""
        ticket = uuid.uuid4().hex
        with self._mutex:
            self._forget_stale()
            self._tickets[ticket] = Ticket(
                session=session, browser=browser, cancel=threading.Event(), reserved_at=self._clock()
            )
        return ticket

    def place(self, ticket: str) -> tuple[int, float | None]:
        """(jobs ahead of a ticket just reserved, about how many seconds until it starts or None if
        not known yet): the running job and those waiting in the queue; on GPU workers several front ends
        share (`count_shared`), the jobs of all of them. The wait is the running jobs' time left at the pace
        of their steps so far, then the typical (median) duration of recent jobs for each one waiting ahead;
        None while a running job has made no step yet, or a job waits ahead before any has finished."""
        with self._mutex:
            on_device = [t for t in self._tickets.values() if t.device_since is not None]
            if self._waiting is not None:  # and those started beyond the free slots wait for one too
                started = sum(1 for t in self._tickets.values() if t.started)
                not_sent = self._waiting()
                ahead = not_sent + max(0, started - self.slots + 1)
                before = not_sent + started - len(on_device)  # jobs that get a device before this one
            else:
                order = list(self._tickets)
                not_sent = ahead = order.index(ticket) if ticket in order else 0
                before = sum(1 for key in order[:ahead] if self._tickets[key].device_since is None)
            typical = sorted(self._durations)[len(self._durations) // 2] if self._durations else None
            wait = wait_for_a_device([t.seconds_left(self._clock()) for t in on_device], self.slots, before, typical)
        # Outside the mutex: it asks the cluster. Jobs past Gradio's queue still waiting for a slot are not sent.
        shared = self._shared_place(not_sent + self._lock.waiting())
        if shared is not None:
            return shared
        return ahead, wait

    def count_shared(self, place: Callable[[int], tuple[int, float | None] | None]) -> None:
        """Where the queue's place comes from when the device is GPU workers shared with other front ends:
        `place(not_sent)` is that of a job sent after `not_sent` of this front end's jobs are (None: none shared)."""
        self._shared_place = place

    def on_concurrency_change(self, changed: Callable[[int], None]) -> None:
        """Tell `changed(limit)` how many jobs the web server may run at once whenever it changes: the slots,
        plus one for each job that has only its saves left (the next job takes the device meanwhile)."""
        self._concurrency_changed = changed

    def _lease_changed(self, held: bool) -> None:
        with self._mutex:
            self._without_a_slot += -1 if held else 1
            limit = self.slots + self._without_a_slot
        self._concurrency_changed(limit)

    def waiting_for_a_slot(self) -> int:
        """Jobs out of the web server's queue (one more than the slots may run) still waiting for a device."""
        return self._lock.waiting()

    def running(self) -> bool:
        """Whether a job is using the device now."""
        with self._mutex:
            return any(t.started for t in self._tickets.values())

    def count_waiting(self, waiting: Callable[[], int]) -> None:
        """How to count the jobs waiting in the web server's queue (the app passes Gradio's count);
        without it, the reserved tickets that have not started are counted."""
        self._waiting = waiting

    def release(self, ticket: str | None) -> None:
        """Forget a ticket whose job never started (its handler stopped early, e.g. on a bad value)."""
        with self._mutex:
            entry = self._tickets.get(ticket) if ticket else None
            if entry is not None and not entry.started:
                del self._tickets[ticket]

    def interrupt(self, session: str, browser: str | None = None) -> Stopped:
        """Stop the page `session`'s running job at its next step and drop its waiting ones; if that page has
        none, those of its `browser`'s other pages (one reloaded while its job ran). Falsy if none is found."""
        with self._mutex:
            live = [t for t in self._tickets.values() if not t.cancel.is_set()]
            mine = [t for t in live if t.session == session]
            elsewhere = not mine and browser is not None
            if elsewhere:
                mine = [t for t in live if t.browser == browser]
        for ticket in mine:
            ticket.cancel.set()
        running = sum(1 for t in mine if t.started)
        return Stopped(running=running, waiting=len(mine) - running, other_pages=elsewhere and bool(mine))

    def running_for(self, browser: str | None) -> bool:
        """Whether a job of `browser` (from any of its pages) is running, and no Interrupt has reached it."""
        with self._mutex:
            return browser is not None and any(
                t.browser == browser and t.started and not t.cancel.is_set() for t in self._tickets.values()
            )

    def run_now(self, work: Callable[[], Any]) -> Any:
        """Run `work` holding the device (for work outside the queue, e.g. loading models)."""
        with self._lock:
            return work()

    def stream(self, session: str, work: Work, ticket: str | None = None) -> Iterator[Step | Done | Interrupted]:
        """Run `work(on_step, should_cancel)` in a thread; yield throttled Steps, then Done or Interrupted.

        `ticket`: the one reserved when the user clicked (without one, e.g. from the API, one is made
        now). Errors come out as gr.Error with a readable message (the traceback goes to the server log).
        """
        with self._mutex:
            entry = self._tickets.get(ticket) if ticket else None
            if entry is None:
                ticket = uuid.uuid4().hex
                entry = self._tickets[ticket] = Ticket(
                    session=session, cancel=threading.Event(), reserved_at=self._clock()
                )
            entry.started = True
        if entry.cancel.is_set():
            self._done(ticket, None)
            yield Interrupted("Interrupted: taken out of the queue before it ran")
            return
        events: queue.Queue = queue.Queue()
        outcome: dict[str, Any] = {}
        thread = threading.Thread(
            target=self._run, args=(ticket, entry, work, events, outcome), name="atelier-gpu-job", daemon=True
        )
        thread.start()
        yield from _throttled(events)
        thread.join()
        if "error" in outcome:
            error = outcome["error"]
            if isinstance(error, Cancelled):
                yield Interrupted(f"Interrupted ({error})")
                return
            raise readable_error(error)
        yield Done(outcome["result"])

    def _run(self, ticket: str, entry: Ticket, work: Work, events: queue.Queue, outcome: dict) -> None:
        started, lease = None, None
        try:
            self._lock.acquire()
            # The job gives its slot up while only its saves remain (atelier.device_lease): the next job
            # takes the device meanwhile.
            lease = DeviceLease(self._lock, on_change=self._lease_changed)
            device_lease.hold(lease)
            if entry.cancel.is_set():
                raise Cancelled("before it started")
            started = entry.device_since = self._clock()

            def on_step(info: StepPreview) -> None:
                entry.progress = (info.step, info.total, self._clock())  # for the queue's ETA
                events.put(info)

            outcome["result"] = work(on_step, entry.cancel.is_set)
        except BaseException as exc:  # handed to the generator, which reports it
            outcome["error"] = exc
        finally:
            if lease is not None:
                lease.end()
            self._done(ticket, self._clock() - started if started is not None else None)
            events.put(None)

    def _done(self, ticket: str, seconds: float | None) -> None:
        with self._mutex:
            self._tickets.pop(ticket, None)
            if seconds is not None:
                self._durations = [*self._durations[-4:], seconds]

    def _forget_stale(self) -> None:
        """Tickets whose event never started (the page went away while it waited) stop counting after a while."""
        now = self._clock()
        for key in [k for k, t in self._tickets.items() if not t.started and now - t.reserved_at > STALE_TICKET_S]:
            del self._tickets[key]


def _throttled(events: queue.Queue) -> Iterator[Step]:
    """Steps from the job's queue, at most one every PREVIEW_EVERY_S, until the job's end marker."""
    last_yield, pending = 0.0, None
    while True:
        try:
            item = events.get(timeout=PREVIEW_EVERY_S)
        except queue.Empty:
            item = ...
        if item is None:
            return
        if item is not ...:
            pending = item
        if pending is not None and time.monotonic() - last_yield >= PREVIEW_EVERY_S:
            yield Step(pending)
            pending, last_yield = None, time.monotonic()


def queue_text(ahead: int, seconds: float | None) -> str:
    """ "Starting…" or "Waiting — 2nd in the queue (about 40 s)"."""
    if ahead == 0:
        return "Starting…"
    eta = f" (about {max(1, round(seconds))} s)" if seconds is not None else ""
    return f"Waiting — {ordinal(ahead + 1)} in the queue{eta}. **Interrupt** takes it out."


def readable_error(error: BaseException) -> gr.Error:
    """A gr.Error the page shows as a message; never a traceback."""
    if isinstance(error, gr.Error):
        return error
    # gr.Error renders its message as HTML: escape it, since it may quote the user's own text.
    if isinstance(error, USER_ERRORS):
        return gr.Error(html.escape(str(error)), title="Cannot do that", print_exception=False)
    traceback.print_exception(error, file=sys.stderr)
    # Its own text may quote internals (an SQL statement, a path, a class name): only the log has it.
    return gr.Error(
        "The studio hit an internal error and did not finish this. Try again; if it happens again, the server "
        "log says what failed.",
        title="Something went wrong",
        print_exception=False,
    )


_UNREADABLE_INPUT = re.compile(r"Could not preprocess input component at index (\d+)")


def request_error(error: BaseException, inputs: Any = ()) -> gr.Error:
    """Words for an error Gradio raises around a handler (a request with too few values, a value of the
    wrong type, a choice not in a list): its first line, never the component objects it lists after;
    a value Gradio could not read is named by its field's label (`inputs`: the event's components)."""
    if isinstance(error, gr.Error):
        return error
    frames = traceback.extract_tb(error.__traceback__)
    if not frames or f"{os.sep}gradio{os.sep}" not in frames[-1].filename:
        return readable_error(error)  # raised by our code, not by Gradio reading the request
    lines = str(error).strip().splitlines()
    first = lines[0] if lines else "the request could not be read"
    unreadable = _UNREADABLE_INPUT.search(first)
    if unreadable and int(unreadable[1]) < len(inputs):
        component = list(inputs)[int(unreadable[1])]
        label = getattr(component, "label", None) or type(component).__name__.lower()
        if image_inputs.is_image_field(component) and isinstance(error.__cause__, image_inputs.UNREADABLE):
            return image_inputs.refused_request(label, error.__cause__)  # in words, without the upload's path
        first = f"{label}: not a value this field takes (a {type(component).__name__.lower()}; got {error.__cause__ or 'another type'})"
    print(f"atelier serve: refused a request: {first}", file=sys.stderr, flush=True)
    return gr.Error(
        html.escape(f"{first[:300]}. Check the values sent (their number, types and ranges: see /gradio_api/info)."),
        title="Invalid request",
        print_exception=False,
    )


def words_for_every_error(demo: gr.Blocks) -> None:
    """Errors Gradio raises outside our handlers (reading inputs, writing outputs) come back in words, not
    as an error without a message (Gradio hides any non-gr.Error text when show_error is off). A handler
    returning `{}` ("change nothing") changes nothing, whatever the number of its outputs."""
    process_api, postprocess_data = demo.process_api, demo.postprocess_data

    @functools.wraps(process_api)
    async def in_words(*args: Any, **kwargs: Any) -> Any:
        block_fn = kwargs.get("block_fn", args[0] if args else None)
        event = kwargs.get("event_data")
        if getattr(event, "_data", None) is None and _needs_page_event(getattr(block_fn, "fn", None)):
            raise gr.Error(
                "This action answers a click in the page (which image was picked); the request did not say "
                "which. Use the page, or an endpoint listed in /gradio_api/info.",
                title="Needs the page",
                print_exception=False,
            )
        try:
            return await process_api(*args, **kwargs)
        except gr.Error as exc:  # e.g. a slider's "Value 1e9 is greater than maximum value 500": say which field
            field = _refusing_field(getattr(block_fn, "inputs", ()), kwargs.get("inputs") or ())
            if field is None:
                raise
            raise gr.Error(f"{field}: {exc.message}", title="Invalid value", print_exception=False) from exc
        except Exception as exc:
            raise request_error(exc, inputs=getattr(block_fn, "inputs", ())) from exc

    @functools.wraps(postprocess_data)
    async def nothing_is_skip(block_fn: Any, predictions: Any, state: Any) -> Any:
        if isinstance(predictions, dict) and not predictions:
            predictions = gr.skip()
        return await postprocess_data(block_fn, predictions, state)

    demo.process_api, demo.postprocess_data = in_words, nothing_is_skip


def _refusing_field(components: Any, values: Any) -> str | None:
    """The label of the first simple field (slider, number, list, checkbox) whose value Gradio refuses;
    None when none does (the error came from elsewhere). Reading these values has no side effect."""
    simple = (gr.Slider, gr.Number, gr.Dropdown, gr.Radio, gr.Checkbox)
    for component, value in zip(components, values, strict=False):
        if not isinstance(component, simple):
            continue
        try:
            component.preprocess(value)
        except Exception:
            return component.label or type(component).__name__
    return None


_PAGE_EVENT = re.compile(r"\b(?:Select|Event|KeyUp|Like|Download|Edit|Copy|Retry|Undo|DeletedFile)Data\b")


def _needs_page_event(fn: Any) -> bool:
    """Whether a handler takes Gradio's event data (e.g. `evt: gr.SelectData`), which only the page sends."""
    try:
        parameters = inspect.signature(fn).parameters.values() if callable(fn) else ()
    except (TypeError, ValueError):
        return False
    return any(_PAGE_EVENT.search(str(p.annotation)) for p in parameters)


def warn(error: BaseException) -> str:
    """Show an error as a warning toast; returns its text (for a status line). Outputs are left alone:
    an error never replaces what is on screen with "Error" badges."""
    readable = readable_error(error)
    gr.Warning(readable.message, title=readable.title or "Cannot do that")
    return html.unescape(readable.message)


def guarded(handler: Callable[..., Any]) -> Callable[..., Any]:
    """For quick (non-generator) handlers: an error becomes a warning toast and changes no output."""

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except Exception as exc:
            warn(exc)
            return gr.skip()  # no component is updated (one skip stands for every output)

    return wrapper


def keeps_outputs(status: Any) -> Callable[[Callable[..., Iterator[dict]]], Callable[..., Iterator[dict]]]:
    """For generator handlers (jobs): an error becomes a warning toast and a line in `status`; every
    other output stays as it was (a typo in a width never hides the drafts on screen)."""

    def decorate(handler: Callable[..., Iterator[dict]]) -> Callable[..., Iterator[dict]]:
        @functools.wraps(handler)
        def wrapper(*args: Any, **kwargs: Any) -> Iterator[dict]:
            try:
                yield from handler(*args, **kwargs)
            except Exception as exc:
                yield {status: f"⚠ {warn(exc)}"}

        return wrapper

    return decorate


def progress_text(info: StepPreview, doing: str) -> str:
    stage = "base model" if info.stage == "base" else "refiner"
    return f"{doing}: {stage} step {info.step}/{info.total}"


def one_image_updates(
    events: Iterator[Step | Done | Interrupted],
    *,
    status: Any,
    result: Any,
    doing: str,
    download_path: Callable[[int], Any],
    result_id: Any = None,
) -> Iterator[dict]:
    """Page updates for a job that makes one image: progress and a fast preview, then the saved PNG
    under its download name (`download_path(id)`), and its gallery id into `result_id` if given."""
    for event in events:
        if isinstance(event, Step):
            update = {status: progress_text(event.info, doing)}
            previews = event.info.images()
            if previews:
                update[result] = previews[0]
            yield update
        elif isinstance(event, Interrupted):
            yield {status: f"**{event.message}** — nothing was saved."}
        elif isinstance(event, Done):
            for note in getattr(event.result, "notes", ()):
                gr.Info(note, title="Note")
            update = {
                result: str(download_path(event.result.id)),
                status: f"Made **#{event.result.id}** (seed {event.result.recipe.seed}).",
            }
            if result_id is not None:
                update[result_id] = event.result.id
            yield update
