"""`atelier bench --full-size`: the engine on SDXL 1.0's real architecture (random weights) at 1024².

The base and refiner are built from the shipped configs (atelier/bench_sdxl.py): no download, no file.
One request is measured as a user makes it — 4 drafts, then one of them refined — through the engine
itself, plus the full VAE decode of a draft (on demand), a draft's cheap preview and the post-processing of
the refined image. On CUDA it runs in fp16 with the SDXL VAE's own force_upcast (the fp16-fix behaviour:
decode in fp32 unless the VAE is known to be fp16-safe), reports peak VRAM, and with `compile`
compiles both UNets (channels_last, torch.compile) and reports compile time and speedup. `tiny` runs the
same code on the tiny model at 64² (CPU), so the test suite keeps it working. Figures are written to
`output` after each phase, so a run stopped by a time limit still leaves what it measured.
"""

from __future__ import annotations

import datetime
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.engine.engine import Engine, StepInfo
from pipelines.models.loading import LoadedModel, ModelCache
from pipelines.provenance.png_metadata import encode_png
from pipelines.provenance.watermark import apply_watermark
from pipelines.recipe import ModelRef, Recipe, RefineSettings

BASE_NAME, REFINER_NAME = "sdxl-1.0-random-weights", "sdxl-1.0-refiner-random-weights"
FULL_SIZE, TINY_SIZE = 1024, 64
PROMPT = "a lighthouse on a cliff at dusk, oil painting"


class _HeldModels(ModelCache):
    """A ModelCache serving pipelines already built in memory, under fixed names (nothing to resolve)."""

    def __init__(self, home: Path, device: torch.device, dtype: str, base: Any, refiner: Any) -> None:
        super().__init__(home, device=str(device), dtype=dtype)
        self._held_base = LoadedModel(base, ModelRef(BASE_NAME), "memory")
        self._held_refiner = LoadedModel(refiner, ModelRef(REFINER_NAME), "memory")

    def load_base(self, spec: str) -> LoadedModel:
        if spec != BASE_NAME:
            raise ValueError(f"model: this benchmark holds only {BASE_NAME!r} (got {spec!r})")
        return self._held_base

    def load_refiner(self, spec: str, base: LoadedModel) -> LoadedModel:
        if spec != REFINER_NAME:
            raise ValueError(f"refine.model: this benchmark holds only {REFINER_NAME!r} (got {spec!r})")
        return self._held_refiner


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(device: torch.device, dtype: torch.dtype, tiny: bool, home: Path) -> tuple[Any, Any]:
    from diffusers.utils import logging as diffusers_logging

    if tiny:  # the tiny random-weight SDXL (pipelines/models/tiny_model.py), loaded the usual way
        cache = ModelCache(home, device=str(device), dtype="fp32")
        base = cache.load_base("tiny")
        return base.pipe, cache.load_refiner("tiny", base).pipe
    from atelier.bench_sdxl import build_sdxl

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its note on casting with .to() is about loaded fp32 weights
    try:
        return build_sdxl(device, dtype)
    finally:
        diffusers_logging.set_verbosity(verbosity)


class _DecodeCheck:
    """Watches the VAE decoder's output: NaN/inf anywhere, the dtype it ran in."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        self.finite, self.dtypes = True, set()
        self._handle = decoder.register_forward_hook(self._hook)

    def _hook(self, _module, _inputs, output) -> None:
        self.finite = self.finite and bool(torch.isfinite(output).all())
        self.dtypes.add(str(output.dtype).replace("torch.", ""))

    def close(self) -> None:
        self._handle.remove()


def _timed(device: torch.device, run: Callable[[], Any]) -> tuple[Any, float]:
    _sync(device)
    start = time.perf_counter()
    result = run()
    _sync(device)
    return result, time.perf_counter() - start


def _rate(times: list[float]) -> float | None:
    """Steps per second between the first and the last step's end (the steady state, no set-up)."""
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None


def measure_request(engine: Engine, recipe: Recipe, drafts: int) -> dict[str, Any]:
    """One request as a user makes it: `drafts` drafts, one refined; then the on-demand work around it."""
    device = engine.models.device
    steps: dict[str, list[float]] = {"base": [], "refiner": []}

    def on_step(info: StepInfo) -> None:
        _sync(device)
        steps[info.stage].append(time.perf_counter())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    made = engine.draft(recipe, drafts, on_step=on_step)
    _sync(device)
    drafted = time.perf_counter()
    finished = engine.refine(made[0], on_step=on_step)
    _sync(device)
    refined = time.perf_counter()
    full, decode_s = _timed(device, lambda: engine.full_draft_image(made[-1]))
    base = engine.models.load_base(recipe.model.name).pipe
    estimate = made[-1].latent.clean_estimate[None].to(device)
    _, preview_s = _timed(device, lambda: engine.previews.images(base, estimate))
    _, postprocess_s = _timed(device, lambda: encode_png(apply_watermark(finished.image)[0], finished.recipe))
    return {
        "drafts_s": drafted - start,
        "refine_s": refined - drafted,
        "end_to_end_s": refined - start,
        "first_step_preview_s": steps["base"][0] - start if steps["base"] else None,
        "draft_previews_s": drafted - start,  # every draft's preview is ready when the draft call returns
        "base_it_per_s": _rate(steps["base"]),  # one step of the whole batch of drafts
        "refiner_it_per_s": _rate(steps["refiner"]),
        "draft_images_per_s": drafts / (drafted - start),  # _median_run: from the median drafts_s
        "vae_decode_s": decode_s,  # the full decode of one draft (on demand) at this size
        "preview_decode_s": preview_s,  # the cheap preview of one draft
        "preview_kind": made[0].latent.preview,
        "postprocess_s": postprocess_s,  # watermark + PNG encode of the refined image (CPU)
        "peak_vram_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "_full_image": full,
        "_estimate": estimate,
    }


def _image_checks(image: Any, check: _DecodeCheck, vae: Any) -> dict[str, Any]:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    return {
        "decode_finite": check.finite,  # no NaN/inf out of the VAE decoder in any decode
        "decode_not_black": bool(pixels.max() > 8.0),
        "decode_dtypes": sorted(check.dtypes),
        "vae_dtype": str(vae.dtype).replace("torch.", ""),
        "vae_force_upcast": bool(vae.config.force_upcast),
    }


@torch.no_grad()
def _direct_fp16_decode_finite(vae: Any, latent: torch.Tensor) -> bool | None:
    """An fp16-fix VAE decodes in fp16 (force_upcast False): does this VAE stay finite that way?"""
    if vae.dtype != torch.float16:
        return None
    out = vae.decode(latent.to(vae.device, torch.float16) / vae.config.scaling_factor, return_dict=False)[0]
    return bool(torch.isfinite(out).all())


def _compile_unets(pipes: tuple[Any, Any], backend: str) -> None:
    for pipe in pipes:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.unet.compile(backend=backend, dynamic=False)  # in place: derived pipelines share the module


def _public(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if not k.startswith("_")}


def full_size_figures(
    *,
    device: str | None = None,
    tiny: bool = False,
    compile: bool = False,
    compile_backend: str = "inductor",
    drafts: int = 4,
    steps: int = 20,
    repeats: int = 2,
    output: Path | None = None,
) -> dict[str, Any]:
    """The figures (see the module text); also written to `output` (JSON) after each phase."""
    chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if chosen.type == "cuda" else torch.float32
    size = TINY_SIZE if tiny else FULL_SIZE
    figures: dict[str, Any] = {
        "complete": False,
        "architecture": "tiny" if tiny else "sdxl-1.0 base + refiner (random weights, shipped configs)",
        "device": str(chosen),
        "gpu": torch.cuda.get_device_name(chosen) if chosen.type == "cuda" else None,
        "dtype": str(dtype).replace("torch.", ""),
        "size": size,
        "drafts": drafts,
        "steps": steps,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    write = _writer(output, figures)
    with tempfile.TemporaryDirectory(prefix="atelier-full-size-") as home:
        (base, refiner), figures["build_s"] = _timed(chosen, lambda: _build(chosen, dtype, tiny, Path(home)))
        models = _HeldModels(Path(home), chosen, "fp16" if dtype == torch.float16 else "fp32", base, refiner)
        engine = Engine(models, app_version="bench-full-size")
        recipe = Recipe(
            model=ModelRef(BASE_NAME),
            prompt=PROMPT,
            seed=1,
            steps=steps,
            width=size,
            height=size,
            refine=RefineSettings(model=ModelRef(REFINER_NAME)),
            watermark=False,
        )
        figures["params_billion"] = {
            "base_unet": sum(p.numel() for p in base.unet.parameters()) / 1e9,
            "refiner_unet": sum(p.numel() for p in refiner.unet.parameters()) / 1e9,
        }
        write()
        figures.update(_eager_phase(engine, recipe, drafts, repeats))
        write()
        if compile:
            figures["compiled"] = _compiled_phase(engine, recipe, drafts, repeats, compile_backend, figures["eager"])
        figures["complete"] = True
        write()
    return figures


def _eager_phase(engine: Engine, recipe: Recipe, drafts: int, repeats: int) -> dict[str, Any]:
    """A warm-up request (2 steps, the same batch), then `repeats` measured ones; the numeric checks."""
    base = engine.models.load_base(recipe.model.name).pipe
    device = engine.models.device
    check = _DecodeCheck(base.vae.decoder)
    try:
        _, warm_up_s = _timed(device, lambda: measure_request(engine, recipe.replace(steps=2), drafts))
        runs = [measure_request(engine, recipe, drafts) for _ in range(repeats)]
        checks = _image_checks(runs[-1]["_full_image"], check, base.vae)
    finally:
        check.close()
    estimate = runs[-1]["_estimate"]
    checks["latents_finite"] = bool(torch.isfinite(estimate).all())  # the UNet side, for telling them apart
    checks["fp16_direct_decode_finite"] = _direct_fp16_decode_finite(base.vae, estimate)
    return {"warm_up_s": warm_up_s, "eager": _median_run(runs), "checks": checks}


def _compiled_phase(
    engine: Engine, recipe: Recipe, drafts: int, repeats: int, backend: str, eager: dict[str, Any]
) -> dict[str, Any]:
    """Both UNets compiled (channels_last); the first request pays the compilation."""
    device = engine.models.device
    base = engine.models.load_base(recipe.model.name)
    pipes = (base.pipe, engine.models.load_refiner(recipe.refine.model.name, base).pipe)
    _, call_s = _timed(device, lambda: _compile_unets(pipes, backend))
    first = measure_request(engine, recipe, drafts)  # compiles the base at its batch, the refiner at its own
    compiled = _median_run([measure_request(engine, recipe, drafts) for _ in range(repeats)])
    return {
        **compiled,
        "backend": backend,
        "compile_call_s": call_s,
        "compile_s": first["end_to_end_s"] - compiled["end_to_end_s"],
        "speedup": eager["end_to_end_s"] / compiled["end_to_end_s"],
        "base_step_speedup": _ratio(compiled["base_it_per_s"], eager["base_it_per_s"]),
    }


def run_from_args(args: Any) -> dict[str, Any]:
    """`atelier bench --full-size [--tiny] [--device D] [--compile] [--steps N] [--output PATH]`."""
    if args.steps < 2:
        raise ValueError(f"steps: must be at least 2 for the full-size benchmark (got {args.steps})")
    return full_size_figures(
        device=args.device,
        tiny=args.tiny,
        compile=args.compile,
        compile_backend=args.compile_backend,
        steps=args.steps,
        output=Path(args.output) if args.output else None,
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each timing's median over the runs (other values from the last run)."""
    result = _public(runs[-1])
    for key, value in result.items():
        values = [r[key] for r in runs if isinstance(r[key], float)]
        if isinstance(value, float) and len(values) == len(runs):
            result[key] = statistics.median(values)
    made = runs[-1]["draft_images_per_s"] * runs[-1]["drafts_s"]  # the number of drafts
    result["draft_images_per_s"] = made / result["drafts_s"]
    return result


def _writer(output: Path | None, figures: dict[str, Any]) -> Callable[[], None]:
    def write() -> None:
        if output is None:
            return
        output.parent.mkdir(parents=True, exist_ok=True)
        temporary = output.with_name(f".{output.name}.partial")
        temporary.write_text(json.dumps(figures, indent=2))
        temporary.replace(output)  # whole or not at all, even when the run is stopped mid-way

    return write
