"""What an edit tab (Img2Img, ControlNet) will be made with: the Draft & Refine controls it shares.

The edit tabs have no prompt box of their own, so each shows a read-only summary of the shared prompt,
negative prompt, LoRAs and settings, kept up to date as those controls change (and on page load and
tab select), with a button that goes to the Draft & Refine tab to edit them. User text is escaped:
a prompt such as `<b>x</b>` shows as typed.
"""

from __future__ import annotations

import html

import gradio as gr

from pipelines.prompt_syntax import extract_lora_tokens
from webui import bindings

DRAFT_TAB = "draft"  # the id app.py gives the Draft & Refine tab
PROMPT_SHOWN = 400  # characters of a long prompt shown; the rest is cut with "…"
CSS = """
.shared-summary { width: 100%; box-sizing: border-box; font-size: 0.9em; line-height: 1.35; padding: 6px 8px; border-radius: 6px;
  border: 1px solid var(--border-color-primary); background: var(--background-fill-secondary); }
.shared-summary .shared-text { white-space: pre-wrap; word-break: break-word; font-family: var(--font-mono); }
.shared-summary .shared-none { opacity: 0.7; font-style: italic; }
"""


def _text(value: str | None, empty: str) -> str:
    text = (value or "").strip()
    if not text:
        return f'<span class="shared-none">{html.escape(empty)}</span>'
    if len(text) > PROMPT_SHOWN:
        text = text[:PROMPT_SHOWN] + "…"
    return f'<span class="shared-text">{html.escape(text)}</span>'


def _loras(controls: bindings.GenerationControls, values: dict) -> str:
    """The LoRAs picked in the slots and by `<lora:…>` tokens in the prompt (a token's weight wins)."""
    picked = {
        values[name]: values[weight]
        for name, weight in zip(controls.lora_names, controls.lora_weights, strict=True)
        if values[name] != bindings.NO_LORA and values[name]
    }
    try:
        picked |= dict(extract_lora_tokens(values[controls.prompt] or "")[1])
    except ValueError as error:
        return f"⚠ {html.escape(str(error))}"
    if not picked:
        return "none"
    return ", ".join(f"{html.escape(str(name))} ×{float(weight):g}" for name, weight in picked.items())


def summary_html(controls: bindings.GenerationControls, values: dict, *, size_here: bool) -> str:
    """The summary of the shared controls' `values`; `size_here`: the tab has its own size controls."""
    seed = "random" if values[controls.random_seed] else html.escape(str(values[controls.seed]))
    if size_here:
        size = "set on this tab"
    else:
        size = f"{html.escape(str(values[controls.width]))}×{html.escape(str(values[controls.height]))}"
    settings = (
        f"Steps {html.escape(str(values[controls.steps]))} · Sampler {html.escape(str(values[controls.scheduler]))}"
        f" · Guidance {html.escape(str(values[controls.guidance]))} · Seed {seed} · Size {size}"
    )
    rows = [
        "<b>Made with the Draft &amp; Refine settings</b>",
        f"<div>Prompt: {_text(values[controls.prompt], 'none: set one on Draft & Refine')}</div>",
    ]
    if (values[controls.negative] or "").strip():
        rows.append(f"<div>Negative: {_text(values[controls.negative], '')}</div>")
    rows += [f"<div>LoRA: {_loras(controls, values)}</div>", f"<div>{settings}</div>"]
    return f'<div class="shared-summary">{"".join(rows)}</div>'


def _summary_inputs(controls: bindings.GenerationControls) -> set:
    shown = (controls.prompt, controls.negative, controls.steps, controls.scheduler, controls.guidance)
    return {*shown, controls.random_seed, controls.seed, controls.width, controls.height}.union(
        controls.lora_names, controls.lora_weights
    )


def render(
    controls: bindings.GenerationControls, *, elem_prefix: str, size_here: bool, tabs: gr.Tabs, tab: gr.Tab
) -> gr.HTML:
    """The summary and its Edit button (to the Draft & Refine tab of `tabs`), wired to follow the shared
    controls; `tab`: the tab it sits in (refreshed when selected)."""
    summary = gr.HTML(elem_id=f"{elem_prefix}shared-summary", css_template=CSS, js_on_load=None)
    with gr.Row():
        edit = gr.Button("✎ Edit prompt", size="sm", scale=0, min_width=120, elem_id=f"{elem_prefix}edit-prompt")

    def show(values: dict) -> str:
        return summary_html(controls, values, size_here=size_here)

    quiet = dict(queue=False, show_progress="hidden", api_visibility="private")
    inputs = _summary_inputs(controls)
    gr.on(None, show, inputs=inputs, outputs=summary, **quiet)  # every change of them, and page load
    tab.select(show, inputs=inputs, outputs=summary, **quiet)
    edit.click(lambda: gr.Tabs(selected=DRAFT_TAB), outputs=tabs, **quiet)
    return summary
