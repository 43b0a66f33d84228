"""The studio: the one door of both front ends (web UI and CLI) to the engine and the gallery.

The engine's results go into the gallery, gallery entries go back to the engine, and the front ends
ask the studio — never the engine, the model libraries or the gallery — for generations, searches,
model lists and edit inputs. Step previews reach them as images, not tensors.

Importing this module loads neither torch nor diffusers (the engine is imported when a Studio is
made), so front ends and their tests start light.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from atelier import __version__
from atelier.edit_inputs import (  # noqa: F401 (image_size, open_image: for the front ends)
    ControlRequest,
    InputFiles,
    control_map_of,
    image_size,
    open_image,
    stored_inputs,
    with_inputs,
)
from atelier.requests import ModelChoice, varied_recipes
from atelier.studio_values import GalleryFilters, RefineChoice, StepPreview  # noqa: F401 (for the front ends)
from atelier.sweep_grid import write_sweep_grid  # noqa: F401 (for the front ends)
from pipelines.errors import GenerationCancelled, OutOfMemory
from pipelines.provenance.png_metadata import encode_png, read_png
from pipelines.recipe import MAX_DRAFTS, Recipe
from storage.gallery import KINDS, Gallery, Generation, NotFoundError, Page  # noqa: F401 (KINDS, Page: for the front ends)

if TYPE_CHECKING:
    from pipelines.engine.engine import Draft, FinishedImage

# What a front end catches: errors a user can cause or act on (their message is for the user), and a
# job stopped by Interrupt.
USER_ERRORS = (ValueError, OutOfMemory, NotFoundError, FileNotFoundError)
Cancelled = GenerationCancelled


@dataclass(frozen=True, kw_only=True)
class Saved:
    """A generation as the studio hands it back: its gallery id, files and recipe."""

    id: int
    recipe: Recipe
    image: Path
    latent: Path | None = None
    reused: bool = False  # an existing entry made from the same request (nothing new was stored)
    notes: tuple[str, ...] = ()  # how the engine adjusted the request to run it, in words for the user

    def as_json(self) -> dict[str, Any]:
        data = {"id": self.id, "seed": self.recipe.seed, "image": str(self.image)}
        if self.latent is not None:
            data["latent"] = str(self.latent)
        return data


@dataclass(frozen=True)
class Lineage:
    ancestors: list[Generation]  # parent first
    children: list[Generation]


OnStep = Callable[[StepPreview], None]


class Studio:
    def __init__(
        self,
        home: Path,
        *,
        device: str | None = None,
        dtype: str | None = None,
        cpu_offload: bool = False,
        vae_tiling: bool = False,
        database_url: str | None = None,
    ) -> None:
        self.home = Path(home)
        self._device_options = dict(device=device, dtype=dtype, cpu_offload=cpu_offload, vae_tiling=vae_tiling)
        self._engine = None
        self.gallery = Gallery.open(self.home, database_url)

    @property
    def engine(self):
        """The engine, made on first use: gallery-only work (listing, search, export) never imports torch."""
        if self._engine is None:
            from pipelines.engine.engine import Engine
            from pipelines.models.loading import ModelCache

            self._engine = Engine(ModelCache(self.home, **self._device_options), app_version=__version__)
        return self._engine

    @property
    def models(self):
        return self.engine.models

    def close(self) -> None:
        self.gallery.close()

    def __enter__(self) -> Studio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def install_demo_extras(self) -> dict[str, Path] | None:
        """On the demo model, a tiny LoRA and ControlNet in <home>/models, so every tab can be tried.
        Nothing is written into a models folder of the user's own ($ATELIER_MODELS)."""
        import os

        if os.environ.get("ATELIER_MODELS"):
            return None
        from pipelines.models.demo_extras import write_demo_extras
        from pipelines.models.tiny_model import write_tiny_model as write_tiny

        base, _ = write_tiny(self.models.resolve("tiny", "base").path.parent)  # written once, on first use
        return write_demo_extras(self.home / "models", base)

    def load_models(self, choice: ModelChoice) -> None:
        """Load the chosen base (and refiner) now, so the first job does not wait for it."""
        base = self.models.load_base(choice.base)
        if choice.refiner:
            self.models.load_refiner(choice.refiner, base)

    # -- generation ----------------------------------------------------------------------------------

    def draft(
        self,
        recipe: Recipe,
        count: int,
        *,
        inputs: InputFiles | None = None,
        parent_id: int | None = None,
        on_step: OnStep | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> list[Saved]:
        inputs = inputs or InputFiles()
        drafts = self.engine.draft(recipe, count, inputs=inputs.images, **_callbacks(on_step, should_cancel))
        batch_id = uuid.uuid4().hex if len(drafts) > 1 and drafts[0].recipe.batch_seeds else None
        return [self._save_draft(d, batch_id=batch_id, parent_id=parent_id, inputs=inputs) for d in drafts]

    def vary(
        self,
        generation_id: int,
        *,
        strength: float,
        count: int,
        variation_seed: int | None = None,
        on_step: OnStep | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> list[Saved]:
        """`count` drafts of a txt2img generation, each made alone at its own variation seed (variation_seed, +1, …;
        random when None) at `strength`: see atelier.requests.varied_recipes. Stored once all are made."""
        parent = self.gallery.get(generation_id)
        recipes = varied_recipes(parent.recipe, strength=strength, count=count, variation_seed=variation_seed)
        inputs = stored_inputs(parent.recipe, self.gallery.read_file)
        return self.draft_each(
            recipes, inputs=inputs, parent_id=generation_id, on_step=on_step, should_cancel=should_cancel
        )

    def draft_each(
        self,
        recipes: list[Recipe],
        *,
        inputs: InputFiles | None = None,
        parent_id: int | None = None,
        on_step: OnStep | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> list[Saved]:
        """Each recipe drafted alone (a dynamic prompt's drafts, a sweep's cells, variations), stored once all
        are made, as one gallery batch (shown together; no batch_seeds, so each re-runs alone)."""
        if not 1 <= len(recipes) <= MAX_DRAFTS:
            raise ValueError(f"drafts: must be from 1 to {MAX_DRAFTS} (got {len(recipes)})")
        inputs, callbacks = inputs or InputFiles(), _callbacks(on_step, should_cancel)
        drafts = [self.engine.draft(r, 1, inputs=inputs.images, **callbacks)[0] for r in recipes]
        batch_id = uuid.uuid4().hex if len(drafts) > 1 else None
        return [self._save_draft(d, batch_id=batch_id, parent_id=parent_id, inputs=inputs) for d in drafts]

    def edit(
        self,
        recipe: Recipe,
        inputs: InputFiles,
        *,
        parent_id: int | None = None,
        on_step: OnStep | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> Saved:
        """One img2img or ControlNet image made to the end (refined when the recipe says so); `parent_id`:
        the gallery image it was made from."""
        result = self.engine.render(recipe, inputs=inputs.images, **_callbacks(on_step, should_cancel))
        if _is_draft(result):
            return self._save_draft(result, parent_id=parent_id, inputs=inputs)
        return self._save_final(result, _kind(result.recipe), parent_id=parent_id, inputs=inputs)

    def refine(
        self,
        draft_id: int,
        *,
        settings: RefineChoice | None = None,
        on_step: OnStep | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> Saved:
        """Finish a draft with the refiner, using `settings` (the refiner's controls as they are now) over
        those the draft was made with. Refining a draft again with the same settings returns the
        entry made the first time (`reused`) instead of storing the same pixels twice."""
        draft = self.load_draft(draft_id)
        if settings is not None:
            draft = dataclasses.replace(draft, recipe=settings.applied_to(draft.recipe))
        earlier = self._refined_before(draft_id, draft.recipe)
        if earlier is not None:
            return dataclasses.replace(_saved(earlier), reused=True)
        # The refiner needs only the latent, but the refined entry must reference its draft's source and
        # control files too: they are what a re-run of it needs, even after the draft is deleted.
        inputs = stored_inputs(draft.recipe, self.gallery.read_file)
        finished = self.engine.refine(draft, inputs=inputs.images, **_callbacks(on_step, should_cancel))
        return self._save_final(finished, "refined", parent_id=draft_id, inputs=inputs)

    def _refined_before(self, draft_id: int, recipe: Recipe) -> Generation | None:
        """A refined child of the draft made with the same refiner settings, whose files are all there."""
        for child in self.gallery.children(draft_id):
            same = (
                child.kind == "refined"
                and child.recipe.micro == recipe.micro
                and child.recipe.steps == recipe.steps
                and (child.recipe.refine and recipe.refine and child.recipe.refine.strength == recipe.refine.strength)
            )
            if same and not child.files_missing and child.image_path.exists():
                return child
        return None

    def rerender(
        self,
        draft_id: int,
        steps: int,
        *,
        on_step: OnStep | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> Saved:
        draft = self.load_draft(draft_id)
        inputs = stored_inputs(draft.recipe, self.gallery.read_file)
        finished = self.engine.rerender(draft, steps, inputs=inputs.images, **_callbacks(on_step, should_cancel))
        kind = "refined" if finished.recipe.refine else _kind(finished.recipe)
        return self._save_final(finished, kind, parent_id=draft_id, inputs=inputs)

    def rerun(
        self, generation_id: int, *, on_step: OnStep | None = None, should_cancel: Callable[[], bool] | None = None
    ) -> Saved:
        """The recipe of `generation_id` made again: a new generation whose parent is the original."""
        original = self.gallery.get(generation_id)
        inputs = stored_inputs(original.recipe, self.gallery.read_file)
        result = self.engine.render(
            original.recipe.replace(watermark_applied=None), inputs=inputs.images, **_callbacks(on_step, should_cancel)
        )
        if _is_draft(result):
            return self._save_draft(result, parent_id=generation_id, inputs=inputs)
        kind = (
            original.kind
            if original.kind != "imported"
            else ("refined" if result.recipe.refine else _kind(result.recipe))
        )
        return self._save_final(result, kind, parent_id=generation_id, inputs=inputs)

    def upscale(
        self,
        generation_id: int,
        *,
        scale: float | None = None,
        width: int | None = None,
        height: int | None = None,
        strength: float = 0.35,
        steps: int | None = None,
        upscaler: str = "lanczos",
        on_step: OnStep | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> Saved:
        """Hires fix: the image enlarged (by `scale`, or to `width`×`height`; ×2 by default) with `upscaler`, then
        img2img at `strength` for `steps` (the image's own) through base → refiner; see atelier/upscale.py."""
        from atelier.upscale import UpscaleRequest, pixel_upscaler, prepare_upscale

        wanted = UpscaleRequest(  # bad values fail here, before the gallery or a model is touched
            scale=scale, width=width, height=height, strength=strength, steps=steps, upscaler=upscaler
        )
        parent = self.gallery.get(generation_id)
        enlarge = pixel_upscaler(upscaler, self.home, lambda: str(self.models.device))  # a missing model fails here
        image = self.gallery.read_file(parent.image_sha256)
        recipe, inputs, note = prepare_upscale(parent.recipe, image, wanted, enlarge)
        saved = self.edit(recipe, inputs, parent_id=generation_id, on_step=on_step, should_cancel=should_cancel)
        return dataclasses.replace(saved, notes=(note, *saved.notes))

    def import_png(self, path: Path) -> Saved:
        """An Atelier or A1111/InvokeAI PNG becomes a gallery entry with its (closest) recipe; bytes unchanged."""
        data = Path(path).read_bytes()
        read = read_png(data)
        dropped = tuple(f"not kept: {item}" for item in read.unmapped)
        earlier = self.gallery.imported_image(hashlib.sha256(data).hexdigest())
        if earlier is not None:  # the same file again: the entry made the first time
            return dataclasses.replace(_saved(earlier), reused=True, notes=dropped)
        return dataclasses.replace(_saved(self.gallery.save(read.recipe, "imported", data)), notes=dropped)

    # -- edit inputs ---------------------------------------------------------------------------------

    def prepare_inputs(
        self,
        recipe: Recipe,
        *,
        source: bytes | None = None,
        controls: list[ControlRequest] = (),
        mask: bytes | None = None,
    ) -> tuple[Recipe, InputFiles]:
        """The recipe with its input images' hashes recorded, the images for the engine (control maps
        made by their preprocessors; `mask`: inpainting) and the files for the gallery."""
        return with_inputs(recipe, source, list(controls), self.annotators_folder(), mask)

    def control_maps(self, controls: list[ControlRequest], width: int, height: int) -> list[Image.Image]:
        """The maps the preprocessors make of the control images at a size: a preview, no model needed."""
        return [control_map_of(c, i, width, height, self.annotators_folder())[1] for i, c in enumerate(controls)]

    def edit_source(self, data: bytes, parent_id: int | None) -> bytes:
        """What to store as an img2img source: the gallery's own file when `data` shows that entry's
        pixels (a browser's copy is a re-encode, with another sha256 and without its metadata), else `data`."""
        if not parent_id:
            return data
        original = self.gallery.read_file(self.gallery.get(parent_id).image_sha256)
        same = (
            open_image(original, "gallery image").convert("RGB").tobytes()
            == open_image(data, "source image").convert("RGB").tobytes()
        )
        return original if same else data

    # -- the gallery ---------------------------------------------------------------------------------

    def get(self, generation_id: int) -> Generation:
        return self.gallery.get(generation_id)

    def search(
        self,
        query: str | None = None,
        filters: GalleryFilters = GalleryFilters(),
        *,
        limit: int = 50,
        after: str | None = None,
    ) -> Page:
        return self.gallery.search(query, limit=limit, after=after, **filters.as_search_arguments())

    def lineage(self, generation_id: int) -> Lineage:
        return Lineage(ancestors=self.gallery.ancestors(generation_id), children=self.gallery.children(generation_id))

    def set_favourite(self, generation_id: int, favourite: bool) -> Generation:
        return self.gallery.set_favourite(generation_id, favourite)

    def delete(self, generation_id: int) -> tuple[str, ...]:
        return self.gallery.delete(generation_id)

    def set_tags(self, generation_id: int, tags: list[str]) -> Generation:
        return self.gallery.set_tags(generation_id, tags)

    def stored_file(self, sha256: str) -> Path:
        """Where the gallery keeps a file it stores by sha256 (a source or control image)."""
        return self.gallery.file_path(sha256)

    def read_file(self, sha256: str) -> bytes:
        """A stored file's bytes, checked against its sha256 (a damaged file is an error, never exported)."""
        return self.gallery.read_file(sha256)

    def download_path(self, generation_id: int) -> Path:
        """The generation's PNG under a name that says what it is (`atelier-<id>-<seed>.png`): a link in
        <home>/downloads to the gallery's own file (same bytes, metadata and watermark), for a browser's
        Download button."""
        generation = self.gallery.get(generation_id)
        folder = self.downloads_folder()
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / f"atelier-{generation.id}-{generation.recipe.seed}.png"
        if not (link.is_symlink() and link.resolve() == generation.image_path.resolve()):
            temporary = link.with_name(f".{link.name}.{uuid.uuid4().hex}")
            temporary.symlink_to(generation.image_path.resolve())
            temporary.replace(link)  # atomic: another page asking at the same time sees a whole link
        return link

    def downloads_folder(self) -> Path:
        return self.home / "downloads"

    def files_folder(self) -> Path:
        """The folder of the gallery's own files: the only one a web front end may serve."""
        return self.gallery.files.root

    # -- model lists ---------------------------------------------------------------------------------

    def loras(self) -> list[dict[str, Any]]:
        """Every LoRA file in the models folder: name, and format or why it is unusable (read afresh)."""
        return self.engine.loras.available()

    def lora_folder(self) -> Path | None:
        return self.engine.loras.folder()

    def controlnets(self) -> list[dict[str, Any]]:
        return self.engine.controlnets.available()

    def controlnet_folder(self) -> Path | None:
        return self.engine.controlnets.folder()

    def annotators_folder(self) -> Path | None:
        folder = self.controlnet_folder()
        return folder.parent / "annotators" if folder is not None else None

    def preprocessors(self) -> list[dict[str, Any]]:
        """Every preprocessor: name, whether it can run here, and what to download where if not."""
        from pipelines.models.preprocessors import available

        return available(self.annotators_folder())

    # -- gallery ↔ engine ----------------------------------------------------------------------------

    def load_draft(self, draft_id: int) -> Draft:
        from pipelines.engine.engine import Draft
        from pipelines.engine.kept_latent import KeptLatent

        generation = self.gallery.get(draft_id)
        if generation.kind != "draft":
            raise ValueError(
                f"refine: generation {draft_id} is a {generation.kind!r}, not a draft; refine takes a draft id"
            )
        if generation.latent_path is None or generation.files_missing or not generation.latent_path.exists():
            raise ValueError(f"refine: draft {draft_id} has lost its kept latent file; re-run it to make it again")
        latent = KeptLatent.from_bytes(generation.latent_path.read_bytes(), name=f"latent of draft {draft_id}")
        with Image.open(generation.image_path) as preview:
            preview.load()
        return Draft(generation.recipe, latent, preview)

    def _save_draft(
        self,
        draft: Draft,
        *,
        batch_id: str | None = None,
        parent_id: int | None = None,
        inputs: InputFiles | None = None,
    ) -> Saved:
        generation = self.gallery.save(
            draft.recipe,
            "draft",
            encode_png(draft.preview, draft.recipe),
            parent_id=parent_id,
            batch_id=batch_id,
            latent=draft.latent.to_bytes(draft.recipe.to_json()),
            inputs=inputs.files if inputs else None,
        )
        return dataclasses.replace(_saved(generation), notes=draft.notes)

    def _save_final(
        self, finished: FinishedImage, kind: str, *, parent_id: int | None, inputs: InputFiles | None = None
    ) -> Saved:
        png = encode_png(finished.image, finished.recipe)
        files = inputs.files if inputs else None
        try:
            generation = self.gallery.save(finished.recipe, kind, png, parent_id=parent_id, inputs=files)
        except NotFoundError:
            if parent_id is None:
                raise
            # The parent was deleted while this image was being made: keep the image, without lineage.
            generation = self.gallery.save(finished.recipe, kind, png, inputs=files)
        return dataclasses.replace(_saved(generation), notes=finished.notes)


def _callbacks(on_step: OnStep | None, should_cancel: Callable[[], bool] | None) -> dict[str, Any]:
    """The engine's callbacks: its step information becomes a StepPreview (no tensors leave the studio)."""
    callbacks: dict[str, Any] = {}
    if on_step is not None:
        callbacks["on_step"] = lambda info: on_step(
            StepPreview(stage=info.stage, step=info.step, total=info.total, _estimate=info.clean_estimate)
        )
    if should_cancel is not None:
        callbacks["should_cancel"] = should_cancel
    return callbacks


def _is_draft(result: Any) -> bool:
    from pipelines.engine.engine import Draft

    return isinstance(result, Draft)


def _kind(recipe: Recipe) -> str:
    """The gallery kind of a finished image made in one go (not a refined draft)."""
    if recipe.mode == "img2img":
        return "img2img"
    return "controlnet" if recipe.controlnets else "txt2img"


def _saved(generation: Generation) -> Saved:
    return Saved(id=generation.id, recipe=generation.recipe, image=generation.image_path, latent=generation.latent_path)
