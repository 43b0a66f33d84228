"""Samplers by their A1111 names, built from a model's own scheduler config.

A fresh scheduler is made for every generation: schedulers keep per-run state (step index, solver
history), so sharing one between runs or between base and refiner would leak state.
"""

from __future__ import annotations

from typing import Any

from pipelines.recipe import SCHEDULERS

# name -> (diffusers class name, config overrides)
_SCHEDULER_TABLE: dict[str, tuple[str, dict[str, Any]]] = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ 2M Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "DPM++ 2M SDE Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "DDIM": ("DDIMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
}
assert tuple(_SCHEDULER_TABLE) == SCHEDULERS, "recipe.SCHEDULERS and the table must list the same names"


def make_scheduler(name: str, model_config: Any):
    """A new scheduler of the named kind, keeping the model's training schedule (betas, spacing, …)."""
    import diffusers

    if name not in _SCHEDULER_TABLE:
        raise ValueError(f"scheduler: must be one of {', '.join(SCHEDULERS)} (got {name!r})")
    class_name, overrides = _SCHEDULER_TABLE[name]
    config = {k: v for k, v in dict(model_config).items() if not k.startswith("_")}
    # Settings of one sampler family must not leak into another (e.g. Karras sigmas into Euler).
    for key in ("use_karras_sigmas", "algorithm_type", "solver_order", "solver_type"):
        config.pop(key, None)
    config.update(overrides)
    return getattr(diffusers, class_name).from_config(config)
