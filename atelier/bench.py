"""`atelier bench`: counts and timings of the engine on the tiny model (or any model), as JSON.

Counts (UNet/VAE/text-encoder calls) are exact; timings are medians of interleaved repetitions in
one process, so the engine and plain diffusers see the same machine state.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

from pipelines.engine.engine import Engine
from pipelines.models.loading import ModelCache
from pipelines.recipe import ModelRef, Recipe, RefineSettings


class _Meter:
    """Forward-hook counters and timers on named modules."""

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.calls = {name: 0 for name in modules}
        self.seconds = {name: 0.0 for name in modules}
        self._started: dict[str, float] = {}
        self._handles = []
        for name, module in modules.items():
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name)))

    def _pre(self, name):
        def hook(*_):
            self._started[name] = time.perf_counter()

        return hook

    def _post(self, name):
        def hook(*_):
            self.calls[name] += 1
            self.seconds[name] += time.perf_counter() - self._started[name]

        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


@contextmanager
def _metered(modules: dict[str, torch.nn.Module]) -> Iterator[_Meter]:
    meter = _Meter(modules)
    try:
        yield meter
    finally:
        meter.close()


def _modules(base, refiner) -> dict[str, torch.nn.Module]:
    return {
        "base_unet": base.pipe.unet,
        "refiner_unet": refiner.pipe.unet,
        "vae_decoder": base.pipe.vae.decoder,
        "vae_encoder": base.pipe.vae.encoder,
        "text_encoder": base.pipe.text_encoder,
        "text_encoder_2": base.pipe.text_encoder_2,
    }


def engine_figures(
    home: Path,
    *,
    model: str = "tiny",
    refiner: str = "tiny",
    size: int = 256,
    steps: int = 20,
    drafts: int = 4,
    repeats: int = 5,
    device: str | None = None,
) -> dict[str, Any]:
    cache = ModelCache(home, device=device)
    base = cache.load_base(model)
    ref = cache.load_refiner(refiner, base)
    engine = Engine(cache, app_version="bench")
    recipe = Recipe(
        model=ModelRef(model),
        prompt="a lighthouse on a cliff at dusk, oil painting",
        negative_prompt="blurry",
        seed=1,
        steps=steps,
        width=size,
        height=size,
        refine=RefineSettings(model=ModelRef(refiner)),
        watermark=False,
    )
    figures: dict[str, Any] = {
        "model": model,
        "refiner": refiner,
        "device": str(cache.device),
        "dtype": str(cache.dtype).replace("torch.", ""),
        "size": size,
        "steps": steps,
        "switch": recipe.switch,
        "drafts": drafts,
        "shared_modules_same_objects": {
            "text_encoder_2": ref.pipe.text_encoder_2 is base.pipe.text_encoder_2,
            "vae": ref.pipe.vae is base.pipe.vae,
        },
    }
    engine.draft(recipe, 1)  # warm-up: first calls allocate

    # Exact counts for one request: N drafts, then one of them refined (a prompt not yet cached).
    with _metered(_modules(base, ref)) as meter:
        made = engine.draft(recipe.replace(prompt=recipe.prompt + ", counted"), drafts)
        draft_counts = dict(meter.calls)
        engine.refine(made[0])
    counts = meter.calls
    figures["unet_calls"] = {
        "draft": draft_counts["base_unet"],
        "refine": {"base": counts["base_unet"] - draft_counts["base_unet"], "refiner": counts["refiner_unet"]},
    }
    figures["vae_decodes"] = {
        "draft_batch": draft_counts["vae_decoder"],
        "refine": counts["vae_decoder"] - draft_counts["vae_decoder"],
    }
    figures["vae_encodes"] = counts["vae_encoder"]
    figures["text_encoder_calls"] = {"text_encoder": counts["text_encoder"], "text_encoder_2": counts["text_encoder_2"]}

    # The same work by diffusers directly (the documented one-shot handoff), counted the same way.
    raw_base = StableDiffusionXLPipeline(**base.pipe.components, add_watermarker=False)
    raw_refiner = StableDiffusionXLImg2ImgPipeline(
        **ref.pipe.components, requires_aesthetics_score=True, force_zeros_for_empty_prompt=False, add_watermarker=False
    )

    def raw_draft_and_refine() -> None:
        common = dict(
            prompt=recipe.prompt,
            negative_prompt=recipe.negative_prompt,
            num_inference_steps=steps,
            guidance_scale=recipe.guidance,
        )
        latents = raw_base(
            **common,
            width=size,
            height=size,
            denoising_end=recipe.switch,
            output_type="latent",
            generator=torch.Generator("cpu").manual_seed(1),
        ).images
        raw_refiner(
            **common,
            image=latents,
            denoising_start=recipe.switch,
            output_type="pil",
            generator=torch.Generator("cpu").manual_seed(1),
        )

    def app_draft_and_refine() -> None:
        engine.refine(engine.draft(recipe, 1)[0])

    with _metered(_modules(base, ref)) as meter:
        raw_draft_and_refine()
    figures["unet_calls"]["one_shot_reference"] = {
        "base": meter.calls["base_unet"],
        "refiner": meter.calls["refiner_unet"],
    }

    app_times, raw_times = [], []
    for _ in range(repeats):  # interleaved, so drift in machine state hits both alike
        app_times.append(_timed(app_draft_and_refine))
        raw_times.append(_timed(raw_draft_and_refine))
    figures["app_s_median"] = statistics.median(app_times)
    figures["raw_s_median"] = statistics.median(raw_times)
    figures["app_over_raw"] = figures["app_s_median"] / figures["raw_s_median"]

    # Preview cost: the draft's cheap preview of the clean estimate, against the UNet time of the same draft.
    decode_seconds = []
    real_previews = engine.previews.images

    def timed_previews(pipe, latents):
        start = time.perf_counter()
        try:
            return real_previews(pipe, latents)
        finally:
            decode_seconds.append(time.perf_counter() - start)

    engine.previews.images = timed_previews
    try:
        with _metered({"unet": base.pipe.unet}) as meter:
            engine.draft(recipe, 1)
    finally:
        del engine.previews.images  # the method again
    figures["preview_cost_ratio"] = sum(decode_seconds) / meter.seconds["unet"]

    # What batching buys: N drafts as one batch against N single drafts.
    batched = statistics.median(_timed(lambda: engine.draft(recipe, drafts)) for _ in range(3))
    single = statistics.median(
        _timed(lambda: [engine.draft(recipe.replace(seed=recipe.seed + i), 1) for i in range(drafts)]) for _ in range(3)
    )
    figures["batch_speedup"] = single / batched
    return figures


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- memory of the largest upload (README "Limits") -----------------------------------------------------

# Run in a fresh interpreter, so the figure is this path's own: the largest upload the limits allow
# (MAX_IMAGE_PIXELS of noise, which PNG cannot shrink) through what img2img does with it before the engine
# (size from the header, request, decode, hash, fit to the recipe's size, as the engine's first step).
# VmHWM (Linux), not ru_maxrss: a child's ru_maxrss starts at its parent's peak at fork.
_UPLOAD_SCRIPT = """
import json, resource, sys
from atelier.edit_inputs import image_size, with_inputs
from atelier.requests import GenerationRequest, ModelChoice, build_recipe
from pipelines.sizes import fit_to_bucket
def peak_kb():
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
baseline = peak_kb()
with open(sys.argv[1], "rb") as f:
    data = f.read()
request = GenerationRequest(prompt="bench", source_size=image_size(data), strength=0.5)
recipe, inputs = with_inputs(build_recipe(request, ModelChoice("tiny", "tiny")), source=data)
fitted = fit_to_bucket(inputs.images.source, recipe.width, recipe.height)
peak = peak_kb()
print(json.dumps({"baseline_kb": baseline, "peak_kb": peak}))
"""


def max_upload_peak_rss_mb() -> dict[str, float]:
    """Peak resident memory (MiB) of a fresh process taking the largest allowed img2img upload, with the
    process's resident memory before the upload (`baseline`: the imports) and the upload's size, for scale."""
    import json
    import math
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    from pipelines.recipe import MAX_IMAGE_PIXELS

    side = math.isqrt(MAX_IMAGE_PIXELS)
    with tempfile.TemporaryDirectory(prefix="atelier-bench-upload-") as tmp:
        upload = Path(tmp) / "largest.png"
        pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(upload, compress_level=1)
        script = [sys.executable, "-c", _UPLOAD_SCRIPT, str(upload)]
        found = json.loads(subprocess.run(script, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        size_mb = upload.stat().st_size / 2**20
    return {
        "max_upload_peak_rss_mb": round(found["peak_kb"] / 1024, 1),
        "max_upload_baseline_rss_mb": round(found["baseline_kb"] / 1024, 1),
        "max_upload_file_mb": round(size_mb, 1),
        "max_upload_side": side,
    }


def _postprocess_figures(home: Path) -> dict[str, Any]:
    """Watermark + PNG + hash per 1024² image, the PNG level table, device_busy_fraction (atelier/bench_postprocess.py)."""
    from atelier.bench_postprocess import device_busy_figures, postprocess_figures

    return {**postprocess_figures(), "device_busy": device_busy_figures(home)}


def run_all(
    home: Path | None = None, *, gallery_rows: int = 100_000, ui: bool = True, **engine_kwargs: Any
) -> dict[str, Any]:
    from atelier.bench_sdxl import preview_flops
    from storage.bench import gallery_figures

    with tempfile.TemporaryDirectory(prefix="atelier-bench-") as tmp:
        figures = {"engine": engine_figures(home or Path(tmp) / "home", **engine_kwargs)}
        figures["engine"].update(preview_flops())  # full-size SDXL's, counted on the meta device
        figures["gallery"] = gallery_figures(Path(tmp) / "gallery", rows=gallery_rows)
        figures["postprocess"] = _postprocess_figures(Path(tmp) / "device-busy")
    figures["limits"] = max_upload_peak_rss_mb()
    if ui:
        from atelier.ui_bench import ui_figures  # it starts `atelier serve` in a subprocess

        figures["ui"] = ui_figures(repeats=3)
    return figures
