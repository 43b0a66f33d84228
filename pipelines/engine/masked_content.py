"""Masked content "noise" (A1111's "latent noise"): the masked area starts from fresh seeded noise, not the source.

diffusers' StableDiffusionXLInpaintPipeline starts from `add_noise(image_latents, noise, t_start)` (strength < 1)
and, for a 4-channel UNet, after every step puts the re-noised `image_latents` back outside the mask. It
takes `image` as latents when it has the VAE's 4 channels (its image processor passes such a tensor
through, `prepare_latents` uses it as `image_latents`). So for "noise" the engine hands it the source's
latent (the VAE's mean, pipelines.engine.img2img.encode_source) with the masked area replaced by unit
Gaussian noise, as A1111 does to its init latent; the pipeline then noises that to the strength as usual.
The mask is the pipeline's own at latent size (its mask processor binarizes at 0.5, then nearest
interpolation, as `prepare_mask_latents` does). Outside the mask nothing changes: the source latent is
blended back each step and the finished image is composited over the source (inpaint.py).

The fill noise of each image is drawn from its own seed's generator, which the pipeline then gets already
past that draw (as for variation seeds): the pipeline's noise is the next, independent draw, and the same
seed gives the same pixels. At strength 1 the pipeline starts the masked area from pure noise anyway (the
fill is not used there; "noise" then differs from "original" only by the random numbers drawn).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from pipelines.engine.img2img import encode_source

SHARED_DEVICE = torch.device("cpu")  # the generators are CPU generators (the engine's rule for reproducibility)


def base_kwargs(pipe: Any, stage: Any, generators: list[torch.Generator]) -> dict[str, Any]:
    """The base stage's mode arguments (`stage`: base_stage.BaseStage); for masked content "noise", `image`
    becomes the noise-filled source latents, one per generator (which are advanced)."""
    area = stage.inpaint
    if area is None or stage.recipe.masked_content != "noise" or not stage.runs:
        return stage.kwargs
    width, height = area.size
    source = encode_source(pipe, area.work_source, 1)
    mask = pipe.mask_processor.preprocess(area.work_mask, height=height, width=width)
    latent_mask = torch.nn.functional.interpolate(mask, size=source.shape[-2:]).to(source)
    fills = [
        randn_tensor(tuple(source.shape), generator=g, device=SHARED_DEVICE, dtype=torch.float32).to(source)
        for g in generators
    ]
    kwargs = {**stage.kwargs, "image": torch.cat([source * (1 - latent_mask) + fill * latent_mask for fill in fills])}
    if pipe.unet.config.in_channels == 9:  # an inpainting UNet also sees the masked source, as diffusers makes it
        pixels = pipe.image_processor.preprocess(area.work_source, height=height, width=width)
        kwargs["masked_image_latents"] = pixels * (mask < 0.5)
    return kwargs
