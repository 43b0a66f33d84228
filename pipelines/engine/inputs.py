"""What the engine takes besides a Recipe: the images it refers to by sha256. Pillow only (no torch),
so the studio can prepare inputs before the engine is loaded."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class EditInputs:
    """Images a recipe refers to by sha256, handed in by the caller (the engine never reads storage)."""

    source: Image.Image | None = None  # img2img: the source, any size (fitted to the recipe's size)
    mask: Image.Image | None = None  # inpainting: white = repaint, any size (fitted like the source)
    control_maps: tuple[Image.Image, ...] = ()  # one per recipe.controlnets unit, already preprocessed
