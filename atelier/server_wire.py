"""What travels between the command line and a running `atelier serve` (webui/cli_api.py), as JSON.

Both sides import this module, so they agree on one format: a GenerationRequest as a dict (the server
rebuilds and re-checks it with `atelier.requests`, exactly as the CLI's local path does), and the gallery
entries a job made as dicts, from which the CLI prints the same `--json` document either way.
Standard library and the Recipe only: the CLI reads it before anything heavy loads.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from atelier.requests import GenerationRequest
from pipelines.recipe import LoraRef, MicroConditioning

# The API endpoints of webui/cli_api.py (api_name, without the leading slash). A job is {"action": "draft",
# "request": {…}}, {"action": "img2img", "request": {…}, "source": {"id": N} or {"png": base64}}, or
# {"action": refine|rerender|rerun|vary|upscale, "id": N, "options": {…}}; the answer is {"entries": […], and
# for a draft "labels" and "grid", for an img2img "parent_id"} or {"error": "…", "exit": 2 or 1}.
INFO = "cli_info"  # what the server serves
CHECK = "cli_check"  # a job's checks only, outside the device's queue
JOB = "cli_job"  # the job, in the device's queue


def request_to_json(request: GenerationRequest) -> dict[str, Any]:
    return dataclasses.asdict(request)


def request_from_json(values: dict[str, Any]) -> GenerationRequest:
    """The GenerationRequest of `request_to_json`'s dict; its checks run again (the server never trusts a
    client). An unknown field is refused by name."""
    if not isinstance(values, dict):
        raise ValueError(f"request: expected a JSON object (got {type(values).__name__})")
    known = {f.name for f in dataclasses.fields(GenerationRequest)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"request: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
    given = dict(values)
    if isinstance(given.get("micro"), dict):
        given["micro"] = MicroConditioning(**{k: _tuples(v) for k, v in given["micro"].items()})
    if "loras" in given:
        given["loras"] = tuple(LoraRef(**lora) if isinstance(lora, dict) else lora for lora in given["loras"] or ())
    for name in ("source_size", "expand"):
        if isinstance(given.get(name), list):
            given[name] = tuple(given[name])
    try:
        return GenerationRequest(**given)
    except TypeError as exc:  # a field of the wrong shape (e.g. micro's unknown key)
        raise ValueError(f"request: {exc}") from None


def _tuples(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def saved_entry(saved: Any) -> dict[str, Any]:
    """A gallery entry a job made (the studio's Saved), as the CLI prints it: its `as_json()` (id, seed,
    image, latent) and what the text lines show besides."""
    recipe = saved.recipe
    return {
        **saved.as_json(),
        "width": recipe.width,
        "height": recipe.height,
        "variation_seed": recipe.variation_seed,
        "notes": list(saved.notes),
    }


def printed(entry: dict[str, Any]) -> dict[str, Any]:
    """The part of an entry `--json` prints (the same as `Saved.as_json()` on the local path)."""
    return {key: entry[key] for key in ("id", "seed", "image", "latent") if key in entry}
