"""`atelier models`: every kind of model file in an A1111-layout models folder, with its detected kind and
variant, hashes as A1111/Civitai write them (checked against hashlib here), and why a file is unusable."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from atelier.cli import main
from pipelines.models.controlnet_layout import controlnet_to_original
from pipelines.models.single_file import VAE, write_single_file


def autov3(path) -> str:
    data = path.read_bytes()
    return hashlib.sha256(data[8 + struct.unpack("<Q", data[:8])[0] :]).hexdigest()


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_model_dir):
    from diffusers import ControlNetModel, UNet2DConditionModel

    home = tmp_path_factory.mktemp("home")
    models = home / "models"
    for sub in ("Stable-diffusion", "Lora", "ControlNet", "VAE", "ESRGAN"):
        (models / sub).mkdir(parents=True)
    sd = models / "Stable-diffusion"
    write_single_file(tiny_model_dir / "base", sd / "tiny-base.safetensors")
    write_single_file(tiny_model_dir / "refiner", sd / "tiny-refiner.safetensors")
    shutil.copytree(tiny_model_dir / "base", sd / "tiny-folder")
    state = load_file(sd / "tiny-base.safetensors")
    conv_in = "model.diffusion_model.input_blocks.0.0.weight"
    state[conv_in] = torch.cat([state[conv_in], torch.zeros(32, 5, 3, 3)], dim=1)  # 9 channels: inpainting
    save_file(state, str(sd / "inpaint.safetensors"))
    (sd / "cut.safetensors").write_bytes((sd / "tiny-base.safetensors").read_bytes()[:-1000])
    vae = {k: v for k, v in state.items() if k.startswith(VAE)}  # the checkpoint's own, original layout
    save_file(vae, str(models / "VAE" / "tiny-vae.safetensors"))
    key = "lora_unet_down_blocks_1_attentions_0_proj_in"
    lora = {f"{key}.lora_down.weight": torch.ones(4, 64), f"{key}.lora_up.weight": torch.ones(64, 4)}
    save_file(lora, str(models / "Lora" / "style.safetensors"), metadata={"ss_note": "x"})
    (models / "Lora" / "pickled.safetensors").write_bytes(b"\x80\x04\x95" + b"\0" * 64)
    controlnet = ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(tiny_model_dir / "base" / "unet"))
    original = controlnet_to_original(controlnet.state_dict(), dict(controlnet.config))
    save_file({k: v.contiguous() for k, v in original.items()}, str(models / "ControlNet" / "canny-a1111.safetensors"))
    save_file({"body.0.weight": torch.ones(3, 3, 3, 3)}, str(models / "ESRGAN" / "4x-tiny.safetensors"))
    return home


def listing(home, capsys, *extra):
    assert main(["models", "--home", str(home), "--json", *extra]) == 0
    found = json.loads(capsys.readouterr().out)
    return {entry["name"]: entry for entry in found["models"]}, found


def test_every_kind_is_listed_with_variant_hashes_and_problems(home, capsys, monkeypatch):
    monkeypatch.delenv("ATELIER_MODELS", raising=False)
    entries, found = listing(home, capsys)
    assert found["models_folder"] == str((home / "models").resolve())
    summary = {name: (e["kind"], e["variant"], e["usable"]) for name, e in entries.items()}
    tiny = "SDXL-family UNet (transformer depths [0, 1], middle 1)"
    assert summary == {
        "tiny-base": ("checkpoint", tiny, True),
        "tiny-refiner": ("refiner", tiny, True),
        "tiny-folder": ("checkpoint", "StableDiffusionXLPipeline folder", True),
        "inpaint": ("checkpoint", tiny + " inpainting", False),
        "cut": ("checkpoint", None, False),
        "tiny-vae": ("vae", "SDXL-family VAE (original layout)", True),
        "style": ("lora", "kohya LoRA (1 layers)", True),
        "pickled": ("lora", None, False),
        "canny-a1111": ("controlnet", "ControlNet (original A1111 layout, converted on load)", True),
        "4x-tiny": ("upscaler", "ESRGAN-family upscaler (spandrel)", True),
    }
    models = home / "models"
    base_sha = hashlib.sha256((models / "Stable-diffusion" / "tiny-base.safetensors").read_bytes()).hexdigest()
    assert (entries["tiny-base"]["sha256"], entries["tiny-base"]["autov2"]) == (base_sha, base_sha[:10])
    lora = models / "Lora" / "style.safetensors"
    assert entries["style"]["autov3"] == autov3(lora)[:12] and entries["style"]["autov2"] is None
    assert entries["style"]["sha256"] == hashlib.sha256(lora.read_bytes()).hexdigest()
    assert "truncated" in entries["cut"]["problem"] and "pickle" in entries["pickled"]["problem"]
    assert "inpainting checkpoint (9 input channels)" in entries["inpaint"]["problem"]


def test_hashes_are_cached_and_no_hash_computes_none(home, capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("ATELIER_MODELS", raising=False)
    first, _ = listing(home, capsys)
    cache = home / "cache" / "hashes.json"
    assert cache.exists()
    again, _ = listing(home, capsys, "--no-hash")  # from the cache: nothing hashed again
    assert {n: e["sha256"] for n, e in again.items()} == {n: e["sha256"] for n, e in first.items()}
    fresh = tmp_path / "fresh-home"
    shutil.copytree(home / "models", fresh / "models", symlinks=True)
    unhashed, _ = listing(fresh, capsys, "--no-hash")
    assert all(e["sha256"] is None and e["autov3"] is None for e in unhashed.values())
    assert not (fresh / "cache" / "hashes.json").exists()


def test_text_output_names_the_unusable_and_no_folder(home, capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("ATELIER_MODELS", raising=False)
    assert main(["models", "--home", str(home)]) == 0
    text = capsys.readouterr().out
    assert "lora       style  —  kohya LoRA (1 layers)  [autov3 " in text
    assert "unusable: " in text and "cut.safetensors: truncated" in text
    assert main(["models", "--home", str(tmp_path / "empty")]) == 0
    assert "no models folder found" in capsys.readouterr().out
