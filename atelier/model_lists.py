"""Model lists a web user may choose from: what the models folder holds and what the Hugging Face cache
already has. A web request names an entry of such a list, never a path or a hub id of its own choosing."""

from __future__ import annotations

import json
from pathlib import Path

CONTROLNET_CLASSES = ("ControlNetModel",)
MAX_CONFIG_BYTES = 1 << 20  # a diffusers config.json is a few KB


def cached_hub_controlnets() -> list[str]:
    """Hub ids of ControlNets in the local Hugging Face cache (diffusers layout with safetensors weights);
    reads the cache only, never the network."""
    try:
        from huggingface_hub import scan_cache_dir

        repos = scan_cache_dir().repos
    except Exception:  # no cache folder yet, or one we cannot read: nothing cached to offer
        return []
    found = set()
    for repo in repos:
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            if _is_controlnet(Path(revision.snapshot_path)):
                found.add(repo.repo_id)
                break
    return sorted(found)


def _is_controlnet(folder: Path) -> bool:
    config = folder / "config.json"
    try:
        if config.stat().st_size > MAX_CONFIG_BYTES:
            return False
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    weights = any(folder.glob("diffusion_pytorch_model*.safetensors"))
    return isinstance(data, dict) and data.get("_class_name") in CONTROLNET_CLASSES and weights
