"""Every model file Atelier can see in the models folder, what it is, its hashes, and why it is unusable.

Judged from headers alone (no tensor is loaded, no torch). Hashes come from the HashCache
(<home>/cache/hashes.json, keyed by path, size and mtime), so a multi-GB checkpoint is hashed once;
with `compute_hashes=False` only hashes already cached are shown.

Hashes as A1111 and Civitai show them: AutoV2 (first 10 hex of the file's sha256) for checkpoints,
AutoV3 (first 12 hex of the sha256 of the tensor data after the header) for LoRAs; the full sha256
(what Recipes record) for every single file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines.models.controlnet_layout import is_original_layout
from pipelines.models.lora import lora_format
from pipelines.models.model_files import (
    MODEL_KINDS,
    HashCache,
    ModelsFolder,
    models_root,
    read_safetensors_header,
    short_autov2,
    short_autov3,
)
from pipelines.models.single_file import describe_single_file

CONTROLNET_DIFFUSERS_KEYS = ("controlnet_cond_embedding.", "controlnet_down_blocks.", "controlnet_mid_block.")


@dataclass(frozen=True)
class ModelEntry:
    kind: str  # checkpoint | refiner | vae | lora | controlnet | upscaler
    name: str  # as Atelier takes it (relative to the kind's folder)
    path: str
    form: str  # "single file" or "diffusers folder"
    variant: str | None  # what the file is: "SSD-1B", "kohya LoRA (12 layers)", ...
    sha256: str | None = None
    autov2: str | None = None
    autov3: str | None = None
    problem: str | None = None  # why it is unusable; None when it is usable

    @property
    def usable(self) -> bool:
        return self.problem is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"usable": self.usable}


def inventory(
    home: Path, models_root_path: Path | str | None = None, *, hashes: HashCache | None = None, compute_hashes=True
) -> tuple[Path | None, list[ModelEntry]]:
    """(models folder, its entries by kind and name); (None, []) when there is no models folder."""
    root = models_root(home, models_root_path)
    if root is None:
        return None, []
    hashes = hashes if hashes is not None else HashCache(home)
    entries = []
    for folder_kind in MODEL_KINDS:
        for name in root.list_models(folder_kind):
            entries.append(_entry(root, folder_kind, name, hashes, compute_hashes))
    return root.root, entries


def _entry(root: ModelsFolder, folder_kind: str, name: str, hashes: HashCache, compute: bool) -> ModelEntry:
    shown = name.removesuffix(".safetensors")
    try:
        path = root.resolve(folder_kind, name)  # a symbolic link leading outside is refused here
    except ValueError as error:
        return ModelEntry(
            folder_kind, shown, str(root.folder(folder_kind) / name), "single file", None, problem=str(error)
        )
    if path.is_dir():
        kind, variant, problem = _folder(folder_kind, path)
        return ModelEntry(kind, shown, str(path), "diffusers folder", variant, problem=problem)
    kind, variant, problem = folder_kind, None, None
    try:
        header = read_safetensors_header(path)  # pickles, corrupt and truncated files: in words
        kind, variant, problem = _describe(folder_kind, path, header)
    except ValueError as error:
        return ModelEntry(kind, shown, str(path), "single file", variant, problem=str(error))
    return ModelEntry(
        kind, shown, str(path), "single file", variant, problem=problem, **_hashes(kind, path, hashes, compute)
    )


def _hashes(kind: str, path: Path, hashes: HashCache, compute: bool) -> dict[str, str | None]:
    sha = hashes.sha256(path) if compute else hashes.cached(path, "sha256")
    found = {"sha256": sha, "autov2": short_autov2(sha) if sha and kind in ("checkpoint", "refiner") else None}
    if kind == "lora":
        v3 = hashes.autov3(path) if compute else hashes.cached(path, "autov3")
        found["autov3"] = short_autov3(v3) if v3 else None
    return found


def _describe(folder_kind: str, path: Path, header: dict) -> tuple[str, str | None, str | None]:
    """(kind, variant, problem) of a single file in the folder for `folder_kind`."""
    if folder_kind == "checkpoint":
        kind, variant = describe_single_file(path, header)
        problem = None
        if variant.endswith("inpainting"):
            problem = (
                "an inpainting checkpoint (9 input channels): for inpainting only (img2img --inpaint-model); "
                "Atelier draws and refines with 4-channel ones"
            )
        return ("refiner" if kind == "refiner" else "checkpoint"), variant, problem
    if folder_kind == "lora":
        form, layers = lora_format(path, header)
        return "lora", f"{form} LoRA ({layers} layers)", None
    if folder_kind == "controlnet":
        if any(k.startswith(CONTROLNET_DIFFUSERS_KEYS) for k in header):
            return "controlnet", "ControlNet (diffusers layout)", None
        if is_original_layout(header):
            return "controlnet", "ControlNet (original A1111 layout, converted on load)", None
        return "controlnet", None, "not a ControlNet in diffusers' or the original layout"
    if folder_kind == "vae":
        return ("vae", *_vae(header))
    return folder_kind, "ESRGAN-family upscaler (spandrel)", None


def _vae(header: dict) -> tuple[str | None, str | None]:
    keys = [k.removeprefix("first_stage_model.") for k in header if k != "__metadata__"]
    for name, marker in (("original layout", "encoder.down.0."), ("diffusers layout", "encoder.down_blocks.0.")):
        if any(k.startswith(marker) for k in keys):
            out = header.get("encoder.conv_out.weight") or header.get("first_stage_model.encoder.conv_out.weight")
            latent = out["shape"][0] // 2 if isinstance(out, dict) else None
            if latent != 4:
                return f"VAE ({name})", f"a {latent}-channel latent VAE; SDXL's VAE has 4 latent channels"
            return f"SDXL-family VAE ({name})", None
    return None, "not a VAE (no encoder.down weights)"


def _unet_in_channels(path: Path) -> int | None:
    try:
        return json.loads((path / "unet" / "config.json").read_text()).get("in_channels")
    except (OSError, ValueError, AttributeError):
        return None


def _folder(folder_kind: str, path: Path) -> tuple[str, str | None, str | None]:
    """(kind, variant, problem) of a diffusers folder."""
    index, config = path / "model_index.json", path / "config.json"
    try:
        if index.is_file():
            data = json.loads(index.read_text())
            refiner = (data.get("text_encoder") or [None])[0] is None
            kind = "refiner" if folder_kind == "checkpoint" and refiner else folder_kind
            variant = f"{data.get('_class_name', 'diffusers pipeline')} folder"
            if _unet_in_channels(path) == 9:
                variant += ", inpainting"
            return kind, variant, None
        data = json.loads(config.read_text())
        return folder_kind, f"{data.get('_class_name', 'diffusers model')} folder", None
    except (OSError, ValueError) as error:
        return folder_kind, None, f"{path}: unreadable config ({error})"
