"""Vary through the Studio and `atelier vary`: children of a draft in the gallery, exact re-runs, the CLI form."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from atelier.cli import main


def rgb(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


def pixel_hash(path):
    return hashlib.sha256(rgb(path).astype(np.uint8).tobytes()).hexdigest()


def latent_of(path):
    from pipelines.engine.kept_latent import KeptLatent

    return KeptLatent.from_bytes(path.read_bytes()).tensor


@pytest.fixture(scope="module")
def home(make_tiny_home):
    return make_tiny_home(name="vary-home")


@pytest.fixture(scope="module")
def studio(home):
    from atelier.studio import Studio

    studio = Studio(home, device="cpu")
    yield studio
    studio.close()


@pytest.fixture(scope="module")
def parent(studio, tiny_recipe_module):
    return studio.draft(tiny_recipe_module(seed=70), 1)[0]


@pytest.fixture(scope="module")
def tiny_recipe_module():
    from pipelines.recipe import ModelRef, Recipe, RefineSettings

    def make(**changes):
        fields = dict(
            model=ModelRef("tiny"),
            prompt="a lighthouse at dusk",
            seed=1,
            steps=8,
            width=64,
            height=64,
            switch=0.8,
            refine=RefineSettings(model=ModelRef("tiny")),
        )
        return Recipe(**{**fields, **changes})

    return make


def test_children_are_drafts_of_the_parent_at_their_own_variation_seeds(studio, parent):
    children = studio.vary(parent.id, strength=0.1, count=2, variation_seed=500)
    assert [c.recipe.variation_seed for c in children] == [500, 501]
    for child in children:
        generation = studio.get(child.id)
        assert generation.kind == "draft" and generation.parent_id == parent.id
        assert generation.recipe.seed == parent.recipe.seed and generation.recipe.batch_seeds == ()
        assert generation.recipe.variation_strength == 0.1 and child.latent.exists()
    assert pixel_hash(children[0].image) != pixel_hash(children[1].image)
    refined = studio.refine(children[0].id)  # refinable like any draft
    assert studio.get(refined.id).parent_id == children[0].id


def test_strength_zero_is_the_parent(studio, parent):
    child = studio.vary(parent.id, strength=0.0, count=1, variation_seed=9)[0]
    # The parent was drafted alone: the same noise, so the same pixels and kept latent, bit for bit.
    assert pixel_hash(child.image) == pixel_hash(parent.image)
    assert latent_of(child.latent).equal(latent_of(parent.latent))


def test_strength_zero_of_a_batch_draft_is_within_rounding(studio, tiny_recipe_module):
    batch = studio.draft(tiny_recipe_module(seed=80), 3)
    child = studio.vary(batch[1].id, strength=0.0, count=1, variation_seed=4)[0]  # made alone: batch rounding
    assert np.abs(rgb(child.image) - rgb(batch[1].image)).max() <= 1
    assert (latent_of(child.latent) - latent_of(batch[1].latent)).abs().max() <= 1e-4


def test_a_child_re_runs_to_the_same_pixels(studio, parent):
    child = studio.vary(parent.id, strength=0.4, count=1)[0]  # a random variation seed, recorded
    assert child.recipe.variation_seed is not None
    again = studio.rerun(child.id)
    assert pixel_hash(again.image) == pixel_hash(child.image)
    assert again.recipe.variation_seed == child.recipe.variation_seed


def test_a_variation_is_not_varied_again(studio, parent):
    child = studio.vary(parent.id, strength=0.2, count=1, variation_seed=3)[0]
    with pytest.raises(ValueError, match="itself a variation"):
        studio.vary(child.id, strength=0.1, count=1)


@pytest.mark.parametrize(
    "kwargs, field",
    [(dict(strength=1.5, count=1), "variation_strength"), (dict(strength=0.1, count=0), "count")],
)
def test_bad_values_fail_before_any_model_work(studio, parent, kwargs, field, monkeypatch):
    monkeypatch.setattr(type(studio), "engine", property(lambda self: pytest.fail("the engine was used")))
    with pytest.raises(ValueError, match=f"^{field}:"):
        studio.vary(parent.id, **kwargs)


def test_cli_vary_prints_the_drafts_as_json(home, parent, capsys):
    code = main(["vary", str(parent.id), "--count", "2", "--variation-seed", "42", "--home", str(home), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    drafts = json.loads(out)["drafts"]
    assert len(drafts) == 2
    assert all(set(d) == {"id", "seed", "image", "latent"} for d in drafts)
    assert all(d["seed"] == parent.recipe.seed for d in drafts)
    from atelier.studio import Studio

    with Studio(home) as studio:
        made = [studio.get(d["id"]) for d in drafts]
    assert [g.recipe.variation_seed for g in made] == [42, 43] and {g.parent_id for g in made} == {parent.id}
    assert all(g.recipe.variation_strength == 0.1 for g in made)  # the subtle preset by default


def test_cli_vary_refuses_a_bad_strength(home, parent, capsys):
    code = main(["vary", str(parent.id), "--strength", "1.5", "--home", str(home), "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert "variation_strength" in err and "1.5" in err
