"""Where Atelier keeps things. Light: imported by the CLI before anything heavy."""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    """$ATELIER_HOME, else ~/.atelier: the gallery, its files, the tiny model and caches live here."""
    return Path(os.environ.get("ATELIER_HOME") or Path.home() / ".atelier")


def default_prompt_syntax() -> str:
    """$ATELIER_PROMPT_SYNTAX ("compel" or "a1111"): how prompts are read unless a request says otherwise."""
    from pipelines.recipe import PROMPT_SYNTAXES

    value = os.environ.get("ATELIER_PROMPT_SYNTAX", "compel").strip().lower()
    if value not in PROMPT_SYNTAXES:
        raise ValueError(f"ATELIER_PROMPT_SYNTAX: must be one of {', '.join(PROMPT_SYNTAXES)} (got {value!r})")
    return value
