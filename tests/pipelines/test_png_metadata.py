"""PNG metadata: the Recipe and A1111 parameters written, and read back from Atelier, A1111, InvokeAI."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from pipelines.provenance.png_metadata import (
    a1111_parameters,
    encode_png,
    parse_a1111_parameters,
    read_png,
    recipe_from_a1111,
)
from pipelines.recipe import LoraRef, MicroConditioning, ModelRef, Recipe, RefineSettings

SHA_BASE = "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6ffb3a91d3b1e"
SHA_REFINER = "7440042bbdc8a24813002c09b6b69b64dc90fded4472613437b7f55f9b7d9c5f"
SHA_LORA = "1a2b3c4d5e6f" + "0" * 52
AUTOV3_LORA = "9f8e7d6c5b4a"  # what the caller reads from the LoRA file (A1111's hash)


def make_recipe(**changes) -> Recipe:
    fields = dict(
        model=ModelRef("sd_xl_base_1.0", SHA_BASE),
        prompt="a (red fox)1.2 in the snow, café ☕, cinematic",
        negative_prompt="lowres, blurry",
        seed=2938475610,
        steps=30,
        guidance=6.5,
        scheduler="DPM++ 2M Karras",
        width=832,
        height=1216,
        switch=0.8,
        refine=RefineSettings(model=ModelRef("sd_xl_refiner_1.0", SHA_REFINER)),
        loras=(LoraRef("fluffy_style", SHA_LORA, 0.7),),
        micro=MicroConditioning(original_size=(2048, 2048), aesthetic_score=6.5),
        watermark_applied=True,
        app_version="0.1.0",
    )
    fields.update(changes)
    return Recipe(**fields)


def image(width=64, height=48) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def png_with_chunks(**chunks: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image().save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


# -- Atelier PNGs ----------------------------------------------------------------------------------


def test_round_trip_gives_the_recipe_exactly_and_keeps_pixels(tmp_path):
    recipe, pixels = make_recipe(), image()
    data = encode_png(pixels, recipe)
    path = tmp_path / "out.png"
    path.write_bytes(data)
    for source in (data, path, str(path)):
        back = read_png(source)
        assert back.recipe == recipe and back.source == "atelier" and back.unmapped == ()
    with Image.open(path) as reopened:
        assert np.array_equal(np.asarray(reopened), np.asarray(pixels))
        assert reopened.text["atelier_recipe"] == recipe.to_json()
        assert reopened.text["parameters"] == a1111_parameters(recipe)


def test_watermark_survives_metadata():
    from pipelines.provenance.watermark import apply_watermark, detect_watermark

    y, x = np.mgrid[0:512, 0:512]
    luma = 90 + 0.2 * x + 0.1 * y + 20 * np.sin(x / 9) * np.cos(y / 13)  # low-chroma, textured
    pixels = np.stack([luma, luma * 0.95, luma * 0.9], axis=-1).clip(0, 255).astype(np.uint8)
    marked, applied = apply_watermark(Image.fromarray(pixels, "RGB"))
    assert applied
    with Image.open(io.BytesIO(encode_png(marked, make_recipe()))) as reopened:
        assert detect_watermark(reopened) == detect_watermark(marked) == (True, 1.0)


def test_a1111_text_written_by_atelier_parses_back_to_the_same_values():
    recipe = make_recipe(mode="img2img", strength=0.35, source_image_sha256="ab" * 32)
    fields = parse_a1111_parameters(a1111_parameters(recipe, {SHA_LORA: AUTOV3_LORA}))
    assert fields == {
        "Prompt": recipe.prompt + " <lora:fluffy_style:0.7>",
        "Negative prompt": "lowres, blurry",
        "Steps": "30",
        "Sampler": "DPM++ 2M Karras",
        "CFG scale": "6.5",
        "Seed": "2938475610",
        "Size": "832x1216",
        "Model hash": SHA_BASE[:10],
        "Model": "sd_xl_base_1.0",
        "Denoising strength": "0.35",
        "Refiner": f"sd_xl_refiner_1.0 [{SHA_REFINER[:10]}]",
        "Refiner switch at": "0.8",
        "Lora hashes": f"fluffy_style: {AUTOV3_LORA}",  # quoted in the text: it holds a colon
        "Prompt syntax": "compel",
        "Version": "Atelier 0.1.0",
    }
    back = recipe_from_a1111(a1111_parameters(recipe, {SHA_LORA: AUTOV3_LORA}))
    same = (
        "prompt",
        "negative_prompt",
        "prompt_syntax",
        "mode",
        "strength",
        "seed",
        "steps",
        "guidance",
        "scheduler",
        "width",
        "height",
        "switch",
        "app_version",
    )
    assert {k: getattr(back.recipe, k) for k in same} == {k: getattr(recipe, k) for k in same}
    assert back.recipe.model == ModelRef("sd_xl_base_1.0")  # a 10-digit hash cannot pin the sha256
    assert back.recipe.refine.model == ModelRef("sd_xl_refiner_1.0")
    assert back.recipe.loras == (LoraRef("fluffy_style", None, 0.7),)
    assert back.unmapped == (
        f"Model hash: {SHA_BASE[:10]}",
        f"Refiner hash: {SHA_REFINER[:10]}",
        f"Lora hashes: fluffy_style: {AUTOV3_LORA}",
    )
    assert back.lora_hashes == (("fluffy_style", AUTOV3_LORA),)


@pytest.mark.parametrize(
    ("changes", "absent"),
    [
        (dict(negative_prompt=""), "Negative prompt:"),
        (dict(refine=RefineSettings(model=None)), "Refiner"),
        (dict(switch=1.0), "Refiner"),
        (dict(loras=()), "Lora hashes"),
        (dict(), "Lora hashes"),  # no AutoV3 known for the LoRA: no whole-file hash in its place
        (dict(model=ModelRef("stabilityai/stable-diffusion-xl-base-1.0")), "Model hash"),
    ],
)
def test_a1111_text_leaves_out_what_does_not_apply(changes, absent):
    assert absent not in a1111_parameters(make_recipe(**changes))


def test_a1111_quotes_values_with_commas_and_colons():
    recipe = make_recipe(model=ModelRef(r"C:\models\my, model.safetensors"))
    text = a1111_parameters(recipe)
    assert r'Model: "C:\\models\\my, model.safetensors"' in text
    assert parse_a1111_parameters(text)["Model"] == recipe.model.name
    assert recipe_from_a1111(text).recipe.model.name == recipe.model.name


# -- A1111 PNGs --------------------------------------------------------------------------------------

A1111_TXT2IMG = """masterpiece, best quality, (a red fox:1.2) in the snow, <lora:fluffy_style:0.7>, cinematic
lighting, 8k
Negative prompt: lowres, (blurry:1.3),
watermark
Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 2938475610, Size: 832x1216, \
Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Denoising strength: 0.35, Hires upscale: 1.5, Hires steps: 10, \
Hires upscaler: 4x-UltraSharp, Refiner: sd_xl_refiner_1.0 [7440042bbd], Refiner switch at: 0.8, \
Lora hashes: "fluffy_style: 1a2b3c4d5e6f", ADetailer model: face_yolov8n.pt, Version: v1.10.1"""

A1111_IMG2IMG = """portrait of an old sailor, oil on canvas
Steps: 25, Sampler: Euler a, CFG scale: 7, Seed: 17, Size: 1024x1024, Model: "juggernaut, v9", \
Denoising strength: 0.55, Clip skip: 2, Version: v1.6.0"""


def test_a1111_png_maps_to_the_closest_recipe():
    back = read_png(png_with_chunks(parameters=A1111_TXT2IMG))
    r = back.recipe
    assert back.source == "a1111"
    assert r.prompt == "masterpiece, best quality, (a red fox:1.2) in the snow, , cinematic\nlighting, 8k"
    assert r.negative_prompt == "lowres, (blurry:1.3),\nwatermark"
    assert (r.prompt_syntax, r.mode, r.steps, r.seed, r.guidance) == ("a1111", "txt2img", 30, 2938475610, 6.5)
    assert (r.scheduler, r.width, r.height) == ("DPM++ 2M Karras", 832, 1216)
    assert r.model == ModelRef("sd_xl_base_1.0")
    assert r.refine == RefineSettings(model=ModelRef("sd_xl_refiner_1.0")) and r.switch == 0.8
    assert r.loras == (LoraRef("fluffy_style", None, 0.7),)
    assert back.unmapped == (
        "Model hash: 31e35c80fc",
        "Refiner hash: 7440042bbd",
        "Denoising strength: 0.35 (hires fix)",
        "Lora hashes: fluffy_style: 1a2b3c4d5e6f",
        "Version: v1.10.1",
        "Hires upscale: 1.5",
        "Hires steps: 10",
        "Hires upscaler: 4x-UltraSharp",
        "ADetailer model: face_yolov8n.pt",
    )


def test_a1111_img2img_with_quoted_model_name():
    back = recipe_from_a1111(A1111_IMG2IMG)
    r = back.recipe
    assert (r.prompt, r.negative_prompt, r.mode, r.strength) == (
        "portrait of an old sailor, oil on canvas",
        "",
        "img2img",
        0.55,
    )
    assert (r.scheduler, r.guidance, r.seed, r.model.name) == ("Euler a", 7.0, 17, "juggernaut, v9")
    assert r.refine is None and r.switch == 1.0  # A1111 ran its model to the end
    assert back.unmapped == ("Version: v1.6.0", "Clip skip: 2")


@pytest.mark.parametrize(
    ("sampler", "expected", "unmapped"),
    [
        ("Sampler: DPM++ 2M Karras", "DPM++ 2M Karras", ()),
        ("Sampler: DPM++ 2M, Schedule type: Automatic", "DPM++ 2M Karras", ()),
        ("Sampler: DPM++ 2M, Schedule type: Uniform", "DPM++ 2M", ()),
        ("Sampler: UniPC, Schedule type: Automatic", "UniPC", ()),
        ("Sampler: DPM++ SDE, Schedule type: Karras", "Euler", ("Sampler: DPM++ SDE (schedule Karras)",)),
        ("Sampler: Heun", "Euler", ("Sampler: Heun",)),
    ],
)
def test_a1111_sampler_names(sampler, expected, unmapped):
    back = recipe_from_a1111(f"a cat\nSteps: 20, {sampler}, Seed: 1, Size: 512x512")
    assert back.recipe.scheduler == expected and back.unmapped == unmapped


# -- InvokeAI PNGs ---------------------------------------------------------------------------------

INVOKEAI = {
    "generation_mode": "sdxl_txt2img",
    "positive_prompt": "a (lighthouse)1.2 at dusk, oil painting",
    "negative_prompt": "blurry",
    "width": 1024,
    "height": 1024,
    "seed": 3344556677,
    "rand_device": "cpu",
    "cfg_scale": 6.0,
    "cfg_rescale_multiplier": 0,
    "steps": 28,
    "scheduler": "dpmpp_2m_k",
    "model": {
        "key": "c1a2b3",
        "hash": "blake3:9f8e7d6c5b4a",
        "name": "Juggernaut XL v9",
        "base": "sdxl",
        "type": "main",
    },
    "positive_style_prompt": "a (lighthouse)1.2 at dusk, oil painting",
    "negative_style_prompt": "",
    "loras": [
        {
            "model": {"key": "l1", "hash": "sha256:" + SHA_LORA, "name": "Painterly", "base": "sdxl", "type": "lora"},
            "weight": 0.6,
        }
    ],
    "refiner_model": {
        "key": "r1",
        "hash": "sha256:" + SHA_REFINER.upper(),
        "name": "sd_xl_refiner_1.0",
        "base": "sdxl-refiner",
        "type": "main",
    },
    "refiner_cfg_scale": 6.0,
    "refiner_steps": 28,
    "refiner_scheduler": "dpmpp_2m_k",
    "refiner_positive_aesthetic_score": 6,
    "refiner_negative_aesthetic_score": 2.5,
    "refiner_start": 0.75,
    "app_version": "4.2.9",
}


def test_invokeai_png_maps_to_the_closest_recipe():
    back = read_png(png_with_chunks(invokeai_metadata=json.dumps(INVOKEAI)))
    r = back.recipe
    assert back.source == "invokeai"
    assert (r.prompt, r.negative_prompt, r.prompt_syntax) == (INVOKEAI["positive_prompt"], "blurry", "compel")
    assert (r.seed, r.steps, r.guidance, r.scheduler, r.width, r.height) == (
        3344556677,
        28,
        6.0,
        "DPM++ 2M Karras",
        1024,
        1024,
    )
    assert r.model == ModelRef("Juggernaut XL v9")
    assert r.loras == (LoraRef("Painterly", SHA_LORA, 0.6),)
    assert r.refine == RefineSettings(model=ModelRef("sd_xl_refiner_1.0", SHA_REFINER)) and r.switch == 0.75
    assert (r.micro.aesthetic_score, r.micro.negative_aesthetic_score) == (6.0, 2.5)
    assert back.unmapped == ("model.hash: blake3:9f8e7d6c5b4a", "app_version: 4.2.9")


def test_invokeai_unknown_fields_are_listed():
    data = INVOKEAI | {
        "generation_mode": "unified_canvas",
        "scheduler": "heun_k",
        "refiner_steps": 10,
        "seamless_x": True,
    }
    back = read_png(png_with_chunks(invokeai_metadata=json.dumps(data)))
    assert back.recipe.scheduler == "Euler" and back.recipe.mode == "txt2img"
    assert set(back.unmapped) >= {
        "scheduler: heun_k",
        "generation_mode: unified_canvas",
        "refiner_steps: 10",
        "refiner_scheduler: dpmpp_2m_k",
        "seamless_x: true",
    }


def test_atelier_chunk_wins_over_the_others():
    recipe = make_recipe()
    data = png_with_chunks(
        parameters=A1111_IMG2IMG, invokeai_metadata=json.dumps(INVOKEAI), atelier_recipe=recipe.to_json()
    )
    assert read_png(data).recipe == recipe


# -- malformed metadata: a clear ValueError, never a crash -----------------------------------------


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    image().save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_jpeg(), "not a PNG file"),
        (b"", "not a PNG file"),
        (png_with_chunks()[:60], "damaged PNG"),
        (png_with_chunks(), "no generation metadata"),
        (png_with_chunks(Comment="hello"), "no generation metadata"),
        (png_with_chunks(atelier_recipe="{not json"), "atelier_recipe chunk: recipe: not valid JSON"),
        (png_with_chunks(atelier_recipe=make_recipe().to_json().replace('"steps":30', '"steps":0')), "steps"),
        (png_with_chunks(atelier_recipe='{"prompt": "x"}'), "atelier_recipe chunk"),
        (png_with_chunks(parameters="just a prompt, nothing else"), "A1111 parameters: no Steps"),
        (png_with_chunks(parameters="a cat\nSteps: many, Seed: 1, Size: 512x512"), "Steps must be a whole number"),
        (png_with_chunks(parameters="a cat\nSteps: 20, Seed: 1, Size: large"), "Size must be WIDTHxHEIGHT"),
        (
            png_with_chunks(parameters="a cat\nSteps: 20, Seed: 1, Size: 500x500"),
            "A1111 parameters: width: must be a multiple of 8",
        ),
        (
            png_with_chunks(parameters="a cat\nSteps: 20, Seed: 1, Size: 512x512, CFG scale: high"),
            "CFG scale must be a number",
        ),
        (png_with_chunks(invokeai_metadata="{oops"), "InvokeAI metadata: not valid JSON"),
        (png_with_chunks(invokeai_metadata="[1, 2]"), "must be a JSON object"),
        (
            png_with_chunks(
                invokeai_metadata=json.dumps({k: v for k, v in INVOKEAI.items() if k != "positive_prompt"})
            ),
            "positive_prompt must be a string",
        ),
        (png_with_chunks(invokeai_metadata=json.dumps(INVOKEAI | {"seed": "lucky"})), "seed must be a whole number"),
        (
            png_with_chunks(invokeai_metadata=json.dumps(INVOKEAI | {"scheduler": ["euler"]})),
            "scheduler must be a name",
        ),
        (png_with_chunks(invokeai_metadata=json.dumps(INVOKEAI | {"model": "juggernaut"})), "model must be an object"),
        (
            png_with_chunks(invokeai_metadata=json.dumps({k: v for k, v in INVOKEAI.items() if k != "steps"})),
            "no steps",
        ),
    ],
)
def test_malformed_metadata_is_a_clear_value_error(data, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        read_png(data)


def test_missing_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="cannot read the file"):
        read_png(tmp_path / "nope.png")


def test_recipe_read_from_a_saved_png_reruns_to_the_same_pixels(engine, tiny_recipe):
    """Render with the tiny model, save with metadata, read the PNG back, render again."""
    first = engine.render(tiny_recipe(prompt="a (lighthouse)1.2 at dusk", steps=4))
    assert first.recipe.watermark_applied is False  # 64 px: too small to mark, and the Recipe says so
    back = read_png(encode_png(first.image, first.recipe))
    assert back.recipe == first.recipe
    again = engine.render(back.recipe.replace(watermark_applied=None))
    assert np.array_equal(np.asarray(again.image), np.asarray(first.image))
