"""A1111 / Civitai hashes: AutoV3 for LoRAs in "Lora hashes", AutoV2 for "Model hash", and an A1111
infotext's LoRA hashes finding the local files again (by AutoV3, whatever the file is called here)."""

from __future__ import annotations

import hashlib
import io
import struct

import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

from pipelines.models.lora import LoraLibrary
from pipelines.models.model_files import HashCache, autov3_of_file
from pipelines.provenance.png_metadata import a1111_parameters, parse_a1111_parameters, read_png, recipe_from_a1111
from pipelines.recipe import LoraRef, ModelRef, Recipe


def write_lora(path, seed: int, note: str = "first") -> None:
    """A small kohya-named LoRA file with metadata in its header (which AutoV3 leaves out)."""
    g = torch.Generator().manual_seed(seed)
    key = "lora_unet_down_blocks_1_attentions_0_proj_in"
    tensors = {
        f"{key}.lora_down.weight": torch.randn(4, 64, generator=g),
        f"{key}.lora_up.weight": torch.randn(64, 4, generator=g),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"ss_note": note})


def independent_autov3(path) -> str:
    """What A1111's addnet_hash_safetensors computes: sha256 of everything after 8 + header length bytes."""
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + header_len :]).hexdigest()


def recipe(loras) -> Recipe:
    return Recipe(model=ModelRef("base", "ab" * 32), prompt="a fox", seed=1, steps=4, width=64, height=64, loras=loras)


def test_autov3_is_the_sha256_after_the_header_and_ignores_metadata(tmp_path):
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    write_lora(first, seed=1, note="first")
    write_lora(second, seed=1, note="a longer note that changes the header")
    assert autov3_of_file(first) == independent_autov3(first) == independent_autov3(second)
    assert autov3_of_file(first) != hashlib.sha256(first.read_bytes()).hexdigest()
    cache = HashCache(tmp_path / "home")
    assert cache.autov3(first) == independent_autov3(first)
    assert cache.sha256(first) == hashlib.sha256(first.read_bytes()).hexdigest()
    assert cache.cached(first, "autov3") == independent_autov3(first)  # kept beside the sha256
    assert HashCache(tmp_path / "home").cached(first, "sha256") == cache.sha256(first)  # and on disk


def test_infotext_carries_autov3_and_autov2_and_finds_the_local_lora_again(tmp_path):
    home, models = tmp_path / "home", tmp_path / "models"
    lora_path = models / "Lora" / "styles" / "fluffy.safetensors"
    write_lora(lora_path, seed=3)
    write_lora(models / "Lora" / "other.safetensors", seed=4)
    library = LoraLibrary(home, models_root=models)
    resolved = library.resolve(recipe((LoraRef("styles/fluffy", None, 0.7),)))
    text = a1111_parameters(resolved, library.autov3_hashes(resolved.loras))
    fields = parse_a1111_parameters(text)
    assert fields["Lora hashes"] == f"styles/fluffy: {independent_autov3(lora_path)[:12]}"
    assert fields["Model hash"] == resolved.model.sha256[:10]  # AutoV2: the whole-file sha256, 10 hex
    assert resolved.loras[0].sha256 == hashlib.sha256(lora_path.read_bytes()).hexdigest()  # the Recipe: full

    # Another machine named the file differently: the hash, not the name, finds it.
    renamed = text.replace("styles/fluffy", "fluffy_v2")
    back = recipe_from_a1111(renamed)
    assert back.lora_hashes == (("fluffy_v2", independent_autov3(lora_path)[:12]),)
    pinned_recipe, pinned = library.pin_short_hashes(back.recipe, back.lora_hashes)
    assert pinned == {"fluffy_v2"}
    assert pinned_recipe.loras == (LoraRef("styles/fluffy", resolved.loras[0].sha256, 0.7),)
    read = back.with_pinned_loras(pinned_recipe, pinned)
    assert read.lora_hashes == () and not any(u.startswith("Lora hashes") for u in read.unmapped)


def test_an_unknown_lora_hash_stays_unmapped(tmp_path):
    models = tmp_path / "models"
    write_lora(models / "Lora" / "fluffy.safetensors", seed=3)
    library = LoraLibrary(tmp_path / "home", models_root=models)
    back = recipe_from_a1111(
        "a fox <lora:fluffy:0.5>\nSteps: 4, Seed: 1, Size: 64x64, Lora hashes: fluffy: 0123456789ab"
    )
    pinned_recipe, pinned = library.pin_short_hashes(back.recipe, back.lora_hashes)
    assert pinned == set() and pinned_recipe.loras == (LoraRef("fluffy", None, 0.5),)
    assert "Lora hashes: fluffy: 0123456789ab" in back.with_pinned_loras(pinned_recipe, pinned).unmapped


def test_studio_import_pins_the_lora_of_an_a1111_png(tmp_path):
    from atelier.studio import Studio

    home = tmp_path / "home"
    lora_path = home / "models" / "Lora" / "fluffy.safetensors"
    write_lora(lora_path, seed=5)
    short = independent_autov3(lora_path)[:12]
    png = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    text = f'a fox <lora:civitai_name:0.8>\nSteps: 4, Seed: 1, Size: 64x64, Lora hashes: "civitai_name: {short}"'
    info.add_text("parameters", text)
    Image.new("RGB", (64, 64)).save(png, format="PNG", pnginfo=info)
    (tmp_path / "a.png").write_bytes(png.getvalue())
    studio = Studio(home, device="cpu")
    try:
        saved = studio.import_png(tmp_path / "a.png")
        loras = studio.gallery.get(saved.id).recipe.loras
        assert loras == (LoraRef("fluffy", hashlib.sha256(lora_path.read_bytes()).hexdigest(), 0.8),)
        assert not any("Lora hashes" in note for note in saved.notes)
        assert read_png(tmp_path / "a.png").lora_hashes == (("civitai_name", short),)
    finally:
        studio.close()


def test_a_studio_image_with_a_lora_carries_its_autov3(tiny_home, tiny_recipe, monkeypatch):
    """End to end: the PNG a draft saves names its LoRA by AutoV3, and importing it elsewhere finds the file."""
    from atelier.studio import Studio

    monkeypatch.delenv("ATELIER_MODELS", raising=False)
    studio = Studio(tiny_home, device="cpu")
    try:
        lora_path = studio.install_demo_extras()["lora"]
        recipe = tiny_recipe(steps=2, switch=1.0, refine=None, loras=(LoraRef("tiny-demo-ink", None, 0.8),))
        saved = studio.draft(recipe, 1)[0]
        with Image.open(saved.image) as png:
            fields = parse_a1111_parameters(png.text["parameters"])
        assert fields["Lora hashes"] == f"tiny-demo-ink: {independent_autov3(lora_path)[:12]}"
        back = read_png(saved.image)
        assert (
            back.source == "atelier"
            and back.recipe.loras[0].sha256 == hashlib.sha256(lora_path.read_bytes()).hexdigest()
        )
    finally:
        studio.close()
