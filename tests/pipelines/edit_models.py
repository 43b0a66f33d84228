"""Tiny LoRAs (kohya and peft layouts) and tiny ControlNets for the tiny SDXL, made inside the tests; the
sources, masks and recipe fields of the inpaint/outpaint tests.

Imported by the editing tests (pytest runs in importlib mode: they put this folder on sys.path).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

UNET_TARGETS = (
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
    "up_blocks.0.attentions.0.transformer_blocks.0.ff.net.2",
)
TE_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")  # of the first text encoder (flat in transformers 5)


def lora_matrices(module, seed, rank=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rank, module.in_features, generator=g) * 0.3, torch.randn(
        module.out_features, rank, generator=g
    ) * 0.3


def write_peft(path, unet, seed, targets=UNET_TARGETS):
    modules = dict(unet.named_modules())
    tensors = {}
    for i, target in enumerate(targets):
        a, b = lora_matrices(modules[target], seed + i)
        tensors[f"unet.{target}.lora_A.weight"], tensors[f"unet.{target}.lora_B.weight"] = a, b
    save_file(tensors, str(path))


def write_kohya(path, unet, seed, text_encoder=None, targets=UNET_TARGETS):
    """kohya's naming with alpha = rank (scale 1), so it equals the peft file made from the same seed."""
    modules = dict(unet.named_modules())
    tensors = {}
    for i, target in enumerate(targets):
        a, b = lora_matrices(modules[target], seed + i)
        key = "lora_unet_" + target.replace(".", "_")
        tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = a, b
        tensors[f"{key}.alpha"] = torch.tensor(float(a.shape[0]))
    if text_encoder is not None:  # real kohya files adapt all four attention projections
        te_modules = dict(text_encoder.named_modules())
        for j, proj in enumerate(TE_PROJECTIONS):
            a, b = lora_matrices(te_modules[f"encoder.layers.0.self_attn.{proj}"], seed + 99 + j)
            key = f"lora_te1_text_model_encoder_layers_0_self_attn_{proj}"
            tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = a, b
            tensors[f"{key}.alpha"] = torch.tensor(4.0)
    save_file(tensors, str(path))


def tiny_controlnet(unet, seed):
    """from_unet is zero-initialised (no effect at all): give every weight a small random value."""
    from diffusers import ControlNetModel

    model = ControlNetModel.from_unet(unet)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def pattern(seed, size=64):
    """Coloured rectangles on black: an image with clear edges."""
    rng = np.random.RandomState(seed)
    img = np.zeros((size, size, 3), np.uint8)
    for _ in range(4):
        x, y, w = rng.randint(0, size - 16, 3)
        img[y : y + 12 + w % 8, x : x + 12 + w % 8] = rng.randint(60, 255, 3)
    return Image.fromarray(img)


def smooth_image(seed, size=(96, 64)):
    rng = np.random.RandomState(seed)
    coarse = rng.rand(size[1] // 8, size[0] // 8, 3)
    return Image.fromarray((coarse * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)


EDIT_FIELDS = dict(mode="img2img", strength=0.9, steps=6, switch=1.0, refine=None, watermark=False)
MASK_SHA = "ab" * 32  # a recorded mask's sha256 (the tests hand the engine the mask itself)


def square_mask(box=(24, 24, 40, 40), size=(64, 64)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)
