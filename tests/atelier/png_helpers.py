"""A small valid PNG for gallery tests that need an image but no model."""

from __future__ import annotations

import io

from PIL import Image


def tiny_png(color: tuple[int, int, int] = (10, 20, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buffer, format="PNG")
    return buffer.getvalue()
