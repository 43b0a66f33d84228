"""LoRAs: found in the models folder by name, checked by header, applied to the base for one run.

A LoRA is applied only around the base model's work (prompt encoding and denoising) and unloaded
afterwards, so the refiner, which shares `text_encoder_2`, never sees it, and the next plain run
equals the baseline bit-exactly. File contents are read once and cached by sha256; the adapters are
named after the sha256, so the prompt-encoding cache (keyed by adapter state) cannot mix two files
that share a name.

diffusers loads a file whose keys it does not recognise as *nothing*, silently, and loads only the
matching part of a file made for another architecture. Both are detected here by counting the
layers the adapter really reached.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pipelines.model_files import HashCache, ModelsFolder, find_models_root, read_safetensors_header
from pipelines.prompt_syntax import extract_lora_tokens
from pipelines.recipe import LoraRef, Recipe

KOHYA_PREFIXES = ("lora_unet_", "lora_te1_", "lora_te2_", "lora_te_")
DIFFUSERS_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.")
# One of these per adapted layer: the count of layers a file means to change.
DOWN_SUFFIXES = ("lora_down.weight", "lora_A.weight", "lora.down.weight", "lora_linear_layer.down.weight")
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
CACHED_FILES = 8


@dataclass(frozen=True)
class LoraFile:
    name: str  # relative to the LoRA folder, without ".safetensors"
    path: Path
    format: str  # "kohya" or "diffusers" (peft)
    layers: int  # adapted layers the file describes


def lora_format(path: Path, header: dict) -> tuple[str, int]:
    """("kohya" | "diffusers", layer count) from tensor names; ValueError naming the file otherwise."""
    names = [k for k in header if k != "__metadata__"]
    layers = sum(1 for k in names if k.endswith(DOWN_SUFFIXES))
    if names and layers and all(k.startswith(KOHYA_PREFIXES) for k in names):
        return "kohya", layers
    if names and layers and all(k.startswith(DIFFUSERS_PREFIXES) for k in names):
        return "diffusers", layers
    sample = ", ".join(names[:3]) or "no tensors"
    raise ValueError(
        f"{path}: not a LoRA in a format Atelier knows (kohya 'lora_unet_…lora_down/lora_up' or diffusers/peft "
        f"'unet.…lora_A/lora_B'); its tensors are named like: {sample}"
    )


def merge_prompt_loras(recipe: Recipe) -> Recipe:
    """Add the prompt's `<lora:name:w>` tokens to `recipe.loras`.

    An entry already in `recipe.loras` wins over a token of the same name, so a re-run of a recipe
    (whose prompt still holds the tokens) gets each LoRA once, at its recorded weight.
    """
    _, tokens = extract_lora_tokens(recipe.prompt)
    known = {ref.name for ref in recipe.loras}
    added: list[LoraRef] = []
    for name, weight in tokens:
        if name in known:
            continue
        if any(ref.name == name for ref in added):
            raise ValueError(f"prompt: the LoRA {name!r} appears twice; give each LoRA once")
        added.append(LoraRef(name=name, weight=weight))
    return recipe.replace(loras=recipe.loras + tuple(added)) if added else recipe


class LoraLibrary:
    """The LoRA folder of the models folder ($ATELIER_MODELS, else <home>/models), and loaded files."""

    def __init__(self, home: Path, hashes: HashCache | None = None, models_root: Path | str | None = None) -> None:
        self.home = Path(home)
        self.hashes = hashes or HashCache(self.home)
        self.models_root = models_root
        self._state_dicts: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.file_reads = 0  # how often a file's tensors were read from disk (the cache saves the rest)

    # -- the folder ------------------------------------------------------------------------------

    def models(self) -> ModelsFolder | None:
        root = find_models_root(self.models_root, os.environ.get("ATELIER_MODELS"), self.home / "models")
        return root if root is not None and root.folder("lora") is not None else None

    def folder(self) -> Path | None:
        models = self.models()
        return models.folder("lora") if models is not None else None

    def available(self) -> list[dict[str, Any]]:
        """Every .safetensors in the LoRA folder: name, path, and format or the reason it is unusable."""
        models = self.models()
        if models is None:
            return []
        found = []
        for name in models.list_models("lora"):
            entry: dict[str, Any] = {"name": name.removesuffix(".safetensors")}
            try:
                path = models.resolve("lora", name)  # a symlink leading outside is listed as unusable
                entry["path"] = str(path)
                entry["format"], entry["layers"] = lora_format(path, read_safetensors_header(path))
            except ValueError as error:
                entry["error"] = str(error)
            found.append(entry)
        return found

    def find(self, name: str) -> LoraFile:
        models = self.models()
        if models is None:
            raise ValueError(
                f"LoRA {name!r}: no LoRA folder found; put LoRA .safetensors files in {self.home / 'models' / 'Lora'} "
                "(A1111 layout) or models/loras (ComfyUI layout), or set ATELIER_MODELS to your models folder"
            )
        path = models.resolve("lora", name)  # refuses '..', absolute paths and symlinks leading out
        if path.is_dir():
            raise ValueError(f"LoRA {name!r}: {path} is a folder; a LoRA is one .safetensors file")
        kind, layers = lora_format(path, read_safetensors_header(path))  # pickles refused by their header
        return LoraFile(name.removesuffix(".safetensors"), path, kind, layers)

    # -- resolving a recipe ------------------------------------------------------------------------

    def resolve(self, recipe: Recipe) -> Recipe:
        """Prompt tokens merged in, every name found in the folder and pinned by sha256 (no model work)."""
        recipe = merge_prompt_loras(recipe)
        resolved = []
        for ref in recipe.loras:
            found = self.find(ref.name)
            sha = self.hashes.sha256(found.path)
            if ref.sha256 and ref.sha256 != sha:
                raise ValueError(
                    f"LoRA {ref.name!r}: {found.path} now has sha256 {sha[:12]}…, but the recipe was made with "
                    f"{ref.sha256[:12]}… — put the original file back"
                )
            resolved.append(LoraRef(name=ref.name, sha256=sha, weight=ref.weight))
        shas = [r.sha256 for r in resolved]
        for ref in resolved:
            if shas.count(ref.sha256) > 1:
                raise ValueError(f"loras: {ref.name!r} is the same file as another LoRA in this recipe; give it once")
        return recipe.replace(loras=tuple(resolved))

    # -- applying --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def applied(self, pipe: Any, loras: tuple[LoraRef, ...]) -> Iterator[None]:
        """The recipe's LoRAs active on `pipe` (the base) inside the block, none after it.

        `loras` must come from `resolve` (sha256 set). A file that fails to load raises ValueError
        naming it, with the pipeline as it was before.
        """
        if not loras:
            yield
            return
        _check_clean(pipe)
        try:
            names = [self._load(pipe, ref) for ref in loras]
            pipe.set_adapters(names, [float(ref.weight) for ref in loras])
            yield
        finally:
            pipe.unload_lora_weights()

    def _load(self, pipe: Any, ref: LoraRef) -> str:
        assert ref.sha256 is not None, "LoRAs must be resolved before they are applied"
        found = self.find(ref.name)
        adapter = f"lora_{ref.sha256[:16]}"
        state = self._state_dict(found.path, ref.sha256)
        try:
            pipe.load_lora_weights(dict(state), adapter_name=adapter)
        except Exception as error:  # diffusers/peft raise OSError, RuntimeError, ValueError and their own types
            raise ValueError(f"{found.path}: could not be applied to this SDXL model as a LoRA ({_reason(error)}); "
                             "is it an SDXL LoRA?") from None
        reached = _adapted_layers(pipe, adapter)
        if reached < found.layers:
            detail = "none" if reached == 0 else f"only {reached}"
            raise ValueError(
                f"{found.path}: {detail} of its {found.layers} LoRA layers match a layer of this model — it was "
                "made for another architecture (an SD 1.5 or SD 2 LoRA?) or is damaged; use an SDXL LoRA"
            )
        return adapter

    def _state_dict(self, path: Path, sha256: str) -> dict[str, Any]:
        cached = self._state_dicts.get(sha256)
        if cached is not None:
            self._state_dicts.move_to_end(sha256)
            return cached
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{path}: could not be read as .safetensors ({error})") from None
        self.file_reads += 1
        self._state_dicts[sha256] = state
        while len(self._state_dicts) > CACHED_FILES:
            self._state_dicts.popitem(last=False)
        return state


def _reason(error: BaseException) -> str:
    """The telling line of a loading error (torch puts "size mismatch for …" on the second line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = next((line for line in lines if "mismatch" in line), lines[0] if lines else type(error).__name__)
    return telling if len(telling) <= 300 else telling[:300] + "…"


def _adapted_layers(pipe: Any, adapter: str) -> int:
    count = 0
    for component in COMPONENTS:
        module = getattr(pipe, component, None)
        if module is None:
            continue
        for sub in module.modules():
            lora_a = getattr(sub, "lora_A", None)
            if lora_a is not None and adapter in lora_a:
                count += 1
    return count


def _check_clean(pipe: Any) -> None:
    """LoRAs are scoped to one run: adapters left over from elsewhere would leak into this one."""
    for component in COMPONENTS:
        module = getattr(pipe, component, None)
        if module is not None and getattr(module, "peft_config", None):
            pipe.unload_lora_weights()
            return
