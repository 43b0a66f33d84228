"""UI figures for `atelier bench`: start-up time of `atelier serve`, and what the app adds over the engine.

- ui_ready_s: from starting the `atelier serve` process to the first page served (HTTP 200 on /).
- ui_overhead: a draft + refine through the app's HTTP API (gradio_client: queue, gallery saves,
  PNG files) ÷ the same draft + refine by the engine called directly in this process; median of
  interleaved repetitions, so drift in machine state hits both alike.
"""

from __future__ import annotations

import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from pipelines.recipe import ModelRef, Recipe, RefineSettings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(home: Path, *args: str, size: int = 64, log: Path | None = None) -> tuple[subprocess.Popen, str]:
    """`atelier serve --home HOME --port FREE ARGS…` in a subprocess; returns it and its URL (not yet waited for)."""
    port = free_port()
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        ATELIER_UI_SIZE=str(size),
        PYTHONUNBUFFERED="1",
    )
    for name in ("GRADIO_TEMP_DIR", "GRADIO_EXAMPLES_CACHE", "ATELIER_MODELS", "ATELIER_DATABASE_URL"):
        env.pop(name, None)
    out = log.open("wb") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        [sys.executable, "-m", "atelier.cli", "serve", "--home", str(home), "--port", str(port), *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
    )
    return process, f"http://127.0.0.1:{port}"


def wait_until_served(url: str, process: subprocess.Popen, timeout: float = 180.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
            raise RuntimeError(f"atelier serve exited with {process.returncode}\n{tail}")
        try:
            with urllib.request.urlopen(url + "/", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"atelier serve did not answer on {url} within {timeout} s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def api_draft_args(client, prompt: str, steps: int, **by_label: Any) -> list[Any]:
    """The /draft endpoint's arguments: defaults, with the prompt, one draft, a fixed seed and the steps;
    `by_label` sets other controls by their label with spaces as underscores (Width=256)."""
    wanted = {
        "Prompt": prompt,
        "Drafts": 1,
        "Random seed": False,
        "Seed": 1,
        "Draft steps": steps,
        "Invisible watermark": False,
        **{k.replace("_", " "): v for k, v in by_label.items()},
    }
    parameters = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/draft"]["parameters"]
    return [wanted.get(p["label"], p.get("parameter_default")) for p in parameters]


def ui_figures(*, size: int = 64, steps: int = 20, repeats: int = 5, home: Path | None = None) -> dict[str, Any]:
    """Start `atelier serve` on the tiny model in a scratch home and measure; returns a dict for `atelier bench`."""
    from gradio_client import Client

    from pipelines.engine.engine import Engine
    from pipelines.models.loading import ModelCache

    with tempfile.TemporaryDirectory(prefix="atelier-ui-bench-") as tmp:
        home = home or Path(tmp) / "home"
        started = time.perf_counter()
        process, url = start_serve(home, "--model", "tiny", "--refiner", "tiny", size=size)
        try:
            wait_until_served(url, process)
            ready = time.perf_counter() - started
            client = Client(url + "/", verbose=False)
            args = api_draft_args(client, "a lighthouse on a cliff at dusk, oil painting", steps)

            def through_app() -> None:
                status = client.predict(*args, api_name="/draft")[0]
                draft_id = int(re.search(r"ids (\d+)", status).group(1))
                client.predict(draft_id, api_name="/refine")

            engine = Engine(ModelCache(home), app_version="bench")
            recipe = Recipe(
                model=ModelRef("tiny"),
                prompt="a lighthouse on a cliff at dusk, oil painting",
                seed=1,
                steps=steps,
                width=size,
                height=size,
                refine=RefineSettings(model=ModelRef("tiny")),
                watermark=False,
            )

            def engine_directly() -> None:
                engine.refine(engine.draft(recipe, 1)[0])

            through_app(), engine_directly()  # warm-up: models loaded and first allocations done on both sides
            app_s, engine_s = [], []
            for _ in range(repeats):
                app_s.append(_timed(through_app))
                engine_s.append(_timed(engine_directly))
        finally:
            stop(process)
    return {
        "ui_ready_s": ready,
        "ui_draft_refine_s_median": statistics.median(app_s),
        "engine_draft_refine_s_median": statistics.median(engine_s),
        "ui_overhead": statistics.median(app_s) / statistics.median(engine_s),
        "size": size,
        "steps": steps,
    }


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
