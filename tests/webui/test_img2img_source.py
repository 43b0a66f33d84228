"""Img2Img stores a gallery image's own bytes as the source, not the browser's re-encoded copy."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
from PIL import Image

from pipelines.recipe import ModelRef, Recipe
from storage.gallery import Gallery
from webui.img2img_tab import source_bytes


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
    with Gallery.open(tmp_path / "home") as gallery:
        entry = gallery.save(Recipe(model=ModelRef("tiny"), prompt="a fox", seed=1), "txt2img", stored)
        ctx = SimpleNamespace(studio=SimpleNamespace(gallery=gallery))
        browser_copy = tmp_path / "upload.png"
        browser_copy.write_bytes(png(pixels))  # same pixels, other bytes (no metadata)
        assert browser_copy.read_bytes() != stored
        assert source_bytes(ctx, str(browser_copy), entry.id) == stored
        other = tmp_path / "other.png"
        other.write_bytes(png(255 - pixels))  # the user uploaded something else since
        assert source_bytes(ctx, str(other), entry.id) == other.read_bytes()
        assert source_bytes(ctx, str(browser_copy), None) == browser_copy.read_bytes()
