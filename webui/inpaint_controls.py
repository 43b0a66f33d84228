"""Inpaint / outpaint controls of the Img2Img tab: an ImageEditor showing the source, where the user paints
(white) what to repaint, or an uploaded mask image; mask blur, whole picture or only the masked area,
padding, what the masked area starts from, and an outpaint border (left, top, right, bottom px).

The editor's background is only a picture to paint on (it follows the Source image); the source sent to the
engine is always the Source image's own file. The painted layers become the mask: every pixel a stroke
touched (any opacity) is white, the rest black, at the source's size.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image, ImageChops

from pipelines.recipe import INPAINT_AREAS, MAX_INPAINT_PADDING, MAX_MASK_BLUR, NO_EXPAND

AREA_CHOICES = [("Whole picture", "whole"), ("Only masked (at full size)", "masked")]
CONTENT_CHOICES = [("Original (re-noised)", "original"), ("Noise (new content)", "noise")]
SIDES = ("left", "top", "right", "bottom")


@dataclass
class InpaintControls:
    editor: gr.ImageEditor
    upload: gr.Image  # a mask image instead of (or besides) painting: white = repaint
    blur: gr.Slider
    area: gr.Radio
    padding: gr.Slider
    masked_content: gr.Radio
    expand: tuple[gr.Number, ...]  # outpaint: px added at the left, top, right, bottom
    model: gr.Dropdown  # a dedicated inpainting checkpoint, or "" for the base model

    def inputs(self) -> set[gr.components.Component]:
        fields = {self.blur, self.area, self.padding, self.masked_content, self.model}
        return {self.editor, self.upload, *fields, *self.expand}


BASE_MODEL = ("The base model", "")


def render(height: int, inpaint_models: list[str]) -> InpaintControls:
    with gr.Accordion("Inpaint / outpaint (optional)", open=True, elem_id="inpaint"):
        editor = gr.ImageEditor(
            label="Paint what to repaint (nothing painted: plain img2img)",
            type="pil",
            image_mode="RGBA",
            sources=[],  # the picture to paint on is the Source image, set from it
            transforms=[],
            brush=gr.Brush(colors=["#ffffff"], default_color="#ffffff", color_mode="fixed"),
            eraser=gr.Eraser(),
            layers=gr.LayerOptions(allow_additional_layers=False, layers=["Mask"]),
            format="png",
            height=height,
            buttons=[],
            elem_id="inpaint-editor",
        )
        with gr.Row():
            with gr.Column(min_width=200):
                upload = gr.Image(
                    label="…or upload a mask (white = repaint)",
                    type="filepath",
                    format="png",
                    image_mode="L",
                    sources=["upload", "clipboard"],
                    height=140,
                    elem_id="inpaint-mask-upload",
                )
                masked_content = gr.Radio(
                    CONTENT_CHOICES, value="original", label="Masked content", elem_id="masked-content"
                )
                model = gr.Dropdown(
                    [BASE_MODEL, *((name, name) for name in inpaint_models)],
                    value="",
                    label="Inpainting model (9-channel checkpoints in the models folder)",
                    interactive=bool(inpaint_models),
                    elem_id="inpaint-model",
                )
            with gr.Column(min_width=200):
                blur = gr.Slider(0, MAX_MASK_BLUR, value=4, step=1, label="Mask blur (px)", elem_id="mask-blur")
                area = gr.Radio(AREA_CHOICES, value="whole", label="Inpaint area", elem_id="inpaint-area")
                padding = gr.Slider(
                    0,
                    min(256, MAX_INPAINT_PADDING),
                    value=32,
                    step=8,
                    label="Only masked: padding (px)",
                    elem_id="inpaint-padding",
                )
        gr.Markdown("**Outpaint**: extend the canvas by (px, multiples of 8)")
        with gr.Row():
            expand = tuple(
                gr.Number(0, label=side.capitalize(), step=8, precision=0, min_width=80, elem_id=f"expand-{side}")
                for side in SIDES
            )
    return InpaintControls(
        editor=editor,
        upload=upload,
        blur=blur,
        area=area,
        padding=padding,
        masked_content=masked_content,
        expand=expand,
        model=model,
    )


def editor_value(source_path: str | None):
    """What the editor shows for a Source image: the image to paint on, no strokes yet."""
    return {"background": source_path, "layers": [], "composite": source_path} if source_path else None


def painted_mask(editor: dict | None, size: tuple[int, int]) -> Image.Image | None:
    """The strokes of every painted layer as a black-and-white mask of `size` (width, height), or None when
    nothing is painted."""
    layers = [layer for layer in (editor or {}).get("layers") or () if layer is not None]
    if not layers:
        return None
    mask = Image.new("L", layers[0].size, 0)
    for layer in layers:
        alpha = layer.convert("RGBA").getchannel("A")
        mask = ImageChops.lighter(mask, alpha.resize(mask.size, Image.Resampling.NEAREST))
    if mask.getbbox() is None:
        return None
    mask = mask.point(lambda a: 255 if a else 0)
    return mask if mask.size == size else mask.resize(size, Image.Resampling.NEAREST)


def mask_png(c: InpaintControls, values: dict, size: tuple[int, int]) -> bytes | None:
    """The mask for a source of `size` (width, height): the painted strokes, the uploaded mask, or both
    together; None for a plain img2img. An uploaded mask alone is passed as given (as `atelier img2img --mask`)."""
    painted, uploaded = painted_mask(values[c.editor], size), values[c.upload]
    if uploaded and painted is None:
        return Path(uploaded).read_bytes()
    if painted is None:
        return None
    if uploaded:
        with Image.open(uploaded) as image:
            painted = ImageChops.lighter(painted, image.convert("L").resize(size, Image.Resampling.LANCZOS))
    buffer = io.BytesIO()
    painted.save(buffer, format="PNG")
    return buffer.getvalue()


def request_fields(c: InpaintControls, values: dict) -> dict:
    """The GenerationRequest's masked_content and expand (checked there: multiples of 8, the canvas's size)."""
    expand = []
    for side, box in zip(SIDES, c.expand):
        value = values[box]
        if value is None or value == "" or float(value) != int(value):
            raise ValueError(f"outpaint {side}: enter a whole number of pixels, a multiple of 8 (got {value!r})")
        expand.append(int(value))
    return {"masked_content": values[c.masked_content] or "original", "expand": tuple(expand)}


def inpaints(mask: bytes | None, fields: dict) -> bool:
    """True when the image is inpainted or outpainted (so the mask settings apply)."""
    return mask is not None or fields["expand"] != NO_EXPAND


def chosen_model(c: InpaintControls, values: dict, offered: list[str]) -> str | None:
    """The inpainting checkpoint picked (None: the base model); only one of the list the server offers."""
    name = values[c.model] or None
    if name is not None and name not in offered:
        raise ValueError(f"inpainting model: {name!r} is not one of the inpainting checkpoints in the models folder")
    return name


def settings(c: InpaintControls, values: dict) -> dict:
    """The Recipe's inpaint fields (checked by the Recipe: a bad value names the field)."""
    area = values[c.area]
    if area not in INPAINT_AREAS:
        raise ValueError(f"inpaint area: must be one of {', '.join(INPAINT_AREAS)} (got {area!r})")
    return {"mask_blur": int(values[c.blur]), "inpaint_area": area, "inpaint_padding": int(values[c.padding])}
