"""json.loads for untrusted text (recipes, PNG metadata, safetensors headers): size checked before parsing,
nesting after, every refusal a ValueError in words. Standard library only, like pipelines.recipe, which
uses it and re-exports it."""

from __future__ import annotations

import json
from typing import Any

MAX_JSON_DEPTH = 16  # a recipe nests 6 deep, a safetensors header 4


def loads_limited_json(text: str | bytes, *, what: str, max_chars: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads of untrusted text: its size checked before parsing, its nesting after (a ValueError
    naming `what` and the limit, never a RecursionError)."""
    if not isinstance(text, (str, bytes, bytearray)):
        raise ValueError(f"{what}: must be JSON text (got {type(text).__name__})")
    if len(text) > max_chars:
        raise ValueError(f"{what}: {len(text)} characters of JSON is over the limit of {max_chars}")
    try:
        data = json.loads(text)
    except RecursionError:
        data = None  # nested past the interpreter's limit: refused below like any deep value
        depth = max_depth + 1
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: not valid JSON ({exc})") from None
    else:
        depth, level = 0, [data]
        while level and depth <= max_depth:  # breadth-first, so a deep value cannot exhaust the stack
            depth += 1
            level = [
                v for x in level if isinstance(x, (dict, list)) for v in (x.values() if isinstance(x, dict) else x)
            ]
    if depth > max_depth:
        raise ValueError(f"{what}: JSON nested deeper than the limit of {max_depth} levels")
    return data
