"""`atelier detect-watermark` and `atelier info` through the real command line."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from pipelines.provenance.png_metadata import encode_png
from pipelines.provenance.watermark import apply_watermark
from pipelines.recipe import ModelRef, Recipe


def atelier(*args, home):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ATELIER_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "atelier.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def textured(size=512) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size]
    luma = 90 + 0.2 * x + 0.1 * y + 20 * np.sin(x / 9) * np.cos(y / 13)
    return Image.fromarray(np.stack([luma, luma * 0.95, luma * 0.9], -1).clip(0, 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("provenance")
    recipe = Recipe(model=ModelRef("tiny"), prompt="a lighthouse, at dusk", seed=5, watermark_applied=True)
    marked, _ = apply_watermark(textured())
    paths = {
        "marked": folder / "marked.png",
        "plain": folder / "plain.png",
        "small": folder / "small.png",
        "jpeg": folder / "marked.jpg",
        "a1111": folder / "a1111.png",
        "text": folder / "notes.txt",
    }
    paths["marked"].write_bytes(encode_png(marked, recipe))
    textured().save(paths["plain"])
    textured(128).save(paths["small"])
    marked.save(paths["jpeg"], quality=90)
    info = PngImagePlugin.PngInfo()
    info.add_text(
        "parameters", "a red fox\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 3, Size: 512x512, Clip skip: 2"
    )
    buffer = io.BytesIO()
    textured(64).save(buffer, format="PNG", pnginfo=info)
    paths["a1111"].write_bytes(buffer.getvalue())
    paths["text"].write_text("not an image")
    return folder, recipe, paths


def test_detect_watermark_exit_status_and_json(files):
    home, _, paths = files
    ok = atelier("detect-watermark", str(paths["marked"]), "--json", home=home)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {
        "files": [{"file": str(paths["marked"]), "present": True, "bit_accuracy": 1.0, "note": None}],
        "all_present": True,
    }
    mixed = atelier(
        "detect-watermark",
        str(paths["marked"]),
        str(paths["plain"]),
        str(paths["jpeg"]),
        str(paths["small"]),
        "--json",
        home=home,
    )
    assert mixed.returncode == 1
    report = json.loads(mixed.stdout)
    assert [f["present"] for f in report["files"]] == [True, False, False, False]
    assert report["files"][1]["bit_accuracy"] < 0.9 and report["files"][2]["bit_accuracy"] < 0.9
    assert "too small" in report["files"][3]["note"] and report["all_present"] is False


def test_detect_watermark_text_output_and_unreadable_file(files):
    home, _, paths = files
    out = atelier("detect-watermark", str(paths["plain"]), str(paths["text"]), home=home)
    assert out.returncode == 2
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"{paths['plain']}: absent (bit accuracy 0.")
    assert lines[1].startswith(f"{paths['text']}: absent (bit accuracy 0.000) — cannot read the image")


def test_info_prints_the_exact_recipe(files):
    home, recipe, paths = files
    out = atelier("info", str(paths["marked"]), "--json", home=home)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["source"] == "atelier" and data["unmapped"] == []
    assert Recipe.from_dict(data["recipe"]) == recipe
    text = atelier("info", str(paths["marked"]), home=home).stdout
    assert "atelier metadata (exact)" in text and '"prompt": "a lighthouse, at dusk"' in text


def test_info_on_an_a1111_png_lists_unmapped_fields(files):
    home, _, paths = files
    data = json.loads(atelier("info", str(paths["a1111"]), "--json", home=home).stdout)
    assert data["source"] == "a1111" and data["unmapped"] == ["Clip skip: 2"]
    assert (data["recipe"]["prompt"], data["recipe"]["scheduler"], data["recipe"]["seed"]) == (
        "a red fox",
        "Euler a",
        3,
    )
    text = atelier("info", str(paths["a1111"]), home=home).stdout
    assert "closest match" in text and "not mapped:\n  Clip skip: 2" in text


@pytest.mark.parametrize(("name", "message"), [("jpeg", "not a PNG file"), ("plain", "no generation metadata")])
def test_info_errors_are_clear_with_exit_status_2(files, name, message):
    home, _, paths = files
    out = atelier("info", str(paths[name]), home=home)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("atelier info: ") and message in out.stderr
