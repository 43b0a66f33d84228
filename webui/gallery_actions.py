"""The Gallery detail pane's actions: favourite, delete, Load into Draft, PNG import, and the GPU jobs on the
generation on show (re-run, refine, upscale with its options, vary subtle / strong)."""

from __future__ import annotations

import functools
import html
from typing import TYPE_CHECKING

import gradio as gr

from atelier import requests
from webui import bindings, upscale_controls
from webui.context import Context, gpu_event, session_of
from webui.jobs import Done, Interrupted, Step, guarded, keeps_outputs, progress_text, warn

if TYPE_CHECKING:
    from webui.gallery_tab import EditTabs, _DetailHandlers, _PageHandlers

QUIET = dict(api_visibility="private")
_ACTIONS = {"rerun": ("Re-running", "Re-ran"), "refine": ("Refining", "Refined"), "upscale": ("Upscaling", "Upscaled")}
VARY_PRESETS = (("subtle", requests.VARY_SUBTLE), ("strong", requests.VARY_STRONG))
NOTHING_SELECTED = "Select a generation in the grid first."
# Load sets the Draft controls (prompt, seed, sampler… which every tab uses) and opens the tab that makes the
# recipe again: an img2img (an upscale too: its source is the enlarged image) or a ControlNet recipe needs its
# images, which only that tab holds. The button's label names the tab for the entry on show.
LOAD_LABELS = {"draft": "Load into Draft", "img2img": "Load into Img2Img", "controlnet": "Load into ControlNet"}


def current(generation_id) -> int:
    """The id in the Selected box (text; a number from the API); none selected is refused in words."""
    text = "" if generation_id is None else str(generation_id).strip().lstrip("#")
    if text in ("", "0"):
        raise ValueError(NOTHING_SELECTED)
    if not text.isdigit():
        raise ValueError(f"Selected: expected a generation's number, like 12 (got {generation_id!r})")
    return int(text)


def star(favourite: bool) -> str:
    return "★ Favourite" if favourite else "☆ Favourite"


def split_tags(text: str) -> list[str]:
    """The Tags box's comma-separated tags, blank pieces dropped."""
    return [t.strip() for t in text.split(",") if t.strip()]


def saved_tags(ctx: Context, generation_id: int, text: str):
    """The Tags box's tags saved; a refusal names the entry and the box's rules (the gallery's: printable
    text of 1 to 64 characters each, at most 64 tags)."""
    try:
        return ctx.studio.set_tags(generation_id, split_tags(text))
    except ValueError as error:
        reason = str(error).removeprefix("tags: ")
        raise ValueError(f"Tags of #{generation_id} not saved: {reason}. Separate tags with commas.") from None


def load_target(recipe) -> str:
    """The tab Load into … opens for `recipe` (a key of LOAD_LABELS, and the tab's id)."""
    if recipe.mode == "img2img" and recipe.source_image_sha256:
        return "img2img"
    return "controlnet" if recipe.controlnets else "draft"


def load_label(recipe) -> str:
    return LOAD_LABELS[load_target(recipe)]


def reported_in(status: gr.Markdown):
    """For the detail pane's quick handlers: an error becomes a warning toast and the same line, with ⚠, in
    the pane's status (as its GPU buttons do); no other output changes."""

    def decorate(handler):
        @functools.wraps(handler)
        def wrapper(*args, **kwargs):
            try:
                return handler(*args, **kwargs)
            except Exception as exc:
                return {status: f"⚠ {warn(exc)}"}

        return wrapper

    return decorate


def loaded_edits(ctx: Context, edit: EditTabs, recipe) -> dict:
    """What Load into Draft sets besides the Draft controls: an img2img's source and strength (then the
    Img2Img tab opens), or the ControlNet units' images and settings (then the ControlNet tab opens)."""
    target = load_target(recipe)
    if target == "img2img":
        # A low strength is recorded as the refiner alone (strength 0, switch 1.0): its strength is the refiner's.
        refiner_alone = recipe.strength == 0 and recipe.switch == 1.0 and recipe.refine is not None
        strength = recipe.refine.strength if refiner_alone else recipe.strength
        inpaint = edit.img2img.inpaint  # the stored mask comes back as an uploaded one, with its settings
        return {
            edit.img2img.source: str(ctx.studio.stored_file(recipe.source_image_sha256)),
            edit.img2img.parent: None,
            edit.img2img.strength: strength,
            inpaint.upload: str(ctx.studio.stored_file(recipe.mask_sha256)) if recipe.mask_sha256 else None,
            inpaint.blur: recipe.mask_blur,
            inpaint.area: recipe.inpaint_area,
            inpaint.padding: recipe.inpaint_padding,
            inpaint.masked_content: recipe.masked_content,
            inpaint.model: _offered_inpaint_model(ctx, recipe),
            **dict(zip(inpaint.expand, recipe.expand)),
            edit.tabs: gr.Tabs(selected="img2img"),
        }
    if target == "controlnet":
        update: dict = {edit.tabs: gr.Tabs(selected="controlnet")}
        for unit, box in zip(recipe.controlnets, edit.control_units):
            image = unit.image_sha256 or unit.map_sha256
            update.update(
                {
                    box.image: str(ctx.studio.stored_file(image)),
                    box.preprocessor: unit.preprocessor,
                    box.model: unit.model.name,
                    box.scale: unit.scale,
                    box.start: unit.start,
                    box.end: unit.end,
                }
            )
        return update
    return {edit.tabs: gr.Tabs(selected="draft")}


def _offered_inpaint_model(ctx: Context, recipe) -> str:
    name = recipe.inpaint_model.name if recipe.inpaint_model is not None else ""
    return name if name in ctx.studio.inpaint_model_choices() else ""


def wire_actions(
    ctx: Context,
    shown: _DetailHandlers,
    buttons: dict,
    pages: _PageHandlers,
    controls: bindings.GenerationControls,
    edit: EditTabs,
    dropped: gr.File,
) -> None:
    detail = shown.detail
    reported = reported_in(detail.status)

    @reported
    def toggle_favourite(values: dict):
        g = ctx.studio.get(current(values[detail.id]))
        g = ctx.studio.set_favourite(g.id, not g.favourite)
        return {
            **pages.current(values),  # the grid's ★ and the favourites filter follow at once
            detail.favourite: star(g.favourite),
            detail.status: "Added to favourites." if g.favourite else "Removed from favourites.",
        }

    @reported
    def ask_delete(generation_id):
        current(generation_id)
        return {detail.confirm_row: gr.update(visible=True)}

    @reported
    def do_delete(values: dict):
        gid = current(values[detail.id])
        ctx.studio.delete(gid)
        page = pages.current(values)
        grid = pages.page.grid  # no thumbnail stays marked as picked: the one now at that place is not on show
        page[grid] = gr.Gallery(value=page[grid], selected_index=None)
        return {**page, **shown.cleared(f"Deleted #{gid}.")}

    @reported
    def load_draft(generation_id):
        recipe = ctx.studio.get(current(generation_id)).recipe
        warn_unusable_loras(ctx, recipe)
        return {**bindings.values_from_recipe(controls, recipe), **loaded_edits(ctx, edit, recipe)}

    @guarded
    def import_png(path):
        if not path:
            return {}
        try:
            saved = ctx.studio.import_png(path)
        except ValueError as error:  # not a PNG, a damaged one, over a limit: say why, and empty the box
            reason = str(error).removeprefix("data: ")  # the PNG reader names the bytes it was given "data"
            name = path.replace("\\", "/").rsplit("/", 1)[-1]  # the dropped file's own name, not the upload path
            warn(ValueError(f"“{name}” was not imported: {reason}. Drop a PNG saved by Atelier or A1111."))
            return {dropped: None}
        how = "Already in the gallery" if saved.reused else "Imported"
        gr.Info(f"{how} as #{saved.id}; its Recipe is loaded into Draft.")
        if saved.notes:
            # a toast renders HTML, not Markdown: one line per note
            gr.Warning("<br>".join(html.escape(note) for note in saved.notes), title="What the Recipe could not hold")
        warn_unusable_loras(ctx, saved.recipe)
        return {**shown.show(saved.id), **bindings.values_from_recipe(controls, saved.recipe), dropped: None}

    buttons["favourite"].click(
        toggle_favourite,
        inputs=pages.inputs | {detail.id},
        outputs=pages.outputs | {detail.favourite, detail.status},
        **QUIET,
    )
    _wire_tags(ctx, shown, pages)
    buttons["delete"].click(ask_delete, inputs=detail.id, outputs={detail.confirm_row, detail.status}, **QUIET)
    buttons["cancel"].click(lambda: gr.update(visible=False), outputs=detail.confirm_row, queue=False, **QUIET)
    buttons["confirm"].click(
        do_delete, inputs=pages.inputs | {detail.id}, outputs=pages.outputs | shown.outputs, **QUIET
    )
    load_outputs = controls.inputs() | edit.outputs() | {detail.status}
    buttons["load"].click(load_draft, inputs=detail.id, outputs=load_outputs, **QUIET)
    dropped.upload(import_png, inputs=dropped, outputs=shown.outputs | controls.inputs() | {dropped}, **QUIET)
    _wire_jobs(ctx, shown, buttons, pages, controls)


def _wire_jobs(
    ctx: Context, shown: _DetailHandlers, buttons: dict, pages: _PageHandlers, controls: bindings.GenerationControls
) -> None:
    """The GPU buttons: re-run, refine, upscale (×1.5, ×2, to a size; the options' values), vary."""
    detail, upscale = shown.detail, buttons["upscale"]
    wiring = dict(outputs=shown.outputs | pages.outputs, status=detail.status)
    for button, action, api_name in (("rerun", "rerun", "rerun"), ("refine", "refine", "gallery_refine")):
        handler = job(ctx, shown, pages, action, lambda values: {})
        gpu_event(ctx, buttons[button].click, handler, inputs=pages.inputs | {detail.id}, api_name=api_name, **wiring)
    for how, button in upscale.buttons().items():
        options = functools.partial(upscale_controls.upscale_options, upscale, how=how)
        api_name = "upscale_size" if how == upscale_controls.TO_SIZE else f"upscale_{how.replace('.', '_')}"
        inputs = pages.inputs | {detail.id} | upscale.inputs()
        gpu_event(
            ctx, button.click, job(ctx, shown, pages, "upscale", options), inputs=inputs, api_name=api_name, **wiring
        )
    for name, strength in VARY_PRESETS:
        handler = vary_job(ctx, shown, pages, strength, controls.count)
        inputs = pages.inputs | {detail.id, controls.count}
        gpu_event(ctx, buttons[f"vary_{name}"].click, handler, inputs=inputs, api_name=f"gallery_vary_{name}", **wiring)


def _wire_tags(ctx: Context, shown: _DetailHandlers, pages: _PageHandlers) -> None:
    """The Tags box: saved on Enter and when it loses focus; the grid and the Tag filter follow."""
    detail = shown.detail

    @reported_in(detail.status)
    def save_tags(values: dict, blurred: bool):
        text = values[detail.tags] or ""
        if not str(values[detail.id] or "").strip() and not text.strip():
            return {}  # the empty box of an empty pane lost focus: nothing to save
        gid = current(values[detail.id])
        if blurred and tuple(split_tags(text)) == ctx.studio.get(gid).tags:
            return {}  # left unchanged (or just saved with Enter): nothing to save or say again
        g = saved_tags(ctx, gid, text)
        return {
            **pages.current(values),  # the Tag filter's choices and a tag-filtered grid follow at once
            detail.tags: ", ".join(g.tags),
            detail.status: f"Tags of #{gid}: {', '.join(g.tags) or 'none'}",
        }

    for saving, blurred in ((detail.tags.submit, False), (detail.tags.blur, True)):
        saving(
            functools.partial(save_tags, blurred=blurred),
            inputs=pages.inputs | {detail.id, detail.tags},
            outputs=pages.outputs | {detail.tags, detail.status},
            **QUIET,
        )


def warn_unusable_loras(ctx: Context, recipe) -> None:
    """A recipe put into the Draft controls names LoRAs this server cannot use: said now, not at the next Draft."""
    reasons = ctx.studio.unusable_loras(recipe)
    if reasons:
        gr.Warning(
            "<br>".join(html.escape(reason) for reason in reasons) + "<br>Draft refuses them until then: take them "
            "out of the LoRA slots "
            "and the prompt, or add the files.",
            title="LoRAs not found here",
        )


def job(ctx: Context, shown: _DetailHandlers, pages: _PageHandlers, action: str, options):
    """A GPU handler that re-runs, refines or upscales (`options(values)`: the Studio method's keyword
    arguments) the generation on show, then shows the new one (in the detail pane, on the compare slider
    beside the original, and in the grid)."""
    doing, done = _ACTIONS[action]
    status = shown.detail.status

    @keeps_outputs(status)
    def run(values: dict, request: gr.Request, ticket: str | None):
        gid = current(values[shown.detail.id])
        ctx.check_offered(gid)
        chosen = options(values)  # a bad target size fails here, before the queue
        what = f" ({upscale_controls.describe(chosen)})" if action == "upscale" else ""
        yield {status: f"{doing} #{gid}{what}…"}
        method = functools.partial(getattr(ctx.studio, action), gid, **chosen)
        work = lambda on_step, should_cancel: method(on_step=on_step, should_cancel=should_cancel)  # noqa: E731
        for event in ctx.jobs.stream(session_of(request), work, ticket):
            if isinstance(event, Step):
                yield {status: progress_text(event.info, f"{doing} #{gid}")}
            elif isinstance(event, Interrupted):
                yield {status: f"**{event.message}**"}
            elif isinstance(event, Done):
                made = event.result.id
                yield {
                    **pages.current(values),
                    **shown.show(made),
                    status: f"{done} #{gid} → **#{made}**{what}.",
                    shown.detail.compare: (str(ctx.studio.download_path(gid)), str(ctx.studio.download_path(made))),
                }

    return run


def vary_job(ctx: Context, shown: _DetailHandlers, pages: _PageHandlers, strength: float, count_box):
    """Vary the draft on show (as many children as the Drafts slider says); the grid shows them, the detail
    pane the first, the status all their ids."""
    status = shown.detail.status

    @keeps_outputs(status)
    def vary(values: dict, request: gr.Request, ticket: str | None):
        gid, count = current(values[shown.detail.id]), int(values[count_box] or 1)
        ctx.check_offered(gid)
        doing = f"Varying #{gid} ({count}, strength {strength})"
        yield {status: f"{doing}…"}

        def work(on_step, should_cancel):
            return ctx.studio.vary(gid, strength=strength, count=count, on_step=on_step, should_cancel=should_cancel)

        for event in ctx.jobs.stream(session_of(request), work, ticket):
            if isinstance(event, Step):
                yield {status: progress_text(event.info, doing)}
            elif isinstance(event, Interrupted):
                yield {status: f"**{event.message}** — nothing was saved."}
            elif isinstance(event, Done):
                made = ", ".join(f"#{saved.id}" for saved in event.result)
                yield {
                    **pages.current(values),
                    **shown.show(event.result[0].id),
                    status: f"Varied #{gid} (strength {strength}) → **{made}**.",
                }

    return vary
