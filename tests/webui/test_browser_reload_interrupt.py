"""The device queue as one person with one browser meets it, in real Chromium: a reloaded page can still stop
its own job (and only its own browser can), the wait it is told is worked out from the running job's progress,
and the status line says only the studio's words, never Gradio's timers.

Manual check: `ATELIER_HOME=/tmp/reload-home atelier serve --port 7984`, start a 500-step draft, reload, Esc."""

from __future__ import annotations

import re
import time

import pytest

from tests.webui.conftest import open_page, shot, start_long_draft, wait_text

pytestmark = pytest.mark.browser
# Gradio's own progress text ("queue: 1/1 | 12.4/1.1s", "processing | 13.0/15.9s", a bare "0.1s" timer).
GRADIO_TIMER = re.compile(r"queue: \d|processing \||\b\d+(\.\d+)?s\b")
RECORD_TEXTS = """
(selector) => {
  window.__texts = window.__texts || {};
  const texts = window.__texts[selector] = [];
  const element = document.querySelector(selector);
  const record = () => texts.push(element.innerText);
  new MutationObserver(record).observe(element, {subtree: true, childList: true, characterData: true});
  record();
}
"""


def step_of(page) -> tuple[int, int, float]:
    """(step, total, when) of the long draft running on `page`."""
    text = wait_text(page, "#draft-status", r"base model step \d+/\d+")
    step, total = map(int, re.search(r"step (\d+)/(\d+)", text).groups())
    return step, total, time.monotonic()


def short_draft(page, prompt: str, timeout: float = 120_000) -> None:
    """Draft at the steps on screen and wait for this draft's own "ready" line (not the one before)."""
    before = page.inner_text("#draft-status")
    page.fill("#prompt textarea", prompt)
    page.click("#draft-button")
    page.wait_for_function(
        "(old) => { const t = document.querySelector('#draft-status').innerText;"
        " return t !== old && /drafts? ready/.test(t); }",
        arg=before,
        timeout=timeout,
    )


def test_a_reloaded_page_stops_its_own_job_and_another_browser_cannot(chromium, server):
    mine, other = open_page(chromium, server.url), open_page(chromium, server.url)
    gallery = server.gallery()
    try:
        before = {g.id for g in gallery.list(limit=1000).items}
        start_long_draft(mine, "a long job whose page is reloaded")
        other.click("#interrupt-button")  # another browser: not its job
        wait_text(other, "#draft-status", r"Nothing of yours is running or waiting")
        mine.reload()
        mine.wait_for_selector("#prompt textarea")
        banner = wait_text(mine, "#draft-status", r"busy|still running")
        shot(mine, "reload-own-job-running")
        mine.keyboard.press("Escape")
        text = wait_text(mine, "#draft-status", r"Interrupted|Nothing of yours", timeout=30_000)
        assert "Nothing of yours" not in text, text
        assert "Your earlier job is still running" in banner, banner  # the page sees the job as its own
        shot(mine, "reload-own-job-interrupted")
        other.fill("#steps input[type=number]", "2")
        short_draft(other, "a short job after the interrupt", timeout=45_000)  # not after 500 steps
        made = {g.id for g in gallery.list(limit=1000).items} - before
        assert all(gallery.get(i).recipe.steps == 2 for i in made)  # nothing of the interrupted job was saved
    finally:
        gallery.close()
        mine.context.close()
        other.context.close()


def test_the_wait_comes_from_the_running_jobs_progress_and_no_gradio_timer_shows(chromium, server):
    first, second = open_page(chromium, server.url), open_page(chromium, server.url)
    try:
        first.fill("#steps input[type=number]", "2")
        for n in range(3):  # the recent jobs are short: a typical duration far below the long job's
            short_draft(first, f"a short job {n}")
        first.evaluate(RECORD_TEXTS, "#draft-status")
        start_long_draft(first, "a long job that holds the device")
        step1, total, t1 = step_of(first)
        first.wait_for_timeout(3000)
        step2, _, t2 = step_of(first)
        assert step2 > step1
        per_step = (t2 - t1) / (step2 - step1)
        for selector in ("#draft-status", "#drafts", "#seed"):  # the status line and the outputs' overlays
            second.evaluate(RECORD_TEXTS, selector)
        second.fill("#prompt textarea", "a job waiting behind the long one")
        step3, _, _ = step_of(first)
        second.click("#draft-button")
        text = wait_text(second, "#draft-status", r"Waiting — 2nd in the queue")
        second.wait_for_timeout(2000)  # Gradio's queue timer, if shown, ticks meanwhile
        shot(second, "reload-queue-estimate")
        eta = re.search(r"about (\d+) s", text)
        assert eta, text
        left = (total - step3) * per_step
        assert left / 2 <= int(eta[1]) <= left * 2, (text, left)
        for page in (first, second):
            for selector, texts in page.evaluate("window.__texts").items():
                raw = [t for t in texts if GRADIO_TIMER.search(t)]
                assert not raw, (selector, raw)
        second.click("#interrupt-button")
        first.click("#interrupt-button")
        wait_text(first, "#draft-status", r"Interrupted \(")
    finally:
        first.context.close()
        second.context.close()
