"""Requests built to make the server work without end: each refused by a named limit, before model work."""

from __future__ import annotations

import io
import json
import math
import struct
import subprocess
import sys
import time
import zlib

import pytest
from PIL import Image, ImageOps

from atelier.edit_inputs import image_size, open_image
from atelier.requests import GenerationRequest, ModelChoice, build_recipe, plan_drafts
from pipelines.recipe import (
    MAX_CONTROLNETS,
    MAX_LORAS,
    MAX_PROMPT_CHARS,
    ControlUnit,
    LoraRef,
    ModelRef,
    Recipe,
    loads_limited_json,
)

MODELS = ModelChoice("tiny", "tiny")
MEGABYTE_PROMPT = "a cat, " * (1024 * 1024 // 7)


# -- prompt length ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["prompt", "negative"])
def test_a_1_mb_prompt_is_refused_by_the_request_builder_in_under_a_second(field):
    started = time.perf_counter()
    with pytest.raises(ValueError, match=f"over the limit of {MAX_PROMPT_CHARS} characters per prompt"):
        plan_drafts(GenerationRequest(**{"prompt": "a cat", field: MEGABYTE_PROMPT}), MODELS)
    assert time.perf_counter() - started < 1.0


def test_a_1_mb_dynamic_prompt_is_refused_before_it_is_expanded():
    template = "{a|b} " * (1024 * 1024 // 6)
    started = time.perf_counter()
    with pytest.raises(ValueError, match="prompt: 1048572 characters is over the limit"):
        GenerationRequest(prompt=template, combinatorial=True)
    assert time.perf_counter() - started < 1.0


def test_the_longest_allowed_prompt_still_builds():
    recipe = build_recipe(GenerationRequest(prompt="x" * MAX_PROMPT_CHARS, negative="y" * MAX_PROMPT_CHARS), MODELS)
    assert len(recipe.prompt) == len(recipe.negative_prompt) == MAX_PROMPT_CHARS
    with pytest.raises(ValueError, match="negative_prompt: 4001 characters"):
        recipe.replace(negative_prompt="y" * (MAX_PROMPT_CHARS + 1))


def test_a_1_mb_prompt_is_refused_by_the_cli_in_under_a_second(tmp_path, capsys, monkeypatch):
    from atelier.cli import main

    monkeypatch.setenv("ATELIER_HOME", str(tmp_path / "home"))
    started = time.perf_counter()
    code = main(["draft", "--prompt", MEGABYTE_PROMPT, "--model", "tiny"])
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code == 2
    assert f"over the limit of {MAX_PROMPT_CHARS} characters per prompt" in err
    assert len(err) < 500  # the message, not the prompt echoed back
    assert elapsed < 1.0
    assert not (tmp_path / "home").exists()  # refused before the home was opened


def test_a_long_prompt_in_a_cli_process_is_refused_without_a_model(tmp_path):
    env = {"ATELIER_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    prompt = "a cat, " * (120 * 1024 // 7)  # an argument is at most 128 KiB on Linux
    code = "import sys, atelier.cli; rc = atelier.cli.main(sys.argv[1:]); print('torch' in sys.modules); sys.exit(rc)"
    proc = subprocess.run(
        [sys.executable, "-c", code, "draft", "--prompt", prompt], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 2
    assert "over the limit of 4000 characters per prompt" in proc.stderr
    assert proc.stdout.strip() == "False"  # no torch, so no model: the request was refused first


# -- absurd values -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, field",
    [
        (dict(guidance=math.nan), "guidance"),
        (dict(guidance=math.inf), "guidance"),
        (dict(switch=-math.inf), "switch"),
        (dict(refine_strength=math.nan), "refine.strength"),
        (dict(steps=10**9), "steps"),
        (dict(steps=1e9), "steps"),
        (dict(steps="20"), "steps"),
        (dict(count=10**9), "drafts"),
        (dict(width=10**9, height=1024), "width"),
        (dict(seed=-1), "seed"),
        (dict(seed=2**64), "seed"),
        (dict(source_size=(512, 512), strength=math.nan), "strength"),
        (dict(source_size=(512, 512), strength=1e9), "strength"),
        (dict(prompt=123), "prompt"),
        (dict(negative=["a"]), "negative_prompt"),
        (dict(scheduler="Euler; rm -rf /"), "scheduler"),
        (dict(prompt="a cat <lora:x:1e9>"), "loras.weight"),
    ],
)
def test_absurd_values_are_refused_naming_the_field(values, field):
    request = {"prompt": "a cat", **values}
    with pytest.raises(ValueError, match=rf"^{field}:") as refused:
        plan_drafts(GenerationRequest(**request), MODELS)
    assert "Traceback" not in str(refused.value) and len(str(refused.value)) < 400


# -- counts and pixels ------------------------------------------------------------------------------------


def test_loras_per_request_are_limited_whether_picked_or_named_in_the_prompt():
    picked = tuple(LoraRef(f"lora{i}") for i in range(MAX_LORAS))
    assert len(build_recipe(GenerationRequest(prompt="a cat", loras=picked), MODELS).loras) == MAX_LORAS
    with pytest.raises(ValueError, match=f"loras: {MAX_LORAS + 1} is over the limit of {MAX_LORAS} per request"):
        build_recipe(GenerationRequest(prompt="a cat <lora:one_more:1>", loras=picked), MODELS)


def test_controlnet_units_per_request_are_limited():
    units = tuple(ControlUnit(model=ModelRef(f"cn{i}")) for i in range(MAX_CONTROLNETS + 1))
    recipe = Recipe(model=ModelRef("tiny"), prompt="a cat", seed=1)
    assert len(recipe.replace(controlnets=units[:MAX_CONTROLNETS]).controlnets) == MAX_CONTROLNETS
    with pytest.raises(ValueError, match=f"controlnets: {MAX_CONTROLNETS + 1} is over the limit of {MAX_CONTROLNETS}"):
        recipe.replace(controlnets=units)


def test_drafts_times_pixels_are_limited():
    assert plan_drafts(GenerationRequest(prompt="a cat", count=16, width=1024, height=1024), MODELS).count == 16
    assert plan_drafts(GenerationRequest(prompt="a cat", count=1, width=4096, height=4096), MODELS).count == 1
    with pytest.raises(ValueError, match="drafts × size: 26214400 pixels in one request is over the limit"):
        plan_drafts(GenerationRequest(prompt="a cat", count=16, width=1280, height=1280), MODELS)
    with pytest.raises(ValueError, match="drafts × size"):
        plan_drafts(GenerationRequest(prompt="a {cat|dog}", count=2, width=4096, height=4096), MODELS)
    with pytest.raises(ValueError, match="drafts × size"):
        plan_drafts(GenerationRequest(prompt="a cat", width=2048, height=2048, sweep="steps=10,20,30,40,50"), MODELS)


# -- uploads ----------------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int, image_data: bytes) -> bytes:
    """A palette PNG whose header claims width×height, with the given (compressed) image data."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
    return (
        b"\x89PNG\r\n\x1a\n" + header + _chunk(b"PLTE", b"\0\0\0") + _chunk(b"IDAT", image_data) + _chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_upload_is_refused_from_its_header():
    rows = zlib.compressobj(9)
    data = b"".join(rows.compress(b"\0" * 8001) for _ in range(8000)) + rows.flush()
    bomb = bomb_png(8000, 8000, data)  # 64 MP of pixels in a file of tens of kilobytes
    assert len(bomb) < 200_000
    for read in (open_image, image_size):
        started = time.perf_counter()
        with pytest.raises(ValueError, match="source image: 8000×8000 pixels is over the limit of 16777216 pixels"):
            read(bomb, "source image")
        assert time.perf_counter() - started < 1.0


def test_the_pixel_limit_is_read_before_any_pixel_is_decoded():
    """Garbage image data behind a huge header: refused for its size, so nothing was decoded."""
    with pytest.raises(ValueError, match="over the limit of 16777216 pixels"):
        open_image(bomb_png(5000, 5000, b"not zlib at all"), "mask")
    with pytest.raises(ValueError, match="not an image Pillow can read"):
        open_image(bomb_png(64, 64, b"not zlib at all"), "mask")  # the same garbage under the limit: decoded


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_image_size_reads_the_rotated_size_from_the_header(orientation):
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.new("RGB", (96, 32), "red").save(buffer, format="JPEG", exif=exif)
    data = buffer.getvalue()
    assert image_size(data) == ImageOps.exif_transpose(open_image(data, "source image")).size


# -- metadata JSON ------------------------------------------------------------------------------------------


def test_a_recipe_nested_50_000_deep_is_a_clear_error_not_a_recursion_error():
    for deep in ('{"":' * 50_000 + "1" + "}" * 50_000, "[" * 50_000 + "]" * 50_000):  # under the size cap
        with pytest.raises(ValueError, match="recipe: JSON nested deeper than the limit of 16 levels"):
            Recipe.from_json(deep)
    nested = json.dumps({"prompt": [[[[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]]]})
    with pytest.raises(ValueError, match="nested deeper"):
        Recipe.from_json(nested)


def test_recipe_json_is_size_capped_before_parsing():
    with pytest.raises(ValueError, match="recipe: 300000 characters of JSON is over the limit of 262144"):
        Recipe.from_json(" " * 300_000)
    recipe = Recipe(model=ModelRef("tiny"), prompt="a" * MAX_PROMPT_CHARS, seed=1)
    assert Recipe.from_json(recipe.to_json()) == recipe


def test_limited_json_counts_depth_exactly():
    assert loads_limited_json("[[1]]", what="x", max_chars=100, max_depth=3) == [[1]]
    with pytest.raises(ValueError, match="x: JSON nested deeper than the limit of 2 levels"):
        loads_limited_json("[[1]]", what="x", max_chars=100, max_depth=2)


# -- tokens, where the tokenizer is loaded -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_base(tiny_model_dir):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir / "base")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    "prompt, syntax",
    [
        ("cat " * 999, "compel"),  # 999 tokens: 14 chunks, within the character limit
        (" BREAK ".join(["a cat"] * 13), "a1111"),  # 13 chunks of two tokens
        ('("a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m").and()', "compel"),  # 13 parts
    ],
)
def test_prompts_over_the_chunk_limit_are_refused_before_the_text_encoders_run(tiny_base, count_calls, prompt, syntax):
    from pipelines.engine.prompt_encoding import PromptEncoder

    assert len(prompt) <= MAX_PROMPT_CHARS
    with count_calls(te1=tiny_base.text_encoder, te2=tiny_base.text_encoder_2) as calls:
        with pytest.raises(ValueError, match="prompt: encodes to 1[34] chunks of 77 tokens, over the limit of 12"):
            PromptEncoder().encode_base(tiny_base, prompt, "", syntax, "tiny")
    assert calls["te1"] == calls["te2"] == 0


def test_twelve_chunks_are_encoded(tiny_base):
    from pipelines.engine.prompt_encoding import PromptEncoder

    embeds = PromptEncoder().encode_base(tiny_base, " BREAK ".join(["a cat"] * 12), "blurry", "a1111", "tiny")
    assert embeds.prompt_embeds.shape[1] == 12 * 77


# -- memory of the largest upload -------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_largest_allowed_upload_has_bounded_memory():
    """`atelier bench`'s figure: a 16.7 MP noise PNG (about 48 MB) through img2img's input path."""
    from atelier.bench import max_upload_peak_rss_mb

    figures = max_upload_peak_rss_mb()
    assert figures["max_upload_side"] == 4096
    assert figures["max_upload_file_mb"] > 40  # noise: PNG cannot shrink it
    # file bytes + decoded RGB + the fitted copy; the server grew by 2.6 GB for such an upload before
    assert figures["max_upload_baseline_rss_mb"] < figures["max_upload_peak_rss_mb"] < 512


def test_variations_times_pixels_are_limited():
    from atelier.requests import varied_recipes

    parent = Recipe(model=ModelRef("tiny"), prompt="a cat", seed=1, width=2048, height=2048)
    assert len(varied_recipes(parent, strength=0.1, count=4, variation_seed=7)) == 4
    with pytest.raises(ValueError, match="drafts × size: 20971520 pixels in one request is over the limit"):
        varied_recipes(parent, strength=0.1, count=5, variation_seed=7)
