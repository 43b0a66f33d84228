"""img2img: a source image fitted to an SDXL bucket, re-noised to `strength`, denoised by the base.

The base may stop at the switch point (its noisy latent kept for the refiner, as for drafts) or run
to the end. Strength 0 is the source itself, through the VAE (encode, decode); "refine any image" is
img2img with strength 0 followed by the refiner at its own strength on that clean latent.

The engine takes the source as a PIL image: where it came from (upload, gallery, draft) and where it
is stored are the caller's business; the recipe records its sha256.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from pipelines.recipe import Recipe


def base_step_count(scheduler: Any, recipe: Recipe) -> int:
    """How many steps the base will run for an img2img recipe (diffusers' strength and denoising_end rules)."""
    assert recipe.strength is not None
    scheduler.set_timesteps(recipe.steps)
    initial = min(int(recipe.steps * recipe.strength), recipe.steps)
    timesteps = scheduler.timesteps[(recipe.steps - initial) * scheduler.order :]
    if recipe.base_stops_early:
        cutoff = round(scheduler.config.num_train_timesteps * (1 - recipe.switch))
        timesteps = timesteps[timesteps >= cutoff]
    return len(timesteps)


def check_base_steps(scheduler: Any, recipe: Recipe) -> bool:
    """True when the base runs (False: strength 0, the source as it is); ValueError when the strength
    is above 0 but too small to leave the base a single step."""
    if recipe.strength == 0.0:
        if recipe.base_stops_early:
            raise ValueError(
                "strength: 0 keeps the source as it is, so there is no noisy latent to hand to the refiner at "
                f"switch {recipe.switch}; use switch 1.0 (the refiner then works at its own strength)"
            )
        return False
    if base_step_count(scheduler, recipe) == 0:
        where = f" before the switch point {recipe.switch}" if recipe.base_stops_early else ""
        raise ValueError(
            f"strength: {recipe.strength} at {recipe.steps} steps leaves the base no step to run{where}; raise the "
            "strength or the steps" + (", or lower the switch" if recipe.base_stops_early else "")
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


def stop_at_switch(recipe: Recipe, scheduler: Any) -> int | None:
    """For pipelines without `denoising_end` (SDXL ControlNet img2img): the number of steps after which
    the base must stop to hand over exactly where `denoising_end` would have (None: run to the end)."""
    if not recipe.base_stops_early:
        return None
    return base_step_count(scheduler, recipe)
