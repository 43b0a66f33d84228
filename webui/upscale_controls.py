"""Upscale (hires fix) buttons and their options, shared by the Draft tab (the picked or refined image) and
the Gallery (the image on show): ×1.5, ×2 or a target size, the pixel upscaler (Lanczos or an ESRGAN-family
model in the models folder) and the img2img pass's denoise strength, in one compact accordion."""

from __future__ import annotations

import math
from dataclasses import dataclass

import gradio as gr

from pipelines.recipe import MAX_SIDE, MIN_SIDE
from webui.context import Context

DEFAULT_STRENGTH = 0.35  # atelier.upscale.DEFAULT_STRENGTH, as Studio.upscale's default
TO_SIZE = "size"


@dataclass
class UpscaleControls:
    x1_5: gr.Button
    x2: gr.Button
    to_size: gr.Button
    upscaler: gr.Dropdown
    width: gr.Number
    height: gr.Number
    strength: gr.Slider

    def buttons(self) -> dict[str, gr.Button]:
        """Each button by what it asks for: a scale ("1.5", "2") or TO_SIZE (the width and height boxes)."""
        return {"1.5": self.x1_5, "2": self.x2, TO_SIZE: self.to_size}

    def inputs(self) -> set[gr.components.Component]:
        return {self.upscaler, self.width, self.height, self.strength}


def render(ctx: Context, *, elem_prefix: str, width: int, height: int) -> UpscaleControls:
    """The three Upscale buttons in a row, the options in a closed accordion below them."""
    with gr.Row():
        x1_5 = gr.Button("Upscale ×1.5", size="sm", min_width=100, elem_id=f"{elem_prefix}upscale-1-5-button")
        x2 = gr.Button("Upscale ×2", size="sm", min_width=100, elem_id=f"{elem_prefix}upscale-2-button")
        to_size = gr.Button("Upscale to size", size="sm", min_width=100, elem_id=f"{elem_prefix}upscale-size-button")
    with gr.Accordion("Upscale options", open=False, elem_id=f"{elem_prefix}upscale-options"):
        with gr.Row():
            upscaler = gr.Dropdown(
                ctx.studio.upscalers(),
                value="lanczos",
                label="Pixel upscaler",
                elem_id=f"{elem_prefix}upscaler",
            )
            strength = gr.Slider(
                0.05,
                1.0,
                value=DEFAULT_STRENGTH,
                step=0.05,
                label="Denoise strength",
                elem_id=f"{elem_prefix}upscale-strength",
            )
        with gr.Row():  # no minimum/maximum: UpscaleRequest's check says what is allowed, keeping the outputs
            width_box = gr.Number(
                width * 2, label="Target width", step=8, precision=0, elem_id=f"{elem_prefix}upscale-width"
            )
            height_box = gr.Number(
                height * 2, label="Target height", step=8, precision=0, elem_id=f"{elem_prefix}upscale-height"
            )
    return UpscaleControls(
        x1_5=x1_5, x2=x2, to_size=to_size, upscaler=upscaler, width=width_box, height=height_box, strength=strength
    )


def upscale_options(c: UpscaleControls, values: dict, how: str) -> dict:
    """Studio.upscale's keyword arguments for a press of the `how` button (a scale, or TO_SIZE)."""
    options = {"upscaler": values[c.upscaler] or "lanczos", "strength": float(values[c.strength])}
    if how != TO_SIZE:
        return options | {"scale": float(how)}
    return options | {"width": _side(values[c.width], "width"), "height": _side(values[c.height], "height")}


def describe(options: dict) -> str:
    """What an upscale press asks for, for the status line ("×2, lanczos", "to 512×384, 4x-UltraSharp")."""
    size = f"×{options['scale']:g}" if "scale" in options else f"to {options['width']}×{options['height']}"
    return f"{size}, {options['upscaler']}"


def _side(value, name: str) -> int:
    """A Target width / height box's value, checked here so the message names the box (UpscaleRequest checks
    it again with the same limits, as for the CLI, but calls it plain `width`)."""
    field = f"Upscale target {name}"
    if value is None or value == "" or not math.isfinite(float(value)) or float(value) != int(value):
        raise ValueError(f"{field}: must be a whole number, a multiple of 8 (got {value!r})")
    if not MIN_SIDE <= int(value) <= MAX_SIDE or int(value) % 8:
        raise ValueError(f"{field}: must be a multiple of 8 from {MIN_SIDE} to {MAX_SIDE} (got {int(value)})")
    return int(value)
