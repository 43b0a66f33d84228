"""Parameter sweeps: one request drafts the same seed across values of one parameter.

`guidance=3,5,7` gives three drafts (cells), each made alone, whose recipes differ only in the swept
field: guidance, steps, switch, scheduler, aesthetic_score (the refiner's: the drafts look alike, their
refined images differ), seed, or a LoRA's weight (`lora:NAME=0,0.5,1`). A cell is a draft like any
other: pick it, refine it, re-run it.

Standard library and the Recipe only. A bad spec (unknown parameter, a value that is not a number or
out of the field's range, more than MAX_CELLS values) is a ValueError naming the field, before any
model work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pipelines.prompt_syntax import extract_lora_tokens, lora_name
from pipelines.recipe import MAX_DRAFTS, SCHEDULERS, LoraRef, Recipe

MAX_CELLS = MAX_DRAFTS
LORA_PREFIX = "lora:"
PARAMETERS = ("guidance", "steps", "switch", "scheduler", "aesthetic_score", "seed", f"{LORA_PREFIX}NAME")
_ALIASES = {"cfg": "guidance", "aesthetic": "aesthetic_score", "sampler": "scheduler"}
_INTEGERS = ("steps", "seed")
EXAMPLE = "guidance=3,5,7"

Value = float | int | str


@dataclass(frozen=True)
class Sweep:
    parameter: str  # one of PARAMETERS, or "lora:<name>"
    values: tuple[Value, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        """A caption per cell: `guidance=3`, `scheduler=Euler a`, `lora:ink=0.5`."""
        return tuple(f"{self.parameter}={_text(v)}" for v in self.values)


def parse_sweep(text: str | None) -> Sweep | None:
    """`PARAMETER=V1,V2,…` as a Sweep; None for an empty spec (no sweep)."""
    if text is None or not str(text).strip():
        return None
    name, sep, rest = str(text).partition("=")
    if not sep or not name.strip():
        raise ValueError(f"sweep: write PARAMETER=V1,V2,… such as {EXAMPLE} (got {text!r})")
    parameter = _parameter(name)
    items = [item.strip() for item in rest.split(",")]
    if len(items) > MAX_CELLS:
        raise ValueError(f"sweep: at most {MAX_CELLS} values, one draft each (got {len(items)})")
    values = tuple(_value(parameter, item) for item in items)
    repeated = sorted({_text(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"sweep: {parameter}: give each value once ({', '.join(repeated)} repeated)")
    return Sweep(parameter=parameter, values=values)


def swept_recipes(recipe: Recipe, sweep: Sweep) -> list[Recipe]:
    """A draft recipe per value: `recipe` with the swept field set to it, made alone (no batch)."""
    base = recipe.replace(stage="draft", batch_seeds=())
    if sweep.parameter.startswith(LORA_PREFIX):
        _check_lora_not_in_prompt(base, sweep.parameter)
    cells = []
    for value in sweep.values:
        try:
            cells.append(base.replace(**_change(base, sweep.parameter, value)))
        except ValueError as error:
            raise ValueError(f"sweep: {error}") from None
    return cells


def _parameter(name: str) -> str:
    name = name.strip()
    if name.lower().startswith(LORA_PREFIX):
        lora = lora_name(name[len(LORA_PREFIX) :].strip())
        if not lora:
            raise ValueError(f"sweep: name the LoRA whose weight to sweep, as {LORA_PREFIX}NAME=0,0.5,1")
        return LORA_PREFIX + lora
    key = name.lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key not in PARAMETERS:
        raise ValueError(f"sweep: unknown parameter {name!r}; sweep one of {', '.join(PARAMETERS)}")
    return key


def _value(parameter: str, item: str) -> Value:
    if not item:
        raise ValueError(f"sweep: {parameter}: an empty value; separate values with commas, as in {EXAMPLE}")
    if parameter == "scheduler":
        by_name = {s.lower(): s for s in SCHEDULERS}
        if item.lower() not in by_name:
            raise ValueError(f"sweep: scheduler: {item!r} is not one of {', '.join(SCHEDULERS)}")
        return by_name[item.lower()]
    try:
        number = float(item)
    except ValueError:
        raise ValueError(f"sweep: {parameter}: {item!r} is not a number") from None
    if parameter in _INTEGERS:
        if not number.is_integer():
            raise ValueError(f"sweep: {parameter}: {item!r} is not a whole number")
        return int(number)
    return round(number, 4) if parameter == "switch" else number  # as build_recipe records a switch


def _change(recipe: Recipe, parameter: str, value: Value) -> dict:
    if parameter == "aesthetic_score":
        return {"micro": dataclasses.replace(recipe.micro, aesthetic_score=value)}
    if parameter.startswith(LORA_PREFIX):
        name = parameter[len(LORA_PREFIX) :]
        loras = [dataclasses.replace(x, weight=value) if lora_name(x.name) == name else x for x in recipe.loras]
        if not any(lora_name(x.name) == name for x in recipe.loras):
            loras.append(LoraRef(name=name, weight=value))
        return {"loras": tuple(loras)}
    return {parameter: value}


def _check_lora_not_in_prompt(recipe: Recipe, parameter: str) -> None:
    """The prompt's `<lora:NAME:w>` sets that LoRA's weight (the one LoRA rule), so it cannot be swept."""
    name = parameter[len(LORA_PREFIX) :]
    if any(lora_name(n) == name for n, _ in extract_lora_tokens(recipe.prompt)[1]):
        raise ValueError(
            f"sweep: {parameter}: the prompt sets this LoRA's weight with <lora:{name}:…>; take that token out "
            "of the prompt (pick the LoRA in the list or with --lora instead) to sweep its weight"
        )


def _text(value: Value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
