"""Parameter sweeps: one draft of the seed per value, recipes that differ only in the swept field, a labelled
grid, cells that refine like any draft; bad specs are ValueErrors naming the field before any model work."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from atelier.cli import main
from atelier.commands import generate
from atelier.requests import GenerationRequest, ModelChoice, plan_drafts
from atelier.sweeps import MAX_CELLS, parse_sweep
from pipelines.recipe import LoraRef

TINY = ModelChoice(base="tiny", refiner="tiny")
SMALL = dict(steps=4, width=64, height=64)
MODELS = ["--model", "tiny", "--refiner", "tiny"]


def plan(sweep: str, prompt: str = "a lighthouse at dusk", **changes):
    request = GenerationRequest(prompt=prompt, sweep=sweep, **{"seed": 9, **SMALL, **changes})
    return plan_drafts(request, TINY)


def differing(a, b) -> set[str]:
    da, db = a.to_dict(), b.to_dict()
    return {k for k in da if da[k] != db[k]}


@pytest.mark.parametrize(
    "spec, field, values",
    [
        ("guidance=3,5,7", "guidance", [3.0, 5.0, 7.0]),
        ("steps=2,3", "steps", [2, 3]),
        ("switch=0.5,0.75,1", "switch", [0.5, 0.75, 1.0]),
        ("scheduler=euler,DPM++ 2M Karras", "scheduler", ["Euler", "DPM++ 2M Karras"]),
        ("seed=1,2,40", "seed", [1, 2, 40]),
        ("aesthetic=3,9", "micro", [3.0, 9.0]),
    ],
)
def test_cells_differ_only_in_the_swept_field(spec, field, values):
    made = plan(spec)
    assert made.count == len(made.each) == len(values) == len(made.labels)
    assert all(r.stage == "draft" and r.batch_seeds == () for r in made.each)
    got = [r.micro.aesthetic_score if field == "micro" else getattr(r, field) for r in made.each]
    assert got == values
    for a in made.each:
        for b in made.each:
            assert differing(a, b) <= {field}
    if field != "seed":
        assert {r.seed for r in made.each} == {9}  # the same seed across the cells


def test_a_lora_weight_sweep_changes_only_that_lora():
    made = plan("lora:ink.safetensors=0,0.5,1", loras=(LoraRef("ink", weight=0.8), LoraRef("paper", weight=0.3)))
    assert made.labels == ("lora:ink=0", "lora:ink=0.5", "lora:ink=1")
    assert [[(x.name, x.weight) for x in r.loras] for r in made.each] == [
        [("ink", w), ("paper", 0.3)] for w in (0.0, 0.5, 1.0)
    ]
    assert differing(made.each[0], made.each[2]) == {"loras"}
    assert [x.name for x in plan("lora:grain=0,1").each[1].loras] == ["grain"]  # not picked: added at each weight


def test_a_dynamic_prompt_is_drawn_once_for_every_cell():
    made = plan("seed=1,2,3,4,5,6", prompt="a {red|green|blue|white|black} kite")
    assert (
        len({r.prompt for r in made.each}) == 1
        and made.each[0].prompt_template == "a {red|green|blue|white|black} kite"
    )


@pytest.mark.parametrize(
    "spec, message",
    [
        ("colour=1,2", "sweep: unknown parameter 'colour'; sweep one of guidance, steps"),
        ("guidance=3,x", "sweep: guidance: 'x' is not a number"),
        ("guidance=3,,5", "sweep: guidance: an empty value"),
        ("steps=2.5", "sweep: steps: '2.5' is not a whole number"),
        ("scheduler=Heun", "sweep: scheduler: 'Heun' is not one of Euler"),
        ("guidance=5,5", "sweep: guidance: give each value once (5 repeated)"),
        ("guidance=60", "sweep: guidance: must be a number in [0.0, 50.0] (got 60.0)"),
        ("switch=0", "sweep: switch: must be a number in (0.0, 1.0]"),
        ("lora:ink=20", "sweep: loras.weight: must be a number in [-10.0, 10.0]"),
        ("steps=" + ",".join(str(i) for i in range(1, MAX_CELLS + 2)), f"sweep: at most {MAX_CELLS} values"),
        ("guidance", "sweep: write PARAMETER=V1,V2,… such as guidance=3,5,7"),
        ("lora:=1,2", "sweep: name the LoRA"),
    ],
)
def test_bad_specs_name_the_field(spec, message):
    with pytest.raises(ValueError) as error:
        plan(spec)
    assert str(error.value).startswith(message)


def test_sweep_conflicts_are_refused():
    with pytest.raises(ValueError, match=r"^sweep: lora:ink: the prompt sets this LoRA's weight"):
        plan("lora:ink=0,1", prompt="a fox <lora:ink:0.7>")
    with pytest.raises(ValueError, match="^sweep: cannot be combined with combinatorial"):
        plan("guidance=3,5", prompt="a {fox|hare}", combinatorial=True)
    assert parse_sweep("  ") is None and plan("").each == ()  # no sweep: the plain batch


def test_a_bad_sweep_exits_2_before_a_studio_opens(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(generate, "open_studio", lambda args: pytest.fail("a studio was opened"))
    code = main(["draft", *MODELS, "--prompt", "x", "--sweep", "steps=1,x", "--home", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.startswith("atelier draft: sweep: steps: 'x' is not a number")


# -- through the Studio and the CLI ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def studio(make_tiny_home):
    from atelier.studio import Studio

    studio = Studio(make_tiny_home(name="sweep-home"), device="cpu")
    yield studio
    studio.close()


def test_a_guidance_sweep_stores_a_cell_per_value_with_a_labelled_grid(studio):
    from atelier.studio import write_sweep_grid

    made = plan("guidance=1,4,9")
    saved = studio.draft_each(list(made.each))
    stored = [studio.get(s.id) for s in saved]
    assert [g.recipe.guidance for g in stored] == [1.0, 4.0, 9.0] and len({g.batch_id for g in stored}) == 1
    for g in stored:
        assert g.kind == "draft" and differing(g.recipe, stored[0].recipe) <= {"guidance"}
    pixels = [np.asarray(Image.open(s.image).convert("RGB")) for s in saved]
    assert not np.array_equal(pixels[0], pixels[2])  # guidance changed the drafts
    grid = write_sweep_grid(studio.downloads_folder(), saved, made.labels)
    with Image.open(grid) as image:
        sheet = np.asarray(image.convert("RGB"))
    width = sheet.shape[1] // 3
    assert grid.parent == studio.downloads_folder() and sheet.shape[1] == 3 * width and sheet.shape[0] > width
    cell = np.asarray(Image.fromarray(pixels[2]).resize((width, width), Image.Resampling.LANCZOS))
    assert np.abs(sheet[:width, 2 * width :].astype(int) - cell.astype(int)).max() <= 1  # third cell, third place
    assert (sheet[width:, :width] < 128).any()  # a label is written under the first cell
    refined = studio.refine(saved[1].id)  # a cell is picked and refined like any draft
    assert studio.get(refined.id).parent_id == saved[1].id and refined.recipe.guidance == 4.0


def test_cli_sweep_prints_the_cells_and_the_grid(studio, capsys):
    argv = ["draft", *MODELS, "--prompt", "a kite", "--seed", "2", "--sweep", "steps=2,3"]
    code = main([*argv, "--steps", "4", "--width", "64", "--height", "64", "--home", str(studio.home), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert [d["label"] for d in result["drafts"]] == ["steps=2", "steps=3"]
    assert [studio.get(d["id"]).recipe.steps for d in result["drafts"]] == [2, 3]
    assert {d["seed"] for d in result["drafts"]} == {2}
    ids = [d["id"] for d in result["drafts"]]
    assert result["grid"].endswith(f"atelier-sweep-{ids[0]}-{ids[1]}.png") and Image.open(result["grid"]).width > 0
