"""Upscale (hires fix) on the tiny model: Lanczos to the exact size, then img2img base → refiner for the
strength's share of the steps; the parent recorded, the re-run bit-exact, VAE tiling by size."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

import atelier.upscale
import pipelines.engine.vae_tiling as vae_tiling


def rgb(path_or_bytes) -> np.ndarray:
    import io

    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(source) as image:
        return np.asarray(image.convert("RGB"))


def pixel_hash(path) -> str:
    return hashlib.sha256(rgb(path).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def studio(make_tiny_home):
    from atelier.studio import Studio

    studio = Studio(make_tiny_home(name="upscale-home"), device="cpu")
    yield studio
    studio.close()


@pytest.fixture(scope="module")
def refined(studio):
    """A refined 64×64 image (the usual thing to upscale)."""
    from pipelines.recipe import ModelRef, Recipe, RefineSettings

    recipe = Recipe(
        model=ModelRef("tiny"),
        prompt="a lighthouse on a cliff",
        negative_prompt="blurry",
        seed=11,
        steps=10,
        width=64,
        height=64,
        switch=0.8,
        refine=RefineSettings(model=ModelRef("tiny")),
    )
    draft = studio.draft(recipe, 1)[0]
    return studio.refine(draft.id)


@pytest.fixture(scope="module")
def unets(studio):
    base = studio.models.load_base("tiny")
    return base.pipe.unet, studio.models.load_refiner("tiny", base).pipe.unet


def test_x2_is_lanczos_to_the_exact_size_then_img2img_from_the_parent(studio, refined):
    saved = studio.upscale(refined.id, scale=2)
    generation = studio.get(saved.id)
    assert rgb(saved.image).shape == (128, 128, 3)
    assert (generation.recipe.width, generation.recipe.height) == (128, 128)
    assert generation.parent_id == refined.id and generation.kind == "img2img"
    assert generation.recipe.mode == "img2img" and generation.recipe.strength == 0.35
    assert generation.recipe.prompt == refined.recipe.prompt and generation.recipe.seed == refined.recipe.seed
    # The stored source is Pillow's own Lanczos resize of the parent's pixels.
    source = studio.read_file(generation.recipe.source_image_sha256)
    with Image.open(refined.image) as parent:
        expected = np.asarray(parent.convert("RGB").resize((128, 128), Image.Resampling.LANCZOS))
    assert np.array_equal(rgb(source), expected)
    assert not np.array_equal(rgb(saved.image), expected)  # the img2img pass changed it
    assert any("64×64 → 128×128" in note for note in saved.notes)


def test_a_target_size_of_another_aspect(studio, refined):
    saved = studio.upscale(refined.id, width=96, height=64)
    assert rgb(saved.image).shape == (64, 96, 3)
    assert (saved.recipe.width, saved.recipe.height) == (96, 64)


def test_x1_5_rounds_to_multiples_of_8(studio, refined):
    saved = studio.upscale(refined.id, scale=1.5)
    assert rgb(saved.image).shape == (96, 96, 3)


@pytest.mark.parametrize("steps, strength", [(10, 0.35), (12, 0.5)])
def test_unet_calls_are_the_strength_share_of_the_steps_base_then_refiner(
    studio, refined, unets, count_calls, steps, strength
):
    base_unet, refiner_unet = unets
    with count_calls(base=base_unet, refiner=refiner_unet) as calls:
        studio.upscale(refined.id, scale=2, strength=strength, steps=steps)
    assert calls["base"] + calls["refiner"] == int(steps * strength)  # diffusers' img2img rule
    assert calls["base"] >= 1 and calls["refiner"] >= 1


def test_a_re_run_gives_the_same_pixels_without_upscaling_again(studio, refined, monkeypatch):
    saved = studio.upscale(refined.id, scale=2, strength=0.5)

    def no_upscale(*_, **__):
        raise AssertionError("a re-run must read the stored source, not upscale again")

    monkeypatch.setattr(atelier.upscale, "lanczos", no_upscale)
    again = studio.rerun(saved.id)
    assert pixel_hash(again.image) == pixel_hash(saved.image)
    assert again.recipe.source_image_sha256 == saved.recipe.source_image_sha256


def test_an_upscale_of_a_picked_draft(studio, refined):
    draft_id = studio.get(refined.id).parent_id
    saved = studio.upscale(draft_id, scale=2)
    assert studio.get(saved.id).parent_id == draft_id and rgb(saved.image).shape == (128, 128, 3)
    assert saved.recipe.stage == "final" and saved.recipe.batch_seeds == ()


def test_large_sizes_are_tiled_by_the_same_rule_in_the_re_run(studio, refined, monkeypatch):
    """Above TILE_ABOVE_PIXELS the VAE runs tiled (the tiny VAE's tiles are 256 px: 264 px takes 2×2)."""
    monkeypatch.setattr(vae_tiling, "TILE_ABOVE_PIXELS", 200 * 200)
    vae = studio.models.load_base("tiny").pipe.vae
    tiled: list[str] = []
    original_decode, original_encode = vae.tiled_decode, vae._tiled_encode
    monkeypatch.setattr(vae, "tiled_decode", lambda *a, **k: tiled.append("decode") or original_decode(*a, **k))
    monkeypatch.setattr(vae, "_tiled_encode", lambda *a, **k: tiled.append("encode") or original_encode(*a, **k))
    saved = studio.upscale(refined.id, width=264, height=264, strength=0.3)
    assert "encode" in tiled and "decode" in tiled
    assert vae.use_tiling is False  # switched off again afterwards
    count = len(tiled)
    again = studio.rerun(saved.id)
    assert len(tiled) > count and pixel_hash(again.image) == pixel_hash(saved.image)
    tiled.clear()
    studio.upscale(refined.id, scale=2)  # 128² is under the threshold: whole
    assert tiled == []


# -- ESRGAN-family upscalers (spandrel) from the models folder ---------------------------------------


@pytest.fixture(scope="module")
def esrgan(studio):
    """A tiny random Real-ESRGAN Compact (×2) in <home>/models/ESRGAN, and a pickled copy beside it."""
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    model = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    folder = studio.home / "models" / "ESRGAN"
    folder.mkdir(parents=True, exist_ok=True)
    (studio.home / "models" / "Lora").mkdir(exist_ok=True)  # an A1111 models folder
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "tiny-x2.safetensors")
    torch.save(model.state_dict(), folder / "tiny-x2.pth")
    return folder / "tiny-x2.safetensors"


def test_an_esrgan_model_is_the_pixel_upscaler(studio, refined, esrgan):
    import torch
    from spandrel import ModelLoader

    saved = studio.upscale(refined.id, scale=2, upscaler="tiny-x2")
    assert rgb(saved.image).shape == (128, 128, 3)
    # The stored source is what spandrel's model makes of the parent's pixels, called directly.
    model = ModelLoader().load_from_file(esrgan).eval()
    pixels = torch.from_numpy(rgb(refined.image).astype(np.float32) / 255).permute(2, 0, 1)[None]
    expected = (model(pixels)[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(rgb(studio.read_file(saved.recipe.source_image_sha256)), expected)
    assert any("(tiny-x2)" in note for note in saved.notes)
    again = studio.rerun(saved.id)  # from the stored source: no upscaler runs
    assert pixel_hash(again.image) == pixel_hash(saved.image)


def test_an_esrgan_model_is_run_in_tiles_without_seams(esrgan, monkeypatch):
    import pipelines.models.upscalers as upscalers

    image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    whole = np.asarray(upscalers.upscale(esrgan, image, 112, 80))
    monkeypatch.setattr(
        upscalers, "TILE", 16
    )  # 3×4 tiles, each with 16 px of context (the model sees 4 px around a pixel)
    assert np.array_equal(np.asarray(upscalers.upscale(esrgan, image, 112, 80)), whole)


def test_a_pickled_upscaler_is_refused_before_any_model_work(studio, refined, esrgan, monkeypatch):
    from atelier.studio import Studio

    monkeypatch.setattr(Studio, "engine", property(lambda self: pytest.fail("the engine was used")))
    with pytest.raises(ValueError, match=r"^upscaler: .*pickle"):
        studio.upscale(refined.id, scale=2, upscaler="tiny-x2.pth")
    with pytest.raises(ValueError, match=r"^upscaler: no upscaler named 'nope'.*tiny-x2"):
        studio.upscale(refined.id, scale=2, upscaler="nope")
