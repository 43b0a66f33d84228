"""`atelier img2img --mask`: inpainting end to end over a temporary home — the mask stored with the image,
the source kept outside it, re-runs exact from the stored mask, bad options refused before model work."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atelier.cli import main
from atelier.requests import GenerationRequest, ModelChoice, build_recipe
from atelier.upscale import UpscaleRequest, upscale_recipe
from pipelines.sizes import fit_to_bucket
from storage.gallery import Gallery

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines"))

from edit_models import smooth_image  # noqa: E402

TINY = ("--model", "tiny", "--refiner", "tiny", "--steps", "6", "--width", "64", "--height", "64")
TINY += ("--seed", "3", "--no-watermark", "--prompt", "a red door")


def atelier(capsys, home, *args) -> dict:
    code = main([*args, "--home", str(home), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def rgb(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def home(make_tiny_home, tmp_path_factory):
    home = make_tiny_home(tmp_path_factory.mktemp("inpaint-home"))
    smooth_image(5, size=(64, 64)).save(home / "source.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 40, 48))
    mask.save(home / "mask.png")
    (home / "notes.txt").write_text("not an image")
    return home


@pytest.mark.parametrize("area", ["whole", "masked"])
def test_inpaint_keeps_the_source_outside_the_mask_and_reruns_from_the_stored_mask(capsys, home, area):
    args = ("--image", str(home / "source.png"), "--mask", str(home / "mask.png"), "--strength", "0.9")
    out = atelier(capsys, home, "img2img", *args, "--inpaint-area", area, "--inpaint-padding", "8", *TINY)
    assert set(out) >= {"id", "image"}
    with Gallery.open(home) as gallery:
        saved = gallery.get(out["id"])
    mask_sha = hashlib.sha256((home / "mask.png").read_bytes()).hexdigest()
    assert saved.recipe.mask_sha256 == mask_sha and dict(saved.inputs)["mask"] == mask_sha
    assert saved.recipe.inpaint_area == area
    mask = np.asarray(Image.open(home / "mask.png"))
    diff = np.abs(rgb(out["image"]) - np.asarray(fit_to_bucket(Image.open(home / "source.png"), 64, 64))).max(axis=2)
    assert diff[mask == 0].max() <= 2 and diff[mask == 255].mean() > 5
    rerun = atelier(capsys, home, "rerun", str(out["id"]))
    assert np.array_equal(rgb(rerun["image"]), rgb(out["image"]))


def test_expand_outpaints_a_larger_canvas_keeps_the_source_and_reruns_from_the_stored_source(capsys, home):
    args = ("--image", str(home / "source.png"), "--expand", "16,0,24,8", "--strength", "0.9", "--mask-blur", "2")
    out = atelier(capsys, home, "img2img", *args, *TINY[:6], *TINY[10:])  # no --width/--height: its own size
    assert set(out) >= {"id", "image"}
    with Image.open(out["image"]) as image:
        assert image.size == (64 + 16 + 24, 64 + 8)  # the source's own size plus the border
    with Gallery.open(home) as gallery:
        saved = gallery.get(out["id"])
    assert saved.recipe.expand == (16, 0, 24, 8) and saved.recipe.mask_sha256 is None
    assert saved.recipe.source_image_sha256 == hashlib.sha256((home / "source.png").read_bytes()).hexdigest()
    source = np.asarray(Image.open(home / "source.png").convert("RGB")).astype(int)
    kept = rgb(out["image"])[0:64, 16:80]  # the source's place on the canvas
    assert np.abs(kept - source)[:48, 16 + 8 : 40].max() <= 2  # beyond the seam (8 px + the blur's reach)
    rerun = atelier(capsys, home, "rerun", str(out["id"]))
    assert np.array_equal(rgb(rerun["image"]), rgb(out["image"]))


def test_masked_content_noise_is_recorded_and_differs_from_original(capsys, home):
    args = ("--image", str(home / "source.png"), "--mask", str(home / "mask.png"), "--strength", "0.6", *TINY)
    original = atelier(capsys, home, "img2img", *args)
    noise = atelier(capsys, home, "img2img", *args, "--masked-content", "noise")
    with Gallery.open(home) as gallery:
        assert gallery.get(noise["id"]).recipe.masked_content == "noise"
    mask = np.asarray(Image.open(home / "mask.png")) == 255
    assert np.abs(rgb(noise["image"]) - rgb(original["image"])).max(axis=2)[mask].mean() > 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--mask", "notes.txt"), "mask: not an image"),
        (("--mask", "mask.png", "--mask-blur", "100"), "mask_blur"),
        (("--mask", "mask.png", "--inpaint-area", "x"), "inpaint_area"),
        (("--mask-blur", "4"), "--mask"),
        (("--expand", "4,0,0,0"), "expand: must be"),
        (("--expand=-8,0,0,0",), "expand: must be"),
        (("--expand", "2048,0,0,0"), "expand: must be"),
        (("--masked-content", "noise"), "--masked-content"),
        (("--mask", "mask.png", "--masked-content", "fill"), "masked_content: must be one of original, noise"),
    ],
)
def test_bad_inpaint_options_exit_2_naming_the_field(capsys, home, monkeypatch, args, message):
    monkeypatch.chdir(home)
    monkeypatch.setattr("atelier.studio.Studio.edit", lambda *a, **k: pytest.fail("model work started"))
    code = main(["img2img", "--image", "source.png", "--strength", "0.5", *TINY, *args, "--home", str(home)])
    assert code == 2 and message in capsys.readouterr().err


def test_an_expand_that_is_not_four_numbers_is_a_usage_error(capsys, home):
    with pytest.raises(SystemExit) as exit_info:
        main(["img2img", "--image", "source.png", "--expand", "8,8", *TINY, "--home", str(home)])
    assert exit_info.value.code == 2 and "expected four integers L,T,R,B" in capsys.readouterr().err


def test_the_request_builder_makes_the_canvas_from_the_source_size_and_the_border():
    choice = ModelChoice(base="tiny", refiner=None)
    wide = GenerationRequest(prompt="sea", source_size=(2000, 1000), strength=0.8, expand=[64, 0, 64, 8])
    recipe = build_recipe(wide, choice)  # own size 1024×512 (longest side 1024), then the border
    assert (recipe.width, recipe.height, recipe.expand) == (1152, 520, (64, 0, 64, 8))
    noise = build_recipe(dataclasses.replace(wide, masked_content="noise"), choice)
    assert noise.masked_content == "noise" and noise.mode == "img2img"
    with pytest.raises(ValueError, match="masked_content, expand: .*img2img"):
        build_recipe(GenerationRequest(prompt="sea", expand=(8, 0, 0, 0)), choice)
    with pytest.raises(ValueError, match="expand: the canvas would be 4104×1024"):
        build_recipe(dataclasses.replace(wide, width=4096, height=1024, expand=(8, 0, 0, 0)), choice)
    with pytest.raises(ValueError, match="expand: must be"):
        build_recipe(dataclasses.replace(wide, expand=(0, 0, -8, 0)), choice)


def test_upscaling_an_outpainted_image_repaints_it_whole(tiny_recipe):
    parent = tiny_recipe(mode="img2img", strength=0.8, expand=(16, 8, 24, 0), width=104, height=72)
    parent = parent.replace(mask_sha256="ab" * 32, masked_content="noise")
    recipe = upscale_recipe(parent, UpscaleRequest(scale=2.0), 208, 144)
    assert (recipe.expand, recipe.mask_sha256, recipe.masked_content) == ((0, 0, 0, 0), None, "original")
    assert (recipe.width, recipe.height) == (208, 144)
