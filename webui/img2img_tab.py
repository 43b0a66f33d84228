"""Img2Img: remake an image (uploaded, or sent from Draft or the Gallery) at a denoise strength.

The prompt, sampler, LoRAs and the rest come from the Draft & Refine controls (one set of
controls for every mode); this tab adds the source image, the strength and its own size, which is
the source's own size (multiples of 8, capped, as `atelier img2img`) unless the user chooses one. A mask
painted on the source (or uploaded) makes it an inpaint (webui/inpaint_controls.py). A dynamic prompt
(`{a|b}`, `__wildcard__`) is drawn with the seed, as a draft's.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from atelier import requests
from atelier.studio import image_size
from pipelines.prompt_syntax import extract_lora_tokens
from pipelines.recipe import NO_EXPAND, Recipe
from webui import bindings, inpaint_controls, shared_summary
from webui.context import Context, gpu_event, interrupt_handler, session_of
from webui.draft_tab import IMAGE_HEIGHT, PNG_OUT, compare_slider
from webui.jobs import guarded, keeps_outputs, one_image_updates

SOURCE_HEIGHT = 260  # the inpaint editor below shows the source large


@dataclass
class Img2ImgTab:
    source: gr.Image
    parent: gr.Number  # the gallery id the source came from (lineage), if any
    size: bindings.SizeControls
    strength: gr.Slider
    inpaint: inpaint_controls.InpaintControls


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
    **img2img,
) -> Recipe:
    """`img2img`: GenerationRequest's masked_content / expand (inpaint_controls.request_fields)."""
    own = source_size(source)
    chosen = bindings.size_from_values(size, values, own)
    request = bindings.request_from_values(
        controls, values, source_size=own, strength=float(strength), size=chosen, **img2img
    )
    return requests.build_one_recipe(request, ctx.defaults.models, wildcards=requests.wildcards_folder(ctx.studio.home))


def render(ctx: Context, controls: bindings.GenerationControls, *, tabs: gr.Tabs, tab: gr.Tab) -> Img2ImgTab:
    gr.Markdown("Strength 0 keeps the source, 1 ignores it; a low strength (below 1 − switch) is the refiner alone.")
    with gr.Row():
        with gr.Column():
            source = gr.Image(
                label="Source image",
                type="filepath",
                format="png",
                image_mode="RGB",
                sources=["upload", "clipboard"],
                height=SOURCE_HEIGHT,
                elem_id="img2img-source",
            )
            parent = gr.Number(None, label="From gallery #", precision=0, interactive=False, elem_id="img2img-parent")
            size = bindings.render_size_controls(
                ctx.defaults.width, ctx.defaults.height, elem_prefix="img2img-", from_source=True
            )
            strength = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="Denoise strength", elem_id="img2img-strength")
            inpaint = inpaint_controls.render(IMAGE_HEIGHT, ctx.studio.inpaint_model_choices())
        with gr.Column():
            # at the top: the inpaint controls make the left column long
            shared_summary.render(controls, elem_prefix="img2img-", size_here=True, tabs=tabs, tab=tab)
            source_note = gr.HTML(elem_id="img2img-source-note", js_on_load=None)
            with gr.Row():
                run = gr.Button("Make image", variant="primary", elem_id="img2img-button", scale=3)
                interrupt = gr.Button("Interrupt", variant="stop", elem_id="img2img-interrupt", scale=1)
            status = gr.Markdown("", elem_id="img2img-status")
            result = gr.Image(label="Result", height=IMAGE_HEIGHT, elem_id="img2img-result", **PNG_OUT)
            compare = compare_slider("Compare: source | result (drag)", "img2img-compare")

    tab = Img2ImgTab(source=source, parent=parent, size=size, strength=strength, inpaint=inpaint)
    make = _make_handler(ctx, controls, tab, status=status, result=result, compare=compare)
    inputs = controls.inputs() | size.inputs() | inpaint.inputs() | {source, parent, strength}
    gpu_event(ctx, run.click, make, inputs=inputs, outputs={result, compare}, status=status, api_name="img2img")
    interrupt.click(interrupt_handler(ctx), inputs=None, outputs=status, queue=False, api_visibility="private")
    _wire_source(tab)
    note = source_note_handler(ctx)
    for trigger in (parent.change, controls.prompt.change):
        trigger(note, inputs=[parent, controls.prompt], outputs=source_note, queue=False, api_visibility="private")
    return tab


def source_note_handler(ctx: Context):
    """A handler: which prompt the gallery source was made with, beside the Draft prompt img2img will use
    (Send to img2img brings the image only: the prompt controls are Draft's, and it never overwrites them)."""

    def note(parent_id, prompt: str | None) -> str:
        if not parent_id:
            return ""
        try:
            recipe = ctx.studio.get(int(parent_id)).recipe
        except ValueError:  # deleted meanwhile (NotFoundError): nothing to compare with
            return ""
        made_with = (recipe.prompt_template or recipe.prompt).strip()
        if _words(made_with) == _words(prompt):
            return f"<small>Source #{int(parent_id)} was made with this prompt.</small>"
        return (
            f"<small>Source #{int(parent_id)} was made with “{html.escape(made_with[:200])}”: not used here. "
            "Its <b>Load</b> button in the Gallery brings its prompt and settings.</small>"
        )

    return note


def _words(prompt: str | None) -> str:
    """A prompt without its LoRA tokens and spacing (the gallery keeps the LoRAs apart from the text)."""
    try:
        text = extract_lora_tokens(prompt or "")[0]
    except ValueError:
        text = prompt or ""
    return " ".join(text.split())


def prepared_edit(ctx: Context, controls: bindings.GenerationControls, tab: Img2ImgTab, values: dict):
    """(recipe, inputs, parent id, whether a mask was given) of the tab's values: img2img, or inpaint /
    outpaint when a mask is painted or uploaded or the canvas is extended. Bad values fail here."""
    path, from_id = values[tab.source], values[tab.parent]
    if not path:
        raise ValueError("Upload a source image, or send one from Draft or the Gallery.")
    fields = inpaint_controls.request_fields(tab.inpaint, values)
    recipe = img2img_recipe(controls, tab.size, values, ctx, values[tab.strength], path, **fields)
    mask = inpaint_controls.mask_png(tab.inpaint, values, source_size(path))
    if inpaint_controls.inpaints(mask, fields):
        recipe = recipe.replace(**inpaint_controls.settings(tab.inpaint, values))
    parent_id = int(from_id) if from_id else None
    source_data = ctx.studio.edit_source(Path(path).read_bytes(), parent_id)
    recipe, inputs = ctx.studio.prepare_inputs(recipe, source=source_data, mask=mask)
    chosen = inpaint_controls.chosen_model(tab.inpaint, values, ctx.studio.inpaint_model_choices())
    if chosen is not None:  # set once the mask is recorded: only an inpainting recipe takes one
        recipe = requests.with_inpaint_model(recipe, chosen)
    return recipe, inputs, parent_id, mask is not None


def _make_handler(ctx: Context, controls: bindings.GenerationControls, tab: Img2ImgTab, *, status, result, compare):
    @keeps_outputs(status)
    def make(values: dict, request: gr.Request, ticket: str | None):
        recipe, inputs, parent_id, masked = prepared_edit(ctx, controls, tab, values)
        doing = "Outpainting" if recipe.expand != NO_EXPAND else "Inpainting" if masked else "Img2img"
        drawn = f" ({recipe.prompt})" if recipe.prompt_template else ""  # what a dynamic prompt gave
        yield {status: f"{doing} at strength {values[tab.strength]}{drawn}…"}

        def work(on_step, should_cancel):
            return ctx.studio.edit(recipe, inputs, parent_id=parent_id, on_step=on_step, should_cancel=should_cancel)

        events = ctx.jobs.stream(session_of(request), work, ticket)
        for update in one_image_updates(
            events, status=status, result=result, doing=doing, download_path=ctx.studio.download_path
        ):
            if isinstance(update.get(result), str):  # the saved image: show it against its source
                update[compare] = (values[tab.source], update[result])
                update[status] += drawn
            yield update

    return make


def _wire_source(tab: Img2ImgTab) -> None:
    """A new source: the size boxes follow it (while the preset says so), the inpaint editor shows it to
    paint on (strokes on another image no longer fit), and an upload has no gallery parent."""
    size, quiet = tab.size, dict(queue=False, show_progress="hidden", api_visibility="private")

    followed = gr.State(None)  # the source whose size the boxes last took

    @guarded
    def source_changed(path: str | None, preset: str, last: str | None):
        # The Source image reports "change" several times for one new image (the editor redraws from it):
        # only a different image re-sizes, so a size the user typed meanwhile is never overwritten.
        if path == last or preset != bindings.SOURCE_SIZE or not path:
            return gr.update(), gr.update(), path
        return *bindings.size_from_values(size, {size.preset: preset}, source_size(path)), path

    @guarded
    def preset_changed(path: str | None, preset: str):
        if preset != bindings.SOURCE_SIZE or not path:
            return gr.update(), gr.update()
        return bindings.size_from_values(size, {size.preset: preset}, source_size(path))

    inputs = [tab.source, size.preset]
    tab.source.change(source_changed, inputs=[*inputs, followed], outputs=[size.width, size.height, followed], **quiet)
    size.preset.change(preset_changed, inputs=inputs, outputs=[size.width, size.height], **quiet)
    tab.source.change(inpaint_controls.editor_value, inputs=tab.source, outputs=tab.inpaint.editor, **quiet)
    tab.source.upload(lambda: None, outputs=tab.parent, **quiet)


def send_from_gallery(ctx: Context, tab: Img2ImgTab, tabs: gr.Tabs, tab_id: str):
    """A handler: the generation with this id becomes the img2img source (and its parent)."""

    @guarded
    def send(generation_id):
        if generation_id in (None, ""):  # the Gallery's Selected box is text: "" when nothing is on show
            raise ValueError("Pick an image first.")
        generation = ctx.studio.get(int(generation_id))
        source = ctx.studio.download_path(generation.id)  # a draft: its full decode, not its cheap preview
        return {tab.source: str(source), tab.parent: generation.id, tabs: gr.Tabs(selected=tab_id)}

    return send
