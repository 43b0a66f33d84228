"""Cheap draft previews: TAESD-XL from <models>/VAE-approx, else a half-size VAE decode; the clean estimate
kept with the draft for the full decode on demand; refine counts unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny
from safetensors.torch import save_file

from pipelines.engine.engine import Engine
from pipelines.engine.kept_latent import KeptLatent
from pipelines.engine.previews import decode_latents
from pipelines.models.loading import ModelCache
from pipelines.models.preview_decoder import find_taesd_xl, load_taesd_xl


def pixels(image):
    return np.asarray(image).astype(int)


def random_taesd(seed: int = 7) -> AutoencoderTiny:
    torch.manual_seed(seed)
    return AutoencoderTiny().eval()


def models_folder(home, approx_name: str = "VAE-approx"):
    folder = home / "models"
    (folder / "Lora").mkdir(parents=True, exist_ok=True)  # marks an A1111 models folder
    (folder / approx_name).mkdir(exist_ok=True)
    return folder / approx_name


def test_kept_latent_keeps_the_clean_estimate_and_how_the_preview_was_made():
    latent, estimate = torch.randn(4, 8, 8), torch.randn(4, 8, 8)
    kept = KeptLatent(latent, 0.8, estimate, "taesd-xl")
    back = KeptLatent.from_bytes(kept.to_bytes("{}"))
    assert torch.equal(back.tensor, latent) and torch.equal(back.clean_estimate, estimate)
    assert back.preview == "taesd-xl" and back.denoising_end == 0.8
    older = KeptLatent.from_bytes(KeptLatent(latent, 0.8).to_bytes())  # a file made before cheap previews
    assert older.clean_estimate is None and older.preview == "full"
    with pytest.raises(ValueError, match="clean_estimate has shape"):
        KeptLatent(latent, 0.8, torch.randn(4, 4, 4))


def test_taesd_xl_is_found_only_as_safetensors_and_only_for_sdxl(tmp_path):
    approx = models_folder(tmp_path, "vae_approx")  # ComfyUI's name
    assert find_taesd_xl(tmp_path) is None
    (approx / "taesdxl_decoder.pth").write_bytes(b"pickle")  # never loaded
    (approx / "taesd_decoder.safetensors").write_bytes(b"sd1")  # another latent space
    assert find_taesd_xl(tmp_path) is None
    save_file({"decoder.layers.0.weight": torch.zeros(1)}, approx / "taesdxl.safetensors")
    assert find_taesd_xl(tmp_path) == approx / "taesdxl.safetensors"
    (approx / "taesdxl.safetensors").unlink()
    random_taesd().save_pretrained(approx / "TAESDXL")  # a diffusers folder
    assert find_taesd_xl(tmp_path) == approx / "TAESDXL"


def test_the_original_decoder_only_file_loads_into_diffusers_layout(tmp_path):
    model = random_taesd(3)
    decoder_only = {
        f"{int(k.split('.')[2]) + 1}.{k.split('.', 3)[3]}": v
        for k, v in model.state_dict().items()
        if k.startswith("decoder.")
    }
    save_file(decoder_only, tmp_path / "taesdxl_decoder.safetensors")
    loaded = load_taesd_xl(tmp_path / "taesdxl_decoder.safetensors", "cpu", torch.float32)
    latent = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(latent).sample, model.decode(latent).sample)
    save_file({"9999.weight": torch.zeros(1)}, tmp_path / "bad-taesdxl.safetensors")
    with pytest.raises(ValueError, match="not a TAESD-XL decoder"):
        load_taesd_xl(tmp_path / "bad-taesdxl.safetensors", "cpu", torch.float32)


@pytest.fixture(scope="module")
def taesd_engine(make_tiny_home):
    """An engine whose home has TAESD-XL (random weights, diffusers folder) in models/VAE-approx."""
    home = make_tiny_home(name="taesd-home")
    reference = random_taesd()
    reference.save_pretrained(models_folder(home) / "taesdxl")
    return Engine(ModelCache(home, device="cpu"), app_version="test"), reference


def test_with_taesd_xl_a_draft_preview_costs_no_vae_decode(taesd_engine, tiny_recipe, count_calls):
    engine, reference = taesd_engine
    recipe = tiny_recipe(watermark=False)
    base = engine.models.load_base("tiny")
    with count_calls(decode=base.pipe.vae.decoder, unet=base.pipe.unet) as calls:
        drafts = engine.draft(recipe, 2)
    assert calls["decode"] == 0 and calls["unet"] == 8  # the base's 8 steps, no extra UNet call
    estimates = torch.stack([d.latent.clean_estimate for d in drafts])
    with torch.no_grad():
        expected = base.pipe.image_processor.postprocess(reference.decode(estimates).sample, output_type="pil")
    for draft, image in zip(drafts, expected):
        assert draft.latent.preview == "taesd-xl" and draft.preview.size == (64, 64)
        assert np.abs(pixels(draft.preview) - pixels(image)).max() <= 1
    with count_calls(decode=base.pipe.vae.decoder) as calls:
        full = engine.full_draft_image(drafts[1])
    assert calls["decode"] == 1
    expected_full = decode_latents(base.pipe, drafts[1].latent.clean_estimate[None])[0]
    assert np.array_equal(pixels(full), pixels(expected_full))


def test_refine_counts_stay_exact_with_cheap_previews(engine, tiny_recipe, count_calls):
    """0 base UNet calls and 0 VAE encodes on refine; one VAE decode (the refined image, at full size)."""
    base = engine.models.load_base("tiny")
    refiner = engine.models.load_refiner("tiny", base)
    draft = engine.draft(tiny_recipe(), 1)[0]
    assert draft.latent.noisy and draft.latent.preview == "vae-half-size"
    sizes = []
    hook = base.pipe.vae.decoder.register_forward_hook(lambda _m, inputs, _o: sizes.append(inputs[0].shape[-1]))
    try:
        with count_calls(
            base=base.pipe.unet, refiner=refiner.pipe.unet, encode=base.pipe.vae.encoder, decode=base.pipe.vae.decoder
        ) as calls:
            finished = engine.refine(draft)
    finally:
        hook.remove()
    assert (calls["base"], calls["refiner"], calls["encode"], calls["decode"]) == (0, 2, 0, 1)
    assert sizes == [8] and finished.image.size == (64, 64)  # the refined image: a full-size decode


def test_a_base_run_to_the_end_is_decoded_fully(engine, tiny_recipe):
    draft = engine.draft(tiny_recipe(switch=1.0, refine=None, watermark=False), 1)[0]
    assert draft.latent.clean_estimate is None and draft.latent.preview == "full"
    assert engine.full_draft_image(draft) is draft.preview


def test_derived_pipelines_are_reused_with_a_fresh_scheduler_and_go_with_their_model(make_tiny_home):
    """from_pipe once per source pipeline and class (part of app_over_raw); never keeping a dropped model alive."""
    import gc
    import weakref

    from diffusers import StableDiffusionXLPipeline

    from pipelines.engine.engine import _derive

    cache = ModelCache(make_tiny_home(name="derive-home"), device="cpu")
    base = cache.load_base("tiny")
    first = _derive(StableDiffusionXLPipeline, base.pipe, "Euler")
    again = _derive(StableDiffusionXLPipeline, base.pipe, "DPM++ 2M")
    assert again is first and type(again.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert again.unet is base.pipe.unet and again.vae is base.pipe.vae
    unet = weakref.ref(base.pipe.unet)
    del first, again, base
    cache.release()
    gc.collect()
    assert unet() is None


def test_a_full_decode_asked_for_from_another_thread_waits_for_the_device(engine, tiny_recipe):
    import threading

    draft = engine.draft(tiny_recipe(seed=5), 1)[0]
    done = threading.Event()
    worker = threading.Thread(target=lambda: (engine.full_draft_image(draft), done.set()))
    with engine.device_lock:  # as a running draft or refine holds it
        worker.start()
        assert not done.wait(0.5)
    worker.join(60)
    assert done.is_set()
