"""ControlNet single files in the original (ldm / A1111) key layout, read into diffusers' ControlNetModel.

The original layout is the UNet encoder's (`input_blocks`, `middle_block`, `time_embed`, `label_emb`)
plus the ControlNet's own parts, usually under `control_model.`:
  controlnet_cond_embedding.conv_in / blocks.j / conv_out -> input_hint_block.0 / .2(j+1) / last
  controlnet_down_blocks.i                                  -> zero_convs.i.0
  controlnet_mid_block                                      -> middle_block_out.0
The names are mapped from the diffusers model's own keys (the same renaming single_file.py writes
checkpoints with), so every weight the architecture needs is found or named as missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.models.single_file import UNET, unet_to_original

PREFIX = "control_model."
ORIGINAL_MARKERS = ("input_hint_block.", "zero_convs.", "middle_block_out.")


def is_original_layout(keys) -> bool:
    return any(k.removeprefix(PREFIX).startswith(ORIGINAL_MARKERS) for k in keys)


def _own_part(key: str, hint_blocks: int) -> str | None:
    """The original name of a ControlNet-only weight, or None for the UNet-encoder part."""
    name, _, param = key.rpartition(".")
    if name == "controlnet_cond_embedding.conv_in":
        return f"input_hint_block.0.{param}"
    if name == "controlnet_cond_embedding.conv_out":
        return f"input_hint_block.{2 * (hint_blocks + 1)}.{param}"
    if name.startswith("controlnet_cond_embedding.blocks."):
        return f"input_hint_block.{2 * (int(name.rsplit('.', 1)[1]) + 1)}.{param}"
    if name.startswith("controlnet_down_blocks."):
        return f"zero_convs.{name.rsplit('.', 1)[1]}.0.{param}"
    if name == "controlnet_mid_block":
        return f"middle_block_out.0.{param}"
    return None


def original_names(keys, config: dict[str, Any]) -> dict[str, str]:
    """diffusers ControlNetModel key -> original key (without the `control_model.` prefix)."""
    hint_blocks = sum(1 for k in keys if k.startswith("controlnet_cond_embedding.blocks.") and k.endswith(".weight"))
    names, encoder = {}, {}
    for key in keys:
        own = _own_part(key, hint_blocks)
        if own is not None:
            names[key] = own
        else:
            encoder[key] = key
    # The encoder is named as in a UNet checkpoint (a ControlNet has no up blocks).
    renamed = unet_to_original(encoder, {**config, "up_block_types": ()})
    names |= {diffusers: original.removeprefix(UNET) for original, diffusers in renamed.items()}
    return names


def controlnet_to_original(state: dict, config: dict[str, Any]) -> dict:
    """A diffusers ControlNet state dict renamed to the original layout (as A1111 users share them)."""
    names = original_names(list(state), config)
    return {PREFIX + names[k]: v for k, v in state.items()}


def read_original(path: Path, keys, config: dict[str, Any]) -> dict:
    """The file's tensors under diffusers' names for a model with `keys`; ValueError naming what is missing."""
    from safetensors import safe_open

    names = original_names(list(keys), config)
    with safe_open(str(path), framework="pt") as f:
        present = set(f.keys())
        prefix = PREFIX if any(k.startswith(PREFIX) for k in present) else ""
        missing = [o for o in names.values() if prefix + o not in present]
        if missing:
            raise ValueError(
                f"{path}: {len(missing)} weights this base model's ControlNet needs are not in the file "
                f"(e.g. {prefix + missing[0]}); is it an SDXL ControlNet?"
            )
        extra = sorted(present - {prefix + o for o in names.values()})
        if extra:
            raise ValueError(
                f"{path}: {len(extra)} weights have no place in this base model's ControlNet (e.g. {extra[0]}); "
                "a differently sized ControlNet needs a folder with its config.json"
            )
        return {d: f.get_tensor(prefix + o) for d, o in names.items()}
