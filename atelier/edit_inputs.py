"""Images an edit needs, as the engine wants them (PIL) and as the gallery stores them (bytes by role).

A source image is stored as the user gave it (its bytes, their sha256 in the recipe); the engine fits
it to the recipe's size the same way every time. A control image is stored as given too, and the map
the ControlNet saw is stored as a PNG: re-runs use that stored map, so a newer preprocessor can never
change an old image.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from pipelines.engine.inputs import EditInputs
from pipelines.recipe import MAX_IMAGE_PIXELS, ControlUnit, ModelRef, Recipe
from pipelines.sizes import fit_to_bucket


@dataclass(frozen=True)
class InputFiles:
    images: EditInputs = field(default_factory=EditInputs)  # for the engine
    files: dict[str, bytes] = field(default_factory=dict)  # gallery roles: source, mask, control:N, map:N


@dataclass(frozen=True, kw_only=True)
class ControlRequest:
    """One `--control` unit before preprocessing."""

    model: str
    preprocessor: str
    image: bytes
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    params: dict[str, float] = field(default_factory=dict)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _opened(data: bytes, what: str) -> Image.Image:
    """The image with only its header read; refused above MAX_IMAGE_PIXELS before any pixel is decoded
    (a small file can decode to gigabytes: a decompression bomb)."""
    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"{what}: not an image Pillow can read ({error})") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"{what}: {width}×{height} pixels is over the limit of {MAX_IMAGE_PIXELS} pixels per image; make it smaller"
        )
    return image


def open_image(data: bytes, what: str) -> Image.Image:
    image = _opened(data, what)
    try:
        image.load()  # decoded once, in place: no second copy of the pixels
    except (OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"{what}: not an image Pillow can read ({error})") from None
    return image


def image_size(data: bytes, what: str = "source image") -> tuple[int, int]:
    """(width, height) of an image as the engine sees it (EXIF orientation applied, as fit_to_bucket does),
    from its header: nothing is decoded."""
    image = _opened(data, what)
    width, height = image.size
    return (height, width) if image.getexif().get(0x0112) in (5, 6, 7, 8) else (width, height)  # rotated 90°


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def control_map_of(
    request: ControlRequest, index: int, width: int, height: int, annotators_dir: Path | None
) -> tuple[dict[str, float], Image.Image]:
    """(the preprocessor's settings, checked; the map the ControlNet sees) for one unit at a size."""
    from pipelines.models.preprocessors import check_params, preprocess

    params = check_params(request.preprocessor, request.params)  # unknown preprocessor or setting: early
    fitted = fit_to_bucket(open_image(request.image, f"control image {index + 1}"), width, height)
    return params, preprocess(request.preprocessor, fitted, params, annotators_dir)


def with_inputs(
    recipe: Recipe,
    source: bytes | None = None,
    controls: list[ControlRequest] = (),
    annotators_dir: Path | None = None,
    mask: bytes | None = None,
) -> tuple[Recipe, InputFiles]:
    """The recipe with its input hashes recorded, and the images for the engine and the gallery.
    `mask`: inpainting (white = repaint), stored as given under the role "mask". Outpainting (recipe.expand)
    needs no mask: the engine makes one for the border; the source is stored as given, not extended."""
    files: dict[str, bytes] = {}
    source_image = mask_image = None
    if source is not None:
        source_image = open_image(source, "source image")
        files["source"] = source
        recipe = recipe.replace(source_image_sha256=sha256_hex(source))
    if mask is not None:
        if source is None:
            raise ValueError("mask: inpainting needs a source image")
        mask_image = open_image(mask, "mask")
        files["mask"] = mask
        recipe = recipe.replace(mask_sha256=sha256_hex(mask))
    if recipe.inpaints and source is None:
        raise ValueError("expand: outpainting needs a source image")
    if recipe.masked_content != "original" and not recipe.inpaints:
        raise ValueError("masked_content: 'noise' needs a mask or an expand (there is no masked area to fill)")
    units, maps = [], []
    for i, request in enumerate(controls):
        params, control_map = control_map_of(request, i, recipe.width, recipe.height, annotators_dir)
        map_png = png_bytes(control_map)
        files[f"control:{i}"], files[f"map:{i}"] = request.image, map_png
        maps.append(control_map)
        units.append(
            ControlUnit(
                model=ModelRef(request.model),
                preprocessor=request.preprocessor,
                image_sha256=sha256_hex(request.image),
                map_sha256=sha256_hex(map_png),
                scale=request.scale,
                start=request.start,
                end=request.end,
                params=params,
            )
        )
    if controls:
        recipe = recipe.replace(controlnets=tuple(units))
    return recipe, InputFiles(EditInputs(source=source_image, mask=mask_image, control_maps=tuple(maps)), files)


def stored_inputs(recipe: Recipe, read_file) -> InputFiles:
    """A recipe's inputs read back from the gallery by sha256 (`read_file(sha256) -> bytes`), for a re-run."""
    files: dict[str, bytes] = {}
    source = None
    if recipe.source_image_sha256:
        files["source"] = read_file(recipe.source_image_sha256)
        source = open_image(files["source"], "stored source image")
    mask = None
    if recipe.mask_sha256:
        files["mask"] = read_file(recipe.mask_sha256)
        mask = open_image(files["mask"], "stored mask")
    maps = []
    for i, unit in enumerate(recipe.controlnets):
        if not unit.map_sha256:
            raise ValueError(f"controlnets[{i}]: the recipe records no control map, so it cannot be re-run")
        files[f"map:{i}"] = read_file(unit.map_sha256)
        if unit.image_sha256:
            files[f"control:{i}"] = read_file(unit.image_sha256)
        maps.append(open_image(files[f"map:{i}"], f"stored control map {i + 1}"))
    return InputFiles(EditInputs(source=source, mask=mask, control_maps=tuple(maps)), files)
