"""Draft & Refine: type, draft several cheap images with live previews, pick one, refine it."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from pipelines.engine.previews import fast_preview
from webui import bindings
from webui.context import Context, interrupt_handler, session_of
from webui.jobs import GPU, Done, Interrupted, Step, guarded, one_image_updates, progress_text

IMAGE_HEIGHT = 420
# Images leave the app as PNG files from the gallery (metadata and watermark intact); no share button.
PNG_OUT = dict(type="filepath", format="png", interactive=False, buttons=["download", "fullscreen"])


@dataclass
class DraftTab:
    controls: bindings.GenerationControls
    selected: gr.Number  # the gallery id of the picked draft (also the API's way to name one)
    shown: gr.State  # the gallery id of the newest result on show: refined/re-rendered, else the picked draft
    send_to_img2img: gr.Button
    draft_button: gr.Button
    interrupt: gr.Button


def caption(saved) -> str:
    return f"#{saved.id} · seed {saved.recipe.seed}"


def render(ctx: Context) -> DraftTab:
    with gr.Row():
        with gr.Column(scale=2):
            controls = bindings.render_generation_controls(ctx.defaults)
        with gr.Column(scale=3):
            with gr.Row():
                draft_button = gr.Button("Draft", variant="primary", elem_id="draft-button", scale=3)
                interrupt = gr.Button("Interrupt", variant="stop", elem_id="interrupt-button", scale=1)
            status = gr.Markdown("Type a prompt and press **Draft**.", elem_id="draft-status")
            drafts = gr.Gallery(label="Drafts (click one to pick it)", columns=4, height="auto", format="png",
                                allow_preview=False, buttons=[], elem_id="drafts", interactive=False)
            draft_ids = gr.State([])
            shown = gr.State(None)
            with gr.Row():
                selected = gr.Number(None, label="Picked draft", precision=0, interactive=False, elem_id="selected-draft")
                refine_button = gr.Button("Refine", variant="primary", elem_id="refine-button")
                rerender_steps = gr.Number(40, label="Re-render at N steps", precision=0, minimum=1, elem_id="rerender-steps")
                rerender_button = gr.Button("Re-render", elem_id="rerender-button")
                send_to_img2img = gr.Button("Send to img2img", elem_id="draft-to-img2img")
            with gr.Row():
                before = gr.Image(label="Draft", height=IMAGE_HEIGHT, elem_id="before", **PNG_OUT)
                after = gr.Image(label="Refined", height=IMAGE_HEIGHT, elem_id="after", **PNG_OUT)

    def run_drafts(values: dict, request: gr.Request):
        recipe, count = guarded(bindings.recipe_from_values)(controls, values, ctx.defaults)
        yield {status: f"Drafting {count} (seeds {recipe.seed}…{recipe.seed + count - 1})…", drafts: [], draft_ids: []}

        def work(on_step, should_cancel):
            return ctx.studio.draft(recipe, count, on_step=on_step, should_cancel=should_cancel)

        for event in ctx.jobs.stream(session_of(request), work):
            if isinstance(event, Step):
                previews = fast_preview(event.info.clean_estimate) if event.info.clean_estimate is not None else []
                yield {status: progress_text(event.info, f"Drafting {count}"), drafts: previews}
            elif isinstance(event, Interrupted):
                yield {status: f"**{event.message}** — nothing was saved."}
            elif isinstance(event, Done):
                saved = event.result
                yield {
                    status: f"{len(saved)} drafts ready (ids {saved[0].id}–{saved[-1].id}). Click one, then **Refine**.",
                    drafts: [(str(s.image), caption(s)) for s in saved], draft_ids: [s.id for s in saved],
                }

    def pick(ids: list[int], evt: gr.SelectData):
        if evt.index is None or not 0 <= evt.index < len(ids):
            return {}
        draft_id = ids[evt.index]
        image = ctx.studio.gallery.get(draft_id).image_path
        # A refined image of another draft no longer belongs beside this one.
        return {selected: draft_id, shown: draft_id, before: str(image), after: None,
                status: f"Picked draft #{draft_id}. **Refine** it, or re-render it at more steps."}

    def finish(draft_id, steps: int | None, request: gr.Request, doing: str):
        if draft_id is None:
            raise gr.Error("Pick a draft first: click one of the drafts.", title="No draft picked")
        draft_id = int(draft_id)
        draft_image = str(guarded(ctx.studio.gallery.get)(draft_id).image_path)
        yield {before: draft_image, status: f"{doing} draft #{draft_id}…"}

        def work(on_step, should_cancel):
            if steps is None:
                return ctx.studio.refine(draft_id, on_step=on_step, should_cancel=should_cancel)
            return ctx.studio.rerender(draft_id, int(steps), on_step=on_step, should_cancel=should_cancel)

        for update in one_image_updates(ctx.jobs.stream(session_of(request), work), status, after, doing, shown):
            if after in update and status in update and isinstance(update[after], str):
                update[status] = f"Refined draft #{draft_id} → " + update[status].removeprefix("Made ")
            yield update

    def refine(draft_id, request: gr.Request):
        yield from finish(draft_id, None, request, "Refining")

    def rerender(draft_id, steps, request: gr.Request):
        if steps is None or steps < 1:
            raise gr.Error("Re-render: steps must be a whole number of at least 1.", title="Cannot do that")
        yield from finish(draft_id, steps, request, f"Re-rendering at {int(steps)} steps")

    outputs = {status, drafts, draft_ids}
    gpu = dict(concurrency_id=GPU, concurrency_limit=1)
    draft_button.click(run_drafts, inputs=controls.inputs(), outputs=outputs, api_name="draft", **gpu)
    controls.prompt.submit(run_drafts, inputs=controls.inputs(), outputs=outputs, api_visibility="private", **gpu)
    drafts.select(pick, inputs=draft_ids, outputs={selected, shown, before, after, status}, api_visibility="private")
    finished = {before, after, status, shown}
    refine_button.click(refine, inputs=selected, outputs=finished, api_name="refine", **gpu)
    rerender_button.click(rerender, inputs=[selected, rerender_steps], outputs=finished, api_name="rerender", **gpu)
    interrupt.click(interrupt_handler(ctx), inputs=None, outputs=None, queue=False, api_name="interrupt")
    return DraftTab(controls, selected, shown, send_to_img2img, draft_button, interrupt)
