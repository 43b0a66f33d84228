"""The studio: the engine's results go into the gallery, and gallery entries go back to the engine.

Used by the command line and the web UI alike, so both save, refine and re-run the same way.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from atelier import __version__
from atelier.edit_inputs import InputFiles, stored_inputs
from atelier.requests import ModelChoice
from pipelines.engine.engine import Draft, Engine, FinishedImage
from pipelines.engine.kept_latent import KeptLatent
from pipelines.models.loading import DEFAULT_BASE, DEFAULT_REFINER, ModelCache
from pipelines.provenance.png_metadata import encode_png, read_png
from pipelines.recipe import Recipe
from storage.gallery import Gallery, Generation, NotFoundError

TINY = "tiny"


@dataclass(frozen=True)
class Saved:
    """A generation as the studio hands it back: its gallery id, files and recipe."""

    id: int
    recipe: Recipe
    image: Path
    latent: Path | None = None

    def as_json(self) -> dict[str, Any]:
        data = {"id": self.id, "seed": self.recipe.seed, "image": str(self.image)}
        if self.latent is not None:
            data["latent"] = str(self.latent)
        return data


class Studio:
    def __init__(self, home: Path, *, device: str | None = None, dtype: str | None = None, cpu_offload: bool = False,
                 vae_tiling: bool = False, database_url: str | None = None) -> None:
        self.home = Path(home)
        self.models = ModelCache(self.home, device=device, dtype=dtype, cpu_offload=cpu_offload, vae_tiling=vae_tiling)
        self.engine = Engine(self.models, app_version=__version__)
        self.gallery = Gallery.open(self.home, database_url)

    def close(self) -> None:
        self.gallery.close()

    def __enter__(self) -> "Studio":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- generation ----------------------------------------------------------------------------------

    def draft(self, recipe: Recipe, count: int, *, inputs: InputFiles | None = None, parent_id: int | None = None,
              **callbacks: Any) -> list[Saved]:
        inputs = inputs or InputFiles()
        drafts = self.engine.draft(recipe, count, inputs=inputs.images, **callbacks)
        batch_id = uuid.uuid4().hex if len(drafts) > 1 and drafts[0].recipe.batch_seeds else None
        return [self._save_draft(d, batch_id=batch_id, parent_id=parent_id, inputs=inputs) for d in drafts]

    def edit(self, recipe: Recipe, inputs: InputFiles, *, parent_id: int | None = None, **callbacks: Any) -> Saved:
        """One img2img or ControlNet image made to the end (refined when the recipe says so); `parent_id`:
        the gallery image it was made from."""
        result = self.engine.render(recipe, inputs=inputs.images, **callbacks)
        if isinstance(result, Draft):
            return self._save_draft(result, parent_id=parent_id, inputs=inputs)
        return self._save_final(result, _kind(result.recipe), parent_id=parent_id, inputs=inputs)

    def refine(self, draft_id: int, **callbacks: Any) -> Saved:
        draft = self.load_draft(draft_id)
        # The refiner needs only the latent, but the refined entry must reference its draft's source and
        # control files too: they are what a re-run of it needs, even after the draft is deleted.
        inputs = stored_inputs(draft.recipe, self.gallery.read_file)
        finished = self.engine.refine(draft, **callbacks)
        return self._save_final(finished, "refined", parent_id=draft_id, inputs=inputs)

    def rerender(self, draft_id: int, steps: int, **callbacks: Any) -> Saved:
        draft = self.load_draft(draft_id)
        inputs = stored_inputs(draft.recipe, self.gallery.read_file)
        finished = self.engine.rerender(draft, steps, inputs=inputs.images, **callbacks)
        kind = "refined" if finished.recipe.refine else _kind(finished.recipe)
        return self._save_final(finished, kind, parent_id=draft_id, inputs=inputs)

    def rerun(self, generation_id: int, **callbacks: Any) -> Saved:
        """The recipe of `generation_id` made again: a new generation whose parent is the original."""
        original = self.gallery.get(generation_id)
        inputs = stored_inputs(original.recipe, self.gallery.read_file)
        result = self.engine.render(original.recipe.replace(watermark_applied=None), inputs=inputs.images, **callbacks)
        if isinstance(result, Draft):
            return self._save_draft(result, parent_id=generation_id, inputs=inputs)
        kind = original.kind if original.kind != "imported" else ("refined" if result.recipe.refine else _kind(result.recipe))
        return self._save_final(result, kind, parent_id=generation_id, inputs=inputs)

    def import_png(self, path: Path) -> Saved:
        """An Atelier or A1111/InvokeAI PNG becomes a gallery entry with its (closest) recipe; bytes unchanged."""
        data = Path(path).read_bytes()
        recipe = read_png(data).recipe
        saved = self.gallery.save(recipe, "imported", data)
        return Saved(saved.id, saved.recipe, saved.image_path)

    # -- gallery ↔ engine ----------------------------------------------------------------------------

    def load_draft(self, draft_id: int) -> Draft:
        generation = self.gallery.get(draft_id)
        if generation.kind != "draft":
            raise ValueError(f"refine: generation {draft_id} is a {generation.kind!r}, not a draft; refine takes a draft id")
        if generation.latent_path is None or generation.files_missing or not generation.latent_path.exists():
            raise ValueError(f"refine: draft {draft_id} has lost its kept latent file; re-run it to make it again")
        latent = KeptLatent.from_bytes(generation.latent_path.read_bytes(), name=f"latent of draft {draft_id}")
        with Image.open(generation.image_path) as preview:
            preview.load()
        return Draft(generation.recipe, latent, preview)

    def _save_draft(self, draft: Draft, *, batch_id: str | None = None, parent_id: int | None = None,
                    inputs: InputFiles | None = None) -> Saved:
        generation = self.gallery.save(
            draft.recipe, "draft", encode_png(draft.preview, draft.recipe), parent_id=parent_id, batch_id=batch_id,
            latent=draft.latent.to_bytes(draft.recipe.to_json()), inputs=inputs.files if inputs else None,
        )
        return _saved(generation)

    def _save_final(self, finished: FinishedImage, kind: str, *, parent_id: int | None,
                    inputs: InputFiles | None = None) -> Saved:
        png = encode_png(finished.image, finished.recipe)
        files = inputs.files if inputs else None
        try:
            generation = self.gallery.save(finished.recipe, kind, png, parent_id=parent_id, inputs=files)
        except NotFoundError:
            if parent_id is None:
                raise
            # The parent was deleted while this image was being made: keep the image, without lineage.
            generation = self.gallery.save(finished.recipe, kind, png, inputs=files)
        return _saved(generation)


def _kind(recipe: Recipe) -> str:
    """The gallery kind of a finished image made in one go (not a refined draft)."""
    if recipe.mode == "img2img":
        return "img2img"
    return "controlnet" if recipe.controlnets else "txt2img"


def _saved(generation: Generation) -> Saved:
    return Saved(generation.id, generation.recipe, generation.image_path, generation.latent_path)


def choose_models(home: Path, base: str | None = None, refiner: str | None = None) -> ModelChoice:
    """What to load when the user did not say: real SDXL weights if any are here, else the tiny demo.

    Looks in the models folder (A1111 or ComfyUI layout, under $ATELIER_MODELS or <home>/models)
    and in the Hugging Face cache; never downloads.
    """
    from pipelines.models.model_files import models_root

    if base is None:
        models = models_root(home)
        checkpoints = models.list_models("checkpoint") if models else []
        if checkpoints:
            base = str(models.resolve_checkpoint(checkpoints[0]))
        elif _in_hub_cache(DEFAULT_BASE):
            base = DEFAULT_BASE
        else:
            base = TINY
    if refiner is None:
        if base == TINY:
            refiner = TINY
        elif _in_hub_cache(DEFAULT_REFINER):
            refiner = DEFAULT_REFINER
    if refiner == "base":
        refiner = None
    return ModelChoice(base, refiner, demo=base == TINY)


def _in_hub_cache(repo: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "model_index.json"), str)
