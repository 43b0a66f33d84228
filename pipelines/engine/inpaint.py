"""Inpainting: img2img that repaints only where a mask is white, and keeps the source everywhere else.

The mask is fitted to the recipe's size exactly as the source is (pipelines.sizes.fit_to_bucket), then
blurred by `mask_blur` px (PIL GaussianBlur). The base runs diffusers' StableDiffusionXLInpaintPipeline
(derived from the loaded base with `from_pipe`), which binarizes the mask; the refiner, when the recipe
has one, resumes the noisy latent with its img2img pipeline as for plain img2img (the whole image). At
the end the finished image is composited over the fitted source through the blurred mask (as A1111
does), so outside the blurred mask the result is the source's pixels exactly.

`inpaint_area` "masked": only the mask's bounding box plus `inpaint_padding` px (rounded outward to
multiples of 8, inside the image) is inpainted, scaled to the recipe's working size, then scaled back
and pasted in place — small areas get the model's full resolution.

Outpainting (`Recipe.expand`) is inpainting on a larger canvas with a mask made for its border: outpaint.py.
Masked content "noise" (the masked area starts from fresh noise, not the source): masked_content.py.

Pillow only (no torch): the engine passes the images this prepares to the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageFilter

from pipelines.engine import outpaint
from pipelines.recipe import NO_EXPAND, Recipe
from pipelines.sizes import fit_to_bucket

Box = tuple[int, int, int, int]  # left, top, right, bottom


@dataclass(frozen=True)
class InpaintArea:
    source: Image.Image  # the fitted source, the recipe's size (RGB)
    mask: Image.Image  # the fitted, blurred mask (L): 255 = repaint
    box: Box | None  # "masked": the part that is inpainted; None: the whole image
    size: tuple[int, int]  # the working size (width, height): the recipe's

    @property
    def work_source(self) -> Image.Image:
        return self._work(self.source)

    @property
    def work_mask(self) -> Image.Image:
        return self._work(self.mask)

    def _work(self, image: Image.Image) -> Image.Image:
        if self.box is None:
            return image
        return image.crop(self.box).resize(self.size, Image.Resampling.LANCZOS)

    def composite(self, image: Image.Image) -> Image.Image:
        """The finished (working-size) image put back: pasted at its box, then blended over the source
        through the blurred mask (outside it: the source's pixels, exactly)."""
        image = image.convert("RGB")
        if self.box is not None:
            left, top, right, bottom = self.box
            whole = self.source.copy()
            whole.paste(image.resize((right - left, bottom - top), Image.Resampling.LANCZOS), (left, top))
            image = whole
        elif image.size != self.source.size:
            raise ValueError(f"inpaint: the result is {image.size}, the source {self.source.size}")
        return Image.composite(image, self.source, self.mask)


def check_mask(recipe: Recipe, mask: object) -> None:
    """Early, before any model work: a mask exactly when the recipe records one; settings that need one."""
    if recipe.mask_sha256 is not None and mask is None:
        raise ValueError("mask: the recipe records a mask (mask_sha256) but no mask image was given")
    if mask is not None and recipe.mask_sha256 is None:
        raise ValueError("mask: given, but the recipe records none (set mask_sha256; mode must be img2img)")
    if mask is not None and not isinstance(mask, Image.Image):
        raise ValueError(f"mask: must be a PIL image (got {type(mask).__name__})")
    if recipe.inpaints and recipe.controlnets:
        raise ValueError("mask: inpainting and outpainting with ControlNet units are not supported yet")
    if recipe.masked_content == "noise" and not recipe.inpaints:
        raise ValueError(
            "masked_content: 'noise' repaints the masked area from fresh noise; give a mask (or an expand), "
            "or use 'original'"
        )


def _round_out(box: Box, size: tuple[int, int], padding: int) -> Box:
    width, height = size
    left, top, right, bottom = box
    left, top = max(0, left - padding) // 8 * 8, max(0, top - padding) // 8 * 8
    right = min(width, -(-(right + padding) // 8) * 8)
    bottom = min(height, -(-(bottom + padding) // 8) * 8)
    return left, top, right, bottom


def _fitted_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    if mask.mode in ("RGBA", "LA"):  # a painted layer: where it is opaque and white
        mask = Image.composite(mask.convert("L"), Image.new("L", mask.size, 0), mask.getchannel("A"))
    return fit_to_bucket(mask, *size).convert("L")


def prepare(recipe: Recipe, source: Image.Image, mask: Image.Image | None) -> InpaintArea:
    """The fitted source, the fitted and blurred mask, and the area to inpaint, for `recipe`. Outpainting
    (`recipe.expand`): the source fitted inside the canvas, the border filled and masked (outpaint.py)."""
    size = (recipe.width, recipe.height)
    left, top, right, bottom = outpaint.source_box(recipe)
    inner = (right - left, bottom - top)
    fitted = fit_to_bucket(source, *inner)
    fitted_mask = _fitted_mask(mask, inner) if mask is not None else None
    if recipe.expand != NO_EXPAND:
        fitted = outpaint.extend_canvas(fitted, recipe.expand)
        fitted_mask = outpaint.border_mask(size, recipe.expand, fitted_mask)
    if fitted_mask is None:
        raise ValueError("mask: the recipe inpaints but no mask image was given")
    if recipe.mask_blur:
        fitted_mask = fitted_mask.filter(ImageFilter.GaussianBlur(recipe.mask_blur))
    if recipe.expand != NO_EXPAND:
        fitted_mask = outpaint.whiten_border(fitted_mask, recipe.expand)
    box = None
    if recipe.inpaint_area == "masked":
        bbox = fitted_mask.getbbox()  # where the blurred mask is above 0
        if bbox is not None:
            box = _round_out(bbox, size, recipe.inpaint_padding)
            if box == (0, 0, *size):
                box = None  # the whole image anyway
    return InpaintArea(fitted, fitted_mask, box, size)


def inpaint_kwargs(area: InpaintArea, strength: float) -> dict:
    """The inpaint pipeline's mode arguments (the working images at the recipe's size)."""
    width, height = area.size
    return {
        "image": area.work_source,
        "mask_image": area.work_mask,
        "strength": strength,
        "width": width,
        "height": height,
    }
