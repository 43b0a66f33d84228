"""Outpainting: the source on a larger canvas, its new border filled and inpainted. Pillow only (no torch).

`Recipe.expand` is (left, top, right, bottom) px; the recipe's width/height are the whole canvas, and the
source is fitted (pipelines.sizes.fit_to_bucket) to the canvas less the border, placed at (left, top).

- The fill (what the VAE sees in the border): every border strip stretched from the source's edge row or
  column (the corners from its corner pixels), then Gaussian-blurred, with the source pasted back unblurred.
  With masked content "original" the model starts from the source's colours running outwards (A1111's
  "fill"), so moderate strengths continue the picture; "noise" ignores the fill and paints anew.
- The mask: white on the border and OVERLAP px into the source on each expanded side (so the seam is
  repainted and blends), joined with a user mask (drawn on the source, fitted like it). After the mask blur
  the border itself is made fully white again: it is wholly painted, only the seam inside the source is
  blended, and outside the blurred mask the source's pixels are kept (inpaint.InpaintArea.composite).
"""

from __future__ import annotations

from PIL import Image, ImageChops, ImageFilter

from pipelines.recipe import Recipe

Box = tuple[int, int, int, int]  # left, top, right, bottom
Expand = tuple[int, int, int, int]  # left, top, right, bottom px

OVERLAP = 8  # px of the source next to an expanded side that are repainted with the border
FILL_BLUR = 16  # px: softens the stretched strips into colour fields


def source_box(recipe: Recipe) -> Box:
    """Where the fitted source lies on the recipe's canvas (the whole canvas when nothing is expanded)."""
    left, top, right, bottom = recipe.expand
    return left, top, recipe.width - right, recipe.height - bottom


def extend_canvas(fitted: Image.Image, expand: Expand) -> Image.Image:
    """The canvas: `fitted` (RGB) at (left, top), the border filled from its edges (see the module docstring)."""
    left, top, right, bottom = expand
    width, height = fitted.size
    nearest = Image.Resampling.NEAREST
    row = Image.new("RGB", (left + width + right, height))
    row.paste(fitted, (left, 0))
    if left:
        row.paste(fitted.crop((0, 0, 1, height)).resize((left, height), nearest), (0, 0))
    if right:
        row.paste(fitted.crop((width - 1, 0, width, height)).resize((right, height), nearest), (left + width, 0))
    canvas = Image.new("RGB", (row.width, top + height + bottom))
    canvas.paste(row, (0, top))
    if top:
        canvas.paste(row.crop((0, 0, row.width, 1)).resize((row.width, top), nearest), (0, 0))
    if bottom:
        canvas.paste(
            row.crop((0, height - 1, row.width, height)).resize((row.width, bottom), nearest), (0, top + height)
        )
    canvas = canvas.filter(ImageFilter.GaussianBlur(FILL_BLUR))
    canvas.paste(fitted, (left, top))  # the source itself stays exact
    return canvas


def border_mask(size: tuple[int, int], expand: Expand, user_mask: Image.Image | None = None) -> Image.Image:
    """The outpaint mask (L, 255 = repaint) for a canvas of `size`: the border plus OVERLAP px into the source
    on each expanded side, joined with `user_mask` (L, the fitted source's size) placed on the source."""
    left, top, right, bottom = expand
    width, height = size
    mask = Image.new("L", size, 255)
    kept = (
        left + (OVERLAP if left else 0),
        top + (OVERLAP if top else 0),
        width - right - (OVERLAP if right else 0),
        height - bottom - (OVERLAP if bottom else 0),
    )
    mask.paste(0, kept)
    if user_mask is not None:
        placed = Image.new("L", size, 0)
        placed.paste(user_mask, (left, top))
        mask = ImageChops.lighter(mask, placed)
    return mask


def whiten_border(mask: Image.Image, expand: Expand) -> Image.Image:
    """`mask` (blurred) with the border itself fully white again: the new area is painted entirely."""
    left, top, right, bottom = expand
    width, height = mask.size
    mask = mask.copy()
    for box in (
        (0, 0, left, height),
        (0, 0, width, top),
        (width - right, 0, width, height),
        (0, height - bottom, width, height),
    ):
        if box[2] > box[0] and box[3] > box[1]:
            mask.paste(255, box)
    return mask
