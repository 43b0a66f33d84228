"""A sweep's cells side by side, each with its value written under it: one PNG for comparing them.

The grid is a convenience, not a gallery entry (each cell is one, with its recipe): it is written to
<home>/downloads, named after the cells' gallery ids, and made again whenever asked for.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

MAX_COLUMNS = 8
MIN_FONT, MAX_FONT = 12, 40  # label size: a twelfth of the cell, within these
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


def labelled_grid(images: Sequence[Image.Image], labels: Sequence[str]) -> Image.Image:
    """The images (all shown at the first one's size, enlarged where a label is wider) in rows of at most
    MAX_COLUMNS, each label centred in a band under its image."""
    if not images or len(images) != len(labels):
        raise ValueError(f"sweep grid: needs one label per image (got {len(images)} images, {len(labels)} labels)")
    font = ImageFont.load_default(size=min(MAX_FONT, max(MIN_FONT, images[0].width // 12)))
    width = max(images[0].width, math.ceil(max(font.getlength(label) for label in labels)) + 8)
    height = round(images[0].height * width / images[0].width)
    band = math.ceil(font.size * 1.6)
    columns = min(len(images), MAX_COLUMNS)
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * width, rows * (height + band)), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for i, (image, label) in enumerate(zip(images, labels)):
        left, top = (i % columns) * width, (i // columns) * (height + band)
        grid.paste(image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS), (left, top))
        draw.text((left + width / 2, top + height + band / 2), label, fill=INK, font=font, anchor="mm")
    return grid


def write_sweep_grid(folder: Path, cells: Sequence, labels: Sequence[str]) -> Path:
    """The grid of a sweep's saved cells (anything with `.id` and `.image`, such as the Studio's Saved) as
    `folder`/atelier-sweep-<first id>-<last id>.png, written atomically; its path."""
    opened = []
    for cell in cells:
        with Image.open(cell.image) as image:
            opened.append(image.convert("RGB"))
    grid = labelled_grid(opened, labels)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"atelier-sweep-{cells[0].id}-{cells[-1].id}.png"
    temporary = folder / f".{target.name}.{uuid.uuid4().hex}"
    grid.save(temporary, format="PNG")
    temporary.replace(target)
    return target
