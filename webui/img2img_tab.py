"""Img2Img: remake an image (uploaded, or sent from Draft or the Gallery) at a denoise strength.

The prompt, sampler, LoRAs and the rest come from the Draft & Refine controls (one set of
controls for every mode); this tab adds the source image, the strength and its own size, which is
the source's own size (multiples of 8, capped, as `atelier img2img`) unless the user chooses one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from atelier import requests
from atelier.studio import image_size
from pipelines.recipe import Recipe
from webui import bindings
from webui.context import Context, gpu_event, interrupt_handler, session_of
from webui.draft_tab import IMAGE_HEIGHT, PNG_OUT, compare_slider
from webui.jobs import guarded, keeps_outputs, one_image_updates


@dataclass
class Img2ImgTab:
    source: gr.Image
    parent: gr.Number  # the gallery id the source came from (lineage), if any
    size: bindings.SizeControls
    strength: gr.Slider


def source_size(path: str | None) -> tuple[int, int] | None:
    """The source's (width, height) as the engine sees it (EXIF orientation applied), as the CLI measures it."""
    return image_size(Path(path).read_bytes()) if path else None


def img2img_recipe(
    controls: bindings.GenerationControls,
    size: bindings.SizeControls,
    values: dict,
    ctx: Context,
    strength: float,
    source: str | None,
) -> Recipe:
    own = source_size(source)
    request = bindings.request_from_values(
        controls, values, source_size=own, strength=float(strength), size=bindings.size_from_values(size, values, own)
    )
    return requests.build_recipe(request, ctx.defaults.models)


def render(ctx: Context, controls: bindings.GenerationControls) -> Img2ImgTab:
    gr.Markdown(
        "Prompt and sampler come from **Draft & Refine**. Strength 0 keeps the source, 1 ignores it; a low "
        "strength (below 1 − switch) is the refiner alone."
    )
    with gr.Row():
        with gr.Column():
            source = gr.Image(
                label="Source image",
                type="filepath",
                format="png",
                image_mode="RGB",
                sources=["upload", "clipboard"],
                height=IMAGE_HEIGHT,
                elem_id="img2img-source",
            )
            parent = gr.Number(None, label="From gallery #", precision=0, interactive=False, elem_id="img2img-parent")
            size = bindings.render_size_controls(
                ctx.defaults.width, ctx.defaults.height, elem_prefix="img2img-", from_source=True
            )
            strength = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="Denoise strength", elem_id="img2img-strength")
            with gr.Row():
                run = gr.Button("Make image", variant="primary", elem_id="img2img-button")
                interrupt = gr.Button("Interrupt", variant="stop", elem_id="img2img-interrupt")
        with gr.Column():
            status = gr.Markdown("", elem_id="img2img-status")
            result = gr.Image(label="Result", height=IMAGE_HEIGHT, elem_id="img2img-result", **PNG_OUT)
            compare = compare_slider("Compare: source | result (drag)", "img2img-compare")

    @keeps_outputs(status)
    def make(values: dict, request: gr.Request, ticket: str | None):
        path, from_id, strength_value = values[source], values[parent], values[strength]
        if not path:
            raise ValueError("Upload a source image, or send one from Draft or the Gallery.")
        recipe = img2img_recipe(controls, size, values, ctx, strength_value, path)
        parent_id = int(from_id) if from_id else None
        source_data = ctx.studio.edit_source(Path(path).read_bytes(), parent_id)
        recipe, inputs = ctx.studio.prepare_inputs(recipe, source=source_data)
        yield {status: f"Img2img at strength {strength_value}…"}

        def work(on_step, should_cancel):
            return ctx.studio.edit(recipe, inputs, parent_id=parent_id, on_step=on_step, should_cancel=should_cancel)

        events = ctx.jobs.stream(session_of(request), work, ticket)
        for update in one_image_updates(
            events, status=status, result=result, doing="Img2img", download_path=ctx.studio.download_path
        ):
            if isinstance(update.get(result), str):  # the saved image: show it against its source
                update[compare] = (path, update[result])
            yield update

    @guarded
    def follow_source(path: str | None, preset: str):
        """The size boxes show the source's own size while the preset says so."""
        if preset != bindings.SOURCE_SIZE or not path:
            return gr.update(), gr.update()
        return bindings.size_from_values(size, {size.preset: preset}, source_size(path))

    for event in (source.change, size.preset.change):
        event(
            follow_source,
            inputs=[source, size.preset],
            outputs=[size.width, size.height],
            queue=False,
            show_progress="hidden",
            api_visibility="private",
        )
    inputs = controls.inputs() | size.inputs() | {source, parent, strength}
    gpu_event(ctx, run.click, make, inputs=inputs, outputs={result, compare}, status=status, api_name="img2img")
    interrupt.click(interrupt_handler(ctx), inputs=None, outputs=status, queue=False, api_visibility="private")
    source.upload(
        lambda: None, outputs=parent, queue=False, api_visibility="private"
    )  # an upload has no gallery parent
    return Img2ImgTab(source=source, parent=parent, size=size, strength=strength)


def send_from_gallery(ctx: Context, tab: Img2ImgTab, tabs: gr.Tabs, tab_id: str):
    """A handler: the generation with this id becomes the img2img source (and its parent)."""

    @guarded
    def send(generation_id):
        if generation_id is None:
            raise ValueError("Pick an image first.")
        generation = ctx.studio.get(int(generation_id))
        return {tab.source: str(generation.image_path), tab.parent: generation.id, tabs: gr.Tabs(selected=tab_id)}

    return send
