"""A tiny LoRA and a tiny ControlNet for the demo model, so every tab can be tried on a fresh install.

Both are made from the tiny base UNet with fixed seeds and written the way users install real ones:
`models/Lora/tiny-demo-ink.safetensors` (peft layout) and `models/ControlNet/tiny-demo-canny/` (a
diffusers folder). They have random weights, like the demo model: they change the picture, not
meaningfully.
"""

from __future__ import annotations

from pathlib import Path

DEMO_LORA = "tiny-demo-ink"
DEMO_CONTROLNET = "tiny-demo-canny"
SEED = 20260101
# Attention and feed-forward layers the demo LoRA adapts (present in the tiny UNet as in SDXL's).
LORA_TARGETS = (
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
    "up_blocks.0.attentions.0.transformer_blocks.0.ff.net.2",
)


def write_demo_extras(models_dir: Path, base_dir: Path) -> dict[str, Path]:
    """Write the demo LoRA and ControlNet under `models_dir` (an A1111-layout models folder) unless
    they are there already; `base_dir` is the tiny base model's diffusers folder."""
    lora = Path(models_dir) / "Lora" / f"{DEMO_LORA}.safetensors"
    controlnet = Path(models_dir) / "ControlNet" / DEMO_CONTROLNET
    if lora.exists() and (controlnet / "config.json").exists():
        return {"lora": lora, "controlnet": controlnet}
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(Path(base_dir) / "unet")
    generator = torch.Generator().manual_seed(SEED)
    modules = dict(unet.named_modules())
    tensors = {}
    for target in LORA_TARGETS:
        layer = modules[target]
        tensors[f"unet.{target}.lora_A.weight"] = torch.randn(4, layer.in_features, generator=generator) * 0.3
        tensors[f"unet.{target}.lora_B.weight"] = torch.randn(layer.out_features, 4, generator=generator) * 0.3
    lora.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(lora))
    model = ControlNetModel.from_unet(unet)  # zero-initialised: no effect until its weights are not zero
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    model.save_pretrained(controlnet, safe_serialization=True)
    return {"lora": lora, "controlnet": controlnet}
