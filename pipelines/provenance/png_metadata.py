"""Metadata that travels inside every PNG, and reading it back from Atelier, A1111 and InvokeAI files.

Writing: the full Recipe JSON in an iTXt chunk "atelier_recipe", and an A1111-style "parameters"
text so A1111's PNG Info and Civitai show the prompt and settings. The caller watermarks the pixels
first; text chunks do not touch pixels, so neither step undoes the other.

Reading gives the Recipe exactly for an Atelier PNG, and the closest Recipe for an A1111 PNG
("parameters") or an InvokeAI PNG ("invokeai_metadata" JSON), with the fields that could not be
mapped listed as "Key: value". Malformed metadata raises ValueError with what was wrong. No torch.

Hashes, as A1111 writes them: "Model hash" is AutoV2 (the first 10 hex digits of the file's sha256,
which the Recipe keeps whole); "Lora hashes" are AutoV3 (the first 12 hex digits of the sha256 of a
.safetensors file's tensor data after its header), given by the caller, which can read the files.
Short hashes cannot pin a Recipe's sha256: on reading they are listed as unmapped and kept in
`ReadBack.lora_hashes`, for the caller to find the local LoRA files by (`with_pinned_loras`).
"""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from pipelines.provenance.infotext import (  # noqa: F401 (re-exported: the A1111 half of this module's API)
    APP_NAME,
    ReadBack,
    a1111_parameters,
    a1111_prompt,
    build_recipe,
    parse_a1111_parameters,
    recipe_from_a1111,
    sha256_or_none,
    to_float,
    to_int,
)
from pipelines.recipe import (
    MAX_IMAGE_PIXELS,
    LoraRef,
    MicroConditioning,
    ModelRef,
    Recipe,
    RefineSettings,
    loads_limited_json,
)

RECIPE_KEY = "atelier_recipe"
A1111_KEY = "parameters"
INVOKEAI_KEY = "invokeai_metadata"
SOURCES = ("atelier", "a1111", "invokeai")
# Caps on what a PNG's text may cost to read, checked on the raw chunk lengths before Pillow reads any
# (Pillow itself lets 64 MB of tEXt through; a compressed chunk is capped at 1 MB unpacked by Pillow).
MAX_TEXT_CHUNK_BYTES = 1024 * 1024
MAX_TEXT_BYTES = 4 * 1024 * 1024
MAX_PNG_BYTES = 256 * 1024 * 1024
MAX_PNG_CHUNKS = 100_000  # encoders split image data into 8-64 KiB chunks: a few thousand at most sizes
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")

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


# -- writing -----------------------------------------------------------------------------------------


# zlib's run-length strategy at level 1, chosen by measurement (`atelier bench`, README "Performance"): on
# 1024² photo-like images it is ≈ 4× faster than Pillow's default (level 6) and its files are no larger.
PNG_SAVE_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_RLE}


def encode_png(image: Image.Image, recipe: Recipe, lora_hashes: dict[str, str] | None = None) -> bytes:
    """PNG bytes of an (already watermarked) image with the Recipe and A1111 parameters inside
    (`lora_hashes`: see `a1111_parameters`)."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"image: must be a PIL image (got {type(image).__name__})")
    info = PngImagePlugin.PngInfo()
    info.add_text(A1111_KEY, a1111_parameters(recipe, lora_hashes))  # tEXt, or iTXt when not Latin-1
    info.add_itxt(RECIPE_KEY, recipe.to_json())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, **PNG_SAVE_OPTIONS)
    return buffer.getvalue()


# -- InvokeAI --------------------------------------------------------------------------------------


def _invoke_model(source: str, key: str, value: Any, unmapped: list[str]) -> ModelRef:
    if not isinstance(value, dict):
        raise ValueError(f"{source}: {key} must be an object with a name (got {value!r})")
    name = value.get("name") or value.get("model_name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{source}: {key}.name must be a non-empty string (got {name!r})")
    sha = sha256_or_none(value.get("hash"))
    if value.get("hash") and sha is None:
        unmapped.append(f"{key}.hash: {value['hash']}")  # InvokeAI 4 hashes with BLAKE3 by default
    return ModelRef(name, sha)


def recipe_from_invokeai(metadata: str | dict) -> ReadBack:
    """The closest Recipe to InvokeAI's "invokeai_metadata" (InvokeAI prompts are compel syntax)."""
    source = "InvokeAI metadata"
    if isinstance(metadata, str):
        try:
            metadata = loads_limited_json(metadata, what=source, max_chars=MAX_TEXT_CHUNK_BYTES)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
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
        "seed": to_int(source, "seed", take("seed")),
        "steps": to_int(source, "steps", take("steps")),
        "width": to_int(source, "width", take("width")),
        "height": to_int(source, "height", take("height")),
        "guidance": to_float(source, "cfg_scale", take("cfg_scale", 7.5)),
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
        values["strength"] = to_float(source, "strength", take("strength", 0.75))
    elif mode not in ("txt2img", "sdxl_txt2img"):
        unmapped.append(f"generation_mode: {mode}")
    loras = take("loras", []) or []
    if not isinstance(loras, list):
        raise ValueError(f"{source}: loras must be a list (got {loras!r})")
    values["loras"] = tuple(_invoke_lora(source, item, unmapped) for item in loras)
    if "refiner_model" in data and data["refiner_model"]:
        values["refine"] = RefineSettings(model=_invoke_model(source, "refiner_model", take("refiner_model"), unmapped))
        values["switch"] = to_float(source, "refiner_start", take("refiner_start", 0.8))
        values["micro"] = MicroConditioning(
            aesthetic_score=to_float(
                source, "refiner_positive_aesthetic_score", take("refiner_positive_aesthetic_score", 6.0)
            ),
            negative_aesthetic_score=to_float(
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
    return ReadBack(build_recipe(source, values), "invokeai", tuple(unmapped))


def _invoke_lora(source: str, item: Any, unmapped: list[str]) -> LoraRef:
    if not isinstance(item, dict):
        raise ValueError(f"{source}: each lora must be an object (got {item!r})")
    model = item.get("model") or item.get("lora")
    ref = _invoke_model(source, "loras.model", model, unmapped)
    return LoraRef(ref.name, ref.sha256, to_float(source, "loras.weight", item.get("weight", 1.0)))


# -- reading ---------------------------------------------------------------------------------------


def png_text_chunks(data: bytes | Path | str) -> dict[str, str]:
    """The text chunks (tEXt, zTXt, iTXt) of a PNG; ValueError when it is not one."""
    name = str(data) if isinstance(data, (str, Path)) else "data"
    try:
        if isinstance(data, (str, Path)) and Path(data).stat().st_size > MAX_PNG_BYTES:
            raise ValueError(f"{name}: {Path(data).stat().st_size} bytes is over the limit of {MAX_PNG_BYTES} per PNG")
        raw = Path(data).read_bytes() if isinstance(data, (str, Path)) else bytes(data)
    except OSError as exc:
        raise ValueError(f"{name}: cannot read the file ({exc.strerror or exc})") from None
    if not raw.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"{name}: not a PNG file (Atelier reads metadata from PNG only)")
    _check_text_sizes(raw, name)
    try:
        with Image.open(io.BytesIO(raw)) as image:
            width, height = image.size  # from the header: a decompression bomb is refused before decoding
            if width * height <= MAX_IMAGE_PIXELS:
                image.load()  # text chunks after the image data are read with it
                return {str(k): str(v) for k, v in getattr(image, "text", {}).items()}
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{name}: damaged PNG ({exc})") from None
    raise ValueError(f"{name}: {width}×{height} pixels is over the limit of {MAX_IMAGE_PIXELS} pixels per image")


def _check_text_sizes(raw: bytes, name: str) -> None:
    """Refuse a PNG whose text chunks are larger than Atelier reads, from their lengths alone."""
    pos, total = 8, 0
    for _ in range(MAX_PNG_CHUNKS):
        if pos + 8 > len(raw):
            return
        length, kind = int.from_bytes(raw[pos : pos + 4], "big"), raw[pos + 4 : pos + 8]
        if kind in _TEXT_CHUNKS:
            key = raw[pos + 8 : pos + 8 + min(length, 80)].split(b"\0")[0].decode("latin-1")
            total += length
            if length > MAX_TEXT_CHUNK_BYTES:
                raise ValueError(
                    f"{name}: text chunk {key!r} is {length} bytes, over the limit of {MAX_TEXT_CHUNK_BYTES}"
                )
            if total > MAX_TEXT_BYTES:
                raise ValueError(f"{name}: text chunks of over {MAX_TEXT_BYTES} bytes in all (the limit)")
        if kind == b"IEND":
            return
        pos += 12 + length
    raise ValueError(f"{name}: more than {MAX_PNG_CHUNKS} chunks (the limit)")


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
