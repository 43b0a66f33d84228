"""The model-offload path (`--cpu-offload`: accelerate's hooks move each model to the device when it runs),
which only a GPU needs, run on the CPU: the hooks are attached by the same code (the device is the CPU, so
they move nothing) and the engine's draft, refine and full decode through them give exactly the results of
the plain path, with the base and refiner sharing their text encoder and VAE as on a GPU."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.engine.engine import Engine
from pipelines.models.loading import ModelCache


def test_draft_and_refine_through_the_offload_hooks_equal_the_plain_path(tiny_home, tiny_recipe):
    results = {}
    for offload in (False, True):
        cache = ModelCache(tiny_home, device="cpu", cpu_offload=offload)
        engine = Engine(cache, app_version="test")
        draft = engine.draft(tiny_recipe(seed=5, steps=6), 1)[0]
        refined = engine.refine(draft)
        base = cache.load_base("tiny").pipe
        hooked = [name for name in ("unet", "vae", "text_encoder_2") if hasattr(getattr(base, name), "_hf_hook")]
        results[offload] = (draft, refined, hooked, engine.full_draft_image(draft))
    plain, offloaded = results[False], results[True]
    assert plain[2] == [] and offloaded[2] == ["unet", "vae", "text_encoder_2"]  # the path really differed
    assert torch.equal(plain[0].latent.tensor, offloaded[0].latent.tensor)
    assert torch.equal(plain[1].latent, offloaded[1].latent)
    assert np.array_equal(np.asarray(plain[1].image), np.asarray(offloaded[1].image))
    assert np.array_equal(np.asarray(plain[3]), np.asarray(offloaded[3]))
