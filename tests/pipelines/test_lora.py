"""LoRAs on the tiny model: weights, several at once, resident adapters (loaded once, off when unused,
evicted, unloaded cleanly), base only, every bad file refused."""

from __future__ import annotations

import copy
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.engine.engine import Draft, Engine
from pipelines.models.lora import LoraLibrary, adapter_name
from pipelines.recipe import LoraRef

sys.path.insert(0, str(Path(__file__).resolve().parent))  # importlib mode: the helpers beside this file

from edit_models import TE_PROJECTIONS, UNET_TARGETS, lora_matrices, write_kohya, write_peft  # noqa: E402


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
    write_kohya_te2(folder / "with_te2.safetensors", base.pipe.text_encoder_2, seed=13)
    (folder / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\0" * 64)
    (folder / "pickled.safetensors").write_bytes(pickle.dumps({"lora_unet_x.lora_down.weight": [1.0]}, protocol=4))
    save_file(
        {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, str(folder / "checkpoint.safetensors")
    )
    # SD 1.5-style layers this SDXL has not got (down_blocks.0 has no attention here) plus one that fits:
    write_kohya(folder / "partial.safetensors", unet, seed=5, targets=UNET_TARGETS[:1])
    partial = load_file(str(folder / "partial.safetensors"))
    key = "lora_unet_down_blocks_0_attentions_0_proj_in"
    partial[f"{key}.lora_down.weight"], partial[f"{key}.lora_up.weight"] = torch.randn(4, 32), torch.randn(32, 4)
    save_file(partial, str(folder / "partial.safetensors"))
    target = UNET_TARGETS[0]
    save_file(
        {f"unet.{target}.lora_A.weight": torch.randn(4, 99), f"unet.{target}.lora_B.weight": torch.randn(64, 4)},
        str(folder / "wrong_shape.safetensors"),
    )
    outside = tmp_path_factory.mktemp("outside") / "secret.safetensors"
    write_peft(outside, unet, seed=11)
    (folder / "escape.safetensors").symlink_to(outside)
    engine = Engine(model_cache, app_version="test")
    engine.loras = LoraLibrary(model_cache.home, model_cache.hashes, models_root=root)
    yield engine, base, folder, outside
    engine.loras.unload_all()  # the session's base model goes on to other test modules without adapters


def run(engine, recipe):
    draft = engine.draft(recipe, 1)[0]
    return draft.latent.tensor


def peft_layers(module):
    return sum(1 for m in module.modules() if getattr(m, "lora_A", None) is not None)


def active_layers(*modules):
    """LoRA layers that would add their branch now: enabled, with an active adapter they hold."""
    return sum(
        1
        for module in modules
        for m in module.modules()
        if getattr(m, "lora_A", None) is not None
        and not m.disable_adapters
        and any(a in m.lora_A for a in m.active_adapters)
    )


def adapter_state(module):
    return sorted(getattr(module, "peft_config", None) or {}), peft_layers(module)


def write_kohya_te2(path, text_encoder_2, seed):
    """A kohya LoRA for the second text encoder only (what the refiner shares with the base)."""
    modules = dict(text_encoder_2.named_modules())
    tensors = {}
    for j, proj in enumerate(TE_PROJECTIONS):
        a, b = lora_matrices(modules[f"text_model.encoder.layers.0.self_attn.{proj}"], seed + j)
        key = f"lora_te2_text_model_encoder_layers_0_self_attn_{proj}"
        tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = a * 3, b * 3
        tensors[f"{key}.alpha"] = torch.tensor(4.0)
    save_file(tensors, str(path))


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

    engine.loras.unload_all()  # the reference starts from modules without any adapter
    direct = StableDiffusionXLPipeline(**base.pipe.components, add_watermarker=False)
    direct.load_lora_weights(str(folder / "styles" / "other.safetensors"), adapter_name="x")
    direct.set_adapters(["x"], [0.7])
    try:
        reference = direct(
            prompt="a photo of a cat",
            negative_prompt="blurry",
            num_inference_steps=4,
            guidance_scale=5.0,
            width=64,
            height=64,
            denoising_end=0.8,
            output_type="latent",
            generator=torch.Generator("cpu").manual_seed(21),
        ).images[0]
    finally:
        direct.unload_lora_weights()
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_kohya_and_peft_files_of_the_same_weights_agree(setup, make):
    engine = setup[0]
    torch.testing.assert_close(
        run(engine, make(LoraRef("style_kohya"))), run(engine, make(LoraRef("style_peft"))), atol=1e-5, rtol=0
    )


def test_two_loras_combine_and_differ_from_each_alone(setup, make):
    engine = setup[0]
    a = run(engine, make(LoraRef("style_peft", weight=0.8)))
    b = run(engine, make(LoraRef("styles/other", weight=0.6)))
    both = run(engine, make(LoraRef("style_peft", weight=0.8), LoraRef("styles/other", weight=0.6)))
    assert not torch.allclose(both, a, atol=1e-3) and not torch.allclose(both, b, atol=1e-3)
    half = run(engine, make(LoraRef("style_peft", weight=0.4), LoraRef("styles/other", weight=0.6)))
    assert not torch.allclose(both, half, atol=1e-3)  # each weight is honoured


def test_a_lora_is_loaded_once_and_its_weight_changes_without_reloading(setup, make, monkeypatch):
    engine = setup[0]
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin

    calls = []
    original = StableDiffusionXLLoraLoaderMixin.load_lora_weights
    monkeypatch.setattr(
        StableDiffusionXLLoraLoaderMixin,
        "load_lora_weights",
        lambda pipe, *a, **k: calls.append(k.get("adapter_name")) or original(pipe, *a, **k),
    )
    engine.loras.unload_all()
    reads = engine.loras.file_reads
    strong = run(engine, make(LoraRef("with_text", weight=1.0)))  # touches the UNet and the first text encoder
    weak = run(engine, make(LoraRef("with_text", weight=0.5)))
    assert len(calls) == 1 and engine.loras.file_reads - reads == 1  # resident: loaded once, read once
    assert not torch.allclose(strong, weak, atol=1e-3)  # the new weight took effect without a reload
    engine.loras.unload_all()
    assert torch.equal(run(engine, make(LoraRef("with_text", weight=0.5))), weak)  # as if freshly loaded at 0.5
    assert len(calls) == 2


def test_a_run_without_loras_equals_the_baseline_bit_exactly_while_adapters_stay_resident(setup, make):
    engine, base, _, _ = setup
    engine.loras.unload_all()
    plain = engine.draft(make(), 1)[0]
    modules = (base.pipe.unet, base.pipe.text_encoder, base.pipe.text_encoder_2)
    assert all(peft_layers(m) == 0 for m in modules)  # the baseline ran on modules without any adapter
    run(engine, make(LoraRef("with_te2", weight=1.0), LoraRef("style_peft", weight=0.8)))
    after = engine.draft(make(), 1)[0]
    assert peft_layers(base.pipe.unet) > 0 and peft_layers(base.pipe.text_encoder_2) > 0  # still loaded…
    assert len(engine.loras.resident()) == 2
    assert active_layers(*modules) == 0  # …but off
    assert torch.equal(after.latent.tensor, plain.latent.tensor)
    assert np.array_equal(np.asarray(after.preview), np.asarray(plain.preview))
    base.pipe.enable_lora()  # switched on outside the engine: a run without LoRAs still switches them off
    assert active_layers(*modules) > 0 and torch.equal(run(engine, make()), plain.latent.tensor)
    engine.loras.unload_all()  # the clean unload: no layer, no config left
    for module in modules:
        assert peft_layers(module) == 0 and not getattr(module, "peft_config", None)
    assert torch.equal(run(engine, make()), plain.latent.tensor)


def test_the_least_recently_used_adapters_are_deleted_beyond_the_limit(setup, make, monkeypatch):
    engine, base, _, _ = setup
    engine.loras.unload_all()
    monkeypatch.setattr(engine.loras, "max_resident", 2)
    first = run(engine, make(LoraRef("style_peft", weight=0.8)))
    run(engine, make(LoraRef("styles/other", weight=0.8)))
    run(engine, make(LoraRef("with_te2", weight=0.8)))
    evicted = engine.loras.resident()
    assert len(evicted) == 2
    gone = next(r.sha256 for r in engine.loras.resolve(make(LoraRef("style_peft"))).loras)
    name = adapter_name(gone)
    assert name not in evicted
    for module in (base.pipe.unet, base.pipe.text_encoder, base.pipe.text_encoder_2):
        assert name not in (getattr(module, "peft_config", None) or {})
        assert not any(name in getattr(m, "lora_A", {}) for m in module.modules())
    loads = engine.loras.adapter_loads
    assert torch.equal(run(engine, make(LoraRef("style_peft", weight=0.8))), first)  # loaded again, same result
    assert engine.loras.adapter_loads == loads + 1 and len(engine.loras.resident()) == 2


def test_another_base_model_starts_afresh_and_the_previous_one_is_left_without_adapters(setup, make):
    engine, base, _, _ = setup
    from diffusers import StableDiffusionXLPipeline

    engine.loras.unload_all()
    copies = {k: copy.deepcopy(v) if isinstance(v, torch.nn.Module) else v for k, v in base.pipe.components.items()}
    other = StableDiffusionXLPipeline(**copies, add_watermarker=False)
    run(engine, make(LoraRef("with_text", weight=1.0)))
    loras = engine.loras.resolve(make(LoraRef("style_peft", weight=1.0))).loras
    with engine.loras.applied(other, loras):
        assert active_layers(other.unet) == 3
        for module in (base.pipe.unet, base.pipe.text_encoder, base.pipe.text_encoder_2):
            assert peft_layers(module) == 0 and not getattr(module, "peft_config", None)
    assert engine.loras.resident() == [adapter_name(loras[0].sha256)]
    engine.loras.unload_all()
    assert peft_layers(other.unet) == 0


def test_a_file_whose_bytes_no_longer_match_the_recipe_is_not_loaded(setup, make):
    engine, base, _, _ = setup
    engine.loras.unload_all()
    with pytest.raises(ValueError, match=r"style_peft\.safetensors: changed while"):
        with engine.loras.applied(base.pipe, (LoraRef("style_peft", sha256="0" * 64),)):
            pass
    assert peft_layers(base.pipe.unet) == 0 and engine.loras.resident() == []


def test_the_refiner_never_gets_the_base_loras(setup, make, model_cache):
    engine, base, _, _ = setup
    refiner = model_cache.load_refiner("tiny", base)
    te2 = refiner.pipe.text_encoder_2
    assert te2 is base.pipe.text_encoder_2  # shared: the base's adapters sit in the refiner's encoder too
    before = {k: v.clone() for k, v in refiner.pipe.unet.state_dict().items()}
    recipe = make(LoraRef("with_te2", weight=1.0), prompt="a lighthouse at dusk, seen by the refiner test")
    draft = engine.draft(recipe, 1)[0]
    assert peft_layers(te2) > 0
    seen = {"unet": [], "te2": []}
    hooks = [
        refiner.pipe.unet.register_forward_pre_hook(lambda m, a: seen["unet"].append(peft_layers(m))),
        te2.register_forward_pre_hook(lambda m, a: seen["te2"].append(active_layers(m))),
    ]
    try:
        refined = engine.refine(draft)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen["unet"] and max(seen["unet"]) == 0  # no adapter in the refiner's UNet
    assert seen["te2"] and max(seen["te2"]) == 0  # the refiner encoded its prompt with every adapter off
    assert all(torch.equal(before[k], v) for k, v in refiner.pipe.unet.state_dict().items())
    assert not torch.equal(draft.latent.tensor, run(engine, recipe.replace(loras=())))  # the LoRA does change the base
    # Refining the same latent without any LoRA in the recipe gives the same pixels: nothing leaked.
    plain = engine.refine(Draft(draft.recipe.replace(loras=()), draft.latent, draft.preview))
    assert np.array_equal(np.asarray(refined.image), np.asarray(plain.image))
    engine.loras.unload_all()  # and equal to refining with no adapter loaded at all
    clean = engine.refine(Draft(draft.recipe.replace(loras=()), draft.latent, draft.preview))
    assert np.array_equal(np.asarray(refined.image), np.asarray(clean.image))


def test_recipe_records_name_sha_weight_and_reruns_to_the_same_pixels(setup, make):
    engine, _, folder, _ = setup
    from pipelines.models.model_files import sha256_of_file

    draft = engine.draft(make(LoraRef("style_kohya", weight=0.9)), 1)[0]
    (ref,) = draft.recipe.loras
    assert (ref.name, ref.sha256, ref.weight) == (
        "style_kohya",
        sha256_of_file(folder / "style_kohya.safetensors"),
        0.9,
    )
    again = engine.render(draft.recipe)
    assert torch.equal(again.latent.tensor, draft.latent.tensor)
    assert np.array_equal(np.asarray(again.preview), np.asarray(draft.preview))


def test_prompt_tokens_resolve_against_the_folder(setup, make):
    engine = setup[0]
    explicit = engine.draft(make(LoraRef("style_peft", weight=0.5)), 1)[0]
    token = engine.draft(make(prompt="a photo of a cat <lora:style_peft:0.5>"), 1)[0]
    assert [(r.name, r.weight, r.sha256) for r in token.recipe.loras] == [
        (r.name, r.weight, r.sha256) for r in explicit.recipe.loras
    ]
    assert torch.equal(token.latent.tensor, explicit.latent.tensor)
    assert torch.equal(engine.render(token.recipe).latent.tensor, token.latent.tensor)  # re-run: applied once


@pytest.mark.parametrize(
    "name, message",
    [
        ("garbage", r"garbage\.safetensors: (not a valid|corrupt)"),
        ("pickled", r"pickled\.safetensors: this is a pickle"),
        ("checkpoint", r"checkpoint\.safetensors: not a LoRA in a format Atelier knows"),
        ("partial", r"partial\.safetensors: only 1 of its 2 LoRA layers match"),
        ("wrong_shape", r"wrong_shape\.safetensors: could not be applied .*size mismatch"),
        ("missing", r"no lora named 'missing'"),
        ("../outside", r"must be a name inside"),
        ("/etc/passwd", r"must be a name inside"),
        ("escape", r"leads outside"),
    ],
)
def test_bad_files_and_names_give_clear_errors_and_leave_the_pipeline_as_before(setup, make, name, message):
    engine, base, _, _ = setup
    engine.loras.unload_all()
    baseline = run(engine, make())
    run(engine, make(LoraRef("styles/other", weight=0.5)))  # one adapter resident before the failure
    modules = (base.pipe.unet, base.pipe.text_encoder, base.pipe.text_encoder_2)
    before = [adapter_state(m) for m in modules], engine.loras.resident()
    with pytest.raises(ValueError, match=message):
        engine.draft(make(LoraRef("style_peft", weight=1.0), LoraRef(name, weight=1.0)), 1)
    assert ([adapter_state(m) for m in modules], engine.loras.resident()) == before  # style_peft rolled back too
    assert active_layers(*modules) == 0
    assert torch.equal(run(engine, make()), baseline)


@pytest.mark.parametrize("name", ["partial", "wrong_shape"])
def test_a_failed_load_into_a_clean_base_leaves_no_lora_layer(setup, make, name):
    engine, base, _, _ = setup
    engine.loras.unload_all()
    with pytest.raises(ValueError, match=name):
        engine.draft(make(LoraRef("with_text", weight=1.0), LoraRef(name, weight=1.0)), 1)
    for module in (base.pipe.unet, base.pipe.text_encoder, base.pipe.text_encoder_2):
        assert peft_layers(module) == 0 and not getattr(module, "peft_config", None)
    assert engine.loras.resident() == []


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
