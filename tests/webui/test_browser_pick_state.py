"""The picked draft in real Chromium: what Refine, Vary, Upscale and Send act on is what the page shows.

A new grid (a new batch, Vary's drafts) picks nothing and highlights nothing; a draft job that is
interrupted or fails brings the grid before it back, with its ids, so a click never names a draft
that is not the one shown; the Send button names the image it sends."""

from __future__ import annotations

import re
import sqlite3

import pytest

from tests.webui.conftest import shot, start_long_draft, wait_text
from tests.webui.test_browser_flow import draft

pytestmark = pytest.mark.browser


def highlighted(page) -> list[int]:
    """Indexes of the drafts grid's thumbnails drawn as selected (the orange border)."""
    return page.eval_on_selector_all(
        "#drafts .thumbnail-item", "items => items.flatMap((e, i) => e.classList.contains('selected') ? [i] : [])"
    )


def captions(page) -> list[str]:
    return page.locator("#drafts .thumbnail-item").all_inner_texts()


def picked(page) -> str:
    return page.input_value("#selected-draft input")


def pick(page, index: int, draft_id: int) -> None:
    page.locator("#drafts .thumbnail-item").nth(index).click()
    wait_text(page, "#draft-status", rf"Picked draft #{draft_id}\b")
    assert picked(page) == str(draft_id) and highlighted(page) == [index]


def wait_unpicked(page) -> None:
    """The Picked box empty and no thumbnail highlighted (waits for the page's answer to arrive)."""
    page.wait_for_function(
        "() => document.querySelector('#selected-draft input').value === ''"
        " && !document.querySelector('#drafts .thumbnail-item.selected')",
        timeout=30_000,
    )


def ids_in(text: str) -> list[int]:
    first, last = map(int, re.search(r"ids (\d+)–(\d+)", text).groups())
    return list(range(first, last + 1))


def test_a_new_batch_picks_nothing_until_a_draft_is_clicked(page):
    first = draft(page, "a yellow kite over a beach")
    pick(page, 1, first[1])

    second = draft(page, "a brand new subject, a red bicycle")
    wait_unpicked(page)
    assert captions(page)[0].startswith(f"#{second[0]} ")
    page.wait_for_selector("#before img", state="detached")  # the old pick's image is gone with it
    assert page.inner_text("#draft-to-img2img") == "Send to img2img"
    shot(page, "pick-state-new-batch")

    page.click("#refine-button")
    wait_text(page, "#draft-status", r"Pick a draft first")
    pick(page, 0, second[0])
    page.click("#refine-button")
    assert wait_text(page, "#draft-status", r"Refined draft #\d+ →").startswith(f"Refined draft #{second[0]} →")


def test_send_names_the_image_it_sends(page):
    """Send to img2img (and Upscale) use the image on show: the picked draft, then the newest result made
    from it; the button and the line above the Upscale buttons say which."""
    ids = draft(page, "a paper boat on a pond")
    assert page.inner_text("#draft-to-img2img") == "Send to img2img"
    pick(page, 1, ids[1])
    assert page.inner_text("#draft-to-img2img") == f"Send #{ids[1]} to img2img"
    assert f"#{ids[1]}" in page.inner_text("#draft-on-show")
    page.click("#refine-button")
    text = wait_text(page, "#draft-status", r"Refined draft #\d+ → \*?\*?#\d+")
    refined = int(re.search(r"→ \*?\*?#(\d+)", text).group(1))
    page.wait_for_function(
        "label => document.querySelector('#draft-to-img2img').innerText === label", arg=f"Send #{refined} to img2img"
    )
    assert f"#{refined}" in page.inner_text("#draft-on-show") and f"#{ids[1]}" in page.inner_text("#draft-on-show")
    shot(page, "pick-state-send-names-the-image")


def test_vary_shows_its_drafts_unpicked(page):
    ids = draft(page, "a blue teapot on a table")
    pick(page, 2, ids[2])
    page.click("#vary-subtle")
    text = wait_text(page, "#draft-status", rf"varied from #{ids[2]}")
    varied = ids_in(text)
    wait_unpicked(page)
    assert [c.split(" ")[0] for c in captions(page)] == [f"#{i}" for i in varied]

    page.click("#refine-button")
    wait_text(page, "#draft-status", r"Pick a draft first")
    pick(page, 1, varied[1])
    page.click("#refine-button")
    assert wait_text(page, "#draft-status", r"Refined draft #\d+ →").startswith(f"Refined draft #{varied[1]} →")


def test_a_typed_number_moves_the_highlight(page):
    ids = draft(page, "a stack of old books")
    pick(page, 0, ids[0])
    page.fill("#selected-draft input", "")
    page.type("#selected-draft input", str(ids[3]))  # keystrokes, as a person types (fill sends no input event)
    page.wait_for_function(
        "() => document.querySelectorAll('#drafts .thumbnail-item')[3].classList.contains('selected')"
    )
    assert highlighted(page) == [3]
    page.wait_for_function(
        "label => document.querySelector('#draft-to-img2img').innerText === label", arg=f"Send #{ids[3]} to img2img"
    )
    page.type("#selected-draft input", "9")  # a number not in the grid: nothing there is highlighted
    page.wait_for_function("() => !document.querySelector('#drafts .thumbnail-item.selected')")


def test_an_interrupted_draft_brings_the_saved_grid_back(page):
    ids = draft(page, "a saved batch of lanterns")
    pick(page, 2, ids[2])
    start_long_draft(page, "a long job lighthouse")
    page.wait_for_function("() => document.querySelectorAll('#drafts .thumbnail-item').length === 4")
    wait_unpicked(page)  # the previews are no drafts: nothing is picked while they show
    page.locator("#drafts .thumbnail-item").nth(0).click()  # a preview: no draft of any other batch
    page.locator(".toast-body", has_text="not saved yet").wait_for()
    wait_unpicked(page)
    shot(page, "pick-state-preview-clicked")

    page.click("#interrupt-button")
    text = wait_text(page, "#draft-status", r"Interrupted", timeout=30_000)
    assert "nothing was saved" in text and f"#{ids[0]}–#{ids[-1]}" in text
    assert [c.split(" ")[0] for c in captions(page)] == [f"#{i}" for i in ids]
    wait_unpicked(page)
    shot(page, "pick-state-interrupted")
    pick(page, 0, ids[0])


def test_a_failed_draft_brings_the_saved_grid_back(page, server):
    """A draft whose save fails (the gallery's database stays locked past its busy timeout) after its
    previews showed: the saved grid before it comes back, and a click picks what it shows."""
    ids = draft(page, "a saved batch of teacups")
    page.fill("#count input[type=number]", "1")  # one save to wait for, not four in a row
    page.fill("#steps input[type=number]", "120")
    page.fill("#width input", "256")
    page.fill("#height input", "256")
    page.fill("#prompt textarea", "a draft whose save fails")
    page.click("#draft-button")
    wait_text(page, "#draft-status", r"base model step \d+/\d+")
    database = sqlite3.connect(server.home / "gallery.db", isolation_level=None, timeout=30)
    try:
        database.execute("BEGIN IMMEDIATE")  # the server's save waits for this lock, then gives up
        wait_text(page, "#draft-status", "internal error", timeout=150_000)
    finally:
        database.execute("ROLLBACK")
        database.close()
    page.wait_for_function("() => document.querySelector('#drafts .caption-label')")
    assert [c.split(" ")[0] for c in captions(page)] == [f"#{i}" for i in ids]
    wait_unpicked(page)
    shot(page, "pick-state-failed")
    pick(page, 3, ids[3])


def test_the_picked_box_placeholder_fits(page):
    fits = page.eval_on_selector(
        "#selected-draft input",
        """box => {
            const style = getComputedStyle(box);
            const context = document.createElement('canvas').getContext('2d');
            context.font = `${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
            const room = box.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
            return [context.measureText(box.placeholder).width, room];
        }""",
    )
    assert fits[0] <= fits[1], f"placeholder needs {fits[0]:.0f} px, the box has {fits[1]:.0f} px"
