"""Files that are not what a field takes, in real Chromium: a non-image in an image field (Img2Img source,
inpaint mask, ControlNet unit) is refused as it arrives, in the user's words, and the field emptied, leaving
everything else on screen as it was; an API client sending one gets the same words; a non-PNG dropped on the
Gallery's import box says why and clears the box; an upscale target out of range names the box it came from."""

from __future__ import annotations

import pytest

from tests.security.web_server import call, dependency, event_values, fetch, upload
from tests.webui.conftest import fill_kept, shot, wait_text
from tests.webui.test_browser_editing import answer, open_img2img, source_file
from tests.webui.test_browser_flow import draft

pytestmark = pytest.mark.browser

NOT_AN_IMAGE = b"these are words in a text file, not an image\n"
LEAKS = ("/tmp", "ui-cache", "uploads", "not a value this field takes", "gradio_api", "cannot identify")


@pytest.fixture()
def not_an_image(tmp_path):
    path = tmp_path / "ux-notimage.png"
    path.write_bytes(NOT_AN_IMAGE)
    return path


def toast_saying(page, *words: str) -> str:
    """The text of the toast that holds all `words` (waited for)."""
    toast = page.locator(".toast-body", has_text=words[0])
    for word in words[1:]:
        toast = toast.filter(has_text=word)
    toast.first.wait_for(timeout=30_000)
    return toast.first.inner_text()


def assert_refused_in_words(text: str, field: str) -> None:
    assert field in text, text
    assert "ux-notimage.png" in text and "not an image Atelier can read" in text, text
    assert "PNG, JPEG, WebP" in text, text  # what it does read
    for leak in LEAKS:
        assert leak not in text, (leak, text)


def shown_src(page, selector: str) -> str | None:
    images = page.locator(f"{selector} img")
    return images.first.get_attribute("src") if images.count() else None


def field_emptied(page, selector: str) -> None:
    page.wait_for_function("(sel) => !document.querySelector(sel + ' img')", arg=selector, timeout=30_000)


def test_a_non_image_in_img2img_is_refused_at_upload_and_the_screen_kept(page, tmp_path, not_an_image):
    open_img2img(page, "a paper boat", source_file(tmp_path, size=(96, 64)))
    page.wait_for_function("() => document.querySelector('#img2img-width input').value === '96'")
    made = answer(page, "#img2img-status", r"Made \*?\*?#\d+|⚠", lambda: page.click("#img2img-button"))
    assert "⚠" not in made, made
    result_before, compare_before = shown_src(page, "#img2img-result"), shown_src(page, "#img2img-compare")
    assert result_before and compare_before

    page.set_input_files("#img2img-source input[type=file]", str(not_an_image))
    assert_refused_in_words(toast_saying(page, "Source image", "ux-notimage.png"), "Source image")
    field_emptied(page, "#img2img-source")
    shot(page, "bad-upload-img2img-refused")
    assert (page.input_value("#img2img-width input"), page.input_value("#img2img-height input")) == ("96", "64")

    # Make image now asks for a source; the result and the comparison stay on screen, with no "Error" badge.
    text = answer(page, "#img2img-status", r"⚠", lambda: page.click("#img2img-button"))
    assert "Upload a source image" in text and "Error" not in text, text
    for panel in ("#img2img-result", "#img2img-compare"):
        assert "Error" not in page.inner_text(panel), panel
    assert (shown_src(page, "#img2img-result"), shown_src(page, "#img2img-compare")) == (result_before, compare_before)

    # The inpaint mask upload is an image field like any other.
    page.set_input_files("#inpaint-mask-upload input[type=file]", str(not_an_image))
    assert_refused_in_words(toast_saying(page, "upload a mask", "ux-notimage.png"), "upload a mask")
    field_emptied(page, "#inpaint-mask-upload")
    shot(page, "bad-upload-img2img-after")


def test_a_non_image_as_a_control_image_is_refused_at_upload(page, not_an_image):
    page.fill("#prompt textarea", "a lighthouse")
    page.get_by_role("tab", name="ControlNet").click()
    page.set_input_files("#cn-image-0 input[type=file]", str(not_an_image))
    assert_refused_in_words(toast_saying(page, "Control image", "ux-notimage.png"), "Control image")
    field_emptied(page, "#cn-image-0")
    text = answer(page, "#cn-status", r"⚠", lambda: page.click("#cn-button"))
    assert "Add a control image" in text, text
    for panel in ("#cn-map-0", "#cn-map-1", "#cn-result"):
        assert "Error" not in page.inner_text(panel), panel
    shot(page, "bad-upload-controlnet")


def test_an_api_client_sending_a_non_image_gets_the_same_words(server):
    path = upload(server, "ux-notimage.png", NOT_AN_IMAGE, "image/png").json()[0]
    components = {c["id"]: c for c in fetch(server, "/config").json()["components"]}
    values = event_values(server, "img2img", Prompt="a paper boat")
    for i, component_id in enumerate(dependency(server, "img2img")["inputs"]):
        if components[component_id].get("props", {}).get("label") == "Source image":
            values[i] = {"path": path, "orig_name": "ux-notimage.png", "meta": {"_type": "gradio.FileData"}}
    answered = call(server, "img2img", values)
    assert answered["event"] == "error", answered
    assert_refused_in_words((answered["data"] or {}).get("error") or "", "Source image")


def test_a_non_png_dropped_on_the_gallery_import_box_says_why_and_clears_it(page, not_an_image):
    page.get_by_role("tab", name="Gallery").click()
    page.set_input_files("#png-drop input[type=file]", str(not_an_image))
    text = toast_saying(page, "ux-notimage.png", "not a PNG")
    for leak in LEAKS:
        assert leak not in text, (leak, text)
    page.wait_for_function(
        "() => !document.querySelector('#png-drop').innerText.includes('ux-notimage.png')", timeout=30_000
    )
    shot(page, "bad-upload-gallery-drop")


def test_an_upscale_target_out_of_range_names_the_upscale_box(page):
    ids = draft(page, "a tin robot on a shelf")
    page.locator("#drafts .thumbnail-item").nth(0).click()
    wait_text(page, "#draft-status", rf"Picked draft #{ids[0]}")
    page.locator("#draft-upscale-options").get_by_text("Upscale options").click()
    fill_kept(page, "#draft-upscale-width input", "9000")
    text = answer(page, "#draft-status", r"⚠", lambda: page.click("#draft-upscale-size-button"))
    assert "Upscale target width" in text and "9000" in text and "multiple of 8 from 64 to 4096" in text, text
    shot(page, "bad-upload-upscale-width")
