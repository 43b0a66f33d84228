"""ControlNet on the tiny model (a tiny ControlNet made from its UNet, weights made non-zero) and the
offline preprocessors, against diffusers and controlnet-aux/OpenCV called directly."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLControlNetPipeline
from diffusers.models import MultiControlNetModel
from PIL import Image
from safetensors.torch import save_file

from pipelines.engine import base_stage
from pipelines.engine.engine import Engine, _derive
from pipelines.engine.inputs import EditInputs
from pipelines.models import preprocessors
from pipelines.models.controlnet import ControlNetLibrary
from pipelines.recipe import ControlUnit, ModelRef

sys.path.insert(0, str(Path(__file__).resolve().parent))  # importlib mode: the helpers beside this file

from edit_models import pattern, tiny_controlnet  # noqa: E402

SHARED = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


MAP_A, MAP_B = pattern(1), pattern(2)


@pytest.fixture(scope="module")
def setup(model_cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    folder = root / "ControlNet"
    folder.mkdir()
    (root / "Lora").mkdir()
    base = model_cache.load_base("tiny")
    canny = tiny_controlnet(base.pipe.unet, 1)
    canny.save_pretrained(folder / "tiny-canny", safe_serialization=True)
    depth = tiny_controlnet(base.pipe.unet, 2)
    save_file({k: v.contiguous() for k, v in depth.state_dict().items()}, str(folder / "tiny-depth.safetensors"))
    save_file({k: v.contiguous() for k, v in canny.state_dict().items()}, str(folder / "canny-single.safetensors"))
    (folder / "pickled.safetensors").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    save_file({"unet.x.lora_A.weight": torch.zeros(2, 2)}, str(folder / "not-controlnet.safetensors"))
    state = {k: v.contiguous() for k, v in depth.state_dict().items()}
    state["controlnet_cond_embedding.conv_in.weight"] = torch.zeros(16, 3, 5, 5)
    save_file(state, str(folder / "wrong-shape.safetensors"))
    engine = Engine(model_cache, app_version="test")
    engine.controlnets = ControlNetLibrary(model_cache.home, model_cache.hashes, models_root=root)
    return engine, base, canny, depth


def unit(name, **changes):
    return ControlUnit(model=ModelRef(name), **changes)


@pytest.fixture()
def make(tiny_recipe):
    def recipe(*units, **changes):
        fields = dict(steps=4, seed=5, switch=1.0, refine=None, watermark=False, controlnets=tuple(units))
        return tiny_recipe(**{**fields, **changes})

    return recipe


def render(engine, recipe, *maps, source=None):
    return engine.render(recipe, inputs=EditInputs(source=source, control_maps=maps))


def direct_reference(base, controlnet, recipe, maps, scales):
    pipe = StableDiffusionXLControlNetPipeline(**base.pipe.components, controlnet=controlnet, add_watermarker=False)
    return pipe(
        prompt=recipe.prompt,
        negative_prompt=recipe.negative_prompt,
        image=maps,
        num_inference_steps=recipe.steps,
        guidance_scale=recipe.guidance,
        width=64,
        height=64,
        controlnet_conditioning_scale=scales,
        output_type="latent",
        generator=torch.Generator("cpu").manual_seed(recipe.seed),
    ).images[0]


def test_scale_zero_equals_no_controlnet_and_scale_one_differs(setup, make):
    engine = setup[0]
    plain = render(engine, make()).latent
    assert torch.equal(render(engine, make(unit("tiny-canny", scale=0.0)), MAP_A).latent, plain)
    assert not torch.allclose(render(engine, make(unit("tiny-canny", scale=1.0)), MAP_A).latent, plain, atol=1e-3)


def test_one_unit_equals_diffusers_controlnet_pipeline(setup, make):
    engine, base, canny, _ = setup
    recipe = make(unit("tiny-canny", scale=0.8))
    ours = render(engine, recipe, MAP_A).latent
    torch.testing.assert_close(ours, direct_reference(base, canny, recipe, MAP_A, 0.8), atol=1e-5, rtol=0)


def test_two_units_combine_like_multicontrolnet(setup, make):
    engine, base, canny, depth = setup
    both = make(unit("tiny-canny", scale=0.7), unit("tiny-depth", scale=0.9))
    ours = render(engine, both, MAP_A, MAP_B).latent
    reference = direct_reference(base, MultiControlNetModel([canny, depth]), both, [MAP_A, MAP_B], [0.7, 0.9])
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    alone = render(engine, make(unit("tiny-canny", scale=0.7)), MAP_A).latent
    other = render(engine, make(unit("tiny-depth", scale=0.9)), MAP_B).latent
    assert not torch.allclose(ours, alone, atol=1e-3) and not torch.allclose(ours, other, atol=1e-3)


def test_guidance_start_and_end_take_effect(setup, make):
    engine = setup[0]
    full = render(engine, make(unit("tiny-canny")), MAP_A).latent
    late = render(engine, make(unit("tiny-canny", start=0.5)), MAP_A).latent
    early = render(engine, make(unit("tiny-canny", end=0.5)), MAP_A).latent
    assert not torch.allclose(full, late, atol=1e-3) and not torch.allclose(full, early, atol=1e-3)


@pytest.mark.parametrize("mode_changes", [{}, {"mode": "img2img", "strength": 0.6}])
@pytest.mark.parametrize("units", [1, 2])
def test_derived_pipelines_hold_the_base_modules(setup, make, mode_changes, units):
    engine, base, _, _ = setup
    recipe = make(*[unit("tiny-canny"), unit("tiny-depth")][:units], **mode_changes)
    stage = base_stage.plan(
        recipe,
        base.pipe,
        EditInputs(source=MAP_B if mode_changes else None, control_maps=(MAP_A, MAP_B)[:units]),
        engine.controlnets,
        _derive,
    )
    for name in SHARED:
        assert getattr(stage.pipe, name) is getattr(base.pipe, name), name
    loaded = [engine.controlnets.load(u.model, base.pipe.unet, None, None)[0] for u in recipe.controlnets]
    nets = stage.pipe.controlnet.nets if units > 1 else [stage.pipe.controlnet]
    assert all(a is b for a, b in zip(nets, loaded))
    assert stage.pipe.unet.dtype == torch.float32  # from_pipe did not cast the shared modules


def test_controlnet_img2img_handoff_stops_where_denoising_end_would(setup, make, tiny_recipe):
    """ControlNet img2img has no denoising_end: at scale 0 it must hand over the same latent as plain img2img."""
    engine = setup[0]
    changes = dict(mode="img2img", strength=0.7, steps=10, switch=0.8, refine=tiny_recipe().refine)
    controlled = engine.draft(
        make(unit("tiny-canny", scale=0.0), **changes), 1, inputs=EditInputs(source=MAP_B, control_maps=(MAP_A,))
    )[0]
    plain = engine.draft(make(**changes), 1, inputs=EditInputs(source=MAP_B))[0]
    torch.testing.assert_close(controlled.latent.tensor, plain.latent.tensor, atol=1e-6, rtol=0)
    assert controlled.latent.noisy
    shaped = engine.draft(
        make(unit("tiny-canny", scale=1.0), **changes), 1, inputs=EditInputs(source=MAP_B, control_maps=(MAP_A,))
    )[0]
    assert not torch.allclose(shaped.latent.tensor, plain.latent.tensor, atol=1e-3)


def test_single_file_loads_like_the_folder_and_recipes_pin_the_weights(setup, make):
    engine = setup[0]
    folder = render(engine, make(unit("tiny-canny")), MAP_A)
    single = render(engine, make(unit("canny-single")), MAP_A)
    assert torch.equal(folder.latent, single.latent)
    assert folder.recipe.controlnets[0].model.sha256 and single.recipe.controlnets[0].model.sha256
    again = render(engine, folder.recipe, MAP_A)  # re-run from the recipe: same pixels
    assert np.array_equal(np.asarray(again.image), np.asarray(folder.image))
    changed = folder.recipe.replace(controlnets=(ControlUnit(model=ModelRef("tiny-canny", sha256="1" * 64)),))
    with pytest.raises(ValueError, match="now has sha256"):
        render(engine, changed, MAP_A)


@pytest.mark.parametrize(
    "name, message",
    [
        ("pickled", "this is a pickle"),
        ("not-controlnet", "not an SDXL ControlNet in diffusers' layout"),
        ("wrong-shape", "does not fit this base model's ControlNet architecture"),
        ("../ControlNet/tiny-canny", "must be a name inside"),
        ("no-such-model", "no controlnet named 'no-such-model'"),
    ],
)
def test_bad_controlnets_give_clear_errors(setup, make, name, message):
    with pytest.raises(ValueError, match=message):
        render(setup[0], make(unit(name)), MAP_A)


def test_maps_must_match_the_units(setup, make):
    with pytest.raises(ValueError, match="1 unit.* but 0 control map"):
        render(setup[0], make(unit("tiny-canny")))


def test_canny_is_opencv_canny_with_the_thresholds():
    smooth = np.random.RandomState(3).rand(16, 16, 3) * 255
    image = Image.fromarray(smooth.astype(np.uint8)).resize((128, 128), Image.Resampling.BICUBIC)
    for low, high in ((50, 100), (150, 250)):
        ours = np.asarray(preprocessors.preprocess("canny", image, (("high", high), ("low", low))))
        expected = cv2.Canny(np.asarray(image), low, high)
        assert np.array_equal(ours[..., 0], expected)
    assert not np.array_equal(
        np.asarray(preprocessors.preprocess("canny", image, (("low", 10.0),))),
        np.asarray(preprocessors.preprocess("canny", image, (("low", 200.0), ("high", 250.0)))),
    )


def test_shuffle_is_seeded_and_lineart_runs_offline():
    image = pattern(4, size=128)
    a = np.asarray(preprocessors.preprocess("shuffle", image, (("seed", 1.0),)))
    assert np.array_equal(a, np.asarray(preprocessors.preprocess("shuffle", image, (("seed", 1.0),))))
    assert not np.array_equal(a, np.asarray(preprocessors.preprocess("shuffle", image, (("seed", 2.0),))))
    line = preprocessors.preprocess("lineart_standard", image)
    assert line.size == image.size and np.asarray(line).max() > 0


def test_detectors_needing_weights_are_offered_only_when_present(tmp_path):
    rows = {r["name"]: r for r in preprocessors.available(tmp_path)}
    assert rows["canny"]["ready"] and rows["shuffle"]["ready"] and rows["lineart_standard"]["ready"]
    assert (
        not rows["hed"]["ready"]
        and "ControlNetHED.pth" in rows["hed"]["missing"]
        and str(tmp_path) in rows["hed"]["missing"]
    )
    with pytest.raises(ValueError, match=r"hed preprocessor needs the annotator weights 'ControlNetHED.pth'"):
        preprocessors.preprocess("hed", pattern(5), (), tmp_path)
    (tmp_path / "ControlNetHED.pth").write_bytes(b"x")
    assert {r["name"]: r for r in preprocessors.available(tmp_path)}["hed"]["ready"]


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("sobel", {}, "preprocessor: must be one of"),
        ("canny", {"sigma": 1.0}, "unknown setting 'sigma'"),
        ("canny", {"low": 200.0, "high": 100.0}, "low <= high"),
    ],
)
def test_bad_preprocessor_settings(name, params, message):
    with pytest.raises(ValueError, match=message):
        preprocessors.check_params(name, params)
