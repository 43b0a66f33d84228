"""SDXL ControlNets: loaded from a folder, a single .safetensors file, a hub id or a name in the models
folder, and pipelines derived from the base with `from_pipe` (every base module shared, no copy).

A single file in diffusers' key layout (the common `diffusers_xl_*.safetensors` form) or in the
original A1111 layout (`control_model.input_hint_block…`, converted on load: controlnet_layout.py)
is loaded offline with the architecture taken from the base UNet, as `ControlNetModel.from_unet`
builds it; a file that does not fit that architecture is refused in words (put it in a folder with
its config.json instead).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pipelines.models.controlnet_layout import is_original_layout, read_original
from pipelines.models.model_files import (
    PICKLE_SUFFIXES,
    HashCache,
    ModelNotFound,
    hub_offline,
    models_root,
    read_safetensors_header,
)
from pipelines.recipe import ControlUnit, ModelRef

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
DIFFUSERS_KEYS = ("controlnet_cond_embedding.", "controlnet_down_blocks.", "controlnet_mid_block.")


class ControlNetLibrary:
    """Loaded ControlNets, keyed by spec and checked against the sha256 a recipe records."""

    def __init__(self, home: Path, hashes: HashCache | None = None, models_root: Path | str | None = None) -> None:
        self.home = Path(home)
        self.hashes = hashes or HashCache(self.home)
        self.models_root = models_root
        self._loaded: dict[tuple[str, int], tuple[Any, ModelRef]] = {}

    def folder(self) -> Path | None:
        root = models_root(self.home, self.models_root)
        return root.folder("controlnet") if root is not None else None

    def available(self) -> list[dict[str, Any]]:
        root = models_root(self.home, self.models_root)
        if root is None or root.folder("controlnet") is None:
            return []
        return [
            {"name": n.removesuffix(".safetensors"), "path": str(root.resolve("controlnet", n))}
            for n in root.list_models("controlnet")
        ]

    def locate(self, spec: str) -> tuple[str, Path | str]:
        """("folder" | "single_file", path) or ("hub", repo id), checked on disk; no model work."""
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(f"controlnet: must be a folder, a .safetensors file, a hub id or a name (got {spec!r})")
        path = Path(spec).expanduser()
        if not path.exists():
            root = models_root(self.home, self.models_root)
            if root is not None and root.folder("controlnet") is not None and not path.is_absolute():
                try:
                    path = root.resolve("controlnet", spec)  # refuses names reaching outside the folder
                except ModelNotFound:
                    if not HUB_ID.match(spec):
                        raise
        if path.is_dir():
            weights = _folder_weights(path)
            return "folder", weights.parent
        if path.is_file():
            header = read_safetensors_header(path)  # pickles and corrupt files refused here
            if not any(k.startswith(DIFFUSERS_KEYS) for k in header) and not is_original_layout(header):
                raise ValueError(
                    f"{path}: not an SDXL ControlNet in diffusers' layout (no controlnet_cond_embedding/"
                    "controlnet_down_blocks tensors) nor in the original A1111 layout (no control_model."
                    "input_hint_block/zero_convs tensors); put the model in a folder with its config.json"
                )
            return "single_file", path
        if HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
            return "hub", spec
        raise ValueError(
            f"controlnet {spec!r} not found: give a folder, a .safetensors file, a hub id, or a name in "
            f"{self.folder() or self.home / 'models' / 'ControlNet'}"
        )

    def load(self, wanted: ModelRef, unet: Any, device: Any, dtype: Any) -> tuple[Any, ModelRef]:
        """The ControlNet a unit names, on the base's device and dtype, with its identity (sha256)."""
        key = (wanted.name, id(unet))
        if key not in self._loaded:
            kind, where = self.locate(wanted.name)
            if kind == "hub":
                where = _hub_folder(str(where))
                kind = "folder"
            if kind == "folder":
                model = _from_folder(Path(where), dtype)
                sha = self.hashes.sha256(_folder_weights(Path(where)))
            else:
                model = _from_single_file(Path(where), unet, dtype)
                sha = self.hashes.sha256(Path(where))
            model.to(device)
            self._loaded[key] = (model, ModelRef(wanted.name, sha256=sha))
        model, ref = self._loaded[key]
        if wanted.sha256 and wanted.sha256 != ref.sha256:
            raise ValueError(
                f"controlnet {wanted.name!r}: now has sha256 {ref.sha256[:12]}…, but the recipe was made "
                f"with {wanted.sha256[:12]}… — put the original weights back"
            )
        return model, ref

    def clear(self) -> None:
        self._loaded.clear()


def combined(models: list[Any]) -> Any:
    """One ControlNet as itself, several as diffusers' MultiControlNetModel (same module objects)."""
    if len(models) == 1:
        return models[0]
    from diffusers.models import MultiControlNetModel

    return MultiControlNetModel(models)


def control_kwargs(units: tuple[ControlUnit, ...], maps: list[Any]) -> dict[str, Any]:
    """The per-unit scale and start/end of a recipe as diffusers' ControlNet pipeline arguments."""
    if len(maps) != len(units):
        raise ValueError(f"controlnets: the recipe has {len(units)} unit(s) but {len(maps)} control map(s) were given")
    one = len(units) == 1
    pick = (lambda values: values[0]) if one else list
    return {
        "controlnet_conditioning_scale": pick([float(u.scale) for u in units]),
        "control_guidance_start": pick([float(u.start) for u in units]),
        "control_guidance_end": pick([float(u.end) for u in units]),
        "_maps": maps[0] if one else list(maps),
    }


def _folder_weights(folder: Path) -> Path:
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
        if (folder / name).is_file():
            if not (folder / "config.json").is_file():
                raise ValueError(f"{folder}: a ControlNet folder needs its config.json")
            read_safetensors_header(folder / name)
            return folder / name
    pickles = sorted(p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES)
    detail = f" (only pickle weights: {', '.join(pickles)}; refused)" if pickles else ""
    raise ValueError(f"{folder}: no ControlNet .safetensors weights (diffusion_pytorch_model.safetensors){detail}")


def _from_folder(folder: Path, dtype: Any) -> Any:
    from diffusers import ControlNetModel

    weights = _folder_weights(folder)
    variant = "fp16" if ".fp16." in weights.name else None
    try:
        return ControlNetModel.from_pretrained(
            str(folder), dtype=dtype, variant=variant, use_safetensors=True, local_files_only=True
        )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        raise ValueError(f"{folder}: could not be loaded as a ControlNet ({_first_line(error)})") from error


def _from_single_file(path: Path, unet: Any, dtype: Any) -> Any:
    import torch
    from diffusers import ControlNetModel
    from safetensors.torch import load_file

    with torch.device("meta"):
        model = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
    original = is_original_layout(read_safetensors_header(path))
    state = read_original(path, model.state_dict(), dict(model.config)) if original else load_file(str(path))
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise ValueError(
            f"{path}: does not fit this base model's ControlNet architecture ({_first_line(error)}); "
            "is it an SDXL ControlNet? A differently sized one needs a folder with its config.json"
        ) from None
    return model.to(dtype=dtype).eval()


def _hub_folder(repo: str) -> Path:
    import huggingface_hub

    offline = hub_offline()
    try:
        folder = huggingface_hub.snapshot_download(
            repo, local_files_only=offline, allow_patterns=["config.json", "*.safetensors"]
        )
    except Exception as error:  # hub errors have many types; all mean "not available"
        if offline:
            raise ValueError(
                f"controlnet {repo} is not in the Hugging Face cache and HF_HUB_OFFLINE=1 forbids "
                "downloading it: download it once while online, or give a local folder"
            ) from error
        raise ValueError(f"controlnet {repo}: could not be fetched from the Hugging Face hub ({error})") from error
    return Path(folder)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
