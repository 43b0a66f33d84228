"""Gallery tags in real Chromium: the detail pane's Tags box saves an entry's tags (a bad tag is refused in
words), the Tag filter offers the tags in use and narrows the grid, and a tag taken off leaves the results."""

from __future__ import annotations

import re

import pytest

from tests.webui.conftest import shot, wait_text
from tests.webui.test_browser_flow import draft
from tests.webui.test_browser_gallery_detail import open_gallery_entry

pytestmark = pytest.mark.browser


def save_tags(page, text: str) -> None:
    page.fill("#detail-tags input", text)
    page.press("#detail-tags input", "Enter")


def grid_ids(page) -> set[int]:
    captions = page.locator("#gallery-grid .thumbnail-item").all_inner_texts()
    return {int(m.group(1)) for c in captions if (m := re.search(r"#(\d+)", c))}


def pick_tag_filter(page, tag: str) -> None:
    page.click("#gallery-tag input")
    page.get_by_role("option", name=tag, exact=True).click()


def test_tag_an_entry_filter_by_it_and_take_it_off(page, server):
    ids = draft(page, "a heron standing in reeds")
    open_gallery_entry(page, ids[0])
    assert page.input_value("#detail-tags input") == ""
    save_tags(page, "portrait, keep, , portrait")
    wait_text(page, "#gallery-status", rf"Tags of #{ids[0]}: portrait, keep$", timeout=15_000)
    assert server.gallery().get(ids[0]).tags == ("portrait", "keep")
    assert page.input_value("#detail-tags input") == "portrait, keep"

    save_tags(page, "fine, " + "x" * 65)  # over the storage's 64 characters: refused, nothing saved
    text = wait_text(page, "#gallery-status", "not saved", timeout=15_000)
    assert "1 to 64 characters" in text and "printable" in text, text
    assert server.gallery().get(ids[0]).tags == ("portrait", "keep")

    page.get_by_text("Filters", exact=True).click()
    pick_tag_filter(page, "keep")
    page.wait_for_function(
        "() => document.querySelectorAll('#gallery-grid .thumbnail-item').length === 1", timeout=15_000
    )
    assert grid_ids(page) == {ids[0]}
    shot(page, "gallery-tags-filtered")

    open_gallery_entry(page, ids[0])  # Refresh keeps the filter: still only the tagged entry
    assert grid_ids(page) == {ids[0]}
    assert page.input_value("#detail-tags input") == "portrait, keep"
    page.fill("#detail-tags input", "portrait")
    page.press("#detail-tags input", "Tab")  # leaving the box saves too
    wait_text(page, "#gallery-status", rf"Tags of #{ids[0]}: portrait$", timeout=15_000)
    wait_text(page, "#gallery-page", "Nothing found", timeout=15_000)  # the grid follows at once
    assert grid_ids(page) == set()
    page.click("#gallery-tag input")
    options = [o.strip() for o in page.locator("[role=listbox] [role=option]").all_inner_texts()]
    assert "portrait" in options and "keep" not in options, options
    shot(page, "gallery-tags-removed")

    # The Tag filter narrows together with the others: portrait and a favourite → only that one.
    gallery = server.gallery()
    gallery.set_tags(ids[1], ["portrait"])
    gallery.set_favourite(ids[1], True)
    page.locator("body").click(position={"x": 5, "y": 5})  # the list closes
    page.wait_for_selector("[role=listbox]", state="detached")
    pick_tag_filter(page, "portrait")
    page.wait_for_function(
        "() => document.querySelectorAll('#gallery-grid .thumbnail-item').length === 2", timeout=15_000
    )
    assert grid_ids(page) == {ids[0], ids[1]}
    page.check("#gallery-favourites input")
    page.click("#gallery-search-button")
    page.wait_for_function(
        "() => document.querySelectorAll('#gallery-grid .thumbnail-item').length === 1", timeout=15_000
    )
    assert grid_ids(page) == {ids[1]}
