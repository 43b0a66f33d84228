"""The base model's part of any mode: which derived pipeline runs, and with which mode arguments.

txt2img → StableDiffusionXLPipeline, img2img → StableDiffusionXLImg2ImgPipeline, and their ControlNet
forms; every one derived from the base with `from_pipe`, so they hold the base's module objects.
img2img at strength 1 runs as txt2img (diffusers would still mix a trace of the source into its noise).
SDXL's ControlNet img2img pipeline has no `denoising_end`: the engine stops it after the same steps
(`stop_after`) by interrupting the loop, which leaves the latent exactly where `denoising_end` would.
Where the base stops, and whether img2img runs as "refine any image", is decided by handoff.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from pipelines.engine.handoff import plan_handoff
from pipelines.engine.img2img import check_base_steps, stop_at_switch
from pipelines.engine.inpaint import InpaintArea, check_mask, inpaint_kwargs, prepare
from pipelines.engine.inputs import EditInputs
from pipelines.engine.schedulers import make_scheduler
from pipelines.models.controlnet import ControlNetLibrary, combined, control_kwargs
from pipelines.recipe import Recipe
from pipelines.sizes import fit_to_bucket


@dataclass(kw_only=True)
class BaseStage:
    recipe: Recipe  # with the ControlNets' identities (sha256) filled in
    pipe: Any
    kwargs: dict[str, Any] = field(default_factory=dict)  # the mode's own call arguments
    runs: bool = True  # False: img2img at strength 0, the source latent is the result
    stop_after: int | None = None  # stop the loop after this many steps (denoising_end emulation)
    source: Image.Image | None = None  # the fitted source (img2img)
    denoising_end: float = 1.0  # where the base stops (the effective switch, see handoff.py); 1.0: the end
    notes: tuple[str, ...] = ()  # adjustments made to run the recipe, in words (see handoff.py)
    inpaint: InpaintArea | None = None  # inpainting: the area, and what finished images are composited over


def check_inputs(recipe: Recipe, inputs: EditInputs | None) -> EditInputs:
    """Early, before any model work: the images the recipe needs are there, and only those."""
    inputs = inputs or EditInputs()
    if recipe.mode == "img2img" and inputs.source is None:
        raise ValueError("img2img: no source image given (pass an image file, a gallery id or a draft)")
    if recipe.mode != "img2img" and inputs.source is not None:
        raise ValueError("source image: given, but the recipe's mode is txt2img (set mode img2img and a strength)")
    check_mask(recipe, inputs.mask)
    for image in (inputs.source, *inputs.control_maps):
        if image is not None and not isinstance(image, Image.Image):
            raise ValueError(f"images: must be PIL images (got {type(image).__name__})")
    if len(inputs.control_maps) != len(recipe.controlnets):
        raise ValueError(
            f"controlnets: the recipe has {len(recipe.controlnets)} unit(s) but "
            f"{len(inputs.control_maps)} control map(s) were given"
        )
    return inputs


def plan(
    recipe: Recipe,
    base: Any,
    inputs: EditInputs,
    controlnets: ControlNetLibrary,
    derive: Callable[..., Any],
    *,
    inpaint_unet: Any = None,
) -> BaseStage:
    """The derived pipeline and its arguments for the base's work on `recipe` (`base`: the loaded base model;
    `inpaint_unet`: the 9-channel UNet of recipe.inpaint_model, which then inpaints in the base's place)."""
    import torch
    from diffusers import (
        StableDiffusionXLControlNetImg2ImgPipeline,
        StableDiffusionXLControlNetPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )

    # Where the base hands over; img2img that leaves the base no step becomes "refine any image".
    handoff = plan_handoff(recipe, make_scheduler(recipe.scheduler, base.scheduler.config))
    recipe, end, notes = handoff.recipe, handoff.denoising_end, handoff.notes
    # Strength 1 re-noises completely: the source must not leak into the result, so it is not used at all.
    img2img = recipe.mode == "img2img" and recipe.strength < 1.0
    size = {"width": recipe.width, "height": recipe.height}
    denoising_end = {"denoising_end": end if end < 1.0 else None}
    if recipe.inpaints:  # a mask, or an expanded canvas (outpaint)
        return _inpaint(recipe, base, inputs, derive, end, notes, inpaint_unet)
    source = fit_to_bucket(inputs.source, recipe.width, recipe.height) if img2img else None
    if not recipe.controlnets:
        if not img2img:
            pipe = derive(StableDiffusionXLPipeline, base, recipe.scheduler)
            return BaseStage(recipe=recipe, pipe=pipe, kwargs={**size, **denoising_end}, denoising_end=end, notes=notes)
        pipe = derive(StableDiffusionXLImg2ImgPipeline, base, recipe.scheduler)
        runs = check_base_steps(pipe.scheduler, recipe, end)
        kwargs = {"image": source, "strength": recipe.strength, **denoising_end}
        return BaseStage(
            recipe=recipe,
            pipe=pipe,
            kwargs=kwargs,
            runs=runs,
            source=source,
            denoising_end=end if runs else 1.0,
            notes=notes,
        )

    models, units = [], []
    dtype = base.unet.dtype
    device = base.unet.device if base.unet.device.type != "meta" else torch.device("cpu")
    for unit in recipe.controlnets:
        model, ref = controlnets.load(unit.model, base.unet, device, dtype)
        models.append(model)
        units.append(dataclasses.replace(unit, model=ref))
    recipe = recipe.replace(controlnets=tuple(units))
    maps = [fit_to_bucket(m, recipe.width, recipe.height) for m in inputs.control_maps]
    control = control_kwargs(recipe.controlnets, maps)
    maps_arg = control.pop("_maps")
    if not img2img:
        pipe = derive(StableDiffusionXLControlNetPipeline, base, recipe.scheduler, controlnet=combined(models))
        return BaseStage(
            recipe=recipe,
            pipe=pipe,
            kwargs={**size, **denoising_end, "image": maps_arg, **control},
            denoising_end=end,
            notes=notes,
        )
    pipe = derive(StableDiffusionXLControlNetImg2ImgPipeline, base, recipe.scheduler, controlnet=combined(models))
    runs = check_base_steps(pipe.scheduler, recipe, end)
    kwargs = {**size, "image": source, "control_image": maps_arg, "strength": recipe.strength, **control}
    return BaseStage(
        recipe=recipe,
        pipe=pipe,
        kwargs=kwargs,
        runs=runs,
        stop_after=stop_at_switch(recipe, pipe.scheduler, end),
        source=source,
        denoising_end=end if runs else 1.0,
        notes=notes,
    )


def _inpaint(
    recipe: Recipe,
    base: Any,
    inputs: EditInputs,
    derive: Callable[..., Any],
    end: float,
    notes: tuple[str, ...],
    inpaint_unet: Any = None,
) -> BaseStage:
    """The base's part of inpainting (see inpaint.py); strength 1 still keeps the source outside the mask.
    With an inpainting UNet (9 input channels) diffusers adds the mask and masked-image latents itself."""
    from diffusers import StableDiffusionXLInpaintPipeline

    area = prepare(recipe, inputs.source, inputs.mask)
    unet = {"unet": inpaint_unet} if inpaint_unet is not None else {}
    pipe = derive(StableDiffusionXLInpaintPipeline, base, recipe.scheduler, **unet)
    runs = check_base_steps(pipe.scheduler, recipe, end)
    kwargs = {**inpaint_kwargs(area, recipe.strength), "denoising_end": end if end < 1.0 else None}
    return BaseStage(
        recipe=recipe,
        pipe=pipe,
        kwargs=kwargs,
        runs=runs,
        source=area.work_source,
        denoising_end=end if runs else 1.0,
        notes=notes,
        inpaint=area,
    )
