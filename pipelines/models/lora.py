"""LoRAs: found in the models folder by name, checked by header, kept loaded in the base model.

Each file is loaded into the base once, as a peft adapter named after its sha256 (so the prompt-encoding
cache, keyed by adapter state, cannot mix two files that share a name), and stays resident: a run
switches exactly its adapters on with their weights, and every adapter is off outside a run and in
runs without LoRAs (disabled peft layers compute the base layer alone: bit-exact baseline). The
refiner, which shares `text_encoder_2`, therefore never sees them. At most `max_resident` stay loaded
(least recently used ones are deleted); another base model starts afresh. Only weak references to the
modules are kept, so ModelCache.release frees them, adapters included. Code that loads its own adapters
into the same modules must call `unload_all()` first: disabled layers stay disabled for it too.

diffusers loads a file whose keys it does not recognise as *nothing*, silently, and loads only the
matching part of a file made for another architecture. Both are detected here by counting the
layers the adapter really reached.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.models.model_files import (
    HashCache,
    ModelsFolder,
    models_root,
    read_safetensors_header,
    short_autov3,
)
from pipelines.prompt_syntax import merge_prompt_loras as merged_loras
from pipelines.recipe import LoraRef, Recipe

KOHYA_PREFIXES = ("lora_unet_", "lora_te1_", "lora_te2_", "lora_te_")
DIFFUSERS_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.")
# One of these per adapted layer: the count of layers a file means to change.
DOWN_SUFFIXES = ("lora_down.weight", "lora_A.weight", "lora.down.weight", "lora_linear_layer.down.weight")
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
RESIDENT_ADAPTERS = 8  # LoRAs kept loaded in the base (least recently used ones are deleted)


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


def with_prompt_loras(recipe: Recipe) -> Recipe:
    """`recipe.loras` merged with the prompt's `<lora:name:w>` tokens by the one rule of
    `prompt_syntax.merge_prompt_loras` (a token sets its LoRA's weight). A recipe built by the request builder
    already holds the merged list, so this changes nothing for it."""
    merged = merged_loras(recipe.loras, recipe.prompt)
    return recipe if merged == recipe.loras else recipe.replace(loras=merged)


class LoraLibrary:
    """The LoRA folder of the models folder ($ATELIER_MODELS, else <home>/models), and loaded files."""

    def __init__(
        self,
        home: Path,
        hashes: HashCache | None = None,
        models_root: Path | str | None = None,
        max_resident: int = RESIDENT_ADAPTERS,
    ) -> None:
        self.home = Path(home)
        self.hashes = hashes or HashCache(self.home)
        self.models_root = models_root
        self.max_resident = max_resident
        self._resident: OrderedDict[str, None] = OrderedDict()  # adapter names, least recently used first
        self._owner: tuple[weakref.ref, ...] = ()  # the modules they live in (weak: ModelCache.release frees them)
        self.file_reads = 0  # how often a file's tensors were read from disk
        self.adapter_loads = 0  # how often a file was loaded into the base as an adapter

    # -- the folder ------------------------------------------------------------------------------

    def models(self) -> ModelsFolder | None:
        root = models_root(self.home, self.models_root)
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
        recipe = with_prompt_loras(recipe)
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

    # -- A1111 / Civitai hashes -------------------------------------------------------------------

    def autov3_hashes(self, loras: tuple[LoraRef, ...]) -> dict[str, str]:
        """sha256 -> the AutoV3 short hash A1111 writes in "Lora hashes", for the resolved LoRAs whose file
        (found by name) still has that sha256; a LoRA whose file is gone or changed gets none."""
        found = {}
        for ref in loras:
            try:
                path = self.find(ref.name).path
                if ref.sha256 and self.hashes.sha256(path) == ref.sha256:
                    found[ref.sha256] = short_autov3(self.hashes.autov3(path))
            except (ValueError, OSError):
                continue
        return found

    def pin_short_hashes(self, recipe: Recipe, short: tuple[tuple[str, str], ...]) -> tuple[Recipe, set[str]]:
        """An A1111 recipe's LoRAs pinned to the local files whose AutoV3 (or, from older writers, sha256)
        starts with the infotext's short hash: (recipe with local names and full sha256, names pinned).
        The file of the same name is tried first; the rest of the folder is hashed once (cached)."""
        wanted = {name: digest.lower() for name, digest in short if len(digest) >= 10}
        pinned, loras = set(), []
        for ref in recipe.loras:
            match = self._by_short_hash(ref.name, wanted[ref.name]) if ref.name in wanted and not ref.sha256 else None
            if match is None:
                loras.append(ref)
                continue
            local, sha = match
            loras.append(LoraRef(name=local, sha256=sha, weight=ref.weight))
            pinned.add(ref.name)
        return (recipe.replace(loras=tuple(loras)) if pinned else recipe), pinned

    def _by_short_hash(self, name: str, digest: str) -> tuple[str, str] | None:
        entries = [e for e in self.available() if "format" in e]
        entries.sort(key=lambda e: e["name"] != name)  # the file of the same name first
        for entry in entries:
            path = Path(entry["path"])
            if self.hashes.autov3(path).startswith(digest) or self.hashes.sha256(path).startswith(digest):
                return entry["name"], self.hashes.sha256(path)
        return None

    # -- applying --------------------------------------------------------------------------------

    def resident(self) -> list[str]:
        """Adapter names loaded into the base, least recently used first."""
        return list(self._resident)

    @contextlib.contextmanager
    def applied(self, pipe: Any, loras: tuple[LoraRef, ...]) -> Iterator[None]:
        """Exactly the recipe's LoRAs active on `pipe` inside the block; every adapter of `pipe` off after it.

        `loras` must come from `resolve` (sha256 set). Each file is loaded into the base once and stays
        resident under a name made from its sha256; a run only switches adapters on and sets weights.
        With no LoRAs, every adapter on `pipe`'s modules is off (peft's disabled layers skip the LoRA
        branch: bit-exact base output) — how the refiner encodes with the shared `text_encoder_2`.
        A file that fails to load raises ValueError naming it, with the pipeline as it was before.
        """
        try:
            if loras:
                names = self._make_resident(pipe, loras)
                pipe.set_adapters(names, [float(ref.weight) for ref in loras])
                for module in _modules(pipe):  # set_adapters does not switch disabled layers back on
                    _set_enabled(module, bool(_adapter_names(module) & set(names)))
            else:
                for module in _modules(pipe):
                    _set_enabled(module, False)
            yield
        finally:
            for module in _modules(pipe):
                _set_enabled(module, False)

    def unload_all(self) -> None:
        """Remove every adapter from the base these LoRAs were loaded into (if it is still alive)."""
        for ref in self._owner:
            module = ref()
            if module is not None and _has_peft_layers(module):
                _strip(module)
        self._owner, self._resident = (), OrderedDict()

    def _make_resident(self, pipe: Any, loras: tuple[LoraRef, ...]) -> list[str]:
        """Adapter names for `loras`, loading the files not yet resident; on failure, those loaded now are removed."""
        if not self._owner or self._owner[0]() is not pipe.unet:  # another base model: start afresh
            self.unload_all()
            self._owner = tuple(weakref.ref(m) for m in _modules(pipe))
        present = set().union(*(_adapter_names(m) for m in _modules(pipe)))
        for gone in [name for name in self._resident if name not in present]:  # unloaded by someone else
            del self._resident[gone]
        names, loaded_now = [], []
        try:
            for ref in loras:
                assert ref.sha256 is not None, "LoRAs must be resolved before they are applied"
                name = adapter_name(ref.sha256)
                if name not in self._resident:
                    self._load(pipe, ref, name)
                    loaded_now.append(name)
                self._resident[name] = None
                self._resident.move_to_end(name)
                names.append(name)
        except BaseException:
            for name in loaded_now:
                self._resident.pop(name, None)
                _delete_adapter(pipe, name)
            raise
        for old in [n for n in self._resident if n not in names][: max(0, len(self._resident) - self.max_resident)]:
            del self._resident[old]
            _delete_adapter(pipe, old)
        return names

    def _load(self, pipe: Any, ref: LoraRef, adapter: str) -> None:
        assert ref.sha256 is not None
        found = self.find(ref.name)
        state = self._read(found.path, ref.sha256)
        try:
            pipe.load_lora_weights(state, adapter_name=adapter)
        except Exception as error:  # diffusers/peft raise OSError, RuntimeError, ValueError and their own types
            _delete_adapter(pipe, adapter)  # a half-loaded adapter must not stay
            raise ValueError(
                f"{found.path}: could not be applied to this SDXL model as a LoRA ({_reason(error)}); "
                "is it an SDXL LoRA?"
            ) from None
        self.adapter_loads += 1
        reached = _adapted_layers(pipe, adapter)
        if reached < found.layers:
            _delete_adapter(pipe, adapter)
            detail = "none" if reached == 0 else f"only {reached}"
            raise ValueError(
                f"{found.path}: {detail} of its {found.layers} LoRA layers match a layer of this model — it was "
                "made for another architecture (an SD 1.5 or SD 2 LoRA?) or is damaged; use an SDXL LoRA"
            )

    def _read(self, path: Path, sha256: str) -> dict[str, Any]:
        """The file's tensors, from the very bytes that hash to `sha256` (the adapter's name stays true)."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            data = path.read_bytes()
            self.file_reads += 1
            if hashlib.sha256(data).hexdigest() != sha256:
                raise ValueError(
                    f"{path}: changed while it was being used (its sha256 is no longer {sha256[:12]}…); run again"
                )
            return load(data)
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{path}: could not be read as .safetensors ({error})") from None


def adapter_name(sha256: str) -> str:
    return f"lora_{sha256[:16]}"


def _reason(error: BaseException) -> str:
    """The telling line of a loading error (torch puts "size mismatch for …" on the second line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = next((line for line in lines if "mismatch" in line), lines[0] if lines else type(error).__name__)
    return telling if len(telling) <= 300 else telling[:300] + "…"


def _modules(pipe: Any) -> list[Any]:
    """The LoRA-carrying modules of a pipeline (the refiner: its own UNet and the shared text_encoder_2)."""
    return [m for m in (getattr(pipe, c, None) for c in COMPONENTS) if m is not None]


def _tuner_layers(module: Any) -> Iterator[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return (sub for sub in module.modules() if isinstance(sub, BaseTunerLayer))


def _has_peft_layers(module: Any) -> bool:
    return next(_tuner_layers(module), None) is not None or bool(getattr(module, "peft_config", None))


def _adapter_names(module: Any) -> set[str]:
    return set(getattr(module, "peft_config", None) or {})


def _layer_adapters(module: Any) -> set[str]:
    """Adapters held by the module's LoRA layers (normally the same as its peft_config)."""
    return {name for layer in _tuner_layers(module) for name in getattr(layer, "lora_A", {})}


def _set_enabled(module: Any, enabled: bool) -> None:
    for layer in _tuner_layers(module):
        layer.enable_adapters(enabled)


def _adapted_layers(pipe: Any, adapter: str) -> int:
    return sum(1 for m in _modules(pipe) for layer in _tuner_layers(m) if adapter in getattr(layer, "lora_A", {}))


def _delete_adapter(pipe: Any, adapter: str) -> None:
    """Remove one adapter from every module; a module left without adapters loses its LoRA layers too."""
    from diffusers.utils.peft_utils import delete_adapter_layers

    for module in _modules(pipe):
        if adapter not in _adapter_names(module) | _layer_adapters(module):
            continue
        with warnings.catch_warnings():  # peft announces the adapter it activates instead: all are off here anyway
            warnings.simplefilter("ignore")
            delete_adapter_layers(module, adapter)
        config = getattr(module, "peft_config", None)
        if config is not None:
            config.pop(adapter, None)
        if not _adapter_names(module) | _layer_adapters(module):
            _strip(module)


def _strip(module: Any) -> None:
    """All LoRA layers out of one module, as `unload_lora_weights` does for each component."""
    from diffusers.utils import recurse_remove_peft_layers

    recurse_remove_peft_layers(module)
    if hasattr(module, "peft_config"):
        del module.peft_config
    if hasattr(module, "_hf_peft_config_loaded"):
        module._hf_peft_config_loaded = None
