"""A real `atelier serve` in a subprocess (tiny demo model, 64 px default) and a Chromium page on it."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
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


def start_server(home: Path, *extra: str, size: int = 64) -> Server:
    from atelier.ui_bench import start_serve, wait_until_served

    home.parent.mkdir(parents=True, exist_ok=True)
    log = home.parent / f"serve-{home.name}.log"
    process, url = start_serve(home, *extra, size=size, log=log)
    try:
        wait_until_served(url, process, START_TIMEOUT_S, log)
    except BaseException:
        process.kill()
        raise
    return Server(url, home, process, log)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("serve") / "home"
    running = start_server(home)
    yield running
    from atelier.ui_bench import stop

    stop(running.process)


@pytest.fixture(scope="session")
def chromium():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, url: str):
    """A page in a fresh browser context (its own Gradio session) on the app, once the Prompt box shows;
    records every host it contacts in `page.hosts_contacted`."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    hosts: set[str] = set()
    page.on("request", lambda r: hosts.add(r.url.split("/")[2]) if "://" in r.url else None)
    page.hosts_contacted = hosts
    page.goto(url + "/")
    page.wait_for_selector("#prompt textarea")
    return page


@pytest.fixture()
def page(chromium, server, request):
    """A fresh browser page on the app (see open_page)."""
    page = open_page(chromium, server.url)
    yield page
    shot(page, f"{request.node.name}-last")
    page.context.close()


DOCS = Path(__file__).resolve().parents[2] / "docs"


def shot(page, name: str, *, docs: str | None = None) -> Path:
    """A full-page screenshot under test-artifacts/; with `docs` and ATELIER_UPDATE_DOCS_SCREENSHOT=1
    set, also the README's docs/screenshot-<docs>.png (refreshed on request only)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if docs and os.environ.get("ATELIER_UPDATE_DOCS_SCREENSHOT"):
        shutil.copyfile(path, DOCS / f"screenshot-{docs}.png")
    return path


def wait_text(page, selector: str, pattern: str, timeout: float = 120_000) -> str:
    """Wait until the element's text matches `pattern` (a regex); return that text."""
    page.wait_for_function(
        "([sel, pat]) => { const e = document.querySelector(sel); return e && new RegExp(pat).test(e.innerText); }",
        arg=[selector, pattern],
        timeout=timeout,
    )
    return page.inner_text(selector)


def fill_kept(page, selector: str, value: str, attempts: int = 3) -> None:
    """Fill a box and check the value stays once focus leaves it: a box that has just appeared (an accordion
    opening, a detail panel loading) can be re-rendered from its old value right after a fast fill, which a
    person typing never meets but a test would, as a wrong size much later."""
    for _ in range(attempts):
        page.fill(selector, value)
        page.press(selector, "Tab")
        page.wait_for_timeout(300)
        if page.input_value(selector) == value:
            return
    raise AssertionError(f"{selector} did not keep {value!r}; it shows {page.input_value(selector)!r}")


def start_long_draft(page, prompt: str) -> None:
    """Draft at 500 steps and 256 px (far longer than any test waits) and wait until it is running."""
    page.fill("#prompt textarea", prompt)
    page.fill("#steps input[type=number]", "500")
    page.fill("#width input", "256")
    page.fill("#height input", "256")
    page.click("#draft-button")
    wait_text(page, "#draft-status", r"base model step \d+/\d+")
