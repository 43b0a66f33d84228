"""Where the base hands over to the refiner: the recipe's switch fraction turned into steps.

diffusers splits a schedule at the cutoff timestep c = round(T·(1 − switch)) (T: the model's training
timesteps): the base runs the timesteps ≥ c (`denoising_end=switch`), the refiner those < c
(`denoising_start=switch`). A switch before the schedule's first timestep or after its last leaves one
side no step at all, and diffusers then fails deep inside (empty tensors, no clean estimate). The engine
keeps the recipe's switch as asked and hands over at an *effective* point decided from the recipe and
the model's scheduler alone, so a re-run (or a rerender at more steps) follows the same rule:

- at least 2 steps, the base would get none: it runs the first step, the refiner the others;
- at least 2 steps, the refiner would get none: the base runs all but the last, the refiner the last;
- 1 step: it cannot be split. The base runs it to the end (a clean latent, as at switch 1.0), and
  refining that draft re-noises it at `refine.strength`, like any clean latent.

img2img whose strength leaves the base no step before the switch (say strength 0.2 at switch 0.8: the
re-noised source is already past the switch point) is run as "refine any image" instead: the source is
encoded as it is and the refiner alone re-noises it to `strength` and denoises it — the same part of the
schedule the base would have started from. The recipe records that form (`refine_any_recipe`: strength
0, switch 1.0, refine.strength = the asked strength), so the re-run is the same call.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from pipelines.recipe import Recipe, refine_any_recipe


@dataclass(frozen=True)
class Handoff:
    recipe: Recipe  # as it runs (img2img with no base step: rewritten to the refine-any form)
    denoising_end: float  # where the base stops; 1.0: it runs to the end (a clean latent)
    notes: tuple[str, ...] = ()  # what was adjusted, in words a front end can show


def schedule(scheduler: Any, steps: int) -> list[float]:
    """The timesteps a run of `steps` steps visits, from a copy of `scheduler` (its state is untouched)."""
    fresh = type(scheduler).from_config(scheduler.config)
    fresh.set_timesteps(steps, device="cpu")
    return [float(t) for t in fresh.timesteps]


def cutoff(scheduler: Any, switch: float) -> int:
    """diffusers' discrete timestep cutoff for `denoising_end` / `denoising_start` = switch."""
    total = scheduler.config.num_train_timesteps
    return int(round(total - switch * total))


def base_steps(timesteps: list[float], scheduler: Any, denoising_end: float) -> int:
    """How many of `timesteps` the base runs when it stops at `denoising_end` (1.0: all)."""
    if denoising_end >= 1.0:
        return len(timesteps)
    c = cutoff(scheduler, denoising_end)
    return sum(1 for t in timesteps if t >= c)


def _switch_after(timesteps: list[float], scheduler: Any, count: int) -> float | None:
    """The switch at which the base runs exactly the first `count` timesteps (None: no such switch)."""
    total = scheduler.config.num_train_timesteps
    c = math.floor(timesteps[count - 1])  # the base keeps t >= c: its last timestep is in, the next one out
    if c < 1 or c >= total or c <= timesteps[count]:
        return None
    switch = (total - c) / total
    return switch if cutoff(scheduler, switch) == c else None


def plan_handoff(recipe: Recipe, scheduler: Any) -> Handoff:
    """The base's stopping point for `recipe` (and the recipe as it runs); see the module docstring."""
    if recipe.refine is None or not recipe.base_stops_early:
        return Handoff(recipe, 1.0)
    img2img = recipe.mode == "img2img" and recipe.strength < 1.0  # strength 1 runs as txt2img
    if img2img and recipe.strength == 0.0:
        return Handoff(recipe, 1.0)  # the source as it is (Recipe.keeps_source): nothing runs
    timesteps = schedule(scheduler, recipe.steps)
    end, notes = recipe.switch, []
    n = len(timesteps)
    base_n = base_steps(timesteps, scheduler, end)
    if n < 2:
        end = 1.0
        notes.append(
            f"switch {recipe.switch}: a 1-step schedule cannot be split between base and refiner, so the "
            "base ran the step to the end; refining re-noises its image at the refine strength"
        )
    elif base_n == n or (base_n == 0 and not img2img):
        keep = n - 1 if base_n == n else 1
        moved = _switch_after(timesteps, scheduler, keep)
        end = moved if moved is not None else 1.0
        who = "refiner" if base_n == n else "base"
        done = (
            f"the base ran {keep} step(s) and the refiner the rest"
            if moved is not None
            else "the base ran every step; refining re-noises its image at the refine strength"
        )
        notes.append(f"switch {recipe.switch}: at {recipe.steps} steps it leaves the {who} no step, so {done}")
    if img2img:
        initial = min(int(recipe.steps * recipe.strength), recipe.steps)
        if base_steps(timesteps[n - initial :] if initial else [], scheduler, end) == 0:
            refine = dataclasses.replace(recipe.refine, strength=recipe.strength)
            note = (
                f"strength {recipe.strength} at {recipe.steps} steps leaves the base no step before the switch "
                f"point {recipe.switch}: the refiner alone re-noised the source to {recipe.strength} and denoised "
                f"it (recorded as refine-any: strength 0, switch 1.0, refine strength {recipe.strength})"
            )
            return Handoff(refine_any_recipe(recipe, refine), 1.0, (note,))
    return Handoff(recipe, end, tuple(notes))
