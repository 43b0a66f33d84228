"""Upscale (hires fix) of a gallery image: a pixel upscale, then an img2img pass at a denoise strength.

The image (a picked draft's preview, a refined or any gallery image) is enlarged by a factor or to a
size (sides multiples of 8, at most MAX_SIDE) with Lanczos (or an ESRGAN-family model from the models
folder: pipelines/models/upscalers.py, run on a GPU worker with `--cluster`), and the enlarged image
becomes the **img2img source** of an ordinary img2img Recipe at the new size: base → refiner at `strength` (0.35 by
default), with the image's prompt, seed, models, LoRAs and refiner settings. The enlarged source is
stored in the gallery by sha256 like any img2img source, so a re-run reads those very pixels back: it
never depends on the upscaler (or its version) again. The image is the new entry's parent.

Not carried over: ControlNet units (their maps are at the old size) and a variation seed (img2img
starts from its source). Torch-free: the Studio hands the result to the engine.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, PngImagePlugin

from atelier.edit_inputs import InputFiles, open_image, sha256_hex
from pipelines.engine.inputs import EditInputs
from pipelines.recipe import MAX_SIDE, MIN_SIDE, Recipe

Enlarge = Callable[[Image.Image, int, int], Image.Image]  # (image, width, height) -> image of that size
DEFAULT_SCALE = 2.0
MAX_SCALE = 4.0
DEFAULT_STRENGTH = 0.35


@dataclass(frozen=True, kw_only=True)
class UpscaleRequest:
    """What to upscale to; checked on construction (a ValueError naming the field), before any work."""

    scale: float | None = None  # × the image's size (default ×2 when no width/height is given)
    width: int | None = None  # a target size instead: both sides, multiples of 8
    height: int | None = None
    strength: float = DEFAULT_STRENGTH
    steps: int | None = None  # None: the image's own steps
    upscaler: str = "lanczos"  # or the name of an ESRGAN-family model in the models folder (ESRGAN, upscale_models)

    def __post_init__(self) -> None:
        if self.scale is not None and (self.width is not None or self.height is not None):
            raise ValueError("scale: give a scale or a width and height, not both")
        if (self.width is None) != (self.height is None):
            missing = "height" if self.height is None else "width"
            raise ValueError(f"{missing}: give both width and height for a target size (or a scale)")
        if self.scale is not None:
            ok = isinstance(self.scale, (int, float)) and not isinstance(self.scale, bool) and math.isfinite(self.scale)
            if not (ok and 1.0 < self.scale <= MAX_SCALE):
                raise ValueError(f"scale: must be a number above 1 and at most {MAX_SCALE} (got {self.scale!r})")
        for name in ("width", "height"):
            _check_side(name, getattr(self, name))
        if not isinstance(self.upscaler, str) or not self.upscaler.strip():
            raise ValueError(
                f"upscaler: must be lanczos or an upscaler's name in the models folder (got {self.upscaler!r})"
            )

    def size_for(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) an image of width×height is upscaled to."""
        if self.width is not None and self.height is not None:
            return self.width, self.height
        scale = DEFAULT_SCALE if self.scale is None else self.scale
        size = tuple(max(MIN_SIDE, int(round(side * scale / 8)) * 8) for side in (width, height))
        if max(size) > MAX_SIDE:
            raise ValueError(
                f"scale: ×{scale:g} makes this {width}×{height} image {size[0]}×{size[1]}; sides must be at most "
                f"{MAX_SIDE} (use a smaller scale, or a width and height)"
            )
        return size[0], size[1]


def _check_side(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_SIDE <= value <= MAX_SIDE or value % 8:
        raise ValueError(f"{name}: must be a multiple of 8 from {MIN_SIDE} to {MAX_SIDE} (got {value!r})")


def pixel_upscaler(name: str, home: Path, engine: Callable[[], Any]) -> Enlarge:
    """How to enlarge: Lanczos, or the ESRGAN-family model `name` in the models folder, located now (a missing
    file or a pickle is a ValueError naming `upscaler`, before any model work) and run by `engine()`: on a GPU
    worker when that engine has an `enlarge` mode (atelier.cluster's RemoteEngine), else on its device here."""
    if name == "lanczos":
        return lanczos
    run_here = located_upscaler(home, name)

    def enlarge(image: Image.Image, width: int, height: int) -> Image.Image:
        runner = engine()
        remote = getattr(runner, "enlarge", None)  # the in-process Engine knows no upscaler names: run here
        if remote is not None:
            return remote(image, width, height, name)
        return run_here(image, width, height, str(runner.models.device))

    return enlarge


def located_upscaler(home: Path, name: str) -> Callable[[Image.Image, int, int, str], Image.Image]:
    """The ESRGAN-family model `name` in `home`'s models folder, located now (a ValueError naming `upscaler` when
    it is missing or a pickle), as (image, width, height, device) -> image. A GPU worker runs it through here
    too (atelier/cluster/deployment.py): the same pixels either way."""
    from pipelines.models import upscalers

    path = upscalers.locate(home, name)
    return lambda image, width, height, device: upscalers.upscale(path, image, width, height, device)


def prepare_upscale(
    parent: Recipe, image: bytes, wanted: UpscaleRequest, enlarge: Enlarge
) -> tuple[Recipe, InputFiles, str]:
    """For a gallery image (its recipe and PNG bytes): the img2img Recipe, its source enlarged by `enlarge` for
    the engine and the gallery, and a note for the user. Bad values (the size for this image, strength, steps)
    fail before the pixel upscale."""
    shown = open_upright(image, "the gallery image")
    width, height = wanted.size_for(*shown.size)
    recipe = upscale_recipe(parent, wanted, width, height)
    enlarged = enlarge(shown, width, height)
    recipe, inputs = upscaled_inputs(recipe, enlarged, made_from=sha256_hex(image), upscaler=wanted.upscaler)
    sizes = f"{shown.width}×{shown.height} → {width}×{height}"
    return recipe, inputs, f"upscaled {sizes} ({wanted.upscaler}), then img2img at {wanted.strength}"


def upscale_recipe(parent: Recipe, request: UpscaleRequest, width: int, height: int) -> Recipe:
    """The img2img Recipe of the pass after the pixel upscale (its source hash is filled in by `upscaled_inputs`)."""
    return parent.replace(
        mode="img2img",
        stage="final",
        strength=request.strength,
        steps=parent.steps if request.steps is None else request.steps,
        width=width,
        height=height,
        source_image_sha256=None,
        mask_sha256=None,  # the enlarged image is repainted whole: no inpaint mask, no outpaint border
        masked_content="original",
        expand=(0, 0, 0, 0),
        batch_seeds=(),
        variation_seed=None,
        variation_strength=0.0,
        controlnets=(),
        watermark_applied=None,
    )


def open_upright(data: bytes, what: str) -> Image.Image:
    """An image file as RGB, its EXIF orientation applied (as the engine's fit_to_bucket sees it)."""
    return ImageOps.exif_transpose(open_image(data, what)).convert("RGB")


def lanczos(image: Image.Image, width: int, height: int) -> Image.Image:
    """The image enlarged to width×height (scaled to cover it, centre-cropped when the aspect differs)."""
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def upscaled_inputs(recipe: Recipe, image: Image.Image, *, made_from: str, upscaler: str) -> tuple[Recipe, InputFiles]:
    """The recipe with the enlarged source's sha256, and the source for the engine and the gallery. The PNG
    says what it was made from (`atelier_upscale`: the image's sha256, the upscaler, the size)."""
    info = PngImagePlugin.PngInfo()
    made = {"from_sha256": made_from, "upscaler": upscaler, "width": image.width, "height": image.height}
    info.add_text("atelier_upscale", json.dumps(made, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    data = buffer.getvalue()
    recipe = recipe.replace(source_image_sha256=sha256_hex(data))
    return recipe, InputFiles(EditInputs(source=image), {"source": data})
