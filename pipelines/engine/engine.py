"""The generation engine: drafts that stop at the switch point, and refines that resume them.

Every mode is written like a diffusers `__call__`: 1. validate, 2. resolve models, 3. encode prompts
(cached), 4. prepare generators, 5. denoise, 6. decode, 7. watermark, 8. return a typed result.
The engine never touches the gallery or the UI: callers pass `on_step` / `should_cancel` callables
and store what comes back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import StableDiffusionXLImg2ImgPipeline
from diffusers.utils import logging as diffusers_logging
from PIL import Image

from pipelines.engine import base_stage, inpaint, masked_content
from pipelines.engine.img2img import encode_source
from pipelines.engine.inputs import EditInputs
from pipelines.engine.kept_latent import KeptLatent
from pipelines.engine.previews import PREVIEW_FULL, CleanEstimateTap, DraftPreviews, decode_latents
from pipelines.engine.prompt_encoding import PromptEncoder
from pipelines.engine.schedulers import make_scheduler
from pipelines.engine.vae_tiling import tiling_for
from pipelines.engine.variation import variation_kwargs
from pipelines.errors import GenerationCancelled, OutOfMemory  # noqa: F401 (raised here, caught by callers)
from pipelines.models.controlnet import ControlNetLibrary
from pipelines.models.loading import LoadedModel, ModelCache
from pipelines.models.lora import LoraLibrary
from pipelines.prompt_syntax import extract_lora_tokens
from pipelines.provenance.watermark import apply_watermark
from pipelines.recipe import MAX_DRAFTS, MAX_SEED, ModelRef, Recipe


@dataclass(frozen=True)
class StepInfo:
    stage: str  # "base" or "refiner"
    step: int  # 1-based, within this stage
    total: int
    clean_estimate: torch.Tensor | None  # the model's x̂₀ for the batch (for fast previews)


@dataclass(frozen=True)
class Draft:
    recipe: Recipe  # stage "draft", its own seed, and the batch it was made in
    latent: KeptLatent
    # The model's clean-image estimate, decoded cheaply when the draft is noisy (Engine.full_draft_image
    # decodes it fully), fully when the base ran to the end; watermarked if asked.
    preview: Image.Image
    # img2img at strength 0: the preview is the fitted source itself (no UNet call, not watermarked).
    source_unchanged: bool = False
    notes: tuple[str, ...] = ()  # how the engine adjusted the recipe to run it (see handoff.py), for the user


@dataclass(frozen=True)
class FinishedImage:
    recipe: Recipe  # stage "final"
    image: Image.Image
    latent: torch.Tensor  # the clean latent that was decoded, (channels, height/8, width/8)
    # The image is the (fitted) source, unchanged: img2img at strength 0 with no refiner pass
    # (Recipe.keeps_source). No UNet ran and no watermark was added; `latent` is the source encoded.
    source_unchanged: bool = False
    notes: tuple[str, ...] = ()  # how the engine adjusted the recipe to run it (see handoff.py), for the user


OnStep = Callable[[StepInfo], None] | None
ShouldCancel = Callable[[], bool] | None


def _holding_device(mode: Callable[..., Any]) -> Callable[..., Any]:
    """Run an Engine mode holding its device lock (see Engine.full_draft_image)."""

    @functools.wraps(mode)
    def run(self: Engine, *args: Any, **kwargs: Any) -> Any:
        with self.device_lock:
            return mode(self, *args, **kwargs)

    return run


class Engine:
    def __init__(self, models: ModelCache, prompts: PromptEncoder | None = None, *, app_version: str = "") -> None:
        self.models = models
        self.prompts = prompts or PromptEncoder()
        self.app_version = app_version
        self.loras = LoraLibrary(models.home, models.hashes)
        self.controlnets = ControlNetLibrary(models.home, models.hashes)
        self._base_pipe: Callable[[], Any] = lambda: None
        self.previews = DraftPreviews(models.home, models.device, models.dtype)
        # Held by every mode: a decode asked for from another thread (opening a draft) waits for the device.
        self.device_lock = threading.RLock()

    # -- public modes ------------------------------------------------------------------------------

    @_holding_device
    def draft(
        self,
        recipe: Recipe,
        count: int = 1,
        *,
        inputs: EditInputs | None = None,
        on_step: OnStep = None,
        should_cancel: ShouldCancel = None,
    ) -> list[Draft]:
        """`count` drafts with seeds seed, seed+1, …; one batch where memory allows.

        Each draft's recipe records the batch it was made in (`batch_seeds`), so re-running it replays
        the same batch and gives the same pixels (a batch differs from single runs by float rounding).
        """
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_DRAFTS:
            raise ValueError(f"count: must be an integer from 1 to {MAX_DRAFTS} (got {count!r})")
        seeds = tuple(recipe.seed + i for i in range(count))
        if seeds[-1] > MAX_SEED:
            raise ValueError(f"seed: must leave room for {count} consecutive seeds (got {recipe.seed})")
        template = recipe.replace(stage="draft", batch_seeds=seeds if count > 1 else ())
        template, inputs = self._prepare(template, inputs)
        try:
            return self._drafts(template, seeds, on_step, should_cancel, inputs)
        except OutOfMemory:
            if count == 1:
                raise
        # The batch did not fit: make the drafts one at a time, each recorded as made alone.
        return [
            self._drafts(template.replace(seed=s, batch_seeds=()), (s,), on_step, should_cancel, inputs)[0]
            for s in seeds
        ]

    @_holding_device
    def refine(
        self,
        draft: Draft,
        *,
        inputs: EditInputs | None = None,
        on_step: OnStep = None,
        should_cancel: ShouldCancel = None,
    ) -> FinishedImage:
        """Finish a draft: resume its noisy latent with the refiner (or the base itself). `inputs`: the
        source and mask an inpainting draft was made from (the refined image is composited over them)."""
        recipe = draft.recipe
        if recipe.refine is None:
            raise ValueError("refine: this recipe has no refine stage (it was made to run the base to the end)")
        area = None
        if recipe.inpaints and not recipe.keeps_source:
            inputs = base_stage.check_inputs(recipe, inputs)
            area = inpaint.prepare(recipe, inputs.source, inputs.mask)
        if recipe.keeps_source:  # img2img at strength 0 before the switch: nothing to denoise
            return _finished_from_draft(draft)
        base = self._load_base(recipe.model)
        refiner_pipe, refiner_ref = self._refiner_pipe(recipe, base)
        if recipe.refine.model is not None:  # record the refiner's resolved identity (sha256)
            recipe = recipe.replace(refine=dataclasses.replace(recipe.refine, model=refiner_ref))
        own_loras = recipe.loras if refiner_pipe.unet is base.pipe.unet else ()  # the refiner never gets the base's
        with (
            self.loras.applied(refiner_pipe, own_loras),
            tiling_for(refiner_pipe.vae, recipe.width, recipe.height),
            self._memory_guard("refining"),
        ):
            prompt_kwargs = self._encode(refiner_pipe, recipe, refiner_ref)
            tap = CleanEstimateTap(refiner_pipe.scheduler)
            # A clean latent is re-noised at refine.strength; at least one refiner step (RefineSettings.schedule_steps).
            steps = recipe.steps if draft.latent.noisy else recipe.refine.schedule_steps(recipe.steps)
            latents = refiner_pipe(
                image=draft.latent.tensor[None].to(self.models.device),
                num_inference_steps=steps,
                guidance_scale=recipe.guidance,
                generator=torch.Generator("cpu").manual_seed(recipe.seed),
                output_type="latent",
                aesthetic_score=recipe.micro.aesthetic_score,
                negative_aesthetic_score=recipe.micro.negative_aesthetic_score,
                callback_on_step_end=self._step_callback("refiner", tap, on_step, should_cancel),
                **draft.latent.refine_kwargs(recipe.refine.strength),
                **recipe.micro.resolved(recipe.height, recipe.width),
                **prompt_kwargs.as_kwargs(),
            ).images
            image = decode_latents(refiner_pipe, latents)[0]
        if area is not None:  # outside the (blurred) mask: the source's pixels
            image = area.composite(image)
        finished = self._finish(recipe.replace(stage="final"), image, latents[0])
        return dataclasses.replace(finished, notes=draft.notes)

    @_holding_device
    def render(
        self,
        recipe: Recipe,
        *,
        inputs: EditInputs | None = None,
        on_step: OnStep = None,
        should_cancel: ShouldCancel = None,
    ) -> Draft | FinishedImage:
        """Make exactly what a recipe describes — how the gallery re-runs any image. `inputs`: the source
        image (img2img) and control maps the recipe names by sha256."""
        seeds = recipe.batch_seeds or (recipe.seed,)
        draft_recipe, inputs = self._prepare(recipe.replace(stage="draft"), inputs)
        recipe = recipe.replace(loras=draft_recipe.loras)
        drafts = self._drafts(draft_recipe.replace(seed=seeds[0]), seeds, on_step, should_cancel, inputs)
        draft = drafts[seeds.index(recipe.seed)]
        if recipe.stage == "draft":
            return draft
        if draft.recipe.refine is None:
            # The base ran to the end: its draft preview is already the decoded, watermarked final image.
            return _finished_from_draft(draft)
        return self.refine(draft, inputs=inputs, on_step=on_step, should_cancel=should_cancel)

    def rerender(
        self, draft: Draft, steps: int, *, inputs: EditInputs | None = None, **callbacks: Any
    ) -> FinishedImage:
        """Re-run a chosen draft's seed alone at more steps, then hand off as usual."""
        recipe = draft.recipe.replace(steps=steps, batch_seeds=(), stage="final")
        result = self.render(recipe, inputs=inputs, **callbacks)
        assert isinstance(result, FinishedImage)
        return result

    # -- stages --------------------------------------------------------------------------------------

    def _drafts(
        self,
        template: Recipe,
        seeds: tuple[int, ...],
        on_step: OnStep,
        should_cancel: ShouldCancel,
        inputs: EditInputs | None = None,
    ) -> list[Draft]:
        base = self._load_base(template.model)
        template = template.replace(
            model=base.ref, vae=_vae_in_use(template, base), app_version=self.app_version or template.app_version
        )
        template, inpaint_unet = self._inpaint_unet(template, base)
        stage = base_stage.plan(
            template, base.pipe, inputs or EditInputs(), self.controlnets, _derive, inpaint_unet=inpaint_unet
        )
        template, pipe = stage.recipe, stage.pipe
        tap = CleanEstimateTap(pipe.scheduler)
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        if not stage.runs:  # img2img at strength 0: the source itself, unchanged; its latent for the refiner
            with (
                tiling_for(pipe.vae, template.width, template.height),
                self._memory_guard(f"encoding the source at {template.width}×{template.height}"),
            ):
                latents = encode_source(pipe, stage.source, len(seeds))
            shown_source = stage.inpaint.source if stage.inpaint else stage.source
            return [
                Draft(
                    template.replace(seed=seed, watermark_applied=False),
                    KeptLatent(latent.detach().to("cpu"), 1.0),
                    shown_source.copy(),
                    source_unchanged=True,
                    notes=stage.notes,
                )
                for seed, latent in zip(seeds, latents)
            ]
        with (
            self.loras.applied(pipe, template.loras),
            tiling_for(pipe.vae, template.width, template.height),  # the source's encode and the previews' decode
            self._memory_guard(f"making {len(seeds)} draft(s) at {template.width}×{template.height}"),
        ):
            prompt_kwargs = self._encode(pipe, template, base.ref)
            latents = pipe(
                num_inference_steps=template.steps,
                guidance_scale=template.guidance,
                num_images_per_prompt=len(seeds),
                generator=generators if len(generators) > 1 else generators[0],
                output_type="latent",
                callback_on_step_end=self._step_callback("base", tap, on_step, should_cancel, stage.stop_after),
                **template.micro.resolved(template.height, template.width),
                **prompt_kwargs.as_kwargs(),
                **masked_content.base_kwargs(pipe, stage, generators),  # stage.kwargs; "noise": image latents
                **variation_kwargs(pipe, template, generators),  # {}, or the varied noise (drawn from generators)
            ).images
            # A noisy latent shows noise: preview the model's own estimate of the finished image.
            shown = tap.latest if stage.denoising_end < 1.0 else latents
            if shown is None:  # handoff.plan_handoff leaves the base at least one step; never expected
                raise RuntimeError(
                    f"the base ran no step for this recipe (steps {template.steps}, switch {template.switch})"
                )
            if stage.denoising_end < 1.0:  # not the finished image: a cheap look now, the full decode on demand
                previews, preview_kind = self.previews.images(pipe, shown)
            else:
                previews, preview_kind = decode_latents(pipe, shown), PREVIEW_FULL
            if stage.inpaint is not None:  # outside the (blurred) mask: the source's pixels
                previews = [stage.inpaint.composite(p) for p in previews]
        drafts = []
        for seed, latent, estimate, preview in zip(seeds, latents, shown, previews):
            recipe = template.replace(seed=seed)
            preview, applied = self._watermark(recipe, preview)
            estimate = estimate.detach().to("cpu") if preview_kind != PREVIEW_FULL else None
            kept = KeptLatent(latent.detach().to("cpu"), stage.denoising_end, estimate, preview_kind)
            drafts.append(Draft(recipe.replace(watermark_applied=applied), kept, preview, notes=stage.notes))
        return drafts

    def full_draft_image(self, draft: Draft, *, inputs: EditInputs | None = None) -> Image.Image:
        """The full VAE decode of a draft's clean estimate (its preview is a cheap one), watermarked as the
        recipe says; `inputs`: an inpainting draft's source and mask. A draft without a kept estimate
        already shows the full decode: its preview."""
        estimate = draft.latent.clean_estimate
        if estimate is None:
            return draft.preview
        recipe, area = draft.recipe, None
        if recipe.inpaints:
            inputs = base_stage.check_inputs(recipe, inputs)
            area = inpaint.prepare(recipe, inputs.source, inputs.mask)
        with self.device_lock:
            base = self._load_base(recipe.model)
            with tiling_for(base.pipe.vae, recipe.width, recipe.height), self._memory_guard("decoding a draft"):
                image = decode_latents(base.pipe, estimate[None].to(self.models.device))[0]
        if area is not None:  # outside the (blurred) mask: the source's pixels
            image = area.composite(image)
        return self._watermark(recipe, image)[0]

    def _finish(self, recipe: Recipe, image: Image.Image, latent: torch.Tensor) -> FinishedImage:
        image, applied = self._watermark(recipe, image)
        return FinishedImage(recipe.replace(watermark_applied=applied), image, latent.detach().to("cpu"))

    # -- helpers -------------------------------------------------------------------------------------

    def _prepare(self, recipe: Recipe, inputs: EditInputs | None) -> tuple[Recipe, EditInputs]:
        """Checks that need files but no model: LoRAs found and pinned, ControlNets found, images present."""
        inputs = base_stage.check_inputs(recipe, inputs)
        for unit in recipe.controlnets:
            self.controlnets.locate(unit.model.name)
        return self.loras.resolve(recipe), inputs

    def _load_base(self, wanted: ModelRef) -> LoadedModel:
        loaded = self.models.load_base(wanted.name)
        _check_identity("model", wanted, loaded.ref)
        if self._base_pipe() is not loaded.pipe:  # another base: ControlNets built for the old one go
            self.controlnets.clear()
            self._base_pipe = weakref.ref(loaded.pipe)  # weak: ModelCache.release must free the model
        return loaded

    def _inpaint_unet(self, recipe: Recipe, base: LoadedModel) -> tuple[Recipe, Any]:
        """The dedicated inpainting UNet the recipe names (None: the base inpaints), its identity recorded."""
        if recipe.inpaint_model is None:
            return recipe, None
        loaded = self.models.load_inpaint(recipe.inpaint_model.name, base)
        _check_identity("inpaint_model", recipe.inpaint_model, loaded.ref)
        return recipe.replace(inpaint_model=loaded.ref), loaded.pipe.unet

    def _refiner_pipe(self, recipe: Recipe, base: LoadedModel) -> tuple[Any, ModelRef]:
        """The refiner as img2img; the base itself when the recipe names no refiner."""
        assert recipe.refine is not None
        source = base
        if recipe.refine.model is not None:
            source = self.models.load_refiner(recipe.refine.model.name, base)
            _check_identity("refine.model", recipe.refine.model, source.ref)
        return _derive(StableDiffusionXLImg2ImgPipeline, source.pipe, recipe.scheduler), source.ref

    def _encode(self, pipe: Any, recipe: Recipe, ref: ModelRef):
        prompt, negative = self._prompt_texts(recipe)
        encode = self.prompts.encode_refiner if pipe.text_encoder is None else self.prompts.encode_base
        return encode(pipe, prompt, negative, recipe.prompt_syntax, _model_key(ref))

    @staticmethod
    def _prompt_texts(recipe: Recipe) -> tuple[str, str]:
        # <lora:…> tokens are Recipe.loras entries already; they are not words for the text encoders.
        return extract_lora_tokens(recipe.prompt)[0], extract_lora_tokens(recipe.negative_prompt)[0]

    @staticmethod
    def _watermark(recipe: Recipe, image: Image.Image) -> tuple[Image.Image, bool]:
        return apply_watermark(image) if recipe.watermark else (image, False)

    @staticmethod
    def _step_callback(
        stage: str, tap: CleanEstimateTap, on_step: OnStep, should_cancel: ShouldCancel, stop_after: int | None = None
    ):
        def callback(pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if stop_after is not None and i + 1 >= stop_after:
                pipe._interrupt = True  # the switch point, for pipelines without denoising_end
            if on_step is not None:
                on_step(StepInfo(stage, i + 1, pipe.num_timesteps, tap.latest))
            if should_cancel is not None and should_cancel():
                raise GenerationCancelled(f"cancelled during the {stage} at step {i + 1}")
            return {}

        return callback

    @contextlib.contextmanager
    def _memory_guard(self, doing: str) -> Iterator[None]:
        try:
            yield
        except torch.OutOfMemoryError:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise OutOfMemory(
                f"Out of memory on {self.models.device} while {doing}. Memory has been released; try fewer "
                "drafts, a smaller size, or the model CPU offload option."
            ) from None


def _finished_from_draft(draft: Draft) -> FinishedImage:
    """A draft that is already the finished image: the base ran to the end (refine None), or the source
    as it is (Recipe.keeps_source: img2img at strength 0)."""
    unchanged = draft.recipe.keeps_source
    return FinishedImage(
        draft.recipe.replace(stage="final"),
        draft.preview,
        draft.latent.tensor,
        source_unchanged=unchanged,
        notes=draft.notes,
    )


# Derived pipelines without extra modules, per source pipeline (weakly: dropping a model drops them): from_pipe
# costs ~7 ms, a few per cent of a small draft + refine. Every call state of a diffusers pipeline is set afresh
# by its __call__; the scheduler (stateful) is new on every _derive.
_DERIVED: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()


def _derive(pipeline_class: Any, source: Any, scheduler_name: str, **modules: Any) -> Any:
    """A pipeline of `pipeline_class` sharing every module of `source`, with a fresh scheduler."""
    scheduler = make_scheduler(scheduler_name, source.scheduler.config)
    if not modules and pipeline_class in _DERIVED.get(source, {}):
        pipe = _DERIVED[source][pipeline_class]
        pipe.scheduler = scheduler
        return pipe
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # from_pipe warns about its (no-op) dtype cast on every call
    try:
        # dtype must be given: from_pipe otherwise casts the shared modules to float32.
        pipe = pipeline_class.from_pipe(
            source, scheduler=scheduler, dtype=source.dtype, add_watermarker=False, **modules
        )
    finally:
        diffusers_logging.set_verbosity(verbosity)
    if not modules:
        _DERIVED.setdefault(source, {})[pipeline_class] = pipe
    return pipe


def _model_key(ref: ModelRef) -> str:
    return f"{ref.name}@{ref.sha256 or ref.revision or ''}"


def _vae_in_use(recipe: Recipe, base: LoadedModel) -> ModelRef | None:
    """The VAE that will decode: None for the model's own. A recipe being re-run (its model already
    resolved to a sha256) must get the same VAE it was made with; a swap would change its pixels."""
    used = ModelRef(base.vae_override) if base.vae_override else None
    if recipe.model.sha256 and recipe.vae != used:
        made, here = (
            (recipe.vae.name if recipe.vae else "the model's own VAE"),
            (used.name if used else "the model's own VAE"),
        )
        raise ValueError(
            f"vae: the recipe was decoded with {made}, but here {here} would be used — "
            "run it where that VAE is (or is not) in the Hugging Face cache, as when it was made"
        )
    return used


def _check_identity(field: str, wanted: ModelRef, loaded: ModelRef) -> None:
    """Re-runs must use the very weights the recipe names; never substitute silently."""
    if wanted.sha256 and loaded.sha256 and wanted.sha256 != loaded.sha256:
        raise ValueError(
            f"{field}: {wanted.name!r} now has sha256 {loaded.sha256[:12]}…, but the recipe was made with "
            f"{wanted.sha256[:12]}… — put the original weights back or pick the model explicitly"
        )
    if wanted.revision and loaded.revision and wanted.revision != loaded.revision:
        raise ValueError(
            f"{field}: {wanted.name!r} is at revision {loaded.revision}, the recipe needs {wanted.revision}"
        )
