"""How a save's values become rows: the generation row from its Recipe, and the input files
("source", "mask", "control:N", "map:N") checked against the hashes the Recipe records."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from pipelines.recipe import Recipe
from storage.files import sha256_hex
from storage.models import GenerationRow


def row_from_recipe(recipe: Recipe, kind: str, parent_id, batch_id, image_sha: str) -> GenerationRow:
    return GenerationRow(
        created_at=datetime.now(UTC),
        kind=kind,
        parent_id=parent_id,
        batch_id=batch_id,
        recipe_json=recipe.to_json(),
        prompt=recipe.prompt,
        negative=recipe.negative_prompt,
        prompt_template=recipe.prompt_template,
        seed=recipe.seed,
        model_name=recipe.model.name,
        model_sha256=recipe.model.sha256,
        scheduler=recipe.scheduler,
        steps=recipe.steps,
        guidance=float(recipe.guidance),
        width=recipe.width,
        height=recipe.height,
        switch=float(recipe.switch),
        strength=None if recipe.strength is None else float(recipe.strength),
        image_sha256=image_sha,
        favourite=False,
        files_missing=False,
    )


def normalise_inputs(recipe: Recipe, inputs: Mapping[str, bytes]) -> dict[str, bytes]:
    """Roles "source", "mask", "control:N", "map:N"; checks them against the hashes the recipe records."""
    out: dict[str, bytes] = {}
    for role, data in inputs.items():
        name, _, index = str(role).partition(":")
        if name == "source" and not index:
            key = "source"
            expected = recipe.source_image_sha256
        elif name == "mask" and not index:
            key = "mask"
            expected = recipe.mask_sha256
        elif name in ("control", "map") and (not index or index.isdigit()):
            unit = int(index or 0)
            key = f"{name}:{unit}"
            if unit >= len(recipe.controlnets):
                raise ValueError(
                    f"inputs: role {role!r} names ControlNet unit {unit}, but the recipe has "
                    f"{len(recipe.controlnets)} unit(s)"
                )
            ctrl = recipe.controlnets[unit]
            expected = ctrl.image_sha256 if name == "control" else ctrl.map_sha256
        else:
            raise ValueError(f"inputs: unknown role {role!r}; allowed: source, mask, control:N, map:N")
        if not isinstance(data, (bytes, bytearray)) or not data:
            raise ValueError(f"inputs[{role!r}]: must be non-empty bytes")
        if key in out:
            raise ValueError(f"inputs: role {key!r} given twice")
        if expected is not None and sha256_hex(bytes(data)) != expected:
            raise ValueError(f"inputs[{role!r}]: its sha256 does not match the one the recipe records ({expected})")
        out[key] = bytes(data)
    return out
