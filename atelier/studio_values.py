"""Values the front ends hand the Studio or get back from it: step previews (images, never tensors),
the refiner settings on screen, gallery filters. Light: the engine is imported only to draw a preview."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from pipelines.recipe import Recipe


@dataclass(frozen=True)
class StepPreview:
    """One step of a running job, as a front end sees it: where the job is, and a look at it."""

    stage: str  # "base" or "refiner"
    step: int  # 1-based, within the stage
    total: int
    _estimate: Any = field(default=None, repr=False)  # the engine's clean-image estimate (a tensor)

    def images(self) -> list[Image.Image]:
        """Fast approximate previews of the batch (a linear latent→RGB map, no VAE); [] if none.
        Made on demand, so a front end that shows every fourth step pays for every fourth."""
        if self._estimate is None:
            return []
        from pipelines.engine.previews import fast_preview

        return fast_preview(self._estimate)


@dataclass(frozen=True, kw_only=True)
class RefineChoice:
    """The refiner's settings a user may change between drafting and refining (the schedule, and so the
    switch point and steps, is fixed by the draft's kept latent)."""

    aesthetic_score: float
    negative_aesthetic_score: float
    strength: float  # used only for a clean latent (switch 1.0)

    def applied_to(self, recipe: Recipe) -> Recipe:
        micro = dataclasses.replace(
            recipe.micro, aesthetic_score=self.aesthetic_score, negative_aesthetic_score=self.negative_aesthetic_score
        )
        refine = dataclasses.replace(recipe.refine, strength=self.strength) if recipe.refine else None
        return recipe.replace(micro=micro, refine=refine)  # validates


@dataclass(frozen=True, kw_only=True)
class GalleryFilters:
    """What the gallery's search narrows by; None (or empty) means "any"."""

    kinds: tuple[str, ...] = ()
    model: str | None = None
    lora: str | None = None
    favourites_only: bool = False
    since: str | None = None  # ISO date, inclusive
    until: str | None = None  # ISO date, exclusive
    tag: str | None = None
    batch_id: str | None = None  # the drafts made together

    def as_search_arguments(self) -> dict[str, Any]:
        from pipelines.prompt_syntax import lora_name

        text = {
            name: (getattr(self, name) or "").strip() or None
            for name in ("model", "lora", "since", "until", "tag", "batch_id")
        }
        if text["lora"]:
            text["lora"] = lora_name(text["lora"])  # "x.safetensors" and "x" are the same LoRA
        return {"kind": list(self.kinds) or None, "favourite": True if self.favourites_only else None, **text}


def ordinal(place: int) -> str:
    """1st, 2nd, 3rd, 4th, …, 11th, 12th, 13th, 21st: a place in a queue, for the front ends."""
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(place % 10 if place % 100 not in (11, 12, 13) else 0, "th")
    return f"{place}{suffix}"
