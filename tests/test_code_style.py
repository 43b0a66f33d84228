"""ruff (lint and format, configured in pyproject.toml) passes on the whole tree: part of the test run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def ruff(*args: str) -> subprocess.CompletedProcess:
    binary = Path(sys.executable).with_name("ruff")
    if not binary.exists():
        pytest.fail(f"{binary} is missing: install the test tools (pip install -e '.[test]')")
    return subprocess.run([str(binary), *args, "--no-cache", "."], capture_output=True, text=True, cwd=ROOT)


def test_ruff_lint():
    result = ruff("check")
    assert result.returncode == 0, f"ruff check (fix with `ruff check --fix .`):\n{result.stdout}{result.stderr}"


def test_ruff_format():
    result = ruff("format", "--check")
    assert result.returncode == 0, f"ruff format would change files (run `ruff format .`):\n{result.stdout}"
