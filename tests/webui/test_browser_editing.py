"""Finishing a pick in real Chromium: a mask painted with the mouse in the Img2Img tab and inpainted, Vary
from the Gallery detail, a dynamic prompt in the Img2Img tab, Upscale to a chosen size (Gallery, Draft)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from tests.webui.conftest import fill_kept, shot, wait_text
from tests.webui.test_browser_flow import draft

pytestmark = pytest.mark.browser


def answer(page, selector: str, pattern: str, press) -> str:
    """Do `press()` and wait for the status line's answer to it: first the line on screen goes (a progress
    overlay may prefix it for a while), then the pattern shows."""
    before = page.inner_text(selector).strip()
    press()
    if before:
        page.wait_for_function(
            "([sel, old]) => !document.querySelector(sel).innerText.includes(old)", arg=[selector, before]
        )
    try:
        page.wait_for_function(
            "([sel, pat]) => new RegExp(pat).test(document.querySelector(sel).innerText)",
            arg=[selector, pattern],
            timeout=180_000,
        )
    except Exception as exc:  # say what the page showed instead
        raise AssertionError(f"{selector} never matched {pattern!r}; it shows {page.inner_text(selector)!r}") from exc
    return page.inner_text(selector)


def made_id(text: str) -> int:
    return int(re.search(r"(?:Made|→) \*?\*?#(\d+)", text).group(1))


def stored(server, generation_id: int):
    """The generation, and a reader of the gallery's files by sha256."""
    gallery = server.gallery()
    try:
        generation = gallery.get(generation_id)
        files = {sha: gallery.read_file(sha) for _, sha in generation.inputs}
    finally:
        gallery.close()
    return generation, files


def rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def source_file(tmp_path, size=(64, 64)):
    """A source with structure (a gradient and a square), so a repainted area shows."""
    x = np.linspace(0, 255, size[0], dtype=np.uint8)
    pixels = np.stack([np.tile(x, (size[1], 1)), np.tile(x[::-1], (size[1], 1)), np.full(size[::-1], 90, np.uint8)], 2)
    pixels[8:24, 8:24] = (20, 200, 60)
    path = tmp_path / "source.png"
    Image.fromarray(pixels).save(path)
    return path


def open_img2img(page, prompt: str, source) -> None:
    page.fill("#prompt textarea", prompt)
    page.get_by_role("tab", name="Img2Img").click()
    page.set_input_files("#img2img-source input[type=file]", str(source))
    page.wait_for_selector("#inpaint-editor canvas")


def paint_stroke(page) -> None:
    """A mouse stroke across the right half of the editor's canvas (drawn with the white brush)."""
    canvas = page.locator("#inpaint-editor canvas").first
    canvas.scroll_into_view_if_needed()  # the mouse moves in the viewport's coordinates
    page.wait_for_timeout(500)  # the editor lays its canvas out after the source arrives
    box = canvas.bounding_box()
    x0, y0 = box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.3
    page.mouse.move(x0, y0)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(x0 + box["width"] * 0.03 * i, y0 + box["height"] * 0.04 * i, steps=2)
    page.mouse.up()


def test_a_mask_painted_with_the_mouse_is_inpainted_and_the_outside_kept(page, server, tmp_path):
    open_img2img(page, "a red ball", source_file(tmp_path))
    paint_stroke(page)
    page.fill("#mask-blur input[type=number]", "0")
    page.press("#mask-blur input[type=number]", "Enter")
    page.fill("#img2img-strength input[type=number]", "0.9")
    page.press("#img2img-strength input[type=number]", "Enter")
    shot(page, "inpaint-painted")
    text = answer(page, "#img2img-status", r"Made \*?\*?#\d+|⚠", lambda: page.click("#img2img-button"))
    assert "⚠" not in text, text
    generation, files = stored(server, made_id(text))
    recipe = generation.recipe
    assert recipe.mode == "img2img" and recipe.mask_sha256 and recipe.mask_blur == 0
    mask = rgb(files[recipe.mask_sha256])[..., 0]
    source = rgb(files[recipe.source_image_sha256])
    result = rgb(generation.image_path.read_bytes())
    assert mask.shape == source.shape[:2] == result.shape[:2] == (64, 64)
    painted = mask > 0
    assert 0.05 < painted.mean() < 0.9 and not painted[:, :4].any()  # the stroke, towards the right only
    outside = np.abs(result - source)[~painted]
    assert outside.max() <= 2  # the source's pixels, exactly (up to PNG rounding)
    assert np.abs(result - source)[painted].max() > 10  # the painted part was repainted
    shot(page, "inpaint-made")

    # Load into Draft brings source, mask and settings back: made again, the same pixels.
    page.get_by_role("tab", name="Gallery").click()
    page.locator("#gallery-grid .thumbnail-item", has_text=f"#{generation.id} img2img").click()
    page.wait_for_selector("#detail-image img")
    page.click("#load-into-draft")
    page.wait_for_selector("#inpaint-mask-upload img", state="attached")  # the stored mask, as an upload
    assert page.input_value("#mask-blur input[type=number]") == "0"
    again = answer(page, "#img2img-status", r"Made \*?\*?#\d+|⚠", lambda: page.click("#img2img-button"))
    remade, _ = stored(server, made_id(again))
    assert remade.recipe.mask_sha256 and remade.recipe.seed == recipe.seed
    assert np.array_equal(rgb(remade.image_path.read_bytes()), result)


def test_vary_from_the_gallery_detail_makes_children_of_the_image(page, server):
    ids = draft(page, "a glass lantern")
    page.get_by_role("tab", name="Gallery").click()
    page.locator("#gallery-grid .thumbnail-item", has_text=f"#{ids[0]} draft").click()
    page.wait_for_function("!document.querySelector('#gallery-vary-subtle').disabled")
    text = answer(page, "#gallery-status", r"Varied #\d+.*→", lambda: page.click("#gallery-vary-subtle"))
    children = [int(i) for i in re.findall(r"#(\d+)", text.split("→")[1])]
    assert len(children) == 4
    gallery = server.gallery()
    try:
        made, parent = [gallery.get(i) for i in children], gallery.get(ids[0])
    finally:
        gallery.close()
    assert all(c.parent_id == ids[0] and c.kind == "draft" for c in made)
    assert all(c.recipe.seed == parent.recipe.seed and c.recipe.variation_strength == 0.1 for c in made)
    assert page.input_value("#detail-id input") == str(children[0])
    for child in children:  # in the grid at once
        assert page.locator("#gallery-grid .thumbnail-item", has_text=f"#{child} draft").count() == 1
    assert f"#{ids[0]} (draft)" in page.inner_text("#detail-lineage")  # the child's lineage names its parent
    shot(page, "gallery-varied")


def test_a_dynamic_prompt_in_img2img_is_drawn_and_its_template_kept(page, server, tmp_path):
    template = "a {red|blue} kite"
    open_img2img(page, template, source_file(tmp_path))
    text = answer(page, "#img2img-status", r"Made \*?\*?#\d+|⚠", lambda: page.click("#img2img-button"))
    generation, _ = stored(server, made_id(text))
    assert generation.recipe.prompt_template == template and generation.recipe.mask_sha256 is None
    assert generation.recipe.prompt in {"a red kite", "a blue kite"} and generation.recipe.prompt in text


def test_upscale_to_a_chosen_size_from_the_gallery_and_the_draft_tab(page, server):
    ids = draft(page, "a tin robot")
    page.locator("#drafts .thumbnail-item").nth(0).click()
    wait_text(page, "#draft-status", rf"Picked draft #{ids[0]}")
    page.locator("#draft-upscale-options").get_by_text("Upscale options").click()
    fill_kept(page, "#draft-upscale-width input", "128")
    fill_kept(page, "#draft-upscale-height input", "96")
    text = answer(
        page,
        "#draft-status",
        r"Upscaled #\d+ → \*?\*?#\d+\*?\*? \(to 128×96, lanczos\)|⚠",
        lambda: page.click("#draft-upscale-size-button"),
    )
    generation, _ = stored(server, made_id(text))
    assert generation.parent_id == ids[0]
    with Image.open(generation.image_path) as image:
        assert image.size == (128, 96)
    shot(page, "draft-upscaled")

    page.get_by_role("tab", name="Gallery").click()
    page.locator("#gallery-grid .thumbnail-item", has_text=f"#{ids[1]} draft").click()
    page.wait_for_selector("#detail-image img")
    page.locator("#upscale-options").get_by_text("Upscale options").click()
    fill_kept(page, "#upscale-width input", "80")
    fill_kept(page, "#upscale-height input", "136")
    text = answer(
        page,
        "#gallery-status",
        r"Upscaled #\d+ → \*?\*?#\d+\*?\*? \(to 80×136, lanczos\)|⚠",
        lambda: page.click("#upscale-size-button"),
    )
    generation, _ = stored(server, made_id(text))
    assert generation.parent_id == ids[1] and generation.recipe.strength == 0.35
    with Image.open(generation.image_path) as image:
        assert image.size == (80, 136)
    shot(page, "gallery-upscaled")


def test_outpaint_from_the_page_extends_the_canvas_and_keeps_the_old_area(page, server, tmp_path):
    open_img2img(page, "a wide meadow", source_file(tmp_path))
    page.fill("#expand-right input", "16")
    page.fill("#mask-blur input[type=number]", "0")
    page.press("#mask-blur input[type=number]", "Enter")
    page.get_by_label("Noise (new content)").check()
    text = answer(page, "#img2img-status", r"Made \*?\*?#\d+|⚠", lambda: page.click("#img2img-button"))
    assert "⚠" not in text, text
    generation, files = stored(server, made_id(text))
    recipe = generation.recipe
    assert (recipe.expand, recipe.masked_content, recipe.mask_sha256) == ((0, 0, 16, 0), "noise", None)
    result, source = rgb(generation.image_path.read_bytes()), rgb(files[recipe.source_image_sha256])
    assert result.shape[:2] == (64, 80)
    # The old area kept, bar the 8 px next to the new border that are repainted with it (the seam).
    assert np.abs(result[:, :56] - source[:, :56]).max() <= 2
    assert np.abs(result[:, 56:64] - source[:, 56:]).max() > 10
    shot(page, "outpainted")
