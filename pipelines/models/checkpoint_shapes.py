"""SDXL-family architecture from a single file's header: tensor names and shapes, no tensor loaded.

Distilled and pruned SDXL models (SSD-1B, Segmind Vega, KOALA) keep SDXL's layout but drop
transformer layers or the middle block's attention; inpainting checkpoints take 9 input channels.
ComfyUI loads them by reading the architecture from the shapes; this does the same for the UNet,
the VAE and the two text encoders, as diffusers configs.

What shapes cannot show (attention heads, GroupNorm groups) follows SDXL's conventions (64-wide
heads, 32 groups) unless the file's metadata carries `atelier.shape_hints` (Atelier writes them, so
its own tiny model's files load without a config folder).
"""

from __future__ import annotations

import json
import re
from typing import Any

UNET, VAE = "model.diffusion_model.", "first_stage_model."
CLIP_L = "conditioner.embedders.0.transformer.text_model."
BIGG = {"base": "conditioner.embedders.1.model.", "refiner": "conditioner.embedders.0.model."}
HINTS_KEY = "atelier.shape_hints"
HEAD_WIDTH, NORM_GROUPS = 64, 32  # SDXL's (and ComfyUI's num_head_channels) conventions
TIME_IDS = {"base": 6, "refiner": 5}  # size/crop numbers, plus the aesthetic score on the refiner

# Per input-block layer transformer depths and middle depth (None: no middle attention) -> name.
KNOWN_UNETS = {
    ((0, 0, 2, 2, 10, 10), 10): "SDXL 1.0 base",
    ((0, 0, 4, 4, 4, 4, 0, 0), 4): "SDXL 1.0 refiner",
    ((0, 0, 2, 2, 4, 4), 4): "SSD-1B",
    ((0, 0, 2, 2, 4, 4), None): "SSD-1B",
    ((0, 0, 1, 1, 2, 2), 2): "Segmind Vega",
    ((0, 0, 1, 1, 2, 2), None): "Segmind Vega",
    ((0, 2, 5), None): "KOALA-700M",
    ((0, 2, 6), None): "KOALA-1B",
}


def shape_hints(header: dict) -> dict[str, Any]:
    raw = (header.get("__metadata__") or {}).get(HINTS_KEY)
    try:
        hints = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return hints if isinstance(hints, dict) else {}


def _shape(header: dict, key: str) -> list[int] | None:
    info = header.get(key)
    return info.get("shape") if isinstance(info, dict) else None


def _count(keys: list[str], prefix: str) -> int:
    """How many numbered children `prefix` has ("...transformer_blocks." -> 0, 1, 2 ...)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in keys if (m := pattern.match(k))})


class ShapeMismatch(ValueError):
    """The file's UNet is SDXL-like but not in a shape diffusers can build (the message says what)."""


# --- UNet -----------------------------------------------------------------------------------------


def _input_levels(header: dict, keys: list[str]) -> list[list[int]]:
    """input_blocks indices of each level's resnets (a level ends at its downsampler `.0.op`)."""
    levels, current, i = [], [], 1
    while any(k.startswith(f"{UNET}input_blocks.{i}.") for k in keys):
        if f"{UNET}input_blocks.{i}.0.op.weight" in header:
            levels.append(current)
            current = []
        else:
            current.append(i)
        i += 1
    levels.append(current)
    return levels


def _depth(keys: list[str], block: str) -> int:
    return _count(keys, f"{UNET}{block}.1.transformer_blocks.")


def infer_unet_config(header: dict, kind: str, pooled_dim: int) -> dict[str, Any]:
    """A diffusers UNet2DConditionModel config for the file's UNet; ShapeMismatch naming what does not fit."""
    keys = [k for k in header if k.startswith(UNET)]
    hints = shape_hints(header).get("unet", {})
    levels = _input_levels(header, keys)
    per_level = {len(level) for level in levels}
    if len(per_level) != 1 or 0 in per_level:
        raise ShapeMismatch(f"the UNet's levels have {[len(x) for x in levels]} resnets; diffusers needs one count")
    layers = per_level.pop()
    channels = [_shape(header, f"{UNET}input_blocks.{level[0]}.0.out_layers.3.weight")[0] for level in levels]
    down_depths = [[_depth(keys, f"input_blocks.{i}") for i in level] for level in levels]
    n = len(levels)
    up_depths = [[_depth(keys, f"output_blocks.{b * (layers + 1) + j}") for j in range(layers + 1)] for b in range(n)]
    if _count(keys, f"{UNET}output_blocks.") != n * (layers + 1):
        raise ShapeMismatch(
            f"the UNet has {_count(keys, UNET + 'output_blocks.')} output blocks, not {n * (layers + 1)}"
        )
    for where, depths in (("input", down_depths), ("output", up_depths)):
        if any(any(level) and not all(level) for level in depths):
            raise ShapeMismatch(f"a UNet level mixes layers with and without attention ({where} depths {depths})")
    mid_type, mid_depth = _middle_block(header, keys)
    cross = next((k for k in keys if k.endswith("attn2.to_k.weight")), None)
    proj_in = next((k for k in keys if k.endswith(".1.proj_in.weight")), None)
    time_embed = _shape(header, f"{UNET}time_embed.0.weight")
    adm = _shape(header, f"{UNET}label_emb.0.0.weight")
    if cross is None or proj_in is None or time_embed is None or adm is None:
        raise ShapeMismatch("the UNet has no cross-attention or no size/crop embedding: not an SDXL-family UNet")
    time_dim, rest = divmod(adm[1] - pooled_dim, TIME_IDS[kind])
    if rest or time_dim <= 0:
        raise ShapeMismatch(
            f"the UNet's size/crop embedding takes {adm[1]} numbers, which does not fit {TIME_IDS[kind]} "
            f"size/crop values and a {pooled_dim}-wide pooled text embedding"
        )
    attends = [any(d) for d in down_depths]
    return {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": time_dim,
        "attention_head_dim": hints.get("attention_head_dim", [max(1, c // HEAD_WIDTH) for c in channels]),
        "block_out_channels": channels,
        "cross_attention_dim": _shape(header, cross)[1],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends],
        "up_block_types": ["CrossAttnUpBlock2D" if any(d) else "UpBlock2D" for d in up_depths],
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": _shape(header, f"{UNET}input_blocks.0.0.weight")[1],
        "out_channels": _shape(header, f"{UNET}out.2.weight")[0],
        "layers_per_block": layers,
        "mid_block_type": mid_type,
        "norm_num_groups": hints.get("norm_num_groups", NORM_GROUPS),
        "num_attention_heads": None,  # diffusers reads SDXL's head counts from attention_head_dim
        "projection_class_embeddings_input_dim": adm[1],
        "sample_size": hints.get("sample_size", 128),
        "time_embedding_dim": None if time_embed[0] == 4 * channels[0] else time_embed[0],
        **_transformer_layers(down_depths, up_depths, mid_depth),
        "use_linear_projection": len(_shape(header, proj_in)) == 2,
    }


def _transformer_layers(down: list[list[int]], up: list[list[int]], mid: int | None) -> dict[str, Any]:
    """diffusers' per-block transformer depths: one number per level when SDXL-regular, per layer otherwise.

    diffusers gives the middle block the deepest level's number: a deepest level without attention (the
    refiner's) carries the middle depth; one with attention must have it already."""
    if mid is not None and any(down[-1]) and mid != down[-1][0]:
        raise ShapeMismatch(
            f"the middle block has {mid} transformer layers and the deepest level {down[-1][0]}; "
            "diffusers builds them alike"
        )
    last = len(down) - 1
    down = [level if any(level) else [mid if i == last and mid else 1] * len(level) for i, level in enumerate(down)]
    regular = all(len(set(level)) == 1 for level in down) and all(
        set(u) == {d[0]} for u, d in zip(up, down[::-1]) if any(u)
    )
    if regular:
        return {
            "transformer_layers_per_block": [level[0] for level in down],
            "reverse_transformer_layers_per_block": None,
        }
    up = [level if any(level) else [1] * len(level) for level in up]
    return {"transformer_layers_per_block": down, "reverse_transformer_layers_per_block": up}


def _middle_block(header: dict, keys: list[str]) -> tuple[str | None, int | None]:
    """diffusers' middle block for the file's (attention between two resnets, one resnet, or none), and its depth."""
    if f"{UNET}middle_block.1.proj_in.weight" in header:
        return "UNetMidBlock2DCrossAttn", _depth(keys, "middle_block")
    resnets = _count(keys, f"{UNET}middle_block.")
    if resnets > 1:
        raise ShapeMismatch(f"the middle block has {resnets} resnets and no attention; diffusers builds one")
    return ("UNetMidBlock2D" if resnets == 1 else None), None


def unet_variant(config: dict[str, Any], header: dict) -> str:
    """The known model this UNet's shape is ("SSD-1B", "SDXL 1.0 base inpainting", ...), else a description."""
    keys = [k for k in header if k.startswith(UNET)]
    levels = _input_levels(header, keys)
    depths = tuple(_depth(keys, f"input_blocks.{i}") for level in levels for i in level)
    mid = _depth(keys, "middle_block") if config["mid_block_type"] == "UNetMidBlock2DCrossAttn" else None
    name = KNOWN_UNETS.get((depths, mid))
    if name is None:
        name = f"SDXL-family UNet (transformer depths {list(depths)}, middle {mid if mid is not None else 'none'})"
    return name + (" inpainting" if config["in_channels"] == 9 else "")


# --- VAE and text encoders ---------------------------------------------------------------------------


def infer_vae_config(header: dict, skeleton: dict[str, Any]) -> dict[str, Any]:
    keys = [k for k in header if k.startswith(VAE)]
    hints = shape_hints(header).get("vae", {})
    levels = _count(keys, f"{VAE}encoder.down.")
    if levels == 0 or _shape(header, f"{VAE}encoder.conv_out.weight") is None:
        raise ShapeMismatch("the VAE has no encoder levels")
    channels = [_shape(header, f"{VAE}encoder.down.{i}.block.0.conv2.weight")[0] for i in range(levels)]
    return skeleton | {
        "block_out_channels": channels,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "layers_per_block": _count(keys, f"{VAE}encoder.down.0.block."),
        "latent_channels": _shape(header, f"{VAE}encoder.conv_out.weight")[0] // 2,
        "mid_block_add_attention": f"{VAE}encoder.mid.attn_1.q.weight" in header,
        "use_quant_conv": f"{VAE}quant_conv.weight" in header,
        "use_post_quant_conv": f"{VAE}post_quant_conv.weight" in header,
        "norm_num_groups": hints.get("norm_num_groups", NORM_GROUPS),
        "sample_size": hints.get("sample_size", skeleton.get("sample_size", 1024)),
    }


def _text_config(skeleton: dict[str, Any], heads: int | None, **shapes: Any) -> dict[str, Any]:
    hidden = shapes["hidden_size"]
    return skeleton | shapes | {"num_attention_heads": heads or max(1, hidden // HEAD_WIDTH)}


def infer_clip_l_config(header: dict, skeleton: dict[str, Any]) -> dict[str, Any]:
    keys = [k for k in header if k.startswith(CLIP_L)]
    vocab, hidden = _shape(header, f"{CLIP_L}embeddings.token_embedding.weight")
    return _text_config(
        skeleton,
        shape_hints(header).get("text_encoder", {}).get("num_attention_heads"),
        hidden_size=hidden,
        vocab_size=vocab,
        max_position_embeddings=_shape(header, f"{CLIP_L}embeddings.position_embedding.weight")[0],
        num_hidden_layers=_count(keys, f"{CLIP_L}encoder.layers."),
        intermediate_size=_shape(header, f"{CLIP_L}encoder.layers.0.mlp.fc1.weight")[0],
    )


def infer_bigg_config(header: dict, kind: str, skeleton: dict[str, Any]) -> dict[str, Any]:
    prefix = BIGG[kind]
    keys = [k for k in header if k.startswith(prefix)]
    vocab, hidden = _shape(header, f"{prefix}token_embedding.weight")
    return _text_config(
        skeleton,
        shape_hints(header).get("text_encoder_2", {}).get("num_attention_heads"),
        hidden_size=hidden,
        vocab_size=vocab,
        max_position_embeddings=_shape(header, f"{prefix}positional_embedding")[0],
        num_hidden_layers=_count(keys, f"{prefix}transformer.resblocks."),
        intermediate_size=_shape(header, f"{prefix}transformer.resblocks.0.mlp.c_fc.weight")[0],
        projection_dim=_shape(header, f"{prefix}text_projection")[1],
    )


def hints_for_folder(configs: dict[str, dict[str, Any]]) -> str:
    """The `atelier.shape_hints` metadata for a folder's component configs (what shapes cannot show)."""
    unet, vae = configs["unet"], configs["vae"]
    hints: dict[str, Any] = {
        "unet": {
            "attention_head_dim": unet.get("num_attention_heads") or unet["attention_head_dim"],
            "norm_num_groups": unet["norm_num_groups"],
            "sample_size": unet["sample_size"],
        },
        "vae": {"norm_num_groups": vae["norm_num_groups"], "sample_size": vae["sample_size"]},
    }
    for name in ("text_encoder", "text_encoder_2"):
        if name in configs:
            hints[name] = {"num_attention_heads": configs[name]["num_attention_heads"]}
    return json.dumps(hints, sort_keys=True)
