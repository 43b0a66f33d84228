"""LoRAs on the tiny model: weights, several at once, clean unloading, base only, every bad file refused."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.engine import Draft, Engine
from pipelines.lora import LoraLibrary
from pipelines.recipe import LoraRef

sys.path.insert(0, str(Path(__file__).resolve().parent))  # importlib mode: the helpers beside this file

from edit_models import UNET_TARGETS, write_kohya, write_peft  # noqa: E402


@pytest.fixture(scope="module")
def setup(model_cache, tmp_path_factory):
    """An engine whose LoRA folder (A1111 layout) holds tiny LoRAs in both formats, and a few bad files."""
    root = tmp_path_factory.mktemp("models")
    folder = root / "Lora"
    (folder / "styles").mkdir(parents=True)
    base = model_cache.load_base("tiny")
    unet = base.pipe.unet
    write_peft(folder / "style_peft.safetensors", unet, seed=1)
    write_kohya(folder / "style_kohya.safetensors", unet, seed=1)
    write_peft(folder / "styles" / "other.safetensors", unet, seed=7)
    write_kohya(folder / "with_text.safetensors", unet, seed=3, text_encoder=base.pipe.text_encoder)
    (folder / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\0" * 64)
    (folder / "pickled.safetensors").write_bytes(pickle.dumps({"lora_unet_x.lora_down.weight": [1.0]}, protocol=4))
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, str(folder / "checkpoint.safetensors"))
    # SD 1.5-style layers this SDXL has not got (down_blocks.0 has no attention here) plus one that fits:
    write_kohya(folder / "partial.safetensors", unet, seed=5, targets=UNET_TARGETS[:1])
    partial = load_file(str(folder / "partial.safetensors"))
    key = "lora_unet_down_blocks_0_attentions_0_proj_in"
    partial[f"{key}.lora_down.weight"], partial[f"{key}.lora_up.weight"] = torch.randn(4, 32), torch.randn(32, 4)
    save_file(partial, str(folder / "partial.safetensors"))
    target = UNET_TARGETS[0]
    save_file({f"unet.{target}.lora_A.weight": torch.randn(4, 99), f"unet.{target}.lora_B.weight": torch.randn(64, 4)},
              str(folder / "wrong_shape.safetensors"))
    outside = tmp_path_factory.mktemp("outside") / "secret.safetensors"
    write_peft(outside, unet, seed=11)
    (folder / "escape.safetensors").symlink_to(outside)
    engine = Engine(model_cache, app_version="test")
    engine.loras = LoraLibrary(model_cache.home, model_cache.hashes, models_root=root)
    return engine, base, folder, outside


def run(engine, recipe):
    draft = engine.draft(recipe, 1)[0]
    return draft.latent.tensor


def peft_layers(module):
    return sum(1 for m in module.modules() if getattr(m, "lora_A", None) is not None)


@pytest.fixture()
def make(tiny_recipe):
    return lambda *loras, **changes: tiny_recipe(steps=4, seed=21, loras=tuple(loras), **changes)


def test_weight_zero_equals_no_lora_and_a_weight_changes_the_image(setup, make):
    engine = setup[0]
    baseline = run(engine, make())
    assert torch.equal(run(engine, make(LoraRef("style_peft", weight=0.0))), baseline)
    assert not torch.allclose(run(engine, make(LoraRef("style_peft", weight=1.0))), baseline, atol=1e-3)


def test_matches_diffusers_loading_the_file_directly(setup, make):
    engine, base, folder, _ = setup
    ours = run(engine, make(LoraRef("styles/other", weight=0.7)))
    from diffusers import StableDiffusionXLPipeline

    direct = StableDiffusionXLPipeline(**base.pipe.components, add_watermarker=False)
    direct.load_lora_weights(str(folder / "styles" / "other.safetensors"), adapter_name="x")
    direct.set_adapters(["x"], [0.7])
    try:
        reference = direct(prompt="a photo of a cat", negative_prompt="blurry", num_inference_steps=4, guidance_scale=5.0,
                           width=64, height=64, denoising_end=0.8, output_type="latent",
                           generator=torch.Generator("cpu").manual_seed(21)).images[0]
    finally:
        direct.unload_lora_weights()
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_kohya_and_peft_files_of_the_same_weights_agree(setup, make):
    engine = setup[0]
    torch.testing.assert_close(run(engine, make(LoraRef("style_kohya"))), run(engine, make(LoraRef("style_peft"))),
                               atol=1e-5, rtol=0)


def test_two_loras_combine_and_differ_from_each_alone(setup, make):
    engine = setup[0]
    a = run(engine, make(LoraRef("style_peft", weight=0.8)))
    b = run(engine, make(LoraRef("styles/other", weight=0.6)))
    both = run(engine, make(LoraRef("style_peft", weight=0.8), LoraRef("styles/other", weight=0.6)))
    assert not torch.allclose(both, a, atol=1e-3) and not torch.allclose(both, b, atol=1e-3)
    half = run(engine, make(LoraRef("style_peft", weight=0.4), LoraRef("styles/other", weight=0.6)))
    assert not torch.allclose(both, half, atol=1e-3)  # each weight is honoured


def test_unloading_restores_the_base_bit_exactly_and_files_are_read_once(setup, make):
    engine, base, _, _ = setup
    baseline = run(engine, make())
    reads = engine.loras.file_reads
    run(engine, make(LoraRef("with_text", weight=1.0)))  # touches the UNet and the first text encoder
    run(engine, make(LoraRef("with_text", weight=0.5)))
    assert engine.loras.file_reads - reads <= 1  # cached by sha256
    for module in (base.pipe.unet, base.pipe.text_encoder, base.pipe.text_encoder_2):
        assert peft_layers(module) == 0 and not getattr(module, "peft_config", None)
    assert torch.equal(run(engine, make()), baseline)


def test_the_refiner_never_gets_the_base_loras(setup, make, model_cache):
    engine, base, _, _ = setup
    refiner = model_cache.load_refiner("tiny", base)
    before = {k: v.clone() for k, v in refiner.pipe.unet.state_dict().items()}
    seen = []
    hook = refiner.pipe.unet.register_forward_pre_hook(lambda m, a: seen.append(peft_layers(m) + peft_layers(refiner.pipe.text_encoder_2)))
    try:
        draft = engine.draft(make(LoraRef("with_text", weight=1.0)), 1)[0]
        refined = engine.refine(draft)
    finally:
        hook.remove()
    assert seen and max(seen) == 0  # no adapter in the refiner's UNet or shared text encoder while it ran
    assert all(torch.equal(before[k], v) for k, v in refiner.pipe.unet.state_dict().items())
    # Refining the same latent without any LoRA in the recipe gives the same pixels: nothing leaked.
    plain = engine.refine(Draft(draft.recipe.replace(loras=()), draft.latent, draft.preview))
    assert np.array_equal(np.asarray(refined.image), np.asarray(plain.image))


def test_recipe_records_name_sha_weight_and_reruns_to_the_same_pixels(setup, make):
    engine, _, folder, _ = setup
    from pipelines.model_files import sha256_of_file

    draft = engine.draft(make(LoraRef("style_kohya", weight=0.9)), 1)[0]
    (ref,) = draft.recipe.loras
    assert (ref.name, ref.sha256, ref.weight) == ("style_kohya", sha256_of_file(folder / "style_kohya.safetensors"), 0.9)
    again = engine.render(draft.recipe)
    assert torch.equal(again.latent.tensor, draft.latent.tensor)
    assert np.array_equal(np.asarray(again.preview), np.asarray(draft.preview))


def test_prompt_tokens_resolve_against_the_folder(setup, make):
    engine = setup[0]
    explicit = engine.draft(make(LoraRef("style_peft", weight=0.5)), 1)[0]
    token = engine.draft(make(prompt="a photo of a cat <lora:style_peft:0.5>"), 1)[0]
    assert [(r.name, r.weight, r.sha256) for r in token.recipe.loras] == [
        (r.name, r.weight, r.sha256) for r in explicit.recipe.loras]
    assert torch.equal(token.latent.tensor, explicit.latent.tensor)
    assert torch.equal(engine.render(token.recipe).latent.tensor, token.latent.tensor)  # re-run: applied once


@pytest.mark.parametrize("name, message", [
    ("garbage", r"garbage\.safetensors: (not a valid|corrupt)"),
    ("pickled", r"pickled\.safetensors: this is a pickle"),
    ("checkpoint", r"checkpoint\.safetensors: not a LoRA in a format Atelier knows"),
    ("partial", r"partial\.safetensors: only 1 of its 2 LoRA layers match"),
    ("wrong_shape", r"wrong_shape\.safetensors: could not be applied .*size mismatch"),
    ("missing", r"no lora named 'missing'"),
    ("../outside", r"must be a name inside"),
    ("/etc/passwd", r"must be a name inside"),
    ("escape", r"leads outside"),
])
def test_bad_files_and_names_give_clear_errors_and_leave_the_pipeline_as_before(setup, make, name, message):
    engine, base, _, _ = setup
    baseline = run(engine, make())
    with pytest.raises(ValueError, match=message):
        engine.draft(make(LoraRef("style_peft", weight=1.0), LoraRef(name, weight=1.0)), 1)
    for module in (base.pipe.unet, base.pipe.text_encoder, base.pipe.text_encoder_2):
        assert peft_layers(module) == 0
    assert torch.equal(run(engine, make()), baseline)


def test_a_changed_file_is_refused_on_rerun(setup, make, tmp_path):
    engine = setup[0]
    draft = engine.draft(make(LoraRef("style_peft")), 1)[0]
    changed = draft.recipe.replace(loras=(LoraRef("style_peft", sha256="0" * 64),))
    with pytest.raises(ValueError, match="now has sha256"):
        engine.render(changed)


def test_listing_reports_formats_and_unusable_files(setup):
    entries = {e["name"]: e for e in setup[0].loras.available()}
    assert entries["style_kohya"]["format"] == "kohya" and entries["style_peft"]["format"] == "diffusers"
    assert entries["styles/other"]["layers"] == 3
    assert "pickle" in entries["pickled"]["error"] and "format" in entries["checkpoint"]["error"]
    assert "leads outside" in entries["escape"]["error"] and "path" not in entries["escape"]
