"""Gallery: search every generation, inspect its Recipe and lineage, re-run, reload, favourite, delete."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from storage.gallery import KINDS, Generation
from webui import bindings
from webui.context import Context, session_of
from webui.draft_tab import IMAGE_HEIGHT, PNG_OUT
from webui.jobs import GPU, Done, Interrupted, Step, guarded, progress_text

PAGE_SIZE = 24


@dataclass
class GalleryTab:
    detail_id: gr.Number  # the generation shown in the detail pane
    load_into_draft: gr.Button
    send_to_img2img: gr.Button
    refresh: gr.Button


def _filters(kinds, model, lora, favourites, since, until) -> dict:
    return {
        "kind": list(kinds) or None, "model": (model or "").strip() or None, "lora": (lora or "").strip() or None,
        "favourite": True if favourites else None, "since": (since or "").strip() or None,
        "until": (until or "").strip() or None,
    }


def _thumbnail(g: Generation) -> tuple[str, str]:
    star = "★ " if g.favourite else ""
    return str(g.thumbnail_path), f"{star}#{g.id} {g.kind} · {g.recipe.prompt[:40]}"


def _label(g: Generation) -> str:
    return f"#{g.id} ({g.kind})"


def lineage_text(ctx: Context, g: Generation) -> str:
    ancestors = ctx.studio.gallery.ancestors(g.id)
    children = ctx.studio.gallery.children(g.id)
    chain = " ← ".join([f"**{_label(g)}**", *(_label(a) for a in ancestors)])
    made = ", ".join(_label(c) for c in children) or "none yet"
    batch = f"  \nBatch: seeds {', '.join(map(str, g.recipe.batch_seeds))}" if g.recipe.batch_seeds else ""
    missing = "  \n⚠ Files of this generation are missing from disk." if g.files_missing else ""
    return f"Lineage: {chain}  \nMade from it: {made}{batch}{missing}"


def render(ctx: Context, controls: bindings.GenerationControls, tabs: gr.Tabs, draft_tab_id: str, tab: gr.Tab) -> GalleryTab:
    """The tab's contents; `tab` is the Tab they sit in (opening it shows the newest page)."""
    with gr.Row():
        query = gr.Textbox(label="Search prompts", placeholder="words from the prompt or negative", scale=4,
                           elem_id="gallery-search")
        search_button = gr.Button("Search", scale=1, elem_id="gallery-search-button")
        refresh = gr.Button("Refresh", scale=1, elem_id="gallery-refresh")
    with gr.Accordion("Filters", open=False):
        with gr.Row():
            kinds = gr.Dropdown(list(KINDS), value=[], multiselect=True, label="Kind")
            model = gr.Textbox(label="Model", placeholder=ctx.defaults.base)
            lora = gr.Textbox(label="LoRA")
            favourites = gr.Checkbox(False, label="Favourites only")
            since = gr.Textbox(label="Since", placeholder="2025-01-31")
            until = gr.Textbox(label="Until (before)", placeholder="2025-02-28")
    with gr.Row():
        with gr.Column(scale=3):
            grid = gr.Gallery(label="Generations", columns=6, height="auto", allow_preview=False, buttons=[],
                              format="png", elem_id="gallery-grid", interactive=False)
            with gr.Row():
                newer = gr.Button("← Newer", size="sm", elem_id="gallery-newer")
                page_label = gr.Markdown("", elem_id="gallery-page")
                older = gr.Button("Older →", size="sm", elem_id="gallery-older")
            dropped = gr.File(label="Drop an Atelier or A1111 PNG to load its Recipe", file_types=[".png"],
                              type="filepath", elem_id="png-drop")
        with gr.Column(scale=2):
            detail_id = gr.Number(None, label="Selected", precision=0, interactive=False, elem_id="detail-id")
            image = gr.Image(label="Image", height=IMAGE_HEIGHT, elem_id="detail-image", **PNG_OUT)
            lineage = gr.Markdown("", elem_id="detail-lineage")
            with gr.Row():
                rerun = gr.Button("Re-run", variant="primary", elem_id="rerun-button")
                load_into_draft = gr.Button("Load into Draft", elem_id="load-into-draft")
                send_to_img2img = gr.Button("Send to img2img", elem_id="gallery-to-img2img")
                favourite = gr.Button("☆ Favourite", elem_id="favourite-button")
                delete = gr.Button("Delete", variant="stop", elem_id="delete-button")
            with gr.Row(visible=False) as confirm_row:
                gr.Markdown("Delete this generation and its files? Its children stay.")
                confirm = gr.Button("Yes, delete", variant="stop", elem_id="confirm-delete")
                cancel = gr.Button("Keep it", elem_id="cancel-delete")
            status = gr.Markdown("", elem_id="gallery-status")
            recipe_json = gr.Code(label="Recipe", language="json", interactive=False, elem_id="detail-recipe")
    ids = gr.State([])
    cursors = gr.State([None])  # the `after` cursor of each page seen so far; the last is the current page
    filter_inputs = [query, kinds, model, lora, favourites, since, until]

    def load_page(cursor_stack, q, kinds_v, model_v, lora_v, fav_v, since_v, until_v):
        page = ctx.studio.gallery.search(q or None, limit=PAGE_SIZE, after=cursor_stack[-1],
                                         **_filters(kinds_v, model_v, lora_v, fav_v, since_v, until_v))
        number = len(cursor_stack)
        shown = f"Page {number} · {len(page.items)} shown" + (" · more older" if page.next_cursor else "")
        return page, {grid: [_thumbnail(g) for g in page.items], ids: [g.id for g in page.items],
                      page_label: shown if page.items else "Nothing found.", cursors: cursor_stack,
                      older: gr.update(interactive=page.next_cursor is not None),
                      newer: gr.update(interactive=number > 1)}

    @guarded
    def first_page(*values):
        return load_page([None], *values)[1]

    @guarded
    def older_page(cursor_stack, *values):
        page, update = load_page(cursor_stack, *values)
        if page.next_cursor is None:
            return update
        return load_page([*cursor_stack, page.next_cursor], *values)[1]

    @guarded
    def newer_page(cursor_stack, *values):
        return load_page(cursor_stack[:-1] or [None], *values)[1]

    def show(generation_id: int) -> dict:
        g = ctx.studio.gallery.get(generation_id)
        return {detail_id: g.id, image: str(g.image_path), lineage: lineage_text(ctx, g),
                recipe_json: _pretty(g.recipe), favourite: _star(g.favourite),
                confirm_row: gr.update(visible=False), status: ""}

    @guarded
    def select(page_ids, evt: gr.SelectData):
        if evt.index is None or not 0 <= evt.index < len(page_ids):
            return {}
        return show(page_ids[evt.index])

    def _current(generation_id) -> int:
        if generation_id is None:
            raise ValueError("Select a generation in the grid first.")
        return int(generation_id)

    @guarded
    def toggle_favourite(generation_id):
        g = ctx.studio.gallery.get(_current(generation_id))
        g = ctx.studio.gallery.set_favourite(g.id, not g.favourite)
        return {favourite: _star(g.favourite), status: "Added to favourites." if g.favourite else "Removed from favourites."}

    @guarded
    def ask_delete(generation_id):
        _current(generation_id)
        return gr.update(visible=True)

    @guarded
    def do_delete(generation_id, cursor_stack, *values):
        gid = _current(generation_id)
        ctx.studio.gallery.delete(gid)
        update = load_page(cursor_stack, *values)[1]
        update.update({detail_id: None, image: None, lineage: "", recipe_json: "", confirm_row: gr.update(visible=False),
                       status: f"Deleted #{gid}."})
        return update

    @guarded
    def load_draft(generation_id):
        recipe = ctx.studio.gallery.get(_current(generation_id)).recipe
        return {**bindings.values_from_recipe(controls, recipe), tabs: gr.Tabs(selected=draft_tab_id)}

    @guarded
    def import_png(path):
        if not path:
            return {}
        saved = ctx.studio.import_png(path)
        gr.Info(f"Imported as #{saved.id}; its Recipe is loaded into Draft.")
        return {**show(saved.id), **bindings.values_from_recipe(controls, saved.recipe), dropped: None}

    def rerun_job(generation_id, request: gr.Request):
        gid = guarded(_current)(generation_id)
        yield {status: f"Re-running #{gid}…"}
        work = lambda on_step, should_cancel: ctx.studio.rerun(gid, on_step=on_step, should_cancel=should_cancel)  # noqa: E731
        for event in ctx.jobs.stream(session_of(request), work):
            if isinstance(event, Step):
                yield {status: progress_text(event.info, f"Re-running #{gid}")}
            elif isinstance(event, Interrupted):
                yield {status: f"**{event.message}**"}
            elif isinstance(event, Done):
                yield {**show(event.result.id), status: f"Re-ran #{gid} → **#{event.result.id}**."}

    page_outputs = {grid, ids, page_label, cursors, older, newer}
    detail_outputs = {detail_id, image, lineage, recipe_json, favourite, confirm_row, status}
    for trigger in (search_button.click, query.submit, refresh.click, tab.select):
        trigger(first_page, inputs=filter_inputs, outputs=page_outputs, api_visibility="private")
    older.click(older_page, inputs=[cursors, *filter_inputs], outputs=page_outputs, api_visibility="private")
    newer.click(newer_page, inputs=[cursors, *filter_inputs], outputs=page_outputs, api_visibility="private")
    grid.select(select, inputs=ids, outputs=detail_outputs, api_visibility="private")
    favourite.click(toggle_favourite, inputs=detail_id, outputs={favourite, status}, api_visibility="private")
    delete.click(ask_delete, inputs=detail_id, outputs=confirm_row, api_visibility="private")
    cancel.click(lambda: gr.update(visible=False), outputs=confirm_row, queue=False, api_visibility="private")
    confirm.click(do_delete, inputs=[detail_id, cursors, *filter_inputs], outputs=page_outputs | detail_outputs,
                  api_visibility="private")
    load_into_draft.click(load_draft, inputs=detail_id, outputs=controls.inputs() | {tabs}, api_visibility="private")
    dropped.upload(import_png, inputs=dropped, outputs=detail_outputs | controls.inputs() | {dropped},
                   api_visibility="private")
    rerun.click(rerun_job, inputs=detail_id, outputs=detail_outputs, api_name="rerun", concurrency_id=GPU,
                concurrency_limit=1)
    return GalleryTab(detail_id, load_into_draft, send_to_img2img, refresh)


def _pretty(recipe) -> str:
    import json

    return json.dumps(recipe.to_dict(), indent=2, sort_keys=True)


def _star(favourite: bool) -> str:
    return "★ Favourite" if favourite else "☆ Favourite"
