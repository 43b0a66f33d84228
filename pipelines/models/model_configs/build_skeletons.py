"""Rebuild the shipped SDXL 1.0 config skeletons: `python -m pipelines.models.model_configs.build_skeletons`.

A skeleton is a diffusers folder without weights (model_index.json, component config.json files,
scheduler config, tokenizer files); `from_single_file(path, config=skeleton)` then works offline.
The values are those of stabilityai/stable-diffusion-xl-base-1.0 and -refiner-1.0; the configs are
written by the installed diffusers/transformers classes so that every field is one they know.
The CLIP vocabulary is stored once (clip_tokenizer/) and linked from each tokenizer folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent

SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    steps_offset=1,
    timestep_spacing="leading",
    prediction_type="epsilon",
    interpolation_type="linear",
    use_karras_sigmas=False,
)
VAE = dict(
    act_fn="silu",
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.13025,
    force_upcast=True,
)
UNET_COMMON = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_embed_type_num_heads=64,
    addition_time_embed_dim=256,
)
UNET_BASE = dict(
    UNET_COMMON,
    block_out_channels=[320, 640, 1280],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 2, 10],
    attention_head_dim=[5, 10, 20],
    cross_attention_dim=2048,
    projection_class_embeddings_input_dim=2816,  # 6 time ids * 256 + 1280 pooled
)
UNET_REFINER = dict(
    UNET_COMMON,
    block_out_channels=[384, 768, 1536, 1536],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=4,
    attention_head_dim=[6, 12, 24, 24],
    cross_attention_dim=1280,
    projection_class_embeddings_input_dim=2560,  # 5 time ids (with aesthetic score) * 256 + 1280
)
CLIP_COMMON = dict(
    vocab_size=49408,
    max_position_embeddings=77,
    layer_norm_eps=1e-5,
    attention_dropout=0.0,
    dropout=0.0,
    initializer_factor=1.0,
    initializer_range=0.02,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)
TEXT_ENCODER = dict(  # CLIP ViT-L/14
    CLIP_COMMON, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
    projection_dim=768, hidden_act="quick_gelu",
)
TEXT_ENCODER_2 = dict(  # OpenCLIP ViT-bigG/14
    CLIP_COMMON, hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
    projection_dim=1280, hidden_act="gelu",
)
MODEL_INDEX = {
    "sdxl_base": {
        "_class_name": "StableDiffusionXLPipeline",
        "force_zeros_for_empty_prompt": True,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    },
    "sdxl_refiner": {
        "_class_name": "StableDiffusionXLImg2ImgPipeline",
        "force_zeros_for_empty_prompt": False,
        "requires_aesthetics_score": True,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": [None, None],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": [None, None],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    },
}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _model_config(cls, **kwargs) -> dict:
    from accelerate import init_empty_weights

    with init_empty_weights():  # build the class to validate the values, without allocating weights
        model = cls(**kwargs)
    return {k: v for k, v in dict(model.config).items() if not k.startswith("_")} | {"_class_name": cls.__name__}


def _text_config(architecture: str, values: dict) -> dict:
    from transformers import CLIPTextConfig

    CLIPTextConfig(**values)  # validates the values
    return {"architectures": [architecture], "model_type": "clip_text_model", **values}


def _tokenizer(dest: Path, pad_token: str) -> None:
    from pipelines.models.tiny_model import clip_tokenizer_files

    clip_tokenizer_files(dest, pad_token=pad_token)
    for name in ("vocab.json", "merges.txt"):  # share one copy of the 2 MB vocabulary
        shared = HERE / "clip_tokenizer" / name
        shared.parent.mkdir(exist_ok=True)
        shutil.copyfile(dest / name, shared)
        (dest / name).unlink()
        (dest / name).symlink_to(os.path.relpath(shared, dest))


def build(root: Path = HERE) -> None:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel

    scheduler = {k: v for k, v in EulerDiscreteScheduler(**SCHEDULER).config.items() if not k.startswith("_")}
    scheduler["_class_name"] = "EulerDiscreteScheduler"
    vae = _model_config(AutoencoderKL, **VAE)
    text_encoder_2 = _text_config("CLIPTextModelWithProjection", TEXT_ENCODER_2)
    for name, unet in (("sdxl_base", UNET_BASE), ("sdxl_refiner", UNET_REFINER)):
        folder = root / name
        if folder.exists():
            shutil.rmtree(folder)
        _write_json(folder / "model_index.json", MODEL_INDEX[name])
        _write_json(folder / "scheduler" / "scheduler_config.json", scheduler)
        _write_json(folder / "vae" / "config.json", vae)
        _write_json(folder / "unet" / "config.json", _model_config(UNet2DConditionModel, **unet))
        _write_json(folder / "text_encoder_2" / "config.json", text_encoder_2)
        _tokenizer(folder / "tokenizer_2", pad_token="!")
        if name == "sdxl_base":
            _write_json(folder / "text_encoder" / "config.json", _text_config("CLIPTextModel", TEXT_ENCODER))
            _tokenizer(folder / "tokenizer", pad_token="<|endoftext|>")


if __name__ == "__main__":
    build()
