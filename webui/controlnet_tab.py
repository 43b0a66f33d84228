"""ControlNet: guide a txt2img image with one or more control maps (canny, shuffle, lineart, …).

The prompt and settings come from the Draft & Refine controls; each unit adds a control image, a
preprocessor (its map previewed before any model work), a ControlNet model, scale and start/end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from atelier import requests as atelier_requests
from atelier.studio import ControlRequest
from webui import bindings, shared_summary
from webui.context import Context, gpu_event, interrupt_handler, session_of
from webui.draft_tab import IMAGE_HEIGHT, PNG_OUT
from webui.jobs import guarded, keeps_outputs, one_image_updates

UNITS = 2


@dataclass
class Unit:
    image: gr.Image
    preprocessor: gr.Dropdown
    model: gr.Dropdown
    scale: gr.Slider
    start: gr.Slider
    end: gr.Slider
    preview: gr.Image

    def inputs(self) -> set:
        return {self.image, self.preprocessor, self.model, self.scale, self.start, self.end}


def _preprocessors(ctx: Context) -> list[str]:
    return [row["name"] for row in ctx.studio.preprocessors() if row["ready"]]


def _models(ctx: Context) -> list[str]:
    """The ControlNets on offer (models folder, then hub ids already cached): the only names a request may use."""
    return ctx.studio.controlnet_choices()


def _requests(
    units: list[Unit],
    values: dict,
    *,
    need_model: bool = True,
    folder: str = "models/ControlNet",
    offered: list[str] | None = None,
) -> list[ControlRequest]:
    """The units with a control image; `need_model` False for previewing maps (no model is needed).
    `offered`: the names a request may use (checked here, on the server: the dropdown alone is no guard)."""
    requests = []
    for i, unit in enumerate(units):
        path = values[unit.image]
        if not path:
            continue
        if need_model and not values[unit.model]:
            raise ValueError(f"ControlNet unit {i + 1}: choose a ControlNet model (put them in {folder})")
        if need_model and offered is not None and values[unit.model] not in offered:
            raise ValueError(
                f"ControlNet unit {i + 1}: choose a ControlNet from the list (models in {folder} or already "
                "downloaded); names, paths and hub ids not in the list are refused"
            )
        requests.append(
            ControlRequest(
                model=values[unit.model] or "",
                preprocessor=values[unit.preprocessor],
                image=Path(path).read_bytes(),
                scale=float(values[unit.scale]),
                start=float(values[unit.start]),
                end=float(values[unit.end]),
            )
        )
    if not requests:
        raise ValueError("Add a control image to at least one unit.")
    return requests


def render(ctx: Context, controls: bindings.GenerationControls, *, tabs: gr.Tabs, tab: gr.Tab) -> list[Unit]:
    gr.Markdown("Each unit with a control image guides the result.")
    preprocessors, models = _preprocessors(ctx), _models(ctx)
    units: list[Unit] = []
    with gr.Row():
        with gr.Column(scale=3):
            for i in range(UNITS):
                with gr.Group():
                    gr.Markdown(f"**Unit {i + 1}**")
                    with gr.Row():
                        image = gr.Image(
                            label="Control image",
                            type="filepath",
                            format="png",
                            image_mode="RGB",
                            sources=["upload", "clipboard"],
                            height=220,
                            elem_id=f"cn-image-{i}",
                        )
                        preview = gr.Image(label="Map", height=220, elem_id=f"cn-map-{i}", **PNG_OUT)
                    with gr.Row():
                        preprocessor = gr.Dropdown(
                            preprocessors,
                            value="canny" if "canny" in preprocessors else None,
                            label="Preprocessor",
                            elem_id=f"cn-pre-{i}",
                        )
                        model = gr.Dropdown(
                            models,
                            value=models[0] if models else None,
                            label="ControlNet model",
                            allow_custom_value=False,
                            elem_id=f"cn-model-{i}",
                        )
                    with gr.Row():
                        scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Scale")
                        start = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="Start")
                        end = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="End")
                units.append(
                    Unit(
                        image=image,
                        preprocessor=preprocessor,
                        model=model,
                        scale=scale,
                        start=start,
                        end=end,
                        preview=preview,
                    )
                )
            with gr.Row():
                preview_button = gr.Button("Preview maps", elem_id="cn-preview")
                refresh = gr.Button("Refresh model list", elem_id="cn-refresh")
        with gr.Column(scale=2):
            shared_summary.render(controls, elem_prefix="cn-", size_here=False, tabs=tabs, tab=tab)
            with gr.Row():
                run = gr.Button("Make image", variant="primary", elem_id="cn-button")
                interrupt = gr.Button("Interrupt", variant="stop", elem_id="cn-interrupt")
            status = gr.Markdown("", elem_id="cn-status")
            result = gr.Image(label="Result", height=IMAGE_HEIGHT, elem_id="cn-result", **PNG_OUT)

    unit_inputs = set().union(*(u.inputs() for u in units))

    def recipe_of(values: dict):  # a dynamic prompt ({a|b}, __wildcard__) drawn with the seed, as a draft's
        wildcards = atelier_requests.wildcards_folder(ctx.studio.home)
        return bindings.one_recipe_from_values(controls, values, ctx.defaults, wildcards=wildcards)

    def prepared(values: dict):
        recipe = recipe_of(values)
        folder = ctx.studio.controlnet_folder() or ctx.studio.home.resolve() / "models" / "ControlNet"
        chosen = _requests(units, values, folder=str(folder), offered=_models(ctx))
        return ctx.studio.prepare_inputs(recipe, controls=chosen)

    @guarded
    def show_maps(values: dict):
        recipe = recipe_of(values)  # the size the maps are made at
        maps = iter(ctx.studio.control_maps(_requests(units, values, need_model=False), recipe.width, recipe.height))
        return {u.preview: (next(maps) if values[u.image] else None) for u in units}

    @keeps_outputs(status)
    def make(values: dict, request: gr.Request, ticket: str | None):
        recipe, inputs = prepared(values)
        drawn = f" ({recipe.prompt})" if recipe.prompt_template else ""
        yield {status: f"ControlNet with {len(recipe.controlnets)} unit(s){drawn}…"}

        def work(on_step, should_cancel):
            return ctx.studio.edit(recipe, inputs, on_step=on_step, should_cancel=should_cancel)

        events = ctx.jobs.stream(session_of(request), work, ticket)
        for update in one_image_updates(
            events, status=status, result=result, doing="ControlNet", download_path=ctx.studio.download_path
        ):
            if isinstance(update.get(result), str):  # the saved image: say which prompt a template gave
                update[status] += drawn
            yield update

    def refresh_models():
        names = _models(ctx)
        return [gr.Dropdown(choices=names, value=names[0] if names else None) for _ in units]

    all_inputs = controls.inputs() | unit_inputs
    preview_button.click(show_maps, inputs=all_inputs, outputs={u.preview for u in units}, api_visibility="private")
    refresh.click(refresh_models, outputs=[u.model for u in units], api_visibility="private")
    gpu_event(ctx, run.click, make, inputs=all_inputs, outputs={result}, status=status, api_name="controlnet")
    interrupt.click(interrupt_handler(ctx), inputs=None, outputs=status, queue=False, api_visibility="private")
    return units
