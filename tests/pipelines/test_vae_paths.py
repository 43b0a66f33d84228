"""VAE code paths only a GPU or another model family would take, run on CPU by constructing the condition:
a float16 VAE with force_upcast (SDXL's own VAE on CUDA fp16), and a VAE config with latents_mean/std
(as some SDXL-family VAEs have). Each result is compared with the formula computed directly."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from pipelines.engine.img2img import encode_source
from pipelines.engine.previews import decode_latents

MEAN = [0.5, -0.25, 0.1, 0.0]
STD = [2.0, 0.5, 1.5, 1.0]


@pytest.fixture()
def pipe(tiny_model_dir):
    """A private copy of the tiny refiner pipeline (its VAE gets changed here)."""
    return StableDiffusionXLImg2ImgPipeline.from_pretrained(tiny_model_dir / "refiner")


def source() -> Image.Image:
    return Image.effect_noise((64, 64), 60).convert("RGB")


@torch.no_grad()
def direct_latent(vae, image, *, mean=None, std=None) -> torch.Tensor:
    x = VaeImageProcessor(vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1)).preprocess(image)
    z = vae.encode(x.to(vae.dtype)).latent_dist.mode()
    if mean is None:
        return z * vae.config.scaling_factor
    mean_t, std_t = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return (z - mean_t) * vae.config.scaling_factor / std_t


@torch.no_grad()
def direct_image(vae, latents, processor, *, mean=None, std=None) -> Image.Image:
    if mean is None:
        z = latents / vae.config.scaling_factor
    else:
        mean_t, std_t = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
        z = latents * std_t / vae.config.scaling_factor + mean_t
    return processor.postprocess(vae.decode(z.to(vae.dtype)).sample, output_type="pil")[0]


def test_latents_mean_and_std_are_applied_when_the_vae_has_them(pipe):
    image = source()
    plain = encode_source(pipe, image, 1)
    pipe.vae.register_to_config(latents_mean=MEAN, latents_std=STD)
    scaled = encode_source(pipe, image, 2)
    assert scaled.shape[0] == 2 and torch.equal(scaled[0], scaled[1])
    assert torch.allclose(scaled[:1], direct_latent(pipe.vae, image, mean=MEAN, std=STD), atol=1e-6)
    assert not torch.allclose(scaled[:1], plain, atol=1e-3)  # the condition really changes the result
    decoded = decode_latents(pipe, scaled[:1])[0]
    expected = direct_image(pipe.vae, scaled[:1], pipe.image_processor, mean=MEAN, std=STD)
    assert decoded.tobytes() == expected.tobytes()


def test_a_float16_vae_with_force_upcast_runs_in_float32_and_is_put_back(pipe):
    assert pipe.vae.config.force_upcast
    image = source()
    pipe.vae.to(torch.float16)
    reference = copy.deepcopy(pipe.vae).to(torch.float32)  # the fp16-rounded weights, computed in fp32
    latent = encode_source(pipe, image, 1)
    assert pipe.vae.dtype == torch.float16  # restored after the upcast
    assert torch.equal(latent, direct_latent(reference, image).to(latent.dtype))
    decoded = decode_latents(pipe, latent)[0]
    assert pipe.vae.dtype == torch.float16
    assert decoded.tobytes() == direct_image(reference, latent.float(), pipe.image_processor).tobytes()
