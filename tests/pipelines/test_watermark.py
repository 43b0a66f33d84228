"""SDXL's invisible watermark: embedded, detected, kept by PNG, destroyed by JPEG."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.provenance.watermark import WATERMARK_BITS, WATERMARK_MESSAGE, apply_watermark, detect_watermark


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth, non-flat synthetic "photo": gradients, soft shapes, texture and sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / width, y / height
    img = np.stack([60 + 140 * u, 80 + 100 * v, 170 - 90 * u * v], axis=-1)  # sky-ish gradient
    for _ in range(6):  # soft blobs
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.05, 0.25) * width
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None]
        img = img * (1 - 0.7 * blob) + rng.uniform(0, 255, 3) * 0.7 * blob
    img[int(height * 0.65) :] *= 0.6  # a horizon
    img += 12 * np.sin(x / 7.0 + y / 11.0)[..., None]  # texture
    img += rng.normal(0, 3, img.shape)  # noise
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def png_round_trip(image: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return Image.open(io.BytesIO(buf.getvalue()))


def test_message_is_diffusers_sdxl_message():
    from diffusers.pipelines.stable_diffusion_xl import watermark as sdxl

    assert WATERMARK_MESSAGE == sdxl.WATERMARK_MESSAGE
    assert WATERMARK_BITS == sdxl.WATERMARK_BITS and len(WATERMARK_BITS) == 48


@pytest.fixture(scope="module")
def marked():
    original = photo_like(512, 512)
    image, applied = apply_watermark(original)
    assert applied
    return original, image


def test_marked_image_decodes_and_is_nearly_invisible(marked):
    original, image = marked
    present, accuracy = detect_watermark(image)
    assert present and accuracy >= 0.99
    diff = np.abs(np.asarray(image, dtype=int) - np.asarray(original, dtype=int))
    assert 0 < diff.mean() < 3  # changed, but invisibly


def test_real_photo_decodes():
    """A real photograph (scikit-image's sample, installed with controlnet-aux's dependencies)."""
    spec = importlib.util.find_spec("skimage")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "astronaut.png" if spec else None
    if path is None or not path.exists():
        pytest.skip("scikit-image's sample photo is not installed")
    photo = Image.open(path).convert("RGB")
    assert detect_watermark(photo)[0] is False
    assert detect_watermark(png_round_trip(apply_watermark(photo)[0])) == (True, 1.0)


def test_unmarked_image_reports_absent(marked):
    original, _ = marked
    present, accuracy = detect_watermark(original)
    assert not present and accuracy < 0.9


def test_png_keeps_it_and_jpeg_destroys_it(marked):
    _, image = marked
    present, accuracy = detect_watermark(png_round_trip(image))
    assert present and accuracy >= 0.99
    assert (present, accuracy) == detect_watermark(image)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    present, accuracy = detect_watermark(Image.open(io.BytesIO(buf.getvalue())))
    assert not present and accuracy < 0.9


def test_matches_diffusers_watermarker():
    """Our uint8 path embeds the same bits as the SDXL pipelines' own watermarker."""
    import torch
    from diffusers.pipelines.stable_diffusion_xl.watermark import StableDiffusionXLWatermarker

    original = photo_like(320, 256, seed=3)
    tensor = torch.from_numpy(np.asarray(original, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    theirs = StableDiffusionXLWatermarker().apply_watermark(tensor)[0].permute(1, 2, 0).numpy()
    theirs = Image.fromarray(np.clip(np.rint((theirs + 1) * 127.5), 0, 255).astype(np.uint8))
    ours, _ = apply_watermark(original)
    assert np.abs(np.asarray(ours, dtype=int) - np.asarray(theirs, dtype=int)).max() <= 1
    assert detect_watermark(ours)[0] and detect_watermark(theirs)[0]


@pytest.mark.parametrize("size", [(255, 512), (512, 200), (64, 64)])
def test_small_images_are_returned_unmarked(size):
    original = photo_like(*size)
    image, applied = apply_watermark(original)
    assert applied is False and image is original
    assert detect_watermark(image) == (False, 0.0)


def test_alpha_channel_is_kept():
    original = photo_like(256, 256, seed=5).convert("RGBA")
    original.putalpha(Image.linear_gradient("L").resize((256, 256)))
    image, applied = apply_watermark(original)
    assert applied and image.mode == "RGBA"
    assert np.array_equal(np.asarray(image.getchannel("A")), np.asarray(original.getchannel("A")))
    assert detect_watermark(image)[0]
