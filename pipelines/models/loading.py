"""Model loading, one way: "tiny", a hub repo id, a diffusers folder, a .safetensors file, or a name
found in the models folder. One `ModelCache` owns every loaded model (the only process-wide state).

Every problem a user can cause (missing path, pickle, corrupt or truncated file, checkpoint that does
not match the SDXL architecture, hub model not in the cache while offline) is a ValueError in words,
raised before any generation. The refiner shares the base's `text_encoder_2` and `vae` objects.
"""

from __future__ import annotations

import gc
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.models.model_files import (
    PICKLE_SUFFIXES,
    HashCache,
    ModelNotFound,
    folder_digest,
    hub_offline,
    models_root,
    read_safetensors_header,
)
from pipelines.recipe import ModelRef

DEFAULT_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_REFINER = "stabilityai/stable-diffusion-xl-refiner-1.0"
FP16_FIX_VAE = "madebyollin/sdxl-vae-fp16-fix"
SOURCES = ("tiny", "folder", "single_file", "hub")
SDXL_VAE_CHANNELS = [128, 256, 512, 512]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
DTYPES = {
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
}


@dataclass
class LoadedModel:
    pipe: Any  # StableDiffusionXLPipeline (base) or StableDiffusionXLImg2ImgPipeline (refiner)
    ref: ModelRef
    source: str  # one of SOURCES
    vae_override: str | None = None  # the fp16-fix VAE when it replaced the model's own


@dataclass(frozen=True)
class Location:
    source: str
    path: Path | None = None  # a diffusers folder or a .safetensors file
    repo: str | None = None


def _recorded_name(spec: str, location: Location) -> str:
    """The name a recipe keeps: a path as an absolute path (so re-runs do not depend on the current
    folder); "tiny", hub ids and models-folder names as given (portable between machines)."""
    if location.path is not None and Path(spec).expanduser().exists():
        return str(location.path)
    return spec


def pick_device(device: str | None):
    import torch

    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: must be auto, cpu, cuda, cuda:N or mps (got {device!r})") from None


def pick_dtype(device, dtype: str | None):
    import torch

    if dtype in (None, "", "auto"):
        return torch.float32 if device.type == "cpu" else torch.float16
    name = DTYPES.get(str(dtype).lower())
    if name is None:
        raise ValueError(f"dtype: must be auto, fp16, bf16 or fp32 (got {dtype!r})")
    if name == "float16" and device.type == "cpu":
        raise ValueError("dtype: fp16 is not supported on the CPU; use fp32 or bf16")
    return getattr(torch, name)


def _config_folder(path: Path) -> Path:
    """The folder holding a model's component configs: itself, or a single file's config folder."""
    if path.is_dir():
        return path
    from pipelines.models.single_file import inspect_single_file

    return inspect_single_file(path)[1]


def _check_fits_base(spec: str, config: Path, text_encoder_2) -> None:
    """A refiner reads the base's text_encoder_2: its UNet must take that encoder's widths."""
    unet = json.loads((config / "unet" / "config.json").read_text())
    index = json.loads((config / "model_index.json").read_text())
    pooled = unet.get("projection_class_embeddings_input_dim")
    time_dim = unet.get("addition_time_embed_dim") or 0
    fits = pooled in (5 * time_dim + text_encoder_2.projection_dim, 6 * time_dim + text_encoder_2.projection_dim)
    if (index.get("text_encoder") or [None])[0] is None:
        fits = fits and unet.get("cross_attention_dim") == text_encoder_2.hidden_size
    if not fits:
        raise ValueError(
            f"refiner {spec!r} does not fit the loaded base: its UNet expects other text-encoder widths "
            f"(base text_encoder_2: hidden {text_encoder_2.hidden_size}, projection {text_encoder_2.projection_dim})"
        )


def locate_model(home: Path, spec: str) -> Location:
    """Where a model spec points ('tiny', a hub id, a diffusers folder, a single file, a name in the models
    folder), checked on disk without importing torch: the CLI refuses a wrong --model with it at once."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"model: must be 'tiny', a hub id, a diffusers folder or a .safetensors file (got {spec!r})")
    spec = spec.strip()
    if spec == "tiny":
        return Location("tiny")
    path = Path(spec).expanduser()
    if path.exists():
        return _local_model(path)
    looks_like_path = spec.startswith((".", "/", "~", "\\")) or Path(spec).suffix.lower() in (
        ".safetensors",
        *PICKLE_SUFFIXES,
    )
    root = models_root(home)
    if root is not None and root.folder("checkpoint") is not None and not path.is_absolute():
        try:
            return _local_model(root.resolve_checkpoint(spec))
        except ModelNotFound:
            pass  # not a name there: maybe a hub id
    if looks_like_path:
        raise ValueError(f"model file or folder not found: {spec}")
    if HUB_ID.match(spec):
        return Location("hub", repo=spec)
    where = f", or a name in {root.root}" if root is not None else ""
    raise ValueError(
        f"model {spec!r} not found: give 'tiny', a hub repo id (owner/name), a diffusers folder, "
        f"a .safetensors file{where}"
    )


def _local_model(path: Path) -> Location:
    path = path.resolve()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ValueError(f"{path}: a folder, but not a diffusers model (it has no model_index.json)")
        return Location("folder", path)
    from pipelines.models.single_file import inspect_single_file

    inspect_single_file(path)  # pickles, corrupt or truncated files, mismatched checkpoints: in words
    return Location("single_file", path)


class ModelCache:
    """Loads models by spec and keeps them; the same spec twice gives the same objects.

    Holds one base at a time (with the refiners that share its modules): loading another base
    drops the previous one first, so two SDXL models never sit in memory together.
    """

    def __init__(
        self,
        home: Path,
        device: str | None = None,
        dtype: str | None = None,
        cpu_offload: bool = False,
        vae_tiling: bool = False,
    ):
        self.home = Path(home)
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.cpu_offload = cpu_offload
        self.vae_tiling = vae_tiling
        self.hashes = HashCache(self.home)
        self._base: tuple[str, LoadedModel] | None = None
        self._refiners: dict[str, LoadedModel] = {}
        self._inpainters: dict[str, LoadedModel] = {}
        self._fp16_vae = None

    # --- public ---------------------------------------------------------------------------

    def load_base(self, spec: str) -> LoadedModel:
        if self._base is not None and self._base[0] == spec:
            return self._base[1]
        location = self.resolve(spec, "base")
        self.release()
        from diffusers import StableDiffusionXLPipeline

        loaded = self._load(spec, location, StableDiffusionXLPipeline, {})
        self._base = (spec, loaded)
        return loaded

    def load_refiner(self, spec: str, base: LoadedModel) -> LoadedModel:
        if self._base is None or self._base[1] is not base:
            raise ValueError("load_refiner: the base must be the one this cache loaded last (load_base first)")
        if spec in self._refiners:
            return self._refiners[spec]
        location = self.resolve(spec, "refiner")
        from diffusers import StableDiffusionXLImg2ImgPipeline

        if location == self.resolve(self._base[0], "base"):
            # Refining with the base model itself: an img2img view of the same modules, no copy.
            # dtype must be given: from_pipe otherwise casts the shared modules to float32.
            pipe = StableDiffusionXLImg2ImgPipeline.from_pipe(base.pipe, dtype=base.pipe.dtype, add_watermarker=False)
            loaded = LoadedModel(pipe, base.ref, base.source, base.vae_override)
        else:
            shared = {"text_encoder_2": base.pipe.text_encoder_2, "vae": base.pipe.vae}
            loaded = self._load(spec, location, StableDiffusionXLImg2ImgPipeline, shared)
            loaded.vae_override = base.vae_override
        self._refiners[spec] = loaded
        return loaded

    def load_inpaint(self, spec: str, base: LoadedModel) -> LoadedModel:
        """A dedicated inpainting checkpoint (9-channel UNet) as a StableDiffusionXLInpaintPipeline that
        shares the base's text encoders and VAE: only its UNet is read from the file or folder."""
        if self._base is None or self._base[1] is not base:
            raise ValueError("load_inpaint: the base must be the one this cache loaded last (load_base first)")
        if spec in self._inpainters:
            return self._inpainters[spec]
        location = self.resolve(spec, "inpaint")
        path = self._hub_folder(location.repo)[0] if location.source == "hub" else location.path
        config = _config_folder(path)
        channels = json.loads((config / "unet" / "config.json").read_text()).get("in_channels")
        if channels != 9:
            raise ValueError(
                f"inpaint_model: {spec!r} has a UNet with {channels} input channels; an inpainting checkpoint "
                "has 9 (image latent + mask + masked-image latent) — give one, or leave inpaint_model unset"
            )
        from diffusers import StableDiffusionXLInpaintPipeline

        names = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")
        shared = {name: getattr(base.pipe, name) for name in names}
        loaded = self._load(spec, location, StableDiffusionXLInpaintPipeline, shared)
        loaded.vae_override = base.vae_override
        self._inpainters[spec] = loaded
        return loaded

    def release(self) -> None:
        """Drop every model, collect garbage and empty the accelerator cache (also after out-of-memory)."""
        import torch

        self._base, self._refiners, self._inpainters, self._fp16_vae = None, {}, {}, None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        mps = getattr(torch, "mps", None)
        if mps is not None and torch.backends.mps.is_available():
            mps.empty_cache()

    # --- spec -> location ---------------------------------------------------------------------

    def resolve(self, spec: str, role: str) -> Location:
        """Where a spec points, checked on disk (no model work); 'tiny' is written on first use."""
        if isinstance(spec, str) and spec.strip() == "tiny":
            return Location("tiny", self._tiny_dir() / role)
        return locate_model(self.home, spec)

    def _tiny_dir(self) -> Path:
        from pipelines.models.tiny_model import write_tiny_model

        directory = self.home / "models" / "tiny"
        write_tiny_model(directory)
        return directory

    # --- loading ------------------------------------------------------------------------------

    def _load(self, spec: str, location: Location, pipeline_class, shared: dict) -> LoadedModel:
        revision = None
        path = location.path
        if location.source == "hub":
            path, revision = self._hub_folder(location.repo)
        if shared:
            _check_fits_base(spec, _config_folder(path), shared["text_encoder_2"].config)
        components = dict(shared)
        vae_override = None
        if location.source != "tiny" and "vae" not in components:
            vae = self._fp16_fix_vae(path)
            if vae is not None:
                components["vae"], vae_override = vae, FP16_FIX_VAE
        if location.source == "single_file":
            from pipelines.models.single_file import load_single_file

            pipe = load_single_file(path, pipeline_class, dtype=self.dtype, **components)[0]
            ref = ModelRef(_recorded_name(spec, location), sha256=self.hashes.sha256(path))
        else:
            variant = self._variant(path)
            pipe = self._from_folder(path, pipeline_class, variant, components)
            ref = ModelRef(
                _recorded_name(spec, location), sha256=folder_digest(path, self.hashes, variant), revision=revision
            )
        self._place(pipe)
        return LoadedModel(pipe, ref, location.source, vae_override)

    def _from_folder(self, folder: Path, pipeline_class, variant: str | None, components: dict):
        from pipelines.models.model_files import folder_weight_files

        index = json.loads((folder / "model_index.json").read_text())
        for name, value in index.items():
            if name.startswith("_") or name in components or not isinstance(value, list) or value[0] is None:
                continue
            sub = folder / name
            if (
                value[0] in ("diffusers", "transformers")
                and (sub / "config.json").exists()
                and not list(sub.glob("*.safetensors"))
            ):
                found = sorted(p.name for p in sub.iterdir() if p.suffix in PICKLE_SUFFIXES)
                detail = f" (only pickle weights: {', '.join(found)}; refused)" if found else ""
                raise ValueError(f"{sub}: no .safetensors weights{detail}")
        for weight in folder_weight_files(folder, variant):
            read_safetensors_header(weight)
        try:
            return pipeline_class.from_pretrained(
                str(folder),
                dtype=self.dtype,
                variant=variant,
                use_safetensors=True,
                local_files_only=True,
                add_watermarker=False,
                **components,
            )
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"{folder}: could not be loaded as an SDXL pipeline ({first})") from error

    def _variant(self, folder: Path) -> str | None:
        """fp16 weight files when the device computes in fp16 and the folder has them (or has only them)."""
        import torch

        unet = folder / "unet"
        has_plain = any(len(f.name.split(".")) == 2 for f in unet.glob("*.safetensors"))
        has_fp16 = any(".fp16." in f.name for f in unet.glob("*.safetensors"))
        if has_fp16 and (self.dtype == torch.float16 or not has_plain):
            return "fp16"
        return None

    def _hub_folder(self, repo: str) -> tuple[Path, str | None]:
        """The local snapshot folder of a hub repo (downloaded unless HF_HUB_OFFLINE=1) and its commit."""
        import huggingface_hub

        offline = hub_offline()
        cache_dir = os.environ.get("HF_HUB_CACHE") or None
        try:
            if offline:
                folder = huggingface_hub.snapshot_download(repo, local_files_only=True, cache_dir=cache_dir)
            else:
                from diffusers import DiffusionPipeline

                variant = "fp16" if self.dtype.itemsize == 2 else None
                folder = DiffusionPipeline.download(repo, variant=variant, use_safetensors=True, cache_dir=cache_dir)
        except Exception as error:  # hub errors have many types; all mean "not available"
            if offline:
                raise ValueError(
                    f"{repo} is not in the Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it: "
                    "download it once while online, or give a local diffusers folder or .safetensors file"
                ) from error
            raise ValueError(f"{repo}: could not be fetched from the Hugging Face hub ({error})") from error
        folder = Path(folder)
        if not (folder / "model_index.json").is_file():
            raise ValueError(f"{repo}: not a diffusers pipeline repository (no model_index.json)")
        revision = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else None
        return folder, revision

    def _fp16_fix_vae(self, path: Path):
        """On CUDA fp16, the fp16-fix VAE when it is in the hub cache and the model has the SDXL VAE."""
        import torch

        if self.device.type != "cuda" or self.dtype != torch.float16:
            return None
        vae_config = _config_folder(path) / "vae" / "config.json"
        if json.loads(vae_config.read_text()).get("block_out_channels") != SDXL_VAE_CHANNELS:
            return None
        if self._fp16_vae is None:
            try:
                import huggingface_hub
                from diffusers import AutoencoderKL

                folder = huggingface_hub.snapshot_download(FP16_FIX_VAE, local_files_only=True)
                self._fp16_vae = AutoencoderKL.from_pretrained(folder, dtype=self.dtype)
            except Exception:  # not cached: the VAE's force_upcast keeps fp16 decoding correct
                return None
        return self._fp16_vae

    def _place(self, pipe) -> None:
        if self.cpu_offload:  # on the CPU itself the hooks move nothing, but the same code runs (tests use that)
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        if self.vae_tiling:
            pipe.vae.enable_tiling()
