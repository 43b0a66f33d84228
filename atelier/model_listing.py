"""What `atelier models` shows: every model file in the models folder, its kind, variant, hashes and
problems (pipelines/models/inventory.py), as plain values for a front end. Light: nothing heavy is
imported until the function runs, and the inventory itself reads headers only (no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def list_models(home: Path, *, compute_hashes: bool = True) -> dict[str, Any]:
    """{"models_folder": path or None, "models": [entry dicts]}; hashes cached in <home>/cache."""
    from pipelines.models.inventory import inventory

    root, entries = inventory(Path(home), compute_hashes=compute_hashes)
    return {"models_folder": str(root) if root else None, "models": [entry.to_dict() for entry in entries]}
