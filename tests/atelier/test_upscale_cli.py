"""`atelier upscale` and Studio.upscale's checks: bad values are ValueErrors naming the field, before any
model work; the CLI's JSON form."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from atelier.cli import main


@pytest.fixture(scope="module")
def home(make_tiny_home):
    return make_tiny_home(name="upscale-cli-home")


@pytest.fixture(scope="module")
def picked(home):
    """A 64×64 draft (a picked image), made by a Studio that is closed again."""
    from atelier.studio import Studio
    from pipelines.recipe import ModelRef, Recipe, RefineSettings

    recipe = Recipe(
        model=ModelRef("tiny"),
        prompt="a red barn in snow",
        seed=5,
        steps=8,
        width=64,
        height=64,
        refine=RefineSettings(model=ModelRef("tiny")),
    )
    with Studio(home, device="cpu") as studio:
        return studio.draft(recipe, 1)[0]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(scale=0.5), "scale"),
        (dict(scale=1.0), "scale"),
        (dict(scale=float("nan")), "scale"),
        (dict(scale=2, width=128, height=128), "scale"),
        (dict(width=100, height=64), "width"),
        (dict(width=128, height=60), "height"),
        (dict(width=4104, height=64), "width"),
        (dict(width=128), "height"),
        (dict(strength=1.5), "strength"),
        (dict(steps=0), "steps"),
        (dict(upscaler="4x-UltraSharp"), "upscaler"),  # no such model in the models folder
        (dict(upscaler=" "), "upscaler"),
    ],
)
def test_bad_values_fail_before_any_model_work(home, picked, kwargs, field, monkeypatch):
    from atelier.studio import Studio

    monkeypatch.setattr(Studio, "engine", property(lambda self: pytest.fail("the engine was used")))
    with Studio(home) as studio, pytest.raises(ValueError, match=f"^{field}:"):
        studio.upscale(picked.id, **kwargs)


def test_a_scale_past_the_largest_side_names_the_scale(home, picked, monkeypatch):
    import atelier.upscale
    from atelier.studio import Studio

    monkeypatch.setattr(atelier.upscale, "MAX_SCALE", 100.0)
    monkeypatch.setattr(Studio, "engine", property(lambda self: pytest.fail("the engine was used")))
    with Studio(home) as studio, pytest.raises(ValueError, match=r"^scale: ×65 makes this 64×64 image 4160×4160"):
        studio.upscale(picked.id, scale=65)


def test_cli_upscale_prints_the_new_image_as_json(home, picked, capsys):
    code = main(["upscale", str(picked.id), "--scale", "2", "--strength", "0.4", "--home", str(home), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    made = json.loads(out)
    assert set(made) == {"id", "image"}
    with Image.open(made["image"]) as image:
        assert image.size == (128, 128)
    from atelier.studio import Studio

    with Studio(home) as studio:
        generation = studio.get(made["id"])
    assert generation.parent_id == picked.id and generation.recipe.strength == 0.4
    assert "upscaled 64×64 → 128×128" in err  # the note, on stderr


def test_cli_upscale_to_a_size(home, picked, capsys):
    code = main(["upscale", str(picked.id), "--width", "96", "--height", "64", "--steps", "6", "--home", str(home)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith(f"upscaled {picked.id} → ") and "96×64" in out


def test_cli_upscale_refuses_a_width_not_a_multiple_of_8(home, picked, capsys):
    code = main(["upscale", str(picked.id), "--width", "100", "--height", "64", "--home", str(home), "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert "width: must be a multiple of 8" in err and "100" in err
