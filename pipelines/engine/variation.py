"""Variation seeds (A1111's "variation seed / variation strength"): a draft's starting noise is the
spherical interpolation of its own seed's noise and a variation seed's noise.

`noise(seed)` is exactly what diffusers draws for that image (`randn_tensor` on a CPU generator seeded
with it, shape (1, channels, height/8, width/8), the pipeline's latent dtype), so strength 0 is the
seed's own draft. The seed's generator is the one the pipeline then gets, already past that draw, as
when diffusers draws the noise itself: samplers that add noise at each step (Euler a, SDE) continue
from the same state. diffusers scales given `latents` by the scheduler's `init_noise_sigma` itself.

The slerp is A1111's (normalise, omega = arccos(dot), lerp when the two are nearly parallel), taken
over each image's whole noise; A1111 applies it along dim 1 of a (channels, height, width) tensor,
and its near-parallel branch swaps the weights (`low * val + high * (1 - val)`) — here it is the lerp.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from pipelines.recipe import Recipe

PARALLEL_DOT = 0.9995  # A1111's threshold for "nearly parallel"


def slerp(strength: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from `low` (strength 0) to `high` (strength 1), over the whole tensor,
    computed in float32 and returned in `low`'s dtype. Strength 0 returns `low`'s values exactly."""
    a, b = low.float(), high.float()
    dot = ((a / a.norm()) * (b / b.norm())).sum()
    if dot > PARALLEL_DOT:
        mixed = a * (1.0 - strength) + b * strength
    else:
        omega = torch.acos(dot.clamp(-1.0, 1.0))
        so = torch.sin(omega)
        mixed = (torch.sin((1.0 - strength) * omega) / so) * a + (torch.sin(strength * omega) / so) * b
    return mixed.to(low.dtype)


def latent_dtype(pipe: Any) -> torch.dtype:
    """The dtype diffusers draws the starting noise in: that of the prompt embeddings after its encode_prompt."""
    encoder = getattr(pipe, "text_encoder_2", None)
    return encoder.dtype if encoder is not None else pipe.unet.dtype


def noise(pipe: Any, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """One image's starting noise exactly as the pipeline would draw it with `generator` (which it advances)."""
    shape = (1, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    return randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=latent_dtype(pipe))


def variation_kwargs(pipe: Any, recipe: Recipe, generators: list[torch.Generator]) -> dict[str, Any]:
    """`{"latents": ...}` for a batch (one generator per image, seeded with its seed) when the recipe has a
    variation seed; {} otherwise (the pipeline draws its own noise). Every image of a batch is varied
    towards the same variation seed."""
    if recipe.variation_seed is None:
        return {}
    if recipe.mode != "txt2img":  # the Recipe refuses this already; never expected
        raise ValueError("variation_seed: only txt2img drafts can be varied")
    target = noise(pipe, recipe.height, recipe.width, torch.Generator("cpu").manual_seed(recipe.variation_seed))
    latents = [
        slerp(recipe.variation_strength, noise(pipe, recipe.height, recipe.width, g), target) for g in generators
    ]
    return {"latents": torch.cat(latents)}
