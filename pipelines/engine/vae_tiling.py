"""VAE tiling decided by the image's size, so a re-run of a recipe tiles exactly when its first run did.

Encoding or decoding a large image in one piece needs a lot of device memory (an upscale to 2048×2048
is four times a 1024² image). Above `TILE_ABOVE_PIXELS` the engine encodes and decodes in tiles
(diffusers' `enable_tiling`: overlapping tiles of the VAE's own sample size, blended). The rule depends
on the recipe's size alone, never on free memory, so the same recipe always gives the same pixels. The
device option `vae_tiling` (ModelCache) still turns tiling on for every size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

TILE_ABOVE_PIXELS = 1536 * 1536  # ×1.5 of a 1024² image still runs whole; ×2 (2048²) is tiled


def needs_tiling(width: int, height: int) -> bool:
    return width * height > TILE_ABOVE_PIXELS


@contextlib.contextmanager
def tiling_for(vae: Any, width: int, height: int) -> Iterator[None]:
    """`vae` tiled for the duration when the size needs it (left as it is when tiling is already on)."""
    if getattr(vae, "use_tiling", True) or not needs_tiling(width, height):
        yield
        return
    vae.enable_tiling()
    try:
        yield
    finally:
        vae.disable_tiling()
