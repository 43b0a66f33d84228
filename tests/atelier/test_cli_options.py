"""The command line as an adapter over atelier/requests.py, checked without running a model: the Recipe
`draft` and `img2img` build is the one `build_recipe` makes from the same GenerationRequest; `--help`
shows the builder's defaults; one flag name per meaning; one error → exit status mapping for every
command (2 bad input, 1 fault, 130 interrupted)."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from atelier import requests
from atelier.cli import build_parser, main
from atelier.commands import editing, generate
from atelier.commands import gallery as gallery_commands
from atelier.commands.common import EXIT_BAD_INPUT, EXIT_FAULT, EXIT_INTERRUPTED, exit_code
from atelier.commands.request_options import request_from_args
from atelier.requests import GenerationRequest, ModelChoice, build_recipe
from pipelines.errors import OutOfMemory
from pipelines.recipe import LoraRef, MicroConditioning, ModelRef, Recipe
from storage.gallery import Gallery, NotFoundError
from storage.migrate import MigrationError

TINY = ModelChoice(base="tiny", refiner="tiny", demo=True)
MODELS = ["--model", "tiny", "--refiner", "tiny"]


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch):
    """The builder reads these; the table compares like with like, but the explicit sizes below assume them unset."""
    monkeypatch.delenv(requests.PROMPT_SYNTAX_ENV, raising=False)
    monkeypatch.delenv(requests.IMG2IMG_MAX_SIDE_ENV, raising=False)


def parse(*argv: str):
    return build_parser().parse_args([*argv, "--home", "/nonexistent-atelier-home"])


# -- the Recipe the CLI builds is build_recipe's -------------------------------------------------------------

DRAFT_TABLE = [
    pytest.param(["--prompt", "a fox", "--seed", "5"], GenerationRequest(prompt="a fox", seed=5), TINY, id="defaults"),
    pytest.param(
        [
            "--prompt",
            "a fox",
            "--negative",
            "blurry",
            "--syntax",
            "a1111",
            "--seed",
            "9",
            "--count",
            "3",
            "--steps",
            "12",
            "--guidance",
            "6.5",
            "--scheduler",
            "DPM++ 2M",
            "--width",
            "832",
            "--height",
            "1216",
            "--switch",
            "0.7",
            "--refine-strength",
            "0.25",
            "--original-size",
            "2048x1024",
            "--crop",
            "8x16",
            "--negative-target-size",
            "512x512",
            "--aesthetic-score",
            "7",
            "--negative-aesthetic-score",
            "2",
            "--no-watermark",
        ],
        GenerationRequest(
            prompt="a fox",
            negative="blurry",
            syntax="a1111",
            seed=9,
            count=3,
            steps=12,
            guidance=6.5,
            scheduler="DPM++ 2M",
            width=832,
            height=1216,
            switch=0.7,
            refine_strength=0.25,
            micro=MicroConditioning(
                original_size=(2048, 1024),
                crops_coords_top_left=(8, 16),
                negative_target_size=(512, 512),
                aesthetic_score=7.0,
                negative_aesthetic_score=2.0,
            ),
            watermark=False,
        ),
        TINY,
        id="every-option",
    ),
    pytest.param(
        ["--prompt", "ink <lora:ink:0.4> wash", "--seed", "1", "--lora", "ink:0.7", "--lora", "paper"],
        GenerationRequest(
            prompt="ink <lora:ink:0.4> wash", seed=1, loras=(LoraRef(name="ink", weight=0.7), LoraRef(name="paper"))
        ),
        TINY,
        id="loras",
    ),
    pytest.param(
        ["--prompt", "(a cat:1.3)", "--syntax", "auto", "--seed", "3"],
        GenerationRequest(prompt="(a cat:1.3)", syntax="auto", seed=3),
        TINY,
        id="auto-syntax",
    ),
]


@pytest.mark.parametrize("argv, request_, models", DRAFT_TABLE)
def test_draft_builds_the_recipe_build_recipe_makes(argv, request_, models):
    args = parse("draft", *MODELS, *argv)
    assert request_from_args(args) == request_
    assert generate.draft_recipe(args) == build_recipe(request_, models)


def test_draft_defaults_are_the_recipe_defaults():
    recipe = generate.draft_recipe(parse("draft", *MODELS, "--prompt", "a fox", "--seed", "5"))
    assert (recipe.steps, recipe.guidance, recipe.scheduler, recipe.switch) == (
        requests.DEFAULT_STEPS,
        requests.DEFAULT_GUIDANCE,
        requests.DEFAULT_SCHEDULER,
        requests.DEFAULT_SWITCH,
    )
    assert (recipe.width, recipe.height, recipe.refine.strength) == (1024, 1024, requests.DEFAULT_REFINE_STRENGTH)
    assert (recipe.prompt_syntax, recipe.watermark, recipe.micro) == ("compel", True, MicroConditioning())
    assert recipe.model == ModelRef("tiny") and recipe.refine.model == ModelRef("tiny")


def test_a_prompt_token_sets_the_weight_of_a_lora_given_with_the_option():
    recipe = generate.draft_recipe(
        parse("draft", *MODELS, "--prompt", "ink <lora:ink:0.4>", "--seed", "1", "--lora", "ink:0.7", "--lora", "paper")
    )
    assert [(lora.name, lora.weight) for lora in recipe.loras] == [("ink", 0.4), ("paper", 1.0)]


def test_refiner_base_means_no_separate_refiner():
    args = parse("draft", "--model", "tiny", "--refiner", "base", "--prompt", "a fox", "--seed", "2")
    recipe = generate.draft_recipe(args)
    assert recipe == build_recipe(
        GenerationRequest(prompt="a fox", seed=2), ModelChoice(base="tiny", refiner=None, demo=True)
    )
    assert recipe.refine.model is None


IMG2IMG_TABLE = [
    pytest.param(
        ["--prompt", "a lake", "--seed", "4", "--strength", "0.45"],
        (1600, 900),
        GenerationRequest(prompt="a lake", seed=4, count=1, source_size=(1600, 900), strength=0.45),
        (1024, 576),
        id="own-size",
    ),
    pytest.param(
        ["--prompt", "a lake", "--seed", "4"],
        (640, 480),
        GenerationRequest(
            prompt="a lake", seed=4, count=1, source_size=(640, 480), strength=requests.DEFAULT_IMG2IMG_STRENGTH
        ),
        (640, 480),
        id="default-strength",
    ),
    pytest.param(
        ["--prompt", "a lake", "--seed", "4", "--width", "832", "--height", "1216", "--steps", "8"],
        (640, 480),
        GenerationRequest(
            prompt="a lake",
            seed=4,
            count=1,
            width=832,
            height=1216,
            steps=8,
            source_size=(640, 480),
            strength=requests.DEFAULT_IMG2IMG_STRENGTH,
        ),
        (832, 1216),
        id="given-size",
    ),
    pytest.param(
        ["--prompt", "a lake", "--seed", "4", "--refine-only", "--refine-strength", "0.5"],
        (512, 512),
        GenerationRequest(
            prompt="a lake",
            seed=4,
            count=1,
            source_size=(512, 512),
            refine_strength=0.5,
            strength=requests.DEFAULT_IMG2IMG_STRENGTH,
            refine_only=True,
        ),
        (512, 512),
        id="refine-only",
    ),
]


@pytest.mark.parametrize("argv, source_size, request_, size", IMG2IMG_TABLE)
def test_img2img_builds_the_recipe_build_recipe_makes(argv, source_size, request_, size):
    args = parse("img2img", "--image", "source.png", *MODELS, *argv)
    assert request_from_args(args, source_size=source_size) == request_
    recipe = editing.img2img_recipe(args, source_size)
    assert recipe == build_recipe(request_, TINY)
    assert (recipe.width, recipe.height, recipe.mode) == (*size, "img2img")


def test_img2img_strength_and_refine_strength_land_in_their_own_fields():
    plain = editing.img2img_recipe(
        parse(
            "img2img",
            "--image",
            "s.png",
            *MODELS,
            "--prompt",
            "p",
            "--seed",
            "1",
            "--strength",
            "0.35",
            "--refine-strength",
            "0.2",
        ),
        (512, 512),
    )
    assert (plain.strength, plain.refine.strength) == (0.35, 0.2)
    only = editing.img2img_recipe(
        parse(
            "img2img",
            "--image",
            "s.png",
            *MODELS,
            "--prompt",
            "p",
            "--seed",
            "1",
            "--refine-only",
            "--refine-strength",
            "0.5",
        ),
        (512, 512),
    )
    assert (only.strength, only.switch, only.refine.strength) == (0.0, 1.0, 0.5)


def test_the_source_size_follows_exif_orientation():
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: stored 80×48, seen 48×80
    Image.new("RGB", (80, 48)).save(buffer, format="PNG", exif=exif)
    from atelier.studio import image_size

    assert image_size(buffer.getvalue()) == (48, 80)


# -- one flag name per meaning, defaults from atelier.requests ----------------------------------------------


def help_entries(capsys, monkeypatch, command: str) -> dict[str, str]:
    """`atelier COMMAND --help` as {first flag: its whole entry, whitespace collapsed}."""
    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit) as stopped:
        main([command, "--help"])
    assert stopped.value.code == 0
    entries: dict[str, str] = {}
    flag = None
    for line in capsys.readouterr().out.split("options:", 1)[1].splitlines():
        if line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
            entries[flag] = line
        elif flag is not None:
            entries[flag] += " " + line
    return {f: " ".join(text.split()) for f, text in entries.items()}


@pytest.mark.parametrize(
    "command, flag, value",
    [
        ("draft", "--steps", requests.DEFAULT_STEPS),
        ("draft", "--guidance", requests.DEFAULT_GUIDANCE),
        ("draft", "--scheduler", requests.DEFAULT_SCHEDULER),
        ("draft", "--switch", requests.DEFAULT_SWITCH),
        ("draft", "--width", requests.DEFAULT_WIDTH),
        ("draft", "--height", requests.DEFAULT_HEIGHT),
        ("draft", "--refine-strength", requests.DEFAULT_REFINE_STRENGTH),
        ("draft", "--aesthetic-score", requests.DEFAULT_AESTHETIC),
        ("draft", "--negative-aesthetic-score", requests.DEFAULT_NEGATIVE_AESTHETIC),
        ("draft", "--count", requests.DEFAULT_COUNT),
        ("img2img", "--steps", requests.DEFAULT_STEPS),
        ("img2img", "--guidance", requests.DEFAULT_GUIDANCE),
        ("img2img", "--switch", requests.DEFAULT_SWITCH),
        ("img2img", "--strength", requests.DEFAULT_IMG2IMG_STRENGTH),
        ("img2img", "--refine-strength", requests.DEFAULT_REFINE_STRENGTH),
        ("img2img", "--aesthetic-score", requests.DEFAULT_AESTHETIC),
    ],
)
def test_help_shows_the_builders_defaults(capsys, monkeypatch, command, flag, value):
    entry = help_entries(capsys, monkeypatch, command)[flag]
    shown = re.search(r"\(default: ([^)]*)\)", entry)
    assert shown and shown.group(1) == str(value), entry


def test_img2img_help_says_the_size_follows_the_source(capsys, monkeypatch):
    entries = help_entries(capsys, monkeypatch, "img2img")
    assert "the source's own size" in entries["--width"] and "the source's own size" in entries["--height"]


def test_strength_is_img2img_denoise_and_refine_strength_is_the_refiners(capsys, monkeypatch):
    draft = help_entries(capsys, monkeypatch, "draft")
    img2img = help_entries(capsys, monkeypatch, "img2img")
    assert "--strength" not in draft and "--refine-strength" in draft
    assert "denoise" in img2img["--strength"] and "refiner" in img2img["--refine-strength"]
    with pytest.raises(SystemExit) as stopped:
        main(["draft", *MODELS, "--prompt", "x", "--strength", "0.3"])
    assert stopped.value.code == EXIT_BAD_INPUT and "unrecognized arguments: --strength" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["draft", "--prompt", "x"],
        ["refine", "1"],
        ["rerun", "1"],
        ["img2img", "--image", "a.png", "--prompt", "x"],
        ["serve"],
    ],
)
def test_every_model_command_has_the_same_device_options(argv):
    args = parse(*argv, "--device", "cpu", "--dtype", "bfloat16", "--cpu-offload", "--vae-tiling")
    assert (args.device, args.dtype, args.cpu_offload, args.vae_tiling) == ("cpu", "bfloat16", True, True)


# -- one error → exit status mapping ------------------------------------------------------------------------


@pytest.fixture()
def no_studio(monkeypatch):
    """A command that gets past validation would open a studio: make that fail loudly (not exit 2)."""

    def refuse(args):
        raise AssertionError("a studio was opened: validation came too late")

    monkeypatch.setattr(generate, "open_studio", refuse)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--width", "7", "--height", "64"], "atelier draft: width: must be an integer from 64 to 4096 (got 7)"),
        (["--width", "100", "--height", "64"], "atelier draft: width: must be a multiple of 8"),
        (["--width", "64"], "atelier draft: size: give both width and height"),
        (["--count", "0"], "atelier draft: drafts: must be from 1 to 16"),
        (["--steps", "0"], "atelier draft: steps: must be an integer from 1 to 500"),
        (["--aesthetic-score", "11"], "atelier draft: micro.aesthetic_score"),
        (["--scheduler", "Euler", "--syntax", "compel", "--prompt", " "], "atelier draft: prompt:"),
    ],
)
def test_a_bad_draft_value_exits_2_naming_the_field_before_a_studio_opens(capsys, tmp_path, no_studio, argv, message):
    code = main(["draft", *MODELS, "--prompt", "x", *argv, "--home", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert code == EXIT_BAD_INPUT and out == ""
    assert err.startswith(message) and "Traceback" not in err


def test_a_gallery_id_that_does_not_exist_exits_2(capsys, tmp_path):
    code = main(["show", "999999", "--home", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert code == EXIT_BAD_INPUT and out == ""
    assert err.startswith("atelier show: ") and "no generation with id 999999" in err


def test_import_of_a_missing_file_exits_2(capsys, tmp_path):
    code = main(["import", str(tmp_path / "missing.png"), "--home", str(tmp_path)])
    assert code == EXIT_BAD_INPUT and "no such file" in capsys.readouterr().err


def test_an_export_that_cannot_write_exits_1(capsys, tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (9, 8, 7)).save(buffer, format="PNG")
    with Gallery.open(tmp_path) as gallery:
        saved = gallery.save(Recipe(model=ModelRef("tiny"), prompt="a fox", seed=1), "txt2img", buffer.getvalue())
    in_the_way = tmp_path / "exports"
    in_the_way.write_text("a file where the export folder should be")  # root or not, mkdir fails
    code = main(["export", str(saved.id), str(in_the_way), "--home", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert code == EXIT_FAULT and out == ""
    assert err.startswith("atelier export: ") and str(in_the_way) in err
    code = main(["export", str(saved.id), str(tmp_path / "out"), "--home", str(tmp_path), "--json"])
    assert code == 0 and capsys.readouterr().out.startswith("{")  # the same export into a folder works


@pytest.mark.parametrize(
    "error, code",
    [
        (ValueError("limit: must be at least 1"), EXIT_BAD_INPUT),
        (NotFoundError("no generation with id 3"), EXIT_BAD_INPUT),
        (OSError(28, "No space left on device"), EXIT_FAULT),
        (OutOfMemory("the device ran out of memory"), EXIT_FAULT),
        (MigrationError("migration 0003 failed"), EXIT_FAULT),
        (KeyboardInterrupt(), EXIT_INTERRUPTED),
    ],
)
def test_every_command_maps_errors_the_same_way(capsys, monkeypatch, tmp_path, error, code):
    def fail(args):
        raise error

    monkeypatch.setattr(gallery_commands, "open_studio", fail)
    assert exit_code(error) == code
    assert main(["list", "--home", str(tmp_path)]) == code
    err = capsys.readouterr().err
    assert err.startswith("atelier list: ") and ("interrupted" if code == EXIT_INTERRUPTED else str(error)) in err


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    def fail(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(gallery_commands, "open_studio", fail)
    assert exit_code(RuntimeError("a bug")) is None
    with pytest.raises(RuntimeError, match="a bug"):
        main(["list", "--home", str(tmp_path)])
