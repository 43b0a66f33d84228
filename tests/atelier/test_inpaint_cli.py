"""`atelier img2img --mask`: inpainting end to end over a temporary home — the mask stored with the image,
the source kept outside it, re-runs exact from the stored mask, bad options refused before model work."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atelier.cli import main
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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--mask", "notes.txt"), "mask: not an image"),
        (("--mask", "mask.png", "--mask-blur", "100"), "mask_blur"),
        (("--mask", "mask.png", "--inpaint-area", "x"), "inpaint_area"),
        (("--mask-blur", "4"), "--mask"),
    ],
)
def test_bad_inpaint_options_exit_2_naming_the_field(capsys, home, monkeypatch, args, message):
    monkeypatch.chdir(home)
    monkeypatch.setattr("atelier.studio.Studio.edit", lambda *a, **k: pytest.fail("model work started"))
    code = main(["img2img", "--image", "source.png", "--strength", "0.5", *TINY, *args, "--home", str(home)])
    assert code == 2 and message in capsys.readouterr().err
