"""What travels between the Studio and a GPU worker: engine values as plain bytes, bit for bit.

A job carries the Recipe as JSON, the input images as PNG (lossless, so the worker sees the very pixels
the Studio prepared) and, for a refine, the draft's kept latent file as the gallery stores it. A result
comes back as the same engine types (Draft, FinishedImage, StepInfo), rebuilt from PNG and safetensors
bytes, so the Studio saves it exactly as it saves a result made in its own process.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from pipelines.engine.engine import Draft, FinishedImage, StepInfo
from pipelines.engine.inputs import EditInputs
from pipelines.engine.kept_latent import KeptLatent
from pipelines.recipe import Recipe


def image_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # lossless; fast over compact (it only crosses the wire)
    return buffer.getvalue()


def image_from(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()


def tensor_bytes(tensor: Any) -> bytes | None:
    return None if tensor is None else save_tensors({"t": tensor.detach().to("cpu").contiguous()})


def tensor_from(data: bytes | None) -> Any:
    return None if data is None else load_tensors(data)["t"]


def inputs_to_wire(inputs: EditInputs | None) -> dict[str, Any] | None:
    if inputs is None:
        return None
    return {
        "source": image_bytes(inputs.source) if inputs.source is not None else None,
        "mask": image_bytes(inputs.mask) if inputs.mask is not None else None,
        "control_maps": [image_bytes(m) for m in inputs.control_maps],
    }


def inputs_from_wire(wire: dict[str, Any] | None) -> EditInputs | None:
    if wire is None:
        return None
    return EditInputs(
        source=image_from(wire["source"]) if wire["source"] is not None else None,
        mask=image_from(wire["mask"]) if wire["mask"] is not None else None,
        control_maps=tuple(image_from(m) for m in wire["control_maps"]),
    )


def draft_to_wire(draft: Draft) -> dict[str, Any]:
    return {
        "type": "draft",
        "recipe": draft.recipe.to_json(),
        "latent": draft.latent.to_bytes(draft.recipe.to_json()),
        "preview": image_bytes(draft.preview),
        "source_unchanged": draft.source_unchanged,
        "notes": list(draft.notes),
    }


def draft_from_wire(wire: dict[str, Any]) -> Draft:
    return Draft(
        Recipe.from_json(wire["recipe"]),
        KeptLatent.from_bytes(wire["latent"], name="kept latent from a worker"),
        image_from(wire["preview"]),
        source_unchanged=wire["source_unchanged"],
        notes=tuple(wire["notes"]),
    )


def finished_to_wire(finished: FinishedImage) -> dict[str, Any]:
    return {
        "type": "finished",
        "recipe": finished.recipe.to_json(),
        "image": image_bytes(finished.image),
        "latent": tensor_bytes(finished.latent),
        "source_unchanged": finished.source_unchanged,
        "notes": list(finished.notes),
    }


def finished_from_wire(wire: dict[str, Any]) -> FinishedImage:
    return FinishedImage(
        Recipe.from_json(wire["recipe"]),
        image_from(wire["image"]),
        tensor_from(wire["latent"]),
        source_unchanged=wire["source_unchanged"],
        notes=tuple(wire["notes"]),
    )


def result_to_wire(result: Any) -> Any:
    """An engine mode's return value: a Draft, a FinishedImage, a list of Drafts, or an image."""
    if isinstance(result, list):
        return {"type": "list", "items": [result_to_wire(r) for r in result]}
    if isinstance(result, Draft):
        return draft_to_wire(result)
    if isinstance(result, FinishedImage):
        return finished_to_wire(result)
    return {"type": "image", "image": image_bytes(result)}


def result_from_wire(wire: dict[str, Any]) -> Any:
    kind = wire["type"]
    if kind == "list":
        return [result_from_wire(item) for item in wire["items"]]
    if kind == "draft":
        return draft_from_wire(wire)
    if kind == "finished":
        return finished_from_wire(wire)
    return image_from(wire["image"])


def step_to_wire(info: StepInfo) -> dict[str, Any]:
    return {"stage": info.stage, "step": info.step, "total": info.total, "estimate": tensor_bytes(info.clean_estimate)}


def step_from_wire(wire: dict[str, Any]) -> StepInfo:
    return StepInfo(wire["stage"], wire["step"], wire["total"], tensor_from(wire["estimate"]))
