"""TAESD-XL, the tiny SDXL latent decoder used for cheap draft previews, found in `<models>/VAE-approx`.

A1111 keeps it in `models/VAE-approx`, ComfyUI in `models/vae_approx`. Accepted (safetensors only, never
a pickle): a diffusers folder (`config.json` + `diffusion_pytorch_model.safetensors`, e.g. madebyollin/taesdxl)
or a single `.safetensors` file whose name contains "taesdxl": either a whole AutoencoderTiny state dict
(`decoder.layers.*` keys) or the original decoder-only file (`taesdxl_decoder.safetensors`, keys `1.weight`,
…, one index above diffusers' because the original's first layer is its clamp). TAESD for SD 1.x
(`taesd_decoder`) decodes another latent space and is never picked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.models.model_files import models_root

APPROX_FOLDERS = ("VAE-approx", "vae_approx")
NAME_MARK = "taesdxl"


def find_taesd_xl(home: Path) -> Path | None:
    """The TAESD-XL weights (a folder or a file) in the models folder's VAE-approx, or None."""
    root = models_root(home)
    if root is None:
        return None
    wanted = {name.lower() for name in APPROX_FOLDERS}
    folders = [child for child in sorted(root.root.iterdir()) if child.is_dir() and child.name.lower() in wanted]
    for folder in folders:
        for candidate in sorted(folder.iterdir()):
            if NAME_MARK not in candidate.name.lower():
                continue
            if candidate.is_dir() and (candidate / "diffusion_pytorch_model.safetensors").is_file():
                return candidate
            if candidate.is_file() and candidate.suffix == ".safetensors":
                return candidate
    return None


def load_taesd_xl(path: Path, device: Any, dtype: Any) -> Any:
    """An AutoencoderTiny with the weights at `path` (see the module text), in eval mode on `device`."""
    from diffusers import AutoencoderTiny
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        return AutoencoderTiny.from_pretrained(path, torch_dtype=dtype).to(device).eval()
    state = load_file(path)
    if not any(key.startswith("decoder.") for key in state):
        state = {_decoder_key(key, path): value for key, value in state.items()}
    model = AutoencoderTiny()  # TAESD-XL's own architecture is diffusers' default
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing_decoder = [key for key in missing if key.startswith("decoder.")]
    if missing_decoder or unexpected:
        raise ValueError(
            f"{path.name}: not a TAESD-XL decoder (missing {missing_decoder[:3]}, unexpected {unexpected[:3]})"
        )
    return model.to(device=device, dtype=dtype).eval()


def _decoder_key(key: str, path: Path) -> str:
    index, _, rest = key.partition(".")
    if not index.isdigit() or int(index) < 1:
        raise ValueError(f"{path.name}: unexpected key {key!r} for a TAESD-XL decoder file")
    return f"decoder.layers.{int(index) - 1}.{rest}"
