"""SDXL-family single files whose UNet is not SDXL 1.0's shape (SSD-1B, Segmind Vega, inpainting):
the architecture read from the header, named, loaded offline, and drawing as the folder it was made from."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.models.checkpoint_shapes import infer_bigg_config, infer_unet_config, unet_variant
from pipelines.models.single_file import SKELETONS, describe_single_file, load_single_file, write_single_file

# Tiny random UNets shaped like the distilled SDXLs: per input-layer transformer depths, middle block.
VARIANTS = {
    "SSD-1B": dict(  # depths [0, 0, 2, 2, 4, 4], up blocks thinned unevenly, middle attention kept
        transformer_layers_per_block=((1, 1), (2, 2), (4, 4)),
        reverse_transformer_layers_per_block=((4, 4, 2), (2, 1, 1), (1, 1, 1)),
        mid_block_type="UNetMidBlock2DCrossAttn",
    ),
    "Segmind Vega": dict(  # depths [0, 0, 1, 1, 2, 2], no attention in the middle block
        transformer_layers_per_block=(1, 1, 2),
        mid_block_type="UNetMidBlock2D",
    ),
}


def variant_unet(shape: dict, seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=32,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4, 8),
        use_linear_projection=True,
        norm_num_groups=8,
        cross_attention_dim=80,  # the tiny model's two text encoders: 32 + 48
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 16,
        **shape,
    )


@pytest.fixture(scope="module")
def variant_files(tmp_path_factory, tiny_model_dir):
    """name -> (diffusers folder, original-layout single file in another folder, without a config beside it)."""
    root = tmp_path_factory.mktemp("variants")
    made = {}
    for seed, (name, shape) in enumerate(VARIANTS.items()):
        folder = root / name.replace(" ", "_")
        shutil.copytree(tiny_model_dir / "base", folder)
        shutil.rmtree(folder / "unet")
        variant_unet(shape, seed).save_pretrained(folder / "unet")
        (root / "files").mkdir(exist_ok=True)
        made[name] = folder, write_single_file(folder, root / "files" / f"{folder.name}.safetensors")
    return made


def _latents(pipe):
    generator = torch.Generator("cpu").manual_seed(11)
    return pipe(
        "a red fox in the snow",
        negative_prompt="blurry",
        num_inference_steps=3,
        guidance_scale=5.0,
        height=64,
        width=64,
        generator=generator,
        output_type="latent",
    ).images


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_file_is_named_loads_offline_and_draws_as_its_folder(variant_files, name):
    from diffusers import StableDiffusionXLPipeline

    folder, single = variant_files[name]
    keys = set(load_file(single))
    assert "model.diffusion_model.input_blocks.7.1.transformer_blocks.1.attn2.to_k.weight" in keys  # original layout
    assert ("model.diffusion_model.middle_block.1.proj_in.weight" in keys) is (name == "SSD-1B")
    assert describe_single_file(single) == ("base", name)
    reference = StableDiffusionXLPipeline.from_pretrained(folder, add_watermarker=False)
    pipe, kind, config = load_single_file(single, StableDiffusionXLPipeline)
    assert kind == "base" and config.parent.name == "atelier-inferred-configs"
    made, loaded = reference.unet.state_dict(), pipe.unet.state_dict()
    assert made.keys() == loaded.keys() and all(torch.equal(made[k], loaded[k]) for k in made)
    assert torch.equal(_latents(pipe), _latents(reference))


def test_a_shape_diffusers_cannot_build_is_refused_with_what_did_not_match(variant_files, tmp_path):
    _, single = variant_files["SSD-1B"]
    state = load_file(single)
    odd = {k: v for k, v in state.items() if not k.startswith("model.diffusion_model.middle_block.1.")}
    path = tmp_path / "odd.safetensors"
    save_file(odd, str(path))  # two middle resnets without the attention between them (ComfyUI's "-1")
    with pytest.raises(ValueError, match=r"odd.safetensors: an SDXL-like base .*middle block has 2 resnets"):
        describe_single_file(path)


def test_a_failed_load_names_the_variant(variant_files, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    folder, single = variant_files["SSD-1B"]
    state = load_file(single)
    del state["model.diffusion_model.output_blocks.0.0.in_layers.0.weight"]  # shapes intact, one weight gone
    path = tmp_path / "damaged.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError, match=r"damaged.safetensors: could not be loaded .*shaped like SSD-1B"):
        load_single_file(path, StableDiffusionXLPipeline, config=folder)


# --- real sizes, from shapes only (the meta device: nothing allocated) ---------------------------------


def _header(models: dict, kind: str) -> dict:
    from pipelines.models.single_file import BIGG_BASE, BIGG_REFINER, openclip_to_original, unet_to_original

    state = unet_to_original(models["unet"].state_dict(), models["unet"].config)
    state |= openclip_to_original(models["text_encoder_2"].state_dict(), BIGG_BASE if kind == "base" else BIGG_REFINER)
    return {k: {"dtype": "F16", "shape": list(v.shape), "data_offsets": [0, 0]} for k, v in state.items()}


@pytest.mark.parametrize("kind, name", [("base", "SDXL 1.0 base"), ("refiner", "SDXL 1.0 refiner")])
def test_real_sdxl_shapes_give_the_shipped_config_and_their_name(kind, name):
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    folder = SKELETONS / f"sdxl_{kind}"
    shipped = json.loads((folder / "unet" / "config.json").read_text())
    with init_empty_weights():
        models = {
            "unet": UNet2DConditionModel.from_config(shipped),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2")),
        }
    header = _header(models, kind)
    te2 = infer_bigg_config(header, kind, {})
    assert (te2["hidden_size"], te2["num_attention_heads"], te2["num_hidden_layers"]) == (1280, 20, 32)
    inferred = infer_unet_config(header, kind, te2["projection_dim"])
    compared = [k for k in inferred if k in shipped and k not in ("_class_name", "transformer_layers_per_block")]
    assert {k: inferred[k] for k in compared} == {k: shipped[k] for k in compared}
    with init_empty_weights():  # the depths may be written another way: the architecture built must be the same
        built = UNet2DConditionModel.from_config(inferred)
    shapes = {k: tuple(v.shape) for k, v in models["unet"].state_dict().items()}
    assert {k: tuple(v.shape) for k, v in built.state_dict().items()} == shapes
    assert unet_variant(inferred, header) == name
    conv_in = "model.diffusion_model.input_blocks.0.0.weight"
    header[conv_in] = {**header[conv_in], "shape": [header[conv_in]["shape"][0], 9, 3, 3]}
    assert unet_variant(infer_unet_config(header, kind, 1280), header) == f"{name} inpainting"
