"""The Gallery's Upscale buttons in real Chromium: the shown image upscaled (hires fix) into a new entry."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from tests.webui.conftest import shot, wait_text
from tests.webui.test_browser_flow import draft

pytestmark = pytest.mark.browser


def test_upscale_x2_from_the_gallery_detail(page, server):
    ids = draft(page, "an old stone bridge over a river")
    page.get_by_role("tab", name="Gallery").click()
    page.locator("#gallery-grid .thumbnail-item", has_text=f"#{ids[1]} draft").click()
    page.wait_for_selector("#detail-image img")
    page.click("#upscale-2-button")
    text = wait_text(page, "#gallery-status", rf"Upscaled #{ids[1]} → \*?\*?#\d+")
    made_id = int(re.search(r"→ \*?\*?#(\d+)", text).group(1))
    assert page.input_value("#detail-id input") == str(made_id)  # the new entry is on show
    gallery = server.gallery()
    try:
        made, parent = gallery.get(made_id), gallery.get(ids[1])
    finally:
        gallery.close()
    assert made.parent_id == ids[1] and made.recipe.mode == "img2img" and made.recipe.strength == 0.35
    with Image.open(made.image_path) as image:
        assert image.size == (parent.recipe.width * 2, parent.recipe.height * 2)
    shot(page, "upscale-x2")
