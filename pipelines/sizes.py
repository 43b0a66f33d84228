"""Image sizes: SDXL's aspect buckets, the nearest one to a shape, fitting an image to a size.

Standard library and Pillow only, so front ends and the request builder use it without torch.
"""

from __future__ import annotations

from PIL import Image, ImageOps

from pipelines.recipe import MAX_SIDE, MIN_SIDE

# SDXL multi-aspect buckets (width, height): about 1024² pixels, sides multiples of 64.
SDXL_BUCKETS = (
    (1024, 1024),
    (1152, 896),
    (896, 1152),
    (1216, 832),
    (832, 1216),
    (1344, 768),
    (768, 1344),
    (1536, 640),
    (640, 1536),
)


def fit_to_bucket(image: Image.Image, width: int, height: int) -> Image.Image:
    """RGB, scaled to cover width×height and centre-cropped to it (deterministic: same input, same pixels)."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"image: must be a PIL image (got {type(image).__name__})")
    image = ImageOps.exif_transpose(image).convert("RGB")
    if image.size == (width, height):
        return image
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def nearest_bucket(width: int, height: int, buckets: tuple[tuple[int, int], ...] = SDXL_BUCKETS) -> tuple[int, int]:
    """The SDXL bucket (width, height) whose aspect ratio is closest to width/height."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive (got {width}×{height})")
    ratio = width / height
    return min(buckets, key=lambda b: abs(b[0] / b[1] - ratio))


def own_size(width: int, height: int, *, max_side: int = 1024) -> tuple[int, int]:
    """A source image's own size for img2img: scaled (aspect kept) so neither side exceeds `max_side`
    and neither is under the Recipe's minimum, each side rounded to a multiple of 8 within its limits."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive (got {width}×{height})")
    scale = min(1.0, max_side / max(width, height))
    scale = max(scale, MIN_SIDE / min(width, height))  # a tiny source is scaled up, not squashed

    def side(n: int) -> int:
        return min(MAX_SIDE, max(MIN_SIDE, int(round(n * scale / 8)) * 8))

    return side(width), side(height)
