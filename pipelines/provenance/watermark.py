"""SDXL's invisible watermark: the reference release's 48-bit message, embedded with dwtDct.

Applied once to the final pixels before they are saved (never to UI-only previews). It survives
PNG, which is lossless; JPEG (even at quality 90) and webp destroy it, which is one reason Atelier
only ever writes PNG. The library needs at least 256×256 pixels: smaller images are left unmarked.

dwtDct as SDXL ships it (message in the U channel's wavelet approximation, one bit per 4×4 block,
decoded by majority) is weak on large flat areas of saturated colour: there the marked coefficient
often stops being the block's largest and every such block reads the same bit. On scikit-image's
sample photos 20 of 25 decode perfectly; a few with big flat backgrounds do not. `apply_watermark`
reports that the mark was embedded, not that it will be detectable.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Stability AI's message, as diffusers' pipelines/stable_diffusion_xl/watermark.py (a test checks
# these are equal; copied so that reading a watermark does not have to import diffusers).
WATERMARK_MESSAGE = 0b101100111110110010010000011110111011000110011110
WATERMARK_BITS = [int(bit) for bit in bin(WATERMARK_MESSAGE)[2:]]
METHOD = "dwtDct"
MIN_SIDE = 256
# A random image matches about half the bits; a marked PNG matches ≥ 97% at 256 px and all of
# them from 512 px. 0.9 (at most 4 of 48 bits wrong) separates the two with a wide margin.
DETECTION_THRESHOLD = 0.9


def _bgr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32)[:, :, ::-1].copy()


def can_watermark(image: Image.Image) -> bool:
    return min(image.size) >= MIN_SIDE


def apply_watermark(image: Image.Image) -> tuple[Image.Image, bool]:
    """Return (marked image, True); an image with a side under 256 px comes back unchanged with False.

    Works in float (as diffusers does) and rounds once at the end; an alpha channel is kept.
    """
    if not can_watermark(image):
        return image, False
    from imwatermark import WatermarkEncoder

    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", WATERMARK_BITS)
    marked = encoder.encode(_bgr(image), METHOD)[:, :, ::-1]
    result = Image.fromarray(np.clip(np.rint(marked), 0, 255).astype(np.uint8), "RGB")
    if image.mode == "RGBA":
        result.putalpha(image.getchannel("A"))
    return result, True


def watermark_bit_accuracy(image: Image.Image) -> float:
    """Fraction of the 48 bits that match SDXL's message (0.0 for an image too small to carry one)."""
    if not can_watermark(image):
        return 0.0
    from imwatermark import WatermarkDecoder

    # float input, as SDXL's reference detector: OpenCV's YUV offset differs between float and
    # uint8 images, and the embedding was made in float.
    bits = WatermarkDecoder("bits", len(WATERMARK_BITS)).decode(_bgr(image), METHOD)
    return float(np.mean(np.asarray(bits, dtype=int) == np.asarray(WATERMARK_BITS)))


def detect_watermark(image: Image.Image) -> tuple[bool, float]:
    """(present, bit accuracy): present when at least DETECTION_THRESHOLD of the bits match."""
    accuracy = watermark_bit_accuracy(image)
    return accuracy >= DETECTION_THRESHOLD, accuracy
