"""What every tab needs: the studio (engine + gallery), the GPU job runner and the UI defaults."""

from __future__ import annotations

import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from atelier.requests import ModelChoice
from atelier.studio import Studio
from webui.bindings import Defaults
from webui.jobs import GPU, GpuJobs, queue_text

BROWSER_KEY = "atelier-browser"  # localStorage key of the browser's id (gr.BrowserState, encrypted by Gradio)
_BROWSER_ID = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32): 256 random bits
PAGES_KEPT = 10_000  # pages whose browser is remembered (the oldest are forgotten first)


class Browsers:
    """Which browser each page (Gradio session) belongs to. A page's session changes on reload; its browser's
    id does not (kept in localStorage), so a reloaded page can still reach the jobs it started. The id is
    random and only ever known to that browser and the server: knowing it is what proves the jobs are yours."""

    def __init__(self, kept: int = PAGES_KEPT) -> None:
        self._kept = kept
        self._pages: OrderedDict[str, str] = OrderedDict()
        self._mutex = threading.Lock()

    def link(self, session: str, browser: str) -> None:
        """Record the page's browser; a page's first answer stands (it cannot be moved to another browser)."""
        with self._mutex:
            self._pages.setdefault(session, browser)
            self._pages.move_to_end(session)
            while len(self._pages) > self._kept:
                self._pages.popitem(last=False)

    def of(self, session: str) -> str | None:
        with self._mutex:
            return self._pages.get(session)


@dataclass
class Context:
    studio: Studio
    jobs: GpuJobs
    choice: ModelChoice
    defaults: Defaults
    queue_limits: Any = None  # fair_queue.QueueLimits, set by build_app
    browsers: Browsers = field(default_factory=Browsers)

    def check_offered(self, generation_id: int) -> None:
        """A gallery entry is re-run, refined, varied or upscaled from the web only with the models this
        server offers (its base and refiner, the ControlNets of the list): an imported recipe naming a path
        or another hub id is refused here, on the server, before anything is loaded."""
        recipe = self.studio.get(generation_id).recipe
        served = {self.choice.base, self.choice.refiner}
        named = [("model", recipe.model.name)]
        if recipe.refine is not None and recipe.refine.model is not None:
            named.append(("refiner", recipe.refine.model.name))
        if recipe.inpaint_model is not None and recipe.inpaint_model.name not in self.studio.inpaint_model_choices():
            named.append(("inpainting model", recipe.inpaint_model.name))
        if recipe.controlnets:
            offered = set(self.studio.controlnet_choices())
            named += [("ControlNet", unit.model.name) for unit in recipe.controlnets if unit.model.name not in offered]
        for what, name in named:
            if what in ("ControlNet", "inpainting model") or name not in served:
                raise ValueError(
                    f"#{generation_id} was made with the {what} {name!r}, which this server does not offer; "
                    f"it serves {self.choice.base}"
                    + (f" + {self.choice.refiner}" if self.choice.refiner else "")
                    + ". Start `atelier serve --model …` with that model to use this entry here."
                )


def session_of(request: gr.Request | None) -> str:
    return (request.session_hash if request is not None else None) or "no-session"


def browser_link(ctx: Context) -> dict:
    """The page-load event (fn / inputs / outputs) that tells the server which browser the page is in: the
    id kept in the browser's localStorage, or a new random one the first time. Without it (an API client)
    jobs belong to the session alone."""
    kept = gr.BrowserState("", storage_key=BROWSER_KEY)  # never a shared default: each browser gets its own

    def link(browser: Any, request: gr.Request):
        session = request.session_hash if request is not None else None
        if not (isinstance(browser, str) and _BROWSER_ID.fullmatch(browser)):
            browser = secrets.token_urlsafe(32)
        if session:
            ctx.browsers.link(session, browser)
        return browser

    return dict(fn=link, inputs=kept, outputs=kept, queue=False, show_progress="hidden")


def browser_of(ctx: Context, request: gr.Request | None) -> str | None:
    return ctx.browsers.of(request.session_hash) if request is not None and request.session_hash else None


def busy_note(ctx: Context, request: gr.Request | None) -> str:
    """For a page just loaded: whether its browser's earlier job (from before a reload) is still running,
    or another job is; "" when the device is free."""
    if ctx.jobs.running_for(browser_of(ctx, request)):
        return (
            "Your earlier job is still running: **Interrupt** (Esc) stops it; otherwise its images are saved "
            "and show here after it ends and the page is reloaded."
        )
    return "The device is busy with another job: one you start now waits for it." if ctx.jobs.running() else ""


def interrupt_handler(ctx: Context):
    """For an Interrupt button (outside the queue, so it works while the queue is busy or full): stop
    this page's running job at its next step, and take its waiting ones out of the queue; a page with none
    reaches those of its browser's earlier pages (it was reloaded while they ran)."""

    def interrupt(request: gr.Request):
        stopped = ctx.jobs.interrupt(session_of(request), browser=browser_of(ctx, request))
        if stopped.other_pages:  # their page is gone: nothing else will say so here
            return (
                "Interrupted your earlier job: it stops at its next step and nothing of it is saved."
                if stopped.running
                else "Taken your earlier job out of the queue: it will not run."
            )
        if stopped.running:
            return gr.skip()  # the job says so itself at its next step (a status written here could land after)
        if stopped.waiting:
            return "Taken out of the queue: it will not run."
        return "Nothing of yours is running or waiting."

    return interrupt


def gpu_event(ctx: Context, trigger, handler, *, inputs: set, outputs: set, status: gr.Markdown, **options) -> None:
    """Wire a device job: the click reserves the job's place at once (outside the queue, so the status
    line says where it is and Interrupt can take it out), then `handler(values, request, ticket)` runs
    in the shared GPU queue. `options`: api_name / api_visibility."""
    ticket = gr.State(None)

    def reserve(request: gr.Request) -> dict:
        reserved = ctx.jobs.reserve(session_of(request), browser=browser_of(ctx, request))
        return {ticket: reserved, status: queue_text(*ctx.jobs.place(reserved))}

    def run(values: dict, request: gr.Request):
        reserved = values.pop(ticket, None)
        try:
            yield from handler(values, request, reserved)
        finally:
            ctx.jobs.release(reserved)

    run.__name__ = handler.__name__  # Gradio names the API endpoint after it unless api_name is given
    # A list with the status line first: API clients read the status as the first result.
    ordered = [status, *sorted(outputs - {status}, key=lambda c: c._id)]
    # No Gradio progress: its timers ("queue: 1/1 | 12.4/1.1s", a "0.1s" before "Starting…") would show in the
    # status line, and its overlay on every output (the Seed box too) guesses the wait from past events of
    # any size. The status line says where the job is (queue place, step k/N) and the previews show it.
    trigger(
        reserve, inputs=None, outputs={ticket, status}, queue=False, show_progress="hidden", api_visibility="private"
    ).then(
        run,
        inputs=inputs | {ticket},
        outputs=ordered,
        concurrency_id=GPU,
        concurrency_limit=ctx.jobs.slots,
        show_progress="hidden",
        **options,
    )
