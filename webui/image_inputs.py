"""Image fields that take uploads (the Img2Img source, the inpaint mask, the ControlNet units, any later one):
a file Atelier cannot read as an image is refused as it arrives — a warning naming the field, the file and the
formats Atelier reads, and the field emptied — so no later click meets it and nothing else on screen changes.
A request that still carries one (an API client) is refused in the same words (`refused_request`, used
by webui/jobs.py's request_error). Messages name the user's file, never the server's upload folder."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, UnidentifiedImageError

from pipelines.recipe import MAX_IMAGE_PIXELS

READABLE = "PNG, JPEG, WebP, BMP, GIF or TIFF"
UNREADABLE = (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError)


def refusal(label: str, name: str | None, error: BaseException) -> str:
    """Why the image field `label` refuses the file `name` (its own name, not a server path), in words."""
    file = f"“{Path(name).name}”" if name else "the file"
    if isinstance(error, Image.DecompressionBombError):
        side = math.isqrt(MAX_IMAGE_PIXELS)
        return f"{label}: {file} is too large: Atelier reads images of at most {side}×{side} pixels."
    return f"{label}: {file} is not an image Atelier can read. Use a {READABLE} image."


def why_unreadable(path: str | Path) -> BaseException | None:
    """The error reading the image at `path` in full raises (None: Atelier can read it), as the tabs will."""
    try:
        with Image.open(path) as image:
            image.load()  # a header alone can be right over a truncated or damaged body
    except UNREADABLE as error:
        return error
    return None


def is_image_field(component: Any) -> bool:
    return isinstance(component, (gr.Image, gr.ImageEditor))


def check_every_upload(demo: gr.Blocks) -> None:
    """Call inside `demo`'s Blocks, once every tab is built: each image field that some event reads and that
    takes uploads checks the file it receives (see the module's docstring)."""
    read = {id(c) for fn in demo.fns.values() for c in fn.inputs}
    for block in list(demo.blocks.values()):
        takes_uploads = {"upload", "clipboard"} & set(getattr(block, "sources", None) or ())
        if isinstance(block, gr.Image) and block.interactive is not False and takes_uploads and id(block) in read:
            block.upload(
                _checker(block.label or "Image"),
                inputs=block,
                outputs=block,
                preprocess=False,  # the file as uploaded: Gradio's own reading would fail before we could say why
                concurrency_limit=None,  # in the queue (a warning reaches the page only from there), never waiting
                show_progress="hidden",
                api_visibility="private",
            )


def _checker(label: str):
    def check(uploaded: dict | None):
        path = (uploaded or {}).get("path")
        error = why_unreadable(path) if path else None
        if error is None:
            return gr.skip()
        name = uploaded.get("orig_name") or Path(path).name
        gr.Warning(html.escape(refusal(label, name, error)), title="Not an image Atelier can read")
        return None  # the field is emptied: nothing unreadable waits in it for the next click

    return check


def refused_request(label: str, error: BaseException) -> gr.Error:
    """The error for a request whose image field `label` held a file Gradio could not read (`error`, Pillow's):
    the file named by its own name (the last part of the upload path Pillow quotes), never by that path."""
    quoted = re.search(r"'([^']+)'", str(error))
    return gr.Error(
        html.escape(refusal(label, Path(quoted[1]).name if quoted else None, error)),
        title="Not an image Atelier can read",
        print_exception=False,
    )
