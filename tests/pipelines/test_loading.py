"""ModelCache: every spec form loads through one path, shares modules, caches, and fails in words."""

from __future__ import annotations

import gc
import hashlib
import shutil
import weakref

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.models.loading import ModelCache, pick_device, pick_dtype
from pipelines.models.model_files import HashCache, folder_digest


@pytest.fixture(scope="module")
def tiny_files(atelier_home):
    """The session's tiny model (home/models/tiny) plus its single-file forms."""
    from pipelines.models.single_file import write_single_file
    from pipelines.models.tiny_model import write_tiny_model

    root = atelier_home / "models" / "tiny"
    base, refiner = write_tiny_model(root)
    files = root.parent / "tiny-files"
    files.mkdir(exist_ok=True)
    for name, folder in (("base", base), ("refiner", refiner)):
        if not (files / f"{name}.safetensors").exists():
            write_single_file(folder, files / f"{name}.safetensors")
            shutil.copytree(folder, files / name)  # the same-stem config folder beside the file
    return root, files


@pytest.fixture()
def cache(atelier_home, tiny_files):
    return ModelCache(atelier_home, device="cpu")


def _latents(pipe, seed=3):
    return pipe(
        "a red fox",
        num_inference_steps=3,
        height=64,
        width=64,
        output_type="latent",
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images


def test_tiny_base_and_refiner(cache, tiny_files, atelier_home):
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    base = cache.load_base("tiny")
    refiner = cache.load_refiner("tiny", base)
    assert type(base.pipe) is StableDiffusionXLPipeline and type(refiner.pipe) is StableDiffusionXLImg2ImgPipeline
    assert (base.source, refiner.source) == ("tiny", "tiny")
    assert refiner.pipe.text_encoder_2 is base.pipe.text_encoder_2
    assert refiner.pipe.vae is base.pipe.vae
    assert refiner.pipe.unet is not base.pipe.unet and refiner.pipe.config.requires_aesthetics_score
    assert base.pipe.watermark is None and refiner.pipe.watermark is None
    root = atelier_home / "models" / "tiny"
    assert base.ref.name == "tiny" and base.ref.sha256 == folder_digest(root / "base", HashCache(None))
    assert refiner.ref.sha256 == folder_digest(root / "refiner", HashCache(None))
    assert cache.load_base("tiny") is base and cache.load_refiner("tiny", base) is refiner


def test_tiny_load_equals_diffusers_direct(cache, tiny_files):
    from diffusers import StableDiffusionXLPipeline

    direct = StableDiffusionXLPipeline.from_pretrained(tiny_files[0] / "base", add_watermarker=False)
    assert torch.equal(_latents(cache.load_base("tiny").pipe), _latents(direct))


def test_single_file_base_and_refiner_equal_the_folders(cache, tiny_files):
    root, files = tiny_files
    folder_base = cache.load_base(str(root / "base"))
    folder_refiner = cache.load_refiner(str(root / "refiner"), folder_base)
    expected_base, image = (
        _latents(folder_base.pipe),
        torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)),
    )
    expected_refined = folder_refiner.pipe(
        "a red fox",
        image=image,
        strength=0.6,
        num_inference_steps=4,
        output_type="latent",
        generator=torch.Generator().manual_seed(2),
    ).images
    assert folder_base.source == "folder"

    base = cache.load_base(str(files / "base.safetensors"))
    refiner = cache.load_refiner(str(files / "refiner.safetensors"), base)
    assert (base.source, refiner.source) == ("single_file", "single_file")
    assert base.ref.sha256 == hashlib.sha256((files / "base.safetensors").read_bytes()).hexdigest()
    assert refiner.pipe.vae is base.pipe.vae and refiner.pipe.text_encoder_2 is base.pipe.text_encoder_2
    assert torch.equal(_latents(base.pipe), expected_base)
    refined = refiner.pipe(
        "a red fox",
        image=image,
        strength=0.6,
        num_inference_steps=4,
        output_type="latent",
        generator=torch.Generator().manual_seed(2),
    ).images
    assert torch.equal(refined, expected_refined)


def test_refining_with_the_base_itself_shares_every_module(cache):
    root = cache.home / "models" / "tiny" / "base"
    base = cache.load_base(str(root))
    as_refiner = cache.load_refiner(str(root), base)
    assert type(as_refiner.pipe).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert all(getattr(as_refiner.pipe, n) is getattr(base.pipe, n) for n in ("unet", "vae", "text_encoder"))
    assert as_refiner.ref == base.ref


def test_another_base_replaces_the_previous_and_release_frees_memory(cache):
    first = cache.load_base("tiny")
    refiner = cache.load_refiner("tiny", first)
    unet = weakref.ref(first.pipe.unet)
    second = cache.load_base(str(cache.home / "models" / "tiny" / "base"))
    assert second.pipe.unet is not first.pipe.unet
    with pytest.raises(ValueError, match="load_base first"):
        cache.load_refiner("tiny", first)  # its base is gone
    del first, refiner
    gc.collect()
    assert unet() is None  # the cache kept no reference to the replaced model
    cache.release()
    again = cache.load_base("tiny")
    assert again.pipe.unet is not second.pipe.unet


def test_failed_spec_keeps_the_loaded_model(cache, tmp_path):
    base = cache.load_base("tiny")
    with pytest.raises(ValueError):
        cache.load_base(str(tmp_path / "missing.safetensors"))
    assert cache.load_base("tiny") is base


@pytest.mark.parametrize("layout", ["a1111", "comfyui"])
def test_names_from_the_models_folder(tmp_path, tiny_files, layout):
    _, files = tiny_files
    home = tmp_path / "home"
    checkpoints = home / "models" / ("Stable-diffusion" if layout == "a1111" else "checkpoints")
    checkpoints.mkdir(parents=True)
    shutil.copyfile(files / "base.safetensors", checkpoints / "mine.safetensors")
    shutil.copytree(files / "base", checkpoints / "mine")  # config folder beside it
    shutil.copytree(files / "base", checkpoints / "sub" / "folder-model")
    cache = ModelCache(home, device="cpu")
    loaded = cache.load_base("mine.safetensors")
    assert loaded.source == "single_file" and loaded.ref.name == "mine.safetensors"
    assert cache.load_base("mine").source == "folder"  # names are exact: as list_models shows them
    assert cache.load_base("sub/folder-model").source == "folder"
    (home / "outside.safetensors").write_bytes((files / "base.safetensors").read_bytes())
    with pytest.raises(ValueError, match="must be a name inside"):
        cache.load_base("../../outside.safetensors")
    (checkpoints / "link.safetensors").symlink_to(home / "outside.safetensors")
    with pytest.raises(ValueError, match="outside"):
        cache.load_base("link")
    with pytest.raises(ValueError, match=r"not found: give 'tiny', .* or a name in"):
        cache.load_base("nothing-here")


def test_hub_repo_from_the_local_cache_offline(tmp_path, tiny_files, monkeypatch):
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-sdxl"
    shutil.copytree(tiny_files[0] / "base", repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = ModelCache(tmp_path / "home", device="cpu")
    loaded = cache.load_base("someone/tiny-sdxl")
    assert loaded.source == "hub" and loaded.ref.revision == revision
    assert loaded.ref.sha256 == folder_digest(repo / "snapshots" / revision, HashCache(None))
    with pytest.raises(ValueError, match="not in the Hugging Face cache and HF_HUB_OFFLINE=1"):
        cache.load_base("stabilityai/stable-diffusion-xl-base-1.0")


def test_bad_files_are_refused_in_words(cache, tiny_files, tmp_path):
    _, files = tiny_files
    pickled = tmp_path / "model.ckpt"
    torch.save({"w": torch.ones(2)}, pickled)
    renamed = tmp_path / "renamed.safetensors"
    shutil.copyfile(pickled, renamed)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((files / "base.safetensors").read_bytes()[:100_000])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 1000)
    odd = tmp_path / "odd.safetensors"  # tiny weights with a middle block diffusers cannot build
    save_file({k: v for k, v in load_file(files / "base.safetensors").items() if ".middle_block.1." not in k}, str(odd))
    cases = {
        pickled: "pickle checkpoint",
        renamed: "pickle checkpoint",
        truncated: "truncated",
        garbage: "not a valid .safetensors",
        odd: "odd.safetensors: an SDXL-like base checkpoint that Atelier cannot build: the middle block has 2",
        tmp_path / "gone.safetensors": "not found",
        tmp_path: "not a diffusers model",
    }
    for path, message in cases.items():
        with pytest.raises(ValueError, match=message):
            cache.load_base(str(path))
    base = cache.load_base("tiny")
    with pytest.raises(ValueError, match="cannot build"):
        cache.load_refiner(str(odd), base)


def test_a_lone_single_file_loads_from_its_own_shapes(cache, tiny_files, tmp_path):
    """No config folder beside it: the architecture comes from the file (the tiny model's, not SDXL 1.0's)."""
    folder, files = tiny_files
    lone = tmp_path / "lone.safetensors"
    shutil.copyfile(files / "base.safetensors", lone)
    loaded = cache.load_base(str(lone))
    assert loaded.source == "single_file" and list(loaded.pipe.unet.config.block_out_channels) == [32, 64]
    reference = load_file(folder / "base" / "unet" / "diffusion_pytorch_model.safetensors")
    state = loaded.pipe.unet.state_dict()
    assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in reference)


def test_folder_with_pickle_weights_is_refused(cache, tiny_files, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_files[0] / "base", folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({}, folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match=r"no .safetensors weights \(only pickle weights: diffusion_pytorch_model.bin"):
        cache.load_base(str(folder))


def test_device_and_dtype_choice():
    cpu = pick_device("cpu")
    assert cpu.type == "cpu" and pick_device(None).type in ("cpu", "cuda", "mps")
    assert pick_dtype(cpu, None) == torch.float32
    assert pick_dtype(torch.device("cuda"), None) == torch.float16
    assert pick_dtype(torch.device("mps"), "auto") == torch.float16
    assert pick_dtype(cpu, "bf16") == torch.bfloat16 and pick_dtype(torch.device("cuda"), "bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 is not supported on the CPU"):
        pick_dtype(cpu, "fp16")
    with pytest.raises(ValueError, match="dtype: must be"):
        pick_dtype(cpu, "int8")
    with pytest.raises(ValueError, match="device: must be"):
        pick_device("toaster")


def test_bf16_on_cpu_loads_in_bf16(atelier_home, tiny_files):
    loaded = ModelCache(atelier_home, device="cpu", dtype="bf16").load_base("tiny")
    assert loaded.pipe.unet.dtype == torch.bfloat16 and loaded.pipe.text_encoder_2.dtype == torch.bfloat16


def test_refiner_that_does_not_fit_the_base_is_refused(cache, tiny_files, tmp_path):
    import json

    wide = tmp_path / "wide-refiner"
    shutil.copytree(tiny_files[0] / "refiner", wide)
    config = json.loads((wide / "unet" / "config.json").read_text())
    config["cross_attention_dim"] = 64
    (wide / "unet" / "config.json").write_text(json.dumps(config))
    base = cache.load_base("tiny")
    with pytest.raises(ValueError, match="does not fit the loaded base"):
        cache.load_refiner(str(wide), base)
