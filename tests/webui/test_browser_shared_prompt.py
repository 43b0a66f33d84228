"""The Img2Img and ControlNet tabs use Draft & Refine's prompt and settings: in real Chromium, each shows a
read-only summary of them (user text shown literally, never as markup) that follows every change, and an
Edit button that goes to the Draft & Refine tab."""

from __future__ import annotations

import pytest

from tests.webui.conftest import fill_kept, shot, wait_text
from tests.webui.test_browser_flow import draft

pytestmark = pytest.mark.browser

MARKUP_PROMPT = "<b>x</b> (red:1.3) <lora:tiny-demo-ink:0.5>"


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def literal_in(page, selector: str, text: str) -> str:
    """Wait until the element shows `text` literally; return its text."""
    page.wait_for_function(
        "([sel, text]) => { const e = document.querySelector(sel); return e && e.innerText.includes(text); }",
        arg=[selector, text],
        timeout=30_000,
    )
    return page.inner_text(selector)


@pytest.mark.parametrize(
    ("tab", "prefix"),
    [("Img2Img", "img2img"), ("ControlNet", "cn")],
)
def test_summary_shows_draft_prompt_live_and_edit_goes_back(page, tab, prefix):
    summary = f"#{prefix}-shared-summary"
    fill_kept(page, "#prompt textarea", MARKUP_PROMPT)
    fill_kept(page, "#negative textarea", "blurry & <i>dark</i>")
    open_tab(page, tab)
    text = literal_in(page, summary, "<b>x</b> (red:1.3)")
    assert "blurry & <i>dark</i>" in text
    assert "tiny-demo-ink" in text  # the LoRA its token picks
    # the markup is shown, not obeyed: no element was made from the user's text
    made = page.eval_on_selector_all(f"{summary} b, {summary} i", "els => els.map(e => e.innerText.trim())")
    assert not {"x", "dark"} & set(made), made
    shot(page, f"shared-prompt-{prefix}")

    page.click(f"#{prefix}-edit-prompt")
    page.wait_for_selector("#prompt textarea", state="visible")
    fill_kept(page, "#prompt textarea", "a lighthouse at dusk")
    fill_kept(page, "#steps input[type=number]", "7")
    open_tab(page, tab)
    text = literal_in(page, summary, "a lighthouse at dusk")
    assert "<b>x</b>" not in text
    assert "blurry & <i>dark</i>" in text
    wait_text(page, summary, r"Steps\D*7\b")


def test_sent_source_says_which_prompt_it_was_made_with(page):
    """Send to img2img brings the image, not its prompt (the prompt controls are Draft's): the Img2Img tab says
    so when the Draft prompt is no longer the one the source was made with."""
    ids = draft(page, "a lighthouse <b>on</b> a cliff")
    page.locator("#drafts .thumbnail-item").nth(0).click()
    wait_text(page, "#draft-status", rf"Picked draft #{ids[0]}")
    page.click("#draft-to-img2img")
    wait_text(page, "#img2img-source-note", rf"Source #{ids[0]} was made with this prompt")

    page.get_by_role("tab", name="Draft & Refine").click()
    fill_kept(page, "#prompt textarea", "a cat (red:1.3)")
    open_tab(page, "Img2Img")
    literal_in(page, "#img2img-shared-summary", "a cat (red:1.3)")
    note = literal_in(page, "#img2img-source-note", "a lighthouse <b>on</b> a cliff")
    assert f"Source #{ids[0]}" in note and "not used here" in note
    shot(page, "shared-prompt-source-note")

    # a reload puts the last Draft's settings back: the summary shows them, not the empty prompt of a new page
    page.reload()
    page.wait_for_selector("#prompt textarea")
    open_tab(page, "Img2Img")
    literal_in(page, "#img2img-shared-summary", "a lighthouse <b>on</b> a cliff")
