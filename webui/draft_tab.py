"""Draft & Refine: type, draft several cheap images with live previews, pick one, refine it."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from atelier import requests
from atelier.studio import GalleryFilters, RefineChoice, Saved, write_sweep_grid
from webui import bindings, upscale_controls
from webui.context import Context, busy_note, gpu_event, interrupt_handler, session_of
from webui.draft_picking import (
    GridOutputs,
    batch_shown,
    on_show_text,
    picked_id,
    stream_into_grid,
    wire_on_show,
    wire_picking,
)
from webui.jobs import guarded, keeps_outputs, one_image_updates

IMAGE_HEIGHT = 420
# Images leave the app as PNG files from the gallery (metadata and watermark intact); no share button.
PNG_OUT = dict(type="filepath", format="png", interactive=False, buttons=["download", "fullscreen"])
READY = "Type a prompt and press **Draft** (Ctrl+Enter in the prompt)."


@dataclass
class DraftTab:
    controls: bindings.GenerationControls
    selected: gr.Textbox  # the gallery id of the picked draft (also the API's way to name one); "" = none
    shown: gr.State  # the gallery id of the newest result on show: refined/re-rendered, else the picked draft
    send_to_img2img: gr.Button
    draft_button: gr.Button
    interrupt: gr.Button
    on_load: list[dict]  # fn / inputs / outputs of the page's load events


def compare_slider(label: str, elem_id: str) -> gr.ImageSlider:
    """Two images on one slider (before | after), as PNG."""
    return gr.ImageSlider(
        label=label, type="filepath", format="png", height=IMAGE_HEIGHT, interactive=False, elem_id=elem_id
    )


def steps_text(steps: int) -> str:
    return f"{steps} step" if steps == 1 else f"{steps} steps"


def render(ctx: Context) -> DraftTab:
    with gr.Row():
        with gr.Column(scale=2):
            controls = bindings.render_generation_controls(ctx.defaults)
            with gr.Row():  # drafts only: a parameter sweep, and how a dynamic prompt ({a|b}, __wildcard__) is drawn
                sweep = gr.Textbox(
                    "", label="Sweep (one draft per value)", placeholder="guidance=3,5,7", elem_id="sweep", scale=3
                )
                combinatorial = gr.Checkbox(False, label="Every {a|b} combination", elem_id="combinatorial")
        with gr.Column(scale=3):
            with gr.Row():
                draft_button = gr.Button("Draft", variant="primary", elem_id="draft-button", scale=3)
                interrupt = gr.Button("Interrupt (Esc)", variant="stop", elem_id="interrupt-button", scale=1)
            status = gr.Markdown(READY, elem_id="draft-status")
            drafts = gr.Gallery(
                label="Drafts (click one to pick it)",
                columns=4,
                height="auto",
                format="png",
                allow_preview=False,
                buttons=[],
                elem_id="drafts",
                interactive=False,
            )
            grid = gr.Image(label="Sweep grid", visible=False, elem_id="sweep-grid", **PNG_OUT)
            with gr.Row():
                selected = gr.Textbox(
                    "",
                    label="Picked draft #",
                    placeholder="click a draft",  # or type its number (the box is narrow)
                    elem_id="selected-draft",
                    max_lines=1,
                )
                refine_button = gr.Button("Refine", variant="primary", elem_id="refine-button")
                rerender_steps = gr.Number(40, label="Re-render at N steps", precision=0, elem_id="rerender-steps")
                rerender_button = gr.Button("Re-render", elem_id="rerender-button")
            with gr.Row():
                vary_subtle = gr.Button("Vary (subtle)", size="sm", elem_id="vary-subtle")
                vary_strong = gr.Button("Vary (strong)", size="sm", elem_id="vary-strong")
            on_show = gr.Markdown(on_show_text(None, ""), elem_id="draft-on-show")  # what Upscale and Send use
            upscale = upscale_controls.render(
                ctx, elem_prefix="draft-", width=ctx.defaults.width, height=ctx.defaults.height
            )
            with gr.Row():
                reuse_seed = gr.Button("♻ Reuse seed", size="sm", elem_id="reuse-seed")
                send_to_img2img = gr.Button("Send to img2img", size="sm", elem_id="draft-to-img2img")
            with gr.Row():
                before = gr.Image(label="Draft", height=IMAGE_HEIGHT, elem_id="before", **PNG_OUT)
                after = gr.Image(label="Refined", height=IMAGE_HEIGHT, elem_id="after", **PNG_OUT)
            compare = compare_slider("Compare: draft | refined (drag)", "refine-compare")
    out = GridOutputs(
        status=status,
        drafts=drafts,
        batch=gr.State([]),
        shown=gr.State(None),
        selected=selected,
        before=before,
        after=after,
        compare=compare,
        grid=grid,
        on_show=on_show,
    )
    _wire_drafting(ctx, controls, out, draft_button, {"sweep": sweep, "combinatorial": combinatorial})
    _wire_finishing(ctx, controls, out, refine_button, rerender_button, rerender_steps)
    _wire_varying(ctx, controls, out, vary_subtle, vary_strong)
    _wire_upscaling(ctx, out, upscale)
    restore = _wire_picking(ctx, controls, out, reuse_seed)
    wire_on_show(out, send_to_img2img)
    refresh_loras = _wire_lora_refresh(ctx, controls)
    remember = _wire_remembered_settings(controls, draft_button)
    interrupt.click(interrupt_handler(ctx), inputs=None, outputs=status, queue=False, api_name="interrupt")
    return DraftTab(
        controls=controls,
        selected=selected,
        shown=out.shown,
        send_to_img2img=send_to_img2img,
        draft_button=draft_button,
        interrupt=interrupt,
        on_load=[
            remember,
            dict(fn=restore, inputs=None, outputs={out.status, out.drafts, out.batch}),
            refresh_loras,
        ],
    )


def _wire_drafting(
    ctx: Context, controls: bindings.GenerationControls, out: GridOutputs, draft_button: gr.Button, plan_boxes: dict
) -> None:
    @keeps_outputs(out.status)
    def run_drafts(values: dict, request: gr.Request, ticket: str | None):
        plan = bindings.plan_from_values(
            controls,
            values,
            ctx.defaults,
            **{name: values[box] for name, box in plan_boxes.items()},
            wildcards=requests.wildcards_folder(ctx.studio.home),
        )
        recipe, count = plan.recipe, plan.count
        for warning in dict.fromkeys(w for r in plan.each or (recipe,) for w in requests.recipe_warnings(r)):
            gr.Warning(warning, title="Prompt")
        seeds = f"seed {recipe.seed}" if count == 1 else f"seeds {recipe.seed}…{recipe.seed + count - 1}"
        doing = f"Drafting {count} ({plan.sweep.parameter} sweep, seed {recipe.seed})" if plan.sweep else None
        doing = doing or f"Drafting {count} ({seeds})"

        def work(on_step, should_cancel):
            if plan.each:
                return ctx.studio.draft_each(list(plan.each), on_step=on_step, should_cancel=should_cancel)
            return ctx.studio.draft(recipe, count, on_step=on_step, should_cancel=should_cancel)

        def done(result: list) -> dict:
            for note in dict.fromkeys(n for saved in result for n in saved.notes):
                gr.Info(note, title="Note")
            grid = write_sweep_grid(ctx.studio.downloads_folder(), result, plan.labels) if plan.sweep else None
            shown = gr.Image(value=str(grid), visible=True) if grid else gr.Image(value=None, visible=False)
            return {**batch_shown(out, result, "ready", plan.labels), out.grid: shown}

        events = ctx.jobs.stream(session_of(request), work, ticket)
        # The Seed box shows the seed used, so the same drafts can be made again.
        first = {controls.seed: recipe.seed}
        yield from stream_into_grid(out, events, doing=doing, previous=values[out.batch] or [], done=done, first=first)

    outputs = {out.drafts, out.batch, controls.seed, out.grid, *out.pick_outputs()}
    inputs = controls.inputs() | set(plan_boxes.values()) | {out.batch}
    for trigger, options in (
        (draft_button.click, dict(api_name="draft")),
        (controls.prompt.submit, dict(api_visibility="private")),
    ):
        gpu_event(ctx, trigger, run_drafts, inputs=inputs, outputs=outputs, status=out.status, **options)


def _wire_finishing(
    ctx: Context,
    controls: bindings.GenerationControls,
    out: GridOutputs,
    refine_button: gr.Button,
    rerender_button: gr.Button,
    rerender_steps: gr.Number,
) -> None:
    def finish(values: dict, request: gr.Request, ticket: str | None, steps: int | None):
        draft_id = picked_id(values[out.selected])
        ctx.check_offered(draft_id)
        yield {out.before: str(ctx.studio.download_path(draft_id))}
        settings = RefineChoice(
            aesthetic_score=float(values[controls.aesthetic]),
            negative_aesthetic_score=float(values[controls.negative_aesthetic]),
            strength=float(values[controls.refine_strength]),
        )

        made = {}

        def work(on_step, should_cancel):
            if steps is None:
                made["saved"] = ctx.studio.refine(
                    draft_id, settings=settings, on_step=on_step, should_cancel=should_cancel
                )
            else:
                made["saved"] = ctx.studio.rerender(draft_id, steps, on_step=on_step, should_cancel=should_cancel)
            return made["saved"]

        doing, done = (
            ("Refining", "Refined") if steps is None else (f"Re-rendering at {steps_text(steps)}", "Re-rendered")
        )
        events = ctx.jobs.stream(session_of(request), work, ticket)
        updates = one_image_updates(
            events,
            status=out.status,
            result=out.after,
            doing=f"{doing} draft #{draft_id}",
            download_path=ctx.studio.download_path,
            result_id=out.shown,
        )
        for update in updates:
            if out.shown in update:
                saved = made["saved"]
                again = (
                    " — already made with these settings, shown again rather than stored twice" if saved.reused else ""
                )
                update[out.status] = f"{done} draft #{draft_id} → **#{saved.id}** (seed {saved.recipe.seed}){again}."
                update[out.compare] = (str(ctx.studio.download_path(draft_id)), update[out.after])
            yield update

    @keeps_outputs(out.status)
    def refine(values: dict, request: gr.Request, ticket: str | None):
        yield from finish(values, request, ticket, None)

    @keeps_outputs(out.status)
    def rerender(values: dict, request: gr.Request, ticket: str | None):
        steps = values[rerender_steps]
        if steps is None or steps < 1:
            raise ValueError("Re-render: steps must be a whole number of at least 1.")
        yield from finish(values, request, ticket, int(steps))

    refiner_controls = {controls.aesthetic, controls.negative_aesthetic, controls.refine_strength}
    finished = {out.before, out.after, out.shown, out.compare}
    gpu_event(
        ctx,
        refine_button.click,
        refine,
        inputs={out.selected} | refiner_controls,
        outputs=finished,
        status=out.status,
        api_name="refine",
    )
    gpu_event(
        ctx,
        rerender_button.click,
        rerender,
        inputs={out.selected, rerender_steps},
        outputs=finished,
        status=out.status,
        api_name="rerender",
    )


def _wire_varying(
    ctx: Context, controls: bindings.GenerationControls, out: GridOutputs, subtle: gr.Button, strong: gr.Button
) -> None:
    """Vary (subtle / strong): new drafts of the picked one, its noise slerped towards variation seeds
    (as many as the Drafts slider says), shown in the drafts grid to pick and refine like any draft."""

    def handler(name: str, strength: float):
        @keeps_outputs(out.status)
        def vary(values: dict, request: gr.Request, ticket: str | None):
            draft_id, count = picked_id(values[out.selected]), int(values[controls.count] or 1)
            ctx.check_offered(draft_id)
            doing = f"Varying draft #{draft_id} ({count}, strength {strength})"

            def work(on_step, should_cancel):
                return ctx.studio.vary(
                    draft_id, strength=strength, count=count, on_step=on_step, should_cancel=should_cancel
                )

            events = ctx.jobs.stream(session_of(request), work, ticket)
            yield from stream_into_grid(
                out,
                events,
                doing=doing,
                previous=values[out.batch] or [],
                done=lambda result: batch_shown(out, result, f"varied from #{draft_id}"),
                first={},
            )

        vary.__name__ = name
        return vary

    for button, name, strength in (
        (subtle, "vary_subtle", requests.VARY_SUBTLE),
        (strong, "vary_strong", requests.VARY_STRONG),
    ):
        gpu_event(
            ctx,
            button.click,
            handler(name, strength),
            inputs={out.selected, controls.count, out.batch},
            outputs={out.drafts, out.batch, *out.pick_outputs()},
            status=out.status,
            api_name=name,
        )


def _wire_upscaling(ctx: Context, out: GridOutputs, upscale: upscale_controls.UpscaleControls) -> None:
    """Upscale (hires fix) the image on show (the refined or re-rendered one, else the picked draft): the
    result shows as "after", beside its source on the compare slider, and becomes the image on show."""

    def handler(how: str):
        @keeps_outputs(out.status)
        def run(values: dict, request: gr.Request, ticket: str | None):
            chosen = upscale_controls.upscale_options(upscale, values, how)
            source_id = int(values[out.shown]) if values[out.shown] else picked_id(values[out.selected])
            ctx.check_offered(source_id)
            what = upscale_controls.describe(chosen)
            doing = f"Upscaling #{source_id} ({what})"
            yield {out.status: f"{doing}…", out.before: str(ctx.studio.download_path(source_id))}

            def work(on_step, should_cancel):
                return ctx.studio.upscale(source_id, **chosen, on_step=on_step, should_cancel=should_cancel)

            events = ctx.jobs.stream(session_of(request), work, ticket)
            download = ctx.studio.download_path
            for update in one_image_updates(
                events, status=out.status, result=out.after, doing=doing, download_path=download, result_id=out.shown
            ):
                if out.shown in update:
                    update[out.status] = f"Upscaled #{source_id} → **#{update[out.shown]}** ({what})."
                    update[out.compare] = (str(download(source_id)), update[out.after])
                yield update

        return run

    for how, button in upscale.buttons().items():
        api_name = "draft_upscale_size" if how == upscale_controls.TO_SIZE else f"draft_upscale_{how.replace('.', '_')}"
        gpu_event(
            ctx,
            button.click,
            handler(how),
            inputs={out.selected, out.shown} | upscale.inputs(),
            outputs={out.before, out.after, out.shown, out.compare},
            status=out.status,
            api_name=api_name,
        )


def _wire_picking(ctx: Context, controls: bindings.GenerationControls, out: GridOutputs, reuse_seed: gr.Button):
    """Click a draft to pick it (or type its number); ♻ reuses its seed. Returns the page-load handler that
    restores the newest batch (app.py wires it to the page's load event)."""

    wire_picking(ctx, controls, out, reuse_seed)

    def restore(request: gr.Request):
        """After a reload: the newest batch of drafts from the gallery, so a picked draft stays refinable."""
        note = busy_note(ctx, request)  # whether the job on the device is this browser's own
        busy = f"  \n{note}" if note else ""
        newest = ctx.studio.search(None, GalleryFilters(kinds=("draft",)), limit=1).items
        if not newest:
            return {out.status: READY + busy} if busy else {}
        batch = newest[0].batch_id
        saved = ctx.studio.search(None, GalleryFilters(batch_id=batch), limit=16).items if batch else newest
        shown = [Saved(id=g.id, recipe=g.recipe, image=g.image_path) for g in sorted(saved, key=lambda g: g.id)]
        update = batch_shown(out, shown, "restored from the gallery")
        return {**update, out.status: update[out.status] + busy}

    return restore


def _wire_lora_refresh(ctx: Context, controls: bindings.GenerationControls) -> dict:
    """↻ reads the LoRA folder again (a file copied in while serving appears); unusable files are listed
    with the reason, never offered. Returns the same as a page-load event (fn / inputs / outputs)."""

    @guarded
    def refresh(values: dict) -> dict:
        usable, unusable = bindings.lora_lists(ctx.studio.loras())
        update = {controls.lora_note: bindings.lora_note_text(unusable)}
        for box in controls.lora_names:  # only the choices: a name already picked stays picked
            update[box] = gr.Dropdown(choices=[bindings.NO_LORA, *usable])
        return update

    wiring = dict(fn=refresh, inputs=set(controls.lora_names), outputs={controls.lora_note, *controls.lora_names})
    controls.lora_refresh.click(**wiring, api_visibility="private")
    return wiring


def _wire_remembered_settings(controls: bindings.GenerationControls, draft_button: gr.Button) -> dict:
    """The settings of the last Draft are kept in the browser (localStorage), so a reload starts where
    the user left off. Returns the page-load event that puts them back (fn / inputs / outputs)."""
    kept = gr.BrowserState({}, storage_key="atelier-draft-settings")

    def remember(values: dict) -> dict:
        return {kept: bindings.remembered_settings(controls, values)}

    def restore(values: dict) -> dict:
        return bindings.restored_settings(controls, values[kept])

    for trigger in (draft_button.click, controls.prompt.submit):
        trigger(
            remember,
            inputs=controls.inputs(),
            outputs={kept},
            queue=False,
            show_progress="hidden",
            api_visibility="private",
        )
    return dict(fn=restore, inputs={kept}, outputs=controls.inputs())
