"""The Img2Img tab's inpaint / outpaint controls, the Upscale options and a dynamic prompt in a one-image tab:
the values the browser sends become the mask, the request fields and the Recipe (bad values name the field)."""

from __future__ import annotations

import io

import gradio as gr
import numpy as np
import pytest
from PIL import Image, ImageDraw

from atelier.requests import ModelChoice
from webui import bindings, inpaint_controls, upscale_controls

DEFAULTS = bindings.Defaults(models=ModelChoice(base="tiny", refiner="tiny"), width=64, height=64)


@pytest.fixture(scope="module")
def inpaint():
    with gr.Blocks():
        return inpaint_controls.render(300, ["sdxl-inpainting.safetensors"])


@pytest.fixture(scope="module")
def controls():
    with gr.Blocks():
        return bindings.render_generation_controls(DEFAULTS)


def layer(size, box, alpha=255) -> Image.Image:
    """A transparent editor layer with one painted rectangle at `alpha`."""
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(image).rectangle(box, fill=(255, 255, 255, alpha))
    return image


def values_of(c: inpaint_controls.InpaintControls, **changes) -> dict:
    values = {box: box.value for box in c.inputs()}
    return values | {getattr(c, name): value for name, value in changes.items()}


def mask_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L"))


def test_nothing_painted_is_a_plain_img2img(inpaint):
    empty = {"background": None, "layers": [Image.new("RGBA", (64, 48))], "composite": None}
    assert inpaint_controls.mask_png(inpaint, values_of(inpaint, editor=empty), (64, 48)) is None
    assert inpaint_controls.mask_png(inpaint, values_of(inpaint, editor=None), (64, 48)) is None


def test_strokes_of_any_opacity_on_every_layer_become_white_at_the_source_size(inpaint):
    # The editor's canvas is twice the source here: the mask is scaled back to the source's size.
    editor = {"layers": [layer((128, 96), (0, 0, 31, 31), alpha=80), layer((128, 96), (64, 64, 127, 95))]}
    mask = mask_array(inpaint_controls.mask_png(inpaint, values_of(inpaint, editor=editor), (64, 48)))
    expected = np.zeros((48, 64), np.uint8)
    expected[0:16, 0:16] = 255
    expected[32:48, 32:64] = 255
    assert np.array_equal(mask, expected)


def test_an_uploaded_mask_alone_is_passed_as_given_and_joins_painted_strokes(inpaint, tmp_path):
    uploaded = tmp_path / "mask.png"
    Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), ((0, 40), (56, 0)))).save(uploaded)
    alone = inpaint_controls.mask_png(inpaint, values_of(inpaint, upload=str(uploaded)), (64, 48))
    assert alone == uploaded.read_bytes()
    editor = {"layers": [layer((64, 48), (0, 0, 7, 7))]}
    both = mask_array(
        inpaint_controls.mask_png(inpaint, values_of(inpaint, editor=editor, upload=str(uploaded)), (64, 48))
    )
    assert both[:8, :8].min() == 255 and both[:8, 56:].min() == 255 and both[8:, :].max() == 0


def test_the_outpaint_border_and_masked_content_reach_the_recipe(inpaint, controls):
    values = values_of(inpaint, masked_content="noise") | {inpaint.expand[2]: 16, inpaint.expand[1]: 8}
    fields = inpaint_controls.request_fields(inpaint, values)
    assert fields == {"masked_content": "noise", "expand": (0, 8, 16, 0)}
    assert inpaint_controls.inpaints(None, fields)
    generation = {box: box.value for box in controls.inputs()} | {
        controls.prompt: "a boat",
        controls.random_seed: False,
    }
    request = bindings.request_from_values(
        controls, generation, source_size=(64, 72), size=(64, 72), strength=0.7, **fields
    )
    from atelier.requests import build_recipe

    recipe = build_recipe(request, DEFAULTS.models)
    assert (recipe.width, recipe.height, recipe.expand, recipe.masked_content) == (80, 80, (0, 8, 16, 0), "noise")


def test_the_inpainting_model_is_one_the_server_lists(inpaint):
    offered = ["sdxl-inpainting.safetensors"]
    assert inpaint_controls.chosen_model(inpaint, values_of(inpaint), offered) is None  # the base model
    chosen = values_of(inpaint, model="sdxl-inpainting.safetensors")
    assert inpaint_controls.chosen_model(inpaint, chosen, offered) == "sdxl-inpainting.safetensors"
    with pytest.raises(ValueError, match="inpainting model: '/etc/x.safetensors' is not one of"):
        inpaint_controls.chosen_model(inpaint, values_of(inpaint, model="/etc/x.safetensors"), offered)


def test_a_bad_outpaint_side_names_it(inpaint):
    with pytest.raises(ValueError, match="outpaint right: enter a whole number"):
        inpaint_controls.request_fields(inpaint, values_of(inpaint) | {inpaint.expand[2]: 4.5})
    assert not inpaint_controls.inpaints(None, inpaint_controls.request_fields(inpaint, values_of(inpaint)))


def test_a_dynamic_prompt_in_a_one_image_tab_is_drawn_with_the_seed_and_kept_as_template(controls, tmp_path):
    base = {box: box.value for box in controls.inputs()} | {controls.random_seed: False}
    drawn = set()
    for seed in range(6):
        values = base | {controls.prompt: "a {red|blue} kite", controls.seed: seed}
        recipe = bindings.one_recipe_from_values(controls, values, DEFAULTS, wildcards=tmp_path)
        again = bindings.one_recipe_from_values(controls, values, DEFAULTS, wildcards=tmp_path)
        assert recipe.prompt == again.prompt and recipe.prompt_template == "a {red|blue} kite"
        drawn.add(recipe.prompt)
    assert drawn == {"a red kite", "a blue kite"}
    plain = bindings.one_recipe_from_values(controls, base | {controls.prompt: "a kite"}, DEFAULTS, wildcards=tmp_path)
    assert plain.prompt == "a kite" and plain.prompt_template is None


class _Studio:
    def upscalers(self):
        return ["lanczos", "4x-Test"]


def test_upscale_options_for_each_button():
    from types import SimpleNamespace

    with gr.Blocks():
        c = upscale_controls.render(SimpleNamespace(studio=_Studio()), elem_prefix="t-", width=64, height=48)
    assert c.upscaler.choices == [("lanczos", "lanczos"), ("4x-Test", "4x-Test")]
    values = {box: box.value for box in c.inputs()} | {c.upscaler: "4x-Test", c.width: 200, c.height: 96}
    assert upscale_controls.upscale_options(c, values, "1.5") == {"upscaler": "4x-Test", "strength": 0.35, "scale": 1.5}
    to_size = upscale_controls.upscale_options(c, values, upscale_controls.TO_SIZE)
    assert to_size == {"upscaler": "4x-Test", "strength": 0.35, "width": 200, "height": 96}
    assert upscale_controls.describe(to_size) == "to 200×96, 4x-Test"
    with pytest.raises(ValueError, match="Upscale target height: must be a whole number"):
        upscale_controls.upscale_options(c, values | {c.height: None}, upscale_controls.TO_SIZE)


def test_an_outpaint_from_the_img2img_tab_gives_the_recipe_atelier_img2img_gives(controls, inpaint, tmp_path):
    from types import SimpleNamespace

    from atelier.cli import build_parser
    from atelier.commands.editing import img2img_recipe as cli_recipe
    from atelier.commands.request_options import inpaint_from_args
    from webui import img2img_tab

    source = tmp_path / "source.png"
    Image.new("RGB", (96, 64), (10, 20, 30)).save(source)
    with gr.Blocks():
        size = bindings.render_size_controls(64, 64, elem_prefix="i-", from_source=True)
    values = {box: box.value for box in controls.inputs() | size.inputs()}
    values |= {controls.prompt: "a lake", controls.random_seed: False, controls.seed: 9}
    values |= values_of(inpaint, masked_content="noise", area="masked", blur=6) | {inpaint.expand[0]: 24}
    ctx = SimpleNamespace(defaults=DEFAULTS, studio=SimpleNamespace(home=tmp_path))
    fields = inpaint_controls.request_fields(inpaint, values)
    through_ui = img2img_tab.img2img_recipe(controls, size, values, ctx, 0.6, str(source), **fields)
    through_ui = through_ui.replace(**inpaint_controls.settings(inpaint, values))
    argv = ["img2img", "--image", str(source), "--prompt", "a lake", "--seed", "9", "--strength", "0.6"]
    argv += ["--expand", "24,0,0,0", "--masked-content", "noise", "--inpaint-area", "masked", "--mask-blur", "6"]
    args = build_parser().parse_args([*argv, "--model", "tiny", "--refiner", "tiny", "--home", str(tmp_path)])
    through_cli, mask = inpaint_from_args(args, cli_recipe(args, (96, 64)), None)
    assert mask is None and through_ui == through_cli
    assert (through_ui.width, through_ui.expand, through_ui.inpaint_area, through_ui.mask_blur) == (
        120,
        (24, 0, 0, 0),
        "masked",
        6,
    )
