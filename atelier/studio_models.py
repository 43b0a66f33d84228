"""The Studio's model lists (LoRAs, ControlNets, preprocessors, upscalers), split from atelier/studio.py.

Before the engine exists these use light libraries of their own for the home (no torch), so a command
can list or check a folder — or refuse a bad request — without loading the engine; once it exists,
they ask the engine's own libraries (which share its hash cache).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.recipe import Recipe


class ModelLists:
    """Mixed into Studio: needs `self.home`, `self._engine` (None until made) and `self.engine`."""

    home: Path
    _engine: Any

    def loras(self) -> list[dict[str, Any]]:
        """Every LoRA file in the models folder: name, and format or why it is unusable (read afresh)."""
        return self._lora_library().available()

    def lora_folder(self) -> Path | None:
        return self._lora_library().folder()

    def controlnets(self) -> list[dict[str, Any]]:
        return self._controlnet_library().available()

    def controlnet_choices(self) -> list[str]:
        """ControlNets a web user may pick: the models folder's, then hub ids already in the HF cache."""
        from atelier.model_lists import cached_hub_controlnets

        names = [row["name"] for row in self.controlnets()]
        return names + [repo for repo in cached_hub_controlnets() if repo not in names]

    def inpaint_model_choices(self) -> list[str]:
        """Dedicated inpainting checkpoints (9 input channels) in the models folder, read from their headers."""
        from pipelines.models.inventory import inventory

        _root, entries = inventory(self.home, compute_hashes=False)
        return [e.name for e in entries if e.kind == "checkpoint" and (e.variant or "").endswith("inpainting")]

    def controlnet_folder(self) -> Path | None:
        return self._controlnet_library().folder()

    def _controlnet_library(self):
        """The engine's ControlNet library, or (before any model work: no torch) one for this home."""
        from pipelines.models.controlnet import ControlNetLibrary

        return self._engine.controlnets if self._engine is not None else ControlNetLibrary(self.home)

    def annotators_folder(self) -> Path | None:
        folder = self.controlnet_folder()
        return folder.parent / "annotators" if folder is not None else None

    def preprocessors(self) -> list[dict[str, Any]]:
        """Every preprocessor: name, whether it can run here, and what to download where if not."""
        from pipelines.models.preprocessors import available

        return available(self.annotators_folder())

    def upscalers(self) -> list[str]:
        """The pixel upscalers Upscale can use: "lanczos", then the ESRGAN-family models in the models folder."""
        from pipelines.models.upscalers import available

        return ["lanczos", *available(self.home)]

    def _lora_library(self):
        """The engine's LoRA library, or (gallery-only work: no engine, no torch) one for this home."""
        from pipelines.models.lora import LoraLibrary

        return self._engine.loras if self._engine is not None else LoraLibrary(self.home)

    def _lora_autov3(self, recipe: Recipe) -> dict[str, str]:
        """LoRA sha256 -> AutoV3 short hash, for the A1111 "Lora hashes" field (Civitai links by it)."""
        return self._lora_library().autov3_hashes(recipe.loras) if recipe.loras else {}

    def unusable_loras(self, recipe: Recipe) -> list[str]:
        """Why each LoRA the recipe names (picked or in its prompt) cannot be used here ([] when all can): for a
        recipe loaded from a PNG or the gallery, said before a Draft would refuse it."""
        from pipelines.models.lora import with_prompt_loras

        library, reasons = self._lora_library(), []
        for ref in with_prompt_loras(recipe).loras:
            try:
                library.find(ref.name)
            except (ValueError, FileNotFoundError) as error:
                reasons.append(str(error))
        return reasons

    def _check_loras(self, recipes: list[Recipe]) -> None:
        """Every LoRA a recipe names (picked or in its prompt) is found in the folder, before the engine (and
        torch) loads: a wrong name is refused at once. The engine pins them by sha256 afterwards."""
        if self._engine is not None:
            return  # the engine resolves them itself, without an import to wait for
        from pipelines.models.lora import with_prompt_loras

        library = self._lora_library()
        for recipe in recipes:
            for ref in with_prompt_loras(recipe).loras:
                library.find(ref.name)
