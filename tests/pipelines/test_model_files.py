"""Weight-file formats by header, the sha256 cache, models-folder layouts and safe names."""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from pipelines.models import model_files
from pipelines.models.model_files import (
    HashCache,
    find_models_root,
    folder_digest,
    read_safetensors_header,
    resolve_inside,
    sniff_format,
)


@pytest.fixture()
def weights(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.arange(6, dtype=torch.float32), "b": torch.ones(2, 2)}, str(path))
    return path


def test_formats_are_judged_by_header_not_suffix(tmp_path, weights):
    zipped, legacy, raw = tmp_path / "z.safetensors", tmp_path / "l.bin", tmp_path / "p.ckpt"
    torch.save({"w": torch.ones(1)}, zipped)
    torch.save({"w": torch.ones(1)}, legacy, _use_new_zipfile_serialization=False)
    raw.write_bytes(pickle.dumps({"w": 1}, protocol=4))
    renamed = tmp_path / "real.ckpt"
    renamed.write_bytes(weights.read_bytes())
    assert [sniff_format(p) for p in (weights, zipped, legacy, raw, renamed)] == [
        "safetensors",
        "torch-zip",
        "pickle",
        "pickle",
        "safetensors",
    ]


@pytest.mark.parametrize("kind", ["torch-zip", "pickle"])
@pytest.mark.parametrize("name", ["model.ckpt", "model.safetensors"])
def test_pickles_are_refused_naming_the_file(tmp_path, kind, name):
    path = tmp_path / name
    torch.save({"w": torch.ones(1)}, path, _use_new_zipfile_serialization=kind == "torch-zip")
    with pytest.raises(ValueError, match="pickle") as error:
        read_safetensors_header(path)
    assert str(path) in str(error.value)


def test_valid_header_is_read(weights):
    header = read_safetensors_header(weights)
    assert header["a"]["shape"] == [6] and header["b"]["dtype"] == "F32"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:-5], "truncated"),
        (lambda b: b + b"extra", "truncated"),
        (lambda b: b[:8] + b"{not json" + b[17:], "not valid JSON"),
        (lambda b: b"\xff" * 64, "not a valid .safetensors"),
        (lambda b: b[:4], "not a valid .safetensors"),
        (lambda b: (10**12).to_bytes(8, "little") + b[8:], "not a valid .safetensors"),
    ],
)
def test_corrupt_and_truncated_files_are_named(weights, damage, message):
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(ValueError, match=message) as error:
        read_safetensors_header(weights)
    assert str(weights) in str(error.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        read_safetensors_header(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="folder"):
        read_safetensors_header(tmp_path)


def test_hash_cache_hashes_once_per_file_version(tmp_path, weights, monkeypatch):
    calls = []
    real = model_files.sha256_of_file
    monkeypatch.setattr(model_files, "sha256_of_file", lambda p: calls.append(p) or real(p))
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()

    assert HashCache(tmp_path).sha256(weights) == expected
    assert HashCache(tmp_path).sha256(weights) == expected  # a new process: read from hashes.json
    assert len(calls) == 1
    stored = json.loads((tmp_path / "cache" / "hashes.json").read_text())
    assert stored[str(weights.resolve())]["sha256"] == expected

    save_file({"a": torch.zeros(6)}, str(weights))  # same name, new content
    assert HashCache(tmp_path).sha256(weights) == hashlib.sha256(weights.read_bytes()).hexdigest() != expected
    assert len(calls) == 2


def test_damaged_hash_cache_is_only_a_lost_speed_up(tmp_path, weights):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "hashes.json").write_text("{broken")
    assert HashCache(tmp_path).sha256(weights) == hashlib.sha256(weights.read_bytes()).hexdigest()


def _diffusers_folder(root):
    (root / "unet").mkdir(parents=True)
    (root / "vae").mkdir()
    (root / "model_index.json").write_text(
        json.dumps(
            {"_class_name": "X", "unet": ["diffusers", "U"], "vae": ["diffusers", "V"], "tokenizer": [None, None]}
        )
    )
    save_file({"w": torch.ones(3)}, str(root / "unet" / "diffusion_pytorch_model.safetensors"))
    save_file({"w": torch.ones(3).half()}, str(root / "unet" / "diffusion_pytorch_model.fp16.safetensors"))
    save_file({"w": torch.zeros(3)}, str(root / "vae" / "diffusion_pytorch_model.safetensors"))
    return root


def test_folder_digest_covers_exactly_the_loaded_weight_files(tmp_path):
    folder = _diffusers_folder(tmp_path / "m")
    cache = HashCache(None)
    plain, fp16 = folder_digest(folder, cache), folder_digest(folder, cache, "fp16")
    lines = "".join(
        f"{name} {hashlib.sha256((folder / name).read_bytes()).hexdigest()}\n"
        for name in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors")
    )
    assert plain == hashlib.sha256(lines.encode()).hexdigest()
    assert fp16 != plain
    (folder / "notes.safetensors").write_bytes(b"x")  # not a component's weights
    assert folder_digest(folder, cache) == plain
    save_file({"w": torch.full((3,), 2.0)}, str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
    assert folder_digest(folder, HashCache(None)) != plain


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.mark.parametrize(
    "layout, folders",
    [
        ("a1111", {"checkpoint": "Stable-diffusion", "lora": "Lora", "controlnet": "ControlNet", "vae": "VAE"}),
        ("comfyui", {"checkpoint": "checkpoints", "lora": "loras", "controlnet": "controlnet", "vae": "vae"}),
    ],
)
def test_models_folder_layouts(tmp_path, layout, folders):
    models = tmp_path / "models"
    _touch(models / folders["checkpoint"] / "sdxl" / "juggernaut.safetensors")
    _touch(models / folders["checkpoint"] / "old.ckpt")
    _touch(models / folders["checkpoint"] / "diffusers-model" / "model_index.json", b"{}")
    _touch(models / folders["checkpoint"] / "diffusers-model" / "unet" / "w.safetensors")
    _touch(models / folders["lora"] / "style.safetensors")
    (models / folders["vae"]).mkdir()

    root = find_models_root(None, tmp_path / "elsewhere", tmp_path)  # finds <dir>/models
    assert root is not None and root.layout == layout and root.root == models.resolve()
    assert root.list_models("checkpoint") == ["diffusers-model", "sdxl/juggernaut.safetensors"]
    assert root.list_models("lora") == ["style.safetensors"]
    assert root.list_models("vae") == [] and root.list_models("controlnet") == []
    expected = models.resolve() / folders["checkpoint"] / "sdxl" / "juggernaut.safetensors"
    assert root.resolve_checkpoint("sdxl/juggernaut") == expected
    assert root.resolve_checkpoint("sdxl/juggernaut.safetensors") == expected
    assert root.resolve("lora", "style") == models.resolve() / folders["lora"] / "style.safetensors"
    with pytest.raises(ValueError, match="no checkpoint named 'missing'"):
        root.resolve_checkpoint("missing")
    with pytest.raises(ValueError, match="no folder for controlnet"):
        root.resolve("controlnet", "x")
    with pytest.raises(ValueError, match="model kind"):
        root.list_models("embedding")


def test_folder_without_a_layout_is_not_a_models_root(tmp_path):
    _touch(tmp_path / "models" / "tiny" / "base" / "model_index.json")
    assert find_models_root(tmp_path, tmp_path / "models", None, "") is None


@pytest.mark.parametrize(
    "name",
    [
        "../secret.safetensors",
        "a/../../secret.safetensors",
        "/etc/passwd",
        "~/x",
        "..",
        "",
        "  ",
        "a\x00b",
        "..\\secret.safetensors",
        "C:/x",
    ],
)
def test_names_never_reach_outside_their_folder(tmp_path, name):
    folder = tmp_path / "models" / "Lora"
    folder.mkdir(parents=True)
    _touch(tmp_path / "models" / "secret.safetensors")
    with pytest.raises(ValueError):
        resolve_inside(folder, name)


def test_symlinks_leading_out_are_refused_and_inside_ones_allowed(tmp_path):
    folder = tmp_path / "models" / "Lora"
    _touch(tmp_path / "secret.safetensors")
    _touch(folder / "real.safetensors")
    (folder / "escape.safetensors").symlink_to(tmp_path / "secret.safetensors")
    (folder / "alias.safetensors").symlink_to(folder / "real.safetensors")
    (folder / "outdir").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="outside"):
        resolve_inside(folder, "escape.safetensors")
    with pytest.raises(ValueError, match="outside"):
        resolve_inside(folder, "outdir/secret.safetensors")
    assert resolve_inside(folder, "alias.safetensors") == (folder / "real.safetensors").resolve()
    # The folder itself may be a link (models kept on another disk).
    (tmp_path / "linked").symlink_to(folder)
    assert resolve_inside(tmp_path / "linked", "real.safetensors") == (folder / "real.safetensors").resolve()
