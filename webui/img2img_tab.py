"""Img2Img: remake an image (uploaded, or sent from Draft or the Gallery) at a denoise strength.

The prompt, sampler, LoRAs and the rest come from the Draft & Refine controls (one set of
controls for every mode); this tab adds the source image, the strength and its own size, which
follows the source (the SDXL bucket nearest its aspect, as `atelier img2img`) unless the user
chooses one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from pipelines.recipe import Recipe
from webui import bindings
from webui.context import Context, interrupt_handler, session_of
from webui.draft_tab import IMAGE_HEIGHT, PNG_OUT
from webui.jobs import GPU, guarded, one_image_updates


@dataclass
class Img2ImgTab:
    source: gr.Image
    parent: gr.Number  # the gallery id the source came from (lineage), if any
    size: bindings.SizeControls


def source_size(path: str | None) -> tuple[int, int] | None:
    from atelier.edit_inputs import open_image

    return open_image(Path(path).read_bytes(), "source image").size if path else None


def source_bytes(ctx: Context, path: str, parent_id: int | None) -> bytes:
    """What to store as the source: the gallery's own file when the image is that gallery entry (the
    browser's copy is a re-encode, with another sha256 and without its metadata), else the upload."""
    data = Path(path).read_bytes()
    if parent_id:
        from atelier.edit_inputs import open_image

        original = ctx.studio.gallery.read_file(ctx.studio.gallery.get(parent_id).image_sha256)
        if open_image(original, "gallery image").convert("RGB").tobytes() == open_image(data, "source image").convert("RGB").tobytes():
            return original
    return data


def img2img_recipe(controls: bindings.GenerationControls, size: bindings.SizeControls, values: dict, ctx: Context,
                   strength: float, source: str | None) -> Recipe:
    recipe, _ = bindings.recipe_from_values(controls, values, ctx.defaults)
    width, height = bindings.size_from_values(size, values, source_size(source))
    return recipe.replace(mode="img2img", strength=float(strength), width=width, height=height)  # validates


def render(ctx: Context, controls: bindings.GenerationControls) -> Img2ImgTab:
    gr.Markdown("Prompt and sampler come from **Draft & Refine**. Strength 0 keeps the source, 1 ignores it.")
    with gr.Row():
        with gr.Column():
            source = gr.Image(label="Source image", type="filepath", format="png", image_mode="RGB",
                              sources=["upload", "clipboard"], height=IMAGE_HEIGHT, elem_id="img2img-source")
            parent = gr.Number(None, label="From gallery #", precision=0, interactive=False, elem_id="img2img-parent")
            size = bindings.render_size_controls(ctx.defaults.width, ctx.defaults.height, elem_prefix="img2img-",
                                                 from_source=True)
            strength = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="Denoise strength", elem_id="img2img-strength")
            with gr.Row():
                run = gr.Button("Make image", variant="primary", elem_id="img2img-button")
                interrupt = gr.Button("Interrupt", variant="stop", elem_id="img2img-interrupt")
        with gr.Column():
            status = gr.Markdown("", elem_id="img2img-status")
            result = gr.Image(label="Result", height=IMAGE_HEIGHT, elem_id="img2img-result", **PNG_OUT)

    def make(values: dict, request: gr.Request):
        path, from_id, strength_value = values[source], values[parent], values[strength]
        if not path:
            raise gr.Error("Upload a source image, or send one from Draft or the Gallery.", title="No source image")
        from atelier.edit_inputs import with_inputs

        recipe = guarded(img2img_recipe)(controls, size, values, ctx, strength_value, path)
        parent_id = int(from_id) if from_id else None
        recipe, inputs = guarded(with_inputs)(recipe, guarded(source_bytes)(ctx, path, parent_id))
        yield {status: f"Img2img at strength {strength_value}…"}

        def work(on_step, should_cancel):
            return ctx.studio.edit(recipe, inputs, parent_id=parent_id, on_step=on_step, should_cancel=should_cancel)

        yield from one_image_updates(ctx.jobs.stream(session_of(request), work), status, result, "Img2img")

    @guarded
    def follow_source(path: str | None, preset: str):
        """The size boxes show the bucket nearest the source while the preset says so."""
        if preset != bindings.SOURCE_SIZE or not path:
            return gr.update(), gr.update()
        return bindings.size_from_values(size, {size.preset: preset}, source_size(path))

    for event in (source.change, size.preset.change):
        event(follow_source, inputs=[source, size.preset], outputs=[size.width, size.height], queue=False,
              show_progress="hidden", api_visibility="private")
    inputs = controls.inputs() | size.inputs() | {source, parent, strength}
    run.click(make, inputs=inputs, outputs={status, result}, api_name="img2img", concurrency_id=GPU, concurrency_limit=1)
    interrupt.click(interrupt_handler(ctx), inputs=None, outputs=None, queue=False, api_visibility="private")
    source.upload(lambda: None, outputs=parent, queue=False, api_visibility="private")  # an upload has no gallery parent
    return Img2ImgTab(source, parent, size)


def send_from_gallery(ctx: Context, tab: Img2ImgTab, tabs: gr.Tabs, tab_id: str):
    """A handler: the generation with this id becomes the img2img source (and its parent)."""

    @guarded
    def send(generation_id):
        if generation_id is None:
            raise ValueError("Pick an image first.")
        generation = ctx.studio.gallery.get(int(generation_id))
        return {tab.source: str(generation.image_path), tab.parent: generation.id, tabs: gr.Tabs(selected=tab_id)}

    return send
