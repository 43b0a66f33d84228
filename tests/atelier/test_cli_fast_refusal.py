"""A bad request to a generating command is refused at once: before torch, diffusers, compel or gradio load.

Each case runs the real CLI entry (`atelier.cli.main`) in a fresh interpreter, which reports the exit
status and which heavy packages were imported when the refusal came back. Time is measured as the
child's CPU time (user + system, start-up included), which the load of a shared machine does not
inflate; wall time gets a generous bound only.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import pytest
from PIL import Image

HEAVY = ("torch", "diffusers", "compel", "gradio", "transformers")
PROBE = f"""
import json, sys
from atelier.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # argparse's usage errors
    code = exc.code
print(json.dumps({{"code": code, "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""

CASES = {
    "draft width": (["draft", "--prompt", "a fox", "--width", "7", "--height", "64"], "width"),
    "draft steps": (["draft", "--prompt", "a fox", "--steps", "0"], "steps: must be an integer from 1 to 500"),
    "draft count": (["draft", "--prompt", "a fox", "--count", "99"], "drafts: must be from 1 to 16"),
    "draft control image": (["draft", "--prompt", "a", "--control", "canny:{home}/missing.png"], "no such file"),
    "controlnet preprocessor": (["draft", "--prompt", "a", "--control", "nope:{home}/src.png"], "preprocessor"),
    "draft lora": (["draft", "--prompt", "a", "--lora", "ghost"], "LoRA 'ghost'"),
    "draft prompt lora": (["draft", "--prompt", "a <lora:ghost:0.5>"], "LoRA 'ghost'"),
    "refine id": (["refine", "12345"], "no generation with id 12345"),
    "refine steps": (["refine", "12345", "--steps", "0"], "steps: must be an integer from 1 to 500 (got 0)"),
    "img2img strength": (["img2img", "--image", "{home}/src.png", "--strength", "2", "--prompt", "a"], "strength"),
    "vary id": (["vary", "12345", "--strength", "5"], "no generation with id 12345"),
    "upscale scale": (["upscale", "1", "--scale", "9"], "scale: must be a number above 1"),
    "rerun id": (["rerun", "777"], "no generation with id 777"),
    "draft model name": (["draft", "--prompt", "a", "--model", "no-such-model"], "model 'no-such-model' not found"),
    "draft model file": (["draft", "--prompt", "a", "--model", "{home}/gone.safetensors"], "not found: "),
    "draft model folder": (["draft", "--prompt", "a", "--model", "{home}"], "no model_index.json"),
    "draft refiner file": (["draft", "--prompt", "a", "--refiner", "{home}/src.png"], "src.png"),
}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fast-refusal")
    Image.new("RGB", (320, 256), (40, 90, 160)).save(folder / "src.png")
    return folder


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_request_is_refused_before_heavy_imports(case, home):
    argv, message = CASES[case]
    argv = [a.format(home=home) for a in argv] + ["--home", str(home)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ATELIER_HOME": str(home)}
    env.pop("ATELIER_MODELS", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env, timeout=120)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 2, done.stderr
    assert message in done.stderr, done.stderr
    assert report["loaded"] == [], f"imported before the refusal: {report['loaded']}"
    assert "Traceback" not in done.stderr
    assert cpu <= 1.5, f"{case}: {cpu:.2f} s of CPU to refuse"
    assert wall <= 30, f"{case}: {wall:.1f} s wall"  # generous: the test machine is shared


def test_a_cold_run_says_what_it_is_loading(tiny_home):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ATELIER_HOME": str(tiny_home)}
    env.pop("ATELIER_MODELS", None)
    argv = ["draft", "--prompt", "a fox", "--steps", "2", "--width", "64", "--height", "64", "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "atelier.cli", *argv, "--model", "tiny", "--refiner", "tiny", "--home", str(tiny_home)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "atelier draft: loading torch, diffusers and the engine" in done.stderr
    assert json.loads(done.stdout)["drafts"][0]["id"] >= 1  # stdout stays one JSON document
