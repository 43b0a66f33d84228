"""Gallery: search generations, inspect Recipe and lineage; re-run, refine, upscale, vary, reload, favourite, delete.

Three groups of components (filters, the page grid, the detail pane), each a dataclass; handlers take
their inputs as a named set (a {component: value} dict), never a positional list. The detail pane's
actions are wired in webui/gallery_actions.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from atelier.studio import KINDS, GalleryFilters, Generation
from webui import bindings, upscale_controls
from webui.context import Context
from webui.draft_tab import IMAGE_HEIGHT, PNG_OUT, compare_slider
from webui.gallery_actions import LOAD_LABELS, current, load_label, reported_in, star, wire_actions
from webui.jobs import guarded

PAGE_SIZE = 24
QUIET = dict(api_visibility="private")


def _components(group) -> set:
    """Every component (and layout, e.g. a Row shown or hidden) of a group dataclass."""
    return {getattr(group, f.name) for f in fields(group) if isinstance(getattr(group, f.name), gr.blocks.Block)}


@dataclass
class FilterControls:
    query: gr.Textbox
    kinds: gr.Dropdown
    model: gr.Textbox
    lora: gr.Textbox
    favourites: gr.Checkbox
    since: gr.Textbox
    until: gr.Textbox
    tag: gr.Dropdown  # the tags in use (refreshed with each page), "" for any

    def filters(self, values: dict) -> GalleryFilters:
        return GalleryFilters(
            kinds=tuple(values[self.kinds] or ()),
            model=values[self.model],
            lora=values[self.lora],
            favourites_only=bool(values[self.favourites]),
            since=values[self.since],
            until=values[self.until],
            tag=values[self.tag],
        )


@dataclass
class PageControls:
    grid: gr.Gallery
    ids: gr.State  # the ids shown, in grid order
    cursors: gr.State  # the `after` cursor of each page seen so far; the last is the current page
    label: gr.Markdown
    newer: gr.Button
    older: gr.Button


@dataclass
class DetailControls:
    id: gr.Textbox  # the id of the generation shown ("" for none)
    image: gr.Image
    lineage: gr.Markdown
    recipe: gr.Code
    favourite: gr.Button
    load: gr.Button  # its label names the tab it opens for the entry on show
    confirm_row: gr.Row
    status: gr.Markdown
    tags: gr.Textbox  # comma-separated, saved on Enter or when the box loses focus
    compare_with: gr.Textbox  # another generation's id, to see side by side on the slider
    compare: gr.ImageSlider  # this | the other (after a re-run: the original | the re-run)
    vary_subtle: gr.Button  # usable for an image with a kept latent (a draft)
    vary_strong: gr.Button


@dataclass
class EditTabs:
    """Where Load into Draft puts what a recipe holds besides the Draft controls."""

    tabs: gr.Tabs
    img2img: Any  # img2img_tab.Img2ImgTab: source, parent, size, strength, inpaint
    control_units: list  # controlnet_tab.Unit: image, preprocessor, model, scale, start, end

    def outputs(self) -> set:
        units = {
            getattr(u, name)
            for u in self.control_units
            for name in ("image", "preprocessor", "model", "scale", "start", "end")
        }
        inpaint = self.img2img.inpaint.inputs() - {self.img2img.inpaint.editor}  # the editor follows the source
        return {self.tabs, self.img2img.source, self.img2img.parent, self.img2img.strength, *inpaint, *units}


@dataclass
class GalleryTab:
    detail_id: gr.Textbox  # the id of the generation shown in the detail pane ("" for none)
    load_into_draft: gr.Button
    send_to_img2img: gr.Button
    refresh: gr.Button


def _thumbnail(g: Generation, placeholder: Path) -> tuple[str, str]:
    """The grid's picture and caption; a row whose thumbnail is not on this machine's disk (deleted, or files
    on shared storage not there yet) shows a placeholder saying so instead of failing the whole page."""
    star = "★ " if g.favourite else ""
    if not g.thumbnail_path.is_file():
        return str(_missing_picture(placeholder)), f"{star}#{g.id} {g.kind} · ⚠ files missing on this machine"
    return str(g.thumbnail_path), f"{star}#{g.id} {g.kind} · seed {g.recipe.seed}"


def _missing_picture(path: Path) -> Path:
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64), (96, 96, 96)).save(path, "PNG")
    return path


def _label(g: Generation) -> str:
    return f"#{g.id} ({g.kind})"


def lineage_text(ctx: Context, g: Generation) -> str:
    lineage = ctx.studio.lineage(g.id)
    chain = " ← ".join([f"**{_label(g)}**", *(_label(a) for a in lineage.ancestors)])
    made = ", ".join(_label(c) for c in lineage.children) or "none yet"
    batch = f"  \nBatch: seeds {', '.join(map(str, g.recipe.batch_seeds))}" if g.recipe.batch_seeds else ""
    missing = "  \n⚠ Files of this generation are missing from disk." if g.files_missing else ""
    return f"Lineage: {chain}  \nMade from it: {made}{batch}{missing}"


def _render_filters(ctx: Context) -> tuple[FilterControls, gr.Button, gr.Button]:
    with gr.Row():
        query = gr.Textbox(
            label="Search prompts", placeholder="words from the prompt or negative", scale=4, elem_id="gallery-search"
        )
        search = gr.Button("Search", scale=1, elem_id="gallery-search-button")
        refresh = gr.Button("Refresh", scale=1, elem_id="gallery-refresh")
    with gr.Accordion("Filters", open=False), gr.Row():
        kinds = gr.Dropdown(list(KINDS), value=[], multiselect=True, label="Kind", elem_id="gallery-kinds")
        model = gr.Textbox(label="Model", placeholder=ctx.defaults.models.base, elem_id="gallery-model")
        lora = gr.Textbox(label="LoRA", elem_id="gallery-lora")
        favourites = gr.Checkbox(False, label="Favourites only", elem_id="gallery-favourites")
        since = gr.Textbox(label="Since", placeholder="2025-01-31", elem_id="gallery-since")
        until = gr.Textbox(label="Until (before)", placeholder="2025-02-28", elem_id="gallery-until")
        tag = gr.Dropdown(tag_choices(ctx), value="", label="Tag", allow_custom_value=True, elem_id="gallery-tag")
    controls = FilterControls(
        query=query, kinds=kinds, model=model, lora=lora, favourites=favourites, since=since, until=until, tag=tag
    )
    return controls, search, refresh


def _render_page() -> PageControls:
    grid = gr.Gallery(
        label="Generations",
        columns=6,
        height="auto",
        allow_preview=False,
        buttons=[],
        format="png",
        elem_id="gallery-grid",
        interactive=False,
    )
    with gr.Row():
        newer = gr.Button("← Newer", size="sm", elem_id="gallery-newer")
        label = gr.Markdown("", elem_id="gallery-page")
        older = gr.Button("Older →", size="sm", elem_id="gallery-older")
    return PageControls(grid=grid, ids=gr.State([]), cursors=gr.State([None]), label=label, newer=newer, older=older)


def _render_detail(ctx: Context) -> tuple[DetailControls, dict]:
    # A text box, not a gr.Number: Gradio's number box shows (and sends) 0 while nothing is selected.
    detail_id = gr.Textbox("", label="Selected", max_lines=1, interactive=False, elem_id="detail-id")
    image = gr.Image(label="Image", height=IMAGE_HEIGHT, elem_id="detail-image", **PNG_OUT)
    lineage = gr.Markdown("", elem_id="detail-lineage")
    with gr.Row():
        buttons = {
            "rerun": gr.Button("Re-run", variant="primary", elem_id="rerun-button"),
            "refine": gr.Button("Refine (drafts)", elem_id="gallery-refine-button"),
            "load": gr.Button(LOAD_LABELS["draft"], elem_id="load-into-draft"),
            "img2img": gr.Button("Send to img2img", elem_id="gallery-to-img2img"),
            "favourite": gr.Button("☆ Favourite", elem_id="favourite-button"),
            "delete": gr.Button("Delete", variant="stop", elem_id="delete-button"),
        }
    with gr.Row():  # new drafts of a draft: its noise slerped towards variation seeds (Studio.vary)
        buttons["vary_subtle"] = gr.Button("Vary (subtle)", size="sm", interactive=False, elem_id="gallery-vary-subtle")
        buttons["vary_strong"] = gr.Button("Vary (strong)", size="sm", interactive=False, elem_id="gallery-vary-strong")
    # hires fix: a pixel upscale, then img2img through base → refiner (Studio.upscale)
    buttons["upscale"] = upscale_controls.render(
        ctx, elem_prefix="", width=ctx.defaults.width, height=ctx.defaults.height
    )
    with gr.Row(visible=False) as confirm_row:
        gr.Markdown("Delete this generation and its files? Its children stay.")
        buttons["confirm"] = gr.Button("Yes, delete", variant="stop", elem_id="confirm-delete")
        buttons["cancel"] = gr.Button("Keep it", elem_id="cancel-delete")
    status = gr.Markdown("", elem_id="gallery-status")
    tags = gr.Textbox(
        label="Tags (comma-separated; Enter saves)", placeholder="portrait, keep", max_lines=1, elem_id="detail-tags"
    )
    compare_with = gr.Textbox(
        label="Compare with # (Enter)", placeholder="another id", max_lines=1, elem_id="gallery-compare-with"
    )
    compare = compare_slider("Compare: this | other (drag)", "gallery-compare")
    recipe = gr.Code(label="Recipe", language="json", interactive=False, elem_id="detail-recipe")
    detail = DetailControls(
        id=detail_id,
        image=image,
        lineage=lineage,
        recipe=recipe,
        favourite=buttons["favourite"],
        load=buttons["load"],
        confirm_row=confirm_row,
        status=status,
        tags=tags,
        compare_with=compare_with,
        compare=compare,
        vary_subtle=buttons["vary_subtle"],
        vary_strong=buttons["vary_strong"],
    )
    return detail, buttons


def render(ctx: Context, controls: bindings.GenerationControls, edit: EditTabs, tab: gr.Tab) -> GalleryTab:
    """The tab's contents; `tab` is the Tab they sit in (opening it shows the newest page)."""
    filters, search, refresh = _render_filters(ctx)
    with gr.Row():
        with gr.Column(scale=3):
            page = _render_page()
            dropped = gr.File(
                label="Drop an Atelier or A1111 PNG to load its Recipe",
                file_types=[".png"],
                type="filepath",
                elem_id="png-drop",
            )
        with gr.Column(scale=2):
            detail, buttons = _render_detail(ctx)
    pages = _PageHandlers(ctx, filters, page)
    for trigger in (search.click, filters.query.submit, refresh.click, tab.select, filters.tag.input):
        trigger(pages.first, inputs=_components(filters), outputs=pages.outputs, **QUIET)
    page.older.click(pages.older_page, inputs=pages.inputs, outputs=pages.outputs, **QUIET)
    page.newer.click(pages.newer_page, inputs=pages.inputs, outputs=pages.outputs, **QUIET)
    shown = _DetailHandlers(ctx, detail)
    page.grid.select(shown.select, inputs=page.ids, outputs=shown.outputs, **QUIET)
    detail.compare_with.submit(
        reported_in(detail.status)(shown.compare),
        inputs={detail.id, detail.compare_with},
        outputs={detail.compare, detail.status},
        **QUIET,
    )
    wire_actions(ctx, shown, buttons, pages, controls, edit, dropped)
    return GalleryTab(
        detail_id=detail.id, load_into_draft=buttons["load"], send_to_img2img=buttons["img2img"], refresh=refresh
    )


def tag_choices(ctx: Context) -> list[tuple[str, str]]:
    """The Tag filter's choices: any tag, then every tag some generation has."""
    return [("(any tag)", ""), *((t, t) for t in ctx.studio.tags_in_use())]


def nothing_found(query: str | None) -> str:
    """The text "Nothing found.", with a hint when the last word of a plain query could be the start of a longer one:
    search matches whole words (FTS5 and PostgreSQL alike), `word*` the words starting with it."""
    words = (query or "").split()
    last = words[-1] if words else ""
    if not last.isalnum() or last.upper() in ("AND", "OR", "NOT"):
        return "Nothing found."
    return f"Nothing found. Search matches whole words: `{last}*` finds the words that start with {last!r}."


class _PageHandlers:
    """Pages of search results, newest first, with keyset cursors."""

    def __init__(self, ctx: Context, filters: FilterControls, page: PageControls) -> None:
        self.ctx, self.filters, self.page = ctx, filters, page
        self.inputs = _components(filters) | {page.cursors}
        self.outputs = {page.grid, page.ids, page.label, page.cursors, page.older, page.newer, filters.tag}

    def load(self, cursor_stack: list, values: dict):
        p = self.page
        found = self.ctx.studio.search(
            values[self.filters.query] or None, self.filters.filters(values), limit=PAGE_SIZE, after=cursor_stack[-1]
        )
        number = len(cursor_stack)
        shown = f"Page {number} · {len(found.items)} shown" + (" · more older" if found.next_cursor else "")
        return found, {
            p.grid: [_thumbnail(g, self.ctx.studio.downloads_folder() / "missing-file.png") for g in found.items],
            p.ids: [g.id for g in found.items],
            p.label: shown if found.items else nothing_found(values[self.filters.query]),
            p.cursors: cursor_stack,
            p.older: gr.update(interactive=found.next_cursor is not None),
            p.newer: gr.update(interactive=number > 1),
            self.filters.tag: gr.update(choices=tag_choices(self.ctx)),  # a tag just added or taken off
        }

    @guarded
    def first(self, values: dict):
        return self.load([None], values)[1]

    @guarded
    def older_page(self, values: dict):
        cursor_stack = values[self.page.cursors]
        found, update = self.load(cursor_stack, values)
        if found.next_cursor is None:
            return update
        return self.load([*cursor_stack, found.next_cursor], values)[1]

    @guarded
    def newer_page(self, values: dict):
        return self.load(values[self.page.cursors][:-1] or [None], values)[1]

    def current(self, values: dict):
        """The page on show again (after a delete)."""
        return self.load(values[self.page.cursors], values)[1]


class _DetailHandlers:
    def __init__(self, ctx: Context, detail: DetailControls) -> None:
        self.ctx, self.detail = ctx, detail
        self.outputs = _components(detail)
        left_out = self.outputs - set(self.cleared(""))
        if left_out:  # a part added to the pane must be cleared too, or a deleted entry stays on show
            raise RuntimeError(f"_DetailHandlers.cleared leaves out {sorted(c.elem_id or '?' for c in left_out)}")

    def show(self, generation_id: int) -> dict:
        d = self.detail
        g = self.ctx.studio.get(generation_id)
        varies = g.latent_path is not None  # a draft (its noisy latent kept): Vary makes new drafts of it
        return {
            d.id: str(g.id),
            d.image: str(self.ctx.studio.download_path(g.id)),
            d.lineage: lineage_text(self.ctx, g),
            d.recipe: json.dumps(g.recipe.to_dict(), indent=2),  # the Recipe's order: model, prompt, seed first
            d.favourite: star(g.favourite),
            d.load: load_label(g.recipe),
            d.confirm_row: gr.update(visible=False),
            d.status: "",
            d.tags: ", ".join(g.tags),
            d.compare: None,
            d.vary_subtle: gr.update(interactive=varies),
            d.vary_strong: gr.update(interactive=varies),
        }

    def compare(self, values: dict) -> dict:
        """This generation and another, side by side on the slider."""
        this = current(values[self.detail.id])
        other = str(values[self.detail.compare_with] or "").strip().lstrip("#")
        if not other.isdigit():
            raise ValueError(f"Compare with: type another generation's number, like 12 (got {other!r})")
        path = self.ctx.studio.download_path
        return {
            self.detail.compare: (str(path(this)), str(path(int(other)))),
            self.detail.status: f"#{this} | #{other}",
        }

    @guarded
    def select(self, page_ids, evt: gr.SelectData):
        if evt.index is None or not 0 <= evt.index < len(page_ids):
            return {}
        return self.show(page_ids[evt.index])

    def cleared(self, message: str) -> dict:
        """Nothing on show (after a delete): every part of the pane, so none still shows the entry that was."""
        d = self.detail
        update = {
            d.id: "",
            d.image: None,
            d.lineage: "",
            d.recipe: "",
            d.favourite: star(False),
            d.load: LOAD_LABELS["draft"],
            d.confirm_row: gr.update(visible=False),
            d.status: message,
            d.tags: "",
            d.compare_with: "",
            d.compare: None,
            d.vary_subtle: gr.update(interactive=False),
            d.vary_strong: gr.update(interactive=False),
        }
        return update
