"""GPU work for the UI: one job at a time, live step previews, Interrupt at the next step, readable errors.

Gradio's queue already runs GPU events one at a time (a shared concurrency_id, limit 1); the lock
here also covers work started outside the queue (the model warm-up at start-up). A job runs in a
worker thread so the handler (a generator) can yield step previews while it runs.
"""

from __future__ import annotations

import html
import queue
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import gradio as gr

from pipelines.engine.engine import GenerationCancelled, OutOfMemory, StepInfo
from storage.gallery import NotFoundError

GPU = "gpu"  # the concurrency_id every event that runs the engine shares
PREVIEW_EVERY_S = 0.25  # at most ~4 preview updates a second; the browser need not see every step


@dataclass(frozen=True)
class Step:
    info: StepInfo


@dataclass(frozen=True)
class Done:
    result: Any


@dataclass(frozen=True)
class Interrupted:
    message: str


Work = Callable[[Callable[[StepInfo], None], Callable[[], bool]], Any]


class GpuJobs:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancel: dict[str, threading.Event] = {}  # session → its running job's flag

    def interrupt(self, session: str) -> bool:
        """Ask the session's running job to stop at its next step; False if it has none."""
        event = self._cancel.get(session)
        if event is None:
            return False
        event.set()
        return True

    def run_now(self, work: Callable[[], Any]) -> Any:
        """Run `work` holding the device (for work outside the queue, e.g. loading models)."""
        with self._lock:
            return work()

    def stream(self, session: str, work: Work) -> Iterator[Step | Done | Interrupted]:
        """Run `work(on_step, should_cancel)` in a thread; yield throttled Steps, then Done or Interrupted.

        Errors come out as gr.Error with a readable message (the traceback goes to the server log).
        If the browser goes away (the generator is closed), the job is cancelled at its next step.
        """
        cancel = threading.Event()
        events: queue.Queue = queue.Queue()
        outcome: dict[str, Any] = {}

        def run() -> None:
            # Registered before waiting for the device, so Interrupt also reaches a job still waiting.
            self._cancel[session] = cancel
            try:
                with self._lock:
                    if cancel.is_set():
                        raise GenerationCancelled("before it started")
                    outcome["result"] = work(lambda info: events.put(info), cancel.is_set)
            except BaseException as exc:  # handed to the generator, which reports it
                outcome["error"] = exc
            finally:
                if self._cancel.get(session) is cancel:
                    self._cancel.pop(session, None)
                events.put(None)

        thread = threading.Thread(target=run, name="atelier-gpu-job", daemon=True)
        thread.start()
        try:
            last_yield, pending = 0.0, None
            while True:
                try:
                    item = events.get(timeout=PREVIEW_EVERY_S)
                except queue.Empty:
                    item = ...
                if item is None:
                    break
                if item is not ...:
                    pending = item
                if pending is not None and time.monotonic() - last_yield >= PREVIEW_EVERY_S:
                    yield Step(pending)
                    pending, last_yield = None, time.monotonic()
        finally:
            if thread.is_alive():  # the browser went away: stop the job at its next step
                cancel.set()
            thread.join()
        if "error" in outcome:
            error = outcome["error"]
            if isinstance(error, GenerationCancelled):
                yield Interrupted(f"Interrupted ({error})")
                return
            raise readable_error(error)
        yield Done(outcome["result"])


def readable_error(error: BaseException) -> gr.Error:
    """A gr.Error the page shows as a message; never a traceback."""
    if isinstance(error, gr.Error):
        return error
    # gr.Error renders its message as HTML: escape it, since it may quote the user's own text.
    if isinstance(error, (ValueError, OutOfMemory, NotFoundError, FileNotFoundError)):
        return gr.Error(html.escape(str(error)), title="Cannot do that", print_exception=False)
    traceback.print_exception(error, file=sys.stderr)
    return gr.Error(html.escape(f"{type(error).__name__}: {error}. Details are in the server log."),
                    title="Something went wrong", print_exception=False)


def guarded(handler: Callable[..., Any]) -> Callable[..., Any]:
    """For quick (non-generator) handlers: user errors become page messages, not tracebacks."""
    import functools

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except Exception as exc:
            raise readable_error(exc) from None

    return wrapper


def progress_text(info: StepInfo, doing: str) -> str:
    stage = "base model" if info.stage == "base" else "refiner"
    return f"{doing}: {stage} step {info.step}/{info.total}"


def one_image_updates(events: Iterator[Step | Done | Interrupted], status: Any, result: Any, doing: str,
                      result_id: Any = None) -> Iterator[dict]:
    """Page updates for a job that makes one image: progress and a fast preview, then the saved PNG
    (and its gallery id into `result_id`, if given)."""
    from pipelines.engine.previews import fast_preview

    for event in events:
        if isinstance(event, Step):
            update = {status: progress_text(event.info, doing)}
            if event.info.clean_estimate is not None:
                update[result] = fast_preview(event.info.clean_estimate[:1])[0]
            yield update
        elif isinstance(event, Interrupted):
            yield {status: f"**{event.message}** — nothing was saved."}
        elif isinstance(event, Done):
            update = {result: str(event.result.image), status: f"Made **#{event.result.id}** (seed {event.result.recipe.seed})."}
            if result_id is not None:
                update[result_id] = event.result.id
            yield update
