"""The Gallery's detail pane and the Esc key in real Chromium: Esc stops only a job on show (never one that
closes a list), a delete clears the whole pane, every action with nothing selected says so, and Load says
which tab it opens."""

from __future__ import annotations

import re

import pytest

from tests.webui.conftest import shot, start_long_draft, wait_text
from tests.webui.test_browser_flow import draft

pytestmark = pytest.mark.browser
NOTHING_SELECTED = "⚠ Select a generation in the grid first."


def open_gallery_entry(page, generation_id: int, kind: str = "draft") -> None:
    page.get_by_role("tab", name="Gallery").click()
    page.click("#gallery-refresh")
    page.locator("#gallery-grid .thumbnail-item", has_text=f"#{generation_id} {kind}").click()
    wait_text(page, "#detail-lineage", rf"Lineage: #{generation_id} \(")
    page.wait_for_selector("#detail-image img")


def says_nothing_selected(page, button: str) -> None:
    """Clicking `button` with nothing on show says so: one more warning, and the same line in the status."""
    count = (
        "() => [...document.querySelectorAll('.toast-message-text')]"
        ".filter(t => t.innerText.includes('Select a generation in the grid first')).length"
    )
    before = page.evaluate(count)
    page.click(button)
    page.wait_for_function(f"({count})() > {before}", timeout=15_000)
    wait_text(page, "#gallery-status", re.escape(NOTHING_SELECTED), timeout=15_000)


def test_escape_that_closes_a_dropdown_interrupts_nothing(page):
    page.get_by_role("tab", name="ControlNet").click()
    status_before = page.inner_text("#cn-status")
    page.click("#cn-pre-0 input")
    page.wait_for_selector("[role=listbox]")
    page.keyboard.press("Escape")
    page.wait_for_selector("[role=listbox]", state="detached")
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("Escape")  # nothing of this page runs: Esc is not an Interrupt click
    page.wait_for_timeout(1500)
    assert page.inner_text("#cn-status") == status_before
    # While a job runs, an Esc that closes a list leaves it running; the next Esc stops it.
    page.get_by_role("tab", name="Draft & Refine").click()
    start_long_draft(page, "a long run that a dropdown's Esc must not stop")
    page.click("#scheduler input")
    page.wait_for_selector("[role=listbox]")
    page.keyboard.press("Escape")
    page.wait_for_selector("[role=listbox]", state="detached")
    page.wait_for_timeout(1500)
    assert re.search(r"base model step \d+/\d+", page.inner_text("#draft-status"))
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("Escape")
    wait_text(page, "#draft-status", r"Interrupted \(", timeout=30_000)
    shot(page, "gallery-detail-esc")


def test_nothing_selected_then_a_delete_clears_the_whole_pane(page):
    page.get_by_role("tab", name="Gallery").click()
    assert page.input_value("#detail-id input") == ""  # not "0" before anything is chosen
    for button in ("#favourite-button", "#load-into-draft", "#delete-button", "#rerun-button"):
        says_nothing_selected(page, button)
    page.get_by_role("tab", name="Draft & Refine").click()
    ids = draft(page, "a lantern on a snowy porch")
    open_gallery_entry(page, ids[0])
    page.click("#favourite-button")
    wait_text(page, "#gallery-status", "Added to favourites")
    assert page.inner_text("#favourite-button").strip() == "★ Favourite"
    page.fill("#gallery-compare-with input", str(ids[1]))
    page.press("#gallery-compare-with input", "Enter")
    page.wait_for_function("document.querySelectorAll('#gallery-compare img').length === 2")
    page.click("#delete-button")
    page.click("#confirm-delete")
    wait_text(page, "#gallery-status", rf"Deleted #{ids[0]}\.")
    page.wait_for_function("document.querySelectorAll('#gallery-compare img, #detail-image img').length === 0")
    assert page.locator("#gallery-grid .thumbnail-item.selected").count() == 0  # no thumbnail looks picked
    assert page.input_value("#detail-id input") == ""
    assert page.inner_text("#favourite-button").strip() == "☆ Favourite"
    assert page.input_value("#gallery-compare-with input") == ""
    assert page.inner_text("#detail-lineage").strip() == ""
    assert "lantern" not in page.inner_text("#detail-recipe")
    assert page.inner_text("#load-into-draft").strip() == "Load into Draft"
    shot(page, "gallery-detail-after-delete")
    for button in ("#favourite-button", "#load-into-draft", "#delete-button"):
        says_nothing_selected(page, button)


def test_load_says_which_tab_it_opens_and_opens_it(page):
    ids = draft(page, "a copper kettle on a stove")
    open_gallery_entry(page, ids[1])
    assert page.inner_text("#load-into-draft").strip() == "Load into Draft"
    page.click("#upscale-1-5-button")
    text = wait_text(page, "#gallery-status", rf"Upscaled #{ids[1]} → \*?\*?#\d+")
    upscaled = int(re.search(r"→ \*?\*?#(\d+)", text).group(1))
    wait_text(page, "#detail-lineage", rf"Lineage: #{upscaled} \(img2img\)")
    load = page.locator("#load-into-draft")
    assert load.inner_text().strip() == "Load into Img2Img"  # an upscale is an img2img of the enlarged image
    shot(page, "gallery-detail-upscale-on-show")
    load.click()
    page.wait_for_selector("#img2img-button", state="visible")
    assert page.get_by_role("tab", name="Img2Img").get_attribute("aria-selected") == "true"
    shot(page, "gallery-detail-load-upscale")
    open_gallery_entry(page, ids[1])
    assert page.inner_text("#load-into-draft").strip() == "Load into Draft"
    page.click("#load-into-draft")
    page.wait_for_selector("#draft-button", state="visible")
    assert page.input_value("#prompt textarea") == "a copper kettle on a stove"
