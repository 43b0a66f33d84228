"""Img2Img stores a gallery image's own bytes as the source, not the browser's re-encoded copy."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from atelier.studio import Studio
from pipelines.recipe import ModelRef, Recipe


def png(array, **info) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    from PIL import PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    for key, value in info.items():
        meta.add_text(key, value)
    image.save(buffer, format="PNG", pnginfo=meta, compress_level=9)
    return buffer.getvalue()


def test_the_gallery_file_is_used_when_the_pixels_are_the_same(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    stored = png(pixels, atelier_recipe="{}")
    with Studio(tmp_path / "home") as studio:
        entry = studio.gallery.save(Recipe(model=ModelRef("tiny"), prompt="a fox", seed=1), "txt2img", stored)
        browser_copy = tmp_path / "upload.png"
        browser_copy.write_bytes(png(pixels))  # same pixels, other bytes (no metadata)
        assert browser_copy.read_bytes() != stored
        assert studio.edit_source(browser_copy.read_bytes(), entry.id) == stored
        other = tmp_path / "other.png"
        other.write_bytes(png(255 - pixels))  # the user uploaded something else since
        assert studio.edit_source(other.read_bytes(), entry.id) == other.read_bytes()
        assert studio.edit_source(browser_copy.read_bytes(), None) == browser_copy.read_bytes()
