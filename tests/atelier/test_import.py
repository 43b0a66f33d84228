"""`import`: Atelier and A1111 PNGs become gallery entries whose recipes re-run."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image, PngImagePlugin


def pixel_hash(path):
    with Image.open(path) as image:
        return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


@pytest.fixture()
def studio(tmp_path):
    from atelier.studio import Studio

    studio = Studio(tmp_path / "home", device="cpu")
    yield studio
    studio.close()


def test_an_atelier_png_imports_unchanged_and_reruns_to_the_same_pixels(studio, tiny_recipe, tmp_path):
    from atelier.studio import Studio

    original = studio.refine(studio.draft(tiny_recipe(seed=3), 2)[1].id)
    other = Studio(tmp_path / "other-home", device="cpu")  # another install: its own tiny model, same weights
    try:
        imported = other.import_png(original.image)
        entry = other.gallery.get(imported.id)
        assert entry.kind == "imported"
        assert entry.image_path.read_bytes() == original.image.read_bytes()
        assert entry.recipe == original.recipe
        rerun = other.rerun(imported.id)
        assert pixel_hash(rerun.image) == pixel_hash(original.image)
        assert other.gallery.get(rerun.id).parent_id == imported.id
    finally:
        other.close()


def test_an_a1111_png_becomes_an_entry_with_the_closest_recipe(studio, tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text(
        "parameters",
        "a (red:1.2) fox, snow\nNegative prompt: blurry\nSteps: 25, Sampler: DPM++ 2M Karras, "
        "CFG scale: 6.5, Seed: 42, Size: 832x1216, Model: sd_xl_base_1.0, Model hash: 31e35c80fc",
    )
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (20, 40, 60)).save(buffer, format="PNG", pnginfo=info)
    path = tmp_path / "a1111.png"
    path.write_bytes(buffer.getvalue())
    imported = studio.import_png(path)
    recipe = studio.gallery.get(imported.id).recipe
    assert "not kept: Model hash: 31e35c80fc" in imported.notes  # what the Recipe could not hold is said
    again = studio.import_png(path)  # the same file twice: the first entry, not a duplicate
    assert (again.id, again.reused, imported.reused) == (imported.id, True, False)
    assert len(studio.gallery.search("fox").items) == 1
    assert (recipe.prompt, recipe.negative_prompt, recipe.prompt_syntax) == ("a (red:1.2) fox, snow", "blurry", "a1111")
    assert (recipe.steps, recipe.scheduler, recipe.guidance, recipe.seed) == (25, "DPM++ 2M Karras", 6.5, 42)
    assert (recipe.width, recipe.height, recipe.model.name) == (832, 1216, "sd_xl_base_1.0")
    assert studio.gallery.search("fox").items[0].kind == "imported"


def test_a_png_without_metadata_is_refused_and_nothing_is_saved(studio, tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (64, 64)).save(path)
    with pytest.raises(ValueError):
        studio.import_png(path)
    assert studio.gallery.list().items == ()
