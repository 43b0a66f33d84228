"""Metadata that travels inside every PNG, and reading it back from Atelier, A1111 and InvokeAI files.

Writing: the full Recipe JSON in an iTXt chunk "atelier_recipe", and an A1111-style "parameters"
text so A1111's PNG Info and Civitai show the prompt and settings. The caller watermarks the pixels
first; text chunks do not touch pixels, so neither step undoes the other.

Reading gives the Recipe exactly for an Atelier PNG, and the closest Recipe for an A1111 PNG
("parameters") or an InvokeAI PNG ("invokeai_metadata" JSON), with the fields that could not be
mapped listed as "Key: value". Malformed metadata raises ValueError with what was wrong. No torch.

Hashes: A1111's "Model hash" is the first 10 hex digits of the file's sha256 and its LoRA hashes
are 12 hex digits (for .safetensors, A1111 hashes the tensor data after the header, so Civitai may
not match the ones written here, which come from the whole-file sha256 of the Recipe). Short hashes
cannot pin a Recipe's sha256, so on reading they are listed as unmapped.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from pipelines.prompt_syntax import extract_lora_tokens
from pipelines.recipe import PROMPT_SYNTAXES, SCHEDULERS, LoraRef, MicroConditioning, ModelRef, Recipe, RefineSettings

RECIPE_KEY = "atelier_recipe"
A1111_KEY = "parameters"
INVOKEAI_KEY = "invokeai_metadata"
SOURCES = ("atelier", "a1111", "invokeai")
APP_NAME = "Atelier"

_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')  # A1111's re_param
_RE_SIZE = re.compile(r"^(\d+)x(\d+)$")
_RE_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_RE_TITLE = re.compile(r"^(.*?)(?:\s*\[([0-9a-fA-F]+)\])?$")  # "name [hash]", A1111's short_title

# A1111 1.9+ writes the schedule separately; "Automatic" means the sampler's own default.
_A1111_AUTOMATIC_SCHEDULE = {"DPM++ 2M": "Karras", "DPM++ 2M SDE": "Exponential"}
_A1111_HIRES_KEYS = ("Hires upscale", "Hires upscaler", "Hires steps", "Hires resize-1")

INVOKEAI_SCHEDULERS = {
    "euler": "Euler",
    "euler_a": "Euler a",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_k": "DPM++ 2M Karras",
    "dpmpp_2m_sde_k": "DPM++ 2M SDE Karras",
    "ddim": "DDIM",
    "unipc": "UniPC",
    "lcm": "LCM",
}


@dataclass(frozen=True)
class ReadBack:
    recipe: Recipe
    source: str  # "atelier" | "a1111" | "invokeai"
    unmapped: tuple[str, ...] = ()  # "Key: value" for what the Recipe could not hold


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


def a1111_parameters(recipe: Recipe) -> str:
    """The A1111 "parameters" text for a Recipe (what A1111's PNG Info and Civitai read)."""
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
    if recipe.variation_seed is not None:  # A1111's own keys
        fields += [
            ("Variation seed", recipe.variation_seed),
            ("Variation seed strength", _number(recipe.variation_strength)),
        ]
    if recipe.refine is not None and recipe.refine.model is not None and recipe.base_stops_early:
        fields += [("Refiner", _title(recipe.refine.model)), ("Refiner switch at", _number(recipe.switch))]
    hashed = [lora for lora in recipe.loras if lora.sha256]
    if hashed:
        fields.append(("Lora hashes", ", ".join(f"{lora.name}: {lora.sha256[:12]}" for lora in hashed)))
    fields.append(("Prompt syntax", recipe.prompt_syntax))  # not A1111's; says how to read the prompt
    fields.append(("Version", f"{APP_NAME} {recipe.app_version}".strip()))
    lines = [a1111_prompt(recipe)]
    if recipe.negative_prompt:
        lines.append(f"Negative prompt: {recipe.negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in fields))
    return "\n".join(lines)


def encode_png(image: Image.Image, recipe: Recipe) -> bytes:
    """PNG bytes of an (already watermarked) image with the Recipe and A1111 parameters inside."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"image: must be a PIL image (got {type(image).__name__})")
    info = PngImagePlugin.PngInfo()
    info.add_text(A1111_KEY, a1111_parameters(recipe))  # tEXt, or iTXt when not Latin-1
    info.add_itxt(RECIPE_KEY, recipe.to_json())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


# -- A1111 -----------------------------------------------------------------------------------------


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
    if len(_RE_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
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
    for key, value in _RE_PARAM.findall(last):
        result[key.strip()] = _unquote(value.strip())
    return result


def _to_int(source: str, key: str, value: Any) -> int:
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


def _to_float(source: str, key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{source}: {key} must be a number (got {value!r})")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: {key} must be a number (got {value!r})") from None


def _sha(value: Any) -> str | None:
    if isinstance(value, str):
        value = value.removeprefix("sha256:")
        if _RE_SHA256.match(value):
            return value.lower()
    return None


def _build(source: str, fields: dict[str, Any]) -> Recipe:
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
        "variation_seed": _to_int(source, "Variation seed", fields["Variation seed"]),
        "variation_strength": _to_float(source, "Variation seed strength", fields.get("Variation seed strength", 0)),
    }


def recipe_from_a1111(text: str) -> ReadBack:
    """The closest Recipe to an A1111 infotext (prompt syntax "a1111", LoRA tokens into loras)."""
    source = "A1111 parameters"
    fields = parse_a1111_parameters(text)
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
        "steps": _to_int(source, "Steps", fields["Steps"]),
        "seed": _to_int(source, "Seed", fields["Seed"]),
        "width": int(size.group(1)),
        "height": int(size.group(2)),
        "guidance": _to_float(source, "CFG scale", fields.get("CFG scale", 7.0)),
        "scheduler": _a1111_scheduler(fields, unmapped),
        "loras": tuple(LoraRef(name, _sha(lora_hashes.get(name)), weight) for name, weight in lora_tokens),
        "switch": 1.0,
        "refine": None,
    }
    model_sha = _sha(fields.get("Model hash"))
    values["model"] = ModelRef(fields.get("Model") or fields.get("Model hash") or "unknown", model_sha)
    if "Model hash" in fields and model_sha is None:
        unmapped.append(f"Model hash: {fields['Model hash']}")
    if "Refiner" in fields:
        name, short = _RE_TITLE.match(fields["Refiner"]).groups()
        values["refine"] = RefineSettings(model=ModelRef(name.strip() or fields["Refiner"], _sha(short)))
        values["switch"] = _to_float(source, "Refiner switch at", fields.get("Refiner switch at", 0.8))
        if short and not _sha(short):
            unmapped.append(f"Refiner hash: {short}")
    if "Denoising strength" in fields:
        if any(key in fields for key in _A1111_HIRES_KEYS):
            unmapped.append(f"Denoising strength: {fields['Denoising strength']} (hires fix)")
        else:
            values["mode"] = "img2img"
            values["strength"] = _to_float(source, "Denoising strength", fields["Denoising strength"])
    values.update(_a1111_variation(source, fields, values.get("mode", "txt2img")))
    if lora_hashes and any(_sha(h) is None for h in lora_hashes.values()):
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
    return ReadBack(_build(source, values), "a1111", tuple(unmapped))


def _parse_lora_hashes(value: str) -> dict[str, str]:
    pairs = (item.rsplit(":", 1) for item in value.split(",") if ":" in item)
    return {name.strip(): digest.strip() for name, digest in pairs}


# -- InvokeAI --------------------------------------------------------------------------------------


def _invoke_model(source: str, key: str, value: Any, unmapped: list[str]) -> ModelRef:
    if not isinstance(value, dict):
        raise ValueError(f"{source}: {key} must be an object with a name (got {value!r})")
    name = value.get("name") or value.get("model_name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{source}: {key}.name must be a non-empty string (got {name!r})")
    sha = _sha(value.get("hash"))
    if value.get("hash") and sha is None:
        unmapped.append(f"{key}.hash: {value['hash']}")  # InvokeAI 4 hashes with BLAKE3 by default
    return ModelRef(name, sha)


def recipe_from_invokeai(metadata: str | dict) -> ReadBack:
    """The closest Recipe to InvokeAI's "invokeai_metadata" (InvokeAI prompts are compel syntax)."""
    source = "InvokeAI metadata"
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except ValueError as exc:
            raise ValueError(f"{source}: not valid JSON ({exc})") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"{source}: must be a JSON object (got {type(metadata).__name__})")
    data = dict(metadata)
    unmapped: list[str] = []

    def take(key: str, default: Any = None) -> Any:
        return data.pop(key, default)

    prompt = take("positive_prompt")
    if not isinstance(prompt, str):
        raise ValueError(f"{source}: positive_prompt must be a string (got {prompt!r})")
    negative = take("negative_prompt", "") or ""
    if not isinstance(negative, str):
        raise ValueError(f"{source}: negative_prompt must be a string (got {negative!r})")
    for key in ("seed", "steps", "width", "height"):
        if key not in data:
            raise ValueError(f"{source}: no {key}")
    values: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": negative,
        "prompt_syntax": "compel",
        "seed": _to_int(source, "seed", take("seed")),
        "steps": _to_int(source, "steps", take("steps")),
        "width": _to_int(source, "width", take("width")),
        "height": _to_int(source, "height", take("height")),
        "guidance": _to_float(source, "cfg_scale", take("cfg_scale", 7.5)),
        "model": _invoke_model(source, "model", take("model", None) or {"name": "unknown"}, unmapped),
        "switch": 1.0,
        "refine": None,
    }
    if values["model"].name == "unknown" and "model" not in metadata:
        unmapped.append("model: (missing)")
    scheduler = take("scheduler", "euler")
    if not isinstance(scheduler, str):
        raise ValueError(f"{source}: scheduler must be a name (got {scheduler!r})")
    values["scheduler"] = INVOKEAI_SCHEDULERS.get(scheduler, "Euler")
    if scheduler not in INVOKEAI_SCHEDULERS:
        unmapped.append(f"scheduler: {scheduler}")
    for key, same_as in (("positive_style_prompt", prompt), ("negative_style_prompt", negative)):
        style = take(key)
        if style not in (None, "", same_as):
            unmapped.append(f"{key}: {style}")
    mode = take("generation_mode", "txt2img")
    if mode in ("img2img", "sdxl_img2img"):
        values["mode"] = "img2img"
        values["strength"] = _to_float(source, "strength", take("strength", 0.75))
    elif mode not in ("txt2img", "sdxl_txt2img"):
        unmapped.append(f"generation_mode: {mode}")
    loras = take("loras", []) or []
    if not isinstance(loras, list):
        raise ValueError(f"{source}: loras must be a list (got {loras!r})")
    values["loras"] = tuple(_invoke_lora(source, item, unmapped) for item in loras)
    if "refiner_model" in data and data["refiner_model"]:
        values["refine"] = RefineSettings(model=_invoke_model(source, "refiner_model", take("refiner_model"), unmapped))
        values["switch"] = _to_float(source, "refiner_start", take("refiner_start", 0.8))
        values["micro"] = MicroConditioning(
            aesthetic_score=_to_float(
                source, "refiner_positive_aesthetic_score", take("refiner_positive_aesthetic_score", 6.0)
            ),
            negative_aesthetic_score=_to_float(
                source, "refiner_negative_aesthetic_score", take("refiner_negative_aesthetic_score", 2.5)
            ),
        )
        for key, base_value in (
            ("refiner_cfg_scale", values["guidance"]),
            ("refiner_steps", values["steps"]),
            ("refiner_scheduler", scheduler),
        ):
            if key in data and data[key] == base_value:
                take(key)
    for key, harmless in (("rand_device", "cpu"), ("cfg_rescale_multiplier", 0)):
        if data.get(key) == harmless:
            take(key)
    unmapped += [f"{key}: {json.dumps(value) if not isinstance(value, str) else value}" for key, value in data.items()]
    return ReadBack(_build(source, values), "invokeai", tuple(unmapped))


def _invoke_lora(source: str, item: Any, unmapped: list[str]) -> LoraRef:
    if not isinstance(item, dict):
        raise ValueError(f"{source}: each lora must be an object (got {item!r})")
    model = item.get("model") or item.get("lora")
    ref = _invoke_model(source, "loras.model", model, unmapped)
    return LoraRef(ref.name, ref.sha256, _to_float(source, "loras.weight", item.get("weight", 1.0)))


# -- reading ---------------------------------------------------------------------------------------


def png_text_chunks(data: bytes | Path | str) -> dict[str, str]:
    """The text chunks (tEXt, zTXt, iTXt) of a PNG; ValueError when it is not one."""
    name = str(data) if isinstance(data, (str, Path)) else "data"
    try:
        raw = Path(data).read_bytes() if isinstance(data, (str, Path)) else bytes(data)
    except OSError as exc:
        raise ValueError(f"{name}: cannot read the file ({exc.strerror or exc})") from None
    if not raw.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"{name}: not a PNG file (Atelier reads metadata from PNG only)")
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            return {str(k): str(v) for k, v in getattr(image, "text", {}).items()}
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{name}: damaged PNG ({exc})") from None


def read_png(data: bytes | Path | str) -> ReadBack:
    """The Recipe inside a PNG: exact for Atelier's, the closest one for A1111's and InvokeAI's."""
    chunks = png_text_chunks(data)
    if RECIPE_KEY in chunks:
        try:
            return ReadBack(Recipe.from_json(chunks[RECIPE_KEY]), "atelier", ())
        except ValueError as exc:
            raise ValueError(f"{RECIPE_KEY} chunk: {exc}") from None
    if INVOKEAI_KEY in chunks:
        return recipe_from_invokeai(chunks[INVOKEAI_KEY])
    if A1111_KEY in chunks:
        return recipe_from_a1111(chunks[A1111_KEY])
    raise ValueError(
        f"no generation metadata in this PNG (looked for the {RECIPE_KEY}, {A1111_KEY} and {INVOKEAI_KEY} text chunks)"
    )
