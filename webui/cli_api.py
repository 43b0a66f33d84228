"""API-only endpoints for the command line: `atelier draft|img2img|refine|rerun|vary|upscale` run on this server's
loaded models instead of loading their own (atelier/commands/remote.py is the client).

Each takes one JSON document (atelier/server_wire.py) and returns one: the entries made, or an error with
the CLI's exit status (2 bad input, 1 a fault). The jobs go through the same fair queue and the same
GpuJobs as the browser's (concurrency id GPU: one device job at a time, each client its share) and call
the Studio exactly as the CLI's local path does, so a request gives the same Recipe and the same pixels.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from atelier import __version__, requests
from atelier import server_wire as wire
from atelier.studio import USER_ERRORS, image_size, write_sweep_grid
from webui.context import Context, session_of
from webui.jobs import GPU, Done, Interrupted, readable_error


def register(ctx: Context) -> None:
    """Add the endpoints to the app; call inside its Blocks."""
    device = dict(concurrency_id=GPU, concurrency_limit=ctx.jobs.slots, api_visibility="undocumented")

    def cli_info() -> str:
        """What this server serves (the CLI checks its --model / --refiner against it)."""
        choice = ctx.choice
        return json.dumps({"base": choice.base, "refiner": choice.refiner, "demo": choice.demo, "version": __version__})

    def cli_check(job: str) -> str:
        """A job's checks only (its values, its gallery id), outside the device's queue: a bad request is
        refused at once, however many jobs wait for the device."""

        def check() -> dict:
            _prepared(ctx, _values(job))
            return {"entries": []}

        return _answer(check)

    def cli_job(job: str, http: gr.Request) -> str:
        def run() -> dict:
            prepared = _prepared(ctx, _values(job))
            return prepared.finish(_on_device(ctx, http, prepared.work))

        return _answer(run)

    gr.api(cli_info, api_name=wire.INFO, queue=False, api_visibility="undocumented")
    gr.api(cli_check, api_name=wire.CHECK, api_visibility="undocumented")
    gr.api(cli_job, api_name=wire.JOB, **device)


# -- the jobs: the Studio calls of atelier/commands/generate.py and upscale.py -------------------------------


@dataclass(frozen=True)
class _Job:
    work: Callable[[Callable[[], bool]], Any]  # work(should_cancel), holding the device
    finish: Callable[[Any], dict] = lambda made: {  # its answer, from what the work returned
        "entries": [wire.saved_entry(s) for s in (made if isinstance(made, list) else [made])]
    }


MAX_SENT_IMAGE = 50 * 2**20  # bytes of an image sent with an img2img job (the page's upload limit, "50mb")
ENTRY_OPTIONS = {  # the keyword arguments of each Studio method that works on a gallery entry, besides its id
    "refine": (),
    "rerender": ("steps",),
    "rerun": (),
    "vary": ("strength", "count", "variation_seed"),
    "upscale": ("scale", "width", "height", "strength", "steps", "upscaler"),
}


def _prepared(ctx: Context, values: dict) -> _Job:
    """The job `values` asks for, its checks done (nothing runs on the device yet)."""
    action = values.get("action")
    if action == "draft":
        return _draft(ctx, values)
    if action == "img2img":
        return _img2img(ctx, values)
    if action not in ENTRY_OPTIONS:
        raise ValueError(f"action: must be draft, img2img or one of {', '.join(ENTRY_OPTIONS)} (got {action!r})")
    gid, options = _id(values), values.get("options") or {}
    unknown = sorted(set(options) - set(ENTRY_OPTIONS[action])) if isinstance(options, dict) else ["(not an object)"]
    if unknown:
        raise ValueError(f"{action}: unknown option(s) {', '.join(unknown)}; allowed: {ENTRY_OPTIONS[action]}")
    ctx.check_offered(gid)  # also "no generation with id …"
    upscaler = options.get("upscaler", "lanczos")
    if action == "upscale" and upscaler != "lanczos" and upscaler not in ctx.studio.upscalers():
        offered = ", ".join(["lanczos", *ctx.studio.upscalers()])
        raise ValueError(f"upscaler: {upscaler!r} is not one this server offers ({offered})")
    if action == "rerender":
        steps = options.get("steps")
        ctx.studio.get(gid).recipe.replace(steps=steps)  # a bad steps value before the queue
        return _Job(lambda cancel: ctx.studio.rerender(gid, steps, should_cancel=cancel))
    method = getattr(ctx.studio, action)
    return _Job(lambda cancel: method(gid, **options, should_cancel=cancel))


def _draft(ctx: Context, values: dict) -> _Job:
    request = wire.request_from_json(values.get("request"))
    plan = requests.plan_drafts(request, ctx.choice, wildcards=requests.wildcards_folder(ctx.studio.home))
    recipe, inputs = ctx.studio.prepare_inputs(plan.recipe)

    def work(should_cancel):
        if not plan.each:
            return ctx.studio.draft(recipe, request.count, inputs=inputs, should_cancel=should_cancel)
        each = [r.replace(controlnets=recipe.controlnets) for r in plan.each]
        return ctx.studio.draft_each(each, inputs=inputs, should_cancel=should_cancel)

    def finish(saved: list) -> dict:
        grid = write_sweep_grid(ctx.studio.downloads_folder(), saved, plan.labels) if plan.sweep else None
        return {"entries": [wire.saved_entry(s) for s in saved], "labels": list(plan.labels or ()), "grid": grid}

    return _Job(work, finish)


def _img2img(ctx: Context, values: dict) -> _Job:
    """An img2img of a gallery image or of the image sent (no mask, expand or ControlNet: those run locally)."""
    source, parent_id = _source(ctx, values.get("source"))
    sent = values.get("request")
    if not isinstance(sent, dict):
        raise ValueError("request: expected a JSON object")
    request = wire.request_from_json({**sent, "source_size": list(image_size(source))})
    recipe = requests.build_recipe(request, ctx.choice)
    recipe, inputs = ctx.studio.prepare_inputs(recipe, source=source)

    def finish(saved) -> dict:
        return {"entries": [wire.saved_entry(saved)], "parent_id": parent_id}

    return _Job(lambda cancel: ctx.studio.edit(recipe, inputs, parent_id=parent_id, should_cancel=cancel), finish)


def _source(ctx: Context, source: object) -> tuple[bytes, int | None]:
    """{"id": N}: a gallery image (a draft: its full decode), or {"png": base64}: an image sent along."""
    if isinstance(source, dict) and set(source) == {"id"}:
        gid = _id(source)
        return ctx.studio.download_path(ctx.studio.get(gid).id).read_bytes(), gid
    if isinstance(source, dict) and set(source) == {"png"} and isinstance(source["png"], str):
        if len(source["png"]) > MAX_SENT_IMAGE * 4 // 3 + 4:
            raise ValueError(f"source: an image of at most {MAX_SENT_IMAGE // 2**20} MiB")
        try:
            return base64.b64decode(source["png"], validate=True), None
        except binascii.Error:
            raise ValueError("source: png must be base64") from None
    raise ValueError('source: expected {"id": gallery id} or {"png": base64 image}')


# -- plumbing ------------------------------------------------------------------------------------------------


class JobStopped(Exception):
    """The job was stopped on the server before it made anything (exit status 1, a fault)."""


class _Failed(Exception):
    """A user's error raised inside a device job, carried out of GpuJobs as it is (not as a gr.Error)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _on_device(ctx: Context, http: gr.Request, call: Callable[[Callable[[], bool]], Any]) -> Any:
    """`call(should_cancel)` holding the device, in GpuJobs' order with the browser's jobs."""

    def work(on_step, should_cancel):
        try:
            return call(should_cancel)
        except Exception as exc:
            if _exit_status(exc) is None:
                raise  # a bug: GpuJobs logs its traceback and answers in general words
            return _Failed(exc)

    for event in ctx.jobs.stream(session_of(http), work):
        if isinstance(event, Interrupted):
            raise JobStopped(f"the server stopped this job: {event.message}")
        if isinstance(event, Done):
            if isinstance(event.result, _Failed):
                raise event.result.error
            return event.result
    raise JobStopped("the server's job ended without a result")


def _answer(job: Callable[[], dict]) -> str:
    """The job's JSON answer; a user's error as {"error", "exit"}; a bug as Gradio's error (in the log)."""
    try:
        return json.dumps(job(), default=str)
    except gr.Error:
        raise
    except Exception as exc:
        status = _exit_status(exc)
        if status is None:
            raise readable_error(exc) from exc
        return json.dumps({"error": str(exc), "exit": status})


def _exit_status(error: BaseException) -> int | None:
    """The CLI's exit status for an error a user can act on (atelier/cli.py): 2 bad input, 1 a fault. Other
    errors (a full disk, a bug) may quote internals: answered in general words, as to the page."""
    if isinstance(error, ValueError):
        return 2
    if isinstance(error, (JobStopped, *USER_ERRORS)):
        return 1
    return None


def _values(job: str) -> dict:
    try:
        values = json.loads(job)
    except (TypeError, ValueError):
        raise ValueError("job: expected a JSON object") from None
    if not isinstance(values, dict):
        raise ValueError("job: expected a JSON object")
    return values


def _id(values: dict) -> int:
    gid = values.get("id")
    if isinstance(gid, bool) or not isinstance(gid, int):
        raise ValueError(f"id: expected a gallery id, a whole number (got {gid!r})")
    return gid
