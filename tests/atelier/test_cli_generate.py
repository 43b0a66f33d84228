"""The CLI contract: draft → refine in separate processes (as after a restart), rerun, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def atelier(home, *args, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ATELIER_HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-m", "atelier.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"atelier {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def pixel_hash(path):
    with Image.open(path) as image:
        return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("cli-home")


@pytest.fixture(scope="module")
def drafted(home):
    out = atelier(
        home,
        "draft",
        "--model",
        "tiny",
        "--prompt",
        "a red fox in snow",
        "--count",
        "2",
        "--seed",
        "7",
        "--steps",
        "6",
        "--width",
        "64",
        "--height",
        "64",
        "--json",
    ).stdout
    return json.loads(out)["drafts"]


def test_draft_prints_ids_seeds_and_files(drafted):
    assert [d["seed"] for d in drafted] == [7, 8]
    assert len({d["id"] for d in drafted}) == 2
    for d in drafted:
        assert Image.open(d["image"]).format == "PNG"
        assert Path(d["latent"]).read_bytes()[:8]  # the kept latent is on disk
    assert pixel_hash(drafted[0]["image"]) != pixel_hash(drafted[1]["image"])


def test_refine_after_restart_then_rerun_gives_the_same_pixels(home, drafted):
    refined = json.loads(atelier(home, "refine", str(drafted[1]["id"]), "--json").stdout)
    rerun = json.loads(atelier(home, "rerun", str(refined["id"]), "--json").stdout)
    assert rerun["id"] not in (refined["id"], drafted[1]["id"])
    assert pixel_hash(rerun["image"]) == pixel_hash(refined["image"])
    shown = json.loads(atelier(home, "show", str(rerun["id"]), "--json").stdout)
    assert shown["parent_id"] == refined["id"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--width", "1001"], "width: must be a multiple of 8"),
        (["--steps", "0"], "steps: must be an integer from 1 to 500"),
        (["--switch", "1.5"], "switch: must be a number in (0.0, 1.0]"),
        (["--guidance", "nan"], "guidance: must be a number"),
        (["--model", "/nowhere/model.safetensors"], "/nowhere/model.safetensors"),
    ],
)
def test_bad_input_is_a_clear_error_and_saves_nothing(home, drafted, args, message):
    before = json.loads(atelier(home, "list", "--json").stdout)
    proc = atelier(home, "draft", "--prompt", "x", "--width", "64", "--height", "64", *args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads(atelier(home, "list", "--json").stdout) == before


def test_refine_of_something_that_is_not_a_draft(home, drafted):
    refined = json.loads(atelier(home, "refine", str(drafted[0]["id"]), "--json").stdout)
    proc = atelier(home, "refine", str(refined["id"]), check=False)
    assert proc.returncode == 2 and "not a draft" in proc.stderr
