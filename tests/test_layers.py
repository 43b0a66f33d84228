"""The layer rules of docs/architecture.md, checked two ways.

- Statically: `lint-imports` checks the contracts in .importlinter against every import statement,
  function-level ones included (grimp reads them all).
- At run time: a fresh interpreter imports one module and we look at what got loaded. This catches
  what a static graph cannot see, such as a third-party package that pulls in torch behind our back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TORCH_STACK = {"torch", "diffusers", "transformers", "compel", "peft"}
ABOVE_PIPELINES = {"storage", "webui", "atelier", "gradio", "sqlalchemy"}
ENGINE = {"pipelines.engine.engine", "pipelines.models.loading"}

# module -> modules it must not load (a name forbids that module and everything under it)
FORBIDDEN = {
    # torch-free parts of pipelines: front ends, the request builder and the gallery use them
    "pipelines.sizes": TORCH_STACK | ABOVE_PIPELINES | ENGINE,
    "pipelines.prompt_syntax": TORCH_STACK | ABOVE_PIPELINES | ENGINE,
    "pipelines.provenance.png_metadata": TORCH_STACK | ABOVE_PIPELINES | ENGINE,
    "pipelines.engine.inputs": TORCH_STACK | ABOVE_PIPELINES | ENGINE,
    "pipelines.models.model_files": TORCH_STACK | ABOVE_PIPELINES | ENGINE,
    # the engine knows nothing above it
    "pipelines.engine.engine": ABOVE_PIPELINES,
    # the gallery: no torch, no front end, of pipelines only the Recipe
    "storage.gallery": TORCH_STACK
    | {
        "gradio",
        "webui",
        "atelier",
        "pipelines.engine",
        "pipelines.models",
        "pipelines.provenance",
        "pipelines.prompt_syntax",
        "pipelines.sizes",
    },
    # the application: light to import, never a front end
    "atelier.requests": TORCH_STACK | {"gradio", "webui", "storage", "sqlalchemy", "atelier.studio"} | ENGINE,
    "atelier.prompt_expansion": TORCH_STACK | {"gradio", "webui", "storage", "sqlalchemy", "atelier.studio"} | ENGINE,
    "atelier.sweeps": TORCH_STACK | {"gradio", "webui", "storage", "sqlalchemy", "atelier.studio"} | ENGINE,
    "atelier.studio": TORCH_STACK | {"gradio", "webui"},
    "atelier.bench": {"gradio", "webui"},
    "atelier.ui_bench": {"gradio", "webui"},
    # the CLI starts light; commands import what they need
    "atelier.cli": TORCH_STACK | {"gradio", "webui", "storage", "sqlalchemy"} | ENGINE,
    # the web UI starts light too: the engine is loaded when the Studio is made, not on import
    "webui.app": TORCH_STACK | ENGINE,
}

# Standard library only (besides pipelines itself), so anything can import them.
STDLIB_ONLY = ["pipelines.recipe", "pipelines.errors"]


def _newly_loaded(module: str) -> set[str]:
    """Every module a fresh interpreter loads to import `module` (not what it had loaded at start-up)."""
    code = (
        "import json, sys; before = set(sys.modules); "
        f"import {module}; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, f"importing {module} failed:\n{result.stderr}"
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def _matches(loaded: str, forbidden: str) -> bool:
    return loaded == forbidden or loaded.startswith(forbidden + ".")


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_imports_respect_the_layers(module):
    loaded = _newly_loaded(module)
    bad = sorted(f for f in FORBIDDEN[module] if any(_matches(m, f) for m in loaded))
    assert not bad, f"importing {module} loads {bad}"


@pytest.mark.parametrize("module", STDLIB_ONLY)
def test_module_needs_only_the_standard_library(module):
    loaded = {m.split(".")[0] for m in _newly_loaded(module)}
    third_party = sorted(
        m for m in loaded if m not in sys.stdlib_module_names and m != "pipelines" and not m.startswith("_")
    )
    assert not third_party, f"importing {module} loads {third_party}; it must need only the standard library"


def test_import_contracts():
    """Every contract in .importlinter is kept (see docs/architecture.md for what each one means)."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    if not lint_imports.exists():
        pytest.fail(f"{lint_imports} is missing: install the test tools (pip install -e '.[test]')")
    result = subprocess.run(
        [str(lint_imports), "--config", str(ROOT / ".importlinter"), "--no-cache", "--no-logo"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"lint-imports found broken contracts:\n{result.stdout}\n{result.stderr}"
