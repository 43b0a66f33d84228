"""A draft's gallery image is a cheap preview; opening, downloading, upscaling or using it as an img2img
source gives the full VAE decode of its kept clean estimate, made once on demand."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipelines.provenance.png_metadata import read_png


def pixels(data: bytes):
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def studio(make_tiny_home):
    from atelier.studio import Studio

    studio = Studio(make_tiny_home(name="full-decode-home"), device="cpu")
    yield studio
    studio.close()


def test_a_drafts_download_is_the_full_decode_made_once(studio, tiny_recipe, count_calls):
    saved = studio.draft(tiny_recipe(width=256, height=256), 2)[1]
    draft = studio.load_draft(saved.id)
    assert draft.latent.preview == "vae-half-size"
    expected = studio.engine.full_draft_image(draft)  # watermarked, as the recipe asks
    decoder = studio.models.load_base("tiny").pipe.vae.decoder
    with count_calls(decode=decoder) as calls:
        link = studio.download_path(saved.id)
        again = studio.download_path(saved.id)
    assert calls["decode"] == 1 and link == again  # decoded on the first demand only
    assert link.name == f"atelier-{saved.id}-{saved.recipe.seed}.png" and link.is_symlink()
    data = link.read_bytes()
    assert np.array_equal(pixels(data), pixels(_png(expected)))
    assert not np.array_equal(pixels(data), pixels(saved.image.read_bytes()))  # the gallery keeps the preview
    assert read_png(data).recipe == saved.recipe  # the recipe travels with the full decode
    assert saved.image.read_bytes() == studio.gallery.read_file(studio.get(saved.id).image_sha256)


def test_a_refined_images_download_is_the_gallery_file(studio, tiny_recipe):
    draft = studio.draft(tiny_recipe(seed=77), 1)[0]
    refined = studio.refine(draft.id)
    assert studio.download_path(refined.id).resolve() == refined.image.resolve()


def test_img2img_from_a_draft_id_uses_the_full_decode(studio, tiny_recipe):
    from atelier.commands.request_options import read_image_arg

    saved = studio.draft(tiny_recipe(seed=91), 1)[0]
    data, parent = read_image_arg(str(saved.id), studio)
    assert parent == saved.id
    assert np.array_equal(pixels(data), pixels(studio.download_path(saved.id).read_bytes()))
    assert not np.array_equal(pixels(data), pixels(saved.image.read_bytes()))


def test_upscaling_a_draft_enlarges_its_full_decode(studio, tiny_recipe):
    import hashlib
    import json

    saved = studio.draft(tiny_recipe(seed=33), 1)[0]
    full = studio.download_path(saved.id).read_bytes()
    upscaled = studio.upscale(saved.id, scale=2, strength=0.3, steps=4)
    with Image.open(io.BytesIO(studio.read_file(upscaled.recipe.source_image_sha256))) as source:
        made = json.loads(source.text["atelier_upscale"])
        enlarged = np.asarray(source.convert("RGB")).astype(int)
    assert made["from_sha256"] == hashlib.sha256(full).hexdigest()
    with Image.open(io.BytesIO(full)) as image:
        expected = np.asarray(image.convert("RGB").resize((128, 128), Image.Resampling.LANCZOS)).astype(int)
    assert np.array_equal(enlarged, expected)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
