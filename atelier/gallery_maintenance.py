"""`atelier gallery check | repair | rebuild`: the gallery's safety tools, beside the Studio (which
cannot open a gallery these are for: a damaged database, or an empty one over existing files).

- check: what is wrong, read without writing (storage/repair.py);
- repair: an exact copy of the damaged SQLite file first, then every row SQLite can still read
  recovered into a new database (storage/repair.py);
- rebuild: rows made again from the recipes inside the PNGs in files/ that no row has as its image,
  their source, mask, ControlNet images and maps linked by the sha256 the recipe names, a draft's
  kept latent by the recipe its header records. Parents, tags and favourites are not in the PNGs, and
  a refined draft comes back with its mode's kind (txt2img …).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.provenance.png_metadata import read_png
from pipelines.recipe import Recipe
from storage.gallery import Gallery
from storage.repair import (
    GalleryCheck,
    RepairResult,
    check_gallery,
    find_stored,
    repair_database,
    stored_files,
    unclaimed_images,
)

__all__ = ["GalleryCheck", "RebuildReport", "RepairResult", "check", "rebuild", "repair"]
MAX_LATENT_HEADER = 1024 * 1024


def check(home: Path, database_url: str | None = None) -> GalleryCheck:
    return check_gallery(home, database_url)


def repair(home: Path, database_url: str | None = None) -> RepairResult:
    return repair_database(home, database_url)


@dataclass(frozen=True)
class RebuildReport:
    rebuilt: tuple[int, ...] = ()  # new gallery ids
    skipped: tuple[str, ...] = ()  # "<file>: <why>" for PNGs that did not become rows
    linked_inputs: int = 0
    linked_latents: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)


def rebuild(home: Path, database_url: str | None = None) -> RebuildReport:
    """Adopt the PNGs in files/ that no row has as its image, oldest first."""
    rebuilt, skipped, notes = [], [], []
    inputs_linked = latents_linked = 0
    with Gallery.open(home, database_url, adopt_existing_files=True) as gallery:
        latents = _latents_by_recipe(stored_files(gallery.files, ".safetensors"))
        for path in unclaimed_images(gallery.files, gallery.db):
            try:
                data = path.read_bytes()
                read = read_png(data)
            except (OSError, ValueError) as exc:
                skipped.append(f"{path.name}: {exc}")  # a source, mask or map without a recipe, most often
                continue
            inputs, missing = _inputs_named_by(read.recipe, gallery)
            notes += [f"{path.name}: {what} not found in files/" for what in missing]
            latent = latents.get(read.recipe.to_json()) if read.recipe.stage == "draft" else None
            try:
                saved = gallery.save(read.recipe, _kind(read.recipe, read.source), data, latent=latent, inputs=inputs)
            except ValueError as exc:
                skipped.append(f"{path.name}: {exc}")
                continue
            rebuilt.append(saved.id)
            inputs_linked += len(inputs)
            latents_linked += latent is not None
    return RebuildReport(tuple(rebuilt), tuple(skipped), inputs_linked, latents_linked, tuple(notes))


def _inputs_named_by(recipe: Recipe, gallery: Gallery) -> tuple[dict[str, bytes], list[str]]:
    wanted = {"source": recipe.source_image_sha256, "mask": recipe.mask_sha256}
    for index, unit in enumerate(recipe.controlnets):
        wanted[f"control:{index}"] = unit.image_sha256
        wanted[f"map:{index}"] = unit.map_sha256
    inputs, missing = {}, []
    for role, sha in wanted.items():
        if sha is None:
            continue
        path = find_stored(gallery.files, sha)
        if path is None:
            missing.append(f"{role} {sha[:12]}")
        else:
            inputs[role] = path.read_bytes()
    return inputs, missing


def _kind(recipe: Recipe, source: str) -> str:
    """The gallery kind, as the Studio chooses it for an image made in one go (an A1111/InvokeAI PNG:
    imported). A refined draft comes back by its mode: nothing in the PNG tells it from a one-go image."""
    if source != "atelier":
        return "imported"
    if recipe.stage == "draft":
        return "draft"
    if recipe.mode == "img2img":
        return "img2img"
    return "controlnet" if recipe.controlnets else "txt2img"


def _latents_by_recipe(paths: list[Path]) -> dict[str, bytes]:
    """Kept latents by the recipe JSON in their safetensors header (read without torch)."""
    found: dict[str, bytes] = {}
    for path in paths:
        try:
            data = path.read_bytes()
            length = int.from_bytes(data[:8], "little")
            if not 2 <= length <= min(MAX_LATENT_HEADER, len(data) - 8):
                continue
            recipe_json = json.loads(data[8 : 8 + length]).get("__metadata__", {}).get("recipe", "")
            if recipe_json:
                found[Recipe.from_json(recipe_json).to_json()] = data
        except (OSError, ValueError, AttributeError, RecursionError):
            continue
    return found
