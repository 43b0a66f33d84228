"""SDXL's invisible watermark: the reference release's 48-bit message, embedded with dwtDct.

Applied once to the final pixels before they are saved (never to UI-only previews). It survives
PNG, which is lossless; JPEG (even at quality 90) and webp destroy it, which is one reason Atelier
only ever writes PNG. The library needs at least 256×256 pixels: smaller images are left unmarked.

dwtDct as SDXL ships it (message in the U channel's wavelet approximation, one bit per 4×4 block,
decoded by majority) is weak on large flat areas of saturated colour: there the marked coefficient
often stops being the block's largest and every such block reads the same bit. On scikit-image's
sample photos 20 of 25 decode perfectly; a few with big flat backgrounds do not. `apply_watermark`
reports that the mark was embedded, not that it will be detectable.

The embed is a whole-array copy of imwatermark's (`embed_dwt_dct`, ≈ 10 ms instead of the library's
per-block loop at 1024²) giving bit-identical pixels; detection uses imwatermark's own decoder.
"""

from __future__ import annotations

import cv2
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
    return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR).astype(np.float32)


def can_watermark(image: Image.Image) -> bool:
    return min(image.size) >= MIN_SIDE


def apply_watermark(image: Image.Image) -> tuple[Image.Image, bool]:
    """Return (marked image, True); an image with a side under 256 px comes back unchanged with False.

    Works in float (as diffusers does) and rounds once at the end; an alpha channel is kept.
    """
    if not can_watermark(image):
        return image, False
    marked = embed_dwt_dct(_bgr(image))
    np.clip(np.rint(marked, out=marked), 0, 255, out=marked)
    result = Image.fromarray(cv2.cvtColor(marked.astype(np.uint8), cv2.COLOR_BGR2RGB), "RGB")
    if image.mode == "RGBA":
        result.putalpha(image.getchannel("A"))
    return result, True


# -- the embed, vectorised -------------------------------------------------------------------------
# imwatermark's EmbedMaxDct (method "dwtDct", scales [0, 36, 36], block 4) does, in float32:
#   1. YUV = cv2.cvtColor(BGR, BGR2YUV); only channel 1 (U) is marked (channel 0 has scale 0 and
#      channel 2 is never visited by its `range(2)` loop);
#   2. one Haar level (pywt.dwt2) of U cropped to multiples of 4;
#   3. for each 4×4 block of the approximation band in raster order, bit = message[n % 48]: the
#      coefficient of largest magnitude other than the block's [0, 0] (first one on ties) becomes
#      sign · (|c| // 36 + 0.25 + 0.5 · bit) · 36 (no DCT is actually taken, despite the name);
#   4. inverse Haar with the horizontal and vertical detail bands swapped (its idwt2 call passes
#      (v, h, d)), which we must copy for the same pixels; back with YUV2BGR.
# It loops over the blocks in Python (≈ 65k blocks at 1024²); here every step is a whole-array
# operation. The Haar steps repeat pywt's float32 arithmetic term by term, so the output is
# bit-identical to the library's (tests compare the arrays).
_SCALE = np.float32(36)
_BLOCK = 4
_HAAR = np.float32(0.7071067811865476)  # pywt's haar filter taps, as float32


def _haar_step(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(approximation, detail) along axis 0 or 1, as pywt computes them (even length)."""
    even, odd = (x[0::2], x[1::2]) if axis == 0 else (x[:, 0::2], x[:, 1::2])
    scaled_even, scaled_odd = _HAAR * even, _HAAR * odd
    return scaled_odd + scaled_even, scaled_even - scaled_odd


def _haar_unstep(approx: np.ndarray, detail: np.ndarray, axis: int) -> np.ndarray:
    scaled_a, scaled_d = _HAAR * approx, _HAAR * detail
    shape = list(approx.shape)
    shape[axis] *= 2
    out = np.empty(shape, np.float32)
    even, odd = (out[0::2], out[1::2]) if axis == 0 else (out[:, 0::2], out[:, 1::2])
    np.add(scaled_a, scaled_d, out=even)
    np.subtract(scaled_a, scaled_d, out=odd)
    return out


def _quantise_blocks(band: np.ndarray, bits: np.ndarray) -> None:
    """Step 3 above, in place, on every whole 4×4 block of `band` at once."""
    rows, cols = band.shape[0] // _BLOCK, band.shape[1] // _BLOCK
    area = band[: rows * _BLOCK, : cols * _BLOCK]
    blocks = area.reshape(rows, _BLOCK, cols, _BLOCK).swapaxes(1, 2).reshape(rows, cols, _BLOCK * _BLOCK)
    where = np.argmax(np.abs(blocks[..., 1:]), axis=-1)[..., None] + 1
    value = np.take_along_axis(blocks, where, axis=-1)
    half_bit = (0.5 * bits[np.arange(rows * cols) % bits.size]).astype(np.float32).reshape(rows, cols, 1)
    # float32 throughout, in the library's order of operations
    magnitude = (np.abs(value) // _SCALE + np.float32(0.25) + half_bit) * _SCALE
    np.put_along_axis(blocks, where, np.where(value >= 0, magnitude, -magnitude), axis=-1)
    area[:] = blocks.reshape(rows, cols, _BLOCK, _BLOCK).swapaxes(1, 2).reshape(area.shape)


def embed_dwt_dct(bgr: np.ndarray, bits: list[int] = WATERMARK_BITS) -> np.ndarray:
    """imwatermark's dwtDct embed of `bits` into a float32 BGR array (H×W×3), without its block loop."""
    rows, cols = bgr.shape[0] // 4 * 4, bgr.shape[1] // 4 * 4
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
    low, high = _haar_step(yuv[:rows, :cols, 1], axis=0)
    approx, detail_v = _haar_step(low, axis=1)
    detail_h, detail_d = _haar_step(high, axis=1)
    _quantise_blocks(approx, np.asarray(bits))
    # the library's swap: its inverse gets the vertical band where the horizontal one belongs
    low = _haar_unstep(approx, detail_h, axis=1)
    high = _haar_unstep(detail_v, detail_d, axis=1)
    yuv[:rows, :cols, 1] = _haar_unstep(low, high, axis=0)
    return cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR)


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
