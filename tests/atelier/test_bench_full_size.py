"""The full-size benchmark: SDXL 1.0's real architecture from the shipped configs (on the meta device here),
preview FLOPs against a draft's UNet work, and scripts/gpu-check.sh run end to end at tiny size on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_sdxl_base_and_refiner_architecture_is_built_without_allocating_weights():
    from atelier.bench_sdxl import build_sdxl

    base, refiner = build_sdxl("meta", torch.float16)
    # SDXL 1.0's published sizes: base UNet 2.567 B, refiner UNet 2.260 B, CLIP ViT-L, OpenCLIP bigG, the VAE.
    assert parameters(base.unet) == 2_567_463_684
    assert parameters(refiner.unet) == 2_259_526_660
    assert (parameters(base.text_encoder), parameters(base.text_encoder_2)) == (123_060_480, 694_659_840)
    assert parameters(base.vae) == 83_653_863
    assert refiner.vae is base.vae and refiner.text_encoder_2 is base.text_encoder_2
    assert base.unet.device.type == "meta" and base.unet.dtype == torch.float16
    assert base.vae.config.force_upcast  # the SDXL VAE decodes in fp32 unless it is the fp16-fix one


def test_a_drafts_preview_costs_under_five_percent_of_its_unet_work_at_1024():
    from atelier.bench_sdxl import base_steps, preview_flops

    figures = preview_flops()
    basis = figures["preview_flops_basis"]
    assert basis["base_unet_steps"] == base_steps(20, 0.8) == 16
    assert 12 < basis["unet_step_tflops"] < 15  # one guided step (2 samples) of SDXL's UNet at 1024²
    assert 9 < basis["vae_decode_tflops"] < 12
    # The half-size decode is a quarter of the work (a little less: no attention at full size).
    assert 0.2 < basis["half_size_decode_tflops"] / basis["vae_decode_tflops"] <= 0.25
    assert figures["preview_flops_ratio_1024"] <= 0.05
    assert figures["preview_flops_ratio_1024_taesd"] < figures["preview_flops_ratio_1024"]
    assert figures["full_decode_flops_ratio_1024"] > 3 * figures["preview_flops_ratio_1024"]


@pytest.fixture(scope="module")
def gpu_check_figures(tmp_path_factory):
    output = tmp_path_factory.mktemp("gpu-check") / "figures.json"
    env = {
        **os.environ,
        "ATELIER_SKIP_INSTALL": "1",
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_TINY": "1",
        "GPU_CHECK_COMPILE_BACKEND": "eager",  # dynamo without a C++ toolchain: the compile path, quickly
        "ATELIER_HOME": str(tmp_path_factory.mktemp("gpu-check-home")),
    }
    result = subprocess.run(
        ["bash", "scripts/gpu-check.sh", str(output)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(output.read_text())


def test_gpu_check_writes_one_complete_json_at_tiny_size(gpu_check_figures):
    figures = gpu_check_figures
    assert figures["complete"] is True
    assert (figures["device"], figures["gpu"], figures["dtype"], figures["size"]) == ("cpu", None, "float32", 64)
    assert (figures["drafts"], figures["steps"], figures["architecture"]) == (4, 20, "tiny")
    eager = figures["eager"]
    for key in ("drafts_s", "refine_s", "vae_decode_s", "preview_decode_s", "postprocess_s", "first_step_preview_s"):
        assert 0 < eager[key] < 60, key
    assert eager["end_to_end_s"] == pytest.approx(eager["drafts_s"] + eager["refine_s"], rel=0.25)  # medians
    assert eager["first_step_preview_s"] < eager["drafts_s"]
    assert eager["base_it_per_s"] > 0 and eager["refiner_it_per_s"] > 0
    assert eager["draft_images_per_s"] == pytest.approx(4 / eager["drafts_s"], rel=1e-9)
    assert eager["preview_kind"] == "vae-half-size" and eager["peak_vram_gib"] is None
    checks = figures["checks"]
    assert checks["decode_finite"] and checks["decode_not_black"] and checks["latents_finite"]
    assert checks["vae_force_upcast"] is True and checks["fp16_direct_decode_finite"] is None  # fp32 on CPU
    compiled = figures["compiled"]
    assert compiled["backend"] == "eager" and compiled["compile_s"] > 0 and compiled["speedup"] > 0
    assert compiled["end_to_end_s"] > 0


def test_full_size_options_need_full_size():
    result = subprocess.run(
        [str(ROOT / ".venv/bin/atelier"), "bench", "--compile"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0 and "--full-size" in result.stderr
