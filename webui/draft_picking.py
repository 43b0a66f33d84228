"""The Draft tab's grid and its pick: the picked draft (what Refine, Re-render, Vary and ♻ act on) and the
image on show (the picked draft, or the newest result made from it: what Upscale and Send act on).

One rule: these act on exactly what the page shows. A new grid (a batch, Vary's drafts) picks nothing and
highlights nothing; while a job fills the grid with previews nothing is picked, and a click on a preview
picks nothing (a preview is no saved draft); a job interrupted or failed brings back the grid before it,
with its ids, still unpicked. A typed draft number moves the highlight to it (or off the grid)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui import bindings
from webui.context import Context
from webui.jobs import Done, Interrupted, Step, guarded, progress_text


@dataclass
class GridOutputs:
    status: gr.Markdown
    drafts: gr.Gallery
    batch: gr.State  # the grid's saved drafts as [id, image path, caption] rows, in grid order ([] = previews)
    shown: gr.State  # the gallery id of the image on show: the newest result made from the pick, else the pick
    selected: gr.Textbox
    before: gr.Image
    after: gr.Image
    compare: gr.ImageSlider
    grid: gr.Image  # a sweep's cells side by side, labelled; hidden otherwise
    on_show: gr.Markdown  # which image Upscale and Send use

    def pick_outputs(self) -> set:
        """What a pick changes: the Picked box, the image on show and the panels showing it."""
        return {self.selected, self.shown, self.before, self.after, self.compare}


def caption(saved, label: str = "") -> str:
    """Id and seed, and the sweep value of a cell, or the prompt a dynamic prompt gave."""
    label = label or (saved.recipe.prompt if saved.recipe.prompt_template else "")
    return f"#{saved.id} · seed {saved.recipe.seed}" + (f" · {label}" if label else "")


def picked_id(value) -> int:
    """The gallery id in the Picked draft box (clicked or typed)."""
    text = str(value if value is not None else "").strip().lstrip("#")
    if not text:
        raise ValueError("Pick a draft first: click one of the drafts (or type a draft's number).")
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"Picked draft: type a draft's number, like 12 (got {text!r})")
    return int(text)


def unpicked(out: GridOutputs) -> dict:
    """Nothing picked, nothing on show."""
    return {out.selected: "", out.shown: None, out.before: None, out.after: None, out.compare: None}


def grid_update(out: GridOutputs, rows: list) -> dict:
    """The grid showing these saved drafts, none highlighted (the browser keeps a highlight by position
    across new images otherwise)."""
    images = [(path, text) for _, path, text in rows]
    return {out.drafts: gr.Gallery(value=images, selected_index=None), out.batch: rows}


def batch_shown(out: GridOutputs, saved: list, how: str, labels: tuple[str, ...] = ()) -> dict:
    """The status line and the grid for a batch of saved drafts (unpicked)."""
    ids = f"id {saved[0].id}" if len(saved) == 1 else f"ids {saved[0].id}–{saved[-1].id}"
    labels = labels or ("",) * len(saved)
    rows = [[s.id, str(s.image), caption(s, label)] for s, label in zip(saved, labels)]
    status = f"{len(saved)} draft{'s' if len(saved) > 1 else ''} {how} ({ids}). Click one, then **Refine**."
    return {out.status: status, **grid_update(out, rows)}


def stream_into_grid(
    out: GridOutputs, events: Iterator, *, doing: str, previous: list, done: Callable[[Any], dict], first: dict
) -> Iterator[dict]:
    """Page updates for a job that fills the grid (Draft, Vary) from `events` (GpuJobs.stream, not started
    yet): unpicked from the start, its previews (no ids), then `done(result)`, unpicked. Interrupted or
    failed, the grid of `previous` rows comes back (the error itself: keeps_outputs)."""
    yield {**first, **unpicked(out), **grid_update(out, []), out.status: f"{doing}…"}
    back, result = grid_update(out, previous), None
    try:
        for event in events:
            if isinstance(event, Step):
                yield {out.status: progress_text(event.info, doing), out.drafts: event.info.images()}
            elif isinstance(event, Interrupted):
                yield {**back, out.status: f"**{event.message}** — nothing was saved{_shown_again(previous)}."}
                return
            elif isinstance(event, Done):
                result = event.result
    except Exception:
        yield back
        raise
    yield {**done(result), **unpicked(out)}


def _shown_again(rows: list) -> str:
    if not rows:
        return ""
    ids = f"#{rows[0][0]}" if len(rows) == 1 else f"#{rows[0][0]}–#{rows[-1][0]}"
    return f"; the drafts shown are the ones before it ({ids})"


def on_show_text(shown, selected) -> str:
    if shown is None:
        return "Click a draft to pick it."
    picked = str(selected or "").strip().lstrip("#")
    if picked == str(shown):
        return f"**Upscale** and **Send** use the picked draft **#{shown}**."
    made_from = f", the newest image made from the picked draft #{picked}" if picked else ""
    return f"**Upscale** and **Send** use **#{shown}**{made_from} (on the right)."


def wire_on_show(out: GridOutputs, send_button: gr.Button) -> None:
    """The line above the Upscale buttons and the Send button's label name the image on show."""

    def describe(shown, selected) -> dict:
        label = f"Send #{shown} to img2img" if shown is not None else "Send to img2img"
        return {out.on_show: on_show_text(shown, selected), send_button: gr.Button(value=label)}

    out.shown.change(
        describe,
        inputs=[out.shown, out.selected],
        outputs={out.on_show, send_button},
        queue=False,
        show_progress="hidden",
        api_visibility="private",
    )


def wire_picking(ctx: Context, controls: bindings.GenerationControls, out: GridOutputs, reuse_seed: gr.Button) -> None:
    """Click a draft to pick it (or type its number); ♻ reuses its seed."""

    @guarded
    def pick(rows: list, evt: gr.SelectData):
        if evt.index is None or not 0 <= evt.index < len(rows):
            gr.Info("That is a preview of a draft not saved yet: pick one once the drafts are done.", title="Preview")
            return {out.drafts: gr.Gallery(selected_index=None)}
        draft_id = rows[evt.index][0]
        image = ctx.studio.download_path(draft_id)
        # A refined image of another draft no longer belongs beside this one.
        return {
            out.selected: str(draft_id),
            out.shown: draft_id,
            out.before: str(image),
            out.after: None,
            out.compare: None,
            out.status: f"Picked draft #{draft_id}. **Refine** it, or re-render it at more steps.",
        }

    def typed(rows: list, text: str) -> dict:
        """A typed number is the pick: highlighted if it is in the grid, on show (its image once Refined)."""
        try:
            draft_id = picked_id(text)
        except ValueError:
            draft_id = None
        ids = [row[0] for row in rows]
        index = ids.index(draft_id) if draft_id in ids else None
        return {
            out.drafts: gr.Gallery(selected_index=index),
            out.shown: draft_id,
            out.before: None,
            out.after: None,
            out.compare: None,
        }

    @guarded
    def reuse(draft_id):
        seed = ctx.studio.get(picked_id(draft_id)).recipe.seed
        return {controls.seed: seed, controls.random_seed: False, out.status: f"Seed {seed} set; **Draft** to use it."}

    out.drafts.select(
        pick,
        inputs=out.batch,
        outputs={out.selected, out.shown, out.before, out.after, out.compare, out.status, out.drafts},
        api_visibility="private",
    )
    out.selected.input(
        typed,
        inputs=[out.batch, out.selected],
        outputs={out.drafts, out.shown, out.before, out.after, out.compare},
        show_progress="hidden",  # in the queue: a State set outside it would not fire shown.change
        trigger_mode="always_last",
        api_visibility="private",
    )
    reuse_seed.click(
        reuse, inputs=out.selected, outputs={controls.seed, controls.random_seed, out.status}, api_visibility="private"
    )
