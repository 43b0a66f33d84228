"""The editing commands end to end (in-process CLI over a temporary home): img2img from a file and from
the gallery with lineage, LoRA and ControlNet drafts recorded with their inputs, re-runs to the same pixels."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atelier.cli import main
from storage.gallery import Gallery

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines"))  # the tiny LoRA/ControlNet builders

from edit_models import pattern, smooth_image, tiny_controlnet, write_kohya  # noqa: E402

TINY = (
    "--model",
    "tiny",
    "--refiner",
    "tiny",
    "--steps",
    "6",
    "--width",
    "64",
    "--height",
    "64",
    "--seed",
    "3",
    "--no-watermark",
)


def atelier(capsys, home, *args) -> dict:
    code = main([*args, "--home", str(home), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def pixels(path) -> str:
    with Image.open(path) as image:
        return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


def generation(home, id):
    with Gallery.open(home) as gallery:
        return gallery.get(id)


@pytest.fixture(scope="module")
def home(tmp_path_factory, model_cache):
    """A home whose models folder (A1111 layout) has a tiny LoRA and a tiny canny ControlNet."""
    home = tmp_path_factory.mktemp("edit-home")
    base = model_cache.load_base("tiny")
    (home / "models" / "Lora").mkdir(parents=True)
    write_kohya(home / "models" / "Lora" / "ink.safetensors", base.pipe.unet, seed=4)
    tiny_controlnet(base.pipe.unet, 9).save_pretrained(home / "models" / "ControlNet" / "tiny-canny-sdxl")
    smooth_image(5, size=(80, 64)).save(home / "source.png")
    pattern(6).save(home / "edges.png")
    return home


def test_img2img_from_a_file_then_from_the_gallery_keeps_lineage_and_reruns(capsys, home):
    first = atelier(
        capsys,
        home,
        "img2img",
        "--image",
        str(home / "source.png"),
        "--strength",
        "0.6",
        *TINY,
        "--prompt",
        "a lake",
        "--switch",
        "1.0",
    )
    saved = generation(home, first["id"])
    source_sha = hashlib.sha256((home / "source.png").read_bytes()).hexdigest()
    assert saved.kind == "img2img" and saved.parent_id is None
    assert saved.recipe.source_image_sha256 == source_sha and dict(saved.inputs)["source"] == source_sha
    second = atelier(
        capsys, home, "img2img", "--image", str(first["id"]), "--strength", "0.5", *TINY, "--prompt", "a lake at night"
    )
    assert second["parent_id"] == first["id"] and generation(home, second["id"]).parent_id == first["id"]
    rerun = atelier(capsys, home, "rerun", str(second["id"]))
    assert pixels(rerun["image"]) == pixels(second["image"])
    assert pixels(second["image"]) != pixels(first["image"])


def test_refine_only_uses_the_refiner_alone(capsys, home):
    out = atelier(
        capsys,
        home,
        "img2img",
        "--image",
        str(home / "source.png"),
        "--strength",
        "0.9",
        "--refine-only",
        "--refine-strength",
        "0.5",
        *TINY,
        "--prompt",
        "a lake",
    )
    recipe = generation(home, out["id"]).recipe
    assert (recipe.strength, recipe.switch, recipe.refine.strength) == (0.0, 1.0, 0.5)
    assert pixels(atelier(capsys, home, "rerun", str(out["id"]))["image"]) == pixels(out["image"])


def test_draft_with_lora_and_control_records_everything_and_reruns(capsys, home):
    drafts = atelier(
        capsys,
        home,
        "draft",
        *TINY,
        "--prompt",
        "a lake",
        "--count",
        "1",
        "--lora",
        "ink:0.7",
        "--control",
        f"canny:{home / 'edges.png'}:0.9:0.0:0.8",
        "--control-param",
        "low=50",
    )["drafts"]
    saved = generation(home, drafts[0]["id"])
    (lora,) = saved.recipe.loras
    (unit,) = saved.recipe.controlnets
    assert (lora.name, lora.weight) == ("ink", 0.7) and lora.sha256
    assert (unit.model.name, unit.preprocessor, unit.scale, unit.end) == ("tiny-canny-sdxl", "canny", 0.9, 0.8)
    assert dict(unit.params) == {"low": 50.0, "high": 200.0}
    inputs = dict(saved.inputs)
    assert inputs["control:0"] == hashlib.sha256((home / "edges.png").read_bytes()).hexdigest() == unit.image_sha256
    assert inputs["map:0"] == unit.map_sha256
    plain = atelier(capsys, home, "draft", *TINY, "--prompt", "a lake", "--count", "1")["drafts"]
    assert pixels(plain[0]["image"]) != pixels(drafts[0]["image"])
    rerun = atelier(capsys, home, "rerun", str(drafts[0]["id"]))
    assert pixels(rerun["image"]) == pixels(drafts[0]["image"])
    refined = atelier(capsys, home, "refine", str(drafts[0]["id"]))
    assert generation(home, refined["id"]).parent_id == drafts[0]["id"]


def test_listings(capsys, home):
    loras = atelier(capsys, home, "loras")
    assert [(e["name"], e["format"]) for e in loras["loras"]] == [("ink", "kohya")]
    controls = atelier(capsys, home, "controlnets")
    assert [e["name"] for e in controls["controlnets"]] == ["tiny-canny-sdxl"]
    ready = {p["name"]: p["ready"] for p in controls["preprocessors"]}
    assert ready["canny"] and ready["shuffle"] and not ready["hed"]


@pytest.mark.parametrize(
    "args, message",
    [
        (("--lora", "../ink"), "must be a name inside"),
        (("--lora", "nope:1"), "no lora named 'nope'"),
        (("--control", "sobel:edges.png"), "preprocessor: must be one of"),
        (("--control", "depth_midas:edges.png"), "no installed ControlNet's name mentions 'depth_midas'"),
        (("--control", "canny:missing.png"), "no such file"),
        (("--control-param", "gamma=2"), "setting of none of the --control preprocessors"),
    ],
)
def test_bad_edit_options_exit_2_with_a_message(capsys, home, monkeypatch, args, message):
    monkeypatch.chdir(home)
    code = main(["draft", *TINY, "--prompt", "x", "--count", "1", *args, "--home", str(home)])
    assert code == 2 and message in capsys.readouterr().err


def test_the_cli_drafts_at_one_step_and_img2img_at_a_low_strength(capsys, home):
    """The dead ends of the browser, through the command line: 1 step, and strength 0.2 at switch 0.8."""
    steps_one = [a if a != "6" else "1" for a in TINY]
    drafted = atelier(capsys, home, "draft", *steps_one, "--prompt", "a single step", "--count", "2")
    assert len(drafted["drafts"]) == 2 and generation(home, drafted["drafts"][0]["id"]).recipe.steps == 1
    refined = atelier(capsys, home, "refine", str(drafted["drafts"][0]["id"]))
    assert generation(home, refined["id"]).kind == "refined"
    low = atelier(
        capsys, home, "img2img", "--image", str(home / "source.png"), "--strength", "0.2", *TINY, "--prompt", "a lake"
    )
    made = generation(home, low["id"]).recipe
    # Recorded as what ran: the refiner alone on the source at strength 0.2 (the base had no step before 0.8).
    assert (made.mode, made.strength, made.switch, made.refine.strength) == ("img2img", 0.0, 1.0, 0.2)
    assert pixels(low["image"]) != pixels(home / "source.png")
    kept = atelier(
        capsys, home, "img2img", "--image", str(home / "source.png"), "--strength", "0", *TINY, "--prompt", "a lake"
    )
    from pipelines.sizes import fit_to_bucket

    with Image.open(home / "source.png") as source:
        fitted = np.asarray(fit_to_bucket(source, 64, 64))
    with Image.open(kept["image"]) as made_image:
        assert np.array_equal(np.asarray(made_image.convert("RGB")), fitted)  # strength 0: the source, unchanged
