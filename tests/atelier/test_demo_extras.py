"""The demo home gets a tiny LoRA and ControlNet, so the LoRA and ControlNet tabs work on a fresh install."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from atelier.studio import ControlRequest, Studio
from pipelines.models.demo_extras import DEMO_CONTROLNET, DEMO_LORA
from pipelines.recipe import LoraRef, ModelRef, Recipe


def pixels(path) -> str:
    with Image.open(path) as image:
        return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


@pytest.fixture()
def studio(tiny_home, monkeypatch):
    monkeypatch.delenv("ATELIER_MODELS", raising=False)
    with Studio(tiny_home) as opened:
        yield opened


def test_the_demo_extras_are_installed_once_and_listed_as_usable(studio):
    written = studio.install_demo_extras()
    stamp = written["lora"].stat().st_mtime_ns
    assert studio.install_demo_extras() == written and written["lora"].stat().st_mtime_ns == stamp  # not rewritten
    assert [(row["name"], row.get("format")) for row in studio.loras()] == [(DEMO_LORA, "diffusers")]
    assert [row["name"] for row in studio.controlnets()] == [DEMO_CONTROLNET]


def test_a_recipe_naming_loras_not_here_is_told_which_before_any_draft(studio):
    """A recipe from a PNG or the gallery: each LoRA this home cannot use is named (picked or in the prompt)."""
    studio.install_demo_extras()
    demo = DEMO_LORA.removesuffix(".safetensors")
    recipe = Recipe(
        model=ModelRef("tiny"),
        prompt="a harbour <lora:gone-from-here:0.8>",
        seed=1,
        loras=(LoraRef(name=demo), LoraRef(name="never-installed", weight=0.5)),
    )
    reasons = studio.unusable_loras(recipe)
    assert len(reasons) == 2
    assert "'never-installed'" in reasons[0] and "'gone-from-here'" in reasons[1]
    assert studio.unusable_loras(recipe.replace(prompt="a harbour", loras=(LoraRef(name=demo),))) == []


def test_the_demo_lora_and_controlnet_change_the_picture(studio):
    studio.install_demo_extras()
    recipe = Recipe(
        model=ModelRef("tiny"),
        prompt="a lighthouse",
        seed=3,
        steps=4,
        width=64,
        height=64,
        switch=1.0,
        refine=None,
        watermark=False,
    )
    plain = studio.edit(recipe, studio.prepare_inputs(recipe)[1])
    with_lora = studio.edit(recipe.replace(loras=(LoraRef(DEMO_LORA, weight=1.0),)), studio.prepare_inputs(recipe)[1])
    square = np.zeros((64, 64, 3), np.uint8)
    square[16:48, 16:48] = 255
    control = Image.fromarray(square)
    data = io.BytesIO()
    control.save(data, format="PNG")
    unit = ControlRequest(model=DEMO_CONTROLNET, preprocessor="canny", image=data.getvalue())
    guided, inputs = studio.prepare_inputs(recipe, controls=[unit])
    with_control = studio.edit(guided, inputs)
    assert len({pixels(plain.image), pixels(with_lora.image), pixels(with_control.image)}) == 3
    assert with_control.recipe.controlnets[0].model.name == DEMO_CONTROLNET


def test_a_users_own_models_folder_is_never_written(studio, monkeypatch, tmp_path):
    monkeypatch.setenv("ATELIER_MODELS", str(tmp_path / "mine"))
    assert studio.install_demo_extras() is None
    assert not (tmp_path / "mine").exists()


def test_control_maps_preview_without_any_controlnet_model(tmp_path):
    """Preview maps needs a preprocessor only: no ControlNet model named, none installed."""
    square = np.zeros((64, 64, 3), np.uint8)
    square[16:48, 16:48] = 255
    data = io.BytesIO()
    Image.fromarray(square).save(data, format="PNG")
    with Studio(tmp_path / "home") as bare:
        (edges,) = bare.control_maps([ControlRequest(model="", preprocessor="canny", image=data.getvalue())], 64, 64)
    assert edges.size == (64, 64) and edges.convert("L").getextrema() == (0, 255)  # canny found the edges
