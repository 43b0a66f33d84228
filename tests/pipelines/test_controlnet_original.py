"""ControlNet single files in the original (A1111 / ldm) key layout: converted on load, offline, equal to
the diffusers form they were written from, in weights and in the image drawn."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.engine.engine import Engine
from pipelines.engine.inputs import EditInputs
from pipelines.models.controlnet import ControlNetLibrary
from pipelines.models.controlnet_layout import PREFIX, controlnet_to_original
from pipelines.recipe import ControlUnit, ModelRef

sys.path.insert(0, str(Path(__file__).resolve().parent))  # importlib mode: the helpers beside this file

from edit_models import pattern, tiny_controlnet  # noqa: E402

# Names every A1111 SDXL ControlNet file has (the tiny model's block indices).
KNOWN = (
    "control_model.input_hint_block.0.weight",
    "control_model.input_hint_block.14.bias",
    "control_model.zero_convs.0.0.weight",
    "control_model.middle_block_out.0.weight",
    "control_model.input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight",
    "control_model.middle_block.1.proj_in.weight",
    "control_model.label_emb.0.0.weight",
    "control_model.time_embed.0.weight",
)


@pytest.fixture(scope="module")
def setup(model_cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    folder = root / "ControlNet"
    folder.mkdir()
    (root / "Lora").mkdir()  # marks an A1111-layout models folder
    base = model_cache.load_base("tiny")
    canny = tiny_controlnet(base.pipe.unet, 3)
    canny.save_pretrained(folder / "canny-folder", safe_serialization=True)
    original = controlnet_to_original(canny.state_dict(), dict(canny.config))
    save_file({k: v.contiguous() for k, v in original.items()}, str(folder / "canny-a1111.safetensors"))
    bare = {k.removeprefix(PREFIX): v.contiguous() for k, v in original.items()}  # some files drop the prefix
    save_file(bare, str(folder / "canny-bare.safetensors"))
    cut = {k: v.contiguous() for k, v in original.items() if not k.startswith("control_model.zero_convs.1.")}
    save_file(cut, str(folder / "canny-cut.safetensors"))
    engine = Engine(model_cache, app_version="test")
    engine.controlnets = ControlNetLibrary(model_cache.home, model_cache.hashes, models_root=root)
    return engine, base, canny, folder


def test_the_file_has_the_original_layout(setup):
    keys = set(load_file(setup[3] / "canny-a1111.safetensors"))
    assert all(k.startswith(PREFIX) for k in keys)
    assert [k for k in KNOWN if k not in keys] == []
    assert not any("controlnet_" in k or "down_blocks" in k for k in keys)


@pytest.mark.parametrize("name", ["canny-a1111", "canny-bare"])
def test_original_layout_loads_equal_to_its_diffusers_form(setup, name, tiny_recipe):
    engine, base, canny, _ = setup
    assert engine.controlnets.locate(name)[0] == "single_file"
    model, ref = engine.controlnets.load(ModelRef(name), base.pipe.unet, None, None)
    made, loaded = canny.state_dict(), model.state_dict()
    assert made.keys() == loaded.keys() and all(torch.equal(made[k], loaded[k]) for k in made)
    assert ref.sha256 and ref.sha256 != engine.controlnets.load(ModelRef("canny-folder"), base.pipe.unet, None, None)[1]

    def draw(controlnet):
        recipe = tiny_recipe(steps=4, seed=5, switch=1.0, refine=None, watermark=False)
        recipe = recipe.replace(controlnets=(ControlUnit(model=ModelRef(controlnet)),))
        return engine.render(recipe, inputs=EditInputs(control_maps=(pattern(4),))).latent

    assert torch.equal(draw(name), draw("canny-folder"))


def test_an_original_file_missing_weights_is_named(setup):
    engine, base, _, _ = setup
    with pytest.raises(ValueError, match=r"canny-cut.safetensors: 2 weights .* not in the file .*zero_convs.1.0"):
        engine.controlnets.load(ModelRef("canny-cut"), base.pipe.unet, None, None)
