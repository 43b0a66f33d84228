"""img2img: a source image fitted to an SDXL bucket, re-noised to `strength`, denoised by the base.

The base may stop at the switch point (its noisy latent kept for the refiner, as for drafts) or run
to the end. Strength 0 is the source itself: its image is the fitted source, unchanged, and no UNet
runs (its kept latent is the source encoded by the VAE). "Refine any image" is img2img with strength 0
followed by the refiner at its own strength on that clean latent; a strength that leaves the base no
step before the switch runs that way too (see handoff.py).

The engine takes the source as a PIL image: where it came from (upload, gallery, draft) and where it
is stored are the caller's business; the recipe records its sha256.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from pipelines.engine.handoff import base_steps, schedule
from pipelines.recipe import MAX_STEPS, Recipe


def base_step_count(scheduler: Any, recipe: Recipe, denoising_end: float = 1.0) -> int:
    """How many steps the base will run for an img2img recipe (diffusers' strength and denoising_end rules);
    `denoising_end`: where it stops (see handoff.plan_handoff), 1.0 = at the end."""
    assert recipe.strength is not None
    timesteps = schedule(scheduler, recipe.steps)
    initial = min(int(recipe.steps * recipe.strength), recipe.steps)
    return base_steps(timesteps[len(timesteps) - initial :] if initial else [], scheduler, denoising_end)


def check_base_steps(scheduler: Any, recipe: Recipe, denoising_end: float = 1.0) -> bool:
    """True when the base runs (False: strength 0, the source as it is); ValueError when the strength
    is above 0 but too small to leave the base a single step (only without a refine stage: with one,
    handoff.plan_handoff has already turned such a recipe into "refine any image")."""
    if recipe.strength == 0.0:
        return False
    if base_step_count(scheduler, recipe, denoising_end) == 0:
        lowest = next(k / 100 for k in range(1, 101) if int(recipe.steps * (k / 100)) >= 1)
        least = next((n for n in range(recipe.steps, MAX_STEPS + 1) if int(n * recipe.strength) >= 1), None)
        more_steps = f"the steps to at least {least}, or " if least is not None else ""  # none within MAX_STEPS
        raise ValueError(
            f"strength: {recipe.strength} at {recipe.steps} steps leaves the base no step to run; raise the strength "
            f"to at least {lowest} or {more_steps}use strength 0 to keep the source as it is"
        )
    return True


@torch.no_grad()
def encode_source(pipe: Any, image: Image.Image, count: int) -> torch.Tensor:
    """The source's latent (the mean of the VAE's distribution, scaled as the pipelines scale it), repeated."""
    vae = pipe.vae
    pixels = pipe.image_processor.preprocess(image).to(vae.device, torch.float32)
    upcast = vae.dtype == torch.float16 and vae.config.force_upcast
    if upcast:
        vae.to(torch.float32)
    try:
        latent = vae.encode(pixels.to(vae.dtype)).latent_dist.mode()
    finally:
        if upcast:
            vae.to(torch.float16)
    mean = getattr(vae.config, "latents_mean", None)
    std = getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        mean_t = torch.tensor(mean).view(1, -1, 1, 1).to(latent)
        std_t = torch.tensor(std).view(1, -1, 1, 1).to(latent)
        latent = (latent - mean_t) * vae.config.scaling_factor / std_t
    else:
        latent = latent * vae.config.scaling_factor
    return latent.to(pipe.unet.dtype).repeat(count, 1, 1, 1)


def stop_at_switch(recipe: Recipe, scheduler: Any, denoising_end: float) -> int | None:
    """For pipelines without `denoising_end` (SDXL ControlNet img2img): the number of steps after which
    the base must stop to hand over exactly where `denoising_end` would have (None: run to the end)."""
    if denoising_end >= 1.0:
        return None
    return base_step_count(scheduler, recipe, denoising_end)
