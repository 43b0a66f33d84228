"""A real `atelier serve` in a subprocess (tiny demo model, 64 px default) and a Chromium page on it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "webui"
START_TIMEOUT_S = 180


@dataclass
class Server:
    url: str
    home: Path
    process: subprocess.Popen
    log: Path

    def gallery(self):
        """The server's gallery, opened from this process (the server keeps running)."""
        from storage.gallery import Gallery

        return Gallery.open(self.home)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_served(url: str, process: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"atelier serve exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"atelier serve did not answer within {timeout} s:\n{log.read_text()[-4000:]}")


def start_server(home: Path, *extra: str, size: str = "64") -> Server:
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", ATELIER_UI_SIZE=size,
               PYTHONUNBUFFERED="1")
    for name in ("GRADIO_TEMP_DIR", "GRADIO_EXAMPLES_CACHE", "ATELIER_MODELS", "ATELIER_DATABASE_URL"):
        env.pop(name, None)
    log = home.parent / f"serve-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "atelier.cli", "serve", "--home", str(home), "--port", str(port), *extra],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_served(url + "/", process, log)
    except BaseException:
        process.kill()
        raise
    return Server(url, home, process, log)


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("serve") / "home"
    running = start_server(home)
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def chromium():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def page(chromium, server, request):
    """A fresh browser page on the app; records every host it contacts in `page.hosts_contacted`."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    hosts: set[str] = set()
    page.on("request", lambda r: hosts.add(r.url.split("/")[2]) if "://" in r.url else None)
    page.hosts_contacted = hosts
    page.goto(server.url + "/")
    page.wait_for_selector("#prompt textarea")
    yield page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-last.png"), full_page=True)
    context.close()


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
