"""The same request through the web UI's handlers and through the command line gives the same Recipe:
both front ends are adapters over atelier/requests.py and the Studio (one LoRA rule, one syntax
default, one size rule for img2img, the same ControlNet inputs)."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from atelier import requests
from atelier.cli import build_parser
from atelier.commands.editing import img2img_recipe
from atelier.commands.generate import draft_recipe
from atelier.commands.request_options import edit_inputs_from_args
from atelier.requests import ModelChoice
from atelier.studio import ControlRequest, Studio
from webui import bindings

TINY = ModelChoice(base="tiny", refiner="tiny", demo=True)
DEFAULTS = bindings.Defaults(models=TINY, width=1024, height=1024, loras=("ink", "paper"))


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch):
    monkeypatch.delenv(requests.PROMPT_SYNTAX_ENV, raising=False)
    monkeypatch.delenv(requests.IMG2IMG_MAX_SIDE_ENV, raising=False)


@pytest.fixture(scope="module")
def ui():
    with gr.Blocks():
        controls = bindings.render_generation_controls(DEFAULTS)
        size = bindings.render_size_controls(64, 64, elem_prefix="img2img-", from_source=True)
    return controls, size


def screen(ui, **changes) -> dict:
    """The controls' values as the browser would send them: defaults, with `changes` by field name."""
    controls, size = ui
    values = {c: c.value for c in controls.inputs() | size.inputs()}
    values[controls.random_seed] = False
    for name, value in changes.items():
        if name.startswith("img2img_"):
            values[getattr(size, name.removeprefix("img2img_"))] = value
        elif name.startswith("lora_"):
            kind, index = name.rsplit("_", 1)
            values[getattr(controls, f"{kind}s")[int(index)]] = value
        else:
            values[getattr(controls, name)] = value
    return values


def cli(*argv: str):
    return build_parser().parse_args([*argv, "--model", "tiny", "--refiner", "tiny", "--home", "/nonexistent"])


TABLE = [
    pytest.param(dict(prompt="a fox", seed=5), ["draft", "--prompt", "a fox", "--seed", "5"], id="defaults"),
    pytest.param(
        dict(
            prompt="ink <lora:ink:0.9> wash",
            seed=2,
            lora_name_0="ink",
            lora_weight_0=0.5,
            lora_name_1="paper",
            lora_weight_1=0.7,
        ),
        ["draft", "--prompt", "ink <lora:ink:0.9> wash", "--seed", "2", "--lora", "ink:0.5", "--lora", "paper:0.7"],
        id="lora-in-prompt-and-picker",
    ),
    pytest.param(
        dict(prompt="(a fox:1.3) in snow", seed=3),
        ["draft", "--prompt", "(a fox:1.3) in snow", "--seed", "3"],
        id="auto-syntax-a1111",
    ),
    pytest.param(
        dict(prompt="a fox+", syntax="compel", seed=3),
        ["draft", "--prompt", "a fox+", "--syntax", "compel", "--seed", "3"],
        id="compel",
    ),
    pytest.param(
        dict(
            prompt="a fox",
            seed=4,
            width=832,
            height=1216,
            steps=12,
            switch=0.7,
            guidance=6.5,
            scheduler="DPM++ 2M Karras",
            original_w=2048,
            original_h=1024,
            crop_top=8,
            crop_left=16,
            negative_target_w=512,
            negative_target_h=512,
            aesthetic=7.0,
            negative_aesthetic=2.0,
            refine_strength=0.25,
            watermark=False,
            count=3,
        ),
        [
            "draft",
            "--prompt",
            "a fox",
            "--seed",
            "4",
            "--width",
            "832",
            "--height",
            "1216",
            "--steps",
            "12",
            "--switch",
            "0.7",
            "--guidance",
            "6.5",
            "--scheduler",
            "DPM++ 2M Karras",
            "--original-size",
            "1024x2048",
            "--crop",
            "8x16",
            "--negative-target-size",
            "512x512",
            "--aesthetic-score",
            "7",
            "--negative-aesthetic-score",
            "2",
            "--refine-strength",
            "0.25",
            "--no-watermark",
            "--count",
            "3",
        ],
        id="micro-conditioning",
    ),
]


@pytest.mark.parametrize("on_screen, argv", TABLE)
def test_a_draft_request_gives_the_same_recipe(ui, on_screen, argv):
    controls, _ = ui
    through_ui, count = bindings.recipe_from_values(controls, screen(ui, **on_screen), DEFAULTS)
    args = cli(*argv)
    assert draft_recipe(args) == through_ui
    assert args.count == count


@pytest.mark.parametrize(
    "on_screen, argv, source_size",
    [
        pytest.param(
            dict(prompt="a fox", seed=6),
            ["img2img", "--prompt", "a fox", "--seed", "6", "--image", "x.png", "--strength", "0.45"],
            (200, 120),
            id="own-size",
        ),
        pytest.param(
            dict(prompt="a fox", seed=6, img2img_preset=bindings.CUSTOM_SIZE, img2img_width=512, img2img_height=384),
            [
                "img2img",
                "--prompt",
                "a fox",
                "--seed",
                "6",
                "--image",
                "x.png",
                "--strength",
                "0.45",
                "--width",
                "512",
                "--height",
                "384",
            ],
            (200, 120),
            id="chosen-size",
        ),
    ],
)
def test_an_img2img_request_gives_the_same_recipe(ui, on_screen, argv, source_size):
    controls, size = ui
    values = screen(ui, **on_screen)
    width, height = bindings.size_from_values(size, values, source_size)
    request = bindings.request_from_values(
        controls, values, source_size=source_size, size=(width, height), strength=0.45
    )
    through_ui = requests.build_recipe(request, DEFAULTS.models)
    assert img2img_recipe(cli(*argv), source_size) == through_ui
    assert through_ui.mode == "img2img" and through_ui.strength == 0.45


def test_a_controlnet_request_gives_the_same_recipe_and_inputs(ui, tmp_path):
    controls, _ = ui
    pattern = (np.indices((64, 64)).sum(axis=0) % 16 < 8).astype(np.uint8) * 255
    image = tmp_path / "edges.png"
    Image.fromarray(np.stack([pattern] * 3, axis=-1)).save(image)
    with Studio(tmp_path / "home") as studio:
        recipe, _ = bindings.recipe_from_values(
            controls, screen(ui, prompt="a fox", seed=8, width=64, height=64), DEFAULTS
        )
        unit = ControlRequest(
            model="my-canny", preprocessor="canny", image=image.read_bytes(), scale=0.8, start=0.1, end=0.9
        )
        through_ui, ui_inputs = studio.prepare_inputs(recipe, controls=[unit])
        args = cli(
            "draft",
            "--prompt",
            "a fox",
            "--seed",
            "8",
            "--width",
            "64",
            "--height",
            "64",
            "--control",
            f"canny=my-canny:{image}:0.8:0.1:0.9",
        )
        through_cli, cli_inputs = edit_inputs_from_args(args, draft_recipe(args), studio)
    assert through_cli == through_ui and len(through_ui.controlnets) == 1
    assert cli_inputs.files == ui_inputs.files  # the same control image and map stored


@pytest.mark.parametrize(
    "prompt, plan_options, flags",
    [
        pytest.param("a {fox|hare} in snow", {}, [], id="dynamic-random"),
        pytest.param("a {fox|hare} in {snow|rain}", dict(combinatorial=True), ["--combinatorial"], id="combinatorial"),
        pytest.param("a fox", dict(sweep="guidance=3,5,7"), ["--sweep", "guidance=3,5,7"], id="sweep"),
        pytest.param("a {fox|hare}", dict(sweep="lora:ink=0,1"), ["--sweep", "lora:ink=0,1"], id="dynamic-sweep"),
    ],
)
def test_a_dynamic_prompt_or_a_sweep_gives_the_same_drafts(ui, prompt, plan_options, flags):
    from pathlib import Path

    from atelier.commands.generate import draft_plan

    controls, _ = ui
    values = screen(ui, prompt=prompt, seed=3, count=4, lora_name_0="paper", lora_weight_0=0.4)
    wildcards = Path("/nonexistent/wildcards")  # the CLI's --home below
    through_ui = bindings.plan_from_values(controls, values, DEFAULTS, wildcards=wildcards, **plan_options)
    args = cli("draft", "--prompt", prompt, "--seed", "3", "--count", "4", "--lora", "paper:0.4", *flags)
    through_cli = draft_plan(args)
    assert through_cli == through_ui and through_ui.each and len(through_ui.each) == through_ui.count


def test_a_lora_picked_and_named_in_the_prompt_has_one_weight_everywhere(ui):
    """The rule the README states: a `<lora:name:w>` token in the prompt sets its LoRA's weight."""
    controls, _ = ui
    values = screen(ui, prompt="<lora:ink:0.9> a fox", seed=1, lora_name_0="ink", lora_weight_0=0.5)
    recipe, _ = bindings.recipe_from_values(controls, values, DEFAULTS)
    assert [(lora.name, lora.weight) for lora in recipe.loras] == [("ink", 0.9)]
