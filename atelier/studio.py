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
from atelier.cluster.errors import WorkerLost
from atelier.device_lease import device_needed
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
from atelier.studio_downloads import Downloads
from atelier.studio_gallery import GalleryViews
from atelier.studio_models import ModelLists
from atelier.studio_saving import (  # Saved: for the front ends
    Saved,
    SavePool,
    commit_draft,
    commit_final,
    encode_draft,
    encode_finished,
    results,
    saved_from,
    wait_all,
)
from atelier.studio_values import GalleryFilters, RefineChoice, StepPreview  # noqa: F401 (for the front ends)
from atelier.sweep_grid import write_sweep_grid  # noqa: F401 (for the front ends)
from pipelines.errors import GenerationCancelled, OutOfMemory
from pipelines.provenance.png_metadata import read_png
from pipelines.recipe import MAX_DRAFTS, Recipe
from storage.gallery import KINDS, Gallery, Generation, NotFoundError, Page  # noqa: F401 (KINDS, Page: for the front ends)

if TYPE_CHECKING:
    from pipelines.engine.engine import Draft, FinishedImage

# What a front end catches: errors a user can cause or act on (their message is for the user), and a
# job stopped by Interrupt.
USER_ERRORS = (ValueError, OutOfMemory, NotFoundError, FileNotFoundError, WorkerLost)
Cancelled = GenerationCancelled


@dataclass(frozen=True)
class Lineage:
    ancestors: list[Generation]  # parent first
    children: list[Generation]


OnStep = Callable[[StepPreview], None]


class Studio(GalleryViews, ModelLists, Downloads):  # gallery calls, model lists, downloads: atelier/studio_*.py
    def __init__(
        self,
        home: Path,
        *,
        device: str | None = None,
        dtype: str | None = None,
        cpu_offload: bool = False,
        vae_tiling: bool = False,
        database_url: str | None = None,
        save_workers: int | None = None,
        on_loading: Callable[[str], None] | None = None,
        engine: Any = None,
    ) -> None:
        self.home = Path(home)
        self._device_options = dict(device=device, dtype=dtype, cpu_offload=cpu_offload, vae_tiling=vae_tiling)
        self._engine = engine  # None: made here on first use; atelier.cluster's RemoteEngine runs jobs on GPU workers
        self.gallery = Gallery.open(self.home, database_url)
        # PNG encodes and gallery commits, off the device's path (atelier/studio_saving.py); 0: inline
        self._saves = SavePool() if save_workers is None else SavePool(workers=save_workers)
        self._on_loading = on_loading  # told what a cold start is loading (the CLI prints it on stderr)

    @property
    def engine(self):
        """The engine, made on first use: gallery-only work (listing, search, export) never imports torch."""
        device_needed()  # a web-queue job that gave its device slot up (to save) takes one again first
        if self._engine is None:
            if self._on_loading is not None:
                self._on_loading("torch, diffusers and the engine; the models load on first use")
            from pipelines.engine.engine import Engine
            from pipelines.models.loading import ModelCache

            self._engine = Engine(ModelCache(self.home, **self._device_options), app_version=__version__)
        return self._engine

    @property
    def models(self):
        return self.engine.models

    @property
    def device_slots(self) -> int:
        """Jobs the engine runs at once: 1 in this process, one per GPU worker on a cluster (never makes the
        engine)."""
        return getattr(self._engine, "slots", 1)

    def shared_queue_place(self, *, not_sent: int) -> tuple[int, float | None] | None:
        """On GPU workers shared by several front ends: (jobs ahead of a job sent once `not_sent` more of this
        front end's are, from every front end; about how many seconds until it starts, or None). None in one
        process: its queue is this front end's own."""
        place = getattr(self._engine, "place", None)
        return place(not_sent=not_sent) if place is not None else None

    def close(self) -> None:
        self._saves.close()  # every save submitted is finished before the gallery closes
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
        if self._on_loading is not None:
            self._on_loading(
                f"the base model {choice.base!r}" + (f" and refiner {choice.refiner!r}" if choice.refiner else "")
            )
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
        self._check_loras([recipe])
        drafts = self.engine.draft(recipe, count, inputs=inputs.images, **_callbacks(on_step, should_cancel))
        batch_id = uuid.uuid4().hex if len(drafts) > 1 and drafts[0].recipe.batch_seeds else None
        return self._save_drafts(drafts, batch_id=batch_id, parent_id=parent_id, inputs=inputs)

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
        """Each recipe drafted alone (a dynamic prompt's drafts, a sweep's cells, variations), as one gallery batch
        (shown together; no batch_seeds, so each re-runs alone). Each draft is saved on the save pool while
        the device makes the next; if a later one fails or is cancelled, those already made stay saved."""
        if not 1 <= len(recipes) <= MAX_DRAFTS:
            raise ValueError(f"drafts: must be from 1 to {MAX_DRAFTS} (got {len(recipes)})")
        inputs, callbacks = inputs or InputFiles(), _callbacks(on_step, should_cancel)
        self._check_loras(recipes)
        batch_id = uuid.uuid4().hex if len(recipes) > 1 else None
        saves = []
        try:
            for recipe in recipes:  # draft i is encoded and committed while the device makes draft i + 1
                draft = self.engine.draft(recipe, 1, inputs=inputs.images, **callbacks)[0]
                saves += self._commit_drafts([self._encode_draft(draft)], batch_id, parent_id, inputs, wait=False)
        finally:
            wait_all(saves)  # settled before the caller sees the result, or the error
        return results(saves)

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
        self._check_loras([recipe])
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
            return dataclasses.replace(saved_from(earlier), reused=True)
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
        self.gallery.get(draft_id).recipe.replace(steps=steps)  # a bad steps value fails before torch loads
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
        from atelier.upscale import UpscaleRequest, open_upright, pixel_upscaler, prepare_upscale, upscale_recipe

        wanted = UpscaleRequest(  # bad values fail here, before the gallery or a model is touched
            scale=scale, width=width, height=height, strength=strength, steps=steps, upscaler=upscaler
        )
        parent = self.gallery.get(generation_id)
        enlarge = pixel_upscaler(upscaler, self.home, lambda: self.engine)  # a missing model fails here
        image = self.gallery.read_file(parent.image_sha256)
        # A draft: its full decode, not its cheap preview (of the same size), once the values are known good.
        upscale_recipe(parent.recipe, wanted, *wanted.size_for(*open_upright(image, "the gallery image").size))
        full = self._full_draft_file(parent)
        image = full.read_bytes() if full else image
        recipe, inputs, note = prepare_upscale(parent.recipe, image, wanted, enlarge)
        saved = self.edit(recipe, inputs, parent_id=generation_id, on_step=on_step, should_cancel=should_cancel)
        return dataclasses.replace(saved, notes=(note, *saved.notes))

    def import_png(self, path: Path) -> Saved:
        """An Atelier or A1111/InvokeAI PNG becomes a gallery entry with its (closest) recipe; bytes unchanged."""
        data = Path(path).read_bytes()
        read = read_png(data)
        if read.lora_hashes:  # A1111's short LoRA hashes: the local files they name (by AutoV3)
            read = read.with_pinned_loras(*self._lora_library().pin_short_hashes(read.recipe, read.lora_hashes))
        dropped = tuple(f"not kept: {item}" for item in read.unmapped)
        earlier = self.gallery.imported_image(hashlib.sha256(data).hexdigest())
        if earlier is not None:  # the same file again: the entry made the first time
            return dataclasses.replace(saved_from(earlier), reused=True, notes=dropped)
        return saved_from(self.gallery.save(read.recipe, "imported", data), dropped)

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
        parent = self.gallery.get(parent_id)
        full = self._full_draft_file(parent)  # a draft is sent as its full decode
        original = full.read_bytes() if full else self.gallery.read_file(parent.image_sha256)
        same = (
            open_image(original, "gallery image").convert("RGB").tobytes()
            == open_image(data, "source image").convert("RGB").tobytes()
        )
        return original if same else data

    # -- the gallery ---------------------------------------------------------------------------------

    def lineage(self, generation_id: int) -> Lineage:
        return Lineage(ancestors=self.gallery.ancestors(generation_id), children=self.gallery.children(generation_id))

    def files_folder(self) -> Path:
        """The folder of the gallery's own files: the only one a web front end may serve."""
        return self.gallery.files.root

    # -- gallery ↔ engine ----------------------------------------------------------------------------

    def load_draft(self, draft_id: int) -> Draft:
        generation = self.gallery.get(draft_id)  # a wrong id fails here, before torch is imported
        if generation.kind != "draft":
            raise ValueError(
                f"refine: generation {draft_id} is a {generation.kind!r}, not a draft; refine takes a draft id"
            )
        if generation.latent_path is None or generation.files_missing or not generation.latent_path.exists():
            raise ValueError(f"refine: draft {draft_id} has lost its kept latent file; re-run it to make it again")
        from pipelines.engine.engine import Draft
        from pipelines.engine.kept_latent import KeptLatent

        latent = KeptLatent.from_bytes(generation.latent_path.read_bytes(), name=f"latent of draft {draft_id}")
        with Image.open(generation.image_path) as preview:
            preview.load()
        return Draft(generation.recipe, latent, preview)

    def _encode_draft(self, draft: Draft):
        return self._saves.encode(lambda autov3=self._lora_autov3(draft.recipe): encode_draft(draft, autov3))

    def _commit_drafts(self, encoded: list, batch_id=None, parent_id=None, inputs=None, *, wait: bool = True):
        """Commit encoded drafts in order: their Saved (wait: the front ends get ids and paths), or the futures."""
        files = inputs.files if inputs else None
        commits = [
            self._saves.commit(
                e, lambda enc: commit_draft(self.gallery, enc, batch_id=batch_id, parent_id=parent_id, inputs=files)
            )
            for e in encoded
        ]
        return results(commits) if wait else commits

    def _save_drafts(self, drafts: list[Draft], *, batch_id=None, parent_id=None, inputs=None) -> list[Saved]:
        return self._commit_drafts([self._encode_draft(d) for d in drafts], batch_id, parent_id, inputs)

    def _save_draft(self, draft: Draft, *, parent_id=None, inputs=None) -> Saved:
        return self._save_drafts([draft], parent_id=parent_id, inputs=inputs)[0]

    def _save_final(
        self, finished: FinishedImage, kind: str, *, parent_id: int | None, inputs: InputFiles | None = None
    ) -> Saved:
        files = inputs.files if inputs else None
        encoded = self._saves.encode(
            lambda autov3=self._lora_autov3(finished.recipe): encode_finished(finished, autov3)
        )
        save = self._saves.commit(
            encoded, lambda e: commit_final(self.gallery, e, kind, parent_id=parent_id, inputs=files)
        )
        return results([save])[0]


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
