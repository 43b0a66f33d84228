"""What every tab needs: the studio (engine + gallery), the GPU job runner and the UI defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from atelier.requests import ModelChoice
from atelier.studio import Studio
from webui.bindings import Defaults
from webui.jobs import GPU, GpuJobs, queue_text


@dataclass
class Context:
    studio: Studio
    jobs: GpuJobs
    choice: ModelChoice
    defaults: Defaults
    queue_limits: Any = None  # fair_queue.QueueLimits, set by build_app

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


def interrupt_handler(ctx: Context):
    """For an Interrupt button (outside the queue, so it works while the queue is busy or full): stop
    this browser session's running job at its next step, and take its waiting ones out of the queue."""

    def interrupt(request: gr.Request):
        stopped = ctx.jobs.interrupt(session_of(request))
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
        reserved = ctx.jobs.reserve(session_of(request))
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
    trigger(
        reserve, inputs=None, outputs={ticket, status}, queue=False, show_progress="hidden", api_visibility="private"
    ).then(
        run,
        inputs=inputs | {ticket},
        outputs=ordered,
        concurrency_id=GPU,
        concurrency_limit=ctx.jobs.slots,
        **options,
    )
