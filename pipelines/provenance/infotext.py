"""A1111's infotext ("parameters"): written for a Recipe, and read back as the closest Recipe.

Reading is linear in the text's length: A1111's own settings regex (`re_param`) backtracks over runs of
key characters and of spaces (a 64 KB text took minutes), so the settings line is scanned here by hand,
giving the same pairs as that regex (tests/pipelines/test_infotext.py compares the two). Also holds
`ReadBack` and the value helpers the InvokeAI reader (png_metadata.py) shares. No torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pipelines.prompt_syntax import extract_lora_tokens
from pipelines.recipe import (
    PROMPT_SYNTAXES,
    SCHEDULERS,
    LoraRef,
    ModelRef,
    Recipe,
    RefineSettings,
    check_prompt_length,
)

APP_NAME = "Atelier"

_RE_SIZE = re.compile(r"^(\d+)x(\d+)$")
_RE_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
# The settings line, piece by piece (each linear from a given position; see settings_pairs):
_RE_KEY_START = re.compile(r"\w")
_RE_KEY_RUN = re.compile(r"[\w \-/]*")
_RE_SPACES = re.compile(r"\s*")
_RE_QUOTED = re.compile(r'"(?:[^\\"]++|\\.)++"')  # possessive: nothing to backtrack into

# A1111 1.9+ writes the schedule separately; "Automatic" means the sampler's own default.
_A1111_AUTOMATIC_SCHEDULE = {"DPM++ 2M": "Karras", "DPM++ 2M SDE": "Exponential"}
_A1111_HIRES_KEYS = ("Hires upscale", "Hires upscaler", "Hires steps", "Hires resize-1")


@dataclass(frozen=True)
class ReadBack:
    recipe: Recipe
    source: str  # "atelier" | "a1111" | "invokeai"
    unmapped: tuple[str, ...] = ()  # "Key: value" for what the Recipe could not hold
    lora_hashes: tuple[tuple[str, str], ...] = ()  # A1111 (LoRA name, short hash) pairs that pin no sha256

    def with_pinned_loras(self, recipe: Recipe, pinned: set[str]) -> ReadBack:
        """This read with `recipe` (whose LoRAs `pinned` the caller found by their short hashes)."""
        left = tuple((name, digest) for name, digest in self.lora_hashes if name not in pinned)
        unmapped = tuple(u for u in self.unmapped if not u.startswith("Lora hashes: "))
        if left:
            unmapped += ("Lora hashes: " + ", ".join(f"{name}: {digest}" for name, digest in left),)
        return ReadBack(recipe, self.source, unmapped, left)


# -- writing -----------------------------------------------------------------------------------------


def _quote(value: Any) -> str:
    """A1111's infotext quoting: JSON-quote values containing a comma, colon or newline."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _title(model: ModelRef) -> str:
    return f"{model.name} [{model.sha256[:10]}]" if model.sha256 else model.name


def a1111_prompt(recipe: Recipe) -> str:
    """The prompt as A1111 writes it: LoRAs as `<lora:name:weight>` tokens (added unless present)."""
    present = {name for name, _ in extract_lora_tokens(recipe.prompt)[1]}
    tokens = [f"<lora:{lora.name}:{_number(lora.weight)}>" for lora in recipe.loras if lora.name not in present]
    return " ".join([recipe.prompt, *tokens]) if tokens else recipe.prompt


def a1111_parameters(recipe: Recipe, lora_hashes: dict[str, str] | None = None) -> str:
    """The A1111 "parameters" text for a Recipe (what A1111's PNG Info and Civitai read).

    `lora_hashes`: LoRA sha256 -> its AutoV3 short hash; a LoRA without one is left out of "Lora hashes"
    (a whole-file hash there would point Civitai at nothing)."""
    fields: list[tuple[str, Any]] = [
        ("Steps", recipe.steps),
        ("Sampler", recipe.scheduler),
        ("CFG scale", _number(recipe.guidance)),
        ("Seed", recipe.seed),
        ("Size", f"{recipe.width}x{recipe.height}"),
    ]
    if recipe.model.sha256:
        fields.append(("Model hash", recipe.model.sha256[:10]))
    fields.append(("Model", recipe.model.name))
    if recipe.mode == "img2img":
        fields.append(("Denoising strength", _number(recipe.strength)))
        fields += _inpaint_fields(recipe)
    if recipe.variation_seed is not None:  # A1111's own keys
        fields += [
            ("Variation seed", recipe.variation_seed),
            ("Variation seed strength", _number(recipe.variation_strength)),
        ]
    if recipe.refine is not None and recipe.refine.model is not None and recipe.base_stops_early:
        fields += [("Refiner", _title(recipe.refine.model)), ("Refiner switch at", _number(recipe.switch))]
    known = lora_hashes or {}
    hashed = [(lora.name, known[lora.sha256]) for lora in recipe.loras if lora.sha256 in known]
    if hashed:
        fields.append(("Lora hashes", ", ".join(f"{name}: {digest}" for name, digest in hashed)))
    fields.append(("Prompt syntax", recipe.prompt_syntax))  # not A1111's; says how to read the prompt
    fields.append(("Version", f"{APP_NAME} {recipe.app_version}".strip()))
    lines = [a1111_prompt(recipe)]
    if recipe.negative_prompt:
        lines.append(f"Negative prompt: {recipe.negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in fields))
    return "\n".join(lines)


def _inpaint_fields(recipe: Recipe) -> list[tuple[str, Any]]:
    """A1111's inpaint keys (its "Masked content" names "original" and "latent noise"); "Outpaint" (left,
    top, right, bottom px) is Atelier's. Read back, they are listed as unmapped: the mask is not in the text."""
    if not recipe.inpaints:
        return []
    fields: list[tuple[str, Any]] = [("Mask blur", recipe.mask_blur)] if recipe.mask_blur else []
    fields.append(("Masked content", {"noise": "latent noise"}.get(recipe.masked_content, recipe.masked_content)))
    if recipe.inpaint_area == "masked":
        fields += [("Inpaint area", "Only masked"), ("Masked area padding", recipe.inpaint_padding)]
    if any(recipe.expand):
        fields.append(("Outpaint", ",".join(str(side) for side in recipe.expand)))
    return fields


# -- reading ---------------------------------------------------------------------------------------


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def parse_a1111_parameters(text: str) -> dict[str, str]:
    """A1111's infotext as {key: value}, as A1111's own parser reads it.

    "Prompt" and "Negative prompt" are always present ("" when absent); the settings line's values
    are unquoted; "Size" stays "WxH". The settings line is the last line when it has at least three
    "Key: value" pairs, otherwise the whole text is prompt.
    """
    if not isinstance(text, str):
        raise ValueError(f"parameters: must be text (got {type(text).__name__})")
    *lines, last = text.strip().split("\n")
    pairs = settings_pairs(last)
    if len(pairs) < 3:
        lines.append(last)
        pairs = []
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            negative.append(line[len("Negative prompt:") :].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    result = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in pairs:
        result[key.strip()] = _unquote(value.strip())
    return result


def settings_pairs(line: str) -> list[tuple[str, str]]:
    """The (key, raw value) pairs of an infotext settings line, as `re.findall` with A1111's `re_param`
    (`\\s*(\\w[\\w \\-/]+):\\s*("(?:\\\\.|[^\\\\"])+"|[^,]*)(?:,|$)`) gives them, in time linear in the line.

    A key is a run of key characters that starts with a word character, has at least two, and ends at a
    colon; a failed run is skipped whole (the regex retried it from every position inside). The value
    is a quoted string when one closes right before a comma or the end, otherwise up to the next comma.
    """
    pairs, pos, end = [], 0, len(line)
    while (start := _RE_KEY_START.search(line, pos)) is not None:
        key_start = start.start()
        key_end = _RE_KEY_RUN.match(line, key_start).end()
        if key_end - key_start < 2 or key_end == end or line[key_end] != ":":
            pos = max(key_end, key_start + 1)
            continue
        value_start = _RE_SPACES.match(line, key_end + 1).end()
        quoted = _RE_QUOTED.match(line, value_start)
        if quoted is not None and (quoted.end() == end or line[quoted.end()] == ","):
            value_end = quoted.end()
        else:
            comma = line.find(",", value_start)
            value_end = end if comma < 0 else comma
        pairs.append((line[key_start:key_end], line[value_start:value_end]))
        pos = value_end + 1
    return pairs


def _title_and_hash(title: str) -> tuple[str, str | None]:
    """A1111's short title "name [hash]" as (name, hash); (title, None) without a hex hash in brackets."""
    head, bracket, tail = title.rpartition("[")
    digest = tail[:-1]
    if bracket and tail.endswith("]") and digest and all(c in "0123456789abcdefABCDEF" for c in digest):
        return head.rstrip(), digest
    return title, None


def to_int(source: str, key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{source}: {key} must be a whole number (got {value!r})")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"{source}: {key} must be a whole number (got {value!r})") from None


def to_float(source: str, key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{source}: {key} must be a number (got {value!r})")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: {key} must be a number (got {value!r})") from None


def sha256_or_none(value: Any) -> str | None:
    if isinstance(value, str):
        value = value.removeprefix("sha256:")
        if _RE_SHA256.match(value):
            return value.lower()
    return None


def build_recipe(source: str, fields: dict[str, Any]) -> Recipe:
    """The Recipe, with a validation error prefixed by where the values came from."""
    try:
        return Recipe(**fields)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def _a1111_scheduler(fields: dict[str, str], unmapped: list[str]) -> str:
    sampler = fields.get("Sampler")
    if sampler is None:
        unmapped.append("Sampler: (missing)")
        return "Euler"
    schedule = fields.get("Schedule type")
    name = sampler
    if schedule is not None:
        if schedule == "Automatic":
            schedule = _A1111_AUTOMATIC_SCHEDULE.get(sampler)
        if schedule and schedule != "Uniform":
            name = f"{sampler} {schedule}"
    if name in SCHEDULERS:
        return name
    unmapped.append(f"Sampler: {sampler}" + (f" (schedule {fields['Schedule type']})" if schedule else ""))
    return "Euler"


_VARIATION_KEYS = ("Variation seed", "Variation seed strength")


def _a1111_variation(source: str, fields: dict[str, str], mode: str) -> dict[str, Any]:
    """A1111's variation seed and strength, for txt2img (an img2img one stays unmapped)."""
    if "Variation seed" not in fields or mode != "txt2img":
        return {}
    return {
        "variation_seed": to_int(source, "Variation seed", fields["Variation seed"]),
        "variation_strength": to_float(source, "Variation seed strength", fields.get("Variation seed strength", 0)),
    }


def recipe_from_a1111(text: str) -> ReadBack:
    """The closest Recipe to an A1111 infotext (prompt syntax "a1111", LoRA tokens into loras)."""
    source = "A1111 parameters"
    fields = parse_a1111_parameters(text)
    check_prompt_length(f"{source}: prompt", fields["Prompt"])  # before the prompt is parsed further
    check_prompt_length(f"{source}: negative prompt", fields["Negative prompt"])
    for required in ("Steps", "Seed", "Size"):
        if required not in fields:
            raise ValueError(
                f"{source}: no {required} (expected a settings line such as 'Steps: 30, Seed: 1, Size: 1024x1024')"
            )
    size = _RE_SIZE.match(fields["Size"])
    if size is None:
        raise ValueError(f"{source}: Size must be WIDTHxHEIGHT (got {fields['Size']!r})")
    unmapped: list[str] = []
    syntax = fields.get("Prompt syntax", "a1111")
    if syntax not in PROMPT_SYNTAXES:
        unmapped.append(f"Prompt syntax: {syntax}")
        syntax = "a1111"
    prompt, lora_tokens = extract_lora_tokens(fields["Prompt"])
    lora_hashes = _parse_lora_hashes(fields.get("Lora hashes", ""))
    values: dict[str, Any] = {
        "prompt": prompt.strip(),
        "negative_prompt": fields["Negative prompt"],
        "prompt_syntax": syntax,
        "steps": to_int(source, "Steps", fields["Steps"]),
        "seed": to_int(source, "Seed", fields["Seed"]),
        "width": int(size.group(1)),
        "height": int(size.group(2)),
        "guidance": to_float(source, "CFG scale", fields.get("CFG scale", 7.0)),
        "scheduler": _a1111_scheduler(fields, unmapped),
        "loras": tuple(LoraRef(name, sha256_or_none(lora_hashes.get(name)), weight) for name, weight in lora_tokens),
        "switch": 1.0,
        "refine": None,
    }
    model_sha = sha256_or_none(fields.get("Model hash"))
    values["model"] = ModelRef(fields.get("Model") or fields.get("Model hash") or "unknown", model_sha)
    if "Model hash" in fields and model_sha is None:
        unmapped.append(f"Model hash: {fields['Model hash']}")
    if "Refiner" in fields:
        name, short = _title_and_hash(fields["Refiner"])
        values["refine"] = RefineSettings(model=ModelRef(name.strip() or fields["Refiner"], sha256_or_none(short)))
        values["switch"] = to_float(source, "Refiner switch at", fields.get("Refiner switch at", 0.8))
        if short and not sha256_or_none(short):
            unmapped.append(f"Refiner hash: {short}")
    if "Denoising strength" in fields:
        if any(key in fields for key in _A1111_HIRES_KEYS):
            unmapped.append(f"Denoising strength: {fields['Denoising strength']} (hires fix)")
        else:
            values["mode"] = "img2img"
            values["strength"] = to_float(source, "Denoising strength", fields["Denoising strength"])
    values.update(_a1111_variation(source, fields, values.get("mode", "txt2img")))
    if lora_hashes and any(sha256_or_none(h) is None for h in lora_hashes.values()):
        unmapped.append(f"Lora hashes: {fields['Lora hashes']}")
    version = fields.get("Version", "")
    if version.startswith(APP_NAME):
        values["app_version"] = version[len(APP_NAME) :].strip()
    elif version:
        unmapped.append(f"Version: {version}")
    used = {
        "Prompt",
        "Negative prompt",
        "Steps",
        "Seed",
        "Size",
        "CFG scale",
        "Sampler",
        "Schedule type",
        "Model",
        "Model hash",
        "Refiner",
        "Refiner switch at",
        "Denoising strength",
        "Lora hashes",
        "Version",
        "Prompt syntax",
        *(_VARIATION_KEYS if "variation_seed" in values else ()),
    }
    unmapped += [f"{key}: {value}" for key, value in fields.items() if key not in used]
    short = tuple((name, digest) for name, digest in lora_hashes.items() if sha256_or_none(digest) is None)
    return ReadBack(build_recipe(source, values), "a1111", tuple(unmapped), short)


def _parse_lora_hashes(value: str) -> dict[str, str]:
    pairs = (item.rsplit(":", 1) for item in value.split(",") if ":" in item)
    return {name.strip(): digest.strip() for name, digest in pairs}
