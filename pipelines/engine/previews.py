"""Looking at latents: the model's clean-image estimate, fast step previews, and VAE decoding.

A draft stops while its latent is still noisy; decoding that latent would show noise. What the model
believes the finished image looks like is its clean-image estimate x̂₀ at the last step, which the
scheduler computes from the noise prediction it was handed anyway. `CleanEstimateTap` keeps it, so a
draft's preview costs zero extra UNet calls.

A full SDXL VAE decode at 1024² costs about as much as one UNet step with guidance, so a draft's preview is
a cheap decode of that estimate (`DraftPreviews`): TAESD-XL when the models folder has it, else the VAE
at half the size, scaled back up — a few per cent of the draft's UNet work either way. The estimate is
kept with the draft (`KeptLatent.clean_estimate`) so the full decode can be made when it is wanted.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import get_module_execution_device
from PIL import Image

from pipelines.models.preview_decoder import find_taesd_xl, load_taesd_xl

# The fallback preview decodes the clean estimate at 1/REDUCTION of its side: 1/REDUCTION² of the work.
PREVIEW_REDUCTION = 2
PREVIEW_FULL = "full"  # a draft whose image is the full decode (its base ran to the end, or made before)
PREVIEW_TAESD = "taesd-xl"
PREVIEW_HALF_SIZE = "vae-half-size"

# Linear map from SDXL latents to RGB (as used by ComfyUI and A1111 for live previews): a cheap look
# at a latent without the VAE. Only for step previews shown in the UI, never for saved images.
SDXL_LATENT_RGB_FACTORS = torch.tensor(
    [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ]
)
SDXL_LATENT_RGB_BIAS = torch.tensor([0.1084, -0.0175, -0.0011])


def clean_estimate(scheduler: Any, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor) -> torch.Tensor:
    """x̂₀ from the model output at this step, for the sigma (Euler) and alpha (DPM, DDIM, UniPC, LCM) families."""
    prediction = scheduler.config.prediction_type
    sigmas = getattr(scheduler, "sigmas", None)
    step_index = getattr(scheduler, "step_index", None)
    if type(scheduler).__name__.startswith("Euler") and step_index is not None:
        # Variance-exploding form: sample = x0 + sigma * eps.
        sigma = sigmas[step_index].to(sample.device, sample.dtype)
        if prediction == "v_prediction":
            return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        return sample - sigma * model_output
    if hasattr(scheduler, "_sigma_to_alpha_sigma_t") and step_index is not None:
        alpha_t, sigma_t = scheduler._sigma_to_alpha_sigma_t(sigmas[step_index])
    else:
        alphas_cumprod = scheduler.alphas_cumprod[int(timestep)]
        alpha_t, sigma_t = alphas_cumprod**0.5, (1 - alphas_cumprod) ** 0.5
    alpha_t = torch.as_tensor(alpha_t, device=sample.device, dtype=sample.dtype)
    sigma_t = torch.as_tensor(sigma_t, device=sample.device, dtype=sample.dtype)
    if prediction == "v_prediction":
        return alpha_t * sample - sigma_t * model_output
    if prediction == "sample":
        return model_output
    return (sample - sigma_t * model_output) / alpha_t


class CleanEstimateTap:
    """Wraps `scheduler.step` to keep the latest clean-image estimate; changes nothing it returns."""

    def __init__(self, scheduler: Any) -> None:
        self.latest: torch.Tensor | None = None
        original = scheduler.step

        # functools.wraps keeps the signature visible: pipelines inspect step() to decide whether to
        # pass `generator` and `eta`, and ancestral samplers lose determinism without them.
        @functools.wraps(original)
        def step(model_output, timestep, sample, *args, **kwargs):
            self.latest = clean_estimate(scheduler, model_output, timestep, sample).detach()
            return original(model_output, timestep, sample, *args, **kwargs)

        scheduler.step = step


def fast_preview(latents: torch.Tensor, *, max_side: int = 256) -> list[Image.Image]:
    """Approximate RGB images from SDXL latents with a linear map (no VAE)."""
    lat = latents.detach().float().cpu()
    rgb = torch.einsum("bchw,cr->brhw", lat, SDXL_LATENT_RGB_FACTORS) + SDXL_LATENT_RGB_BIAS[None, :, None, None]
    rgb = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    images = []
    for arr in rgb:
        img = Image.fromarray(np.ascontiguousarray(arr))
        scale = max(1, max_side // max(img.size))
        images.append(img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST))
    return images


@torch.no_grad()
def decode_latents(pipe: Any, latents: torch.Tensor) -> list[Image.Image]:
    """Decode model-space latents to PIL images exactly as the SDXL pipelines do (minus their watermark)."""
    vae = pipe.vae
    needs_upcasting = vae.dtype == torch.float16 and vae.config.force_upcast
    if needs_upcasting:
        pipe.upcast_vae()
    try:
        latents = latents.to(dtype=next(vae.post_quant_conv.parameters()).dtype)
        mean = getattr(vae.config, "latents_mean", None)
        std = getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean_t = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std_t = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std_t / vae.config.scaling_factor + mean_t
        else:
            latents = latents / vae.config.scaling_factor
        image = vae.decode(latents.to(get_module_execution_device(vae)), return_dict=False)[0]
    finally:
        if needs_upcasting:
            vae.to(dtype=torch.float16)
    return pipe.image_processor.postprocess(image, output_type="pil")


class DraftPreviews:
    """Cheap images of drafts' clean estimates, at their full pixel size (see the module text)."""

    def __init__(self, home: Path, device: Any, dtype: Any) -> None:
        self.home, self.device, self.dtype = Path(home), device, dtype
        self._taesd: tuple[Path, Any] | None = None

    def approx_decoder(self) -> Any:
        """TAESD-XL from the models folder (loaded once per file), or None."""
        path = find_taesd_xl(self.home)
        if path is None:
            return None
        if self._taesd is None or self._taesd[0] != path:
            self._taesd = (path, load_taesd_xl(path, self.device, self.dtype))
        return self._taesd[1]

    @torch.no_grad()
    def images(self, pipe: Any, latents: torch.Tensor) -> tuple[list[Image.Image], str]:
        """Preview images of model-space latents (batch), and how they were made (PREVIEW_*)."""
        size = (latents.shape[-1] * pipe.vae_scale_factor, latents.shape[-2] * pipe.vae_scale_factor)
        approx = self.approx_decoder()
        if approx is not None:
            # TAESD-XL decodes the UNet's own (scaled) latent space straight to [-1, 1].
            decoded = approx.decode(latents.to(self.device, approx.dtype), return_dict=False)[0]
            images, kind = pipe.image_processor.postprocess(decoded.float(), output_type="pil"), PREVIEW_TAESD
        else:
            small = F.interpolate(latents, size=_reduced(latents.shape[-2:]), mode="area")
            images, kind = decode_latents(pipe, small), PREVIEW_HALF_SIZE
        return [i if i.size == size else i.resize(size, Image.Resampling.BICUBIC) for i in images], kind


def _reduced(side: torch.Size) -> tuple[int, int]:
    return max(1, side[0] // PREVIEW_REDUCTION), max(1, side[1] // PREVIEW_REDUCTION)
