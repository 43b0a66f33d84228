"""Where Atelier keeps things. Light: imported by the CLI before anything heavy."""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    """$ATELIER_HOME, else ~/.atelier: the gallery, its files, the tiny model and caches live here."""
    return Path(os.environ.get("ATELIER_HOME") or Path.home() / ".atelier")
