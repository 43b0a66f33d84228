"""The real SDXL 1.0 base + refiner architecture with random weights, from the shipped config skeletons
(pipelines/models/model_configs), and what a draft's preview costs against its UNet work, in FLOPs.

Nothing is downloaded. On the meta device no weight is allocated: FLOPs are counted with
torch.utils.flop_counter on shapes alone (a few seconds on a CPU). On a real device the modules are
made there directly, with PyTorch's default initialisation (no copy through the CPU), then cast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from pipelines.models.single_file import SKELETONS
from pipelines.recipe import ModelRef, Recipe

SIZE_1024 = 1024
PROMPT_TOKENS = 77


def build_sdxl(device: str | torch.device, dtype: torch.dtype, *, vae: Any = None) -> tuple[Any, Any]:
    """(base StableDiffusionXLPipeline, refiner StableDiffusionXLImg2ImgPipeline) of SDXL 1.0's architecture,
    random weights, sharing text_encoder_2 and the VAE as the released refiner does. `vae`: one to use
    instead (the tiny TAESD-sized checks), else SDXL's own (force_upcast as its config says)."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    base_dir, refiner_dir = SKELETONS / "sdxl_base", SKELETONS / "sdxl_refiner"
    with torch.device(device):
        modules = {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(base_dir / "unet")),
            "refiner_unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(refiner_dir / "unet")),
            "vae": vae or AutoencoderKL.from_config(AutoencoderKL.load_config(base_dir / "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(base_dir / "text_encoder")),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(base_dir / "text_encoder_2")),
        }
    for module in modules.values():
        module.to(dtype=dtype).eval().requires_grad_(False)
    shared = {"vae": modules["vae"], "text_encoder_2": modules["text_encoder_2"]}
    base = StableDiffusionXLPipeline(
        **shared,
        unet=modules["unet"],
        text_encoder=modules["text_encoder"],
        tokenizer=CLIPTokenizer.from_pretrained(base_dir / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(base_dir / "tokenizer_2"),
        scheduler=EulerDiscreteScheduler.from_pretrained(base_dir / "scheduler"),
        add_watermarker=False,
    )
    refiner = StableDiffusionXLImg2ImgPipeline(
        **shared,
        unet=modules["refiner_unet"],
        text_encoder=None,
        tokenizer=None,
        tokenizer_2=CLIPTokenizer.from_pretrained(refiner_dir / "tokenizer_2"),
        scheduler=EulerDiscreteScheduler.from_pretrained(refiner_dir / "scheduler"),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    return base, refiner


def base_steps(steps: int, switch: float, scheduler_config: dict | Path = SKELETONS / "sdxl_base" / "scheduler") -> int:
    """UNet steps the base runs before the switch (diffusers' denoising_end rule, Euler's timesteps)."""
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler.from_pretrained(scheduler_config)
    scheduler.set_timesteps(steps)
    trained = scheduler.config.num_train_timesteps
    cutoff = int(round(trained - switch * trained))
    return int((scheduler.timesteps >= cutoff).sum())


def _flops(run) -> int:
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


@torch.no_grad()
def preview_flops(size: int = SIZE_1024, recipe: Recipe | None = None) -> dict[str, Any]:
    """FLOPs of one draft's preview against that draft's base UNet steps (with classifier-free guidance:
    two samples per step), for SDXL at `size`² with the recipe's steps and switch (the defaults when None)."""
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel

    from pipelines.engine.previews import PREVIEW_REDUCTION

    recipe = recipe or Recipe(model=ModelRef("sdxl"), prompt="flops", seed=0)
    base_dir = SKELETONS / "sdxl_base"
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(base_dir / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(base_dir / "vae"))
        taesd = AutoencoderTiny()
        side = size // 8
        guided = 2 if recipe.guidance > 1 else 1
        added = {"text_embeds": torch.empty(guided, 1280), "time_ids": torch.empty(guided, 6)}
        step = _flops(
            lambda: unet(
                torch.empty(guided, 4, side, side),
                torch.full((guided,), 500),
                encoder_hidden_states=torch.empty(guided, PROMPT_TOKENS, 2048),
                added_cond_kwargs=added,
            )
        )
        full = _flops(lambda: vae.decode(torch.empty(1, 4, side, side)))
        reduced = side // PREVIEW_REDUCTION
        half = _flops(lambda: vae.decode(torch.empty(1, 4, reduced, reduced)))
        tiny = _flops(lambda: taesd.decode(torch.empty(1, 4, side, side)))
    steps = base_steps(recipe.steps, recipe.switch)
    draft = steps * step
    return {
        "preview_flops_ratio_1024": half / draft,  # the fallback preview (half-size VAE decode): the costlier one
        "preview_flops_ratio_1024_taesd": tiny / draft,
        "full_decode_flops_ratio_1024": full / draft,  # what each draft's preview cost before
        "preview_flops_basis": {
            "size": size,
            "steps": recipe.steps,
            "switch": recipe.switch,
            "base_unet_steps": steps,
            "unet_step_tflops": step / 1e12,
            "vae_decode_tflops": full / 1e12,
            "half_size_decode_tflops": half / 1e12,
            "taesd_xl_decode_tflops": tiny / 1e12,
        },
    }
