"""The layer rules of design.md, checked by importing each package in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FORBIDDEN = {
    "pipelines.recipe": {"torch", "diffusers", "gradio", "storage", "webui", "atelier", "sqlalchemy"},
    "pipelines.provenance.png_metadata": {"torch", "diffusers", "transformers", "gradio", "storage", "atelier"},
    "pipelines.prompt_syntax": {"torch", "diffusers", "transformers", "gradio", "storage", "atelier"},
    "pipelines.engine.engine": {"gradio", "storage", "webui", "atelier", "sqlalchemy"},
    "storage.gallery": {"torch", "diffusers", "transformers", "gradio", "webui", "atelier"},
    "atelier.studio": {"gradio", "webui"},
    "atelier.bench": {"gradio", "webui"},
    "atelier.ui_bench": {"gradio", "webui"},
    "atelier.cli": {"torch", "gradio", "diffusers"},  # the CLI starts light; commands import what they need
}


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_imports_respect_the_layers(module):
    code = f"import json, sys; import {module}; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out.strip().splitlines()[-1]))
    assert not (loaded & FORBIDDEN[module]), f"{module} pulls in {sorted(loaded & FORBIDDEN[module])}"
