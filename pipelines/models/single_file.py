"""Single-file SDXL checkpoints (the Civitai/A1111 form): write them, and load them fully offline.

Original key layout (what A1111, ComfyUI and Civitai use):
  model.diffusion_model.*                  UNet (input_blocks / middle_block / output_blocks)
  first_stage_model.*                      VAE (encoder.down.N.block.M ...)
  conditioner.embedders.0.transformer.*    base: CLIP ViT-L (Hugging Face layout)
  conditioner.embedders.1.model.*          base: OpenCLIP ViT-bigG (open_clip layout)
  conditioner.embedders.0.model.*          refiner: OpenCLIP ViT-bigG (its only text encoder)

Loading passes `config=` a local diffusers folder, so diffusers never reaches for the hub: the
folder with the same stem beside the file when there is one (tiny/base.safetensors +
tiny/base/), otherwise one made from the file's own shapes (checkpoint_shapes.py: SDXL 1.0,
SSD-1B, Vega, inpainting, ...) with the shipped SDXL 1.0 skeleton's scheduler and tokenizers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from pipelines.models.checkpoint_shapes import (
    HINTS_KEY,
    ShapeMismatch,
    hints_for_folder,
    infer_bigg_config,
    infer_clip_l_config,
    infer_unet_config,
    infer_vae_config,
    unet_variant,
)
from pipelines.models.model_files import read_safetensors_header

SKELETONS = Path(__file__).resolve().parent / "model_configs"
# Config folders made from files' shapes: content-addressed, so any process may share them.
INFERRED_CONFIGS = Path(tempfile.gettempdir()) / "atelier-inferred-configs"
UNET, VAE = "model.diffusion_model.", "first_stage_model."
CLIP_L = "conditioner.embedders.0.transformer."
BIGG_BASE, BIGG_REFINER = "conditioner.embedders.1.model.", "conditioner.embedders.0.model."

RESNET_NAMES = (  # diffusers -> original, inside UNet resnets
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
VAE_ATTENTION_NAMES = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))
OPENCLIP_NAMES = (  # diffusers -> open_clip, inside a text encoder layer
    ("text_model.encoder.layers.", "transformer.resblocks."),
    (".self_attn.out_proj.", ".attn.out_proj."),
    (".layer_norm1.", ".ln_1."),
    (".layer_norm2.", ".ln_2."),
    (".mlp.fc1.", ".mlp.c_fc."),
    (".mlp.fc2.", ".mlp.c_proj."),
)
OPENCLIP_TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}


# --- diffusers -> original ---------------------------------------------------------------------


def _split(key: str, prefix: str) -> tuple[int, str, int, str]:
    """'down_blocks.1.resnets.0.conv1.weight' -> (1, 'resnets', 0, 'conv1.weight')."""
    block, kind, index, rest = key[len(prefix) :].split(".", 3)
    return int(block), kind, int(index), rest


def _resnet(rest: str) -> str:
    name, tail = rest.split(".", 1)
    return dict(RESNET_NAMES).get(name, name) + "." + tail


def unet_to_original(state: dict, config: dict) -> dict:
    """Rename a diffusers UNet2DConditionModel state dict to the original (sgm) layout."""
    per_block = config["layers_per_block"]
    if not isinstance(per_block, int):
        raise ValueError("only UNets with one layers_per_block value can be written as a single file")
    up_has_attention = ["CrossAttn" in t for t in config["up_block_types"]]
    out = {}
    for key, value in state.items():
        top, _, param = key.rpartition(".")
        if top in UNET_TOP:
            new = f"{UNET_TOP[top]}.{param}"
        elif key.startswith("down_blocks."):
            b, kind, i, rest = _split(key, "down_blocks.")
            first = 1 + b * (per_block + 1)
            if kind == "resnets":
                new = f"input_blocks.{first + i}.0.{_resnet(rest)}"
            elif kind == "attentions":
                new = f"input_blocks.{first + i}.1.{rest}"
            else:  # downsamplers.0.conv.*
                new = f"input_blocks.{first + per_block}.0.op.{rest.removeprefix('conv.')}"
        elif key.startswith("mid_block."):
            kind, i, rest = key[len("mid_block.") :].split(".", 2)
            new = f"middle_block.{2 * int(i)}.{_resnet(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
        elif key.startswith("up_blocks."):
            b, kind, i, rest = _split(key, "up_blocks.")
            first = b * (per_block + 1)
            if kind == "resnets":
                new = f"output_blocks.{first + i}.0.{_resnet(rest)}"
            elif kind == "attentions":
                new = f"output_blocks.{first + i}.1.{rest}"
            else:  # upsamplers.0.conv.*: after the attention when the block has one
                new = f"output_blocks.{first + per_block}.{2 if up_has_attention[b] else 1}.{rest}"
        else:
            raise ValueError(f"UNet weight {key!r} has no place in the original checkpoint layout")
        out[UNET + new] = value
    return out


def vae_to_original(state: dict, config: dict) -> dict:
    """Rename a diffusers AutoencoderKL state dict to the original (ldm) layout."""
    n_up = len(config["up_block_types"])
    out = {}
    for key, value in state.items():
        new = key.replace("conv_norm_out", "norm_out")
        for side in ("encoder", "decoder"):
            if key.startswith(f"{side}.mid_block.resnets."):
                i, rest = key[len(f"{side}.mid_block.resnets.") :].split(".", 1)
                new = f"{side}.mid.block_{int(i) + 1}.{rest}"
            elif key.startswith(f"{side}.mid_block.attentions.0."):
                rest = key[len(f"{side}.mid_block.attentions.0.") :]
                for ours, theirs in VAE_ATTENTION_NAMES:
                    if rest.startswith(ours + "."):
                        rest = theirs + rest[len(ours) :]
                new = f"{side}.mid.attn_1.{rest}"
                if value.ndim == 2:  # original stores these 1x1 projections as convolutions
                    value = value[:, :, None, None]
        if key.startswith(("encoder.down_blocks.", "decoder.up_blocks.")):
            side, _, b, kind, rest = key.split(".", 4)
            b = int(b) if side == "encoder" else n_up - 1 - int(b)  # the decoder counts upwards
            stage = "down" if side == "encoder" else "up"
            if kind == "resnets":
                i, rest = rest.split(".", 1)
                new = f"{side}.{stage}.{b}.block.{i}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
            else:  # downsamplers.0.conv.* / upsamplers.0.conv.*
                new = f"{side}.{stage}.{b}.{'downsample' if side == 'encoder' else 'upsample'}.{rest[2:]}"
        out[VAE + new] = value
    return out


def clip_l_to_original(state: dict) -> dict:
    """CLIP ViT-L keeps the Hugging Face layout under `transformer.text_model.` (transformers 5 saves it flat)."""
    return {CLIP_L + ("" if k.startswith("text_model.") else "text_model.") + k: v for k, v in state.items()}


def openclip_to_original(state: dict, prefix: str) -> dict:
    """CLIPTextModelWithProjection -> open_clip: fused q/k/v, ln_*, c_fc/c_proj, text_projection transposed."""
    import torch

    out, qkv = {}, {}
    for key, value in state.items():
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
            continue
        if key in OPENCLIP_TOP:
            out[prefix + OPENCLIP_TOP[key]] = value
            continue
        for ours, theirs in OPENCLIP_NAMES:
            key = key.replace(ours, theirs)
        for letter in "qkv":
            marker = f".self_attn.{letter}_proj."
            if marker in key:
                layer, param = key.split(marker)
                qkv.setdefault((layer, param), {})[letter] = value
                break
        else:
            if ".self_attn." in key or not key.startswith("transformer.resblocks."):
                raise ValueError(f"text encoder weight {key!r} has no place in the open_clip layout")
            out[prefix + key] = value
    for (layer, param), parts in qkv.items():
        out[f"{prefix}{layer}.attn.in_proj_{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def folder_to_original(folder: Path) -> dict:
    """A diffusers SDXL base or refiner folder's weights as one original-layout state dict."""
    from safetensors.torch import load_file

    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())

    def weights(component: str, name: str) -> tuple[dict, dict]:
        sub = folder / component
        return load_file(sub / name), json.loads((sub / "config.json").read_text())

    unet, unet_config = weights("unet", "diffusion_pytorch_model.safetensors")
    vae, vae_config = weights("vae", "diffusion_pytorch_model.safetensors")
    state = unet_to_original(unet, unet_config) | vae_to_original(vae, vae_config)
    has_clip_l = (index.get("text_encoder") or [None])[0] is not None
    if has_clip_l:
        state |= clip_l_to_original(weights("text_encoder", "model.safetensors")[0])
    bigg = weights("text_encoder_2", "model.safetensors")[0]
    state |= openclip_to_original(bigg, BIGG_BASE if has_clip_l else BIGG_REFINER)
    return state


def write_single_file(folder: Path, dest: Path) -> Path:
    """Write a diffusers SDXL folder as an original-format single .safetensors checkpoint."""
    from safetensors.torch import save_file

    dest = Path(dest)
    if dest.suffix != ".safetensors":
        raise ValueError(f"{dest}: a single-file checkpoint must be written as .safetensors")
    state = {k: v.contiguous() for k, v in folder_to_original(folder).items()}
    configs = {
        c: json.loads((Path(folder) / c / "config.json").read_text())
        for c in ("unet", "vae", "text_encoder", "text_encoder_2")
        if (Path(folder) / c / "config.json").exists()
    }
    tmp = dest.with_name(dest.name + ".partial")
    save_file(state, str(tmp), metadata={"format": "pt", HINTS_KEY: hints_for_folder(configs)})
    tmp.replace(dest)
    return dest


# --- original -> diffusers pipeline (offline) --------------------------------------------------


def detect_kind(path: Path, header: dict | None = None) -> str:
    """ "base" or "refiner" from the tensor names; ValueError (in words) for anything that is not SDXL."""
    header = read_safetensors_header(path) if header is None else header
    keys = [k for k in header if k != "__metadata__"]
    if any(k.startswith(BIGG_BASE) for k in keys) and any(k.startswith(CLIP_L) for k in keys):
        kind = "base"
    elif any(k.startswith(BIGG_REFINER) for k in keys):
        kind = "refiner"
    elif any(k.startswith(("lora_unet_", "lora_te")) or ".lora_down." in k or ".lora_A." in k for k in keys):
        raise ValueError(f"{path}: this is a LoRA, not a checkpoint; load it as a LoRA (models/Lora)")
    elif any(k.startswith(("cond_stage_model.", "control_model.")) for k in keys):
        raise ValueError(
            f"{path}: this is a Stable Diffusion 1.x/2.x or ControlNet file; Atelier loads SDXL checkpoints"
        )
    elif any(k.startswith(("down_blocks.", "encoder.down_blocks.", "decoder.")) for k in keys):
        raise ValueError(f"{path}: this holds a single diffusers component (UNet or VAE), not a whole SDXL checkpoint")
    else:
        raise ValueError(f"{path}: not an SDXL checkpoint (no SDXL text encoder weights found)")
    if not any(k.startswith(UNET) for k in keys) or not any(k.startswith(VAE) for k in keys):
        raise ValueError(f"{path}: incomplete SDXL checkpoint (it has no UNet or no VAE weights)")
    return kind


def config_for(path: Path, kind: str, header: dict | None = None) -> Path:
    """The config folder for a single file: a diffusers folder of the same stem beside it, else one
    made from the file's shapes (ValueError naming what does not fit when diffusers cannot build it)."""
    sidecar = Path(path).with_suffix("")
    if (sidecar / "model_index.json").is_file():
        return sidecar
    header = read_safetensors_header(path) if header is None else header
    return _config_folder(inferred_configs(path, header, kind), kind)


def inferred_configs(path: Path, header: dict, kind: str) -> dict[str, dict]:
    """Component configs (unet, vae, text encoders) read from the file's shapes."""

    def skeleton(component: str) -> dict:
        return json.loads((SKELETONS / f"sdxl_{kind}" / component / "config.json").read_text())

    try:
        te2 = infer_bigg_config(header, kind, skeleton("text_encoder_2"))
        configs = {"text_encoder_2": te2, "vae": infer_vae_config(header, skeleton("vae"))}
        configs["unet"] = infer_unet_config(header, kind, te2["projection_dim"])
        if kind == "base":
            configs["text_encoder"] = infer_clip_l_config(header, skeleton("text_encoder"))
    except ShapeMismatch as error:
        raise ValueError(f"{path}: an SDXL-like {kind} checkpoint that Atelier cannot build: {error}") from None
    except (TypeError, KeyError, IndexError, ValueError):  # a tell-tale weight is missing or malformed
        raise ValueError(
            f"{path}: incomplete SDXL {kind} checkpoint (weights its architecture needs are missing)"
        ) from None
    return configs


def _config_folder(configs: dict[str, dict], kind: str) -> Path:
    """A diffusers config folder: the inferred component configs, the rest linked from the skeleton."""
    skeleton = SKELETONS / f"sdxl_{kind}"
    digest = hashlib.sha256(json.dumps([kind, configs], sort_keys=True).encode()).hexdigest()[:20]
    folder = INFERRED_CONFIGS / f"sdxl_{kind}_{digest}"
    if (folder / "model_index.json").exists():
        return folder
    INFERRED_CONFIGS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=INFERRED_CONFIGS, prefix=".partial-"))
    for child in skeleton.iterdir():
        if child.name in configs:
            (tmp / child.name).mkdir()
            (tmp / child.name / "config.json").write_text(json.dumps(configs[child.name], indent=2, sort_keys=True))
        else:
            (tmp / child.name).symlink_to(child.resolve())
    try:
        os.replace(tmp, folder)
    except OSError:  # another process made the same folder meanwhile: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def describe_single_file(path: Path, header: dict | None = None) -> tuple[str, str]:
    """(kind, variant) of an SDXL-family single file, e.g. ("base", "SSD-1B"); ValueError in words."""
    header = read_safetensors_header(path) if header is None else header
    kind = detect_kind(path, header)
    configs = inferred_configs(path, header, kind)
    return kind, unet_variant(configs["unet"], header)


def _shape(header: dict, key: str) -> list[int] | None:
    info = header.get(key)
    return info.get("shape") if isinstance(info, dict) else None


def check_against_config(path: Path, header: dict, config: Path, kind: str) -> None:
    """Compare a few tell-tale shapes with the config, so a mismatch is named before diffusers runs."""

    def read(component: str) -> dict:
        return json.loads((config / component / "config.json").read_text())

    unet, vae = read("unet"), read("vae")
    checks = [
        ("UNet width", _shape(header, UNET + "input_blocks.0.0.weight"), 0, unet["block_out_channels"][0]),
        (
            "UNet size/crop embedding",
            _shape(header, UNET + "label_emb.0.0.weight"),
            1,
            unet["projection_class_embeddings_input_dim"],
        ),
        ("VAE width", _shape(header, VAE + "encoder.conv_in.weight"), 0, vae["block_out_channels"][0]),
    ]
    cross = next((k for k in header if k.startswith(UNET) and k.endswith("attn2.to_k.weight")), None)
    if cross:
        checks.append(("UNet text-conditioning width", _shape(header, cross), 1, unet["cross_attention_dim"]))
    bigg = BIGG_BASE if kind == "base" else BIGG_REFINER
    checks.append(
        (
            "OpenCLIP text encoder width",
            _shape(header, bigg + "positional_embedding"),
            1,
            read("text_encoder_2")["hidden_size"],
        )
    )
    if kind == "base" and (config / "text_encoder" / "config.json").exists():
        checks.append(
            (
                "CLIP text encoder width",
                _shape(header, CLIP_L + "text_model.embeddings.position_embedding.weight"),
                1,
                read("text_encoder")["hidden_size"],
            )
        )
    for what, shape, dim, expected in checks:
        if shape is None or len(shape) <= dim:
            raise ValueError(f"{path}: does not match the SDXL {kind} config in {config} ({what}: weights missing)")
        if shape[dim] != expected:
            raise ValueError(
                f"{path}: does not match the SDXL {kind} config in {config} "
                f"({what} is {shape[dim]} in the file, the config expects {expected})"
            )


def _translate(path: Path, config: Path, kind: str, error: Exception) -> ValueError:
    text = str(error)
    if "meta tensor" in text or "missing" in text.lower():
        reason = "some weights the architecture needs are not in the file"
    elif "size mismatch" in text or "shape" in text:
        reason = "weight shapes differ from the architecture"
    else:
        reason = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
    try:
        shaped = f" (its UNet is shaped like {describe_single_file(path)[1]})"
    except ValueError:
        shaped = ""
    return ValueError(
        f"{path}: could not be loaded as an SDXL {kind} checkpoint{shaped} with the config in {config} ({reason})"
    )


def inspect_single_file(path: Path, config: Path | None = None) -> tuple[str, Path]:
    """Check a single file without loading it: (kind, config folder); ValueError in words if unusable."""
    path = Path(path)
    header = read_safetensors_header(path)  # refuses pickles, corrupt and truncated files
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: this is a .safetensors file with another suffix; rename it to end in .safetensors")
    kind = detect_kind(path, header)
    config = Path(config) if config is not None else config_for(path, kind, header)
    check_against_config(path, header, config, kind)
    return kind, config


def load_single_file(path: Path, pipeline_class, *, dtype=None, config: Path | None = None, **components):
    """Load an original-format SDXL .safetensors offline into `pipeline_class`.

    `components` (e.g. text_encoder_2=, vae=) are used as given instead of being read from the file.
    Returns (pipe, kind, config folder).
    """
    kind, config = inspect_single_file(path, config)
    unet = json.loads((config / "unet" / "config.json").read_text())
    if unet.get("in_channels", 4) != 4 and "Inpaint" not in pipeline_class.__name__:
        raise ValueError(
            f"{path}: an inpainting checkpoint ({unet['in_channels']} UNet input channels); Atelier draws and "
            "refines with 4-channel SDXL checkpoints, so it cannot be used as a base or refiner"
        )
    try:
        pipe = pipeline_class.from_single_file(
            str(path), config=str(config), local_files_only=True, dtype=dtype, add_watermarker=False, **components
        )
    except (RuntimeError, ValueError, KeyError, OSError, TypeError, AttributeError) as error:
        raise _translate(path, config, kind, error) from error
    for name, module in pipe.components.items():
        if hasattr(module, "parameters") and any(p.is_meta for p in module.parameters()):
            raise _translate(path, config, kind, RuntimeError(f"{name}: meta tensor left after loading"))
    return pipe, kind, config
