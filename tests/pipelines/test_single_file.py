"""Single-file SDXL checkpoints: the original key layout, offline loading, errors in words.

The layout is checked against diffusers' own reader (its conversion back must give the exact
diffusers state dict), on the tiny model with real weights and on real SDXL sizes on the meta device.
"""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.models.single_file import (
    SKELETONS,
    config_for,
    detect_kind,
    folder_to_original,
    inspect_single_file,
    load_single_file,
    openclip_to_original,
    unet_to_original,
    vae_to_original,
    write_single_file,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_model_dir):
    """A copy of the session's tiny model (base/, refiner/) with its single files beside the folders."""
    root = tmp_path_factory.mktemp("tiny")
    base, refiner = root / "base", root / "refiner"
    shutil.copytree(tiny_model_dir, root, dirs_exist_ok=True)
    write_single_file(base, root / "base.safetensors")
    write_single_file(refiner, root / "refiner.safetensors")
    return root


def _pipes():
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline


def _latents(pipe, **kwargs):
    generator = torch.Generator("cpu").manual_seed(7)
    return pipe(
        "a photo of a cat",
        negative_prompt="blurry",
        num_inference_steps=3,
        guidance_scale=5.0,
        generator=generator,
        output_type="latent",
        **kwargs,
    ).images


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_base_file_has_the_original_layout(tiny):
    keys = set(load_file(tiny / "base.safetensors"))
    prefixes = {k.split(".")[0] + "." + k.split(".")[1] for k in keys}
    assert prefixes == {
        "model.diffusion_model",
        "first_stage_model.encoder",
        "first_stage_model.decoder",
        "first_stage_model.quant_conv",
        "first_stage_model.post_quant_conv",
        "conditioner.embedders",
    }
    assert "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight" in keys
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert "conditioner.embedders.1.model.text_projection" in keys
    assert not any(k.startswith("conditioner.embedders.0.model.") for k in keys)
    refiner = set(load_file(tiny / "refiner.safetensors"))
    assert "conditioner.embedders.0.model.positional_embedding" in refiner
    assert not any(".transformer.text_model." in k or "embedders.1" in k for k in refiner)
    assert detect_kind(tiny / "base.safetensors") == "base"
    assert detect_kind(tiny / "refiner.safetensors") == "refiner"


def test_single_file_base_loads_offline_and_matches_the_folder(tiny):
    base_cls, _ = _pipes()
    folder = base_cls.from_pretrained(tiny / "base", add_watermarker=False)
    pipe, kind, config = load_single_file(tiny / "base.safetensors", base_cls)
    assert (kind, config) == ("base", tiny / "base")  # the same-stem folder beside the file
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert _same_weights(getattr(pipe, name), getattr(folder, name)), name
    assert pipe.watermark is None
    assert torch.equal(_latents(pipe, height=64, width=64), _latents(folder, height=64, width=64))


def test_single_file_refiner_loads_and_matches_the_folder(tiny):
    _, refiner_cls = _pipes()
    folder = refiner_cls.from_pretrained(tiny / "refiner", add_watermarker=False)
    pipe, kind, _ = load_single_file(tiny / "refiner.safetensors", refiner_cls)
    assert kind == "refiner" and pipe.text_encoder is None and pipe.config.requires_aesthetics_score
    for name in ("unet", "vae", "text_encoder_2"):
        assert _same_weights(getattr(pipe, name), getattr(folder, name)), name
    image = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(_latents(pipe, image=image, strength=0.5), _latents(folder, image=image, strength=0.5))


def test_shared_components_are_used_as_given(tiny):
    base_cls, refiner_cls = _pipes()
    base = load_single_file(tiny / "base.safetensors", base_cls)[0]
    refiner = load_single_file(
        tiny / "refiner.safetensors", refiner_cls, text_encoder_2=base.text_encoder_2, vae=base.vae
    )[0]
    assert refiner.text_encoder_2 is base.text_encoder_2 and refiner.vae is base.vae


def test_without_a_sidecar_the_config_comes_from_the_file(tiny, tmp_path):
    """The tiny model's file alone (no folder beside it) loads from its shapes and draws as its folder."""
    lone = tmp_path / "lone.safetensors"
    shutil.copyfile(tiny / "base.safetensors", lone)
    config = config_for(lone, "base")
    assert config != SKELETONS / "sdxl_base" and config_for(tiny / "refiner.safetensors", "refiner") == tiny / "refiner"
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        inferred = json.loads((config / component / "config.json").read_text())
        made = json.loads((tiny / "base" / component / "config.json").read_text())
        keys = {"block_out_channels", "norm_num_groups", "hidden_size", "num_attention_heads", "num_hidden_layers"}
        keys |= {"attention_head_dim", "cross_attention_dim", "addition_time_embed_dim", "latent_channels"}
        assert {k: inferred[k] for k in keys & made.keys()} == {k: made[k] for k in keys & made.keys()}, component
    base_cls, _ = _pipes()
    folder = base_cls.from_pretrained(tiny / "base", add_watermarker=False)
    pipe, kind, used = load_single_file(lone, base_cls)
    assert (kind, used) == ("base", config)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert _same_weights(getattr(pipe, name), getattr(folder, name)), name
    assert torch.equal(_latents(pipe, height=64, width=64), _latents(folder, height=64, width=64))


def test_mismatched_checkpoint_and_config(tiny):
    base_cls, refiner_cls = _pipes()
    with pytest.raises(ValueError, match="base.safetensors: does not match the SDXL base config"):
        load_single_file(tiny / "base.safetensors", base_cls, config=tiny / "refiner")
    with pytest.raises(ValueError, match="refiner.safetensors: does not match the SDXL refiner config"):
        load_single_file(tiny / "refiner.safetensors", refiner_cls, config=SKELETONS / "sdxl_refiner")


def test_missing_weights_are_translated_from_diffusers(tiny, tmp_path):
    """Shapes pass the quick check but a block is missing: diffusers' meta-tensor error, in words."""
    base_cls, _ = _pipes()
    state = load_file(tiny / "base.safetensors")
    damaged = {k: v for k, v in state.items() if ".output_blocks.1." not in k}
    path = tmp_path / "damaged.safetensors"
    save_file(damaged, str(path))
    with pytest.raises(ValueError, match=r"damaged.safetensors: could not be loaded as an SDXL base checkpoint"):
        load_single_file(path, base_cls, config=tiny / "base")


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"lora_unet_down_blocks_0.lora_down.weight": 1}, "this is a LoRA"),
        ({"cond_stage_model.transformer.x": 1, "model.diffusion_model.x": 1}, "1.x/2.x"),
        ({"down_blocks.0.resnets.0.conv1.weight": 1}, "single diffusers component"),
        ({"model.diffusion_model.x": 1}, "not an SDXL checkpoint"),
        ({"conditioner.embedders.0.model.positional_embedding": 1}, "incomplete SDXL checkpoint"),
    ],
)
def test_files_that_are_not_sdxl_checkpoints_are_named(tmp_path, keys, message):
    path = tmp_path / "other.safetensors"
    save_file({k: torch.ones(v) for k, v in keys.items()}, str(path))
    with pytest.raises(ValueError, match=message):
        inspect_single_file(path)


def test_pickles_and_wrong_suffixes_are_refused(tiny, tmp_path):
    real = tmp_path / "real.ckpt"
    torch.save({"state_dict": load_file(tiny / "refiner.safetensors")}, real)
    renamed = tmp_path / "renamed.safetensors"
    shutil.copyfile(real, renamed)
    for path in (real, renamed):
        with pytest.raises(ValueError, match="pickle checkpoint"):
            inspect_single_file(path)
    disguised = tmp_path / "safe.ckpt"
    shutil.copyfile(tiny / "refiner.safetensors", disguised)
    with pytest.raises(ValueError, match="rename it"):
        inspect_single_file(disguised)


def test_truncated_file_is_named(tiny, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((tiny / "base.safetensors").read_bytes()[:-1000])
    with pytest.raises(ValueError, match="cut.safetensors: truncated"):
        load_single_file(cut, _pipes()[0])


def test_tiny_model_command_writes_folders_and_single_files(tiny, capsys):
    from atelier.commands import models

    parser = argparse.ArgumentParser()
    models.register(parser.add_subparsers())
    (tiny / "base.safetensors").unlink()
    args = parser.parse_args(["tiny-model", str(tiny), "--single-file", "--json"])
    assert args.func(args) == 0
    paths = json.loads(capsys.readouterr().out)
    assert paths == {
        "base": str(tiny / "base"),
        "refiner": str(tiny / "refiner"),
        "base_single_file": str(tiny / "base.safetensors"),
        "refiner_single_file": str(tiny / "refiner.safetensors"),
    }
    assert detect_kind(tiny / "base.safetensors") == "base"
    assert load_file(tiny / "refiner.safetensors").keys() == folder_to_original(tiny / "refiner").keys()


# --- real SDXL sizes, on the meta device ------------------------------------------------------


def _meta_models(kind):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = SKELETONS / f"sdxl_{kind}"
    with init_empty_weights():
        models = {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2")),
        }
        if kind == "base":
            models["text_encoder"] = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    return models


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "kind, unet_params, classes",
    [
        (
            "base",
            2_567_463_684,
            {
                "unet": "UNet2DConditionModel",
                "vae": "AutoencoderKL",
                "text_encoder": "CLIPTextModel",
                "text_encoder_2": "CLIPTextModelWithProjection",
            },
        ),
        (
            "refiner",
            2_259_526_660,
            {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "text_encoder_2": "CLIPTextModelWithProjection"},
        ),
    ],
)
def test_shipped_skeletons_build_real_sdxl_sizes(kind, unet_params, classes):
    models = _meta_models(kind)
    assert {name: type(m).__name__ for name, m in models.items()} == classes
    assert all(p.is_meta for m in models.values() for p in m.parameters())  # nothing allocated
    assert _count(models["unet"]) == unet_params
    assert _count(models["vae"]) == 83_653_863
    assert _count(models["text_encoder_2"]) == 694_659_840  # OpenCLIP ViT-bigG text tower
    if kind == "base":
        assert _count(models["text_encoder"]) == 123_060_480  # CLIP ViT-L text tower
    index = json.loads((SKELETONS / f"sdxl_{kind}" / "model_index.json").read_text())
    assert index["_class_name"] == (
        "StableDiffusionXLPipeline" if kind == "base" else "StableDiffusionXLImg2ImgPipeline"
    )
    assert index.get("requires_aesthetics_score", False) is (kind == "refiner")


@pytest.mark.parametrize("kind", ["base", "refiner"])
def test_real_sdxl_layout_round_trips_through_diffusers_reader(kind):
    """Our diffusers->original renaming, read back by diffusers' own converters, gives every weight back."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
        infer_diffusers_model_type,
    )

    models = _meta_models(kind)
    unet, vae, bigg = (models[n].state_dict() for n in ("unet", "vae", "text_encoder_2"))
    prefix = "conditioner.embedders.1.model." if kind == "base" else "conditioner.embedders.0.model."
    original = unet_to_original(unet, models["unet"].config) | vae_to_original(vae, models["vae"].config)
    original |= openclip_to_original(bigg, prefix)
    if kind == "base":
        original |= {
            "conditioner.embedders.0.transformer.text_model." + k: v
            for k, v in models["text_encoder"].state_dict().items()
        }
    assert infer_diffusers_model_type(original) == f"xl_{kind}"

    back = convert_ldm_unet_checkpoint(original, dict(models["unet"].config))
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in unet.items()}
    back = convert_ldm_vae_checkpoint(original, dict(models["vae"].config))
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in vae.items()}
    back = convert_open_clip_checkpoint(models["text_encoder_2"], original, prefix=prefix)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in bigg.items()}

    # A few names every SDXL tool knows (A1111, ComfyUI, kohya).
    known = {
        "base": [
            "model.diffusion_model.output_blocks.2.2.conv.weight",
            "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight",
            "model.diffusion_model.middle_block.1.transformer_blocks.9.ff.net.2.weight",
            "model.diffusion_model.label_emb.0.0.weight",
            "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight",
            "first_stage_model.decoder.up.3.upsample.conv.weight",
            "first_stage_model.encoder.mid.attn_1.q.weight",
        ],
        "refiner": [
            "model.diffusion_model.output_blocks.11.0.skip_connection.weight",
            "model.diffusion_model.output_blocks.8.2.conv.weight",
            "model.diffusion_model.output_blocks.2.1.conv.weight",
            "model.diffusion_model.input_blocks.9.0.op.weight",
            "conditioner.embedders.0.model.text_projection",
        ],
    }[kind]
    assert all(k in original for k in known), [k for k in known if k not in original]
    assert original["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    proj = "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight"
    if kind == "base":
        assert original[proj].shape == (3840, 1280)


@pytest.mark.parametrize("kind", ["base", "refiner"])
def test_shipped_skeleton_feeds_from_single_file_offline(tiny, kind):
    """With the models passed in, everything else (index, scheduler, linked tokenizer files) comes from the skeleton."""
    from diffusers import DiffusionPipeline, EulerDiscreteScheduler

    folder = DiffusionPipeline.from_pretrained(tiny / kind)
    models = {n: getattr(folder, n) for n in ("unet", "vae", "text_encoder", "text_encoder_2") if getattr(folder, n)}
    pipe = type(folder).from_single_file(
        str(tiny / f"{kind}.safetensors"), config=str(SKELETONS / f"sdxl_{kind}"), local_files_only=True, **models
    )
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert (
        pipe.scheduler.config.beta_end,
        pipe.scheduler.config.timestep_spacing,
        pipe.scheduler.config.steps_offset,
    ) == (0.012, "leading", 1)
    cat = [49406, 320, 1125, 539, 320, 2368, 49407]
    assert pipe.tokenizer_2("a photo of a cat").input_ids == cat and pipe.tokenizer_2.pad_token_id == 0
    if kind == "base":
        assert pipe.tokenizer("a photo of a cat").input_ids == cat and pipe.tokenizer.pad_token_id == 49407
    else:
        assert pipe.tokenizer is None and pipe.config.requires_aesthetics_score
