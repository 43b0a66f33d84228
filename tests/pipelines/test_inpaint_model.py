"""A dedicated inpainting checkpoint (`Recipe.inpaint_model`, a 9-channel UNet) on the tiny model: it inpaints
in the base's place (the base UNet runs no step), from a diffusers folder or a single file in the models
folder, sharing the base's text encoders and VAE; the source kept outside the mask, re-runs exact; a
4-channel checkpoint refused before any UNet step; `atelier img2img --inpaint-model` records it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ImageFilter
from safetensors.torch import load_file, save_file

from atelier.cli import main
from pipelines.engine.inputs import EditInputs
from pipelines.recipe import ModelRef, RefineSettings
from pipelines.sizes import fit_to_bucket
from storage.gallery import Gallery

sys.path.insert(0, str(Path(__file__).resolve().parent))  # importlib mode: the helpers beside this file

from edit_models import EDIT_FIELDS, pixels, smooth_image, square_mask  # noqa: E402
from edit_models import MASK_SHA as SHA

SOURCE = smooth_image(1)
CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"


def nine_channel_unet(base_unet_dir: Path):
    """The tiny base UNet with conv_in widened to 9 channels (mask + masked-image latent: small random weights)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(base_unet_dir)
    config = {**unet.config, "in_channels": 9}
    wide = UNet2DConditionModel.from_config(config)
    state = unet.state_dict()
    extra = torch.randn(state["conv_in.weight"].shape[0], 5, 3, 3, generator=torch.Generator().manual_seed(7))
    state["conv_in.weight"] = torch.cat([state["conv_in.weight"], 0.05 * extra], dim=1)
    wide.load_state_dict(state)
    return wide


@pytest.fixture(scope="module")
def home(make_tiny_home, tmp_path_factory, tiny_model_dir):
    from pipelines.models.single_file import write_single_file

    home = make_tiny_home(tmp_path_factory.mktemp("inpaint-model-home"))
    sd = home / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    folder = sd / "tiny-inpaint-folder"
    shutil.copytree(tiny_model_dir / "base", folder)
    shutil.rmtree(folder / "unet")
    nine_channel_unet(tiny_model_dir / "base" / "unet").save_pretrained(folder / "unet", safe_serialization=True)
    write_single_file(tiny_model_dir / "base", sd / "tiny-base.safetensors")  # 4 channels: not for inpainting
    state = load_file(sd / "tiny-base.safetensors")
    extra = torch.randn(state[CONV_IN].shape[0], 5, 3, 3, generator=torch.Generator().manual_seed(8))
    state[CONV_IN] = torch.cat([state[CONV_IN], 0.05 * extra], dim=1)
    save_file(state, str(sd / "tiny-inpaint.safetensors"))
    SOURCE.resize((64, 64)).save(home / "source.png")
    square_mask().save(home / "mask.png")
    return home


@pytest.fixture(scope="module")
def engine(home):
    from pipelines.engine.engine import Engine
    from pipelines.models.loading import ModelCache

    return Engine(ModelCache(home, device="cpu"), app_version="test")


@pytest.fixture()
def inpaint(tiny_recipe):
    return lambda **changes: tiny_recipe(**{**EDIT_FIELDS, "mask_sha256": SHA, **changes})


def watch(unet, calls: dict, name: str):
    def hook(_module, args):
        calls.setdefault(name, []).append(args[0].shape[1])

    return unet.register_forward_pre_hook(hook)


@pytest.mark.parametrize("name", ["tiny-inpaint-folder", "tiny-inpaint"])
def test_the_inpainting_unet_inpaints_in_the_base_unets_place(engine, inpaint, name):
    recipe = inpaint(inpaint_model=ModelRef(name), mask_blur=2)
    base = engine.models.load_base("tiny")
    unet = engine.models.load_inpaint(name, base).pipe.unet
    assert unet is not base.pipe.unet and unet.config.in_channels == 9
    # no weight copies: the inpainting pipeline holds the base's own text encoders and VAE
    shared = engine.models.load_inpaint(name, base).pipe
    assert shared.vae is base.pipe.vae and shared.text_encoder_2 is base.pipe.text_encoder_2
    assert shared.text_encoder is base.pipe.text_encoder
    calls: dict = {}
    handles = [watch(unet, calls, "inpaint"), watch(base.pipe.unet, calls, "base")]
    try:
        result = engine.render(recipe, inputs=EditInputs(source=SOURCE, mask=square_mask()))
    finally:
        for handle in handles:
            handle.remove()
    assert calls["inpaint"] and set(calls["inpaint"]) == {9}  # latent + mask + masked-image latent
    assert "base" not in calls  # the base UNet ran no step
    blurred = np.asarray(square_mask().filter(ImageFilter.GaussianBlur(2)))
    diff = np.abs(pixels(result.image) - pixels(fit_to_bucket(SOURCE, 64, 64))).max(axis=2)
    assert diff[blurred == 0].max() <= 2 and diff[blurred > 128].mean() > 5
    assert result.recipe.inpaint_model.name == name and result.recipe.inpaint_model.sha256
    again = engine.render(result.recipe, inputs=EditInputs(source=SOURCE, mask=square_mask()))
    assert np.array_equal(pixels(again.image), pixels(result.image))
    plain = engine.render(inpaint(mask_blur=2), inputs=EditInputs(source=SOURCE, mask=square_mask()))
    assert not np.array_equal(pixels(plain.image), pixels(result.image))  # another UNet: other pixels


def test_the_refiner_resumes_the_inpainting_unets_latent(engine, inpaint, tiny_recipe):
    recipe = inpaint(
        inpaint_model=ModelRef("tiny-inpaint"), switch=0.8, steps=10, refine=RefineSettings(model=ModelRef("tiny"))
    )
    base = engine.models.load_base("tiny")
    unet = engine.models.load_inpaint("tiny-inpaint", base).pipe.unet
    refiner = engine.models.load_refiner("tiny", base).pipe.unet
    calls: dict = {}
    handles = [watch(unet, calls, "inpaint"), watch(base.pipe.unet, calls, "base"), watch(refiner, calls, "refiner")]
    try:
        result = engine.render(recipe, inputs=EditInputs(source=SOURCE, mask=square_mask()))
    finally:
        for handle in handles:
            handle.remove()
    assert set(calls["inpaint"]) == {9} and set(calls["refiner"]) == {4} and "base" not in calls
    diff = np.abs(pixels(result.image) - pixels(fit_to_bucket(SOURCE, 64, 64))).max(axis=2)
    assert diff[np.asarray(square_mask()) == 0].max() <= 2


def test_a_four_channel_checkpoint_is_refused_before_any_unet_step(engine, inpaint):
    base = engine.models.load_base("tiny")
    calls: dict = {}
    handle = watch(base.pipe.unet, calls, "base")
    try:
        with pytest.raises(ValueError, match="inpaint_model: 'tiny-base' has a UNet with 4 input channels"):
            engine.render(
                inpaint(inpaint_model=ModelRef("tiny-base")), inputs=EditInputs(source=SOURCE, mask=square_mask())
            )
    finally:
        handle.remove()
    assert calls == {}


def test_cli_inpaint_model_flag_is_recorded_in_the_recipe(home, capsys):
    args = ["img2img", "--image", str(home / "source.png"), "--mask", str(home / "mask.png"), "--strength", "0.9"]
    args += ["--model", "tiny", "--refiner", "tiny", "--steps", "6", "--width", "64", "--height", "64", "--seed", "3"]
    args += [
        "--no-watermark",
        "--prompt",
        "a red door",
        "--inpaint-model",
        "tiny-inpaint",
        "--home",
        str(home),
        "--json",
    ]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    with Gallery.open(home) as gallery:
        recipe = gallery.get(json.loads(captured.out)["id"]).recipe
    assert recipe.inpaint_model.name == "tiny-inpaint" and recipe.inpaint_model.sha256


def test_cli_inpaint_model_without_a_mask_is_refused(home, capsys):
    args = ["img2img", "--image", str(home / "source.png"), "--strength", "0.5", "--model", "tiny"]
    args += ["--prompt", "x", "--inpaint-model", "tiny-inpaint", "--home", str(home)]
    assert main(args) == 2 and "--inpaint-model: needs a --mask or --expand" in capsys.readouterr().err


def test_the_request_builder_records_inpaint_model_only_when_the_recipe_inpaints():
    from atelier.requests import GenerationRequest, ModelChoice, build_recipe, with_inpaint_model

    choice = ModelChoice(base="tiny", refiner=None)
    with pytest.raises(ValueError, match="inpaint_model: inpainting needs img2img"):
        build_recipe(GenerationRequest(prompt="sea", inpaint_model="tiny-inpaint"), choice)
    outpaint = GenerationRequest(
        prompt="sea", source_size=(64, 64), strength=0.8, expand=(8, 0, 0, 0), inpaint_model="tiny-inpaint"
    )
    assert build_recipe(outpaint, choice).inpaint_model == ModelRef("tiny-inpaint")
    img2img = build_recipe(GenerationRequest(prompt="sea", source_size=(64, 64), strength=0.8), choice)
    with pytest.raises(ValueError, match="inpaint_model: 'tiny-inpaint' needs something to inpaint"):
        with_inpaint_model(img2img, "tiny-inpaint")
    masked = with_inpaint_model(img2img.replace(mask_sha256=SHA), "tiny-inpaint")
    assert masked.inpaint_model == ModelRef("tiny-inpaint") and with_inpaint_model(img2img, None) is img2img


def test_the_studio_offers_the_inpainting_checkpoints_of_the_models_folder(home):
    """The Img2Img tab's Inpainting model list: 9-channel checkpoints only, read from their headers."""
    from atelier.studio import Studio

    with Studio(home) as studio:
        offered = studio.inpaint_model_choices()
        assert studio._engine is None  # listed without the engine (no torch model work)
    assert sorted(offered) == ["tiny-inpaint", "tiny-inpaint-folder"]  # not tiny-base: 4 input channels
